//! The model manifest: the files `tessera-install` fetches and `tessera doctor` checks, with
//! their exact size, SHA-256, licence and pinned sources. The built-in list is `models.toml`
//! beside this file; `tessera-install --manifest FILE` reads another one in the same format.

use super::DataDir;
use super::hashes::sha256_file;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tessera_protocol::ModelKind;

/// The manifest compiled into the binaries.
pub const BUILTIN: &str = include_str!("models.toml");

/// Whether a plain install fetches the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Set {
    /// Installed by default: what a default job needs; never a non-commercial licence.
    Default,
    /// Installed only when asked for by name (`--with NAME`).
    OptIn,
}

/// One place a model can be downloaded from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub url: String,
    /// The tag, commit or branch the URL names (it must appear in the URL). Where it is a branch,
    /// the size and SHA-256 check is what pins the bytes.
    pub revision: String,
}

/// One model file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    /// File name inside the kind's folder.
    pub file: String,
    #[serde(deserialize_with = "kind_from_str")]
    pub kind: ModelKind,
    pub set: Set,
    /// What the pipeline uses it for, in a sentence.
    pub role: String,
    pub size: u64,
    pub sha256: String,
    /// SPDX identifier where there is one, else the licence as its source states it (or that
    /// none is stated).
    pub licence: String,
    /// What the licence means for the user when it restricts use, or where it was (not) found;
    /// the installer shows it before the file.
    #[serde(default)]
    pub licence_note: Option<String>,
    #[serde(rename = "source")]
    pub sources: Vec<Source>,
}

impl ModelSpec {
    /// Where the file lives in a data directory.
    pub fn path(&self, dir: &DataDir) -> PathBuf {
        dir.models(self.kind).join(&self.file)
    }

    /// e.g. `BSD-3-Clause` or `CC-BY-NC-SA-4.0: non-commercial use only`.
    pub fn licence_text(&self) -> String {
        match &self.licence_note {
            Some(note) => format!("{}: {note}", self.licence),
            None => self.licence.clone(),
        }
    }

    /// Whether the licence forbids commercial use (such a file is never in the default set).
    pub fn non_commercial(&self) -> bool {
        self.licence.to_ascii_uppercase().contains("-NC")
            || self
                .licence_note
                .as_deref()
                .is_some_and(|n| n.contains("non-commercial"))
    }

    /// Checks a file against the manifest: size first (cheap), then SHA-256.
    pub fn verify(&self, path: &Path) -> Result<(), Mismatch> {
        let size = std::fs::metadata(path)
            .map_err(|e| Mismatch::Unreadable(e.to_string()))?
            .len();
        if size != self.size {
            return Err(Mismatch::Size {
                found: size,
                expected: self.size,
            });
        }
        let sha256 = sha256_file(path).map_err(|e| Mismatch::Unreadable(e.to_string()))?;
        if sha256 != self.sha256 {
            return Err(Mismatch::Sha256 {
                found: sha256,
                expected: self.sha256.clone(),
            });
        }
        Ok(())
    }
}

/// Why a file is not the manifest's file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("it is {found} bytes, not {expected}")]
    Size { found: u64, expected: u64 },
    #[error("its SHA-256 is {found}, not {expected}")]
    Sha256 { found: String, expected: String },
    #[error("it cannot be read ({0})")]
    Unreadable(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(rename = "model")]
    pub models: Vec<ModelSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read the manifest {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the manifest {origin} is not valid: {message}")]
    Invalid { origin: String, message: String },
}

impl Manifest {
    /// The built-in manifest.
    pub fn builtin() -> Manifest {
        Manifest::parse(BUILTIN, "built into this program").expect("models.toml is tested")
    }

    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Manifest::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
        let invalid = |message: String| ManifestError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        let manifest: Manifest = toml::from_str(text).map_err(|e| invalid(e.message().into()))?;
        manifest.validate().map_err(invalid)?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for m in &self.models {
            if !names.insert(m.name.to_lowercase()) {
                return Err(format!("{} is listed twice", m.name));
            }
            let safe = !m.file.is_empty()
                && !m.file.starts_with('.')
                && !m.file.contains(['/', '\\', ':']);
            if !safe {
                return Err(format!("{}: {:?} is not a plain file name", m.name, m.file));
            }
            let hex = m.sha256.len() == 64
                && m.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex {
                return Err(format!(
                    "{}: sha256 must be 64 lowercase hex digits",
                    m.name
                ));
            }
            if m.size == 0 {
                return Err(format!("{}: size must be the exact byte count", m.name));
            }
            if m.set == Set::Default && m.non_commercial() {
                return Err(format!(
                    "{}: a non-commercial file ({}) can only be opt-in",
                    m.name, m.licence
                ));
            }
            if m.sources.is_empty() {
                return Err(format!("{}: no source", m.name));
            }
            for s in &m.sources {
                if !(s.url.starts_with("https://") || s.url.starts_with("http://")) {
                    return Err(format!("{}: {} is not an HTTP(S) URL", m.name, s.url));
                }
                if s.revision.is_empty() || !s.url.contains(&s.revision) {
                    return Err(format!(
                        "{}: {} is not pinned to its revision {:?}",
                        m.name, s.url, s.revision
                    ));
                }
            }
        }
        Ok(())
    }

    /// The model named `name` (any case).
    pub fn find(&self, name: &str) -> Option<&ModelSpec> {
        self.models
            .iter()
            .find(|m| m.name.eq_ignore_ascii_case(name) || m.file.eq_ignore_ascii_case(name))
    }

    /// The model whose file this is, by kind and file name.
    pub fn by_file(&self, kind: ModelKind, file: &str) -> Option<&ModelSpec> {
        self.models
            .iter()
            .find(|m| m.kind == kind && m.file == file)
    }

    pub fn defaults(&self) -> impl Iterator<Item = &ModelSpec> {
        self.models.iter().filter(|m| m.set == Set::Default)
    }

    pub fn opt_ins(&self) -> impl Iterator<Item = &ModelSpec> {
        self.models.iter().filter(|m| m.set == Set::OptIn)
    }
}

/// The manifest's word for each kind: the singular of its folder name.
pub fn kind_word(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Checkpoint => "checkpoint",
        ModelKind::Vae => "vae",
        ModelKind::ControlNet => "controlnet",
        ModelKind::Upscaler => "upscaler",
        ModelKind::Lora => "lora",
        ModelKind::Embedding => "embedding",
    }
}

fn kind_from_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ModelKind, D::Error> {
    let word = String::deserialize(d)?;
    ModelKind::ALL
        .into_iter()
        .find(|k| kind_word(*k) == word)
        .ok_or_else(|| {
            let known: Vec<_> = ModelKind::ALL.iter().map(|k| kind_word(*k)).collect();
            serde::de::Error::custom(format!(
                "unknown kind {word:?} (one of {})",
                known.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_manifest_holds_the_reference_facts() {
        let m = Manifest::builtin();
        let real = m.find("RealESRGAN_x4plus").unwrap();
        assert_eq!(real.set, Set::Default);
        assert_eq!(real.size, 67_040_989);
        assert_eq!(
            real.sha256,
            "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1"
        );
        assert_eq!(real.licence, "BSD-3-Clause");
        let sharp = m.find("4x-ultrasharp.pth").unwrap();
        assert_eq!(sharp.set, Set::OptIn);
        assert_eq!(sharp.size, 66_961_958);
        assert!(sharp.licence_text().contains("non-commercial"));
        assert!(sharp.non_commercial());

        // The default set is what a default Clarity job loads (config.rs and the default
        // prompts name them): kind, file, exact size, SHA-256 and licence as the reference has them.
        let expected = [
            (
                ModelKind::Checkpoint,
                "juggernaut_reborn.safetensors",
                2_132_653_060,
                "338b85bc4f7628bc42cce336242e79154a57c2a4360531436e97f7793568f18c",
                "CreativeML Open RAIL-M",
            ),
            (
                ModelKind::Vae,
                "vae-ft-mse-840000-ema-pruned.safetensors",
                334_641_190,
                "735e4c3a447a3255760d7f86845f09f937809baa529c17370d83e4c3758f3c75",
                "MIT",
            ),
            (
                ModelKind::ControlNet,
                "control_v11f1e_sd15_tile.pth",
                1_445_235_023,
                "8aa69b8d391e72c2fced6a650268137dc0ed594cafe8a2c0f8b994799a21979b",
                "openrail",
            ),
            (
                ModelKind::Upscaler,
                "RealESRGAN_x4plus.pth",
                67_040_989,
                "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
                "BSD-3-Clause",
            ),
            (
                ModelKind::Lora,
                "more_details.safetensors",
                9_547_795,
                "d9cf2f88dec53a8dd8c09aba2b1d67963b265ebdf8255660f5bcd7f1c8edba33",
                "not stated",
            ),
            (
                ModelKind::Lora,
                "SDXLrender_v2.0.safetensors",
                181_064_196,
                "672fcccf2ce6ca4ef71762a3ec1b8c8afd79328067e13c8f9756260ec94d1608",
                "not stated",
            ),
            (
                ModelKind::Embedding,
                "JuggernautNegative-neg.pt",
                13_339,
                "979ea73200c7c29ba884e642e544c54abfaad4c9a82582c68f3212d390d41397",
                "not stated",
            ),
        ];
        let defaults: Vec<_> = m.defaults().collect();
        assert_eq!(defaults.len(), expected.len());
        for (spec, (kind, file, size, sha256, licence)) in defaults.iter().zip(expected) {
            assert_eq!(
                (
                    spec.kind,
                    spec.file.as_str(),
                    spec.size,
                    spec.sha256.as_str()
                ),
                (kind, file, size, sha256)
            );
            assert_eq!(spec.licence, licence, "{file}");
            // The name a job uses is the file name without its extension.
            assert!(spec.file.starts_with(&format!("{}.", spec.name)), "{file}");
            assert!(
                !spec.non_commercial(),
                "{file}: the default set is never non-commercial"
            );
            assert!(spec.sources[0].url.starts_with("https://"), "{file}");
        }
        let total: u64 = m.defaults().map(|s| s.size).sum();
        assert_eq!(total, 4_170_195_592);
        assert_eq!(crate::space::size_text(total), "4.17 GB");
    }

    const ONE: &str = r#"
[[model]]
name = "x"
file = "x.pth"
kind = "upscaler"
set = "default"
role = "test"
size = 3
sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
licence = "MIT"
[[model.source]]
url = "http://127.0.0.1:1/r1/x.pth"
revision = "r1"
"#;

    #[test]
    fn bad_manifests_are_refused_with_the_reason() {
        assert!(Manifest::parse(ONE, "t").is_ok());
        let cases = [
            (ONE.replace("r1/x", "main/x"), "not pinned"),
            (ONE.replace("\"x.pth\"", "\"../x.pth\""), "plain file name"),
            (ONE.replace("ba78", "BA78"), "64 lowercase hex"),
            (ONE.replace("size = 3", "size = 0"), "exact byte count"),
            (ONE.replace("upscaler", "upscalers"), "unknown kind"),
            (ONE.replace("licence = ", "license = "), "unknown field"),
            (
                ONE.replace("\"MIT\"", "\"CC-BY-NC-4.0\""),
                "non-commercial file (CC-BY-NC-4.0) can only be opt-in",
            ),
            (format!("{ONE}{ONE}"), "listed twice"),
        ];
        for (text, reason) in cases {
            let err = Manifest::parse(&text, "t").unwrap_err().to_string();
            assert!(err.contains(reason), "{reason}: {err}");
        }
    }

    #[test]
    fn files_are_verified_by_size_then_hash() {
        let temp = tempfile::tempdir().unwrap();
        let m = Manifest::parse(ONE, "t").unwrap();
        let spec = &m.models[0];
        let path = temp.path().join("x.pth");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(spec.verify(&path), Ok(()));
        std::fs::write(&path, b"abd").unwrap();
        assert!(matches!(spec.verify(&path), Err(Mismatch::Sha256 { .. })));
        std::fs::write(&path, b"ab").unwrap();
        assert_eq!(
            spec.verify(&path),
            Err(Mismatch::Size {
                found: 2,
                expected: 3
            })
        );
        assert!(matches!(
            spec.verify(&temp.path().join("none")),
            Err(Mismatch::Unreadable(_))
        ));
    }
}
