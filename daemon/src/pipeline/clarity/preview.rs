//! A preview of a region of the result: the job runs on the part of the input around the
//! region (with `preview.context` pixels of the result's context on each side), placed so that
//! every stage's latents sit on the whole job's latent grid and draw the whole job's noise at
//! the same places; the result is cropped to the region. What still differs from the whole job
//! is what sees beyond the context: the MultiDiffusion grid (fewer, smaller tiles), attention
//! and GroupNorm statistics over a smaller picture, ESRGAN's far context.

use ndarray::{ArrayD, IxDyn};
use tessera_protocol::{ErrorInfo, ErrorKind, Image, JobParams, Preset, Region};

use super::stage_plan;
use crate::pipeline::sampling::noise::{NoisePurpose, NoiseSource, gaussian};
use crate::pipeline::upscale::output_size;

/// Input pixels are cropped at multiples of this, so that the crop's canvases start on the
/// whole job's latent grid at ×2 and ×4 (8 latent pixels = 4 input pixels at ×2).
const ALIGN: u32 = 8;

/// A rectangle of input pixels: left, top, right, bottom (exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

/// Where a stage's latent sits in the whole job's latent of that stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatentWindow {
    /// The whole job's latent width and height.
    pub full: (usize, usize),
    /// The crop's first latent column and row in it.
    pub offset: (usize, usize),
}

/// How a preview runs.
#[derive(Clone, Debug, PartialEq)]
pub struct PreviewPlan {
    pub crop: Crop,
    /// The region within the crop's result.
    pub region: Region,
    pub windows: Vec<LatentWindow>,
}

/// Checks that `region` lies inside a result of `output` pixels.
pub fn check(region: &Region, output: (u64, u64)) -> Result<(), ErrorInfo> {
    let right = u64::from(region.x) + u64::from(region.width);
    let bottom = u64::from(region.y) + u64::from(region.height);
    if region.width == 0 || region.height == 0 || right > output.0 || bottom > output.1 {
        return Err(ErrorInfo::new(
            ErrorKind::InvalidParams,
            format!(
                "preview must be a non-empty rectangle inside the {}×{} result (got {}×{} at \
                 {},{})",
                output.0, output.1, region.width, region.height, region.x, region.y
            ),
        ));
    }
    Ok(())
}

/// The crop, the region within its result and the latent windows for `region` of the result
/// of `params` on an input of `input` pixels, with `context` result pixels around it.
pub fn plan(input: (u32, u32), params: &JobParams, region: Region, context: u32) -> PreviewPlan {
    let scale = f64::from(params.scale);
    let (width, height) = input;
    let lower = |v: u32, size: u32| -> u32 {
        let at = (f64::from(v.saturating_sub(context)) / scale).floor() as u32;
        (at / ALIGN * ALIGN).min(size.saturating_sub(1) / ALIGN * ALIGN)
    };
    let upper = |v: u32, size: u32| -> u32 {
        let at = (f64::from(v + context) / scale).ceil() as u32;
        (at.div_ceil(ALIGN) * ALIGN).min(size)
    };
    let crop = Crop {
        x0: lower(region.x, width),
        y0: lower(region.y, height),
        x1: upper(region.x + region.width, width),
        y1: upper(region.y + region.height, height),
    };
    let offset = |v: u32| (f64::from(v) * scale).round() as u32;
    let (cw, ch) = output_size(crop.x1 - crop.x0, crop.y1 - crop.y0, params.scale);
    // Rounding may leave the crop's result a pixel short at the far edge: the region slides in.
    let inside = |start: u32, len: u32, room: u64| -> u32 {
        (start as u64).min(room.saturating_sub(u64::from(len))) as u32
    };
    let region_in_crop = Region {
        x: inside(region.x.saturating_sub(offset(crop.x0)), region.width, cw),
        y: inside(region.y.saturating_sub(offset(crop.y0)), region.height, ch),
        width: region.width.min(cw as u32),
        height: region.height.min(ch as u32),
    };
    let (tw, th) = output_size(width, height, params.scale);
    let full = stage_plan::plan(
        (width as usize, height as usize),
        (tw as usize, th as usize),
        params.scale,
        params.creativity,
        params.multistep_factor,
        params.seed,
        params.preset == Preset::Refiners,
    );
    let mut reached = 1.0;
    let windows = full
        .iter()
        .enumerate()
        .map(|(k, stage)| {
            reached = if k + 1 == full.len() {
                scale
            } else {
                reached * stage.multiplier
            };
            let at = |v: u32| ((f64::from(v) * reached).round() as usize) / 8;
            LatentWindow {
                full: (stage.canvas.0 / 8, stage.canvas.1 / 8),
                offset: (at(crop.x0), at(crop.y0)),
            }
        })
        .collect();
    PreviewPlan {
        crop,
        region: region_in_crop,
        windows,
    }
}

/// The pixels of `image` inside `x0..x1 × y0..y1`.
pub fn crop_image(image: &Image, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> Image {
    let pixel = image.pixel_bytes();
    let row = image.width as usize * pixel;
    let (from, to) = (x0 as usize * pixel, x1 as usize * pixel);
    let mut data = Vec::with_capacity((y1 - y0) as usize * (to - from));
    for y in y0..y1 {
        let start = y as usize * row;
        data.extend_from_slice(&image.data[start + from..start + to]);
    }
    Image {
        width: x1 - x0,
        height: y1 - y0,
        channels: image.channels,
        sample: image.sample,
        transfer: image.transfer,
        data,
    }
}

/// The job's seeded noise, drawn at the places of the whole job's latents: element
/// (c, y, x) of a stage's crop latent is element (c, y + oy, x + ox) of the whole job's.
pub struct WindowNoise {
    pub seed: u64,
    pub windows: Vec<LatentWindow>,
}

impl NoiseSource for WindowNoise {
    fn noise(&mut self, stage: usize, purpose: NoisePurpose, dims: &[usize]) -> ArrayD<f32> {
        let seed = self.seed.wrapping_add(stage as u64);
        let window = self.windows[stage.min(self.windows.len() - 1)];
        let (full_w, full_h) = window.full;
        let (ox, oy) = window.offset;
        let [n, c, h, w] = dims[..] else {
            unreachable!("the stage's noise is [1, 4, h, w]")
        };
        let mut data = vec![0f32; n * c * h * w];
        for (plane, rows) in data.chunks_mut(h * w).enumerate() {
            for (y, row) in rows.chunks_mut(w).enumerate() {
                let first = plane * full_h * full_w + (y + oy) * full_w + ox;
                gaussian(seed, purpose.stream(), first, row);
            }
        }
        ArrayD::from_shape_vec(IxDyn(dims), data).expect("the length is the product of dims")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::sampling::noise::SeededNoise;
    use ndarray::s;

    #[test]
    fn the_crop_is_aligned_and_holds_the_region_with_its_context() {
        let params = JobParams::default();
        let region = Region {
            x: 300,
            y: 130,
            width: 100,
            height: 50,
        };
        let plan = plan((400, 300), &params, region, 64);
        // (300 − 64)/2 = 118 → 112; (400 + 64)/2 = 232 → 232; (130 − 64)/2 = 33 → 32;
        // (180 + 64)/2 = 122 → 128.
        assert_eq!(
            plan.crop,
            Crop {
                x0: 112,
                y0: 32,
                x1: 232,
                y1: 128
            }
        );
        assert_eq!(
            plan.region,
            Region {
                x: 300 - 224,
                y: 130 - 64,
                width: 100,
                height: 50
            }
        );
        assert_eq!(
            plan.windows,
            [LatentWindow {
                full: (100, 75),
                offset: (28, 8)
            }]
        );
        let edge = Region {
            x: 760,
            y: 0,
            width: 40,
            height: 600,
        };
        let plan = super::plan((400, 300), &params, edge, 64);
        assert_eq!((plan.crop.x1, plan.crop.y0, plan.crop.y1), (400, 0, 300));
        assert!(check(&edge, (800, 600)).is_ok());
        assert!(check(&Region { x: 761, ..edge }, (800, 600)).is_err());
        assert!(check(&Region { width: 0, ..edge }, (800, 600)).is_err());
    }

    #[test]
    fn window_noise_is_the_whole_jobs_noise_at_the_same_places() {
        let window = LatentWindow {
            full: (20, 12),
            offset: (5, 3),
        };
        let mut whole = SeededNoise { seed: 9 };
        let mut part = WindowNoise {
            seed: 9,
            windows: vec![window],
        };
        for purpose in [NoisePurpose::Posterior, NoisePurpose::Step(2)] {
            let all = whole.noise(0, purpose, &[1, 4, 12, 20]);
            let crop = part.noise(0, purpose, &[1, 4, 6, 9]);
            assert_eq!(crop.view(), all.slice(s![.., .., 3..9, 5..14]).into_dyn());
        }
    }
}
