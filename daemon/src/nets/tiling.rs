//! Splitting an image into overlapping tiles and blending the upscaled tiles back together.
//!
//! Tiles are placed like A1111's `split_grid`: as few as needed for the requested overlap,
//! spread evenly, the last one flush with the edge. Where two tiles overlap, the seam is a
//! linear ramp at most [`BLEND`] input pixels wide in the *middle* of the overlap; the rest of
//! the overlap on each side is context that the network sees but whose output is discarded.
//! With A1111's default overlap of 8 the ramp spans the whole overlap, as in A1111. With an
//! overlap of `2·R + BLEND`, where R is the network's receptive-field radius, every output
//! pixel that is used was computed with its full receptive field inside the tile, so the tiled
//! result equals the whole-image result (up to float rounding).

/// Width of the seam ramp, in input pixels.
pub const BLEND: usize = 8;

/// Tile size and overlap, in input pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    pub tile: usize,
    pub overlap: usize,
}

impl Default for Tiling {
    /// A1111's `ESRGAN_tile` / `ESRGAN_tile_overlap` defaults, which Clarity uses.
    fn default() -> Tiling {
        Tiling {
            tile: 192,
            overlap: 8,
        }
    }
}

/// A tile along one axis: where it starts and how long it is (input pixels), and the blend
/// weight of each of its output pixels (`len · scale` of them).
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub start: usize,
    pub len: usize,
    pub weights: Vec<f32>,
}

/// Tiles along one axis of `size` input pixels (a multiple of `align`), upscaled by `scale`.
///
/// Tile starts and lengths are multiples of `align` (a pixel-unshuffle network needs whole
/// blocks, and aligned tiles see the same blocks as the whole image). The weights of all tiles
/// sum to one at every output pixel.
pub fn plan_axis(size: usize, tiling: Tiling, align: usize, scale: usize) -> Vec<Span> {
    let align = align.max(1);
    debug_assert_eq!(
        size % align,
        0,
        "pad the image to a multiple of the alignment first"
    );
    let tile = (tiling.tile / align * align).max(align).min(size);
    let starts = place(
        size,
        tile,
        tiling.overlap.min(tile.saturating_sub(align)),
        align,
    );
    // Seam ramp width: bounded by the overlaps and the spacing so ramps never overlap.
    let mut ramp = BLEND as f64;
    for w in starts.windows(2) {
        ramp = ramp
            .min((w[0] + tile - w[1]) as f64)
            .min((w[1] - w[0]) as f64);
    }
    // Seam i sits between tile i and i+1, centred in their overlap.
    let seams: Vec<f64> = starts
        .windows(2)
        .map(|w| (w[1] + w[0] + tile) as f64 / 2.0)
        .collect();
    let rising = |seam: f64, x: usize| -> f32 {
        let pos = (x as f64 + 0.5) / scale as f64;
        ((pos - (seam - ramp / 2.0)) / ramp).clamp(0.0, 1.0) as f32
    };
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            let weights = (start * scale..(start + tile) * scale)
                .map(|x| {
                    let up = if i > 0 { rising(seams[i - 1], x) } else { 1.0 };
                    let down = if i + 1 < starts.len() {
                        1.0 - rising(seams[i], x)
                    } else {
                        1.0
                    };
                    up * down
                })
                .collect();
            Span {
                start,
                len: tile,
                weights,
            }
        })
        .collect()
}

/// Tile starts: the fewest tiles whose neighbours overlap by at least `overlap`.
fn place(size: usize, tile: usize, overlap: usize, align: usize) -> Vec<usize> {
    if size <= tile {
        return vec![0];
    }
    let step = tile - overlap; // > 0: overlap < tile
    let mut n = (size - overlap).div_ceil(step).max(2);
    loop {
        let room = size - tile;
        let starts: Vec<usize> = (0..n)
            .map(|i| {
                if i + 1 == n {
                    room
                } else {
                    (i * room / (n - 1)) / align * align
                }
            })
            .collect();
        if starts.windows(2).all(|w| w[0] + tile >= w[1] + overlap) {
            return starts;
        }
        n += 1; // rounding to `align` shrank an overlap; spread one more tile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coverage(spans: &[Span], size: usize, scale: usize) -> Vec<f32> {
        let mut sum = vec![0.0f32; size * scale];
        for s in spans {
            for (i, w) in s.weights.iter().enumerate() {
                sum[s.start * scale + i] += w;
            }
        }
        sum
    }

    #[test]
    fn small_images_are_one_tile() {
        let spans = plan_axis(50, Tiling::default(), 1, 4);
        assert_eq!(spans.len(), 1);
        assert_eq!((spans[0].start, spans[0].len), (0, 50));
        assert!(spans[0].weights.iter().all(|&w| w == 1.0));
    }

    #[test]
    fn a1111_grid_for_the_defaults() {
        // W = 500: cols = ceil((500 − 8) / 184) = 3, starts 0, 154, 308.
        let spans = plan_axis(500, Tiling::default(), 1, 4);
        let starts: Vec<usize> = spans.iter().map(|s| s.start).collect();
        assert_eq!(starts, [0, 154, 308]);
        for w in coverage(&spans, 500, 4) {
            assert!((w - 1.0).abs() < 1e-6, "weights sum to one, got {w}");
        }
    }

    #[test]
    fn weights_partition_unity_and_respect_context() {
        for (size, tile, overlap, align) in [
            (137, 40, 30, 1),
            (200, 64, 8, 4),
            (122, 24, 20, 2),
            (33, 16, 15, 1),
        ] {
            let tiling = Tiling { tile, overlap };
            let spans = plan_axis(size, tiling, align, 2);
            for s in &spans {
                assert_eq!(s.start % align, 0);
                assert!(s.start + s.len <= size);
            }
            for w in coverage(&spans, size, 2) {
                assert!((w - 1.0).abs() < 1e-6, "{size}/{tile}/{overlap}: sum {w}");
            }
            // Output used from a tile keeps (overlap − BLEND)/2 input pixels of context from
            // every inner edge.
            let context = overlap.saturating_sub(BLEND) / 2;
            for (i, s) in spans.iter().enumerate() {
                for (x, &w) in s.weights.iter().enumerate() {
                    if w == 0.0 {
                        continue;
                    }
                    let pos = x / 2;
                    if i > 0 {
                        assert!(
                            pos >= context,
                            "{size}/{tile}/{overlap}: tile {i} uses x={pos}"
                        );
                    }
                    if i + 1 < spans.len() {
                        assert!(s.len - 1 - pos >= context);
                    }
                }
            }
        }
    }

    #[test]
    fn overlap_larger_than_the_tile_still_progresses() {
        let spans = plan_axis(
            100,
            Tiling {
                tile: 10,
                overlap: 50,
            },
            1,
            1,
        );
        assert!(spans.len() >= 10);
        assert_eq!(spans.last().unwrap().start + 10, 100);
    }
}
