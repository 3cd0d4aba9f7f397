//! `tessera-install`: sets up Tessera for this user in one command, in this order: the data
//! directory; the ONNX Runtime library (the onnxruntime wheel that fits the machine, through
//! the user's pip, or a library the user already has); the `tessera` program and its login
//! service; the Krita and GIMP plug-ins; the default models. Everything it adds is recorded in
//! `<data dir>/install.toml`, which `--uninstall` and `tessera doctor` read.

mod download;
mod files;
mod models;
mod plugins;
mod service;
mod uninstall;

use anyhow::{Context, bail};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tessera_protocol::{ModelKind, paths};
use tessera_store::manifest::Manifest;
use tessera_store::plugin_providers::PluginProvider;
use tessera_store::setup::places::Home;
use tessera_store::setup::record::{InstallRecord, Item};
use tessera_store::{DataDir, accelerator, runtime};

#[derive(Debug, Parser)]
#[command(
    name = "tessera-install",
    version,
    about = "Set up Tessera for this user: ONNX Runtime, the tessera program and its login service, the Krita and GIMP plug-ins, the default models"
)]
struct Args {
    /// Data directory [env: TESSERA_DATA_DIR]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Use this ONNX Runtime library instead of fetching one
    #[arg(long, value_name = "FILE")]
    ort_lib: Option<PathBuf>,
    /// onnxruntime package to fetch (default: chosen for this machine: onnxruntime,
    /// onnxruntime-gpu or onnxruntime-directml)
    #[arg(long, alias = "package", value_name = "NAME")]
    ort_package: Option<String>,
    /// Execution providers to install and use, best first, comma-separated (e.g.
    /// `openvino:gpu,cpu`, `webgpu`, `cuda`, `cpu`); plugin providers are fetched into
    /// runtime/plugins/ (default: chosen for this machine's GPU)
    #[arg(long, value_name = "LIST")]
    providers: Option<String>,
    /// onnxruntime release [default: 1.32.0; 1.31.1 for onnxruntime-gpu]
    #[arg(long)]
    ort_version: Option<String>,
    /// Package index for pip instead of the configured one (a mirror; the tests' local index)
    #[arg(long, value_name = "URL", env = "TESSERA_PIP_INDEX_URL")]
    pip_index_url: Option<String>,
    /// Use this onnxruntime wheel file instead of downloading one
    #[arg(long, value_name = "FILE")]
    wheel: Option<PathBuf>,
    /// Also install this opt-in model (repeatable; see the list at the end of an install)
    #[arg(long, value_name = "NAME")]
    with: Vec<String>,
    /// Take model files from this folder instead of downloading them (they are verified)
    #[arg(long, value_name = "DIR")]
    models_from: Option<PathBuf>,
    /// Read the model list from this manifest instead of the built-in one
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// The tessera program to install (default: the one next to tessera-install)
    #[arg(long, value_name = "FILE")]
    tessera_bin: Option<PathBuf>,
    /// Skip the models
    #[arg(long)]
    no_models: bool,
    /// Skip installing the program and its login service
    #[arg(long)]
    no_service: bool,
    /// Skip the editor plug-ins
    #[arg(long)]
    no_plugins: bool,
    /// Remove everything tessera-install added (models it fetched stay unless --remove-models)
    #[arg(long)]
    uninstall: bool,
    /// With --uninstall: also delete the models tessera-install fetched or imported
    #[arg(long, requires = "uninstall")]
    remove_models: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera-install: {}", tessera_store::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let location = paths::data_dir(args.data_dir.as_deref())?;
    let home = Home::from_env().context(if cfg!(windows) {
        "cannot find the user's profile folder (USERPROFILE is not set)"
    } else {
        "cannot find the home folder (HOME is not set)"
    })?;
    if args.uninstall {
        if !location.path.is_dir() {
            println!(
                "nothing to remove: {} does not exist",
                location.path.display()
            );
            return Ok(());
        }
        let dir = DataDir::open(&location.path)?;
        for line in uninstall::run(&dir, &location, args.remove_models)? {
            println!("{line}");
        }
        return Ok(());
    }
    let manifest = match &args.manifest {
        Some(path) => Manifest::load(path)?,
        None => Manifest::builtin(),
    };
    // Refuse unknown model names before doing anything.
    models::selection(&manifest, &args.with)?;

    let mut record = InstallRecord::default();
    let dir = open_data_dir(&location.path, &mut record)?;
    let mut previous = InstallRecord::load(&dir)?;
    merge(&mut previous, record);
    let mut record = previous;
    println!("data directory   {}", dir.root().display());

    let result = steps(&args, &home, &location, &dir, &manifest, &mut record);
    record.save(&dir)?;
    result?;

    let offers = models::offers(&dir, &manifest);
    if !offers.is_empty() {
        println!("\noptional models:");
        for offer in offers {
            println!("  {offer}");
        }
    }
    println!(
        "\nready: `tessera upscale IN.png -o OUT.png`, or Filters ▸ Enhance ▸ Tessera Upscale… in GIMP and the Tessera docker in Krita; `tessera doctor` checks the setup"
    );
    Ok(())
}

fn steps(
    args: &Args,
    home: &Home,
    location: &paths::DataDir,
    dir: &DataDir,
    manifest: &Manifest,
    record: &mut InstallRecord,
) -> anyhow::Result<()> {
    install_runtime(args, dir, record)?;
    record.save(dir)?;
    if !args.no_service {
        let source = match &args.tessera_bin {
            Some(path) => path.clone(),
            None => sibling_program()?,
        };
        let program = service::install_program(record, home, &source)?;
        println!("program          {}", program.display());
        if !on_path(&home.bin_dir()) {
            println!(
                "                 (add {} to PATH to type `tessera` in a terminal)",
                home.bin_dir().display()
            );
        }
        let launch = service::Launch {
            tray: service::has_tray(&program),
            program,
            data_dir: location.explicit.then(|| dir.root().to_path_buf()),
        };
        let line = service::install_service(record, home, &launch)?;
        println!("login service    {line}");
        record.save(dir)?;
    }
    if !args.no_plugins {
        let mut places = home.krita_places();
        places.extend(home.gimp_places());
        let bundle = plugins::Bundle::embedded();
        let lines = plugins::install(record, &places, &bundle)?;
        println!("plug-ins");
        for line in &lines {
            println!("  {line}");
        }
        if places.iter().all(|p| !p.found()) {
            println!(
                "  no Krita and no GIMP 3 found for this user: start the editor once, then run tessera-install again"
            );
        }
        record.save(dir)?;
    }
    if !args.no_models {
        println!("models ({})", dir.models_root().display());
        let fetcher = download::Fetcher::new(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        models::install(
            dir,
            record,
            &models::ModelOptions {
                manifest,
                with: &args.with,
                from: args.models_from.as_deref(),
                fetcher: &fetcher,
            },
        )?;
        let staging = dir.cache().join("downloads");
        if std::fs::read_dir(&staging).is_ok_and(|mut d| d.next().is_none())
            && record.dirs.contains(&staging)
        {
            let _ = std::fs::remove_dir(&staging);
            record.dirs.retain(|d| *d != staging);
        }
    }
    Ok(())
}

/// Opens the data directory, recording the folders of its layout that did not exist.
fn open_data_dir(root: &Path, record: &mut InstallRecord) -> anyhow::Result<DataDir> {
    let mut layout = vec![root.to_path_buf(), root.join("models")];
    layout.extend(
        ModelKind::ALL
            .iter()
            .map(|k| root.join("models").join(k.folder())),
    );
    layout.extend(["runtime", "cache", "logs"].map(|f| root.join(f)));
    let mut missing: Vec<PathBuf> = root
        .ancestors()
        .skip(1)
        .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
        .map(Path::to_path_buf)
        .collect();
    missing.reverse();
    missing.extend(layout.into_iter().filter(|p| !p.exists()));
    let dir = DataDir::open(root)
        .with_context(|| format!("cannot create the data directory {}", root.display()))?;
    for folder in missing {
        record.note_dir(&folder);
    }
    Ok(dir)
}

/// Adds what this run recorded to what earlier runs did.
fn merge(into: &mut InstallRecord, new: InstallRecord) {
    for d in new.dirs {
        into.note_dir(&d);
    }
}

fn install_runtime(args: &Args, dir: &DataDir, record: &mut InstallRecord) -> anyhow::Result<()> {
    let cuda = tessera_store::cuda::folder(&dir.runtime());
    let wheels = dir.cache().join("wheels");
    let plugin_dirs: Vec<PathBuf> = PluginProvider::ALL
        .iter()
        .map(|p| tessera_store::plugin_providers::folder(dir.root(), *p))
        .collect();
    let plugins_root = dir.runtime().join("plugins");
    let mut folders = vec![
        dir.runtime(),
        cuda.clone(),
        wheels.clone(),
        plugins_root.clone(),
    ];
    folders.extend(plugin_dirs.iter().cloned());
    let before = listing(&folders);
    let result = fetch_runtime(args, dir);
    // What the step added is recorded even when it failed half way, for --uninstall.
    for folder in [&wheels, &cuda, &plugins_root]
        .into_iter()
        .chain(&plugin_dirs)
    {
        if folder.is_dir() && !before.contains(folder) && !record.dirs.contains(folder) {
            record.note_dir(folder);
        }
    }
    for path in listing(&folders) {
        if !before.contains(&path) && path.is_file() {
            let item = if path.starts_with(&wheels) {
                Item::Wheel
            } else {
                Item::Runtime
            };
            // The CUDA libraries' hashes are in the runtime's record (2 GB need not be read
            // twice); a half-done step leaves them unhashed here.
            let sha = if path.starts_with(&cuda) {
                String::new()
            } else {
                tessera_store::hashes::sha256_file(&path).unwrap_or_default()
            };
            record.note_file(&path, item, sha);
        }
    }
    let installed = result?;
    if let Some(libraries) = &installed.cuda {
        println!("                 {}", libraries.summary(&dir.runtime()));
        if let Some(major) = libraries.cuda_major
            && let Some(driver) = accelerator::Machine::detect().nvidia
            && let Err(reason) = tessera_store::cuda::driver_supports(&driver, major)
        {
            println!(
                "                 warning: {reason}: CUDA will not start until it is updated (the CPU works meanwhile)"
            );
        }
        // The CUDA libraries are this runtime's, whoever unpacked them first: they go with it.
        if !record.dirs.contains(&cuda) {
            record.note_dir(&cuda);
        }
        for library in &libraries.libraries {
            record.note_file(
                &cuda.join(&library.file),
                Item::Runtime,
                library.sha256.clone(),
            );
        }
    }
    for plugin in &installed.plugins {
        println!(
            "                 {} {} in {}",
            plugin.package,
            plugin.version,
            plugin.folder(dir).display()
        );
    }
    println!(
        "                 execution providers: {}",
        installed.providers.join(", ")
    );
    Ok(())
}

/// The runtime step itself: a library the user has, or the onnxruntime wheel for this machine
/// (with the CUDA libraries a GPU wheel names).
fn fetch_runtime(args: &Args, dir: &DataDir) -> anyhow::Result<runtime::InstalledRuntime> {
    if let Some(lib) = &args.ort_lib {
        let found = tessera_store::ort_library::locate(Some(lib), dir.root())?;
        let adopted = runtime::adopt(dir, &found)?;
        println!(
            "ONNX Runtime     {} (yours, linked into {})",
            found.display(),
            dir.runtime().display()
        );
        return Ok(adopted);
    }
    let plan = tessera_store::accelerator::runtime_plan(
        args.ort_package.clone(),
        args.providers.as_deref(),
    )?;
    let version = args
        .ort_version
        .clone()
        .unwrap_or_else(|| runtime::default_version(&plan.package).to_owned());
    println!(
        "ONNX Runtime     {} {version} ({})",
        plan.package, plan.reason
    );
    let options = runtime::InstallOptions {
        package: plan.package.clone(),
        version,
        wheel: args.wheel.clone(),
        force: false,
        index_url: args.pip_index_url.clone(),
    };
    let mut installed = match runtime::install(dir, &options) {
        Ok(installed) => installed,
        Err(e @ runtime::RuntimeInstallError::NoPython { .. }) => bail!(
            "{e}; or run tessera-install --ort-lib PATH with an ONNX Runtime library you have"
        ),
        Err(e) => return Err(e.into()),
    };
    println!("                 {}", installed.library_path(dir).display());
    if let Some(providers) = &plan.providers {
        installed = tessera_store::plugins::install_for(
            dir,
            providers,
            &tessera_store::plugins::PluginInstallOptions {
                version: None,
                wheel: None,
                force: false,
                index_url: args.pip_index_url.clone(),
            },
        )?;
    }
    Ok(installed)
}

/// The files in `folders` (and the folders themselves when they exist).
fn listing(folders: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for folder in folders {
        if let Ok(entries) = std::fs::read_dir(folder) {
            found.push(folder.clone());
            found.extend(entries.flatten().map(|e| e.path()));
        }
    }
    found
}

/// The `tessera` program built next to this one.
fn sibling_program() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find tessera-install's own path")?;
    let program = me.with_file_name(format!("tessera{}", std::env::consts::EXE_SUFFIX));
    if !program.is_file() {
        bail!(
            "the tessera program is not next to tessera-install ({} is missing): build it with `cargo build --release -p tessera`, or pass --tessera-bin FILE",
            program.display()
        );
    }
    Ok(program)
}

fn on_path(folder: &Path) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d == folder))
}
