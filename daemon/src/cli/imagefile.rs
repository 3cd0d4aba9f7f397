//! Image files for the CLI: decoding PNG, JPEG, WebP and TIFF (8- and 16-bit,
//! gray or colour, with or without alpha) into wire images, and encoding the
//! results back in the deepest format the output file type can hold.

use image::{DynamicImage, ImageBuffer, ImageFormat};
use std::path::Path;
use tessera_protocol::{Channels, Image, SampleFormat, Transfer};

#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error(
        "cannot tell the image format of {} from its extension; use .png, .jpg, .webp or .tif",
        .0.display()
    )]
    UnknownFormat(std::path::PathBuf),
}

/// Reads an image file as the daemon should see it.
pub fn read(path: &Path) -> Result<Image, ImageFileError> {
    let error = |source| ImageFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let decoded = image::ImageReader::open(path)
        .map_err(|e| error(image::ImageError::IoError(e)))?
        .with_guessed_format()
        .map_err(|e| error(image::ImageError::IoError(e)))?
        .decode()
        .map_err(error)?;
    let (width, height) = (decoded.width(), decoded.height());
    let u16_bytes = |s: &[u16]| s.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let f32_bytes = |s: &[f32]| s.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let (channels, sample, data) = match decoded {
        DynamicImage::ImageLuma8(i) => (Channels::Gray, SampleFormat::U8, i.into_raw()),
        DynamicImage::ImageLumaA8(i) => (Channels::GrayAlpha, SampleFormat::U8, i.into_raw()),
        DynamicImage::ImageRgb8(i) => (Channels::Rgb, SampleFormat::U8, i.into_raw()),
        DynamicImage::ImageRgba8(i) => (Channels::Rgba, SampleFormat::U8, i.into_raw()),
        DynamicImage::ImageLuma16(i) => (Channels::Gray, SampleFormat::U16, u16_bytes(&i)),
        DynamicImage::ImageLumaA16(i) => (Channels::GrayAlpha, SampleFormat::U16, u16_bytes(&i)),
        DynamicImage::ImageRgb16(i) => (Channels::Rgb, SampleFormat::U16, u16_bytes(&i)),
        DynamicImage::ImageRgba16(i) => (Channels::Rgba, SampleFormat::U16, u16_bytes(&i)),
        DynamicImage::ImageRgb32F(i) => (Channels::Rgb, SampleFormat::F32, f32_bytes(&i)),
        DynamicImage::ImageRgba32F(i) => (Channels::Rgba, SampleFormat::F32, f32_bytes(&i)),
        other => (
            Channels::Rgba,
            SampleFormat::U16,
            u16_bytes(&other.to_rgba16()),
        ),
    };
    Ok(Image {
        width,
        height,
        channels,
        sample,
        transfer: Transfer::Srgb,
        data,
    })
}

/// Turns a wire image into an `image` crate image of the same depth (the
/// crate has no float gray, so float gray becomes float RGB(A)).
pub fn to_dynamic(image: &Image) -> DynamicImage {
    let (w, h) = (image.width, image.height);
    let step = image.sample.bytes();
    let mut data = image.data.clone();
    if image.channels == Channels::Bgra {
        for px in data.chunks_exact_mut(4 * step) {
            let (blue, rest) = px.split_at_mut(step);
            blue.swap_with_slice(&mut rest[step..2 * step]);
        }
    }
    let channels = image.channels;
    let built = match image.sample {
        SampleFormat::U8 => match channels {
            Channels::Gray => ImageBuffer::from_raw(w, h, data).map(DynamicImage::ImageLuma8),
            Channels::GrayAlpha => ImageBuffer::from_raw(w, h, data).map(DynamicImage::ImageLumaA8),
            Channels::Rgb => ImageBuffer::from_raw(w, h, data).map(DynamicImage::ImageRgb8),
            Channels::Rgba | Channels::Bgra => {
                ImageBuffer::from_raw(w, h, data).map(DynamicImage::ImageRgba8)
            }
        },
        SampleFormat::U16 => {
            let samples: Vec<u16> = data
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            match channels {
                Channels::Gray => {
                    ImageBuffer::from_raw(w, h, samples).map(DynamicImage::ImageLuma16)
                }
                Channels::GrayAlpha => {
                    ImageBuffer::from_raw(w, h, samples).map(DynamicImage::ImageLumaA16)
                }
                Channels::Rgb => ImageBuffer::from_raw(w, h, samples).map(DynamicImage::ImageRgb16),
                Channels::Rgba | Channels::Bgra => {
                    ImageBuffer::from_raw(w, h, samples).map(DynamicImage::ImageRgba16)
                }
            }
        }
        SampleFormat::F16 | SampleFormat::F32 => {
            let samples: Vec<f32> = if image.sample == SampleFormat::F16 {
                data.chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect()
            } else {
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            };
            match channels {
                Channels::Gray => {
                    let rgb = samples.iter().flat_map(|&v| [v, v, v]).collect();
                    ImageBuffer::from_raw(w, h, rgb).map(DynamicImage::ImageRgb32F)
                }
                Channels::GrayAlpha => {
                    let rgba = samples
                        .chunks_exact(2)
                        .flat_map(|p| [p[0], p[0], p[0], p[1]])
                        .collect();
                    ImageBuffer::from_raw(w, h, rgba).map(DynamicImage::ImageRgba32F)
                }
                Channels::Rgb => {
                    ImageBuffer::from_raw(w, h, samples).map(DynamicImage::ImageRgb32F)
                }
                Channels::Rgba | Channels::Bgra => {
                    ImageBuffer::from_raw(w, h, samples).map(DynamicImage::ImageRgba32F)
                }
            }
        }
    };
    built.expect("a validated image fills its buffer exactly")
}

/// Writes a result, keeping as much of its depth and alpha as the file type
/// allows; returns a note when something had to be dropped.
pub fn write(image: &Image, path: &Path) -> Result<Option<String>, ImageFileError> {
    let format = ImageFormat::from_path(path)
        .map_err(|_| ImageFileError::UnknownFormat(path.to_path_buf()))?;
    let dynamic = to_dynamic(image);
    let has_alpha = image.channels.has_alpha();
    let deep = image.sample != SampleFormat::U8;
    let (converted, note) = match format {
        ImageFormat::Jpeg => {
            let note = (has_alpha || deep).then(|| {
                "JPEG holds 8-bit RGB only: alpha and extra precision were dropped".to_owned()
            });
            (DynamicImage::ImageRgb8(dynamic.to_rgb8()), note)
        }
        ImageFormat::WebP => {
            let note = deep
                .then(|| "WebP holds 8 bits per channel: extra precision was dropped".to_owned());
            let eight = if has_alpha {
                DynamicImage::ImageRgba8(dynamic.to_rgba8())
            } else {
                DynamicImage::ImageRgb8(dynamic.to_rgb8())
            };
            (eight, note)
        }
        ImageFormat::Png if matches!(image.sample, SampleFormat::F16 | SampleFormat::F32) => {
            let note = Some("PNG holds integers: the float result was saved as 16-bit".to_owned());
            let sixteen = if has_alpha {
                DynamicImage::ImageRgba16(dynamic.to_rgba16())
            } else {
                DynamicImage::ImageRgb16(dynamic.to_rgb16())
            };
            (sixteen, note)
        }
        _ => (dynamic, None),
    };
    converted
        .save_with_format(path, format)
        .map_err(|source| ImageFileError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bit_png_round_trips_exactly() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("deep.png");
        let samples: Vec<u16> = (0..2 * 3 * 4).map(|i| (i * 2731) as u16).collect();
        let image = Image {
            width: 2,
            height: 3,
            channels: Channels::Rgba,
            sample: SampleFormat::U16,
            transfer: Transfer::Srgb,
            data: samples.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        assert_eq!(write(&image, &path).unwrap(), None);
        assert_eq!(read(&path).unwrap(), image);
    }

    #[test]
    fn bgra_is_written_as_rgba_and_jpeg_drops_alpha_with_a_note() {
        let temp = tempfile::tempdir().unwrap();
        let image = Image {
            width: 1,
            height: 1,
            channels: Channels::Bgra,
            sample: SampleFormat::U8,
            transfer: Transfer::Srgb,
            data: vec![10, 20, 30, 40],
        };
        let png = temp.path().join("x.png");
        write(&image, &png).unwrap();
        assert_eq!(read(&png).unwrap().data, [30, 20, 10, 40]);
        let note = write(&image, &temp.path().join("x.jpg")).unwrap();
        assert!(note.unwrap().contains("alpha"));
        assert!(matches!(
            write(&image, &temp.path().join("x.nope")),
            Err(ImageFileError::UnknownFormat(_))
        ));
    }
}
