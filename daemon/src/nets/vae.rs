//! The Stable Diffusion VAE (diffusers' `AutoencoderKL`; the KL autoencoder of Rombach et
//! al., 2022): an encoder to a diagonal Gaussian over 4-channel latents at 1/8 of the image
//! size, and a decoder back.
//!
//! - `vae_encoder`: `sample` `[B, 3, H, W]` (RGB in −1..1) → `latent_mean`, `latent_logvar`
//!   `[B, 4, H/8, W/8]` (log-variance clamped to −30..20 as diffusers does). The pipeline
//!   samples z = mean + exp(logvar/2)·ε (A1111/LDM sample; they do not take the mean).
//! - `vae_decoder`: `latent_sample` `[B, 4, h, w]` → `sample` `[B, 3, 8h, 8w]` (RGB, about
//!   −1..1, not clamped).
//!
//! **Scaling.** Neither graph applies SD's latent scale factor: the diffusion model works on
//! z·[`SCALING_FACTOR`], so the pipeline multiplies the encoder's sample by it and divides
//! before decoding.
//!
//! Levels, ResNets per level, widths and the latent width come from tensor shapes; GroupNorm
//! groups (32 in SD) from `SdHyper`. The mid-block attention is single-head over all pixels.

use super::ModelError;
use super::sd::{self, SdOptions};
pub use super::sd_blocks::NormStats;
use super::sd_blocks::{SdNet, TRANSFORMER_NORM_EPS, W, nchw};
use crate::engine::CompiledModel;
use crate::onnx::{Conv2d, Graph, Value};
use crate::weights::sd::{NetWeights, SdHyper};
use crate::weights::{SourceTensor, TensorMap, WeightType, Weights, WeightsError};

/// SD 1.x's latent scale: the UNet sees `z · 0.18215`.
pub const SCALING_FACTOR: f32 = 0.18215;

/// Every GroupNorm of the VAE uses this epsilon.
const EPS: f32 = TRANSFORMER_NORM_EPS;

/// The VAE's shape, from its tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaeConfig {
    pub image_channels: usize,
    pub latent_channels: usize,
    /// Encoder widths, top first (SD: 128, 256, 512, 512).
    pub block_channels: Vec<usize>,
    /// Encoder ResNets per level (the decoder has one more).
    pub layers_per_block: usize,
}

impl VaeConfig {
    pub fn infer(w: &TensorMap<SourceTensor>) -> Result<VaeConfig, WeightsError> {
        let shape = |name: &str| -> Result<Vec<usize>, WeightsError> {
            Ok(w.root().get(name)?.shape.clone())
        };
        let levels = w.scope("encoder.down_blocks").count_indexed();
        if levels == 0 {
            return Err(WeightsError::Missing {
                name: "encoder.down_blocks.0".into(),
            });
        }
        let block_channels = (0..levels)
            .map(|i| Ok(shape(&format!("encoder.down_blocks.{i}.resnets.0.conv1.weight"))?[0]))
            .collect::<Result<Vec<_>, WeightsError>>()?;
        let post = shape("post_quant_conv.weight")?;
        let ups = w.scope("decoder.up_blocks").count_indexed();
        if ups != levels {
            return Err(WeightsError::BadShape {
                name: "decoder.up_blocks".into(),
                shape: vec![],
                reason: format!("{ups} decoder levels for {levels} encoder levels"),
            });
        }
        Ok(VaeConfig {
            image_channels: shape("encoder.conv_in.weight")?[1],
            latent_channels: post[0],
            block_channels,
            layers_per_block: w.scope("encoder.down_blocks.0.resnets").count_indexed(),
        })
    }

    /// Image size ÷ latent size.
    pub fn downscale(&self) -> usize {
        1 << (self.block_channels.len() - 1)
    }
}

/// The mid block: ResNet, single-head self-attention over all pixels, ResNet.
fn mid_block(net: &mut SdNet, x: &Value, w: &W) -> Result<Value, WeightsError> {
    let h = net.resnet(x, None, &w.scope("resnets").scope(0), EPS)?;
    let h = if w.scope("attentions").exists() {
        let a = w.scope("attentions").scope(0);
        let normed = net.group_norm(&h, &a.scope("group_norm"), EPS)?;
        let tokens = net.to_tokens(&normed);
        let attended = net.attention(&tokens, None, &a, 1)?;
        let image = net.to_image(&attended, &h);
        net.g.add(&image, &h)
    } else {
        h
    };
    net.resnet(&h, None, &w.scope("resnets").scope(1), EPS)
}

fn output_head(net: &mut SdNet, x: &Value, w: &W) -> Result<Value, WeightsError> {
    let h = net.group_norm(x, &w.scope("conv_norm_out"), EPS)?;
    let h = net.silu(&h);
    net.conv(&h, &w.scope("conv_out"), Conv2d::padded(1))
}

/// Image → (mean, log-variance). With `stats` other than `Live` the GroupNorm statistics are
/// also outputs (`Export`) or inputs (`Frozen`), see [`NormStats`].
pub fn build_encoder(
    config: &VaeConfig,
    w: &Weights,
    hyper: SdHyper,
    weight_type: WeightType,
    stats: NormStats,
) -> Result<Graph, WeightsError> {
    let mut net = SdNet::new("vae_encoder", weight_type, hyper);
    net.norm_stats = stats;
    let enc = w.scope("encoder");
    let x = net.input("sample", &nchw(config.image_channels, "height", "width"));
    let mut h = net.conv(&x, &enc.scope("conv_in"), Conv2d::padded(1))?;
    let levels = config.block_channels.len();
    for i in 0..levels {
        let level = enc.scope("down_blocks").scope(i);
        for j in 0..config.layers_per_block {
            h = net.resnet(&h, None, &level.scope("resnets").scope(j), EPS)?;
        }
        if i + 1 < levels {
            // diffusers pads right and bottom only, then convolves unpadded with stride 2.
            h = net.downsample(&h, &level.scope("downsamplers").scope(0), [0, 0, 1, 1])?;
        }
    }
    h = mid_block(&mut net, &h, &enc.scope("mid_block"))?;
    h = output_head(&mut net, &h, &enc)?;
    let moments = net.conv(&h, &w.scope("quant_conv"), Conv2d::padded(0))?;
    let l = config.latent_channels as i64;
    let halves = net.g.split(&moments, 1, &[l, l]);
    let low = net.constant(&[], &[-30.0]);
    let high = net.constant(&[], &[20.0]);
    let logvar = net.g.node("Clip", &[&halves[1], &low, &high], vec![]);
    let dims = nchw(config.latent_channels, "latent_height", "latent_width");
    net.output("latent_mean", &halves[0], &dims);
    net.output("latent_logvar", &logvar, &dims);
    Ok(net.g)
}

/// Latent → image; `stats` as for [`build_encoder`].
pub fn build_decoder(
    config: &VaeConfig,
    w: &Weights,
    hyper: SdHyper,
    weight_type: WeightType,
    stats: NormStats,
) -> Result<Graph, WeightsError> {
    let mut net = SdNet::new("vae_decoder", weight_type, hyper);
    net.norm_stats = stats;
    let dec = w.scope("decoder");
    let z = net.input(
        "latent_sample",
        &nchw(config.latent_channels, "latent_height", "latent_width"),
    );
    let z = net.conv(&z, &w.scope("post_quant_conv"), Conv2d::padded(0))?;
    let mut h = net.conv(&z, &dec.scope("conv_in"), Conv2d::padded(1))?;
    h = mid_block(&mut net, &h, &dec.scope("mid_block"))?;
    let levels = config.block_channels.len();
    for i in 0..levels {
        let level = dec.scope("up_blocks").scope(i);
        for j in 0..=config.layers_per_block {
            h = net.resnet(&h, None, &level.scope("resnets").scope(j), EPS)?;
        }
        if i + 1 < levels {
            h = net.upsample(&h, &level.scope("upsamplers").scope(0))?;
        }
    }
    let image = output_head(&mut net, &h, &dec)?;
    net.output(
        "sample",
        &image,
        &nchw(config.image_channels, "height", "width"),
    );
    Ok(net.g)
}

/// A compiled VAE: configuration, weights, both graphs.
#[derive(Debug)]
pub struct CompiledVae {
    pub config: VaeConfig,
    pub hyper: SdHyper,
    pub weights: Weights,
    pub encoder: CompiledModel,
    pub decoder: CompiledModel,
}

impl CompiledVae {
    /// The encoder (`decoder == false`) or decoder graph with the GroupNorm statistics
    /// exported or frozen, over the same weights (for tiled encoding and decoding).
    pub fn with_stats(&self, decoder: bool, stats: NormStats) -> Result<CompiledModel, ModelError> {
        let weight_type = self.weights.weight_type();
        let (graph, base) = if decoder {
            (
                build_decoder(&self.config, &self.weights, self.hyper, weight_type, stats)?,
                &self.decoder,
            )
        } else {
            (
                build_encoder(&self.config, &self.weights, self.hyper, weight_type, stats)?,
                &self.encoder,
            )
        };
        Ok(sd::compiled(
            format!("{} ({stats:?} GroupNorm statistics)", base.name),
            graph,
            &self.weights,
        ))
    }

    pub fn compile(
        net: &NetWeights,
        cache_dir: &std::path::Path,
        options: &SdOptions<'_>,
    ) -> Result<CompiledVae, ModelError> {
        let config = VaeConfig::infer(&net.tensors)?;
        let (weights, hyper) = sd::prepare(net, "vae", cache_dir, options)?;
        CompiledVae::build(config, hyper, weights, options.precision.weight_type(), net)
    }

    pub fn build(
        config: VaeConfig,
        hyper: SdHyper,
        weights: Weights,
        weight_type: WeightType,
        net: &NetWeights,
    ) -> Result<CompiledVae, ModelError> {
        let file = net
            .source
            .path()
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let encoder = build_encoder(&config, &weights, hyper, weight_type, NormStats::Live)?;
        let decoder = build_decoder(&config, &weights, hyper, weight_type, NormStats::Live)?;
        Ok(CompiledVae {
            encoder: sd::compiled(format!("VAE encoder {file}"), encoder, &weights),
            decoder: sd::compiled(format!("VAE decoder {file}"), decoder, &weights),
            config,
            hyper,
            weights,
        })
    }
}
