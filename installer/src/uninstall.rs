//! `tessera-install --uninstall`: stops the daemon, undoes the service registration, deletes
//! the files the record lists (models only with `--remove-models`) and the CUDA libraries the
//! runtime it installed lists, puts `kritarc` keys back as they were, and removes the folders
//! the installer created once they are empty. Anything not in the record (the user's own
//! models, logs, settings) is left alone and reported.

use crate::service;
use tessera_protocol::paths;
use tessera_store::setup::kritarc;
use tessera_store::setup::record::{InstallRecord, Item};
use tessera_store::{DataDir, runtime};

/// Undoes the install recorded in `dir`; returns report lines.
pub fn run(
    dir: &DataDir,
    location: &paths::DataDir,
    remove_models: bool,
) -> anyhow::Result<Vec<String>> {
    let mut record = InstallRecord::load(dir)?;
    let mut report = Vec::new();
    if record.is_empty() {
        report.push(format!(
            "nothing to remove: tessera-install has no record in {}",
            dir.root().display()
        ));
        return Ok(report);
    }
    if stop_daemon(location) {
        report.push("stopped the running daemon".into());
    }
    if let Some(entry) = record.service.take() {
        if let Some(problem) = service::deactivate(&entry) {
            report.push(problem);
        }
        let _ = std::fs::remove_file(&entry.path);
        service::reload(&entry);
        report.push(format!(
            "removed the login service {}",
            entry.path.display()
        ));
    }
    let mut kept = InstallRecord::default();
    let mut removed = 0;
    // The CUDA libraries of the runtime the installer put there, as its record lists them now
    // (`tessera runtime install` may have replaced them since).
    let runtime_record = dir.runtime().join("runtime.toml");
    if record
        .files_of(Item::Runtime)
        .any(|f| f.path == runtime_record)
        && let Some(cuda) = runtime::read_record(&dir.runtime()).and_then(|r| r.cuda)
    {
        for path in cuda.paths(&dir.runtime()) {
            if std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        let _ = std::fs::remove_dir(tessera_store::cuda::folder(&dir.runtime()));
    }
    for file in std::mem::take(&mut record.files) {
        if file.item == Item::Model && !remove_models {
            kept.files.push(file);
            continue;
        }
        match std::fs::remove_file(&file.path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => report.push(format!("could not remove {}: {e}", file.path.display())),
        }
    }
    report.push(format!("removed {removed} installed files"));
    for entry in std::mem::take(&mut record.ini) {
        let Ok(text) = std::fs::read_to_string(&entry.path) else {
            continue;
        };
        let restored = kritarc::restore(
            &text,
            &entry.group,
            &entry.key,
            entry.previous.as_deref(),
            entry.created_group,
        );
        let outcome = if entry.created_file && restored.trim().is_empty() {
            std::fs::remove_file(&entry.path)
        } else if restored != text {
            std::fs::write(&entry.path, &restored)
        } else {
            Ok(())
        };
        match outcome {
            Ok(()) => report.push(format!(
                "restored [{}] {} in {}",
                entry.group,
                entry.key,
                entry.path.display()
            )),
            Err(e) => report.push(format!("could not restore {}: {e}", entry.path.display())),
        }
    }
    let record_path = InstallRecord::path(dir);
    let _ = std::fs::remove_file(&record_path);
    let mut left = Vec::new();
    for folder in record.dirs.iter().rev() {
        let holds_kept = kept.files.iter().any(|f| f.path.starts_with(folder));
        if holds_kept {
            kept.dirs.insert(0, folder.clone());
            continue;
        }
        if std::fs::remove_dir(folder).is_err() && folder.exists() {
            left.push(folder.display().to_string());
        }
    }
    if !kept.files.is_empty() {
        kept.save(dir)?;
        report.push(format!(
            "kept {} downloaded model(s) in {} (remove them with --uninstall --remove-models)",
            kept.files.len(),
            dir.models_root().display()
        ));
    }
    if !left.is_empty() {
        report.push(format!(
            "left in place because they hold files tessera-install did not add: {}",
            left.join(", ")
        ));
    }
    Ok(report)
}

/// Asks a daemon serving this data directory to shut down, so its program can be removed.
fn stop_daemon(location: &paths::DataDir) -> bool {
    let address = paths::socket_address(None, location);
    match tessera_protocol::client::Client::connect(&address, "tessera-install") {
        Ok(mut client) => client.shutdown().is_ok(),
        Err(_) => false,
    }
}
