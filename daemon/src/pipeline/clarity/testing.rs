//! Exact stand-ins for the networks, for the orchestration tests: a small VAE written out in
//! Rust (GroupNorm, blur, pooling), a UNet+ControlNet that is pointwise in space, and a
//! nearest-neighbour upscaler. Each is simple enough to compute by hand, and each keeps the
//! property its test relies on (a finite receptive field, position independence).

use ndarray::{Array2, Array3, Array4, ArrayView3, ArrayView4, Axis, s};

use super::control::RESIDUALS;
use super::network_traits::{
    Carried, ControlledUnet, GroupNormStats, GroupStats, NetResult, Norms, Prompts, Segmented,
    StageConditioning, Vae,
};
use super::stage::PreUpscaler;
use crate::Cancelled;

/// Mean and standard deviation.
pub fn moments<'a>(values: impl Iterator<Item = &'a f32> + Clone) -> (f64, f64) {
    let n = values.clone().count().max(1) as f64;
    let mean = values.clone().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = values.map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

const EPS: f64 = 1e-6;

/// Per-group statistics of `x` with `groups` groups over the channels.
fn stats(x: &Array4<f32>, groups: usize) -> GroupStats {
    let c = x.shape()[1];
    let per = c / groups;
    let mut out = GroupStats::default();
    for g in 0..groups {
        let v = x.slice(s![0, g * per..(g + 1) * per, .., ..]);
        let (m, sd) = moments(v.iter());
        out.mean.push(m as f32);
        out.var.push((sd * sd) as f32);
    }
    out
}

fn normalize(x: &mut Array4<f32>, st: &GroupStats) {
    let groups = st.mean.len();
    let per = x.shape()[1] / groups;
    for g in 0..groups {
        let (m, v) = (f64::from(st.mean[g]), f64::from(st.var[g]));
        x.slice_mut(s![0, g * per..(g + 1) * per, .., ..])
            .mapv_inplace(|a| ((f64::from(a) - m) / (v + EPS).sqrt()) as f32);
    }
}

fn blur(x: &Array4<f32>) -> Array4<f32> {
    let (_, c, h, w) = x.dim();
    Array4::from_shape_fn((1, c, h, w), |(_, ch, y, xx)| {
        let mut sum = 0.0;
        for dy in -1i64..=1 {
            for dx in -1i64..=1 {
                let (yy, xs) = (y as i64 + dy, xx as i64 + dx);
                if (0..h as i64).contains(&yy) && (0..w as i64).contains(&xs) {
                    sum += x[[0, ch, yy as usize, xs as usize]];
                }
            }
        }
        sum / 9.0
    })
}

#[derive(Default)]
pub struct TinyVae {
    /// Statistics `*_stats` return instead of computing them (to test the tiling alone).
    pub fixed: Option<(GroupNormStats, GroupNormStats)>,
    pub calls: usize,
    pub stats_calls: usize,
    pub largest_input: usize,
}

impl TinyVae {
    pub fn run_encoder(
        &mut self,
        image: ArrayView4<f32>,
        norms: Norms<'_>,
    ) -> (Array4<f32>, GroupNormStats) {
        self.largest_input = self.largest_input.max(image.shape()[2] * image.shape()[3]);
        let mut seen = GroupNormStats::default();
        let s0 = match norms {
            Norms::Own => stats(&image.to_owned(), 1),
            Norms::Frozen(f) => f.layers[0].clone(),
        };
        let mut pooled = Self::head(image, &s0);
        seen.layers.push(s0);
        let s1 = match norms {
            Norms::Own => stats(&pooled, 2),
            Norms::Frozen(f) => f.layers[1].clone(),
        };
        normalize(&mut pooled, &s1);
        seen.layers.push(s1);
        (pooled, seen)
    }

    /// The encoder up to its second GroupNorm: the first GroupNorm (on `s0`), a blur and the
    /// 8×8 pooling, its "first downsample".
    fn head(image: ArrayView4<f32>, s0: &GroupStats) -> Array4<f32> {
        let mut x = image.to_owned();
        normalize(&mut x, s0);
        let x = blur(&x);
        let (_, _, h, w) = x.dim();
        Array4::from_shape_fn((1, 4, h / 8, w / 8), |(_, c, y, xx)| {
            let ch = [0, 1, 2, 0][c];
            let mut v = x
                .slice(s![0, ch, y * 8..y * 8 + 8, xx * 8..xx * 8 + 8])
                .sum()
                / 64.0;
            if c == 3 {
                v += x
                    .slice(s![0, 1, y * 8..y * 8 + 8, xx * 8..xx * 8 + 8])
                    .sum()
                    / 64.0;
            }
            v
        })
    }

    pub fn run_decoder(
        &mut self,
        latent: ArrayView4<f32>,
        norms: Norms<'_>,
    ) -> (Array4<f32>, GroupNormStats) {
        self.largest_input = self
            .largest_input
            .max(latent.shape()[2] * latent.shape()[3]);
        let mut z = latent.to_owned();
        let s0 = match norms {
            Norms::Own => stats(&z, 1),
            Norms::Frozen(f) => f.layers[0].clone(),
        };
        normalize(&mut z, &s0);
        let (_, _, h, w) = z.dim();
        let up =
            Array4::from_shape_fn((1, 3, h * 8, w * 8), |(_, c, y, x)| z[[0, c, y / 8, x / 8]]);
        (blur(&up), GroupNormStats { layers: vec![s0] })
    }
}

impl Vae for TinyVae {
    fn encode(
        &mut self,
        image: ArrayView4<f32>,
        norms: Norms<'_>,
    ) -> NetResult<(Array4<f32>, Array4<f32>)> {
        self.calls += 1;
        let (m, _) = self.run_encoder(image, norms);
        let logvar = m.mapv(|v| 0.1 * v);
        Ok((m, logvar))
    }
    fn encoder_stats(&mut self, image: ArrayView4<f32>) -> NetResult<GroupNormStats> {
        self.calls += 1;
        self.stats_calls += 1;
        if let Some((e, _)) = &self.fixed {
            return Ok(e.clone());
        }
        Ok(self.run_encoder(image, Norms::Own).1)
    }
    fn decode(&mut self, latent: ArrayView4<f32>, norms: Norms<'_>) -> NetResult<Array4<f32>> {
        self.calls += 1;
        Ok(self.run_decoder(latent, norms).0)
    }
    fn post_quant(&mut self, latent: ArrayView4<f32>) -> NetResult<Array4<f32>> {
        self.calls += 1;
        Ok(latent.to_owned())
    }
    fn decoder_stats(&mut self, latent: ArrayView4<f32>) -> NetResult<GroupNormStats> {
        self.calls += 1;
        self.stats_calls += 1;
        if let Some((_, d)) = &self.fixed {
            return Ok(d.clone());
        }
        Ok(self.run_decoder(latent, Norms::Own).1)
    }
    fn encoder_segments(&mut self) -> NetResult<usize> {
        Ok(2)
    }
    fn encoder_head_stats(&mut self, image: ArrayView4<f32>) -> NetResult<GroupNormStats> {
        self.calls += 1;
        self.stats_calls += 1;
        Ok(GroupNormStats {
            layers: vec![stats(&image.to_owned(), 1)],
        })
    }
    fn encoder_segment(
        &mut self,
        index: usize,
        input: Carried,
        stats_in: &GroupNormStats,
    ) -> NetResult<Segmented> {
        self.calls += 1;
        let x = input.x;
        self.largest_input = self.largest_input.max(x.shape()[2] * x.shape()[3]);
        Ok(if index == 0 {
            let pooled = Self::head(x.view(), &stats_in.layers[0]);
            let seen = stats(&pooled, 2);
            Segmented::State(
                Carried {
                    x: pooled,
                    skip: None,
                },
                seen,
            )
        } else {
            let mut m = x;
            normalize(&mut m, &stats_in.layers[0]);
            let logvar = m.mapv(|v| 0.1 * v);
            Segmented::Posterior(m, logvar)
        })
    }
}

/// A UNet + ControlNet that is pointwise in space: at each latent position its noise
/// prediction depends only on the inputs there (the hint embedding is the mean of each 8×8
/// hint block; residual i mixes the embedding, the sample and the timestep; the text enters as
/// its mean). One `predict` is one network call.
#[derive(Default)]
pub struct Pointwise {
    pub calls: usize,
    pub largest_batch: usize,
    stage: Option<(Array2<f32>, Array2<f32>, [f32; RESIDUALS])>,
    embeddings: Vec<Array4<f32>>,
}

impl ControlledUnet for Pointwise {
    fn begin_stage(&mut self, c: &StageConditioning<'_>) -> NetResult<()> {
        self.stage = Some((c.cond.to_owned(), c.uncond.to_owned(), c.scales));
        self.embeddings.clear();
        Ok(())
    }

    fn embed_hints(&mut self, batch: usize, hint: ArrayView4<f32>) -> NetResult<()> {
        let (b, _, h, w) = hint.dim();
        let embedding = Array4::from_shape_fn((b, 2, h / 8, w / 8), |(n, c, y, x)| {
            hint.slice(s![n, c, y * 8..y * 8 + 8, x * 8..x * 8 + 8])
                .mean()
                .unwrap()
        });
        if batch == 0 {
            // A new layout of the tiles (fewer per call after an out-of-memory).
            self.embeddings.clear();
        }
        assert_eq!(
            batch,
            self.embeddings.len(),
            "batches are embedded in order"
        );
        self.embeddings.push(embedding);
        Ok(())
    }

    fn predict(
        &mut self,
        batch: usize,
        sample: ArrayView4<f32>,
        timestep: f32,
        prompts: Prompts,
    ) -> NetResult<Array4<f32>> {
        self.calls += 1;
        let (cond, uncond, scales) = self.stage.as_ref().expect("a stage was begun");
        let embedding = &self.embeddings[batch];
        let (n, c, h, w) = sample.dim();
        let b = embedding.len_of(Axis(0));
        self.largest_batch = self.largest_batch.max(n);
        let text: Vec<f32> = (0..n)
            .map(|i| match prompts {
                Prompts::Cond => cond.mean().unwrap(),
                Prompts::Uncond => uncond.mean().unwrap(),
                Prompts::Both if i < n / 2 => cond.mean().unwrap(),
                Prompts::Both => uncond.mean().unwrap(),
            })
            .collect();
        Ok(Array4::from_shape_fn((n, c, h, w), |(i, ch, y, x)| {
            let r: f32 = (0..RESIDUALS)
                .map(|k| {
                    scales[k]
                        * (embedding[[i % b, k % 2, y, x]]
                            + 0.01 * k as f32 * sample[[i, 0, y, x]]
                            + 1e-4 * timestep)
                })
                .sum();
            0.5 * sample[[i, ch, y, x]] + text[i] * (ch as f32 + 1.0) + r + 1e-3 * timestep
        }))
    }

    fn end_stage(&mut self) {
        self.stage = None;
        self.embeddings.clear();
    }
}

/// Nearest-neighbour ×`scale`, one "tile" per row band of 8 input rows.
pub struct NearestUpscaler {
    pub scale: usize,
    pub calls: usize,
}

impl PreUpscaler for NearestUpscaler {
    fn scale(&self) -> usize {
        self.scale
    }

    fn upscale(
        &mut self,
        rgb: ArrayView3<f32>,
        on_tile: &mut dyn FnMut(usize, usize) -> Result<(), Cancelled>,
    ) -> NetResult<Array3<f32>> {
        let (c, h, w) = rgb.dim();
        let s = self.scale;
        let bands = h.div_ceil(8);
        for band in 1..=bands {
            self.calls += 1;
            on_tile(band, bands)?;
        }
        Ok(Array3::from_shape_fn((c, h * s, w * s), |(ch, y, x)| {
            rgb[[ch, y / s, x / s]]
        }))
    }
}
