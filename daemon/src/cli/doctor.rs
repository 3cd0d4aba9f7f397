//! `tessera doctor`: what is installed and where, which execution providers this ONNX Runtime
//! can use here, which models are present and valid (checked against the manifest), whether the
//! login service and the editor plug-ins are in place, and whether a daemon runs. Every problem
//! comes with one fix. Exit code 0 when there is no problem, 1 otherwise.

use super::launch::Target;
use crate::config::Config;
use crate::engine::{
    BudgetSetting, Engine, EngineOptions, EngineTuning, ExecutionProvider, Faults, PluginDevice,
    PluginProvider,
};
use crate::setup::kritarc;
use crate::setup::places::{Editor, EditorPlace, Home, join_relative};
use crate::setup::record::{InstallRecord, Item};
use crate::store::manifest::Manifest;
use crate::store::space::size_text;
use crate::store::{DataDir, cuda, registry, runtime};
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
        self.problem_line(text);
        self.fix(fix);
    }
    /// A problem whose fix follows once, after its siblings.
    fn problem_line(&mut self, text: impl AsRef<str>) {
        self.problems += 1;
        println!("  PROBLEM  {}", text.as_ref());
    }
    fn fix(&self, fix: impl AsRef<str>) {
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
    cuda_libraries(r, dir);
    plugin_files(r, dir);
    let configured = super::serve::execution_providers(config, dir, explicit.as_deref());
    let faults = match Faults::from_env() {
        Ok(faults) => faults,
        Err(e) => {
            r.problem(e, "unset it: it is for the fault-injection tests only");
            Faults::default()
        }
    };
    // Whether CUDA is configured or not: doctor reports on every provider.
    if let Ok(library) = crate::engine::locate_library(explicit.as_deref(), dir.root()) {
        crate::engine::preload_cuda_libraries(&library, dir.root());
    }
    let engine = match Engine::with_tuning(
        EngineOptions {
            ort_lib: explicit,
            data_dir: dir.root().to_path_buf(),
            intra_threads: None,
        },
        EngineTuning {
            execution_providers: vec![ExecutionProvider::Cpu],
            // The simulated accelerator is probed below with the others.
            faults: Faults {
                simulated_accelerator: false,
                ..faults.clone()
            },
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
    cuda_preload(
        r,
        configured
            .iter()
            .any(|ep| matches!(ep, ExecutionProvider::Cuda { .. })),
    );
    let mut all = configured.clone();
    if faults.simulated_accelerator {
        all.insert(0, ExecutionProvider::Simulated);
    }
    for ep in [
        ExecutionProvider::Cuda { device_id: 0 },
        ExecutionProvider::DirectMl { adapter: None },
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
    // Every device of every plugin provider that loads, each probed below.
    let mut plugin_devices: Vec<PluginDevice> = Vec::new();
    for provider in PluginProvider::ALL {
        let configured_here = configured
            .iter()
            .any(|ep| matches!(ep, ExecutionProvider::Plugin(p) if p.provider == provider));
        match engine.discover_plugin_devices(provider) {
            Ok(devices) if devices.is_empty() && !configured_here => r.note(format!(
                "{}: its plugin loads but lists no device here",
                provider.label()
            )),
            Ok(devices) => {
                for device in devices {
                    let ep = ExecutionProvider::Plugin(device.ep);
                    if !all.contains(&ep) {
                        all.push(ep);
                    }
                    plugin_devices.push(device);
                }
            }
            // A configured one is probed below and says why it fails there.
            Err(_) if configured_here => {}
            Err(reason) => r.note(format!("{}: not used: {reason}", provider.label())),
        }
    }
    let budget = config.engine.budget();
    let mut usable = Vec::new();
    for (ep, outcome) in engine.probe_providers(&all) {
        match (outcome, configured.contains(&ep)) {
            (Ok(_), configured) if !ep.is_accelerator() => {
                if configured {
                    usable.push(ep);
                }
                r.ok(format!("{ep}: usable"))
            }
            (Ok(report), configured) => {
                if configured {
                    usable.push(ep);
                }
                r.ok(format!(
                    "{ep}: usable{} (probe: {:.0} ms, {})",
                    device_text(ep, budget, &plugin_devices),
                    report.millis,
                    if report.error == 0.0 {
                        "the CPU's numbers exactly".to_owned()
                    } else {
                        format!("within {:.1e} of the CPU's numbers", report.error)
                    }
                ))
            }
            (Err(reason), true) => r.problem(
                format!("{ep} is configured but not used: {reason}"),
                provider_fix(ep),
            ),
            (Err(reason), false) => r.note(format!("{ep}: not used: {reason}")),
        }
    }
    // The providers a daemon would use, in the configured order, the CPU last.
    let mut in_use: Vec<ExecutionProvider> = configured
        .iter()
        .copied()
        .filter(|ep| usable.contains(ep))
        .collect();
    if !in_use.contains(&ExecutionProvider::Cpu) {
        in_use.push(ExecutionProvider::Cpu);
    }
    let described: Vec<String> = in_use
        .iter()
        .map(|ep| match ep {
            ExecutionProvider::Plugin(p) => plugin_devices
                .iter()
                .find(|d| d.ep == *p)
                .map_or_else(|| ep.to_string(), |d| format!("{ep} ({})", d.name)),
            _ => ep.to_string(),
        })
        .collect();
    r.ok(format!(
        "the daemon will use: {} ({})",
        described.join(", then "),
        in_use
            .iter()
            .map(|ep| ep.config_name())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    r.ok(format!(
        "precision (engine.precision = \"{}\", engine.vae_precision = \"{}\") on {}: {}",
        config.engine.precision.name(),
        config.engine.vae_precision.name(),
        in_use[0],
        config.engine.precisions(&in_use).describe()
    ));
}

/// ", NVIDIA …, 7.4 GB of 8.0 GB free, sessions held to 5.9 GB" for a CUDA device whose driver
/// answers; " on Intel(R) Arc(TM) …, 16.0 GB, computes in FP32 FP16 …" for a plugin's device;
/// empty otherwise.
fn device_text(ep: ExecutionProvider, budget: BudgetSetting, plugins: &[PluginDevice]) -> String {
    if let ExecutionProvider::Plugin(p) = ep
        && let Some(device) = plugins.iter().find(|d| d.ep == p)
    {
        let mut text = format!(" on {}", device.name);
        if let Some(memory) = device.memory {
            text.push_str(&format!(", {}", size_text(memory)));
        }
        if !device.capabilities.is_empty() {
            text.push_str(&format!(", computes in {}", device.capabilities.join(" ")));
        }
        if !device.provider_version.is_empty() {
            text.push_str(&format!(", plugin {}", device.provider_version));
        }
        return text;
    }
    let ExecutionProvider::Cuda { device_id } = ep else {
        return String::new();
    };
    let Ok(memory) = crate::engine::cuda_device_memory(device_id) else {
        return String::new();
    };
    let held = match budget.resolve(Some((memory.free, memory.total))) {
        Some(bytes) => format!(", warm sessions held to {}", size_text(bytes)),
        None => String::new(),
    };
    format!(
        " on {}, {} of {} free{held}",
        memory.name,
        size_text(memory.free),
        size_text(memory.total)
    )
}

fn provider_fix(ep: ExecutionProvider) -> &'static str {
    match ep {
        ExecutionProvider::Cuda { .. } => {
            "install what the line above names (`tessera runtime install --package onnxruntime-gpu` brings the CUDA and cuDNN libraries; the NVIDIA driver comes from NVIDIA), or set engine.execution_providers = [\"cpu\"] in config.toml"
        }
        ExecutionProvider::DirectMl { .. } => {
            "update the graphics driver (DirectX 12), or set engine.execution_providers = [\"cpu\"] in config.toml"
        }
        ExecutionProvider::Plugin(_) => {
            "install the plugin again (`tessera runtime install --providers LIST --force`), or choose another provider in engine.execution_providers (config.toml); the CPU runs the jobs meanwhile"
        }
        _ => "set engine.execution_providers = [\"cpu\"] in config.toml",
    }
}

/// The CUDA and cuDNN libraries recorded for the runtime in `runtime/cuda/`: one line each,
/// present with its size, or missing with the size expected and the folder looked in.
fn cuda_libraries(r: &mut Report, dir: &DataDir) {
    let Some(record) = runtime::read_record(&dir.runtime()) else {
        return;
    };
    let folder = crate::store::cuda::folder(&dir.runtime());
    let reinstall = format!(
        "run `tessera runtime install --package {} --version {}` (or tessera-install again): it fetches what is missing",
        record.package, record.version
    );
    let Some(cuda) = &record.cuda else {
        if record.providers.iter().any(|p| p == "cuda") {
            if record.dependencies_read {
                r.note(format!(
                    "the {} {} wheel names no CUDA wheels: its CUDA provider uses the system's CUDA and cuDNN",
                    record.package, record.version
                ));
            } else {
                r.problem(
                    format!(
                        "no CUDA or cuDNN libraries are installed for {} {} (looked in {})",
                        record.package,
                        record.version,
                        folder.display()
                    ),
                    &reinstall,
                );
            }
        }
        return;
    };
    let states = cuda.states(&dir.runtime());
    let present = states
        .iter()
        .filter(|(_, s)| *s == cuda::LibraryState::Present)
        .count();
    r.ok(format!(
        "{} libraries for {} {} in {}: {present} of {} present",
        cuda.label(),
        record.package,
        record.version,
        folder.display(),
        states.len()
    ));
    if let Some(major) = cuda.cuda_major {
        let proc_version = Path::new("/proc/driver/nvidia/version");
        match crate::store::accelerator::detect_nvidia(proc_version) {
            Some(driver) => match cuda::driver_supports(&driver, major) {
                Ok(Some(minimum)) => {
                    r.ok(format!("{driver}: runs CUDA {major} ({minimum} or newer)"))
                }
                Ok(None) => r.note(format!(
                    "{driver}: its version does not say whether it runs CUDA {major}"
                )),
                Err(reason) => r.problem(
                    reason,
                    "update the NVIDIA driver (or set engine.execution_providers = [\"cpu\"])",
                ),
            },
            None => r.note(format!(
                "no NVIDIA driver found ({}, nvidia-smi): CUDA cannot start without it",
                proc_version.display()
            )),
        }
    }
    let origin = |library: &cuda::Library| {
        let version = cuda
            .packages
            .iter()
            .find(|p| p.name == library.package)
            .map(|p| format!(" {}", p.version))
            .unwrap_or_default();
        format!("{}{version}", library.package)
    };
    for (library, state) in &states {
        match state {
            cuda::LibraryState::Present => r.ok(format!(
                "{} {} ({})",
                library.file,
                size_text(library.size),
                origin(library)
            )),
            cuda::LibraryState::Missing => r.problem_line(format!(
                "{} is missing: {} expected from {}, looked in {}",
                library.file,
                size_text(library.size),
                origin(library),
                folder.display()
            )),
            cuda::LibraryState::WrongSize(size) => r.problem_line(format!(
                "{} is {}, not the {} installed from {}, in {}",
                library.file,
                size_text(*size),
                size_text(library.size),
                origin(library),
                folder.display()
            )),
        }
    }
    if present < states.len() {
        r.fix(&reinstall);
    }
}

/// The plugin providers recorded with the runtime: each present with its size, or the files
/// missing or changed in size, with the command that puts them back.
fn plugin_files(r: &mut Report, dir: &DataDir) {
    let Some(record) = runtime::read_record(&dir.runtime()) else {
        return;
    };
    for plugin in &record.plugins {
        let folder = plugin.folder(dir);
        let damaged = plugin.damaged(dir);
        if damaged.is_empty() {
            r.ok(format!(
                "{} {} in {}: {} files, {}",
                plugin.package,
                plugin.version,
                folder.display(),
                plugin.files.len(),
                size_text(plugin.bytes())
            ));
            continue;
        }
        let names: Vec<String> = damaged
            .iter()
            .map(|f| format!("{} ({})", f.file, size_text(f.size)))
            .collect();
        r.problem(
            format!(
                "{} {} in {}: {} missing or changed",
                plugin.package,
                plugin.version,
                folder.display(),
                names.join(", ")
            ),
            format!(
                "run `tessera runtime install --providers {} --force` (or tessera-install again)",
                record.providers.join(",")
            ),
        );
    }
}

/// What the engine's start preloaded from `runtime/cuda/`, and what would not load.
fn cuda_preload(r: &mut Report, cuda_configured: bool) {
    let Some(preloaded) = crate::engine::preloaded_cuda_libraries() else {
        return;
    };
    r.ok(format!(
        "preloaded {} of {} CUDA libraries",
        preloaded.loaded.len(),
        preloaded.loaded.len() + preloaded.failed.len()
    ));
    for (path, reason) in &preloaded.failed {
        let text = format!("{} does not load: {reason}", path.display());
        if cuda_configured {
            r.problem_line(text);
        } else {
            r.note(text);
        }
    }
    if cuda_configured && !preloaded.failed.is_empty() {
        r.fix(
            "a missing libcuda.so.1 or nvcuda.dll means no NVIDIA driver: install or update it; a missing file of runtime/cuda: `tessera runtime install --package onnxruntime-gpu`",
        );
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
