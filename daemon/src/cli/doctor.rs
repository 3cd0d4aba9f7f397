//! `tessera doctor`: what is installed and where, which execution providers this ONNX Runtime
//! can use here, which models are present and valid (checked against the manifest), whether the
//! login service and the editor plug-ins are in place, and whether a daemon runs. Every problem
//! comes with one fix. Exit code 0 when there is no problem, 1 otherwise.

use super::launch::Target;
use crate::config::Config;
use crate::engine::{Engine, EngineOptions, EngineTuning, ExecutionProvider};
use crate::setup::kritarc;
use crate::setup::manifest::{Manifest, size_text};
use crate::setup::places::{Editor, EditorPlace, Home, join_relative};
use crate::setup::record::{InstallRecord, Item};
use crate::store::{DataDir, registry, runtime};
use std::path::Path;
use std::process::ExitCode;

/// The Krita plug-in's package name and the GIMP plug-in's folder (see `plugin-krita/`,
/// `plugin-gimp/`).
const KRITA_PLUGIN: &str = "tessera_krita";
const GIMP_PLUGIN: &str = "tessera-upscale";

#[derive(Default)]
struct Report {
    problems: usize,
}

impl Report {
    fn section(&self, title: &str) {
        println!("\n{title}");
    }
    fn ok(&self, text: impl AsRef<str>) {
        println!("  ok       {}", text.as_ref());
    }
    fn note(&self, text: impl AsRef<str>) {
        println!("  note     {}", text.as_ref());
    }
    fn problem(&mut self, text: impl AsRef<str>, fix: impl AsRef<str>) {
        self.problems += 1;
        println!("  PROBLEM  {}", text.as_ref());
        println!("           fix: {}", fix.as_ref());
    }
}

pub fn run(target: &Target, manifest: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut r = Report::default();
    let dir = DataDir::open(&target.data_dir.path)?;
    let record = match InstallRecord::load(&dir) {
        Ok(record) => record,
        Err(e) => {
            r.problem(e.to_string(), "run tessera-install again to rewrite it");
            InstallRecord::default()
        }
    };
    println!("tessera {}", env!("CARGO_PKG_VERSION"));
    r.section("installation");
    r.ok(format!("data directory {}", dir.root().display()));
    program(&mut r, &record);
    let config = match Config::load(&dir.config_file()) {
        Ok(config) => config,
        Err(e) => {
            r.problem(
                e.to_string(),
                "correct the key it names (docs/configuration.md)",
            );
            Config::default()
        }
    };
    r.section("ONNX Runtime");
    onnx_runtime(&mut r, target, &dir, &config);
    r.section("models");
    let manifest = match manifest {
        Some(path) => Manifest::load(path)?,
        None => Manifest::builtin(),
    };
    models(&mut r, &dir, &manifest);
    r.section("login service");
    service(&mut r, &record);
    r.section("editor plug-ins");
    match Home::from_env() {
        Some(home) => plugins(&mut r, &home, &record),
        None => r.note("no home folder: the editors' folders cannot be checked"),
    }
    r.section("daemon");
    match super::launch::connect(target) {
        Ok(mut client) => match client.status() {
            Ok(s) => r.ok(format!(
                "running on {} ({}, {})",
                target.address, s.runtime, s.device
            )),
            Err(e) => r.problem(
                format!(
                    "a daemon answers on {} but not properly: {e}",
                    target.address
                ),
                "restart it: `tessera stop`, then `tessera serve`",
            ),
        },
        Err(_) => r.note(format!(
            "not running on {} (it starts when an editor or `tessera upscale` needs it)",
            target.address
        )),
    }
    println!();
    if r.problems == 0 {
        println!("no problems found");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} problem(s) found", r.problems);
        Ok(ExitCode::FAILURE)
    }
}

fn program(r: &mut Report, record: &InstallRecord) {
    let me = std::env::current_exe().ok();
    if let Some(me) = &me {
        r.ok(format!("this program: {}", me.display()));
    }
    match record.files_of(Item::Program).next() {
        Some(entry) if !entry.path.is_file() => r.problem(
            format!("the installed program {} is gone", entry.path.display()),
            "run tessera-install",
        ),
        Some(entry) => r.ok(format!("installed program: {}", entry.path.display())),
        None => r.note("tessera-install has not installed the program (no install record)"),
    }
}

fn onnx_runtime(r: &mut Report, target: &Target, dir: &DataDir, config: &Config) {
    let explicit = target
        .ort_lib_flag
        .clone()
        .or(config.engine.ort_lib.clone());
    let library = match crate::engine::locate_library(explicit.as_deref(), dir.root()) {
        Ok(path) => path,
        Err(e) => {
            r.problem(
                e.to_string(),
                "run tessera-install (or `tessera runtime install`), or pass --ort-lib",
            );
            return;
        }
    };
    if let Some(installed) = runtime::installed(dir)
        && library == installed.library_path(dir)
    {
        let sha = crate::store::hashes::sha256_file(&library).unwrap_or_default();
        if sha == installed.sha256 {
            r.ok(format!(
                "{} {} ({}), unchanged since it was installed",
                installed.package,
                installed.version,
                library.display()
            ));
        } else {
            r.problem(
                format!("{} changed since it was installed", library.display()),
                "run `tessera runtime install --force` (or tessera-install again)",
            );
        }
    } else {
        r.ok(format!("library {}", library.display()));
    }
    let configured = super::serve::execution_providers(config, dir, explicit.as_deref());
    let engine = match Engine::with_tuning(
        EngineOptions {
            ort_lib: explicit,
            data_dir: dir.root().to_path_buf(),
            intra_threads: None,
        },
        EngineTuning {
            execution_providers: vec![ExecutionProvider::Cpu],
            ..EngineTuning::default()
        },
    ) {
        Ok(engine) => engine,
        Err(e) => {
            r.problem(
                e.to_string(),
                "run tessera-install, or pass --ort-lib with a working library",
            );
            return;
        }
    };
    r.ok(format!("loads: {}", engine.runtime_description()));
    let mut all = configured.clone();
    for ep in [
        ExecutionProvider::Cuda { device_id: 0 },
        ExecutionProvider::DirectMl { device_id: 0 },
        ExecutionProvider::CoreMl,
    ] {
        if !all.contains(&ep) {
            all.push(ep);
        }
    }
    let names: Vec<String> = configured.iter().map(|e| e.to_string()).collect();
    r.ok(format!(
        "configured execution providers: {}",
        names.join(", ")
    ));
    for (ep, outcome) in engine.probe_providers(&all) {
        match (outcome, configured.contains(&ep)) {
            (Ok(()), _) => r.ok(format!("{ep}: usable")),
            (Err(reason), true) => r.problem(
                format!("{ep} is configured but not usable here: {reason}"),
                provider_fix(ep),
            ),
            (Err(reason), false) => r.note(format!("{ep}: not usable ({reason})")),
        }
    }
}

fn provider_fix(ep: ExecutionProvider) -> &'static str {
    match ep {
        ExecutionProvider::Cuda { .. } => {
            "install the NVIDIA driver with CUDA 12 and cuDNN 9 libraries, or set engine.execution_providers = [\"cpu\"] in config.toml"
        }
        ExecutionProvider::DirectMl { .. } => {
            "update the graphics driver (DirectX 12), or set engine.execution_providers = [\"cpu\"]"
        }
        _ => "set engine.execution_providers = [\"cpu\"] in config.toml",
    }
}

fn models(r: &mut Report, dir: &DataDir, manifest: &Manifest) {
    let entries = match registry::entries(dir, true) {
        Ok(entries) => entries,
        Err(e) => {
            r.problem(e.to_string(), "check the folder's permissions");
            return;
        }
    };
    for entry in &entries {
        let file = entry.file.rsplit('/').next().unwrap_or(&entry.file);
        // The protocol's names use `/`; shown here as the file's place below models/.
        let shown = join_relative(Path::new(""), &entry.file);
        let shown = shown.display();
        match manifest.by_file(entry.kind, file) {
            Some(spec) if entry.sha256.as_deref() == Some(spec.sha256.as_str()) => r.ok(format!(
                "{shown} valid ({}, licence {})",
                spec.name, spec.licence
            )),
            Some(spec) => r.problem(
                format!(
                    "{shown} is not the expected {} (size or SHA-256 differ)",
                    spec.name
                ),
                "move it away and run tessera-install to fetch it again",
            ),
            None => r.ok(format!(
                "{shown} present (your own file; not in the manifest)"
            )),
        }
    }
    for spec in manifest.defaults() {
        if !spec.path(dir).exists() {
            r.problem(
                format!(
                    "the default model {} ({}) is missing",
                    Path::new(spec.kind.folder()).join(&spec.file).display(),
                    size_text(spec.size)
                ),
                "run tessera-install (or tessera-install --models-from DIR with the file)",
            );
        }
    }
    if !entries
        .iter()
        .any(|e| e.kind == tessera_protocol::ModelKind::Upscaler)
    {
        r.problem(
            format!(
                "no upscaler in {}",
                dir.models(tessera_protocol::ModelKind::Upscaler).display()
            ),
            "run tessera-install, or put an ESRGAN model (.pth or .safetensors) there",
        );
    }
}

fn service(r: &mut Report, record: &InstallRecord) {
    match &record.service {
        Some(entry) if entry.path.is_file() => {
            r.ok(format!("{} ({})", entry.path.display(), entry.kind));
            if entry.kind == "systemd" {
                match std::process::Command::new("systemctl")
                    .args(["--user", "is-enabled", "tessera.service"])
                    .output()
                {
                    Ok(o) if o.status.success() => r.ok("enabled in systemd"),
                    Ok(o) => r.note(format!(
                        "systemd says: {} (it starts at login only once enabled)",
                        String::from_utf8_lossy(&o.stdout).trim()
                    )),
                    Err(_) => r.note("systemctl is not available here"),
                }
            }
        }
        Some(entry) => r.problem(
            format!("the login service {} is gone", entry.path.display()),
            "run tessera-install",
        ),
        None => r.note(
            "not registered (editors start the daemon when needed); tessera-install registers it",
        ),
    }
}

fn plugins(r: &mut Report, home: &Home, record: &InstallRecord) {
    let mut places = home.krita_places();
    places.extend(home.gimp_places());
    for place in places.iter().filter(|p| p.found()) {
        match place.editor {
            Editor::Krita => krita(r, place),
            Editor::Gimp => gimp(r, place),
        }
    }
    if !places.iter().any(EditorPlace::found) {
        r.note("no Krita and no GIMP 3 found for this user");
    }
    for entry in record.files_of(Item::Plugin) {
        if !entry.path.is_file() {
            r.problem(
                format!("{} is missing", entry.path.display()),
                "run tessera-install to put the plug-in back",
            );
        }
    }
}

fn krita(r: &mut Report, place: &EditorPlace) {
    let package = place.folder.join("pykrita").join(KRITA_PLUGIN);
    if !package.join("__init__.py").is_file() {
        r.problem(
            format!(
                "{}: no Tessera plug-in in {}",
                place.label(),
                place.folder.display()
            ),
            "run tessera-install",
        );
        return;
    }
    let kritarc = place.settings.as_deref().unwrap_or(Path::new("kritarc"));
    let text = std::fs::read_to_string(kritarc).unwrap_or_default();
    let key = format!("enable_{KRITA_PLUGIN}");
    if kritarc::get(&text, "python", &key).as_deref() == Some("true") {
        r.ok(format!(
            "{}: {} (enabled)",
            place.label(),
            package.display()
        ));
    } else {
        r.problem(
            format!("{}: the plug-in is there but not enabled in {}", place.label(), kritarc.display()),
            "enable Tessera in Settings ▸ Configure Krita ▸ Python Plugin Manager (or run tessera-install)",
        );
    }
}

fn gimp(r: &mut Report, place: &EditorPlace) {
    let folder = place.folder.join(GIMP_PLUGIN);
    let script = folder.join(format!("{GIMP_PLUGIN}.py"));
    if !script.is_file() {
        r.problem(
            format!(
                "{}: no Tessera plug-in in {}",
                place.label(),
                place.folder.display()
            ),
            "run tessera-install",
        );
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&script)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o111 == 0 {
            r.problem(
                format!(
                    "{}: {} is not executable (GIMP ignores it)",
                    place.label(),
                    script.display()
                ),
                format!("chmod +x '{}' (or run tessera-install)", script.display()),
            );
            return;
        }
    }
    if !join_relative(&folder, "tessera_client/__init__.py").is_file() {
        r.problem(
            format!(
                "{}: the protocol codec is missing beside the plug-in",
                place.label()
            ),
            "run tessera-install",
        );
        return;
    }
    r.ok(format!("{}: {}", place.label(), folder.display()));
}
