//! Fuzzing entry points: every reader of untrusted bytes (frames and messages from clients,
//! weight files, image payloads), callable on a byte slice. The `cargo fuzz` targets in
//! `fuzz/` are one-line wrappers around these, and `daemon/tests/fuzz_corpus.rs` replays the
//! committed corpus through them on stable Rust, so CI exercises the same code without
//! nightly. Compiled with the cargo feature `fuzzing` only.
//!
//! An entry point panics only when an invariant is broken (a decoded message that does not
//! re-encode to the same bytes, a converted image of the wrong size); rejecting the input with
//! an error is the normal outcome.

use crate::pipeline::pixels::{self, PixelFormat};
use crate::pipeline::resize;
use tessera_protocol::frame::read_payload;
use tessera_protocol::{Channels, Image, SampleFormat, Transfer, decode, encode};

pub use crate::weights::fuzz::{pickle, safetensors_header, torch_zip};

/// Largest frame the `frames` target accepts, small so that one input holds many frames.
const FUZZ_MAX_FRAME: u32 = 1 << 16;

/// Largest image (in pixels) the `image` target converts and resizes.
const FUZZ_MAX_PIXELS: u64 = 1 << 12;

/// A target: its name (the folder under `fuzz/corpus/`) and its entry point.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every fuzz target, in the order `scripts/fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frames",
        run: frames,
    },
    Target {
        name: "message",
        run: message,
    },
    Target {
        name: "safetensors_header",
        run: safetensors_header,
    },
    Target {
        name: "pickle",
        run: pickle,
    },
    Target {
        name: "torch_zip",
        run: torch_zip,
    },
    Target {
        name: "image",
        run: image,
    },
];

/// A byte stream from a client: frames are read one after another (length prefix checked
/// against a maximum, payload read in chunks) until the stream ends or breaks, and each
/// payload goes through [`message`].
pub fn frames(data: &[u8]) {
    let mut stream = data;
    while let Ok(payload) = read_payload(&mut stream, FUZZ_MAX_FRAME) {
        assert!(payload.len() <= FUZZ_MAX_FRAME as usize);
        message(&payload);
    }
}

/// One frame payload: decoded as a `Message`; whatever decodes must re-encode to exactly the
/// same bytes (the wire format has one encoding per message, which the Python mirror relies on).
pub fn message(payload: &[u8]) {
    if let Ok(message) = decode(payload) {
        assert!(
            encode(&message) == payload,
            "{message:?} does not re-encode to its bytes"
        );
    }
}

/// An image payload as a `Submit` carries it, validated as the daemon does; a valid one is
/// converted to the network's planar form and back, and resized as the pipeline would.
///
/// Input: channels, sample format, transfer (one byte each), width and height (little-endian
/// `u32`), a resize factor (one byte), then the pixel bytes.
pub fn image(data: &[u8]) {
    let Some((head, pixels)) = data.split_first_chunk::<12>() else {
        return;
    };
    let channels = [
        Channels::Gray,
        Channels::GrayAlpha,
        Channels::Rgb,
        Channels::Rgba,
        Channels::Bgra,
    ][usize::from(head[0]) % 5];
    let sample = [
        SampleFormat::U8,
        SampleFormat::U16,
        SampleFormat::F16,
        SampleFormat::F32,
    ][usize::from(head[1]) % 4];
    let transfer = [Transfer::Srgb, Transfer::Linear][usize::from(head[2]) % 2];
    let image = Image {
        width: u32::from_le_bytes([head[3], head[4], head[5], head[6]]),
        height: u32::from_le_bytes([head[7], head[8], head[9], head[10]]),
        channels,
        sample,
        transfer,
        data: pixels.to_vec(),
    };
    if image.validate(u64::MAX).is_err() || image.pixel_count() > FUZZ_MAX_PIXELS {
        return;
    }
    let format = PixelFormat::of(&image);
    let planar = pixels::to_planar(&image);
    assert_eq!(
        (planar.width(), planar.height()),
        (image.width as usize, image.height as usize)
    );
    assert!(
        planar.rgb.iter().all(|v| (0.0..=1.0).contains(v)),
        "the network sees values in [0, 1]"
    );
    let back = pixels::from_planar(&planar, format);
    assert_eq!(back.data.len(), image.data.len());
    if transfer == Transfer::Srgb && matches!(sample, SampleFormat::U8 | SampleFormat::U16) {
        assert!(back == image, "integer sRGB pixels round-trip exactly");
    }
    // The pipeline's own resampling, to a size derived from the input.
    let factor = usize::from(head[11] % 8) + 1;
    let (w, h) = (
        (planar.width() * factor / 3).max(1),
        (planar.height() * factor / 3).max(1),
    );
    let resized = resize::lanczos(planar.rgb.view(), w, h);
    assert_eq!(resized.shape(), [3, h, w]);
    assert!(resized.iter().all(|v| v.is_finite()));
    if let Some(alpha) = &planar.alpha {
        let resized = resize::lanczos_plane(alpha.view(), w, h);
        assert_eq!(resized.shape(), [h, w]);
    }
}
