//! The UNet of Stable Diffusion 1.5 (diffusers' `UNet2DConditionModel`), with the ControlNet
//! residual inputs added where diffusers adds them.
//!
//! Two graphs are built over the same weights:
//!
//! - `unet`: `sample` `[B, 4, h, w]`, `timestep` `[B]` (f32, may be fractional),
//!   `encoder_hidden_states` `[B, 77, 768]` → `out_sample` `[B, 4, h, w]`;
//! - `unet_controlnet`: the same plus `down_block_{0..11}_additional_residual` and
//!   `mid_block_additional_residual`, each added unscaled (the pipeline scales them) to the
//!   skip tensor of the same index and to the mid-block output.
//!
//! The graph is built from a [`UnetConfig`] alone: `from_weights` reads levels and their
//! widths, ResNets per level, which levels attend, the text width and the transformers' form
//! from tensor shapes once; heads and GroupNorm groups cannot be seen in shapes and come from a
//! diffusers `config.json` (or the caller), else SD 1.5's.

use ndarray::{ArrayD, ArrayViewD};

use super::ModelError;
use super::sd::{self, SdOptions};
use super::sd_blocks::{SdNet, TransformerConfig, nchw};
use crate::engine::binding::{BoundCall, Resident, Traffic};
use crate::engine::{CompiledModel, Engine, EngineError, SharedSession};
use crate::onnx::{Conv2d, Dim, Graph, Value};
use crate::weights::sd::{DiffusersConfig, NetWeights};
use crate::weights::{SourceTensor, TensorMap, WeightType, Weights, WeightsError};

/// A UNet's (or a ControlNet encoder half's) configuration, the fields diffusers' `config.json`
/// declares: [`UnetConfig::sd15`] (also its `Default`) is Stable Diffusion 1.5's,
/// [`UnetConfig::from_weights`] reads a checkpoint's once, and the graph is built from it alone.
#[derive(Clone, Debug, PartialEq)]
pub struct UnetConfig {
    pub in_channels: usize,
    /// Output channels (0 for a ControlNet, which has no decoder).
    pub out_channels: usize,
    /// Width of each level, top first (SD 1.5: 320, 640, 1280, 1280).
    pub block_channels: Vec<usize>,
    /// ResNets per down level (SD 1.5: 2; up levels have one more).
    pub layers_per_block: usize,
    /// Whether each down level has cross-attention transformers (SD 1.5: all but the last).
    pub attention: Vec<bool>,
    /// Whether each up level has them, deepest first (SD 1.5: all but the first; empty for a
    /// ControlNet).
    pub up_attention: Vec<bool>,
    /// Width of the text embedding (SD 1.5: 768).
    pub context_dim: usize,
    /// GroupNorm groups (SD 1.5: 32; diffusers' `norm_num_groups`).
    pub norm_groups: usize,
    /// GroupNorm epsilon of the ResNets and the output norm (diffusers' `norm_eps`).
    pub norm_eps: f32,
    /// The spatial transformers.
    pub transformer: TransformerConfig,
}

impl Default for UnetConfig {
    fn default() -> UnetConfig {
        UnetConfig::sd15()
    }
}

impl UnetConfig {
    /// Stable Diffusion 1.5's UNet.
    pub fn sd15() -> UnetConfig {
        UnetConfig {
            in_channels: 4,
            out_channels: 4,
            block_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            attention: vec![true, true, true, false],
            up_attention: vec![false, true, true, true],
            context_dim: 768,
            norm_groups: 32,
            norm_eps: 1e-5,
            transformer: TransformerConfig::SD15,
        }
    }

    /// Reads the encoder half (shared with the ControlNet) and, if present, the decoder from
    /// the canonical tensors' shapes; heads and GroupNorm groups, which shapes cannot tell,
    /// come from `declared` (else SD 1.5's). Checks that the widths split into those.
    pub fn from_weights(
        w: &TensorMap<SourceTensor>,
        declared: &DiffusersConfig,
    ) -> Result<UnetConfig, WeightsError> {
        let shape = |name: &str| -> Result<Vec<usize>, WeightsError> {
            Ok(w.root().get(name)?.shape.clone())
        };
        let conv_in = shape("conv_in.weight")?;
        if conv_in.len() != 4 {
            return Err(bad_shape(w, "conv_in.weight", "expected a 2-D convolution"));
        }
        let levels = w.scope("down_blocks").count_indexed();
        if levels == 0 {
            return Err(WeightsError::Missing {
                name: "down_blocks.0".into(),
            });
        }
        let layers = w.scope("down_blocks.0.resnets").count_indexed();
        let mut block_channels = Vec::new();
        let mut attention = Vec::new();
        for i in 0..levels {
            let level = w.scope("down_blocks").scope(i);
            block_channels.push(shape(&level.path("resnets.0.conv1.weight"))?[0]);
            attention.push(level.scope("attentions").exists());
            if level.scope("resnets").count_indexed() != layers {
                return Err(WeightsError::BadShape {
                    name: level.path("resnets"),
                    shape: vec![],
                    reason: "every level needs the same number of ResNets".into(),
                });
            }
        }
        let context_dim = w
            .iter()
            .find(|(k, _)| k.ends_with("attn2.to_k.weight"))
            .map_or(0, |(_, t)| t.shape.get(1).copied().unwrap_or(0));
        let out_channels = if w.contains("conv_out.weight") {
            shape("conv_out.weight")?[0]
        } else {
            0
        };
        let mut up_attention = Vec::new();
        if out_channels > 0 {
            let ups = w.scope("up_blocks").count_indexed();
            if ups != levels {
                return Err(WeightsError::BadShape {
                    name: "up_blocks".into(),
                    shape: vec![],
                    reason: format!("{ups} up levels for {levels} down levels"),
                });
            }
            up_attention = (0..ups)
                .map(|i| w.scope("up_blocks").scope(i).scope("attentions").exists())
                .collect();
        }
        // Every transformer of SD-family UNets is alike; the mid block always has one.
        let mid = w.scope("mid_block.attentions.0");
        let transformer = TransformerConfig {
            heads: declared
                .attention_heads
                .unwrap_or(TransformerConfig::SD15.heads),
            layers: mid.scope("transformer_blocks").count_indexed(),
            linear_projection: mid.get("proj_in.weight")?.shape.len() == 2,
            attention_bias: mid.contains("transformer_blocks.0.attn1.to_q.bias"),
        };
        let config = UnetConfig {
            in_channels: conv_in[1],
            out_channels,
            block_channels,
            layers_per_block: layers,
            attention,
            up_attention,
            context_dim,
            norm_groups: declared
                .norm_groups
                .unwrap_or(UnetConfig::sd15().norm_groups),
            norm_eps: UnetConfig::sd15().norm_eps,
            transformer,
        };
        config.check_splits(w)?;
        Ok(config)
    }

    /// Every level's width must split into the GroupNorm groups and, where it attends, into
    /// the heads.
    fn check_splits(&self, w: &TensorMap<SourceTensor>) -> Result<(), WeightsError> {
        let (groups, heads) = (self.norm_groups, self.transformer.heads);
        for (i, &c) in self.block_channels.iter().enumerate() {
            if groups == 0 || !c.is_multiple_of(groups) {
                let name = format!("down_blocks.{i}.resnets.0.norm2.weight");
                let reason = format!("{c} channels do not split into {groups} GroupNorm groups");
                return Err(bad_shape(w, &name, &reason));
            }
            let attends = self.attention[i] || i + 1 == self.block_channels.len();
            if attends && (heads == 0 || !c.is_multiple_of(heads)) {
                let name = if self.attention[i] {
                    format!("down_blocks.{i}.attentions.0.transformer_blocks.0.attn1.to_q.weight")
                } else {
                    "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight".to_owned()
                };
                return Err(bad_shape(
                    w,
                    &name,
                    &format!("{c} channels do not split into {heads} heads"),
                ));
            }
        }
        Ok(())
    }

    /// Channels and the height/width divisor of each skip tensor, in the order diffusers
    /// collects them (and numbers the ControlNet residuals): conv_in, then each ResNet (or
    /// transformer) output and each downsampler output.
    pub fn residuals(&self) -> Vec<(usize, usize)> {
        let mut out = vec![(self.block_channels[0], 1)];
        let levels = self.block_channels.len();
        for (i, &c) in self.block_channels.iter().enumerate() {
            out.extend(std::iter::repeat_n((c, 1 << i), self.layers_per_block));
            if i + 1 < levels {
                out.push((c, 1 << (i + 1)));
            }
        }
        out
    }

    /// Channels and divisor of the mid-block output.
    pub fn mid(&self) -> (usize, usize) {
        let levels = self.block_channels.len();
        (self.block_channels[levels - 1], 1 << (levels - 1))
    }
}

/// A [`WeightsError::BadShape`] for tensor `name` of `w`.
pub(crate) fn bad_shape(w: &TensorMap<SourceTensor>, name: &str, reason: &str) -> WeightsError {
    WeightsError::BadShape {
        name: name.to_owned(),
        shape: w
            .get(name)
            .map(|t| t.shape.iter().map(|&d| d as i64).collect())
            .unwrap_or_default(),
        reason: reason.to_owned(),
    }
}

/// The graph input/output name of residual `i` (`mid` for the mid block).
pub fn residual_name(i: Option<usize>) -> String {
    match i {
        Some(i) => format!("down_block_{i}_additional_residual"),
        None => "mid_block_additional_residual".to_owned(),
    }
}

/// The symbolic dims of a tensor at `divisor` of the latent size.
pub fn latent_dims(channels: usize, divisor: usize) -> Vec<Dim> {
    if divisor == 1 {
        nchw(channels, "height", "width")
    } else {
        nchw(
            channels,
            &format!("height_div{divisor}"),
            &format!("width_div{divisor}"),
        )
    }
}

/// The encoder half shared by the UNet and the ControlNet: time embedding, `conv_in`, the down
/// levels and the mid block. `after_conv_in` may add to the conv_in output (the ControlNet's
/// hint). Returns the skip tensors and the mid-block output.
pub(crate) fn encoder_half(
    net: &mut SdNet,
    config: &UnetConfig,
    w: &Weights,
    sample: &Value,
    temb: &Value,
    context: &Value,
    after_conv_in: Option<&Value>,
) -> Result<(Vec<Value>, Value), WeightsError> {
    let mut h = net.conv(sample, &w.scope("conv_in"), Conv2d::padded(1))?;
    if let Some(extra) = after_conv_in {
        h = add_over_batch(net, &h, extra);
    }
    let mut skips = vec![h.clone()];
    let levels = config.block_channels.len();
    let (eps, transformer) = (config.norm_eps, &config.transformer);
    let mut channels = config.block_channels[0];
    for (i, &out) in config.block_channels.iter().enumerate() {
        let level = w.scope("down_blocks").scope(i);
        for j in 0..config.layers_per_block {
            let resnet = level.scope("resnets").scope(j);
            h = net.resnet(&h, Some(temb), &resnet, eps, [channels, out])?;
            channels = out;
            if config.attention[i] {
                let attention = level.scope("attentions").scope(j);
                h = net.spatial_transformer(&h, context, &attention, transformer)?;
            }
            skips.push(h.clone());
        }
        if i + 1 < levels {
            h = net.downsample(&h, &level.scope("downsamplers").scope(0), [1, 1, 1, 1])?;
            skips.push(h.clone());
        }
    }
    let mid = w.scope("mid_block");
    let same = [channels; 2];
    h = net.resnet(&h, Some(temb), &mid.scope("resnets").scope(0), eps, same)?;
    h = net.spatial_transformer(&h, context, &mid.scope("attentions").scope(0), transformer)?;
    h = net.resnet(&h, Some(temb), &mid.scope("resnets").scope(1), eps, same)?;
    Ok((skips, h))
}

/// `h` `[B, C, H, W]` plus `extra` `[b, C, H, W]` where b divides B: sample n gets
/// `extra[n mod b]` (viewed as `[B/b, b, C, H, W]`, which broadcasts `extra` over the first
/// axis; the reshapes move no data).
fn add_over_batch(net: &mut SdNet, h: &Value, extra: &Value) -> Value {
    let whole = net.g.shape(h);
    let inner = net.g.shape(extra);
    let any = net.g.ints(&[-1]);
    let grouped = net.g.concat(&[&any, &inner], 0);
    let h = net.g.reshape_to(h, &grouped);
    let sum = net.g.add(&h, extra);
    net.g.reshape_to(&sum, &whole)
}

/// The graph inputs every UNet-like graph has: `sample`, `timestep`, `encoder_hidden_states`.
/// Returns them (in the compute type, the timestep as f32) and the time embedding.
pub(crate) fn common_inputs(
    net: &mut SdNet,
    config: &UnetConfig,
    w: &Weights,
) -> Result<(Value, Value, Value), WeightsError> {
    let sample = net.input("sample", &latent_dims(config.in_channels, 1));
    let timestep = net.g.input(
        "timestep",
        crate::onnx::ElemType::F32,
        &[Dim::from("batch")],
    );
    let context = net.input(
        "encoder_hidden_states",
        &[
            Dim::from("batch"),
            Dim::from("sequence"),
            Dim::from(config.context_dim as i64),
        ],
    );
    let temb = net.time_embedding_silu(&timestep, &w.scope("time_embedding"))?;
    Ok((sample, temb, context))
}

/// Builds the UNet graph; with `residual_inputs` the 13 ControlNet residuals are inputs.
pub fn build_graph(
    config: &UnetConfig,
    w: &Weights,
    weight_type: WeightType,
    residual_inputs: bool,
) -> Result<Graph, WeightsError> {
    let name = if residual_inputs {
        "unet_controlnet"
    } else {
        "unet"
    };
    let mut net = SdNet::new(name, weight_type, config.norm_groups);
    let (sample, temb, context) = common_inputs(&mut net, config, w)?;
    let (mut skips, mut h) = encoder_half(&mut net, config, w, &sample, &temb, &context, None)?;
    if residual_inputs {
        for (i, (channels, divisor)) in config.residuals().into_iter().enumerate() {
            let r = net.input(&residual_name(Some(i)), &latent_dims(channels, divisor));
            skips[i] = net.g.add(&skips[i], &r);
        }
        let (channels, divisor) = config.mid();
        let r = net.input(&residual_name(None), &latent_dims(channels, divisor));
        h = net.g.add(&h, &r);
    }
    let levels = config.block_channels.len();
    let skip_channels = config.residuals();
    let (mut channels, _) = config.mid();
    for i in 0..levels {
        let level = w.scope("up_blocks").scope(i);
        let out = config.block_channels[levels - 1 - i];
        for j in 0..=config.layers_per_block {
            let skip = skips.pop().ok_or_else(|| WeightsError::Missing {
                name: level.path("resnets"),
            })?;
            let (skip_width, _) = skip_channels[skips.len()];
            h = net.g.concat(&[&h, &skip], 1);
            let resnet = level.scope("resnets").scope(j);
            let widths = [channels + skip_width, out];
            h = net.resnet(&h, Some(&temb), &resnet, config.norm_eps, widths)?;
            channels = out;
            if config.up_attention[i] {
                let attention = level.scope("attentions").scope(j);
                h = net.spatial_transformer(&h, &context, &attention, &config.transformer)?;
            }
        }
        if i + 1 < levels {
            let like = skips.last().cloned().ok_or_else(|| WeightsError::Missing {
                name: level.path("upsamplers"),
            })?;
            h = net.upsample_to(&h, &level.scope("upsamplers").scope(0), &like)?;
        }
    }
    let h = net.group_norm(&h, &w.scope("conv_norm_out"), config.norm_eps)?;
    let h = net.silu(&h);
    let out = net.conv(&h, &w.scope("conv_out"), Conv2d::padded(1))?;
    net.output("out_sample", &out, &latent_dims(config.out_channels, 1));
    Ok(net.finish())
}

/// A compiled UNet: its configuration, weights, and both graphs.
#[derive(Clone, Debug)]
pub struct CompiledUnet {
    pub config: UnetConfig,
    pub weights: Weights,
    /// Without residual inputs.
    pub plain: CompiledModel,
    /// With the 13 ControlNet residual inputs.
    pub controlled: CompiledModel,
}

impl CompiledUnet {
    /// Places the weights of `net` (from `weights::sd::unet`) and builds both graphs.
    pub fn compile(
        net: &NetWeights,
        cache_dir: &std::path::Path,
        options: &SdOptions<'_>,
    ) -> Result<CompiledUnet, ModelError> {
        let config = UnetConfig::from_weights(&net.tensors, &options.declared(net))?;
        if config.out_channels == 0 {
            return Err(WeightsError::Missing {
                name: "conv_out.weight".into(),
            }
            .into());
        }
        let weights = sd::prepare(net, "unet", cache_dir, options)?;
        CompiledUnet::build(config, weights, options.precision.weight_type(), net)
    }

    /// Both graphs over already placed `weights`.
    pub fn build(
        config: UnetConfig,
        weights: Weights,
        weight_type: WeightType,
        net: &NetWeights,
    ) -> Result<CompiledUnet, ModelError> {
        let file = net
            .source
            .path()
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let plain = build_graph(&config, &weights, weight_type, false)?;
        let controlled = build_graph(&config, &weights, weight_type, true)?;
        Ok(CompiledUnet {
            plain: sd::compiled(format!("UNet {file}"), plain, &weights),
            controlled: sd::compiled(format!("UNet+ControlNet {file}"), controlled, &weights),
            config,
            weights,
        })
    }
}

/// A UNet with warm sessions, each graph's created on first use (or by [`Unet::warm`]): a
/// pipeline with a ControlNet only ever needs the residual graph, and every session holds its own
/// prepacked copy of the weights.
pub struct Unet {
    pub compiled: CompiledUnet,
    plain: Option<SharedSession>,
    controlled: Option<SharedSession>,
}

impl Unet {
    pub fn new(compiled: CompiledUnet) -> Unet {
        Unet {
            compiled,
            plain: None,
            controlled: None,
        }
    }

    /// Creates the session of the graph with (`residuals`) or without residual inputs now.
    pub fn warm(&mut self, engine: &Engine, residuals: bool) -> Result<(), EngineError> {
        let (slot, model) = if residuals {
            (&mut self.controlled, &self.compiled.controlled)
        } else {
            (&mut self.plain, &self.compiled.plain)
        };
        if slot.is_none() {
            *slot = Some(engine.session(model)?);
        }
        Ok(())
    }

    /// The session of the graph with residual inputs and its name, created if needed.
    pub fn controlled_session(
        &mut self,
        engine: &Engine,
    ) -> Result<(SharedSession, &str), EngineError> {
        self.warm(engine, true)?;
        let session = self.controlled.clone().expect("warmed above");
        Ok((session, &self.compiled.controlled.name))
    }

    /// One evaluation with the ControlNet's residuals, every input resident (the sample and
    /// timestep the ControlNet saw, the stage's context, the 13 scaled residuals in order):
    /// the predicted noise `[B, 4, h, w]` as a host array, and what crossed for it.
    pub fn forward_resident(
        &mut self,
        engine: &Engine,
        sample: &Resident,
        timestep: &Resident,
        context: &Resident,
        residuals: &[Resident],
    ) -> Result<(ArrayD<f32>, Traffic), EngineError> {
        let count = self.compiled.config.residuals().len() + 1;
        let (session, name) = self.controlled_session(engine)?;
        if residuals.len() != count {
            return Err(EngineError::ort(
                name,
                format!("{} residuals given, {count} needed", residuals.len()),
            ));
        }
        let mut call = BoundCall::new(&session, name)?;
        call.resident_input("sample", sample)?;
        call.resident_input("timestep", timestep)?;
        call.resident_input("encoder_hidden_states", context)?;
        let names = (0..count - 1).map(Some).chain([None]).map(residual_name);
        for (name, r) in names.zip(residuals) {
            call.resident_input(&name, r)?;
        }
        call.host_output("out_sample")?;
        let mut out = call.run()?;
        Ok((out.host(0), out.traffic))
    }

    /// One evaluation: the predicted noise `[B, 4, h, w]`. `residuals`, when given, are the 12
    /// down-block residuals and the mid-block residual, in that order, already scaled.
    pub fn forward(
        &mut self,
        engine: &Engine,
        sample: ArrayViewD<'_, f32>,
        timestep: ArrayViewD<'_, f32>,
        context: ArrayViewD<'_, f32>,
        residuals: Option<&[ArrayD<f32>]>,
    ) -> Result<ArrayD<f32>, EngineError> {
        self.warm(engine, residuals.is_some())?;
        let mut inputs = vec![
            ("sample", sample),
            ("timestep", timestep),
            ("encoder_hidden_states", context),
        ];
        let Some(residuals) = residuals else {
            let session = self.plain.as_ref().expect("warmed above");
            return Ok(
                sd::run(session, &self.compiled.plain.name, &inputs, &["out_sample"])?.remove(0),
            );
        };
        let count = self.compiled.config.residuals().len();
        let names: Vec<String> = (0..count)
            .map(Some)
            .chain([None])
            .map(residual_name)
            .collect();
        if residuals.len() != names.len() {
            return Err(EngineError::ort(
                &self.compiled.controlled.name,
                format!(
                    "{} residuals given, {} needed",
                    residuals.len(),
                    names.len()
                ),
            ));
        }
        for (name, r) in names.iter().zip(residuals) {
            inputs.push((name.as_str(), r.view()));
        }
        let session = self.controlled.as_ref().expect("warmed above");
        Ok(sd::run(
            session,
            &self.compiled.controlled.name,
            &inputs,
            &["out_sample"],
        )?
        .remove(0))
    }
}
