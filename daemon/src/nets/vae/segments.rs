//! The VAE encoder cut where Tiled VAE's encoder colour fix makes the tiles of an image wait
//! for each other: at every GroupNorm after the first downsample.
//!
//! Tiled VAE (the A1111 extension Clarity runs) freezes the GroupNorms before the first
//! downsample to the statistics of a downscaled proxy of the whole image, and normalises each
//! later GroupNorm by the pixel-weighted average of the statistics the tiles reach it with.
//! A tile can therefore only pass such a GroupNorm once every tile has reached it; ONNX Runtime
//! cannot pause a graph, so the encoder is built as a chain of graphs ([`Segment`]), each
//! starting at one such GroupNorm (its statistics are graph inputs) and ending at the input of
//! the next, whose statistics it returns with its state.
//!
//! | segment | inputs | outputs |
//! |---|---|---|
//! | `Head` | `sample`, the head's GroupNorm statistics | `next_x` after the first downsample, `next_mean`, `next_var` |
//! | `ResnetIn` | `x`, the statistics of `norm1` | `next_x` after `conv1`, `next_skip` (the projected input, when the block projects), next statistics |
//! | `ResnetOut` | `x`, `skip`, the statistics of `norm2` | `next_x` after the residual (and the downsample that ends a level), next statistics |
//! | `Attention` | `x`, the statistics of its `group_norm` | `next_x` after the residual, next statistics |
//! | `Output` | `x`, the statistics of `conv_norm_out` | `latent_mean`, `latent_logvar` |
//!
//! The leading GroupNorm's statistics are `groupnorm_0_mean` and `groupnorm_0_var` (`[B, G]`,
//! f32); the head's are `groupnorm_{k}_*` for its k-th GroupNorm, as in the whole encoder, so a
//! proxy pass of the head with exported statistics (`NormStats::Export`) feeds it directly.

use super::{VaeConfig, mid_attention, posterior_outputs};
use crate::nets::sd_blocks::{NormStats, SdNet, W, nchw};
use crate::onnx::{Conv2d, Dim, Graph, Value};
use crate::weights::{WeightType, Weights, WeightsError};

/// One graph of the cut encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// `conv_in`, the first level's ResNets, the first downsample.
    Head,
    /// A ResNet from `norm1` to `conv1` (`level` = the level, or `None` for the mid block).
    ResnetIn { level: Option<usize>, resnet: usize },
    /// A ResNet from `norm2` to its residual, and the downsample that ends its level.
    ResnetOut { level: Option<usize>, resnet: usize },
    /// The mid block's attention.
    Attention,
    /// `conv_norm_out`, `conv_out`, `quant_conv`: the posterior.
    Output,
}

impl Segment {
    /// Every segment of `config`'s encoder, in order.
    pub fn all(config: &VaeConfig) -> Vec<Segment> {
        let mut out = vec![Segment::Head];
        let resnet = |out: &mut Vec<Segment>, level, resnet| {
            out.push(Segment::ResnetIn { level, resnet });
            out.push(Segment::ResnetOut { level, resnet });
        };
        for level in 1..config.block_channels.len() {
            for r in 0..config.layers_per_block {
                resnet(&mut out, Some(level), r);
            }
        }
        resnet(&mut out, None, 0);
        if config.mid_attention {
            out.push(Segment::Attention);
        }
        resnet(&mut out, None, 1);
        out.push(Segment::Output);
        out
    }

    /// Whether the segment takes the ResNet's residual as `skip`.
    pub fn takes_skip(self) -> bool {
        matches!(self, Segment::ResnetOut { .. })
    }

    /// Whether the segment returns the residual as `skip` (a ResNet that changes the width
    /// projects its input; otherwise the residual is the segment's input itself, which the
    /// caller keeps).
    pub fn gives_skip(self, config: &VaeConfig) -> bool {
        match self {
            Segment::ResnetIn { level, resnet } => {
                let [input, output] = config.encoder_resnet_widths(level, resnet);
                input != output
            }
            _ => false,
        }
    }
}

fn resnet_scope(w: &Weights, level: Option<usize>, resnet: usize) -> W<'_> {
    match level {
        Some(level) => w
            .scope("encoder.down_blocks")
            .scope(level)
            .scope("resnets")
            .scope(resnet),
        None => w.scope("encoder.mid_block.resnets").scope(resnet),
    }
}

/// The graph of `segment`. `stats` is `Frozen` for the tiles; for the head it may be `Export`,
/// which gives the head's GroupNorm statistics of a proxy image and nothing else.
pub fn build_segment(
    config: &VaeConfig,
    w: &Weights,
    weight_type: WeightType,
    segment: Segment,
    stats: NormStats,
) -> Result<Graph, WeightsError> {
    let name = format!("vae_encoder_{segment:?}");
    let mut net = SdNet::new(&name, weight_type, config.norm_groups);
    net.norm_stats = stats;
    let eps = config.norm_eps;
    let deepest = config.block_channels[config.block_channels.len() - 1];
    let enc = w.scope("encoder");
    let dims = |c: usize| nchw(c, "height", "width");
    let x = match segment {
        Segment::Head => {
            let image = net.input("sample", &dims(config.image_channels));
            let mut h = net.conv(&image, &enc.scope("conv_in"), Conv2d::padded(1))?;
            let level = enc.scope("down_blocks").scope(0);
            for j in 0..config.layers_per_block {
                let widths = config.encoder_resnet_widths(Some(0), j);
                h = net.resnet(&h, None, &level.scope("resnets").scope(j), eps, widths)?;
            }
            if stats == NormStats::Export {
                return Ok(net.finish());
            }
            net.downsample(&h, &level.scope("downsamplers").scope(0), [0, 0, 1, 1])?
        }
        Segment::ResnetIn { level, resnet } => {
            let scope = resnet_scope(w, level, resnet);
            let [input, output] = config.encoder_resnet_widths(level, resnet);
            let x = net.input("x", &dims(input));
            let h = net.group_norm(&x, &scope.scope("norm1"), eps)?;
            let h = net.silu(&h);
            let h = net.conv(&h, &scope.scope("conv1"), Conv2d::padded(1))?;
            if segment.gives_skip(config) {
                let skip = net.conv(&x, &scope.scope("conv_shortcut"), Conv2d::padded(0))?;
                net.output("next_skip", &skip, &dims(output));
            }
            h
        }
        Segment::ResnetOut { level, resnet } => {
            let scope = resnet_scope(w, level, resnet);
            let [_, channels] = config.encoder_resnet_widths(level, resnet);
            let x = net.input("x", &dims(channels));
            let skip = net.input("skip", &dims(channels));
            let h = net.group_norm(&x, &scope.scope("norm2"), eps)?;
            let h = net.silu(&h);
            let h = net.conv(&h, &scope.scope("conv2"), Conv2d::padded(1))?;
            let mut out = net.g.add(&skip, &h);
            let ends_level = level.is_some_and(|l| {
                resnet + 1 == config.layers_per_block && l + 1 < config.block_channels.len()
            });
            if let (true, Some(l)) = (ends_level, level) {
                let down = enc
                    .scope("down_blocks")
                    .scope(l)
                    .scope("downsamplers")
                    .scope(0);
                out = net.downsample(&out, &down, [0, 0, 1, 1])?;
            }
            out
        }
        Segment::Attention => {
            let a = enc.scope("mid_block.attentions").scope(0);
            let x = net.input("x", &dims(deepest));
            mid_attention(&mut net, config, &x, &a)?
        }
        Segment::Output => {
            let x = net.input("x", &dims(deepest));
            let h = net.group_norm(&x, &enc.scope("conv_norm_out"), eps)?;
            let h = net.silu(&h);
            let h = net.conv(&h, &enc.scope("conv_out"), Conv2d::padded(1))?;
            posterior_outputs(&mut net, config, w, &h)?;
            return Ok(net.finish());
        }
    };
    finish(&mut net, &x)?;
    Ok(net.finish())
}

/// Declares `x` as the segment's state with the statistics the next GroupNorm will see.
fn finish(net: &mut SdNet, x: &Value) -> Result<(), WeightsError> {
    net.output_group_stats(x, "next_mean", "next_var");
    let dims = ["batch", "channels", "height", "width"].map(Dim::from);
    net.output("next_x", x, &dims);
    Ok(())
}
