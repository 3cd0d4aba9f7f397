//! The plug-in step: the Krita plug-in goes into every Krita resource folder found (native,
//! Flatpak) the way Krita's own *Import Python Plugin from File…* lays out its release zip
//! (`<name>.desktop` and `<name>/` into `pykrita/`, `<name>.action` into `actions/`), and is
//! enabled in that install's `kritarc`; the GIMP plug-in goes into each GIMP 3.x `plug-ins`
//! folder found, executable, with the protocol codec `tessera_client/` beside it.

use crate::files;
use anyhow::{Context, bail};
use std::io::Read;
use std::path::PathBuf;
use tessera::setup::kritarc;
use tessera::setup::places::{Editor, EditorPlace};
use tessera::setup::record::{IniEntry, InstallRecord, Item};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// The plug-in files to place.
pub struct Bundle {
    pub krita: Result<KritaBundle, String>,
    /// (path below `plug-ins/`, content, executable); empty when this build has none.
    pub gimp: Vec<(String, Vec<u8>, bool)>,
}

pub struct KritaBundle {
    /// The package name (`X-KDE-Library`), e.g. `tessera_krita`.
    pub name: String,
    /// (path below the resource folder, content).
    pub files: Vec<(String, Vec<u8>)>,
}

impl Bundle {
    /// The plug-ins compiled into this program.
    pub fn embedded() -> Bundle {
        Bundle {
            krita: match embedded::KRITA_ZIP {
                Some(zip) => KritaBundle::from_zip(zip).map_err(|e| e.to_string()),
                None => Err(embedded::KRITA_MISSING_REASON.to_owned()),
            },
            gimp: embedded::GIMP
                .iter()
                .map(|(path, bytes, exec)| ((*path).to_owned(), bytes.to_vec(), *exec))
                .collect(),
        }
    }
}

impl KritaBundle {
    /// Reads a release zip with the importer's rules.
    pub fn from_zip(bytes: &[u8]) -> anyhow::Result<KritaBundle> {
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .context("the Krita plug-in zip cannot be read")?;
        let mut entries = Vec::new();
        for i in 0..archive.len() {
            let mut entry = archive.by_index(i)?;
            if entry.is_dir() {
                continue;
            }
            let name = entry
                .enclosed_name()
                .context("the Krita plug-in zip holds an unsafe path")?
                .to_string_lossy()
                .replace('\\', "/");
            let mut content = Vec::new();
            entry.read_to_end(&mut content)?;
            entries.push((name, content));
        }
        let desktop = entries
            .iter()
            .find(|(n, _)| !n.contains('/') && n.ends_with(".desktop"))
            .context("the Krita plug-in zip has no .desktop file")?;
        let name = String::from_utf8_lossy(&desktop.1)
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("X-KDE-Library=")
                    .map(|v| v.trim().to_owned())
            })
            .context("the Krita plug-in's .desktop file names no X-KDE-Library")?;
        let package = format!("{name}/");
        let mut files = Vec::new();
        for (entry, content) in entries {
            let target = if entry.starts_with(&package) || entry == format!("{name}.desktop") {
                format!("pykrita/{entry}")
            } else if !entry.contains('/') && entry.ends_with(".action") {
                format!("actions/{entry}")
            } else {
                continue;
            };
            files.push((target, content));
        }
        if !files
            .iter()
            .any(|(p, _)| *p == format!("pykrita/{name}/__init__.py"))
        {
            bail!("the Krita plug-in zip has no {name}/__init__.py");
        }
        Ok(KritaBundle { name, files })
    }

    /// The `kritarc` key that enables it.
    pub fn enable_key(&self) -> String {
        format!("enable_{}", self.name)
    }
}

/// Places the plug-ins into every editor install found; returns one report line per place.
pub fn install(
    record: &mut InstallRecord,
    places: &[EditorPlace],
    bundle: &Bundle,
) -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
    for place in places {
        if !place.found() {
            report.push(format!("{:<20} not found", place.label()));
            continue;
        }
        let line = match place.editor {
            Editor::Krita => match &bundle.krita {
                Ok(krita) => install_krita(record, place, krita)?,
                Err(reason) => format!(
                    "{:<20} skipped: no Krita plug-in in this build ({reason})",
                    place.label()
                ),
            },
            Editor::Gimp if bundle.gimp.is_empty() => format!(
                "{:<20} skipped: no GIMP plug-in in this build",
                place.label()
            ),
            Editor::Gimp => install_gimp(record, place, &bundle.gimp)?,
        };
        report.push(line);
    }
    Ok(report)
}

fn install_krita(
    record: &mut InstallRecord,
    place: &EditorPlace,
    krita: &KritaBundle,
) -> anyhow::Result<String> {
    let mut written = Vec::new();
    for (rel, content) in &krita.files {
        let path = place.folder.join(rel);
        files::install(record, &path, content, false, Item::Plugin)?;
        written.push(path);
    }
    let package = place.folder.join("pykrita").join(&krita.name);
    files::remove_stale(record, Item::Plugin, &package, &written);
    let kritarc = place.settings.clone().context("Krita has a kritarc")?;
    let existed = kritarc.exists();
    let before = if existed {
        std::fs::read_to_string(&kritarc)
            .with_context(|| format!("cannot read {}", kritarc.display()))?
    } else {
        String::new()
    };
    let key = krita.enable_key();
    let edit = kritarc::set(&before, "python", &key, "true");
    if edit.text != before {
        if let Some(folder) = kritarc.parent() {
            record.create_dir_all(folder)?;
        }
        std::fs::write(&kritarc, &edit.text)
            .with_context(|| format!("cannot write {}", kritarc.display()))?;
    }
    record.note_ini(IniEntry {
        path: kritarc.clone(),
        group: "python".into(),
        key: key.clone(),
        previous: edit.previous,
        created_file: !existed,
        created_group: edit.created_group,
    });
    Ok(format!(
        "{:<20} {} (enabled in {})",
        place.label(),
        package.display(),
        kritarc.display()
    ))
}

fn install_gimp(
    record: &mut InstallRecord,
    place: &EditorPlace,
    gimp: &[(String, Vec<u8>, bool)],
) -> anyhow::Result<String> {
    let mut written: Vec<PathBuf> = Vec::new();
    for (rel, content, exec) in gimp {
        let path = place.folder.join(rel);
        files::install(record, &path, content, *exec, Item::Plugin)?;
        written.push(path);
    }
    let folder = place.folder.join("tessera-upscale");
    files::remove_stale(record, Item::Plugin, &folder, &written);
    Ok(format!("{:<20} {}", place.label(), folder.display()))
}
