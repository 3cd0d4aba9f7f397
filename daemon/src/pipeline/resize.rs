//! Resampling planes with a Lanczos-3 filter (the filter the reference
//! pipeline applies after ESRGAN), through the `image` crate.

use image::ImageBuffer;
use image::imageops::{self, FilterType};
use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};

/// Resizes one plane to `width` × `height`; the result is clamped to [0, 1]
/// because Lanczos rings past the input's range near hard edges.
pub fn lanczos_plane(plane: ArrayView2<f32>, width: usize, height: usize) -> Array2<f32> {
    let (h, w) = plane.dim();
    if (w, h) == (width, height) {
        return plane.to_owned();
    }
    // A contiguous plane (the usual case: a plane of a standard-layout array) is read in place:
    // after ESRGAN ×4 of a 2048² input one plane is 268 MB, and this is a job's peak.
    let copied;
    let samples: &[f32] = match plane.as_slice() {
        Some(samples) => samples,
        None => {
            copied = plane.iter().copied().collect::<Vec<f32>>();
            &copied
        }
    };
    let source: ImageBuffer<image::Luma<f32>, &[f32]> =
        ImageBuffer::from_raw(w as u32, h as u32, samples)
            .expect("the buffer matches the plane's size");
    let resized = imageops::resize(&source, width as u32, height as u32, FilterType::Lanczos3);
    Array2::from_shape_vec((height, width), resized.into_raw())
        .expect("the resized buffer matches the requested size")
        .mapv_into(|v| v.clamp(0.0, 1.0))
}

/// Resizes every plane of a `[planes, height, width]` array.
pub fn lanczos(planes: ArrayView3<f32>, width: usize, height: usize) -> Array3<f32> {
    let mut out = Array3::zeros((planes.shape()[0], height, width));
    for (index, plane) in planes.axis_iter(Axis(0)).enumerate() {
        out.index_axis_mut(Axis(0), index)
            .assign(&lanczos_plane(plane, width, height));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_plane_stays_flat_and_sizes_are_exact() {
        let plane = Array2::from_elem((5, 7), 0.25f32);
        let out = lanczos_plane(plane.view(), 17, 3);
        assert_eq!(out.dim(), (3, 17));
        assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-5));
    }

    #[test]
    fn a_strided_plane_resizes_like_its_contiguous_copy() {
        let wide = Array2::from_shape_fn((9, 12), |(y, x)| (y * x) as f32 / 100.0);
        let plane = wide.slice(ndarray::s![.., ..;2]); // every other column: [9, 6], strided
        assert!(plane.as_slice().is_none());
        let contiguous = plane.to_owned();
        assert_eq!(
            lanczos_plane(plane, 13, 4),
            lanczos_plane(contiguous.view(), 13, 4)
        );
    }

    #[test]
    fn ringing_is_clamped_and_structure_survives() {
        let mut plane = Array2::zeros((8, 8));
        plane.slice_mut(ndarray::s![.., 4..]).fill(1.0f32);
        let out = lanczos_plane(plane.view(), 32, 32);
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(out[[10, 2]] < 0.05 && out[[10, 29]] > 0.95);
    }
}
