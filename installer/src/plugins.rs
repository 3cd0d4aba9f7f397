//! The plug-in step: the Krita plug-in goes into every Krita resource folder found (native,
//! Flatpak) the way Krita's own *Import Python Plugin from File…* lays out its release zip
//! (`<name>.desktop` and `<name>/` into `pykrita/`, `<name>.action` into `actions/`), and is
//! enabled in that install's `kritarc`; the GIMP plug-in goes into each GIMP 3.x `plug-ins`
//! folder found, executable, with the protocol codec `tessera_client/` beside it.

use crate::files;
use anyhow::{Context, bail};
use std::io::Read;
use std::path::PathBuf;
use tessera_store::setup::kritarc;
use tessera_store::setup::places::{Editor, EditorPlace, join_relative};
use tessera_store::setup::record::{IniEntry, InstallRecord, Item};

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
        let path = join_relative(&place.folder, rel);
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
        let path = join_relative(&place.folder, rel);
        files::install(record, &path, content, *exec, Item::Plugin)?;
        written.push(path);
    }
    let folder = place.folder.join("tessera-upscale");
    files::remove_stale(record, Item::Plugin, &folder, &written);
    Ok(format!("{:<20} {}", place.label(), folder.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tessera_store::setup::places::{Home, Platform};

    fn zip(files: &[(&str, &str)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, content) in files {
            writer
                .start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            writer.write_all(content.as_bytes()).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn a_release_zip_is_read_with_the_importers_rules() {
        let bundle = KritaBundle::from_zip(&zip(&[
            ("p.desktop", "[Desktop Entry]\nX-KDE-Library=p\n"),
            ("p.action", "<ActionCollection/>"),
            ("p/__init__.py", ""),
            ("p/vendor/c.py", ""),
            ("README.md", "not a plug-in file"),
        ]))
        .unwrap();
        assert_eq!(bundle.name, "p");
        assert_eq!(bundle.enable_key(), "enable_p");
        let targets: Vec<_> = bundle.files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            targets,
            [
                "pykrita/p.desktop",
                "actions/p.action",
                "pykrita/p/__init__.py",
                "pykrita/p/vendor/c.py"
            ]
        );
        let no_library = zip(&[("p.desktop", "[Desktop Entry]\n"), ("p/__init__.py", "")]);
        assert!(KritaBundle::from_zip(&no_library).is_err());
        let no_package = zip(&[("p.desktop", "X-KDE-Library=p\n")]);
        let err = KritaBundle::from_zip(&no_package)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no p/__init__.py"), "{err}");
    }

    #[test]
    fn gimp_gets_the_executable_plug_in_and_the_codec_in_each_3x_folder() {
        let temp = tempfile::tempdir().unwrap();
        let home = Home::at(Platform::Linux, temp.path());
        for series in [".config/GIMP/2.10", ".config/GIMP/3.0", ".config/GIMP/3.2"] {
            std::fs::create_dir_all(temp.path().join(series)).unwrap();
        }
        std::fs::create_dir_all(temp.path().join(".var/app/org.gimp.GIMP/config/GIMP/3.0"))
            .unwrap();
        let bundle = Bundle {
            krita: Err("none in this test".into()),
            gimp: vec![
                (
                    "tessera-upscale/tessera-upscale.py".into(),
                    b"#!/usr/bin/env python3\n".to_vec(),
                    true,
                ),
                (
                    "tessera-upscale/tessera_client/codec.py".into(),
                    b"codec".to_vec(),
                    false,
                ),
            ],
        };
        let mut record = InstallRecord::default();
        let report = install(&mut record, &home.gimp_places(), &bundle).unwrap();
        assert_eq!(report.len(), 3, "{report:?}");
        for folder in [
            ".config/GIMP/3.0/plug-ins",
            ".config/GIMP/3.2/plug-ins",
            ".var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins",
        ] {
            let plugin = temp.path().join(folder).join("tessera-upscale");
            let script = plugin.join("tessera-upscale.py");
            assert!(script.is_file(), "{folder}");
            assert!(plugin.join("tessera_client/codec.py").is_file(), "{folder}");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&script).unwrap().permissions().mode();
                assert_eq!(
                    mode & 0o777,
                    0o755,
                    "{folder}: GIMP ignores it without the bit"
                );
                let codec = std::fs::metadata(plugin.join("tessera_client/codec.py")).unwrap();
                assert_eq!(codec.permissions().mode() & 0o777, 0o644);
            }
        }
        assert!(!temp.path().join(".config/GIMP/2.10/plug-ins").exists());
        // Created folders are recorded (plug-ins/ did not exist), and files with their hash.
        assert!(
            record
                .dirs
                .contains(&temp.path().join(".config/GIMP/3.2/plug-ins"))
        );
        assert_eq!(record.files.len(), 6);

        // A newer bundle without the codec file: the old copy is removed, not left behind.
        let newer = Bundle {
            krita: Err("none".into()),
            gimp: bundle.gimp[..1].to_vec(),
        };
        install(&mut record, &home.gimp_places(), &newer).unwrap();
        assert!(
            !temp
                .path()
                .join(".config/GIMP/3.0/plug-ins/tessera-upscale/tessera_client/codec.py")
                .exists()
        );
        assert_eq!(record.files.len(), 3);
    }
}
