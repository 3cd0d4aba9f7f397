//! The ControlNet tile's two inputs that the pipeline prepares: the per-residual scales
//! ("My prompt is more important": resemblance · decay^(12 − i)) and the condition image
//! (sd-webui-controlnet's "Crop and Resize" of the stage input to the canvas, as Clarity
//! configures its ControlNet unit).

use ndarray::{Array3, ArrayView3};

use crate::pipeline::resize;

/// ControlNet residuals: 12 down-block residuals and the mid-block one.
pub const RESIDUALS: usize = 13;

/// Scale of residual i (0 = after conv_in, 12 = mid block): `weight · decay^(12 − i)`.
pub fn residual_scales(weight: f32, decay: f32) -> [f32; RESIDUALS] {
    let (w, d) = (f64::from(weight), f64::from(decay));
    std::array::from_fn(|i| (w * d.powi((RESIDUALS - 1 - i) as i32)) as f32)
}

/// Colours at or below which (and above 2) sd-webui-controlnet resizes with nearest
/// neighbour instead of bicubic: such images are maps, not photographs.
const FEW_COLOURS: usize = 200;

/// The condition image for a `canvas` (w, h) from `image` (`[3, H, W]`, 0..1):
/// scale by k = max(canvas_h/H, canvas_w/W) to (round(W·k), round(H·k)), then centre-crop.
///
/// Enlarging uses OpenCV's bicubic (a = −0.75, pixel centres, replicated borders), or nearest
/// neighbour for images of 3 to 199 distinct colours (counted at 8 bits), as
/// sd-webui-controlnet's `high_quality_resize` does. A canvas smaller than the image (which
/// the stage plan never asks for) is reached with Lanczos. The two-colour case, which
/// sd-webui-controlnet re-thresholds, is resized like a photograph here.
pub fn condition_image(image: ArrayView3<f32>, canvas: (usize, usize)) -> Array3<f32> {
    let (height, width) = (image.shape()[1], image.shape()[2]);
    let (cw, ch) = canvas;
    let k = (ch as f64 / height as f64).max(cw as f64 / width as f64);
    let new_w = ((width as f64 * k).round() as usize).max(cw);
    let new_h = ((height as f64 * k).round() as usize).max(ch);
    let resized = if (new_w, new_h) == (width, height) {
        image.to_owned()
    } else if new_w < width || new_h < height {
        resize::lanczos(image, new_w, new_h)
    } else if (3..FEW_COLOURS).contains(&distinct_colours(image, FEW_COLOURS)) {
        nearest(image, new_w, new_h)
    } else {
        bicubic(image, new_w, new_h)
    };
    let (x0, y0) = ((new_w - cw) / 2, (new_h - ch) / 2);
    resized
        .slice(ndarray::s![.., y0..y0 + ch, x0..x0 + cw])
        .to_owned()
}

/// Distinct 8-bit RGB colours, counting stops at `cap`.
fn distinct_colours(image: ArrayView3<f32>, cap: usize) -> usize {
    let (h, w) = (image.shape()[1], image.shape()[2]);
    let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u32;
    let mut seen = std::collections::HashSet::new();
    for y in 0..h {
        for x in 0..w {
            let c = q(image[[0, y, x]]) << 16 | q(image[[1, y, x]]) << 8 | q(image[[2, y, x]]);
            seen.insert(c);
            if seen.len() >= cap {
                return cap;
            }
        }
    }
    seen.len()
}

/// OpenCV's INTER_NEAREST: source index ⌊dst·(src/dst)⌋.
fn nearest(image: ArrayView3<f32>, w: usize, h: usize) -> Array3<f32> {
    let (sh, sw) = (image.shape()[1], image.shape()[2]);
    let sx: Vec<usize> = (0..w)
        .map(|x| ((x as f64 * sw as f64 / w as f64) as usize).min(sw - 1))
        .collect();
    Array3::from_shape_fn((3, h, w), |(c, y, x)| {
        let y = ((y as f64 * sh as f64 / h as f64) as usize).min(sh - 1);
        image[[c, y, sx[x]]]
    })
}

/// OpenCV's (and PyTorch's) cubic convolution weights with a = −0.75 for fraction `t`.
fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let w0 = ((A * (t + 1.0) - 5.0 * A) * (t + 1.0) + 8.0 * A) * (t + 1.0) - 4.0 * A;
    let w1 = ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0;
    let u = 1.0 - t;
    let w2 = ((A + 2.0) * u - (A + 3.0)) * u * u + 1.0;
    [w0, w1, w2, 1.0 - w0 - w1 - w2]
}

/// For each output index: the four clamped source indices and their weights.
fn cubic_taps(src: usize, dst: usize) -> Vec<([usize; 4], [f32; 4])> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|i| {
            let s = (i as f64 + 0.5) * scale - 0.5;
            let base = s.floor();
            let w = cubic_weights(s - base);
            let idx = std::array::from_fn(|k| {
                (base as i64 - 1 + k as i64).clamp(0, src as i64 - 1) as usize
            });
            (idx, w.map(|v| v as f32))
        })
        .collect()
}

/// Separable bicubic resize (rows, then columns), as `cv2.resize(…, INTER_CUBIC)` on float
/// images and `torch.nn.functional.interpolate(mode="bicubic")`.
pub fn bicubic(image: ArrayView3<f32>, w: usize, h: usize) -> Array3<f32> {
    let (planes, sh, sw) = image.dim();
    let (xt, yt) = (cubic_taps(sw, w), cubic_taps(sh, h));
    let mut rows = Array3::<f32>::zeros((planes, sh, w));
    for c in 0..planes {
        for y in 0..sh {
            for (x, (idx, wt)) in xt.iter().enumerate() {
                rows[[c, y, x]] = (0..4).map(|k| wt[k] * image[[c, y, idx[k]]]).sum();
            }
        }
    }
    let mut out = Array3::<f32>::zeros((planes, h, w));
    for c in 0..planes {
        for (y, (idx, wt)) in yt.iter().enumerate() {
            for x in 0..w {
                out[[c, y, x]] = (0..4).map(|k| wt[k] * rows[[c, idx[k], x]]).sum();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_13_residual_scales_at_resemblance_0_6() {
        let expected = [
            0.0596, 0.0723, 0.0876, 0.1062, 0.1288, 0.1561, 0.1892, 0.2293, 0.2780, 0.3369, 0.4084,
            0.4950, 0.6000,
        ];
        let scales = residual_scales(0.6, 0.825);
        for (i, (s, e)) in scales.iter().zip(expected).enumerate() {
            assert!((s - e).abs() < 5e-5, "residual {i}: {s} vs {e}");
        }
        let factors = residual_scales(1.0, 0.825);
        assert!((factors[0] - 0.0994).abs() < 5e-5 && factors[11] == 0.825 && factors[12] == 1.0);
        assert_eq!(residual_scales(0.6, 1.0), [0.6; 13], "Balanced: uniform");
    }

    #[test]
    fn cubic_weights_sum_to_one_and_interpolate() {
        for t in [0.0, 0.25, 0.5, 0.9] {
            let w = cubic_weights(t);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        assert_eq!(cubic_weights(0.0), [0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn bicubic_keeps_flat_images_and_the_order_of_a_ramp() {
        let flat = Array3::from_elem((3, 5, 7), 0.4f32);
        assert!(
            bicubic(flat.view(), 17, 11)
                .iter()
                .all(|v| (v - 0.4).abs() < 1e-6)
        );
        // a = −0.75 does not reproduce ramps exactly (a = −0.5 would), but keeps them rising.
        let ramp = Array3::from_shape_fn((1, 4, 16), |(_, _, x)| x as f32);
        let up = bicubic(ramp.view(), 32, 8);
        for x in 1..32 {
            assert!(up[[0, 3, x]] > up[[0, 3, x - 1]], "x {x}");
        }
    }

    #[test]
    fn bicubic_matches_hand_computed_values() {
        // 1-D [0, 1, 0, 0] ×2: output 2 sits at source 0.75: taps 0,1,2,3 with t = 0.75.
        let src = Array3::from_shape_vec((1, 1, 4), vec![0.0, 1.0, 0.0, 0.0]).unwrap();
        let up = bicubic(src.view(), 8, 1);
        let w = cubic_weights(0.75);
        assert!((f64::from(up[[0, 0, 2]]) - w[2]).abs() < 1e-6);
        // Output 0 sits at −0.25: taps clamp to index 0 (×3) and 1.
        let w = cubic_weights(0.75);
        assert!((f64::from(up[[0, 0, 0]]) - w[3]).abs() < 1e-6);
    }

    #[test]
    fn crop_to_fill_centres_the_excess() {
        // A 40×20 photograph-like image onto a 64×64 canvas: k = 3.2 → 128×64, crop x from 32.
        let image = Array3::from_shape_fn((3, 20, 40), |(c, y, x)| {
            ((c * 800 + y * 40 + x) as f32 * 0.37).sin() * 0.5 + 0.5
        });
        let cond = condition_image(image.view(), (64, 64));
        assert_eq!(cond.dim(), (3, 64, 64));
        let full = bicubic(image.view(), 128, 64);
        assert_eq!(cond, full.slice(ndarray::s![.., .., 32..96]));
        // Exactly ×2: no crop.
        assert_eq!(
            condition_image(image.view(), (80, 40)),
            bicubic(image.view(), 80, 40)
        );
    }

    #[test]
    fn maps_with_few_colours_are_enlarged_with_nearest_neighbour() {
        let image = Array3::from_shape_fn((3, 4, 4), |(c, y, x)| ((x + y + c) % 3) as f32 / 2.0);
        let cond = condition_image(image.view(), (8, 8));
        for y in 0..8 {
            for x in 0..8 {
                assert_eq!(cond[[1, y, x]], image[[1, y / 2, x / 2]]);
            }
        }
    }
}
