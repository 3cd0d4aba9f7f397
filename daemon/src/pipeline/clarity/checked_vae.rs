//! The job's VAE with its f16 safety net: SD 1.5's VAE overflows f16 in its decoder on some
//! images (activations past 65504 become ∞, then NaN through the next GroupNorm), so every
//! pass of an f16 VAE is checked, and a pass whose result holds a NaN or an ∞ is done again
//! on the same input with the f32 graphs, which are compiled the first time they are needed
//! and kept for the rest of the model set's life. Each redo is logged as a warning and
//! counted ([`CheckedVae::redos`]). An f32 VAE runs unchecked: there is nothing to fall back to.

use std::path::PathBuf;
use std::sync::Arc;

use ndarray::{Array4, ArrayView4};

use super::model_set::SdVae;
use super::network_traits::{
    Carried, GroupNormStats, GroupStats, NetResult, Norms, Segmented, StageError, Vae,
};
use crate::engine::{Engine, EngineError};
use crate::nets::sd::SdOptions;
use crate::nets::vae::CompiledVae;
use crate::nets::vae::VaeConfig;
use crate::nets::{ModelError, Precision};
use crate::weights::WeightType;

/// Where the f32 twin of an f16 VAE comes from.
struct Twin {
    engine: Arc<Engine>,
    /// The VAE file (or checkpoint) and the conversion cache.
    source: PathBuf,
    cache_dir: PathBuf,
    /// The f16 VAE's heads and groups (the twin must be the same network).
    config: VaeConfig,
    vae: Option<SdVae>,
}

/// A VAE whose f16 passes are checked (see the module docs).
pub struct CheckedVae {
    vae: SdVae,
    twin: Option<Twin>,
    redos: usize,
}

impl CheckedVae {
    /// `vae` as it is: f32, or f16 without a fallback.
    pub fn new(vae: SdVae) -> CheckedVae {
        CheckedVae {
            vae,
            twin: None,
            redos: 0,
        }
    }

    /// `vae`, f16, with `source` (compiled into `cache_dir` when first needed) as its f32
    /// fallback. An f32 `vae` needs none and gets none.
    pub fn with_fp32_redo(
        vae: SdVae,
        engine: Arc<Engine>,
        source: PathBuf,
        cache_dir: PathBuf,
    ) -> CheckedVae {
        let compiled = vae.compiled();
        let twin = (compiled.weights.weight_type() == WeightType::F16).then(|| Twin {
            engine,
            source,
            cache_dir,
            config: compiled.config.clone(),
            vae: None,
        });
        CheckedVae {
            vae,
            twin,
            redos: 0,
        }
    }

    /// Creates again the plain graphs' sessions a tiled pass set aside.
    pub fn warm(&mut self) -> Result<(), EngineError> {
        self.vae.warm()
    }

    /// Whether both plain graphs' sessions are held.
    pub fn is_warm(&self) -> bool {
        self.vae.is_warm()
    }

    /// How many passes overflowed in f16 and were redone in f32 so far.
    pub fn redos(&self) -> usize {
        self.redos
    }

    /// Runs `pass` on the VAE; an f16 result that fails `finite` is computed again in f32.
    fn checked<T>(
        &mut self,
        what: &str,
        mut pass: impl FnMut(&mut SdVae) -> NetResult<T>,
        finite: impl Fn(&T) -> bool,
    ) -> NetResult<T> {
        let out = pass(&mut self.vae)?;
        let Some(twin) = self.twin.as_mut() else {
            return Ok(out);
        };
        if finite(&out) {
            return Ok(out);
        }
        drop(out);
        self.redos += 1;
        tracing::warn!(
            "the fp16 VAE's {what} gave NaN or ∞ (an f16 overflow); done again in fp32 ({} so far)",
            self.redos
        );
        pass(twin.vae()?)
    }
}

impl Twin {
    fn vae(&mut self) -> NetResult<&mut SdVae> {
        if self.vae.is_none() {
            let compile = || -> Result<CompiledVae, ModelError> {
                let net = crate::weights::sd::vae(&self.source)?;
                CompiledVae::compile_with(
                    &net,
                    self.config.clone(),
                    &self.cache_dir,
                    &SdOptions {
                        precision: Precision::F32,
                        config: None,
                        patch: None,
                    },
                )
            };
            let compiled = compile().map_err(|e| match e {
                ModelError::Runtime(e) => StageError::Runtime(e),
                other => StageError::Unexpected(format!("the fp32 VAE for a redo: {other}")),
            })?;
            self.vae = Some(SdVae::new(self.engine.clone(), compiled)?);
        }
        Ok(self.vae.as_mut().expect("set above"))
    }
}

fn finite(a: &Array4<f32>) -> bool {
    a.iter().all(|v| v.is_finite())
}

fn finite_layer(l: &GroupStats) -> bool {
    l.mean.iter().chain(&l.var).all(|v| v.is_finite())
}

fn finite_stats(s: &GroupNormStats) -> bool {
    s.layers.iter().all(finite_layer)
}

fn finite_segment(s: &Segmented) -> bool {
    match s {
        Segmented::State(carried, stats) => {
            finite(&carried.x) && carried.skip.as_ref().is_none_or(finite) && finite_layer(stats)
        }
        Segmented::Posterior(mean, logvar) => finite(mean) && finite(logvar),
    }
}

impl Vae for CheckedVae {
    fn encode(
        &mut self,
        image: ArrayView4<f32>,
        norms: Norms<'_>,
    ) -> NetResult<(Array4<f32>, Array4<f32>)> {
        self.checked(
            "encode",
            |vae| vae.encode(image, norms),
            |(mean, logvar)| finite(mean) && finite(logvar),
        )
    }

    fn encoder_stats(&mut self, image: ArrayView4<f32>) -> NetResult<GroupNormStats> {
        self.checked(
            "encoder statistics pass",
            |vae| vae.encoder_stats(image),
            finite_stats,
        )
    }

    fn decode(&mut self, latent: ArrayView4<f32>, norms: Norms<'_>) -> NetResult<Array4<f32>> {
        self.checked("decode", |vae| vae.decode(latent, norms), finite)
    }

    fn post_quant(&mut self, latent: ArrayView4<f32>) -> NetResult<Array4<f32>> {
        self.checked(
            "post-quant convolution",
            |vae| vae.post_quant(latent),
            finite,
        )
    }

    fn decoder_stats(&mut self, input: ArrayView4<f32>) -> NetResult<GroupNormStats> {
        self.checked(
            "decoder statistics pass",
            |vae| vae.decoder_stats(input),
            finite_stats,
        )
    }

    fn encoder_segments(&mut self) -> NetResult<usize> {
        self.vae.encoder_segments()
    }

    fn encoder_head_stats(&mut self, image: ArrayView4<f32>) -> NetResult<GroupNormStats> {
        self.checked(
            "encoder head statistics pass",
            |vae| vae.encoder_head_stats(image),
            finite_stats,
        )
    }

    fn encoder_segment(
        &mut self,
        index: usize,
        input: Carried,
        stats: &GroupNormStats,
    ) -> NetResult<Segmented> {
        // A redo takes the same (finite: an earlier overflow was redone) state in f32.
        self.checked(
            "encoder segment",
            |vae| vae.encoder_segment(index, input.clone(), stats),
            finite_segment,
        )
    }

    fn begin_tiles(&mut self, decoder: bool) {
        self.vae.begin_tiles(decoder);
        if let Some(twin) = self.twin.as_mut().and_then(|t| t.vae.as_mut()) {
            twin.begin_tiles(decoder);
        }
    }

    fn end_tiles(&mut self) {
        self.vae.end_tiles();
        if let Some(twin) = self.twin.as_mut().and_then(|t| t.vae.as_mut()) {
            twin.end_tiles();
        }
    }
}
