//! ControlNet for SD 1.5 (Zhang et al., 2023; diffusers' `ControlNetModel`): a copy of the
//! UNet's encoder half whose input gets the embedded hint image, and whose 12 skip tensors and
//! mid-block output each pass a zero-initialised 1×1 convolution to become the residuals the
//! UNet adds.
//!
//! Three graphs over the same weights:
//!
//! - `controlnet_cond_encoder`: `controlnet_cond` `[B, 3, 8h, 8w]` (the hint, RGB in 0..1) →
//!   `controlnet_cond_embedding` `[B, C₀, h, w]`: convs 16/32/96/256 wide with SiLU, ×8 down.
//!   The pipeline runs it once per tile and stage: the hint does not change between steps.
//! - `controlnet_body`: `sample`, `timestep`, `encoder_hidden_states`,
//!   `controlnet_cond_embedding`, `conditioning_scales` `[13]` →
//!   `down_block_{0..11}_additional_residual`, `mid_block_additional_residual`, residual *i*
//!   multiplied by `conditioning_scales[i]` (in f32, after an fp16 graph's cast). The
//!   embedding's batch may be a divisor of the sample's: sample *n* takes embedding
//!   *n* mod *b*, so the cond and uncond halves of a CFG batch share one embedding.
//! - `controlnet`: both in one (`controlnet_cond` instead of the embedding, no scales), for
//!   tools that expect the usual interface; its residuals are unscaled (conditioning scale 1).
//!
//! The pipeline runs the split graphs through I/O binding (`crate::engine::binding`): the
//! embedding, the text context and the scales stay resident for a stage, and the residuals go
//! from the body straight into the UNet without visiting host memory.

use ndarray::{Array1, ArrayD, ArrayViewD};

use super::ModelError;
use super::sd::{self, SdOptions};
use super::sd_blocks::{SdNet, nchw};
use super::unet::{UnetConfig, common_inputs, encoder_half, latent_dims, residual_name};
use crate::engine::binding::{self, BoundCall, Resident, Traffic};
use crate::engine::{CompiledModel, Engine, EngineError, SharedSession};
use crate::onnx::{Conv2d, Dim, ElemType, Value};
use crate::weights::sd::{DiffusersConfig, NetWeights};
use crate::weights::{SourceTensor, TensorMap, WeightType, Weights, WeightsError};

/// A ControlNet's configuration: its UNet encoder half plus the hint encoder's widths
/// (diffusers' `conditioning_channels` and `conditioning_embedding_out_channels`).
#[derive(Clone, Debug, PartialEq)]
pub struct ControlNetConfig {
    pub unet: UnetConfig,
    /// Input channels of the hint (3).
    pub hint_channels: usize,
    /// Widths of the hint encoder's stages (SD 1.5: 16, 32, 96, 256).
    pub hint_widths: Vec<usize>,
}

impl Default for ControlNetConfig {
    fn default() -> ControlNetConfig {
        ControlNetConfig::sd15()
    }
}

impl ControlNetConfig {
    /// An SD 1.5 ControlNet (e.g. ControlNet 1.1 tile).
    pub fn sd15() -> ControlNetConfig {
        ControlNetConfig {
            unet: UnetConfig {
                out_channels: 0,
                up_attention: Vec::new(),
                ..UnetConfig::sd15()
            },
            hint_channels: 3,
            hint_widths: vec![16, 32, 96, 256],
        }
    }

    /// Reads the configuration from the canonical tensors' shapes once (see
    /// [`UnetConfig::from_weights`] for `declared`), and checks that every residual has its
    /// zero convolution.
    pub fn from_weights(
        w: &TensorMap<SourceTensor>,
        declared: &DiffusersConfig,
    ) -> Result<ControlNetConfig, WeightsError> {
        let unet = UnetConfig::from_weights(w, declared)?;
        let emb = w.scope("controlnet_cond_embedding");
        let conv_in = emb.get("conv_in.weight")?;
        let blocks = emb.scope("blocks").count_indexed();
        if !blocks.is_multiple_of(2) {
            return Err(WeightsError::BadShape {
                name: emb.path("blocks"),
                shape: vec![],
                reason: format!("{blocks} hint-encoder blocks; pairs are expected"),
            });
        }
        let mut hint_widths = vec![conv_in.shape[0]];
        for k in (1..blocks).step_by(2) {
            hint_widths.push(emb.get(&format!("blocks.{k}.weight"))?.shape[0]);
        }
        let expected = unet.residuals().len();
        for i in 0..expected {
            w.root()
                .get(&format!("controlnet_down_blocks.{i}.weight"))?;
        }
        w.root().get("controlnet_mid_block.weight")?;
        Ok(ControlNetConfig {
            hint_channels: conv_in.shape[1],
            hint_widths,
            unet,
        })
    }
}

/// The hint encoder: conv → SiLU, then per further stage a conv and a stride-2 conv (each →
/// SiLU), then the zero-initialised `conv_out` to the UNet's width.
fn cond_embedding(
    net: &mut SdNet,
    config: &ControlNetConfig,
    hint: &Value,
    w: &Weights,
) -> Result<Value, WeightsError> {
    let emb = w.scope("controlnet_cond_embedding");
    let h = net.conv(hint, &emb.scope("conv_in"), Conv2d::padded(1))?;
    let mut h = net.silu(&h);
    let blocks = emb.scope("blocks");
    for k in 0..2 * (config.hint_widths.len() - 1) {
        let attrs = if k % 2 == 1 {
            Conv2d::strided(1, 2)
        } else {
            Conv2d::padded(1)
        };
        h = net.conv(&h, &blocks.scope(k), attrs)?;
        h = net.silu(&h);
    }
    net.conv(&h, &emb.scope("conv_out"), Conv2d::padded(1))
}

/// Which of the three graphs to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlNetGraph {
    /// Hint → embedding.
    CondEncoder,
    /// Latent + embedding → residuals.
    Body,
    /// Latent + hint → residuals.
    Full,
}

impl ControlNetGraph {
    pub fn name(self) -> &'static str {
        match self {
            ControlNetGraph::CondEncoder => "controlnet_cond_encoder",
            ControlNetGraph::Body => "controlnet_body",
            ControlNetGraph::Full => "controlnet",
        }
    }
}

pub fn build_graph(
    config: &ControlNetConfig,
    w: &Weights,
    weight_type: WeightType,
    which: ControlNetGraph,
) -> Result<crate::onnx::Graph, WeightsError> {
    let mut net = SdNet::new(which.name(), weight_type, config.unet.norm_groups);
    let embedding_width = config.unet.block_channels[0];
    if which == ControlNetGraph::CondEncoder {
        let hint = net.input(
            "controlnet_cond",
            &nchw(config.hint_channels, "image_height", "image_width"),
        );
        let emb = cond_embedding(&mut net, config, &hint, w)?;
        net.output(
            "controlnet_cond_embedding",
            &emb,
            &latent_dims(embedding_width, 1),
        );
        return Ok(net.finish());
    }
    let (sample, temb, context) = common_inputs(&mut net, &config.unet, w)?;
    let emb = if which == ControlNetGraph::Full {
        let hint = net.input(
            "controlnet_cond",
            &nchw(config.hint_channels, "image_height", "image_width"),
        );
        cond_embedding(&mut net, config, &hint, w)?
    } else {
        net.input(
            "controlnet_cond_embedding",
            &latent_dims(embedding_width, 1),
        )
    };
    let (skips, mid) = encoder_half(
        &mut net,
        &config.unet,
        w,
        &sample,
        &temb,
        &context,
        Some(&emb),
    )?;
    let count = config.unet.residuals().len() + 1;
    let scales = (which == ControlNetGraph::Body).then(|| {
        net.g
            .input(SCALES, ElemType::F32, &[Dim::from(count as i64)])
    });
    let out = |net: &mut SdNet, i: usize, name: String, r: &Value, dims: Vec<Dim>| {
        match &scales {
            // In f32, as the host multiplied the f32 outputs before.
            Some(scales) => {
                let r = net.to_f32(r);
                let k = net
                    .g
                    .slice(scales, &[i as i64], &[i as i64 + 1], &[0], &[1]);
                let scaled = net.g.mul(&r, &k);
                net.g.output(&name, &scaled, ElemType::F32, Some(&dims));
            }
            None => net.output(&name, r, &dims),
        }
    };
    for (i, (skip, (channels, divisor))) in skips.iter().zip(config.unet.residuals()).enumerate() {
        let zero_conv = w.scope("controlnet_down_blocks").scope(i);
        let r = net.conv(skip, &zero_conv, Conv2d::padded(0))?;
        out(
            &mut net,
            i,
            residual_name(Some(i)),
            &r,
            latent_dims(channels, divisor),
        );
    }
    let (channels, divisor) = config.unet.mid();
    let r = net.conv(&mid, &w.scope("controlnet_mid_block"), Conv2d::padded(0))?;
    out(
        &mut net,
        count - 1,
        residual_name(None),
        &r,
        latent_dims(channels, divisor),
    );
    Ok(net.finish())
}

/// The body graph's input of per-residual scales.
pub const SCALES: &str = "conditioning_scales";

/// A compiled ControlNet: configuration, weights and the three graphs.
#[derive(Clone, Debug)]
pub struct CompiledControlNet {
    pub config: ControlNetConfig,
    pub weights: Weights,
    pub cond_encoder: CompiledModel,
    pub body: CompiledModel,
    pub full: CompiledModel,
}

impl CompiledControlNet {
    pub fn compile(
        net: &NetWeights,
        cache_dir: &std::path::Path,
        options: &SdOptions<'_>,
    ) -> Result<CompiledControlNet, ModelError> {
        let config = ControlNetConfig::from_weights(&net.tensors, &options.declared(net))?;
        let weights = sd::prepare(net, "controlnet", cache_dir, options)?;
        CompiledControlNet::build(config, weights, options.precision.weight_type(), net)
    }

    pub fn build(
        config: ControlNetConfig,
        weights: Weights,
        weight_type: WeightType,
        net: &NetWeights,
    ) -> Result<CompiledControlNet, ModelError> {
        let file = net
            .source
            .path()
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let graph = |which| -> Result<CompiledModel, ModelError> {
            let g = build_graph(&config, &weights, weight_type, which)?;
            Ok(sd::compiled(
                format!("{} {file}", which.name()),
                g,
                &weights,
            ))
        };
        let cond_encoder = graph(ControlNetGraph::CondEncoder)?;
        let body = graph(ControlNetGraph::Body)?;
        let full = graph(ControlNetGraph::Full)?;
        Ok(CompiledControlNet {
            config,
            weights,
            cond_encoder,
            body,
            full,
        })
    }

    /// The 13 output names, down blocks first.
    pub fn output_names(&self) -> Vec<String> {
        (0..self.config.unet.residuals().len())
            .map(Some)
            .chain([None])
            .map(residual_name)
            .collect()
    }
}

/// The body's inputs as residents: `sample` `[B, 4, h, w]`, `timestep` `[B]`, `context`
/// `[B, L, C]`, `embedding` `[b, C₀, h, w]` (b divides B), `scales` `[13]`.
pub struct BodyInputs<'a> {
    pub sample: &'a Resident,
    pub timestep: &'a Resident,
    pub context: &'a Resident,
    pub embedding: &'a Resident,
    pub scales: &'a Resident,
}

/// A ControlNet with warm sessions for the split graphs (and the full one on demand).
pub struct ControlNet {
    pub compiled: CompiledControlNet,
    cond_encoder: SharedSession,
    body: SharedSession,
    full: Option<SharedSession>,
}

impl ControlNet {
    pub fn new(engine: &Engine, compiled: CompiledControlNet) -> Result<ControlNet, EngineError> {
        Ok(ControlNet {
            cond_encoder: engine.session(&compiled.cond_encoder)?,
            body: engine.session(&compiled.body)?,
            full: None,
            compiled,
        })
    }

    /// The hint embedding, to compute once per tile and reuse at every step.
    pub fn embed_hint(&self, hint: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>, EngineError> {
        let name = &self.compiled.cond_encoder.name;
        Ok(sd::run(
            &self.cond_encoder,
            name,
            &[("controlnet_cond", hint)],
            &["controlnet_cond_embedding"],
        )?
        .remove(0))
    }

    /// The 13 unscaled residuals (12 down blocks, then the mid block) from an embedded hint,
    /// as host arrays.
    pub fn residuals(
        &self,
        sample: ArrayViewD<'_, f32>,
        timestep: ArrayViewD<'_, f32>,
        context: ArrayViewD<'_, f32>,
        embedding: ArrayViewD<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>, EngineError> {
        let names = self.compiled.output_names();
        let outputs: Vec<&str> = names.iter().map(String::as_str).collect();
        let ones = Array1::<f32>::ones(names.len()).into_dyn();
        sd::run(
            &self.body,
            &self.compiled.body.name,
            &[
                ("sample", sample),
                ("timestep", timestep),
                ("encoder_hidden_states", context),
                ("controlnet_cond_embedding", embedding),
                (SCALES, ones.view()),
            ],
            &outputs,
        )
    }

    /// The hint embedding of `hint` `[b, 3, 8h, 8w]`, kept where the body takes it.
    pub fn embed_hint_resident(
        &self,
        hint: ArrayViewD<'_, f32>,
    ) -> Result<(Resident, Traffic), EngineError> {
        let name = &self.compiled.cond_encoder.name;
        let mut call = BoundCall::new(&self.cond_encoder, name)?;
        call.host_input("controlnet_cond", hint)?;
        call.resident_output("controlnet_cond_embedding")?;
        let mut out = call.run()?;
        Ok((out.resident(0), out.traffic))
    }

    /// `array` placed where the body wants its input `input` (for values a stage keeps: the
    /// text context, the scales).
    pub fn upload(
        &self,
        input: &str,
        array: ArrayViewD<'_, f32>,
    ) -> Result<(Resident, Traffic), EngineError> {
        binding::upload(&self.body, &self.compiled.body.name, input, array)
    }

    /// The scaled residuals, left where the body computed them (see [`BodyInputs`]).
    pub fn residuals_resident(
        &self,
        inputs: &BodyInputs<'_>,
    ) -> Result<(Vec<Resident>, Traffic), EngineError> {
        let mut call = BoundCall::new(&self.body, &self.compiled.body.name)?;
        call.resident_input("sample", inputs.sample)?;
        call.resident_input("timestep", inputs.timestep)?;
        call.resident_input("encoder_hidden_states", inputs.context)?;
        call.resident_input("controlnet_cond_embedding", inputs.embedding)?;
        call.resident_input(SCALES, inputs.scales)?;
        let names = self.compiled.output_names();
        for name in &names {
            call.resident_output(name)?;
        }
        let mut out = call.run()?;
        let residuals = (0..names.len()).map(|i| out.resident(i)).collect();
        Ok((residuals, out.traffic))
    }

    /// The 13 residuals straight from the hint image (the single-graph form).
    pub fn residuals_full(
        &mut self,
        engine: &Engine,
        sample: ArrayViewD<'_, f32>,
        timestep: ArrayViewD<'_, f32>,
        context: ArrayViewD<'_, f32>,
        hint: ArrayViewD<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>, EngineError> {
        if self.full.is_none() {
            self.full = Some(engine.session(&self.compiled.full)?);
        }
        let names = self.compiled.output_names();
        let outputs: Vec<&str> = names.iter().map(String::as_str).collect();
        sd::run(
            self.full.as_ref().expect("just created"),
            &self.compiled.full.name,
            &[
                ("sample", sample),
                ("timestep", timestep),
                ("encoder_hidden_states", context),
                ("controlnet_cond", hint),
            ],
            &outputs,
        )
    }
}
