//! From parsed prompt chunks to the UNet's `encoder_hidden_states`: every chunk through the
//! text encoder, A1111's emphasis on each, the chunks side by side along the sequence axis.

use ndarray::{Array2, ArrayViewMut2, Axis};

use super::ParsedPrompt;
use crate::engine::EngineError;
use crate::nets::clip::TextEncoder;

/// A1111's emphasis on one chunk's encoder output `z` (`[77, C]`): each token's row is
/// multiplied by its weight, then the whole chunk is rescaled so that the mean over all its
/// elements is what it was before weighting ("Original" emphasis, the only one in v1.7; the
/// comment in A1111 admits the rescale is empirical). A1111 takes that mean over the chunk of
/// every prompt in the batch at once; here it is per prompt, which is the same for Clarity's
/// one-prompt batches. Means are accumulated in f64; the ratio is applied in f32 as torch does.
/// If the weighted mean is exactly 0 the rescale is skipped (A1111 would divide by zero).
pub fn apply_emphasis(mut z: ArrayViewMut2<f32>, weights: &[f32]) {
    assert_eq!(z.nrows(), weights.len(), "one weight per token");
    if weights.iter().all(|&w| w == 1.0) {
        return;
    }
    let mean = |z: &ArrayViewMut2<f32>| {
        (z.iter().map(|&v| f64::from(v)).sum::<f64>() / z.len().max(1) as f64) as f32
    };
    let original = mean(&z);
    for (mut row, &w) in z.rows_mut().into_iter().zip(weights) {
        row *= w;
    }
    let weighted = mean(&z);
    if weighted != 0.0 {
        z *= original / weighted;
    }
}

/// The conditioning of `parsed` for the UNet: `[77·chunks, C]`, all chunks encoded in one
/// batch, emphasis applied per chunk, then concatenated along the sequence axis (A1111's
/// `torch.hstack`).
///
/// Cond and uncond may come out with different numbers of chunks; A1111 v1.7 (with
/// `pad_cond_uncond` off, as in Clarity) then runs them as separate UNet calls instead of one
/// batch.
pub fn encode(
    encoder: &mut TextEncoder,
    parsed: &ParsedPrompt,
) -> Result<Array2<f32>, EngineError> {
    let n = parsed.chunks.len();
    let len = parsed.chunks.first().map_or(0, |c| c.ids.len());
    let ids = Array2::from_shape_fn((n, len), |(i, t)| parsed.chunks[i].ids[t]);
    let mut z = encoder.encode(ids.view())?;
    for (i, chunk) in parsed.chunks.iter().enumerate() {
        let weights: Vec<f32> = chunk.weights.iter().map(|&w| w as f32).collect();
        apply_emphasis(z.index_axis_mut(Axis(0), i), &weights);
    }
    let c = z.shape()[2];
    Ok(z.into_shape_with_order((n * len, c))
        .expect("chunks are contiguous along the sequence axis"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emphasis_keeps_the_mean() {
        let mut z = Array2::from_shape_fn((4, 3), |(i, j)| (i * 3 + j) as f32 * 0.1 - 0.2);
        let before = z.mean().unwrap();
        let untouched = z.clone();
        apply_emphasis(z.view_mut(), &[1.0; 4]);
        assert_eq!(z, untouched, "all-1 weights change nothing");
        apply_emphasis(z.view_mut(), &[1.0, 2.0, 0.5, 1.0]);
        assert!((z.mean().unwrap() - before).abs() < 1e-6);
        // Row 1 was doubled relative to row 0 before the common rescale.
        let k = z[[0, 1]] / untouched[[0, 1]];
        assert!((z[[1, 1]] / untouched[[1, 1]] - 2.0 * k).abs() < 1e-5);
    }
}
