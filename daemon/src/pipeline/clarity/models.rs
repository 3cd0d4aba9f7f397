//! The SD networks of a diffusion job, loaded once per model set and kept warm: the UNet with
//! its LoRAs fused, the ControlNet tile split into hint encoder and body, the VAE (whose
//! statistics-exporting and statistics-frozen graphs are only built when an image is large
//! enough to need tiles), and the text encoder with LoRAs and embeddings. Each implements the
//! trait the stage is written against (`nets.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use ndarray::{Array2, Array4, ArrayD, ArrayView4, Ix4};

use super::checked_vae::CheckedVae;
pub use super::controlled_unet::SdUnet;
use super::nets::{GroupNormStats, GroupStats, NetResult, Norms, StageError, Vae};
use super::stage::PreUpscaler;
use super::text::TextSide;
use crate::Cancelled;
use crate::engine::{CompiledModel, Engine, EngineError, Recovery, SharedSession, Shrink};
use crate::nets::ModelError;
use crate::nets::clip::{self, ClipOptions, TextEncoder};
use crate::nets::controlnet::{CompiledControlNet, ControlNet};
use crate::nets::esrgan::{Esrgan, EsrganError, Tiling};
use crate::nets::sd::SdOptions;
use crate::nets::unet::{CompiledUnet, Unet};
use crate::nets::vae::{CompiledVae, NormStats};
use crate::nets::{Precision, Precisions};
use crate::weights::embedding::TextualInversion;
use crate::weights::lora::{Lora, LoraPatch, LoraTarget};
use crate::weights::{self, Patch, sd};

/// A file as part of a model set's identity: path, size and modification time, so that a
/// model replaced on disk is loaded again.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileStamp {
    pub path: PathBuf,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

impl FileStamp {
    pub fn of(path: &Path) -> FileStamp {
        let meta = std::fs::metadata(path).ok();
        FileStamp {
            path: path.to_owned(),
            size: meta.as_ref().map_or(0, |m| m.len()),
            modified: meta.and_then(|m| m.modified().ok()),
        }
    }
}

/// A LoRA with A1111's two multipliers (text encoder, UNet), in thousandths.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LoraChoice {
    pub file: FileStamp,
    pub te: i64,
    pub unet: i64,
}

/// Everything that decides what a model set computes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SetKey {
    pub checkpoint: FileStamp,
    pub vae: FileStamp,
    pub controlnet: FileStamp,
    pub loras: Vec<LoraChoice>,
    pub embeddings: Vec<FileStamp>,
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
            file: FileStamp::of(path),
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
            hyper: None,
            patch: None,
        };

        let unet_net = sd::unet(&key.checkpoint.path)?;
        let unet_loras = with(|c| c.unet);
        let patch = LoraPatch::resolve(&unet_loras, LoraTarget::Unet, &unet_net.tensors)?;
        let patch = (!patch.is_empty()).then_some(&patch as &dyn Patch);
        let compiled = CompiledUnet::compile(&unet_net, cache_dir, &SdOptions { patch, ..plain })?;
        drop(unet_net);
        let mut unet = Unet::new(compiled);
        unet.warm(engine, true)?;

        part!(1);
        let cn_net = sd::controlnet(&key.controlnet.path)?;
        let controlnet = ControlNet::new(
            engine,
            CompiledControlNet::compile(&cn_net, cache_dir, &plain)?,
        )?;
        drop(cn_net);

        part!(2);
        let vae_net = sd::vae(&key.vae.path)?;
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

/// The VAE; its graphs with exported or frozen GroupNorm statistics get short-lived sessions:
/// the statistics graph's ends with its one call, the frozen graph's with the tiled pass. A
/// tiled pass also sets its side's plain session aside (the job warms it again at its end).
pub struct SdVae {
    engine: Arc<Engine>,
    compiled: CompiledVae,
    /// The plain graphs' sessions, [encoder, decoder]; a tiled pass sets its side's aside.
    plain: [Option<SharedSession>; 2],
    /// The frozen-statistics graphs' sessions while a tiled pass runs: [encoder, decoder].
    frozen: [Option<(String, SharedSession)>; 2],
}

impl SdVae {
    pub fn new(engine: Arc<Engine>, compiled: CompiledVae) -> Result<SdVae, EngineError> {
        let mut vae = SdVae {
            engine,
            compiled,
            plain: Default::default(),
            frozen: Default::default(),
        };
        vae.warm()?;
        Ok(vae)
    }

    fn plain_model(&self, decoder: bool) -> &CompiledModel {
        if decoder {
            &self.compiled.decoder
        } else {
            &self.compiled.encoder
        }
    }

    /// Creates the plain graphs' sessions that a tiled pass set aside.
    pub fn warm(&mut self) -> Result<(), EngineError> {
        for decoder in [false, true] {
            self.plain_session(decoder)?;
        }
        Ok(())
    }

    /// Whether both plain graphs' sessions are held.
    pub fn is_warm(&self) -> bool {
        self.plain.iter().all(Option::is_some)
    }

    /// The graphs and weights this VAE runs.
    pub fn compiled(&self) -> &CompiledVae {
        &self.compiled
    }

    fn plain_session(&mut self, decoder: bool) -> Result<(String, SharedSession), EngineError> {
        let slot = usize::from(decoder);
        let model = self.plain_model(decoder);
        let name = model.name.clone();
        if let Some(s) = &self.plain[slot] {
            return Ok((name, s.clone()));
        }
        let session = self.engine.session(model)?;
        self.plain[slot] = Some(session.clone());
        Ok((name, session))
    }

    /// A new session of the graph with `stats` GroupNorm statistics, outside the engine's cache.
    fn stats_session(&self, decoder: bool, stats: NormStats) -> NetResult<(String, SharedSession)> {
        let model = self
            .compiled
            .with_stats(decoder, stats)
            .map_err(|e| match e {
                ModelError::Runtime(e) => StageError::Runtime(e),
                other => StageError::Unexpected(other.to_string()),
            })?;
        let session = self.engine.short_lived_session(&model)?;
        Ok((model.name, session))
    }

    fn frozen(&mut self, decoder: bool) -> NetResult<(String, SharedSession)> {
        let slot = usize::from(decoder);
        if self.frozen[slot].is_none() {
            self.frozen[slot] = Some(self.stats_session(decoder, NormStats::Frozen)?);
        }
        Ok(self.frozen[slot].clone().expect("set above"))
    }

    /// Runs `session` and returns every output by name.
    fn run(
        session: &SharedSession,
        name: &str,
        inputs: Vec<(String, ArrayD<f32>)>,
    ) -> NetResult<Vec<(String, ArrayD<f32>)>> {
        let outputs: Vec<String> = {
            let s = session.lock().unwrap_or_else(|e| e.into_inner());
            s.outputs().iter().map(|o| o.name().to_owned()).collect()
        };
        let views: Vec<(&str, ndarray::ArrayViewD<'_, f32>)> =
            inputs.iter().map(|(n, a)| (n.as_str(), a.view())).collect();
        let names: Vec<&str> = outputs.iter().map(String::as_str).collect();
        let values = crate::nets::sd::run(session, name, &views, &names)?;
        Ok(outputs.into_iter().zip(values).collect())
    }

    fn stats_of(outputs: &[(String, ArrayD<f32>)]) -> GroupNormStats {
        let mut layers = Vec::new();
        for k in 0.. {
            let get = |suffix: &str| {
                let name = format!("groupnorm_{k}_{suffix}");
                outputs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, a)| a.iter().copied().collect())
            };
            match (get("mean"), get("var")) {
                (Some(mean), Some(var)) => layers.push(GroupStats { mean, var }),
                _ => break,
            }
        }
        GroupNormStats { layers }
    }

    fn stats_inputs(stats: &GroupNormStats) -> Vec<(String, ArrayD<f32>)> {
        let mut inputs = Vec::new();
        for (k, layer) in stats.layers.iter().enumerate() {
            let g = layer.mean.len();
            for (suffix, values) in [("mean", &layer.mean), ("var", &layer.var)] {
                let a = Array2::from_shape_vec((1, g), values.clone()).expect("one row of g");
                inputs.push((format!("groupnorm_{k}_{suffix}"), a.into_dyn()));
            }
        }
        inputs
    }

    fn take(outputs: &mut Vec<(String, ArrayD<f32>)>, name: &str) -> NetResult<Array4<f32>> {
        let i = outputs
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| StageError::Unexpected(format!("the VAE graph has no `{name}`")))?;
        four(outputs.swap_remove(i).1, name)
    }
}

impl Vae for SdVae {
    fn encode(
        &mut self,
        image: ArrayView4<f32>,
        norms: Norms<'_>,
    ) -> NetResult<(Array4<f32>, Array4<f32>)> {
        let mut inputs = vec![("sample".to_owned(), image.to_owned().into_dyn())];
        let (name, session) = match norms {
            Norms::Own => self.plain_session(false)?,
            Norms::Frozen(stats) => {
                inputs.extend(SdVae::stats_inputs(stats));
                self.frozen(false)?
            }
        };
        let mut out = SdVae::run(&session, &name, inputs)?;
        Ok((
            SdVae::take(&mut out, "latent_mean")?,
            SdVae::take(&mut out, "latent_logvar")?,
        ))
    }

    fn encoder_stats(&mut self, image: ArrayView4<f32>) -> NetResult<GroupNormStats> {
        let (name, session) = self.stats_session(false, NormStats::Export)?;
        let out = SdVae::run(
            &session,
            &name,
            vec![("sample".to_owned(), image.to_owned().into_dyn())],
        )?;
        Ok(SdVae::stats_of(&out))
    }

    fn decode(&mut self, latent: ArrayView4<f32>, norms: Norms<'_>) -> NetResult<Array4<f32>> {
        let mut inputs = vec![("latent_sample".to_owned(), latent.to_owned().into_dyn())];
        let (name, session) = match norms {
            Norms::Own => self.plain_session(true)?,
            Norms::Frozen(stats) => {
                inputs.extend(SdVae::stats_inputs(stats));
                self.frozen(true)?
            }
        };
        let mut out = SdVae::run(&session, &name, inputs)?;
        SdVae::take(&mut out, "sample")
    }

    fn decoder_stats(&mut self, latent: ArrayView4<f32>) -> NetResult<GroupNormStats> {
        let (name, session) = self.stats_session(true, NormStats::Export)?;
        let out = SdVae::run(
            &session,
            &name,
            vec![("latent_sample".to_owned(), latent.to_owned().into_dyn())],
        )?;
        Ok(SdVae::stats_of(&out))
    }

    fn begin_tiles(&mut self, decoder: bool) {
        if self.plain[usize::from(decoder)].take().is_some() {
            self.engine.forget(self.plain_model(decoder));
        }
    }

    fn end_tiles(&mut self) {
        self.frozen = Default::default();
    }
}

/// ESRGAN as the stage's pre-upscaler; out of accelerator memory, it retries with smaller
/// tiles, then on the CPU (`pipeline::upscale::upscale_retrying`).
pub struct EsrganUpscaler<'a> {
    pub net: &'a mut Esrgan,
    pub tiling: Tiling,
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
