//! The SD networks of a diffusion job, loaded once per model set and kept warm: the UNet with
//! its LoRAs fused, the ControlNet tile split into hint encoder and body, the VAE
//! (`sd_vae.rs`: its extra graphs only while an image large enough to need tiles runs), and the
//! text encoder with LoRAs and embeddings. Each implements the trait the stage is written
//! against (`network_traits.rs`).

use crate::store::FileStamp;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{Array4, ArrayD, Ix4};

use super::checked_vae::CheckedVae;
pub use super::controlled_unet::SdUnet;
use super::network_traits::{NetResult, StageError};
pub use super::sd_vae::SdVae;
use super::stage::PreUpscaler;
use super::text::TextSide;
use crate::Cancelled;
use crate::engine::{Engine, EngineError, Recovery, Shrink};
use crate::nets::ModelError;
use crate::nets::clip::{self, ClipOptions, TextEncoder};
use crate::nets::controlnet::{CompiledControlNet, ControlNet};
use crate::nets::esrgan::{ChannelOrder, Esrgan, EsrganError, Tiling};
use crate::nets::sd::SdOptions;
use crate::nets::unet::{CompiledUnet, Unet};
use crate::nets::vae::CompiledVae;
use crate::nets::{Precision, Precisions};
use crate::weights::embedding::TextualInversion;
use crate::weights::lora::{Lora, LoraPatch, LoraTarget};
use crate::weights::{self, Patch, sd};

/// A file as part of a model set's identity: its path and its [`FileStamp`] (`None` while it
/// cannot be read), so that a model replaced on disk, even by a copy that keeps its times, is
/// loaded again.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StampedFile {
    pub path: PathBuf,
    pub stamp: Option<FileStamp>,
}

impl StampedFile {
    pub fn of(path: &Path) -> StampedFile {
        StampedFile {
            path: path.to_owned(),
            stamp: FileStamp::read(path).ok(),
        }
    }
}

/// A LoRA with A1111's two multipliers (text encoder, UNet), in thousandths.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LoraChoice {
    pub file: StampedFile,
    pub te: i64,
    pub unet: i64,
}

/// Everything that decides what a model set computes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SetKey {
    pub checkpoint: StampedFile,
    pub vae: StampedFile,
    pub controlnet: StampedFile,
    pub loras: Vec<LoraChoice>,
    pub embeddings: Vec<StampedFile>,
    /// Per network, resolved for the device the sessions run on.
    pub precisions: Precisions,
}

/// The loaded networks of one [`SetKey`].
pub struct ModelSet {
    pub key: SetKey,
    pub text: TextSide,
    pub unet: SdUnet,
    pub vae: CheckedVae,
}

fn milli(v: f64) -> i64 {
    (v * 1000.0).round() as i64
}

impl LoraChoice {
    pub fn new(path: &Path, te: f64, unet: f64) -> LoraChoice {
        LoraChoice {
            file: StampedFile::of(path),
            te: milli(te),
            unet: milli(unet),
        }
    }
}

impl ModelSet {
    /// Holds every session of the set again: what a large job set aside (the text encoder,
    /// the VAE's plain graphs) is created anew, so that the next job starts warm.
    pub fn warm(&mut self, engine: &Engine) -> Result<(), EngineError> {
        self.text.warm(engine)?;
        self.vae.warm()
    }

    /// Compiles every network of `key` (conversions and LoRA fusions are cached on disk in
    /// `cache_dir`) and creates the sessions a job needs.
    pub fn load(
        engine: &Arc<Engine>,
        key: SetKey,
        cache_dir: &Path,
    ) -> Result<ModelSet, ModelError> {
        ModelSet::load_in_parts(engine, key, cache_dir, &mut |_| Ok(()))
            .map(|set| set.expect("never abandoned"))
    }

    /// The names of the parts [`ModelSet::load_in_parts`] loads, in order.
    pub const PARTS: [&'static str; 4] = ["UNet", "ControlNet", "VAE", "text encoder"];

    /// [`ModelSet::load`], calling `before(part)` before each of [`ModelSet::PARTS`]: an
    /// `Err(Abandoned)` from it stops the load there (`Ok(None)`).
    pub fn load_in_parts(
        engine: &Arc<Engine>,
        key: SetKey,
        cache_dir: &Path,
        before: &mut dyn FnMut(&'static str) -> Result<(), Abandoned>,
    ) -> Result<Option<ModelSet>, ModelError> {
        macro_rules! part {
            ($index:expr) => {
                if before(ModelSet::PARTS[$index]).is_err() {
                    return Ok(None);
                }
            };
        }
        part!(0);
        let loras = key
            .loras
            .iter()
            .map(|l| Lora::open(&l.file.path))
            .collect::<Result<Vec<_>, _>>()?;
        let with = |pick: fn(&LoraChoice) -> i64| -> Vec<(&Lora, f32)> {
            loras
                .iter()
                .zip(&key.loras)
                .map(|(l, c)| (l, pick(c) as f32 / 1000.0))
                .collect()
        };
        let precisions = key.precisions;
        let plain = SdOptions {
            precision: precisions.unet,
            config: None,
            patch: None,
        };

        let unet_net = sd::unet(&key.checkpoint.path)?;
        unet_net.log_unused("checkpoint");
        let unet_loras = with(|c| c.unet);
        let patch = LoraPatch::resolve(&unet_loras, LoraTarget::Unet, &unet_net.tensors)?;
        let patch = (!patch.is_empty()).then_some(&patch as &dyn Patch);
        let compiled = CompiledUnet::compile(&unet_net, cache_dir, &SdOptions { patch, ..plain })?;
        drop(unet_net);
        let mut unet = Unet::new(compiled);
        unet.warm(engine, true)?;

        part!(1);
        let cn_net = sd::controlnet(&key.controlnet.path)?;
        cn_net.log_unused("ControlNet");
        let controlnet = ControlNet::new(
            engine,
            CompiledControlNet::compile(&cn_net, cache_dir, &plain)?,
        )?;
        drop(cn_net);

        part!(2);
        let vae_net = sd::vae(&key.vae.path)?;
        if key.vae.path != key.checkpoint.path {
            vae_net.log_unused("VAE");
        }
        let plain_vae = SdVae::new(
            engine.clone(),
            CompiledVae::compile(
                &vae_net,
                cache_dir,
                &SdOptions {
                    precision: precisions.vae,
                    ..plain
                },
            )?,
        )?;
        drop(vae_net);
        let vae = if precisions.vae == Precision::F16 {
            CheckedVae::with_fp32_redo(
                plain_vae,
                engine.clone(),
                key.vae.path.clone(),
                cache_dir.to_owned(),
            )
        } else {
            CheckedVae::new(plain_vae)
        };

        part!(3);
        let embeddings: Vec<TextualInversion> = key
            .embeddings
            .iter()
            .filter_map(|e| match TextualInversion::load(&e.path) {
                Ok(ti) => Some(ti),
                Err(err) => {
                    tracing::warn!("skipping the embedding {}: {err}", e.path.display());
                    None
                }
            })
            .collect();
        let (source, canonical, config) = clip::open(&key.checkpoint.path)?;
        let embeddings: Vec<TextualInversion> = embeddings
            .into_iter()
            .filter(|e| {
                let fits = e.width() == config.hidden;
                if !fits {
                    tracing::warn!(
                        "skipping the embedding {}: {} wide, the text encoder is {}",
                        e.name,
                        e.width(),
                        config.hidden
                    );
                }
                fits
            })
            .collect();
        let te_loras = with(|c| c.te);
        let patch = LoraPatch::resolve(&te_loras, LoraTarget::TextEncoder, &canonical)?;
        let patch = (!patch.is_empty()).then_some(&patch as &dyn Patch);
        let precision = precisions.text;
        let options = ClipOptions {
            precision,
            ..ClipOptions::default()
        };
        let placed = weights::materialize_as(
            &source,
            &canonical,
            cache_dir,
            weights::Target {
                network: &format!("clip{}", precision.suffix()),
                weight_type: precision.weight_type(),
                patch,
            },
        )?;
        let name = key
            .checkpoint
            .path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let compiled = clip::compile_weights(&config, &placed, &embeddings, &options, &name)?;
        let text = TextSide::new(TextEncoder::from_compiled(engine, compiled)?);

        Ok(Some(ModelSet {
            key,
            text,
            unet: SdUnet::new(engine.clone(), unet, controlnet),
            vae,
        }))
    }
}

/// A load stopped on purpose between two parts.
#[derive(Debug)]
pub struct Abandoned;

pub(super) fn four(a: ArrayD<f32>, what: &str) -> NetResult<Array4<f32>> {
    a.into_dimensionality::<Ix4>()
        .map_err(|e| StageError::Unexpected(format!("{what}: {e}")))
}

/// ESRGAN as the stage's pre-upscaler; out of accelerator memory, it retries with smaller
/// tiles, then on the CPU (`pipeline::upscale::upscale_retrying`).
pub struct EsrganUpscaler<'a> {
    pub net: &'a mut Esrgan,
    pub tiling: Tiling,
    /// What the network is fed: BGR for the presets that reproduce A1111's ESRGAN code.
    pub order: ChannelOrder,
    pub recovery: &'a dyn Recovery,
    /// The tile that worked, for the passes after.
    pub shrink: Shrink,
}

impl PreUpscaler for EsrganUpscaler<'_> {
    fn scale(&self) -> usize {
        self.net.scale() as usize
    }

    fn upscale(
        &mut self,
        rgb: ndarray::ArrayView3<f32>,
        on_tile: &mut dyn FnMut(usize, usize) -> Result<(), Cancelled>,
    ) -> NetResult<ndarray::Array3<f32>> {
        crate::pipeline::upscale::upscale_retrying(
            self.net,
            rgb,
            &self.tiling,
            self.order,
            self.recovery,
            &mut self.shrink,
            on_tile,
        )
        .map_err(|e| match e {
            EsrganError::Cancelled => StageError::Cancelled,
            EsrganError::Runtime(e) => StageError::Runtime(e),
            EsrganError::InvalidInput(m) => StageError::Unexpected(m),
        })
    }
}
