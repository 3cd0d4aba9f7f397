//! Framing: a little-endian `u32` payload length, then the payload, one
//! bincode-encoded [`Message`]. Lengths are checked against the caller's
//! maximum before anything is allocated, and payloads are read in bounded
//! chunks so that a lying length prefix costs nothing until bytes arrive.

use crate::message::Message;
use bincode::config;
use std::io::{self, Read, Write};

/// Default largest accepted frame: 1 GiB, enough for a 16384² RGBA 8-bit
/// image or an 8192² RGBA float one.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 1 << 30;

/// Bytes read per allocation step while a payload arrives.
const READ_CHUNK: usize = 8 << 20;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream cleanly between frames.
    #[error("the connection was closed")]
    Closed,
    /// The stream ended inside a frame.
    #[error("the connection ended inside a frame ({got} of {expected} bytes)")]
    Truncated { expected: u64, got: u64 },
    /// The length prefix exceeds the maximum.
    #[error("a frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// bincode's legacy configuration: little-endian, fixed-width integers.
fn wire_config() -> config::Configuration<config::LittleEndian, config::Fixint, config::NoLimit> {
    config::legacy()
}

/// Encodes a message as a frame payload (without the length prefix).
pub fn encode(message: &Message) -> Vec<u8> {
    bincode::serde::encode_to_vec(message, wire_config()).expect("encoding into a Vec cannot fail")
}

/// Decodes one frame payload. The whole payload must be consumed.
pub fn decode(payload: &[u8]) -> Result<Message, FrameError> {
    // bincode allocates a byte buffer or string as soon as it reads its length,
    // before it knows whether that many bytes follow. A limit on the total
    // claimed bytes, chosen from the payload's size, caps what a lying length
    // can make it reserve: 1 MiB for payloads up to 1 MiB, 256 MiB (16×) up to
    // 16 MiB, 4 GiB beyond. Through serde, bincode claims exactly the bytes it
    // consumes (each number, length and string/byte run once), so a valid
    // message never exceeds its bracket's limit.
    match payload.len() {
        0..=0x10_0000 => decode_limited::<0x10_0000>(payload),
        0x10_0001..=0x100_0000 => decode_limited::<0x1000_0000>(payload),
        _ => decode_limited::<{ u32::MAX as usize }>(payload),
    }
}

fn decode_limited<const LIMIT: usize>(payload: &[u8]) -> Result<Message, FrameError> {
    let config = wire_config().with_limit::<LIMIT>();
    let (message, used) = bincode::serde::decode_from_slice::<Message, _>(payload, config)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::Malformed(format!(
            "{} unexpected bytes after the message",
            payload.len() - used
        )));
    }
    Ok(message)
}

/// Writes one frame and flushes. The message is encoded twice, once to learn its length and
/// once straight into the writer, so that a large result is never copied into a buffer of its
/// own size first.
pub fn write_frame(writer: &mut impl Write, message: &Message) -> io::Result<()> {
    let mut counter = ByteCounter(0);
    bincode::serde::encode_into_std_write(message, &mut counter, wire_config())
        .map_err(io::Error::other)?;
    let len = u32::try_from(counter.0).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "message larger than the 4 GiB frame limit",
        )
    })?;
    let mut out = io::BufWriter::with_capacity(WRITE_BUFFER, &mut *writer);
    out.write_all(&len.to_le_bytes())?;
    bincode::serde::encode_into_std_write(message, &mut out, wire_config())
        .map_err(io::Error::other)?;
    out.flush()
}

/// Small messages go out in one write; large byte runs pass straight through.
const WRITE_BUFFER: usize = 64 * 1024;

/// A writer that only counts what it is given.
struct ByteCounter(u64);

impl Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads one frame whose payload is at most `max_bytes` long.
pub fn read_frame(reader: &mut impl Read, max_bytes: u32) -> Result<Message, FrameError> {
    let payload = read_payload(reader, max_bytes)?;
    decode(&payload)
}

/// Reads one frame's payload without decoding it.
pub fn read_payload(reader: &mut impl Read, max_bytes: u32) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; 4];
    let got = read_full(reader, &mut prefix)?;
    if got == 0 {
        return Err(FrameError::Closed);
    }
    if got < prefix.len() {
        return Err(FrameError::Truncated {
            expected: 4,
            got: got as u64,
        });
    }
    let len = u32::from_le_bytes(prefix);
    if len > max_bytes {
        return Err(FrameError::TooLarge {
            len,
            max: max_bytes,
        });
    }
    let len = len as usize;
    let mut payload = Vec::new();
    while payload.len() < len {
        let start = payload.len();
        payload.resize(start + (len - start).min(READ_CHUNK), 0);
        let got = read_full(reader, &mut payload[start..])?;
        if start + got < payload.len() {
            return Err(FrameError::Truncated {
                expected: 4 + len as u64,
                got: (4 + start + got) as u64,
            });
        }
    }
    Ok(payload)
}

/// Like `read_exact`, but reports how much was read before the end of stream.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Handshake;

    fn hello() -> Message {
        Message::Handshake(Handshake {
            protocol_version: 1,
            agent: "test".into(),
        })
    }

    #[test]
    fn a_frame_round_trips() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &hello()).unwrap();
        assert_eq!(&wire[..4], &((wire.len() - 4) as u32).to_le_bytes());
        let back = read_frame(&mut wire.as_slice(), 1024).unwrap();
        assert_eq!(back, hello());
    }

    #[test]
    fn large_frames_are_written_whole_and_read_back() {
        let message = done_of_len(0x20_0000);
        let mut wire = Vec::new();
        write_frame(&mut wire, &message).unwrap();
        assert_eq!(&wire[..4], &0x20_0000u32.to_le_bytes());
        assert_eq!(wire.len(), 4 + 0x20_0000);
        assert_eq!(read_frame(&mut wire.as_slice(), u32::MAX).unwrap(), message);
    }

    #[test]
    fn an_oversized_prefix_is_refused_before_reading_on() {
        let wire = u32::MAX.to_le_bytes();
        let err = read_frame(&mut wire.as_slice(), 1024).unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLarge {
                len: u32::MAX,
                max: 1024
            }
        ));
    }

    #[test]
    fn truncation_is_told_apart_from_a_clean_close() {
        assert!(matches!(
            read_frame(&mut [].as_slice(), 64),
            Err(FrameError::Closed)
        ));
        assert!(matches!(
            read_frame(&mut [5u8, 0].as_slice(), 64),
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        let mut wire = Vec::new();
        write_frame(&mut wire, &hello()).unwrap();
        wire.truncate(wire.len() - 1);
        assert!(matches!(
            read_frame(&mut wire.as_slice(), 1024),
            Err(FrameError::Truncated { .. })
        ));
    }

    #[test]
    fn trailing_bytes_and_unknown_tags_are_malformed() {
        let mut payload = encode(&Message::GetStatus);
        payload.push(0);
        assert!(matches!(decode(&payload), Err(FrameError::Malformed(_))));
        assert!(matches!(
            decode(&999u32.to_le_bytes()),
            Err(FrameError::Malformed(_))
        ));
    }

    /// A `Done` whose payload is exactly `len` bytes, with several timings
    /// (the in-memory `Vec<StageTiming>` is larger than its encoding).
    fn done_of_len(len: usize) -> Message {
        use crate::image::{Channels, Image, SampleFormat, Transfer};
        use crate::message::{Done, StageTiming};
        let mut done = Done {
            job: 1,
            image: Image {
                width: 1,
                height: 1,
                channels: Channels::Gray,
                sample: SampleFormat::U8,
                transfer: Transfer::Srgb,
                data: vec![],
            },
            timings: (0..8)
                .map(|i| StageTiming {
                    name: format!("stage {i}"),
                    seconds: 1.0,
                })
                .collect(),
            warnings: vec![],
        };
        let overhead = encode(&Message::Done(done.clone())).len();
        done.image.data = vec![7; len - overhead];
        Message::Done(done)
    }

    #[test]
    fn payloads_at_the_decode_limit_brackets_decode() {
        for len in [0x10_0000, 0x10_0001, 0x100_0000, 0x100_0001] {
            let message = done_of_len(len);
            let payload = encode(&message);
            assert_eq!(payload.len(), len);
            assert_eq!(decode(&payload).unwrap(), message, "{len} bytes");
        }
    }

    #[test]
    fn a_lying_string_length_does_not_allocate_it() {
        // Handshake tag, version, then a string that claims 2^40 bytes.
        let mut payload = 0u32.to_le_bytes().to_vec();
        payload.extend(1u32.to_le_bytes());
        payload.extend((1u64 << 40).to_le_bytes());
        assert!(matches!(decode(&payload), Err(FrameError::Malformed(_))));
    }
}
