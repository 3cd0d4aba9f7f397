//! ESRGAN: the RRDBNet super-resolution network (Wang et al., 2018), with tiled inference.
//!
//! The graph is built from an [`EsrganConfig`] over canonical weights (see
//! `crate::weights::esrgan`); `EsrganConfig::from_weights` reads every hyper-parameter from
//! tensor shapes once: input channels and pixel-unshuffle factor from
//! `conv_first`, filters `nf` from its output, blocks `nb` from `body.N`, growth `gc` from the
//! first dense conv, and the scale from the number of `conv_upK`. Graph interface:
//! `input` `[batch, 3, height, width]` f32 in 0..1 → `output` `[batch, 3, height·s, width·s]`
//! f32, unclamped, in the network's own channel order. [`Esrgan::upscale`] takes RGB and
//! returns RGB, feeding the network in the [`ChannelOrder`] the caller picks.
//! An fp16 graph (f16 weights, every op in f16) keeps the f32 interface: it casts once after
//! the input and once before the output.

use std::ops::{Deref, DerefMut};
use std::path::Path;

use ndarray::{Array3, Array4, ArrayView3, ArrayView4, CowArray, Ix3, s};

use super::builder::{NetBuilder, W};
use super::tiling::plan_axis;
pub use super::tiling::{BLEND, Placement, Tiling};
use super::{ModelError, Precision};
use crate::Cancelled;
use crate::engine::{CompiledModel, CpuMemory, Engine, EngineError, SharedSession};
use crate::onnx::{Conv2d, Dim, Graph, Value};
use crate::weights::esrgan::Layout;
use crate::weights::{self, SourceFile, SourceTensor, TensorMap, WeightsError};

/// LeakyReLU slope used throughout RRDBNet.
const SLOPE: f32 = 0.2;
/// Residual scaling of dense blocks and RRDBs.
const RESIDUAL: f32 = 0.2;

/// The channel order a network is fed in (and whose output is read back in).
///
/// Every ESRGAN training code base feeds RGB (the original ESRGAN test code, BasicSR and so
/// Real-ESRGAN, traiNNer), while A1111's ESRGAN code, which Clarity and the Refiners Space
/// run, flips its RGB image to BGR before every model and back after it (`docs/models.md`
/// has the sources).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelOrder {
    /// What the models were trained on: the upscaler preset.
    Rgb,
    /// What A1111 feeds them: the Clarity and Refiners presets.
    Bgr,
}

/// RRDBNet's configuration (BasicSR's `num_feat`, `num_block`, `num_grow_ch`, scale):
/// [`EsrganConfig::x4plus`] (also its `Default`) or [`EsrganConfig::from_weights`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EsrganConfig {
    pub layout: Layout,
    /// Filters of the trunk.
    pub nf: usize,
    /// Number of RRDB blocks.
    pub nb: usize,
    /// Growth channels of the dense blocks.
    pub gc: usize,
    /// Nearest-×2 + conv stages.
    pub upsamples: usize,
    /// Pixel-unshuffle factor applied to the input (1, or 2/4 for Real-ESRGAN x2/x1 models).
    pub unshuffle: usize,
}

impl Default for EsrganConfig {
    fn default() -> EsrganConfig {
        EsrganConfig::x4plus()
    }
}

impl EsrganConfig {
    /// The model's overall scale factor.
    pub fn scale(&self) -> usize {
        (1 << self.upsamples) / self.unshuffle
    }

    /// Real-ESRGAN's `RealESRGAN_x4plus` (and the ESRGAN ×4 models of its family): RRDBNet
    /// with 64 filters, 23 blocks, growth 32, ×4.
    pub fn x4plus() -> EsrganConfig {
        EsrganConfig {
            layout: Layout::RealEsrgan,
            nf: 64,
            nb: 23,
            gc: 32,
            upsamples: 2,
            unshuffle: 1,
        }
    }

    /// Reads and checks every hyper-parameter from the canonical tensors' shapes, once.
    pub fn from_weights(
        w: &TensorMap<SourceTensor>,
        layout: Layout,
    ) -> Result<EsrganConfig, WeightsError> {
        let shape = |name: &str| -> Result<Vec<usize>, WeightsError> {
            Ok(w.root().get(name)?.shape.clone())
        };
        let first = shape("conv_first.weight")?;
        let [nf, in_ch, 3, 3] = first[..] else {
            return Err(bad(w, "conv_first.weight", "expected a 3×3 convolution"));
        };
        let nb = w.scope("body").count_indexed();
        if nb == 0 {
            return Err(WeightsError::Missing {
                name: "body.0".into(),
            });
        }
        let gc = shape("body.0.rdb1.conv1.weight")?[0];
        let upsamples = (1..)
            .take_while(|k| w.root().contains(&format!("conv_up{k}.weight")))
            .count();
        let last = shape("conv_last.weight")?;
        let out_ch = last[0];
        let unshuffle = match (in_ch, out_ch) {
            (3, 3) => 1,
            (12, 3) => 2,
            (48, 3) => 4,
            _ => {
                return Err(bad(
                    w,
                    "conv_first.weight",
                    &format!(
                        "{in_ch} → {out_ch} channels; only RGB models (3, or 12/48 with pixel-unshuffle) are supported"
                    ),
                ));
            }
        };
        if upsamples > 4 || (1 << upsamples) < unshuffle {
            return Err(bad(
                w,
                "conv_last.weight",
                &format!("{upsamples} upsampling stages after unshuffle ×{unshuffle}"),
            ));
        }
        let config = EsrganConfig {
            layout,
            nf,
            nb,
            gc,
            upsamples,
            unshuffle,
        };
        config.check_shapes(w, in_ch, out_ch)?;
        Ok(config)
    }

    /// Every tensor must have the shape this configuration implies, and none may be left over.
    fn check_shapes(
        &self,
        w: &TensorMap<SourceTensor>,
        in_ch: usize,
        out_ch: usize,
    ) -> Result<(), WeightsError> {
        let (nf, gc) = (self.nf, self.gc);
        let mut expected: Vec<(String, usize, usize)> = vec![("conv_first".into(), in_ch, nf)];
        for i in 0..self.nb {
            for r in 1..=3 {
                for k in 1..=5 {
                    let out = if k == 5 { nf } else { gc };
                    expected.push((format!("body.{i}.rdb{r}.conv{k}"), nf + (k - 1) * gc, out));
                }
            }
        }
        expected.push(("conv_body".into(), nf, nf));
        for k in 1..=self.upsamples {
            expected.push((format!("conv_up{k}"), nf, nf));
        }
        expected.push(("conv_hr".into(), nf, nf));
        expected.push(("conv_last".into(), nf, out_ch));
        for (module, cin, cout) in &expected {
            let weight = w.scope(module).get("weight")?;
            if weight.shape != [*cout, *cin, 3, 3] {
                return Err(bad(
                    w,
                    &format!("{module}.weight"),
                    &format!("expected [{cout}, {cin}, 3, 3]"),
                ));
            }
            if w.scope(module).get("bias")?.shape != [*cout] {
                return Err(bad(
                    w,
                    &format!("{module}.bias"),
                    &format!("expected [{cout}]"),
                ));
            }
        }
        if w.len() != 2 * expected.len() {
            let known: std::collections::HashSet<String> = expected
                .iter()
                .flat_map(|(m, _, _)| [format!("{m}.weight"), format!("{m}.bias")])
                .collect();
            let extra = w.keys().find(|k| !known.contains(*k)).unwrap_or_default();
            return Err(bad(
                w,
                extra,
                "not part of an RRDBNet with these dimensions",
            ));
        }
        for t in w.iter().map(|(_, t)| t) {
            if !t.dtype.is_float() {
                return Err(bad(w, "(weights)", "integer weights"));
            }
        }
        Ok(())
    }
}

fn bad(w: &TensorMap<SourceTensor>, name: &str, reason: &str) -> WeightsError {
    WeightsError::BadShape {
        name: name.to_owned(),
        shape: w
            .get(name)
            .map(|t| t.shape.iter().map(|&d| d as i64).collect())
            .unwrap_or_default(),
        reason: reason.to_owned(),
    }
}

/// Builds the ONNX graph of an RRDBNet over `w` (external weights, f32 or f16: the graph
/// computes in their type).
pub fn build_graph(config: &EsrganConfig, w: &weights::Weights) -> Result<Graph, WeightsError> {
    let mut net = Rrdbnet {
        b: NetBuilder::new("esrgan", w.weight_type()),
    };
    let dims = |h: &str, w: &str| [Dim::from("batch"), Dim::from(3), Dim::from(h), Dim::from(w)];
    let mut x = net.input("input", &dims("height", "width"));
    if config.unshuffle > 1 {
        x = net.g.pixel_unshuffle(&x, config.unshuffle, 3);
    }

    let fea = net.conv3(&x, &w.scope("conv_first"))?;
    let mut trunk = fea.clone();
    for i in 0..config.nb {
        trunk = net.rrdb(&trunk, &w.scope("body").scope(i))?;
    }
    let trunk = net.conv3(&trunk, &w.scope("conv_body"))?;
    let mut fea = net.g.add(&fea, &trunk);
    for k in 1..=config.upsamples {
        let up = net.g.resize_nearest(&fea, 2.0);
        let up = net.conv3(&up, &w.scope(format!("conv_up{k}")))?;
        fea = net.g.leaky_relu(&up, SLOPE);
    }
    let hr = net.conv3(&fea, &w.scope("conv_hr"))?;
    let hr = net.g.leaky_relu(&hr, SLOPE);
    let out = net.conv3(&hr, &w.scope("conv_last"))?;
    net.output("output", &out, &dims("out_height", "out_width"));
    Ok(net.b.finish())
}

/// RRDBNet's layers over a [`NetBuilder`].
struct Rrdbnet {
    b: NetBuilder,
}

impl Deref for Rrdbnet {
    type Target = NetBuilder;
    fn deref(&self) -> &NetBuilder {
        &self.b
    }
}

impl DerefMut for Rrdbnet {
    fn deref_mut(&mut self) -> &mut NetBuilder {
        &mut self.b
    }
}

impl Rrdbnet {
    /// Residual-in-residual dense block: three dense blocks, then a scaled skip.
    fn rrdb(&mut self, x: &Value, w: &W) -> Result<Value, WeightsError> {
        let mut y = x.clone();
        for r in 1..=3 {
            y = self.rdb(&y, &w.scope(format!("rdb{r}")))?;
        }
        let y = self.residual_scale(&y);
        Ok(self.g.add(&y, x))
    }

    /// `x · RESIDUAL` in the graph's element type.
    fn residual_scale(&mut self, x: &Value) -> Value {
        let k = self.constant(&[], &[RESIDUAL]);
        self.g.mul(x, &k)
    }

    /// Residual dense block: five 3×3 convs, each seeing the block input and all earlier
    /// outputs (growth `gc` channels each), the last one projecting back to `nf`; then a scaled
    /// skip.
    fn rdb(&mut self, x: &Value, w: &W) -> Result<Value, WeightsError> {
        let mut features = vec![x.clone()];
        for k in 1..=4 {
            let input = self.concat_all(&features);
            let y = self.conv3(&input, &w.scope(format!("conv{k}")))?;
            features.push(self.g.leaky_relu(&y, SLOPE));
        }
        let input = self.concat_all(&features);
        let y = self.conv3(&input, &w.scope("conv5"))?;
        let y = self.residual_scale(&y);
        Ok(self.g.add(&y, x))
    }

    fn concat_all(&mut self, values: &[Value]) -> Value {
        if values.len() == 1 {
            return values[0].clone();
        }
        let refs: Vec<&Value> = values.iter().collect();
        self.g.concat(&refs, 1)
    }

    /// A 3×3 "same" convolution with bias.
    fn conv3(&mut self, x: &Value, w: &W) -> Result<Value, WeightsError> {
        self.conv(x, w, Conv2d::padded(1))
    }
}

/// Why an upscale did not finish.
#[derive(Debug, thiserror::Error)]
pub enum EsrganError {
    /// The progress callback asked to stop.
    #[error("the job was cancelled")]
    Cancelled,
    #[error(transparent)]
    Runtime(#[from] EngineError),
    /// The image or tiling cannot be processed (empty image, not 3 channels).
    #[error("cannot upscale: {0}")]
    InvalidInput(String),
}

impl From<Cancelled> for EsrganError {
    fn from(_: Cancelled) -> EsrganError {
        EsrganError::Cancelled
    }
}

/// A loaded ESRGAN model with its warm session.
pub struct Esrgan {
    config: EsrganConfig,
    model: CompiledModel,
    session: SharedSession,
}

impl Esrgan {
    /// Reads `model_file` (.safetensors or .pth, any of the three layouts), converts its weights
    /// into `cache_dir` when they cannot be used in place, and gets a session from `engine`.
    pub fn load(
        engine: &Engine,
        model_file: &Path,
        cache_dir: &Path,
    ) -> Result<Esrgan, ModelError> {
        Esrgan::load_as(engine, model_file, cache_dir, Precision::F32)
    }

    /// [`Esrgan::load`] computing in `precision` (f16 weights converted into `cache_dir`).
    pub fn load_as(
        engine: &Engine,
        model_file: &Path,
        cache_dir: &Path,
        precision: Precision,
    ) -> Result<Esrgan, ModelError> {
        let (config, model) = Esrgan::compile_as(model_file, cache_dir, precision)?;
        let session = engine.session(&model)?;
        Ok(Esrgan {
            config,
            model,
            session,
        })
    }

    /// Everything `load` does short of creating a session: the configuration and the graph
    /// with its weights folder (also what an ONNX export writes out).
    pub fn compile(
        model_file: &Path,
        cache_dir: &Path,
    ) -> Result<(EsrganConfig, CompiledModel), ModelError> {
        Esrgan::compile_as(model_file, cache_dir, Precision::F32)
    }

    /// [`Esrgan::compile`] computing in `precision`.
    pub fn compile_as(
        model_file: &Path,
        cache_dir: &Path,
        precision: Precision,
    ) -> Result<(EsrganConfig, CompiledModel), ModelError> {
        let source = SourceFile::open(model_file)?;
        if !source.skipped().is_empty() {
            tracing::info!(
                "{}: {} skipped (the EMA weights, or the wrapped state dict, are used)",
                model_file.display(),
                source.skipped().join(", ")
            );
        }
        let (canonical, layout) = weights::esrgan::canonicalize(&source)?;
        let config = EsrganConfig::from_weights(&canonical, layout)?;
        let weights = weights::materialize_as(
            &source,
            &canonical,
            cache_dir,
            weights::Target {
                network: &format!("esrgan{}", precision.suffix()),
                weight_type: precision.weight_type(),
                patch: None,
            },
        )?;
        let graph = build_graph(&config, &weights)?;
        tracing::debug!(
            ?config,
            nodes = graph.node_count(),
            converted = weights.converted(),
            "ESRGAN graph built"
        );
        let name = model_file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let model = CompiledModel {
            name: format!("ESRGAN {name}{}", precision.label_suffix()),
            onnx: graph.to_bytes(),
            weights_folder: weights.folder().to_owned(),
            weight_files: vec![weights.file().to_owned()],
            cpu_memory: CpuMemory::Heap,
        };
        Ok((config, model))
    }

    /// The overall scale factor (1, 2, 4 or 8).
    pub fn scale(&self) -> u32 {
        self.config.scale() as u32
    }

    pub fn config(&self) -> &EsrganConfig {
        &self.config
    }

    pub fn compiled(&self) -> &CompiledModel {
        &self.model
    }

    /// One pass of the network over a `[N, 3, H, W]` batch (H and W multiples of the unshuffle
    /// factor), unclamped: the raw graph output, for tests and tools.
    pub fn forward(&mut self, x: ArrayView4<f32>) -> Result<Array4<f32>, EsrganError> {
        let (n, c, h, w) = x.dim();
        let align = self.config.unshuffle;
        if c != 3 || h % align != 0 || w % align != 0 {
            return Err(EsrganError::InvalidInput(format!(
                "forward needs [N, 3, H, W] with H, W multiples of {align}"
            )));
        }
        let name = &self.model.name;
        let input = x.as_standard_layout();
        let tensor = ort::value::TensorRef::from_array_view(input.view())
            .map_err(|e| EngineError::ort(name, e))?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session
            .run(ort::inputs!["input" => tensor])
            .map_err(|e| EngineError::ort(name, e))?;
        let y = outputs["output"]
            .try_extract_array::<f32>()
            .map_err(|e| EngineError::ort(name, e))?;
        let s = self.config.scale();
        crate::engine::binding::note_host_call(4 * x.len(), 4 * y.len());
        y.to_owned()
            .into_shape_with_order((n, 3, h * s, w * s))
            .map_err(|e| EngineError::ort(name, e).into())
    }

    /// Upscales a `[3, H, W]` RGB image in 0..1 to `[3, H·s, W·s]` RGB, tile by tile (see
    /// [`Tiling`]), the network fed in `order`, calling `on_tile(done, total)` after each
    /// network call; an `Err` from it stops the work and is returned as
    /// `EsrganError::Cancelled`. Everything stays f32: tiles are not rounded to 8 bits (unlike
    /// A1111), so 16-bit and float images keep their precision. The result is clamped to 0..1.
    pub fn upscale(
        &mut self,
        rgb: ArrayView3<f32>,
        tiling: &Tiling,
        order: ChannelOrder,
        on_tile: &mut dyn FnMut(usize, usize) -> Result<(), Cancelled>,
    ) -> Result<Array3<f32>, EsrganError> {
        let (channels, h, w) = rgb.dim();
        if channels != 3 || h == 0 || w == 0 {
            return Err(EsrganError::InvalidInput(format!(
                "expected a [3, H, W] image, got [{channels}, {h}, {w}]"
            )));
        }
        if tiling.tile == 0 {
            return Err(EsrganError::InvalidInput("the tile size is 0".into()));
        }
        let scale = self.config.scale();
        let align = self.config.unshuffle;
        // Pixel-unshuffle needs whole blocks: pad like spandrel (reflect) and crop at the end.
        let padded = pad_to_multiple(rgb, align);
        // The flip is a reversed view on the way in and a reversed channel index on the way out.
        let padded = match order {
            ChannelOrder::Rgb => padded.view(),
            ChannelOrder::Bgr => padded.slice(s![..;-1, .., ..]),
        };
        let (_, ph, pw) = padded.dim();
        let rows = plan_axis(ph, *tiling, align, scale);
        let cols = plan_axis(pw, *tiling, align, scale);
        let total = rows.len() * cols.len();
        let (oh, ow) = (h * scale, w * scale);
        let mut out = Array3::<f32>::zeros((3, oh, ow));
        let mut done = 0;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        for row in &rows {
            for col in &cols {
                let tile = padded.slice(s![
                    ..,
                    row.start..row.start + row.len,
                    col.start..col.start + col.len
                ]);
                let input: Vec<f32> = tile.iter().copied().collect();
                let tensor = ort::value::TensorRef::from_array_view((
                    [1usize, 3, row.len, col.len],
                    &input[..],
                ))
                .map_err(|e| EngineError::ort(&self.model.name, e))?;
                let outputs = session
                    .run(ort::inputs!["input" => tensor])
                    .map_err(|e| EngineError::ort(&self.model.name, e))?;
                let (shape, data) = outputs["output"]
                    .try_extract_tensor::<f32>()
                    .map_err(|e| EngineError::ort(&self.model.name, e))?;
                let (th, tw) = (row.len * scale, col.len * scale);
                if shape[..] != [1, 3, th as i64, tw as i64] {
                    return Err(EngineError::ort(
                        &self.model.name,
                        format!("unexpected output shape {shape:?}"),
                    )
                    .into());
                }
                crate::engine::binding::note_host_call(4 * input.len(), 4 * data.len());
                blend(&mut out, data, row, col, scale, order);
                done += 1;
                on_tile(done, total)?;
            }
        }
        Ok(out)
    }
}

/// Adds a tile's clamped output, weighted, into `out` (pixels past the crop are dropped).
fn blend(
    out: &mut Array3<f32>,
    data: &[f32],
    row: &super::tiling::Span,
    col: &super::tiling::Span,
    scale: usize,
    order: ChannelOrder,
) {
    let (_, oh, ow) = out.dim();
    let (th, tw) = (row.len * scale, col.len * scale);
    let (y0, x0) = (row.start * scale, col.start * scale);
    for c in 0..3 {
        let channel = match order {
            ChannelOrder::Rgb => c,
            ChannelOrder::Bgr => 2 - c,
        };
        for y in 0..th.min(oh.saturating_sub(y0)) {
            let wy = row.weights[y];
            if wy == 0.0 {
                continue;
            }
            let src = &data[(channel * th + y) * tw..(channel * th + y + 1) * tw];
            let mut dst = out.slice_mut(s![c, y0 + y, x0..(x0 + tw).min(ow)]);
            for (x, d) in dst.iter_mut().enumerate() {
                let wv = wy * col.weights[x];
                if wv != 0.0 {
                    *d += wv * src[x].clamp(0.0, 1.0);
                }
            }
        }
    }
}

/// The image padded on the bottom and right to a multiple of `m` by reflection (as
/// `F.pad(mode="reflect")`; edge replication where the image is too small to reflect).
fn pad_to_multiple(img: ArrayView3<'_, f32>, m: usize) -> CowArray<'_, f32, Ix3> {
    let (c, h, w) = img.dim();
    let (ph, pw) = (h.div_ceil(m) * m, w.div_ceil(m) * m);
    if (ph, pw) == (h, w) {
        return CowArray::from(img);
    }
    let reflect = |i: usize, n: usize| {
        if i < n {
            i
        } else {
            (2 * (n - 1)).saturating_sub(i).min(n - 1)
        }
    };
    CowArray::from(Array3::from_shape_fn((c, ph, pw), |(k, y, x)| {
        img[[k, reflect(y, h), reflect(x, w)]]
    }))
}
