//! Raw image payloads: interleaved pixels in the editor's own layout and bit
//! depth, so that a plug-in never converts and a 16-bit or float layer comes
//! back exactly as precise as it went out.

use serde::{Deserialize, Serialize};

/// Channel layout of one pixel, in memory order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Channels {
    Gray,
    GrayAlpha,
    Rgb,
    Rgba,
    /// Blue, green, red, alpha: the byte order of Krita's integer RGBA layers
    /// and of Qt's ARGB32 images on little-endian machines.
    Bgra,
}

impl Channels {
    pub fn count(self) -> usize {
        match self {
            Channels::Gray => 1,
            Channels::GrayAlpha => 2,
            Channels::Rgb => 3,
            Channels::Rgba | Channels::Bgra => 4,
        }
    }

    pub fn has_alpha(self) -> bool {
        matches!(self, Channels::GrayAlpha | Channels::Rgba | Channels::Bgra)
    }
}

/// Storage of one sample. Multi-byte samples are little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SampleFormat {
    U8,
    U16,
    /// IEEE 754 half precision (Krita's F16 documents).
    F16,
    F32,
}

impl SampleFormat {
    pub fn bytes(self) -> usize {
        match self {
            SampleFormat::U8 => 1,
            SampleFormat::U16 | SampleFormat::F16 => 2,
            SampleFormat::F32 => 4,
        }
    }
}

/// How the colour values encode light. Integer samples are almost always
/// sRGB-encoded; float documents in GIMP and Krita are often linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transfer {
    Srgb,
    Linear,
}

/// An image on the wire: `height` rows of `width` pixels, no row padding,
/// straight (not premultiplied) alpha.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub channels: Channels,
    pub sample: SampleFormat,
    pub transfer: Transfer,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("channels", &self.channels)
            .field("sample", &self.sample)
            .field("transfer", &self.transfer)
            .field("data", &format_args!("[{} bytes]", self.data.len()))
            .finish()
    }
}

/// Why an image payload is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("the image is empty ({width}×{height} pixels)")]
    Empty { width: u32, height: u32 },
    #[error("a {width}×{height} image does not fit in memory on this machine")]
    Overflow { width: u32, height: u32 },
    #[error("a {width}×{height} {layout} image needs {expected} bytes but {actual} were sent")]
    ByteCount {
        width: u32,
        height: u32,
        layout: String,
        expected: usize,
        actual: usize,
    },
    #[error("the image has {pixels} pixels, more than the configured maximum of {max}")]
    TooLarge { pixels: u64, max: u64 },
}

impl Image {
    /// Bytes of one pixel.
    pub fn pixel_bytes(&self) -> usize {
        self.channels.count() * self.sample.bytes()
    }

    /// Width × height, without overflow.
    pub fn pixel_count(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// The byte count that `width`, `height`, `channels` and `sample` call
    /// for, or `None` if it does not fit in a `usize`.
    pub fn expected_len(&self) -> Option<usize> {
        usize::try_from(self.pixel_count())
            .ok()?
            .checked_mul(self.pixel_bytes())
    }

    /// Checks that the header and the bytes agree and that the image holds at
    /// least one and at most `max_pixels` pixels.
    pub fn validate(&self, max_pixels: u64) -> Result<(), ImageError> {
        let (width, height) = (self.width, self.height);
        if width == 0 || height == 0 {
            return Err(ImageError::Empty { width, height });
        }
        if self.pixel_count() > max_pixels {
            return Err(ImageError::TooLarge {
                pixels: self.pixel_count(),
                max: max_pixels,
            });
        }
        let expected = self
            .expected_len()
            .ok_or(ImageError::Overflow { width, height })?;
        if expected != self.data.len() {
            return Err(ImageError::ByteCount {
                width,
                height,
                layout: format!("{:?} {:?}", self.channels, self.sample),
                expected,
                actual: self.data.len(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: u32, height: u32, len: usize) -> Image {
        Image {
            width,
            height,
            channels: Channels::Rgba,
            sample: SampleFormat::U16,
            transfer: Transfer::Srgb,
            data: vec![0; len],
        }
    }

    #[test]
    fn byte_count_must_match_the_header() {
        assert_eq!(image(3, 2, 48).validate(u64::MAX), Ok(()));
        assert!(matches!(
            image(3, 2, 47).validate(u64::MAX),
            Err(ImageError::ByteCount {
                expected: 48,
                actual: 47,
                ..
            })
        ));
    }

    #[test]
    fn empty_and_oversized_images_are_refused() {
        assert!(matches!(
            image(0, 5, 0).validate(u64::MAX),
            Err(ImageError::Empty { .. })
        ));
        assert!(matches!(
            image(5, 0, 0).validate(u64::MAX),
            Err(ImageError::Empty { .. })
        ));
        assert!(matches!(
            image(4, 4, 128).validate(15),
            Err(ImageError::TooLarge {
                pixels: 16,
                max: 15
            })
        ));
    }

    #[test]
    fn absurd_dimensions_do_not_overflow() {
        let huge = image(u32::MAX, u32::MAX, 0);
        assert!(huge.validate(u64::MAX).is_err());
    }
}
