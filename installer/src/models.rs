//! The model step: which manifest entries to install (the default set plus `--with NAME`), files
//! already present and valid are skipped, files the user has (`--models-from DIR`) are imported
//! after the same checks as a download, and the rest are downloaded from their sources in order.

use crate::download::{Fetcher, SourceError, host, partial_path};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use tessera_store::manifest::{Manifest, ModelSpec};
use tessera_store::setup::record::{InstallRecord, Item};
use tessera_store::space::size_text;
use tessera_store::{DataDir, space};

pub struct ModelOptions<'a> {
    pub manifest: &'a Manifest,
    /// Opt-in models asked for by name.
    pub with: &'a [String],
    /// A folder of files the user already has.
    pub from: Option<&'a Path>,
    pub fetcher: &'a Fetcher,
}

/// Picks the entries to install; an unknown name is an error listing the known ones.
pub fn selection<'a>(
    manifest: &'a Manifest,
    with: &[String],
) -> anyhow::Result<Vec<&'a ModelSpec>> {
    let mut chosen: Vec<&ModelSpec> = manifest.defaults().collect();
    for name in with {
        let Some(spec) = manifest.find(name) else {
            let known: Vec<_> = manifest.models.iter().map(|m| m.name.as_str()).collect();
            bail!(
                "there is no model named {name:?} in the manifest (known: {})",
                known.join(", ")
            );
        };
        if !chosen.iter().any(|c| c.name == spec.name) {
            chosen.push(spec);
        }
    }
    Ok(chosen)
}

/// What the model step is about to do, in one line: how many files, how large, and how much of
/// that is still to be downloaded (or imported).
pub fn summary(dir: &DataDir, chosen: &[&ModelSpec], from: Option<&Path>) -> String {
    let files = |n: usize| format!("{n} file{}", if n == 1 { "" } else { "s" });
    let total: u64 = chosen.iter().map(|s| s.size).sum();
    let missing: Vec<_> = chosen.iter().filter(|s| !s.path(dir).exists()).collect();
    let all = format!("{} ({})", files(chosen.len()), size_text(total));
    if missing.is_empty() {
        return format!("{all}, all in place: checking them");
    }
    let bytes = size_text(missing.iter().map(|s| s.size).sum());
    let how = match from {
        Some(folder) => format!("to import from {} or download", folder.display()),
        None => "to download".to_owned(),
    };
    format!("{all}; {} not here yet: {bytes} {how}", missing.len())
}

/// Installs the selected models, recording what it added. Stops at the first model that can
/// be neither found, imported nor downloaded, with one line saying which and what to do.
pub fn install(
    dir: &DataDir,
    record: &mut InstallRecord,
    options: &ModelOptions,
) -> anyhow::Result<()> {
    let chosen = selection(options.manifest, options.with)?;
    println!("  {}", summary(dir, &chosen, options.from));
    let staging = dir.cache().join("downloads");
    record
        .create_dir_all(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    check_free_space(dir, &staging, &chosen)?;
    for spec in chosen {
        if spec.licence_note.is_some() {
            println!("  {}: licence {}", spec.name, spec.licence_text());
        }
        let target = spec.path(dir);
        if target.exists() {
            match spec.verify(&target) {
                Ok(()) => {
                    println!(
                        "  {:<24} present and valid ({})",
                        spec.file,
                        shown(dir, &target)
                    );
                    continue;
                }
                Err(why) => bail!(
                    "{} is there but is not the expected {} ({why}); it was left alone: move it away and run tessera-install again",
                    target.display(),
                    spec.name
                ),
            }
        }
        if let Some(from) = options.from
            && let Some(found) = import(spec, from, &staging, &target)?
        {
            record.note_file(&target, Item::Model, spec.sha256.clone());
            println!("  {:<24} imported from {}", spec.file, found.display());
            continue;
        }
        download(spec, &staging, &target, options)?;
        record.note_file(&target, Item::Model, spec.sha256.clone());
        println!(
            "  {:<24} downloaded and verified ({})",
            spec.file,
            shown(dir, &target)
        );
    }
    Ok(())
}

/// Refuses to start when the files still to fetch or import do not fit on the disk of the data
/// directory, before a byte is written: a 4 GB download that fails at 90 % helps nobody. Bytes
/// of partial files already there count as fetched.
fn check_free_space(dir: &DataDir, staging: &Path, chosen: &[&ModelSpec]) -> anyhow::Result<()> {
    let needed: u64 = chosen
        .iter()
        .filter(|spec| !spec.path(dir).exists())
        .map(|spec| {
            let fetched = std::fs::metadata(partial_path(staging, spec)).map_or(0, |m| m.len());
            spec.size.saturating_sub(fetched)
        })
        .sum();
    if let Err(short) = space::ensure_room(staging, needed) {
        bail!(
            "not enough free space for the models: {} to fetch and {} free on the disk of {}; free {} there (or choose another data directory with --data-dir) and run tessera-install again",
            size_text(short.needed),
            size_text(short.free),
            dir.root().display(),
            size_text(short.to_free())
        );
    }
    Ok(())
}

fn download(
    spec: &ModelSpec,
    staging: &Path,
    target: &Path,
    options: &ModelOptions,
) -> anyhow::Result<()> {
    let partial = partial_path(staging, spec);
    let mut failures: Vec<String> = Vec::new();
    for source in &spec.sources {
        let failure = match options.fetcher.fetch(spec, &source.url, &partial, target) {
            Ok(()) => return Ok(()),
            Err(SourceError::Disk(reason)) => bail!("cannot save {}: {reason}", spec.file),
            Err(error @ SourceError::Unreachable(_)) => error.to_string(),
            Err(error) => format!("{}: {error}", host(&source.url)),
        };
        // Mirrors on one host fail alike (no network, say): say it once.
        if !failures.contains(&failure) {
            failures.push(failure);
        }
    }
    bail!(
        "could not fetch {}: {}; download it from {} ({} bytes, SHA-256 {}) and run `tessera-install --models-from DIR` with the folder that holds it",
        spec.file,
        failures.join("; "),
        spec.sources[0].url,
        spec.size,
        spec.sha256
    )
}

/// Finds `spec` in `from` (by file name, any case, else by size and SHA-256 under another
/// name), copies it into place through a partial file, and verifies it. `None` when absent.
fn import(
    spec: &ModelSpec,
    from: &Path,
    staging: &Path,
    target: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    let entries = std::fs::read_dir(from)
        .with_context(|| format!("cannot read the folder {}", from.display()))?;
    let files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    let by_name = files.iter().find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.eq_ignore_ascii_case(&spec.file))
    });
    let source = match by_name {
        Some(path) => {
            if let Err(why) = spec.verify(path) {
                bail!(
                    "{} is not the expected {} ({why}); get the file again (SHA-256 {})",
                    path.display(),
                    spec.name,
                    spec.sha256
                );
            }
            path.clone()
        }
        None => match files
            .iter()
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == spec.size))
            .find(|p| spec.verify(p).is_ok())
        {
            Some(path) => path.clone(),
            None => return Ok(None),
        },
    };
    let partial = partial_path(staging, spec);
    std::fs::copy(&source, &partial).with_context(|| {
        format!(
            "cannot copy {} into {}",
            source.display(),
            partial.display()
        )
    })?;
    if let Err(why) = spec.verify(&partial) {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "the copy of {} is damaged ({why}) and was deleted",
            source.display()
        );
    }
    std::fs::rename(&partial, target)
        .with_context(|| format!("cannot move {} into place", target.display()))?;
    Ok(Some(source))
}

/// A path relative to the data directory when it is inside it.
fn shown(dir: &DataDir, path: &Path) -> String {
    path.strip_prefix(dir.root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The opt-in models not installed, with their licences, for the closing report.
pub fn offers(dir: &DataDir, manifest: &Manifest) -> Vec<String> {
    manifest
        .opt_ins()
        .filter(|spec| !spec.path(dir).exists())
        .map(|spec| {
            format!(
                "{} — {} — licence {} — add it with `tessera-install --with {}`",
                spec.name,
                spec.role,
                spec.licence_text(),
                spec.name
            )
        })
        .collect()
}
