//! The daemon's settings: defaults, overridden by `config.toml` in the data
//! directory, overridden by command-line flags. Every key is documented in
//! `docs/configuration.md`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::nets::{PrecisionSetting, Precisions};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub limits: Limits,
    pub engine: EngineConfig,
    pub upscale: UpscaleConfig,
    pub diffusion: DiffusionConfig,
    pub serve: ServeConfig,
    pub cache: CacheConfig,
    pub preview: PreviewConfig,
}

/// Bounds on what one client may ask of the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame accepted from a client, in bytes (checked before reading it).
    pub max_frame_bytes: u32,
    /// Largest input image, in pixels.
    pub max_input_pixels: u64,
    /// Largest result image, in pixels.
    pub max_output_pixels: u64,
    /// Jobs waiting in the queue, all clients together.
    pub max_queue: usize,
    /// Jobs one client may have queued or running at once.
    pub max_jobs_per_client: usize,
    /// Clients connected at once (each holds two threads); one more is refused.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: tessera_protocol::DEFAULT_MAX_FRAME_BYTES,
            max_input_pixels: 8192 * 8192,
            max_output_pixels: 16384 * 16384,
            max_queue: 64,
            max_jobs_per_client: 16,
            max_connections: 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// The ONNX Runtime library; empty means: `--ort-lib`, `TESSERA_ORT_LIB`,
    /// `ORT_DYLIB_PATH`, then the data directory's `runtime/`.
    pub ort_lib: Option<PathBuf>,
    /// Threads per network call; 0 means one per CPU core.
    pub threads: usize,
    /// Execution providers to try, best first (`cuda`, `cuda:1`, `directml`, `coreml`, `cpu`);
    /// unset means the list recorded with the installed runtime (`runtime/runtime.toml`),
    /// else the CPU alone.
    pub execution_providers: Option<Vec<String>>,
    /// Keep ONNX Runtime's CPU memory arena: each warm session then holds on to the largest
    /// activations it ever needed. Off (the default), activation memory goes back after every
    /// network call, so a job's peak is its largest phase rather than the sum of all of them.
    pub cpu_arena: bool,
    /// Bytes the warm sessions may hold on the device: "auto" (the default: on a GPU its free
    /// memory at start less a margin for activations, on the CPU no budget), "none", or a
    /// size such as "6 GiB". Sessions no job uses are set aside, least recently used first,
    /// to stay within it; on CUDA it also caps each session's memory arena.
    pub vram_budget: Option<String>,
    /// The precision of the UNet, ControlNet, text encoder and ESRGAN: `auto` (f16 on an
    /// accelerator, f32 on the CPU), `fp32` or `fp16`.
    pub precision: PrecisionSetting,
    /// The VAE's precision, f32 by default (SD 1.5's VAE overflows f16); with `fp16` (or `auto`
    /// on an accelerator) every pass is checked and one with NaN or ∞ is redone in f32.
    pub vae_precision: PrecisionSetting,
    /// What a plugin provider's CPU device (`openvino:cpu`) computes the f32 graphs in: `auto`
    /// (its measured default, docs/gpu.md), `fp32`, `bf16` or `fp16` (the last two only where
    /// the CPU has them; elsewhere the provider computes in f32).
    pub cpu_precision_hint: Option<String>,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            ort_lib: None,
            threads: 0,
            execution_providers: None,
            cpu_arena: false,
            precision: PrecisionSetting::Auto,
            vae_precision: PrecisionSetting::Fp32,
            vram_budget: None,
            cpu_precision_hint: None,
        }
    }
}

impl EngineConfig {
    /// `vram_budget`, read (validated when the file was loaded).
    pub fn budget(&self) -> crate::engine::BudgetSetting {
        self.vram_budget
            .as_deref()
            .and_then(|text| text.parse().ok())
            .unwrap_or_default()
    }

    /// `cpu_precision_hint`, read (validated when the file was loaded).
    pub fn precision_hint(&self) -> crate::engine::PrecisionHint {
        self.cpu_precision_hint
            .as_deref()
            .and_then(|text| text.parse().ok())
            .unwrap_or_default()
    }

    /// The precision of every network on sessions that run on `providers` (best first).
    pub fn precisions(&self, providers: &[crate::engine::ExecutionProvider]) -> Precisions {
        Precisions::resolve(self.precision, self.vae_precision, providers)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpscaleConfig {
    /// The upscaler used when a job names none (falls back to the first one
    /// in `models/upscalers/` when this one is absent).
    pub default_upscaler: String,
    /// How ESRGAN tiles are laid out: `fewest` (default) or `a1111` (Clarity's).
    pub placement: TilePlacement,
    /// ESRGAN tile size in input pixels: the largest tile for `fewest` (default 320), the
    /// tile for `a1111` (default 192).
    pub tile: Option<usize>,
    /// ESRGAN tile overlap in input pixels (default 32 for `fewest`, 8 for `a1111`).
    pub overlap: Option<usize>,
}

/// `upscale.placement`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TilePlacement {
    #[default]
    Fewest,
    A1111,
}

impl UpscaleConfig {
    /// The ESRGAN tiling these settings describe.
    pub fn tiling(&self) -> crate::nets::esrgan::Tiling {
        use crate::nets::esrgan::Tiling;
        let base = match self.placement {
            TilePlacement::Fewest => Tiling::DEFAULT,
            TilePlacement::A1111 => Tiling::CLARITY,
        };
        Tiling {
            tile: self.tile.unwrap_or(base.tile),
            overlap: self.overlap.unwrap_or(base.overlap),
            ..base
        }
    }
}

impl Default for UpscaleConfig {
    fn default() -> Self {
        Self {
            default_upscaler: "RealESRGAN_x4plus".into(),
            placement: TilePlacement::Fewest,
            tile: None,
            overlap: None,
        }
    }
}

/// The diffusion pipeline's settings that are not job parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffusionConfig {
    /// Models used when a job names none (each falls back to the first model of its folder).
    pub default_checkpoint: String,
    pub default_vae: String,
    pub default_controlnet: String,
    /// Diffusion tiles per network call: speed and memory only, the result is the same.
    /// Unset: 1 on the CPU, as many as the accelerator's free memory holds on a GPU (at most
    /// 4; `pipeline/clarity/tile_batch.rs`).
    pub tile_batch: Option<usize>,
    /// Images up to this many pixels a side (plus context) are VAE-encoded whole; larger ones
    /// in tiles with frozen GroupNorm statistics.
    pub vae_encoder_tile: usize,
    /// Latents up to this many a side (plus context) are decoded whole; larger ones in tiles.
    pub vae_decoder_tile: usize,
    /// Bytes of activations one VAE pass may take on a CPU: the Clarity preset encodes and
    /// decodes as Clarity does (whole up to 2112 pixels / 150 latents, else Clarity's tiles
    /// with the encoder colour fix) where its estimate fits, else in the tiles above. On an
    /// accelerator Clarity's way always runs.
    pub vae_memory_budget: u64,
}

/// The default `diffusion.vae_memory_budget`: 4.5 GiB, which runs a 1024² canvas (a ×2 job on a
/// 512² picture) whole both ways, as Clarity does, and keeps larger canvases in bounded tiles.
pub const DEFAULT_VAE_MEMORY_BUDGET: u64 = 9 << 29;

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            default_checkpoint: "juggernaut_reborn".into(),
            default_vae: "vae-ft-mse-840000-ema-pruned".into(),
            default_controlnet: "control_v11f1e_sd15_tile".into(),
            tile_batch: None,
            vae_encoder_tile: 512,
            vae_decoder_tile: 54,
            vae_memory_budget: DEFAULT_VAE_MEMORY_BUDGET,
        }
    }
}

/// What `tessera serve` does besides serving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Load the default upscaler and model set in the background as soon as the daemon
    /// listens, so that the first job finds them warm.
    pub warm_up: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self { warm_up: true }
    }
}

/// What the daemon keeps from one job for the next (`pipeline/cache.rs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Bytes of pre-upscaled canvases and VAE posteriors kept for re-runs of the same
    /// picture; unset: a sixteenth of the machine's memory, between 256 MiB and 2 GiB; 0: none.
    pub max_bytes: Option<u64>,
}

impl CacheConfig {
    pub fn budget(&self) -> u64 {
        self.max_bytes
            .unwrap_or_else(crate::pipeline::cache::default_budget)
    }
}

/// Previews of a region (`JobParams.preview`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreviewConfig {
    /// Pixels of the result computed around the region on each side, so that it looks as in
    /// the whole job.
    pub context: u32,
}

impl Default for PreviewConfig {
    fn default() -> Self {
        Self { context: 128 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid configuration: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Reads `path` if it exists; a missing file means all defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_owned(),
        })?;
        config.validate().map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let u = self.upscale.tiling();
        if u.tile < 16 {
            return Err(format!("upscale.tile must be at least 16 (got {})", u.tile));
        }
        if u.overlap * 2 >= u.tile {
            return Err(format!(
                "upscale.overlap ({}) must be less than half of upscale.tile ({})",
                u.overlap, u.tile
            ));
        }
        let d = &self.diffusion;
        if d.tile_batch == Some(0) || d.vae_encoder_tile < 64 || d.vae_decoder_tile < 8 {
            return Err(
                "diffusion.tile_batch must be at least 1, vae_encoder_tile at least 64 and vae_decoder_tile at least 8"
                    .into(),
            );
        }
        if let Some(text) = &self.engine.vram_budget {
            text.parse::<crate::engine::BudgetSetting>()
                .map_err(|e| format!("engine.vram_budget: {e}"))?;
        }
        if let Some(text) = &self.engine.cpu_precision_hint {
            text.parse::<crate::engine::PrecisionHint>()
                .map_err(|e| format!("engine.cpu_precision_hint: {e}"))?;
        }
        if let Some(names) = &self.engine.execution_providers {
            crate::engine::parse_providers(names)
                .map_err(|e| format!("engine.execution_providers: {e}"))?;
        }
        let l = &self.limits;
        if l.max_frame_bytes < 1024
            || l.max_queue == 0
            || l.max_jobs_per_client == 0
            || l.max_connections == 0
            || l.max_input_pixels == 0
            || l.max_output_pixels == 0
        {
            return Err(
                "limits must allow at least a 1 KiB frame, a one-pixel image, one job and one connection"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_models_are_the_manifests_default_set() {
        use crate::store::manifest::{Manifest, Set};
        use tessera_protocol::ModelKind;
        let manifest = Manifest::builtin();
        let config = Config::default();
        for (kind, name) in [
            (ModelKind::Checkpoint, &config.diffusion.default_checkpoint),
            (ModelKind::Vae, &config.diffusion.default_vae),
            (ModelKind::ControlNet, &config.diffusion.default_controlnet),
            (ModelKind::Upscaler, &config.upscale.default_upscaler),
        ] {
            let spec = manifest.find(name).unwrap();
            assert_eq!((spec.kind, spec.set), (kind, Set::Default), "{name}");
        }
    }

    #[test]
    fn a_missing_file_means_defaults() {
        let temp = tempfile::tempdir().unwrap();
        assert_eq!(
            Config::load(&temp.path().join("config.toml")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn a_partial_file_overrides_only_its_keys() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("config.toml");
        std::fs::write(
            &path,
            "[limits]\nmax_queue = 3\n[upscale]\ntile = 256\n[diffusion]\nvae_memory_budget = 0\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.limits.max_queue, 3);
        assert_eq!(config.diffusion.vae_memory_budget, 0);
        assert_eq!(
            Config::default().diffusion.vae_memory_budget,
            DEFAULT_VAE_MEMORY_BUDGET
        );
        assert_eq!(config.upscale.tiling().tile, 256);
        assert_eq!(config.upscale.tiling().overlap, 32);
        std::fs::write(&path, "[upscale]\nplacement = \"a1111\"\n").unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(
            config.upscale.tiling(),
            crate::nets::esrgan::Tiling::CLARITY
        );
        assert_eq!(config.limits.max_jobs_per_client, 16);
    }

    #[test]
    fn precision_is_auto_and_the_vae_fp32_unless_set() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("config.toml");
        let cpu = [crate::engine::ExecutionProvider::Cpu];
        let defaults = Config::default().engine;
        assert_eq!(defaults.precisions(&cpu), Precisions::f32());
        std::fs::write(
            &path,
            "[engine]\nprecision = \"fp16\"\nvae_precision = \"fp16\"\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        let p = config.engine.precisions(&cpu);
        assert_eq!(p.describe(), "fp16 (every network)");
    }

    #[test]
    fn typos_and_bad_values_are_reported() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("config.toml");
        std::fs::write(&path, "[limits]\nmax_qeue = 3\n").unwrap();
        assert!(
            Config::load(&path)
                .unwrap_err()
                .to_string()
                .contains("max_qeue")
        );
        std::fs::write(&path, "[limits]\nmax_input_pixels = 0\n").unwrap();
        assert!(
            Config::load(&path)
                .unwrap_err()
                .to_string()
                .contains("one-pixel image")
        );
        std::fs::write(
            &path,
            "[engine]\nexecution_providers = [\"cuda\", \"npu\"]\n",
        )
        .unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("engine.execution_providers") && err.contains("npu"),
            "{err}"
        );
        std::fs::write(&path, "[engine]\nvram_budget = \"6 GiBs\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("engine.vram_budget") && err.contains("GiBs"),
            "{err}"
        );
        std::fs::write(&path, "[engine]\nvram_budget = \"6 GiB\"\n").unwrap();
        assert_eq!(
            Config::load(&path).unwrap().engine.budget(),
            crate::engine::BudgetSetting::Bytes(6 << 30)
        );
        assert_eq!(
            Config::default().engine.budget(),
            crate::engine::BudgetSetting::Auto
        );
        std::fs::write(&path, "[engine]\nprecision = \"fp8\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("fp8"), "{err}");
        std::fs::write(&path, "[upscale]\ntile = 32\noverlap = 16\n").unwrap();
        assert!(
            Config::load(&path)
                .unwrap_err()
                .to_string()
                .contains("less than half")
        );
    }
}
