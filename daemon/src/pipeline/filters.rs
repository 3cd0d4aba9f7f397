//! Image filters applied after the pipeline: Clarity's `sharpen` (its `predict.py`), a 3×3
//! kernel with −s/10 off the centre and 1 + 8·s/10 in it, applied as PIL's `ImageFilter.Kernel`
//! does (the one-pixel border is left as it is).

use ndarray::Array3;

/// Sharpens every plane of `rgb` (`[planes, H, W]`, 0..1) with strength `amount` (0 to 10);
/// the result is clamped to 0..1.
pub fn sharpen(rgb: &mut Array3<f32>, amount: f32) {
    if amount <= 0.0 {
        return;
    }
    let (planes, h, w) = rgb.dim();
    if h < 3 || w < 3 {
        return;
    }
    let a = -amount / 10.0;
    let centre = 1.0 - 8.0 * a;
    let source = rgb.clone();
    for c in 0..planes {
        for y in 1..h - 1 {
            for x in 1..w - 1 {
                let mut ring = 0.0;
                for (dy, dx) in [
                    (0, 0),
                    (0, 1),
                    (0, 2),
                    (1, 0),
                    (1, 2),
                    (2, 0),
                    (2, 1),
                    (2, 2),
                ] {
                    ring += source[[c, y + dy - 1, x + dx - 1]];
                }
                rgb[[c, y, x]] = (centre * source[[c, y, x]] + a * ring).clamp(0.0, 1.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_areas_and_the_border_stay_and_edges_gain_contrast() {
        let mut img = Array3::from_shape_fn((1, 5, 6), |(_, _, x)| if x < 3 { 0.4 } else { 0.6 });
        let before = img.clone();
        sharpen(&mut img, 5.0);
        // Flat neighbourhoods are unchanged (the kernel sums to 1).
        assert!((img[[0, 2, 1]] - 0.4).abs() < 1e-6 && (img[[0, 2, 4]] - 0.6).abs() < 1e-6);
        // At the step: 0.4 with three 0.6 neighbours: 0.4·5 − 0.5·(5·0.4 + 3·0.6) = 0.1.
        assert!((img[[0, 2, 2]] - 0.1).abs() < 1e-6, "{}", img[[0, 2, 2]]);
        assert!((img[[0, 2, 3]] - 0.9).abs() < 1e-6);
        for x in 0..6 {
            assert_eq!(img[[0, 0, x]], before[[0, 0, x]], "border row");
        }
        let mut off = before.clone();
        sharpen(&mut off, 0.0);
        assert_eq!(off, before);
    }
}
