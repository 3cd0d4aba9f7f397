//! What the benchmarks share (`tessera bench sd-step`, `pipeline/clarity/step_bench.rs`, and
//! `tessera bench clarity`, `pipeline/clarity/bench.rs`): random SD 1.5-shaped weights in the
//! layouts users have (`model.diffusion_model.*` for the UNet, f16 like Civitai files;
//! `control_model.*` for the ControlNet), FLOP counts from a UNet's configuration
//! (convolutions, Linear layers and attention products; 2 per multiply-add), and ONNX
//! Runtime's fp32 MatMul throughput (4096² · 4096) as the machine's reference rate.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};

use super::unet::UnetConfig;
use crate::engine::{CompiledModel, CpuMemory, Engine};
use crate::onnx::{Dim, ElemType, Graph};

/// SD 1.5's levels with attention, and its prompt length.
const ATTENTION: [bool; 4] = [true, true, true, false];
pub(crate) const TOKENS: usize = 77;

/// The size of the random models: SD 1.5's own, or a small one with the same architecture
/// (every width divided by 10 or so) for quick runs that check the machinery, not the speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSize {
    /// UNet and ControlNet width at the top level (SD 1.5: 320; then ×2, ×4, ×4).
    pub unet_base: usize,
    /// Text encoder width (SD 1.5's CLIP ViT-L: 768, also the UNet's context width) and depth.
    pub text_width: usize,
    pub text_layers: usize,
    /// VAE width at the top level (128; then ×2, ×4, ×4).
    pub vae_base: usize,
    /// ESRGAN filters and RRDB blocks (4x-UltraSharp: 64, 23).
    pub esrgan_filters: usize,
    pub esrgan_blocks: usize,
    /// Part of the random files' names, so that sizes never mix in a kept folder.
    pub tag: &'static str,
}

impl ModelSize {
    pub const FULL: ModelSize = ModelSize {
        unet_base: 320,
        text_width: 768,
        text_layers: 12,
        vae_base: 128,
        esrgan_filters: 64,
        esrgan_blocks: 23,
        tag: "",
    };
    /// Widths that still fit SD 1.5's 8 heads and 32 GroupNorm groups.
    pub const SMALL: ModelSize = ModelSize {
        unet_base: 32,
        text_width: 64,
        text_layers: 2,
        vae_base: 32,
        esrgan_filters: 16,
        esrgan_blocks: 2,
        tag: "small-",
    };

    /// The side of the fp32 MatMul that measures the machine's rate (smaller for small
    /// models, whose runs are about the machinery).
    pub fn gemm_size(&self) -> usize {
        if *self == ModelSize::FULL { 4096 } else { 1024 }
    }

    /// The UNet's widths per level.
    pub fn unet_channels(&self) -> [usize; 4] {
        let c = self.unet_base;
        [c, 2 * c, 4 * c, 4 * c]
    }

    /// The UNet configuration the random weights have (for FLOP counts).
    pub fn unet_config(&self) -> UnetConfig {
        UnetConfig {
            in_channels: 4,
            out_channels: 4,
            block_channels: self.unet_channels().to_vec(),
            layers_per_block: 2,
            attention: ATTENTION.to_vec(),
            up_attention: ATTENTION.iter().rev().copied().collect(),
            context_dim: self.text_width,
            ..UnetConfig::sd15()
        }
    }
}

impl std::str::FromStr for ModelSize {
    type Err = String;
    fn from_str(s: &str) -> Result<ModelSize, String> {
        match s {
            "full" => Ok(ModelSize::FULL),
            "small" => Ok(ModelSize::SMALL),
            other => Err(format!("`{other}` is no model size (full or small)")),
        }
    }
}

/// The best GFLOP/s of five `[n, n] × [n, n]` fp32 MatMuls in ONNX Runtime.
pub(crate) fn gemm_peak(engine: &Engine, n: usize) -> anyhow::Result<f64> {
    let mut g = Graph::new("gemm_peak");
    let dims = [Dim::from(n as i64), Dim::from(n as i64)];
    let a = g.input("a", ElemType::F32, &dims);
    let b = g.input("b", ElemType::F32, &dims);
    let c = g.matmul(&a, &b);
    g.output("c", &c, ElemType::F32, Some(&dims));
    let model = CompiledModel {
        name: "MatMul peak".into(),
        onnx: g.to_bytes(),
        weights_folder: std::env::temp_dir(),
        weight_files: vec![],
        cpu_memory: CpuMemory::Heap,
    };
    let session = engine.session(&model)?;
    let a = random_array(&[n, n], 6);
    let b = random_array(&[n, n], 7);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        super::sd::run(
            &session,
            &model.name,
            &[("a", a.view()), ("b", b.view())],
            &["c"],
        )?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

/// Multiply-add FLOPs (×2) of a UNet (`decoder`) or of a ControlNet's encoder half.
pub fn unet_flops(config: &UnetConfig, latent: usize, batch: usize, decoder: bool) -> f64 {
    let mut flops = 0.0;
    let conv = |cin: usize, cout: usize, k: usize, side: usize| {
        2.0 * (cin * cout * k * k * side * side) as f64
    };
    let resnet = |cin: usize, cout: usize, side: usize| {
        conv(cin, cout, 3, side)
            + conv(cout, cout, 3, side)
            + if cin != cout {
                conv(cin, cout, 1, side)
            } else {
                0.0
            }
    };
    let transformer = |c: usize, side: usize| {
        let n = (side * side) as f64;
        let c = c as f64;
        let linear = |i: f64, o: f64, rows: f64| 2.0 * i * o * rows;
        2.0 * linear(c, c, n) // proj_in, proj_out
            + 4.0 * linear(c, c, n) // self-attention q, k, v, out
            + 2.0 * 2.0 * n * n * c // QKᵀ and AV
            + 2.0 * linear(c, c, n) // cross-attention q, out
            + 2.0 * linear(config.context_dim as f64, c, TOKENS as f64) // cross k, v
            + 2.0 * 2.0 * n * TOKENS as f64 * c
            + linear(c, 8.0 * c, n) // GEGLU in
            + linear(4.0 * c, c, n) // GEGLU out
    };
    let levels = config.block_channels.len();
    flops += conv(config.in_channels, config.block_channels[0], 3, latent);
    // (channels, side) of every skip tensor.
    let mut skips = vec![(config.block_channels[0], latent)];
    let mut ch = config.block_channels[0];
    for i in 0..levels {
        let side = latent >> i;
        let out = config.block_channels[i];
        for _ in 0..config.layers_per_block {
            flops += resnet(ch, out, side);
            ch = out;
            if config.attention[i] {
                flops += transformer(ch, side);
            }
            skips.push((ch, side));
        }
        if i + 1 < levels {
            flops += conv(ch, ch, 3, side / 2);
            skips.push((ch, side / 2));
        }
    }
    let bottom = latent >> (levels - 1);
    flops += 2.0 * resnet(ch, ch, bottom) + transformer(ch, bottom);
    if decoder {
        for i in 0..levels {
            let level = levels - 1 - i;
            let side = latent >> level;
            let out = config.block_channels[level];
            for _ in 0..=config.layers_per_block {
                let (skip, _) = skips.pop().unwrap_or((0, 0));
                flops += resnet(ch + skip, out, side);
                ch = out;
                if config.attention[level] {
                    flops += transformer(ch, side);
                }
            }
            if i + 1 < levels {
                flops += conv(ch, ch, 3, side * 2);
            }
        }
        flops += conv(ch, config.out_channels, 3, latent);
    } else {
        // Zero convs on every skip and on the mid block.
        for &(c, side) in &skips {
            flops += conv(c, c, 1, side);
        }
        flops += conv(ch, ch, 1, bottom);
    }
    flops * batch as f64
}

/// Every tensor of an SD 1.5-shaped UNet (or ControlNet) of `size` in LDM names under
/// `prefix`.
pub(crate) fn unet_tensors(
    prefix: &str,
    controlnet: bool,
    size: &ModelSize,
) -> Vec<(String, Vec<usize>)> {
    let channels = size.unet_channels();
    let context = size.text_width;
    let mut t: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| t.push((format!("{prefix}{name}"), shape));
    let temb = 4 * channels[0];
    for (k, i, o) in [(0, channels[0], temb), (2, temb, temb)] {
        add(format!("time_embed.{k}.weight"), vec![o, i]);
        add(format!("time_embed.{k}.bias"), vec![o]);
    }
    let conv = |add: &mut dyn FnMut(String, Vec<usize>), name: String, i, o, k| {
        add(format!("{name}.weight"), vec![o, i, k, k]);
        add(format!("{name}.bias"), vec![o]);
    };
    let norm = |add: &mut dyn FnMut(String, Vec<usize>), name: String, c| {
        add(format!("{name}.weight"), vec![c]);
        add(format!("{name}.bias"), vec![c]);
    };
    let resnet = |add: &mut dyn FnMut(String, Vec<usize>), name: &str, i: usize, o: usize| {
        norm(add, format!("{name}.in_layers.0"), i);
        conv(add, format!("{name}.in_layers.2"), i, o, 3);
        add(format!("{name}.emb_layers.1.weight"), vec![o, temb]);
        add(format!("{name}.emb_layers.1.bias"), vec![o]);
        norm(add, format!("{name}.out_layers.0"), o);
        conv(add, format!("{name}.out_layers.3"), o, o, 3);
        if i != o {
            conv(add, format!("{name}.skip_connection"), i, o, 1);
        }
    };
    let transformer = |add: &mut dyn FnMut(String, Vec<usize>), name: &str, c: usize| {
        norm(add, format!("{name}.norm"), c);
        conv(add, format!("{name}.proj_in"), c, c, 1);
        conv(add, format!("{name}.proj_out"), c, c, 1);
        let b = format!("{name}.transformer_blocks.0");
        for attn in ["attn1", "attn2"] {
            let kv = if attn == "attn1" { c } else { context };
            add(format!("{b}.{attn}.to_q.weight"), vec![c, c]);
            add(format!("{b}.{attn}.to_k.weight"), vec![c, kv]);
            add(format!("{b}.{attn}.to_v.weight"), vec![c, kv]);
            add(format!("{b}.{attn}.to_out.0.weight"), vec![c, c]);
            add(format!("{b}.{attn}.to_out.0.bias"), vec![c]);
        }
        add(format!("{b}.ff.net.0.proj.weight"), vec![8 * c, c]);
        add(format!("{b}.ff.net.0.proj.bias"), vec![8 * c]);
        add(format!("{b}.ff.net.2.weight"), vec![c, 4 * c]);
        add(format!("{b}.ff.net.2.bias"), vec![c]);
        for n in ["norm1", "norm2", "norm3"] {
            norm(add, format!("{b}.{n}"), c);
        }
    };
    conv(&mut add, "input_blocks.0.0".into(), 4, channels[0], 3);
    let mut skips = vec![channels[0]];
    let mut ch = channels[0];
    for (i, &out) in channels.iter().enumerate() {
        for j in 0..2 {
            let n = 1 + 3 * i + j;
            resnet(&mut add, &format!("input_blocks.{n}.0"), ch, out);
            ch = out;
            if ATTENTION[i] {
                transformer(&mut add, &format!("input_blocks.{n}.1"), ch);
            }
            skips.push(ch);
        }
        if i + 1 < channels.len() {
            conv(
                &mut add,
                format!("input_blocks.{}.0.op", 3 * i + 3),
                ch,
                ch,
                3,
            );
            skips.push(ch);
        }
    }
    resnet(&mut add, "middle_block.0", ch, ch);
    transformer(&mut add, "middle_block.1", ch);
    resnet(&mut add, "middle_block.2", ch, ch);
    if controlnet {
        let widths = [3, 16, 16, 32, 32, 96, 96, 256, channels[0]];
        for k in 0..8 {
            conv(
                &mut add,
                format!("input_hint_block.{}", 2 * k),
                widths[k],
                widths[k + 1],
                3,
            );
        }
        for (k, &c) in skips.iter().enumerate() {
            conv(&mut add, format!("zero_convs.{k}.0"), c, c, 1);
        }
        conv(&mut add, "middle_block_out.0".into(), ch, ch, 1);
        return t;
    }
    for i in 0..channels.len() {
        let level = channels.len() - 1 - i;
        let out = channels[level];
        for j in 0..3 {
            let n = 3 * i + j;
            let skip = skips.pop().expect("one skip per up ResNet");
            resnet(&mut add, &format!("output_blocks.{n}.0"), ch + skip, out);
            ch = out;
            if ATTENTION[level] {
                transformer(&mut add, &format!("output_blocks.{n}.1"), ch);
            }
        }
        if i + 1 < channels.len() {
            let slot = if ATTENTION[level] { 2 } else { 1 };
            conv(
                &mut add,
                format!("output_blocks.{}.{slot}.conv", 3 * i + 2),
                ch,
                ch,
                3,
            );
        }
    }
    norm(&mut add, "out.0".into(), ch);
    conv(&mut add, "out.2".into(), ch, 4, 3);
    t
}

/// Writes `tensors` as f16 safetensors with random values of variance 1/fan-in (norm gains 1,
/// biases small), streamed tensor by tensor.
pub(crate) fn write_random(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    seed: u64,
) -> anyhow::Result<()> {
    write_random_as(path, tensors, seed, false)
}

/// [`write_random`] in f16, or in f32 (`f32`: used in place, no converted copy in the cache).
pub(crate) fn write_random_as(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    seed: u64,
    f32: bool,
) -> anyhow::Result<()> {
    let (dtype, size) = if f32 { ("F32", 4) } else { ("F16", 2) };
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = size * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut json = serde_json::to_vec(&header)?;
    while (8 + json.len()) % 8 != 0 {
        json.push(b' ');
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(&(json.len() as u64).to_le_bytes())?;
    out.write_all(&json)?;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ seed);
    for (name, shape) in tensors {
        let numel: usize = shape.iter().product();
        let norm_gain = shape.len() == 1 && name.ends_with(".weight");
        let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
        let amplitude = if shape.len() == 1 {
            0.02
        } else {
            (3.0 / fan_in as f32).sqrt()
        };
        let mut buf = Vec::with_capacity(size * numel);
        for _ in 0..numel {
            let v = if norm_gain {
                1.0
            } else {
                amplitude * rng.uniform()
            };
            if f32 {
                buf.extend_from_slice(&v.to_le_bytes());
            } else {
                buf.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
        }
        out.write_all(&buf)?;
    }
    out.flush()?;
    Ok(())
}

pub(crate) fn random_array(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D ^ seed);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.uniform())
}

/// A tiny PRNG: the benchmark needs gigabytes of numbers fast, not good ones.
struct XorShift(u64);

impl XorShift {
    /// Uniform in −1..1.
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// The process's peak resident set (Linux `VmHWM`), 0 elsewhere.
pub(crate) fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
