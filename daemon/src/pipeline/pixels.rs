//! Pixel formats at the edges of the pipeline. Inside, an image is planar
//! `f32`: three sRGB-encoded colour planes in [0, 1] plus an optional straight
//! alpha plane; at the edges it is whatever the editor sent (8/16-bit integer,
//! half or single float, gray/RGB/RGBA/BGRA, sRGB or linear), and the result
//! goes back in exactly that format.

use ndarray::{Array2, Array3, Axis};
use tessera_protocol::{Channels, Image, SampleFormat, Transfer};

/// An image as the networks see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Planar {
    /// `[3, height, width]`, R, G, B, sRGB-encoded, clamped to [0, 1].
    pub rgb: Array3<f32>,
    /// `[height, width]` in [0, 1], when the input had alpha.
    pub alpha: Option<Array2<f32>>,
}

impl Planar {
    pub fn width(&self) -> usize {
        self.rgb.shape()[2]
    }

    pub fn height(&self) -> usize {
        self.rgb.shape()[1]
    }
}

/// The wire format of an image, without its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    pub channels: Channels,
    pub sample: SampleFormat,
    pub transfer: Transfer,
}

impl PixelFormat {
    pub fn of(image: &Image) -> PixelFormat {
        PixelFormat {
            channels: image.channels,
            sample: image.sample,
            transfer: image.transfer,
        }
    }
}

/// Where each of R, G, B and alpha sits within a pixel (gray: all three at 0).
fn offsets(channels: Channels) -> ([usize; 3], Option<usize>) {
    match channels {
        Channels::Gray => ([0, 0, 0], None),
        Channels::GrayAlpha => ([0, 0, 0], Some(1)),
        Channels::Rgb => ([0, 1, 2], None),
        Channels::Rgba => ([0, 1, 2], Some(3)),
        Channels::Bgra => ([2, 1, 0], Some(3)),
    }
}

fn read_sample(bytes: &[u8], sample: SampleFormat) -> f32 {
    let value = match sample {
        SampleFormat::U8 => return f32::from(bytes[0]) / 255.0,
        SampleFormat::U16 => return f32::from(u16::from_le_bytes([bytes[0], bytes[1]])) / 65535.0,
        SampleFormat::F16 => half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(),
        SampleFormat::F32 => f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
    };
    // Float documents may hold NaN or values beyond [0, 1]; the networks
    // take sRGB-range values, so out-of-range light is clipped.
    if value.is_nan() {
        0.0
    } else {
        value.clamp(0.0, 1.0)
    }
}

fn write_sample(out: &mut [u8], value: f32, sample: SampleFormat) {
    let value = value.clamp(0.0, 1.0);
    match sample {
        SampleFormat::U8 => out[0] = (value * 255.0).round() as u8,
        SampleFormat::U16 => out.copy_from_slice(&((value * 65535.0).round() as u16).to_le_bytes()),
        SampleFormat::F16 => out.copy_from_slice(&half::f16::from_f32(value).to_le_bytes()),
        SampleFormat::F32 => out.copy_from_slice(&value.to_le_bytes()),
    }
}

/// sRGB transfer function (IEC 61966-2-1), linear light → encoded.
pub fn linear_to_srgb(v: f32) -> f32 {
    if v <= 0.003_130_8 {
        12.92 * v
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    }
}

/// Inverse sRGB transfer function, encoded → linear light.
pub fn srgb_to_linear(v: f32) -> f32 {
    if v <= 0.040_45 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

/// Unpacks a validated wire image.
pub fn to_planar(image: &Image) -> Planar {
    let (width, height) = (image.width as usize, image.height as usize);
    let (colour, alpha_at) = offsets(image.channels);
    let sample = image.sample;
    let step = sample.bytes();
    let pixel = image.pixel_bytes();
    let linear = image.transfer == Transfer::Linear;
    let mut rgb = Array3::<f32>::zeros((3, height, width));
    let mut alpha = alpha_at.map(|_| Array2::<f32>::zeros((height, width)));
    for (index, px) in image.data.chunks_exact(pixel).enumerate() {
        let (y, x) = (index / width, index % width);
        for (plane, &at) in colour.iter().enumerate() {
            let v = read_sample(&px[at * step..], sample);
            rgb[[plane, y, x]] = if linear { linear_to_srgb(v) } else { v };
        }
        if let (Some(a), Some(at)) = (alpha.as_mut(), alpha_at) {
            a[[y, x]] = read_sample(&px[at * step..], sample);
        }
    }
    Planar { rgb, alpha }
}

/// Packs planes into a wire image of the given format. A gray image gets the
/// mean of the three planes; a format without alpha drops it; a format with
/// alpha but no alpha plane gets opaque pixels.
pub fn from_planar(planar: &Planar, format: PixelFormat) -> Image {
    let (width, height) = (planar.width(), planar.height());
    let (colour, alpha_at) = offsets(format.channels);
    let step = format.sample.bytes();
    let pixel = format.channels.count() * step;
    let linear = format.transfer == Transfer::Linear;
    let gray = matches!(format.channels, Channels::Gray | Channels::GrayAlpha);
    let mut data = vec![0u8; width * height * pixel];
    for (index, px) in data.chunks_exact_mut(pixel).enumerate() {
        let (y, x) = (index / width, index % width);
        let encode = |v: f32| if linear { srgb_to_linear(v) } else { v };
        if gray {
            let mean = planar.rgb.index_axis(Axis(1), y).column(x).sum() / 3.0;
            write_sample(&mut px[..step], encode(mean), format.sample);
        } else {
            for (plane, &at) in colour.iter().enumerate() {
                let v = encode(planar.rgb[[plane, y, x]]);
                write_sample(&mut px[at * step..(at + 1) * step], v, format.sample);
            }
        }
        if let Some(at) = alpha_at {
            let a = planar.alpha.as_ref().map_or(1.0, |a| a[[y, x]]);
            write_sample(&mut px[at * step..(at + 1) * step], a, format.sample);
        }
    }
    Image {
        width: width as u32,
        height: height as u32,
        channels: format.channels,
        sample: format.sample,
        transfer: format.transfer,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(channels: Channels, sample: SampleFormat, transfer: Transfer, data: Vec<u8>) -> Image {
        let image = Image {
            width: 2,
            height: 1,
            channels,
            sample,
            transfer,
            data,
        };
        image.validate(u64::MAX).unwrap();
        image
    }

    #[test]
    fn bgra_bytes_land_in_rgb_planes() {
        let input = image(
            Channels::Bgra,
            SampleFormat::U8,
            Transfer::Srgb,
            vec![10, 20, 30, 255, 0, 0, 255, 128],
        );
        let planar = to_planar(&input);
        assert_eq!(planar.rgb[[0, 0, 0]], 30.0 / 255.0, "red comes from byte 2");
        assert_eq!(
            planar.rgb[[2, 0, 0]],
            10.0 / 255.0,
            "blue comes from byte 0"
        );
        assert_eq!(planar.rgb[[0, 0, 1]], 1.0);
        assert_eq!(planar.alpha.as_ref().unwrap()[[0, 1]], 128.0 / 255.0);
        assert_eq!(from_planar(&planar, PixelFormat::of(&input)), input);
    }

    #[test]
    fn every_integer_and_float_format_round_trips_exactly() {
        let u16s: Vec<u8> = [0u16, 1, 32768, 65535, 4660, 22136]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f32s: Vec<u8> = [0.0f32, 0.25, 1.0, 0.5, 0.125, 0.75]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f16s: Vec<u8> = [0.0f32, 0.25, 1.0, 0.5]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        for input in [
            image(Channels::Rgb, SampleFormat::U16, Transfer::Srgb, u16s),
            image(Channels::Rgb, SampleFormat::F32, Transfer::Srgb, f32s),
            image(Channels::GrayAlpha, SampleFormat::F16, Transfer::Srgb, f16s),
            image(
                Channels::Gray,
                SampleFormat::U8,
                Transfer::Srgb,
                vec![7, 250],
            ),
            image(
                Channels::Rgba,
                SampleFormat::U8,
                Transfer::Srgb,
                vec![1, 2, 3, 4, 5, 6, 7, 8],
            ),
        ] {
            assert_eq!(
                from_planar(&to_planar(&input), PixelFormat::of(&input)),
                input,
                "{:?}",
                input
            );
        }
    }

    #[test]
    fn linear_floats_are_encoded_for_the_network_and_decoded_back() {
        let f32s: Vec<u8> = [0.2f32, 0.2, 0.2, 0.5, 0.5, 0.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let input = image(Channels::Rgb, SampleFormat::F32, Transfer::Linear, f32s);
        let planar = to_planar(&input);
        assert!(
            (planar.rgb[[0, 0, 1]] - 0.735_357).abs() < 1e-5,
            "0.5 linear is 0.7354 encoded"
        );
        let back = from_planar(&planar, PixelFormat::of(&input));
        for (a, b) in back.data.chunks(4).zip(input.data.chunks(4)) {
            let (a, b) = (
                f32::from_le_bytes(a.try_into().unwrap()),
                f32::from_le_bytes(b.try_into().unwrap()),
            );
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn out_of_range_floats_are_clipped() {
        let f32s: Vec<u8> = [f32::NAN, -1.0, 7.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let input = Image {
            width: 3,
            height: 1,
            channels: Channels::Gray,
            sample: SampleFormat::F32,
            transfer: Transfer::Srgb,
            data: f32s,
        };
        let planar = to_planar(&input);
        assert_eq!(
            planar
                .rgb
                .index_axis(Axis(0), 0)
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            [0.0, 0.0, 1.0]
        );
    }

    #[test]
    fn missing_alpha_becomes_opaque() {
        let input = image(
            Channels::Rgb,
            SampleFormat::U8,
            Transfer::Srgb,
            vec![1, 2, 3, 4, 5, 6],
        );
        let format = PixelFormat {
            channels: Channels::Rgba,
            ..PixelFormat::of(&input)
        };
        assert_eq!(
            from_planar(&to_planar(&input), format).data,
            [1, 2, 3, 255, 4, 5, 6, 255]
        );
    }
}
