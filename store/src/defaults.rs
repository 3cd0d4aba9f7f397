//! How to get a model that a job needs and the data directory lacks. The models Tessera knows,
//! the default set that `tessera-install` downloads among them, are the built-in manifest
//! (`models.toml`); this module only reads it.

use super::manifest::{Manifest, ModelSpec, Set};
use std::path::Path;
use std::sync::OnceLock;
use tessera_protocol::ModelKind;

/// The built-in manifest, parsed once.
fn manifest() -> &'static Manifest {
    static BUILTIN: OnceLock<Manifest> = OnceLock::new();
    BUILTIN.get_or_init(Manifest::builtin)
}

/// The known model of `kind` named `name` (the file name with or without its extension, any
/// case), if the built-in manifest lists one.
pub fn find(kind: ModelKind, name: &str) -> Option<&'static ModelSpec> {
    manifest().models.iter().find(|m| {
        m.kind == kind && (m.name.eq_ignore_ascii_case(name) || m.file.eq_ignore_ascii_case(name))
    })
}

/// How to get a missing model the manifest lists: the installer and the file's first source.
/// `None` for any other model (the error already names the folder it belongs in).
pub fn how_to_get(kind: ModelKind, name: &str, folder: &Path) -> Option<String> {
    let m = find(kind, name)?;
    let install = match m.set {
        Set::Default => {
            "is one of the default models: run `tessera-install` to download them".to_owned()
        }
        Set::OptIn => format!(
            "is an optional model (licence {}): run `tessera-install --with {}` to download it",
            m.licence_text(),
            m.name
        ),
    };
    Some(format!(
        "{} {install}, or download {} ({} bytes, SHA-256 {}) into {}",
        m.file,
        m.sources[0].url,
        m.size,
        m.sha256,
        folder.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_model_is_findable_by_name_or_file_of_its_kind() {
        for m in &manifest().models {
            assert!(std::ptr::eq(find(m.kind, &m.name).unwrap(), m));
            assert!(std::ptr::eq(
                find(m.kind, &m.file.to_uppercase()).unwrap(),
                m
            ));
        }
        assert!(find(ModelKind::Checkpoint, "more_details").is_none());
        assert!(find(ModelKind::Lora, "more_details").is_some());
    }

    #[test]
    fn the_advice_names_the_file_the_installer_and_the_first_source() {
        let folder = Path::new("/d/models/vae");
        let how = how_to_get(ModelKind::Vae, "vae-ft-mse-840000-ema-pruned", folder).unwrap();
        assert!(
            how.starts_with("vae-ft-mse-840000-ema-pruned.safetensors is one of the default models")
                && how.contains("run `tessera-install`")
                && how.contains("https://huggingface.co/stabilityai/sd-vae-ft-mse-original/resolve/629b3ad3030ce36e15e70c5db7d91df0d60c627f/vae-ft-mse-840000-ema-pruned.safetensors")
                && how.contains("334641190 bytes")
                && how.contains("/d/models/vae"),
            "{how}"
        );
        let how = how_to_get(
            ModelKind::Embedding,
            "JuggernautNegative-neg",
            Path::new("/d/models/embeddings"),
        )
        .unwrap();
        assert!(
            how.contains("JuggernautNegative-neg.pt") && how.contains("tessera-install"),
            "{how}"
        );
        let how = how_to_get(
            ModelKind::Upscaler,
            "4x-UltraSharp",
            Path::new("/d/models/upscalers"),
        )
        .unwrap();
        assert!(
            how.contains("tessera-install --with 4x-UltraSharp") && how.contains("non-commercial"),
            "{how}"
        );
        assert_eq!(
            how_to_get(ModelKind::Lora, "mine", Path::new("/d/models/loras")),
            None
        );
    }
}
