//! The layers Stable Diffusion's UNet, ControlNet and VAE are built from, as graph-building
//! helpers over canonical (diffusers-named) weights.
//!
//! - [`SdNet`] is the network family's [`NetBuilder`] (the graph, its compute type and the
//!   f32 ↔ compute casts, `nets/builder.rs`) plus the GroupNorm settings; every layer takes the
//!   weights of its module as a scope and its widths from the network's config, never from
//!   probing the weights.
//! - Every GroupNorm of the SD networks (UNet, ControlNet, VAE and the VAE's segments) is built
//!   by [`SdNet::group_norm`]: Reshape → InstanceNorm → Reshape → affine. ONNX Runtime has no
//!   kernel for GroupNormalization-21 and expands its function body into primitive ops, which
//!   was measured about 2× slower than this form (`docs/models.md`, "Op forms"). The graph
//!   builder's own `Graph::group_norm` (`onnx/ops.rs`) emits the same form without the options
//!   below; only its unit test uses it. Statistics are always computed in f32 (as PyTorch's
//!   autocast does), also in fp16 graphs. [`NormStats`] selects where they come from: the input
//!   itself (normal), the input with the statistics also returned as graph outputs, or graph
//!   inputs (frozen, for the tiled VAE, folded with the affine into one `x · s + t`).
//! - Attention is one `com.microsoft.MultiHeadAttention` node on `[B, N, C]` tokens (an ONNX
//!   Runtime contrib op with a CPU kernel; ONNX Runtime does not fuse the MatMul–Softmax form by
//!   itself); Linear weights are PyTorch's `[out, in]` and are transposed by a node on the
//!   initializer, which ONNX Runtime folds once at session creation.

use std::ops::{Deref, DerefMut};

use super::builder::NetBuilder;
pub use super::builder::W;
use crate::onnx::{Conv2d, Dim, ElemType, Value};
use crate::weights::{WeightType, WeightsError};

/// Where every GroupNorm of a graph takes its per-(sample, group) mean and variance from.
///
/// Tiled VAE (the multidiffusion-upscaler-for-automatic1111 extension Clarity runs, its
/// `tilevae.py`; `docs/pipeline.md`, "VAE passes") runs a graph with `Export` once on a
/// downscaled whole image and then the `Frozen` graph on every tile with those statistics, so
/// tiles are normalised alike. GroupNorm *k* (in graph order) has `groupnorm_{k}_mean` and
/// `groupnorm_{k}_var`, f32 `[batch, groups]` (biased variance, as PyTorch's GroupNorm).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NormStats {
    /// From each GroupNorm's own input.
    #[default]
    Live,
    /// From the input, and returned as graph outputs.
    Export,
    /// From graph inputs.
    Frozen,
}

/// How the spatial transformers of a UNet (and ControlNet) are built: part of
/// [`UnetConfig`](super::unet::UnetConfig).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransformerConfig {
    /// Attention heads (SD 1.5: 8 at every level; diffusers' `attention_head_dim` config field
    /// holds this number for SD 1.5).
    pub heads: usize,
    /// Transformer blocks per spatial transformer (diffusers' `transformer_layers_per_block`).
    pub layers: usize,
    /// `proj_in`/`proj_out` are Linear layers instead of 1×1 convolutions (diffusers'
    /// `use_linear_projection`; SD 2.x style).
    pub linear_projection: bool,
    /// The query, key and value projections have biases (diffusers' `attention_bias`).
    pub attention_bias: bool,
}

impl TransformerConfig {
    /// Stable Diffusion 1.5's.
    pub const SD15: TransformerConfig = TransformerConfig {
        heads: 8,
        layers: 1,
        linear_projection: false,
        attention_bias: false,
    };
}

/// A graph under construction ([`NetBuilder`]) plus what the SD layers need to know.
pub struct SdNet {
    b: NetBuilder,
    /// GroupNorm groups everywhere in the network (SD 1.5: 32).
    pub norm_groups: usize,
    pub norm_stats: NormStats,
    /// GroupNorms built so far (numbers their statistics).
    group_norms: usize,
}

impl Deref for SdNet {
    type Target = NetBuilder;
    fn deref(&self) -> &NetBuilder {
        &self.b
    }
}

impl DerefMut for SdNet {
    fn deref_mut(&mut self) -> &mut NetBuilder {
        &mut self.b
    }
}

/// GroupNorm epsilon in front of a spatial transformer (fixed in diffusers'
/// `Transformer2DModel`, not a config field).
pub const TRANSFORMER_NORM_EPS: f32 = 1e-6;
/// LayerNorm epsilon inside transformer blocks (fixed in diffusers' `BasicTransformerBlock`).
pub const LAYER_NORM_EPS: f32 = 1e-5;

impl SdNet {
    pub fn new(name: &str, weight_type: WeightType, norm_groups: usize) -> SdNet {
        SdNet {
            b: NetBuilder::new(name, weight_type),
            norm_groups,
            norm_stats: NormStats::Live,
            group_norms: 0,
        }
    }

    /// The finished graph.
    pub fn finish(self) -> crate::onnx::Graph {
        self.b.finish()
    }

    /// `x · Wᵀ + b` over the last axis (PyTorch `nn.Linear`) with the module's weight and bias.
    pub fn linear(&mut self, x: &Value, w: &W) -> Result<Value, WeightsError> {
        let weight = self.param(w, "weight")?;
        let bias = self.param(w, "bias")?;
        Ok(self.linear_with(x, &weight, Some(&bias)))
    }

    /// `x · Wᵀ` (a Linear layer without bias: SD 1.5's attention projections).
    pub fn linear_no_bias(&mut self, x: &Value, w: &W) -> Result<Value, WeightsError> {
        let weight = self.param(w, "weight")?;
        Ok(self.linear_with(x, &weight, None))
    }

    /// A Linear layer with a given weight value (e.g. a slice of the stored one) and bias.
    fn linear_with(&mut self, x: &Value, weight: &Value, bias: Option<&Value>) -> Value {
        let wt = self.g.transpose(weight, &[1, 0]);
        let y = self.g.matmul(x, &wt);
        match bias {
            Some(b) => self.g.add(&y, b),
            None => y,
        }
    }

    /// GroupNorm over `[B, C, H, W]` with the module's per-channel weight and bias; see the
    /// module docs for the form and the precision.
    pub fn group_norm(&mut self, x: &Value, w: &W, eps: f32) -> Result<Value, WeightsError> {
        let gamma_t = w.get("weight")?;
        let channels = gamma_t.dim(0);
        let groups = self.norm_groups;
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(WeightsError::BadShape {
                name: gamma_t.name.clone(),
                shape: gamma_t.dims.clone(),
                reason: format!("{channels} channels do not split into {groups} GroupNorm groups"),
            });
        }
        let k = self.group_norms;
        self.group_norms += 1;
        let stats_dims = [Dim::from("batch"), Dim::from(groups as i64)];
        let (mean_name, var_name) = (format!("groupnorm_{k}_mean"), format!("groupnorm_{k}_var"));
        let x32 = self.to_f32(x);
        if self.norm_stats == NormStats::Frozen {
            let mean = self.g.input(&mean_name, ElemType::F32, &stats_dims);
            let var = self.g.input(&var_name, ElemType::F32, &stats_dims);
            return self.frozen_group_norm(&x32, &mean, &var, w, eps);
        }
        let shape = self.g.shape(x);
        let grouped = self.g.reshape(&x32, &[0, groups as i64, -1]);
        if self.norm_stats == NormStats::Export {
            self.output_grouped_stats(&grouped, &mean_name, &var_name);
        }
        let ones = self.g.floats(&vec![1.0; groups]);
        let zeros = self.g.floats(&vec![0.0; groups]);
        let normed = self.g.instance_norm(&grouped, &ones, &zeros, eps);
        let normed = self.g.reshape_to(&normed, &shape);
        let normed = self.to_compute(&normed);
        let gamma = self.param(w, "weight")?;
        let beta = self.param(w, "bias")?;
        let gamma = self.g.reshape(&gamma, &[channels as i64, 1, 1]);
        let beta = self.g.reshape(&beta, &[channels as i64, 1, 1]);
        let scaled = self.g.mul(&normed, &gamma);
        Ok(self.g.add(&scaled, &beta))
    }

    /// Declares the per-group mean and biased variance of `x` (`[B, C, H, W]`, the input of a
    /// GroupNorm that is not in this graph) as f32 `[B, G]` outputs `mean_name`, `var_name`.
    pub fn output_group_stats(&mut self, x: &Value, mean_name: &str, var_name: &str) {
        let x32 = self.to_f32(x);
        let groups = self.norm_groups as i64;
        let grouped = self.g.reshape(&x32, &[0, groups, -1]);
        self.output_grouped_stats(&grouped, mean_name, var_name);
    }

    /// The statistics of an f32 `[B, G, N]` tensor as `[B, G]` outputs.
    fn output_grouped_stats(&mut self, grouped: &Value, mean_name: &str, var_name: &str) {
        let groups = self.norm_groups as i64;
        let stats_dims = [Dim::from("batch"), Dim::from(groups)];
        let axes = self.g.ints(&[2]);
        let mean = self.g.node("ReduceMean", &[grouped, &axes], vec![]);
        let centred = self.g.sub(grouped, &mean);
        let squared = self.g.mul(&centred, &centred);
        let var = self.g.node("ReduceMean", &[&squared, &axes], vec![]);
        let flat = self.g.ints(&[0, groups]);
        let mean = self.g.reshape_to(&mean, &flat);
        let var = self.g.reshape_to(&var, &flat);
        self.g
            .output(mean_name, &mean, ElemType::F32, Some(&stats_dims));
        self.g
            .output(var_name, &var, ElemType::F32, Some(&stats_dims));
    }

    /// GroupNorm of `x32` (f32 `[B, C, H, W]`) with given `[B, G]` statistics, folded with the
    /// affine into one per-(sample, channel) scale and shift, `x · s + t`, computed on the tiny
    /// statistics: a decoder tile then holds two full-size tensors per norm instead of the four
    /// a grouped Sub → Div → Mul → Add holds, in the 4-D layout the convolutions use.
    fn frozen_group_norm(
        &mut self,
        x32: &Value,
        mean: &Value,
        var: &Value,
        w: &W,
        eps: f32,
    ) -> Result<Value, WeightsError> {
        let channels = w.get("weight")?.dim(0);
        let groups = self.norm_groups;
        let per_channel = |net: &mut SdNet, stat: &Value| {
            // [B, G] → [B, G, C/G] → [B, C, 1, 1]: each group's value for each of its channels.
            let axes = net.g.ints(&[2]);
            let stat = net.g.node("Unsqueeze", &[stat, &axes], vec![]);
            let widths = net.g.ints(&[1, 1, (channels / groups) as i64]);
            let stat = net.g.node("Expand", &[&stat, &widths], vec![]);
            net.g.reshape(&stat, &[0, channels as i64, 1, 1])
        };
        let eps = self.g.scalar(eps);
        let var = self.g.add(var, &eps);
        let std = self.g.node("Sqrt", &[&var], vec![]);
        let one = self.g.scalar(1.0);
        let inv_std = self.g.div(&one, &std);
        let inv_std = per_channel(self, &inv_std);
        let mean = per_channel(self, mean);
        let gamma = self.param_f32(w, "weight")?;
        let beta = self.param_f32(w, "bias")?;
        let gamma = self.g.reshape(&gamma, &[channels as i64, 1, 1]);
        let beta = self.g.reshape(&beta, &[channels as i64, 1, 1]);
        // s = γ / σ, t = β − μ · s
        let scale = self.g.mul(&inv_std, &gamma);
        let mean_scaled = self.g.mul(&mean, &scale);
        let shift = self.g.sub(&beta, &mean_scaled);
        let scaled = self.g.mul(x32, &scale);
        let y = self.g.add(&scaled, &shift);
        Ok(self.to_compute(&y))
    }

    /// LayerNorm over the last axis.
    pub fn layer_norm(&mut self, x: &Value, w: &W, eps: f32) -> Result<Value, WeightsError> {
        let gamma = self.param(w, "weight")?;
        let beta = self.param(w, "bias")?;
        Ok(self.g.node(
            "LayerNormalization",
            &[x, &gamma, &beta],
            vec![
                crate::onnx::attr::int("axis", -1),
                crate::onnx::attr::float("epsilon", eps),
            ],
        ))
    }

    pub fn silu(&mut self, x: &Value) -> Value {
        self.g.silu(x)
    }

    /// ResNet block: GroupNorm → SiLU → conv, plus the projected time embedding (given
    /// already through SiLU), GroupNorm → SiLU → conv, plus the input. `channels` are its input
    /// and output widths: a block that changes the width projects its input with the 1×1
    /// `conv_shortcut` (diffusers' `use_in_shortcut`).
    pub fn resnet(
        &mut self,
        x: &Value,
        temb_silu: Option<&Value>,
        w: &W,
        eps: f32,
        channels: [usize; 2],
    ) -> Result<Value, WeightsError> {
        let h = self.group_norm(x, &w.scope("norm1"), eps)?;
        let h = self.silu(&h);
        let mut h = self.conv(&h, &w.scope("conv1"), Conv2d::padded(1))?;
        if let Some(t) = temb_silu {
            let t = self.linear(t, &w.scope("time_emb_proj"))?;
            let axes = self.g.ints(&[2, 3]);
            let t = self.g.node("Unsqueeze", &[&t, &axes], vec![]);
            h = self.g.add(&h, &t);
        }
        let h = self.group_norm(&h, &w.scope("norm2"), eps)?;
        let h = self.silu(&h);
        let h = self.conv(&h, &w.scope("conv2"), Conv2d::padded(1))?;
        let shortcut = if channels[0] != channels[1] {
            self.conv(x, &w.scope("conv_shortcut"), Conv2d::padded(0))?
        } else {
            x.clone()
        };
        Ok(self.g.add(&shortcut, &h))
    }

    /// `[B, C, H, W]` → `[B, H·W, C]`.
    pub fn to_tokens(&mut self, x: &Value) -> Value {
        let flat = self.g.reshape(x, &[0, 0, -1]);
        self.g.transpose(&flat, &[0, 2, 1])
    }

    /// `[B, H·W, C]` → the shape of `like` (`[B, C, H, W]`).
    pub fn to_image(&mut self, tokens: &Value, like: &Value) -> Value {
        let channels_first = self.g.transpose(tokens, &[0, 2, 1]);
        let shape = self.g.shape(like);
        self.g.reshape_to(&channels_first, &shape)
    }

    /// Diffusers' `Transformer2DModel` (LDM's SpatialTransformer): GroupNorm, proj_in (1×1
    /// conv, or Linear for `use_linear_projection` models), the transformer blocks on tokens,
    /// proj_out, plus the input.
    pub fn spatial_transformer(
        &mut self,
        x: &Value,
        context: &Value,
        w: &W,
        config: &TransformerConfig,
    ) -> Result<Value, WeightsError> {
        let h = self.group_norm(x, &w.scope("norm"), TRANSFORMER_NORM_EPS)?;
        let conv_projection = !config.linear_projection;
        let mut tokens = if conv_projection {
            let h = self.conv(&h, &w.scope("proj_in"), Conv2d::padded(0))?;
            self.to_tokens(&h)
        } else {
            let t = self.to_tokens(&h);
            self.linear(&t, &w.scope("proj_in"))?
        };
        let blocks = w.scope("transformer_blocks");
        for i in 0..config.layers {
            tokens = self.transformer_block(&tokens, context, &blocks.scope(i), config)?;
        }
        let h = if conv_projection {
            let h = self.to_image(&tokens, x);
            self.conv(&h, &w.scope("proj_out"), Conv2d::padded(0))?
        } else {
            let t = self.linear(&tokens, &w.scope("proj_out"))?;
            self.to_image(&t, x)
        };
        Ok(self.g.add(&h, x))
    }

    /// Self-attention, cross-attention on the text, GEGLU feed-forward; each pre-LayerNorm
    /// and residual.
    fn transformer_block(
        &mut self,
        x: &Value,
        context: &Value,
        w: &W,
        config: &TransformerConfig,
    ) -> Result<Value, WeightsError> {
        let (heads, bias) = (config.heads, config.attention_bias);
        let n = self.layer_norm(x, &w.scope("norm1"), LAYER_NORM_EPS)?;
        let a = self.attention(&n, None, &w.scope("attn1"), heads, bias)?;
        let x = self.g.add(x, &a);
        let n = self.layer_norm(&x, &w.scope("norm2"), LAYER_NORM_EPS)?;
        let a = self.attention(&n, Some(context), &w.scope("attn2"), heads, bias)?;
        let x = self.g.add(&x, &a);
        let n = self.layer_norm(&x, &w.scope("norm3"), LAYER_NORM_EPS)?;
        let f = self.geglu_feed_forward(&n, &w.scope("ff").scope("net"))?;
        Ok(self.g.add(&x, &f))
    }

    /// Multi-head attention of `x` on itself or on `context`, with the output projection;
    /// `qkv_bias`: whether the query, key and value projections have biases.
    pub fn attention(
        &mut self,
        x: &Value,
        context: Option<&Value>,
        w: &W,
        heads: usize,
        qkv_bias: bool,
    ) -> Result<Value, WeightsError> {
        let channels = w.get("to_q.weight")?.dim(0);
        if heads == 0 || !channels.is_multiple_of(heads) {
            let t = w.get("to_q.weight")?;
            return Err(WeightsError::BadShape {
                name: t.name.clone(),
                shape: t.dims.clone(),
                reason: format!("{channels} channels do not split into {heads} heads"),
            });
        }
        let source = context.unwrap_or(x);
        let project = |net: &mut SdNet, x: &Value, name: &str| {
            if qkv_bias {
                net.linear(x, &w.scope(name))
            } else {
                net.linear_no_bias(x, &w.scope(name))
            }
        };
        let q = project(self, x, "to_q")?;
        let k = project(self, source, "to_k")?;
        let v = project(self, source, "to_v")?;
        let o = self.g.multi_head_attention(&q, &k, &v, heads);
        self.linear(&o, &w.scope("to_out").scope(0))
    }

    /// GEGLU: the first projection yields a value half and a gate half; value · GELU(gate),
    /// then the second projection. The stored weight is split by (folded) slices into two
    /// Linear layers, so no activation is ever copied by a Split.
    fn geglu_feed_forward(&mut self, x: &Value, w: &W) -> Result<Value, WeightsError> {
        let proj = w.scope(0).scope("proj");
        let inner = (w.get("0.proj.weight")?.dim(0) / 2) as i64;
        let weight = self.param(&proj, "weight")?;
        let bias = self.param(&proj, "bias")?;
        let half = |net: &mut SdNet, v: &Value, k: i64| {
            net.g.slice(v, &[k * inner], &[(k + 1) * inner], &[0], &[1])
        };
        let (w_value, w_gate) = (half(self, &weight, 0), half(self, &weight, 1));
        let (b_value, b_gate) = (half(self, &bias, 0), half(self, &bias, 1));
        let value = self.linear_with(x, &w_value, Some(&b_value));
        let gate = self.linear_with(x, &w_gate, Some(&b_gate));
        let gate = self.g.node(
            "Gelu",
            &[&gate],
            vec![crate::onnx::attr::string("approximate", "none")],
        );
        let h = self.g.mul(&value, &gate);
        self.linear(&h, &w.scope(2))
    }

    /// Stride-2 3×3 convolution, padding `pads` (UNet: 1 all round; VAE: 0/1 asymmetric).
    pub fn downsample(&mut self, x: &Value, w: &W, pads: [i64; 4]) -> Result<Value, WeightsError> {
        let attrs = Conv2d {
            pads,
            ..Conv2d::strided(0, 2)
        };
        self.conv(x, &w.scope("conv"), attrs)
    }

    /// Nearest ×2, then a 3×3 convolution.
    pub fn upsample(&mut self, x: &Value, w: &W) -> Result<Value, WeightsError> {
        let up = self.g.resize_nearest(x, 2.0);
        self.conv(&up, &w.scope("conv"), Conv2d::padded(1))
    }

    /// Nearest resize to the height and width of `like` (diffusers' `upsample_size`: ×2 when
    /// the latent's sides are multiples of 8, else onto the skip tensor's odd size), then a
    /// 3×3 convolution. The pipeline's MultiDiffusion tiles may have any size.
    pub fn upsample_to(&mut self, x: &Value, w: &W, like: &Value) -> Result<Value, WeightsError> {
        let x_shape = self.g.shape(x);
        let like_shape = self.g.shape(like);
        let batch_channels = self.g.slice(&x_shape, &[0], &[2], &[0], &[1]);
        let height_width = self.g.slice(&like_shape, &[2], &[4], &[0], &[1]);
        let sizes = self.g.concat(&[&batch_channels, &height_width], 0);
        let up = self.g.node(
            "Resize",
            &[x, &Value::absent(), &Value::absent(), &sizes],
            vec![
                crate::onnx::attr::string("mode", "nearest"),
                crate::onnx::attr::string("coordinate_transformation_mode", "asymmetric"),
                crate::onnx::attr::string("nearest_mode", "floor"),
            ],
        );
        self.conv(&up, &w.scope("conv"), Conv2d::padded(1))
    }

    /// The sinusoidal timestep embedding (cos half first, as SD 1.5's `flip_sin_to_cos`, no
    /// frequency shift), computed in f32 from the f32 `timestep` input `[B]` (non-integer
    /// steps allowed), then `linear_1` → SiLU → `linear_2`. Returns the embedding through a
    /// final SiLU, which is all the ResNets use.
    pub fn time_embedding_silu(&mut self, timestep: &Value, w: &W) -> Result<Value, WeightsError> {
        let channels = w.get("linear_1.weight")?.dim(1);
        let half = channels / 2;
        let freqs: Vec<f32> = (0..half)
            .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32)
            .collect();
        let freqs = self.g.constant_f32(&[1, half as i64], &freqs);
        let axes = self.g.ints(&[1]);
        let t = self.g.node("Unsqueeze", &[timestep, &axes], vec![]);
        let args = self.g.mul(&t, &freqs);
        let cos = self.g.node("Cos", &[&args], vec![]);
        let sin = self.g.node("Sin", &[&args], vec![]);
        let emb = self.g.concat(&[&cos, &sin], 1);
        let emb = self.to_compute(&emb);
        let h = self.linear(&emb, &w.scope("linear_1"))?;
        let h = self.silu(&h);
        let h = self.linear(&h, &w.scope("linear_2"))?;
        Ok(self.silu(&h))
    }
}

/// `[batch, channels, name_h, name_w]`.
pub fn nchw(channels: usize, h: &str, w: &str) -> Vec<Dim> {
    vec![
        Dim::from("batch"),
        Dim::from(channels as i64),
        Dim::from(h),
        Dim::from(w),
    ]
}
