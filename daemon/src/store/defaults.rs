//! The default model set: the files Clarity uses (and the installer downloads), where each
//! comes from, and the sentence that tells a user how to get one that is missing.
//! Sources and hashes are from `reference/models.md` (pinned where the source pins).

use tessera_protocol::ModelKind;

/// One default model file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefaultModel {
    pub kind: ModelKind,
    /// The name jobs use (the file name without its extension).
    pub name: &'static str,
    pub file: &'static str,
    pub url: &'static str,
    pub size: u64,
    pub sha256: &'static str,
}

/// Every default model, in the order the installer fetches them.
pub const DEFAULT_MODELS: [DefaultModel; 7] = [
    DefaultModel {
        kind: ModelKind::Checkpoint,
        name: "juggernaut_reborn",
        file: "juggernaut_reborn.safetensors",
        url: "https://huggingface.co/KamCastle/jugg/resolve/main/juggernaut_reborn.safetensors",
        size: 2_132_653_060,
        sha256: "338b85bc4f7628bc42cce336242e79154a57c2a4360531436e97f7793568f18c",
    },
    DefaultModel {
        kind: ModelKind::Vae,
        name: "vae-ft-mse-840000-ema-pruned",
        file: "vae-ft-mse-840000-ema-pruned.safetensors",
        url: "https://huggingface.co/stabilityai/sd-vae-ft-mse-original/resolve/main/vae-ft-mse-840000-ema-pruned.safetensors",
        size: 334_641_190,
        sha256: "735e4c3a447a3255760d7f86845f09f937809baa529c17370d83e4c3758f3c75",
    },
    DefaultModel {
        kind: ModelKind::ControlNet,
        name: "control_v11f1e_sd15_tile",
        file: "control_v11f1e_sd15_tile.pth",
        url: "https://huggingface.co/lllyasviel/ControlNet-v1-1/resolve/main/control_v11f1e_sd15_tile.pth",
        size: 1_445_235_023,
        sha256: "8aa69b8d391e72c2fced6a650268137dc0ed594cafe8a2c0f8b994799a21979b",
    },
    DefaultModel {
        kind: ModelKind::Upscaler,
        name: "RealESRGAN_x4plus",
        file: "RealESRGAN_x4plus.pth",
        url: "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
        size: 67_040_989,
        sha256: "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
    },
    DefaultModel {
        kind: ModelKind::Lora,
        name: "more_details",
        file: "more_details.safetensors",
        url: "https://huggingface.co/digiplay/LORA/resolve/main/more_details.safetensors",
        size: 9_547_795,
        sha256: "d9cf2f88dec53a8dd8c09aba2b1d67963b265ebdf8255660f5bcd7f1c8edba33",
    },
    DefaultModel {
        kind: ModelKind::Lora,
        name: "SDXLrender_v2.0",
        file: "SDXLrender_v2.0.safetensors",
        url: "https://huggingface.co/philz1337x/loras/resolve/a3802c0280c0d00c2ab18d37454a8744c44e474e/SDXLrender_v2.0.safetensors",
        size: 181_064_196,
        sha256: "672fcccf2ce6ca4ef71762a3ec1b8c8afd79328067e13c8f9756260ec94d1608",
    },
    DefaultModel {
        kind: ModelKind::Embedding,
        name: "JuggernautNegative-neg",
        file: "JuggernautNegative-neg.pt",
        url: "https://huggingface.co/philz1337x/embeddings/resolve/203caa7e9cc2bc225031a4021f6ab1ded283454a/JuggernautNegative-neg.pt",
        size: 13_339,
        sha256: "979ea73200c7c29ba884e642e544c54abfaad4c9a82582c68f3212d390d41397",
    },
];

/// The default model of `kind` named `name` (any case), if it is one.
pub fn find(kind: ModelKind, name: &str) -> Option<&'static DefaultModel> {
    DEFAULT_MODELS.iter().find(|m| {
        m.kind == kind && (m.name.eq_ignore_ascii_case(name) || m.file.eq_ignore_ascii_case(name))
    })
}

/// How to get a missing model: the installer for a default one, else the folder to put it in.
pub fn how_to_get(kind: ModelKind, name: &str, folder: &std::path::Path) -> String {
    match find(kind, name) {
        Some(m) => format!(
            "{} is one of the default models: run `tessera-install` to download them, or download {} into {}",
            m.file,
            m.url,
            folder.display()
        ),
        None => format!("put the file in {}", folder.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_findable_by_name_or_file_and_well_formed() {
        for m in &DEFAULT_MODELS {
            assert_eq!(find(m.kind, m.name), Some(m));
            assert_eq!(find(m.kind, &m.file.to_uppercase()), Some(m));
            assert!(m.file.starts_with(m.name));
            assert_eq!(m.sha256.len(), 64);
            assert!(m.url.starts_with("https://") && m.url.ends_with(m.file));
        }
        assert!(find(ModelKind::Checkpoint, "more_details").is_none());
        let how = how_to_get(
            ModelKind::Vae,
            "vae-ft-mse-840000-ema-pruned",
            std::path::Path::new("/d/models/vae"),
        );
        assert!(
            how.contains("tessera-install") && how.contains("/d/models/vae"),
            "{how}"
        );
    }
}
