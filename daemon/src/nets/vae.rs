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
//! z·[`VaeConfig::scaling_factor`] (0.18215), so the pipeline multiplies the encoder's sample by
//! it and divides before decoding.
//!
//! The graphs are built from a [`VaeConfig`] alone: `from_weights` reads levels, ResNets per
//! level, widths, the latent width and whether the mid block attends from tensor shapes once;
//! GroupNorm groups (32 in SD) come from a diffusers `config.json` (or the caller). The
//! mid-block attention is single-head over all pixels.

pub mod segments;

use super::ModelError;
use super::sd::{self, SdOptions};
pub use super::sd_blocks::NormStats;
use super::sd_blocks::{SdNet, W, nchw};
use crate::engine::{CompiledModel, CpuMemory};
use crate::onnx::{Conv2d, Graph, Value};
use crate::weights::sd::{DiffusersConfig, NetWeights};
use crate::weights::{SourceTensor, TensorMap, WeightType, Weights, WeightsError};

/// The VAE's configuration, the fields diffusers' `config.json` declares: [`VaeConfig::sd15`]
/// (also its `Default`) is Stable Diffusion 1.5's, [`VaeConfig::from_weights`] reads a file's.
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    pub image_channels: usize,
    pub latent_channels: usize,
    /// Encoder widths, top first (SD: 128, 256, 512, 512).
    pub block_channels: Vec<usize>,
    /// Encoder ResNets per level (the decoder has one more).
    pub layers_per_block: usize,
    /// Whether the mid blocks attend (diffusers' `mid_block_add_attention`).
    pub mid_attention: bool,
    /// GroupNorm groups (SD: 32; `norm_num_groups`).
    pub norm_groups: usize,
    /// Epsilon of every GroupNorm (fixed in diffusers' VAE blocks).
    pub norm_eps: f32,
    /// SD's latent scale: the UNet sees `z · scaling_factor`; the graphs do not apply it.
    pub scaling_factor: f32,
}

impl Default for VaeConfig {
    fn default() -> VaeConfig {
        VaeConfig::sd15()
    }
}

impl VaeConfig {
    /// Stable Diffusion 1.5's VAE (`AutoencoderKL` of `sd-vae-ft-mse`).
    pub fn sd15() -> VaeConfig {
        VaeConfig {
            image_channels: 3,
            latent_channels: 4,
            block_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            mid_attention: true,
            norm_groups: 32,
            norm_eps: 1e-6,
            scaling_factor: 0.18215,
        }
    }

    /// Reads the configuration from the canonical tensors' shapes once; GroupNorm groups,
    /// which shapes cannot tell, come from `declared` (else SD's). Checks that every width
    /// splits into the groups.
    pub fn from_weights(
        w: &TensorMap<SourceTensor>,
        declared: &DiffusersConfig,
    ) -> Result<VaeConfig, WeightsError> {
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
        let groups = declared
            .norm_groups
            .unwrap_or(VaeConfig::sd15().norm_groups);
        for (i, &c) in block_channels.iter().enumerate() {
            if groups == 0 || !c.is_multiple_of(groups) {
                return Err(super::unet::bad_shape(
                    w,
                    &format!("encoder.down_blocks.{i}.resnets.0.norm2.weight"),
                    &format!("{c} channels do not split into {groups} GroupNorm groups"),
                ));
            }
        }
        Ok(VaeConfig {
            image_channels: shape("encoder.conv_in.weight")?[1],
            latent_channels: post[0],
            block_channels,
            layers_per_block: w.scope("encoder.down_blocks.0.resnets").count_indexed(),
            mid_attention: w.scope("encoder.mid_block.attentions").exists(),
            norm_groups: groups,
            ..VaeConfig::sd15()
        })
    }

    /// Input and output widths of ResNet `resnet` of encoder level `level` (`None`: the mid
    /// block).
    pub fn encoder_resnet_widths(&self, level: Option<usize>, resnet: usize) -> [usize; 2] {
        let c = &self.block_channels;
        match level {
            None => [c[c.len() - 1]; 2],
            Some(l) if resnet > 0 => [c[l]; 2],
            Some(l) => [c[l.saturating_sub(1)], c[l]],
        }
    }

    /// Image size ÷ latent size.
    pub fn downscale(&self) -> usize {
        1 << (self.block_channels.len() - 1)
    }
}

/// The mid block: ResNet, single-head self-attention over all pixels, ResNet.
fn mid_block(net: &mut SdNet, config: &VaeConfig, x: &Value, w: &W) -> Result<Value, WeightsError> {
    let (eps, widths) = (config.norm_eps, config.encoder_resnet_widths(None, 0));
    let h = net.resnet(x, None, &w.scope("resnets").scope(0), eps, widths)?;
    let h = if config.mid_attention {
        let a = w.scope("attentions").scope(0);
        mid_attention(net, config, &h, &a)?
    } else {
        h
    };
    net.resnet(&h, None, &w.scope("resnets").scope(1), eps, widths)
}

/// GroupNorm, single-head self-attention over all pixels (biased projections), plus the input.
fn mid_attention(
    net: &mut SdNet,
    config: &VaeConfig,
    x: &Value,
    w: &W,
) -> Result<Value, WeightsError> {
    let normed = net.group_norm(x, &w.scope("group_norm"), config.norm_eps)?;
    let tokens = net.to_tokens(&normed);
    let attended = net.attention(&tokens, None, w, 1, true)?;
    let image = net.to_image(&attended, x);
    Ok(net.g.add(&image, x))
}

fn output_head(
    net: &mut SdNet,
    config: &VaeConfig,
    x: &Value,
    w: &W,
) -> Result<Value, WeightsError> {
    let h = net.group_norm(x, &w.scope("conv_norm_out"), config.norm_eps)?;
    let h = net.silu(&h);
    net.conv(&h, &w.scope("conv_out"), Conv2d::padded(1))
}

/// Image → (mean, log-variance). With `stats` other than `Live` the GroupNorm statistics are
/// also outputs (`Export`) or inputs (`Frozen`), see [`NormStats`].
pub fn build_encoder(
    config: &VaeConfig,
    w: &Weights,
    weight_type: WeightType,
    stats: NormStats,
) -> Result<Graph, WeightsError> {
    let mut net = SdNet::new("vae_encoder", weight_type, config.norm_groups);
    net.norm_stats = stats;
    let enc = w.scope("encoder");
    let x = net.input("sample", &nchw(config.image_channels, "height", "width"));
    let mut h = net.conv(&x, &enc.scope("conv_in"), Conv2d::padded(1))?;
    let levels = config.block_channels.len();
    for i in 0..levels {
        let level = enc.scope("down_blocks").scope(i);
        for j in 0..config.layers_per_block {
            let widths = config.encoder_resnet_widths(Some(i), j);
            h = net.resnet(
                &h,
                None,
                &level.scope("resnets").scope(j),
                config.norm_eps,
                widths,
            )?;
        }
        if i + 1 < levels {
            // diffusers pads right and bottom only, then convolves unpadded with stride 2.
            h = net.downsample(&h, &level.scope("downsamplers").scope(0), [0, 0, 1, 1])?;
        }
    }
    h = mid_block(&mut net, config, &h, &enc.scope("mid_block"))?;
    h = output_head(&mut net, config, &h, &enc)?;
    posterior_outputs(&mut net, config, w, &h)?;
    Ok(net.finish())
}

/// `quant_conv` on the encoder's output, then the posterior's mean and (clamped)
/// log-variance as the graph's outputs.
fn posterior_outputs(
    net: &mut SdNet,
    config: &VaeConfig,
    w: &Weights,
    h: &Value,
) -> Result<(), WeightsError> {
    let moments = net.conv(h, &w.scope("quant_conv"), Conv2d::padded(0))?;
    let l = config.latent_channels as i64;
    let halves = net.g.split(&moments, 1, &[l, l]);
    let low = net.constant(&[], &[-30.0]);
    let high = net.constant(&[], &[20.0]);
    let logvar = net.g.node("Clip", &[&halves[1], &low, &high], vec![]);
    let dims = nchw(config.latent_channels, "latent_height", "latent_width");
    net.output("latent_mean", &halves[0], &dims);
    net.output("latent_logvar", &logvar, &dims);
    Ok(())
}

/// Latent → image; `stats` as for [`build_encoder`].
pub fn build_decoder(
    config: &VaeConfig,
    w: &Weights,
    weight_type: WeightType,
    stats: NormStats,
) -> Result<Graph, WeightsError> {
    build_decoder_from(config, w, weight_type, stats, DecoderInput::Latent)
}

/// What a decoder graph starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecoderInput {
    /// `latent_sample`, through `post_quant_conv` first.
    Latent,
    /// `decoder_input`: a latent already through `post_quant_conv`. Tiled VAE hooks the
    /// decoder behind that convolution, so its statistics proxy is taken there.
    PostQuant,
}

/// The decoder from `input`.
pub fn build_decoder_from(
    config: &VaeConfig,
    w: &Weights,
    weight_type: WeightType,
    stats: NormStats,
    input: DecoderInput,
) -> Result<Graph, WeightsError> {
    let mut net = SdNet::new("vae_decoder", weight_type, config.norm_groups);
    net.norm_stats = stats;
    let dec = w.scope("decoder");
    let dims = nchw(config.latent_channels, "latent_height", "latent_width");
    let z = match input {
        DecoderInput::Latent => {
            let z = net.input("latent_sample", &dims);
            net.conv(&z, &w.scope("post_quant_conv"), Conv2d::padded(0))?
        }
        DecoderInput::PostQuant => net.input("decoder_input", &dims),
    };
    let mut h = net.conv(&z, &dec.scope("conv_in"), Conv2d::padded(1))?;
    h = mid_block(&mut net, config, &h, &dec.scope("mid_block"))?;
    let levels = config.block_channels.len();
    let mut channels = config.block_channels[levels - 1];
    for i in 0..levels {
        let level = dec.scope("up_blocks").scope(i);
        let out = config.block_channels[levels - 1 - i];
        for j in 0..=config.layers_per_block {
            let resnet = level.scope("resnets").scope(j);
            h = net.resnet(&h, None, &resnet, config.norm_eps, [channels, out])?;
            channels = out;
        }
        if i + 1 < levels {
            h = net.upsample(&h, &level.scope("upsamplers").scope(0))?;
        }
    }
    let image = output_head(&mut net, config, &h, &dec)?;
    net.output(
        "sample",
        &image,
        &nchw(config.image_channels, "height", "width"),
    );
    Ok(net.finish())
}

/// `latent_sample` → `decoder_input`: `post_quant_conv` alone.
pub fn build_post_quant(
    config: &VaeConfig,
    w: &Weights,
    weight_type: WeightType,
) -> Result<Graph, WeightsError> {
    let mut net = SdNet::new("vae_post_quant", weight_type, config.norm_groups);
    let dims = nchw(config.latent_channels, "latent_height", "latent_width");
    let z = net.input("latent_sample", &dims);
    let z = net.conv(&z, &w.scope("post_quant_conv"), Conv2d::padded(0))?;
    net.output("decoder_input", &z, &dims);
    Ok(net.finish())
}

/// A compiled VAE: configuration, weights, both graphs.
#[derive(Debug)]
pub struct CompiledVae {
    pub config: VaeConfig,
    pub weights: Weights,
    pub encoder: CompiledModel,
    pub decoder: CompiledModel,
}

impl CompiledVae {
    /// The encoder (`decoder == false`) or decoder graph with the GroupNorm statistics
    /// exported or frozen, over the same weights (for tiled encoding and decoding). The
    /// decoder with exported statistics starts behind `post_quant_conv` ([`DecoderInput`]).
    pub fn with_stats(&self, decoder: bool, stats: NormStats) -> Result<CompiledModel, ModelError> {
        let weight_type = self.weights.weight_type();
        let (graph, base) = if decoder {
            let input = if stats == NormStats::Export {
                DecoderInput::PostQuant
            } else {
                DecoderInput::Latent
            };
            (
                build_decoder_from(&self.config, &self.weights, weight_type, stats, input)?,
                &self.decoder,
            )
        } else {
            (
                build_encoder(&self.config, &self.weights, weight_type, stats)?,
                &self.encoder,
            )
        };
        Ok(compiled(
            format!("{} ({stats:?} GroupNorm statistics)", base.name),
            graph,
            &self.weights,
        ))
    }

    /// One graph of the encoder cut for the colour fix ([`segments`]).
    pub fn segment(
        &self,
        segment: segments::Segment,
        stats: NormStats,
    ) -> Result<CompiledModel, ModelError> {
        let graph = segments::build_segment(
            &self.config,
            &self.weights,
            self.weights.weight_type(),
            segment,
            stats,
        )?;
        Ok(compiled(
            format!(
                "{} segment {segment:?} ({stats:?} GroupNorm statistics)",
                self.encoder.name
            ),
            graph,
            &self.weights,
        ))
    }

    /// `post_quant_conv` alone ([`build_post_quant`]).
    pub fn post_quant(&self) -> Result<CompiledModel, ModelError> {
        let graph = build_post_quant(&self.config, &self.weights, self.weights.weight_type())?;
        Ok(compiled(
            format!("{} post_quant_conv", self.decoder.name),
            graph,
            &self.weights,
        ))
    }

    pub fn compile(
        net: &NetWeights,
        cache_dir: &std::path::Path,
        options: &SdOptions<'_>,
    ) -> Result<CompiledVae, ModelError> {
        let config = VaeConfig::from_weights(&net.tensors, &options.declared(net))?;
        CompiledVae::compile_with(net, config, cache_dir, options)
    }

    /// [`CompiledVae::compile`] with a configuration already read (e.g. to compile the same
    /// VAE again in another precision).
    pub fn compile_with(
        net: &NetWeights,
        config: VaeConfig,
        cache_dir: &std::path::Path,
        options: &SdOptions<'_>,
    ) -> Result<CompiledVae, ModelError> {
        let weights = sd::prepare(net, "vae", cache_dir, options)?;
        CompiledVae::build(config, weights, options.precision.weight_type(), net)
    }

    pub fn build(
        config: VaeConfig,
        weights: Weights,
        weight_type: WeightType,
        net: &NetWeights,
    ) -> Result<CompiledVae, ModelError> {
        let file = net
            .source
            .path()
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let encoder = build_encoder(&config, &weights, weight_type, NormStats::Live)?;
        let decoder = build_decoder(&config, &weights, weight_type, NormStats::Live)?;
        Ok(CompiledVae {
            encoder: compiled(format!("VAE encoder {file}"), encoder, &weights),
            decoder: compiled(format!("VAE decoder {file}"), decoder, &weights),
            config,
            weights,
        })
    }
}

/// A VAE graph as the engine takes it: its calls are few and large, so a CPU session holds an
/// arena for each call ([`CpuMemory::ArenaPerCall`]).
fn compiled(name: String, graph: Graph, weights: &Weights) -> CompiledModel {
    CompiledModel {
        cpu_memory: CpuMemory::ArenaPerCall,
        ..sd::compiled(name, graph, weights)
    }
}
