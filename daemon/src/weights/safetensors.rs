//! The `.safetensors` format: reading just the header (names, dtypes, shapes, byte ranges),
//! validated against the file size, and writing f32 files tensor by tensor.
//!
//! Format: u64 little-endian header length `n`, `n` bytes of JSON
//! `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}}`, then the data;
//! offsets are relative to the end of the header.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use serde::Deserialize;

use super::{DType, WeightsError};

/// Headers larger than this are refused (the reference implementation uses the same cap).
const MAX_HEADER: u64 = 100 * 1024 * 1024;

/// One tensor's entry in the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte offset in the file.
    pub offset: u64,
    pub len: u64,
}

/// A parsed header.
#[derive(Debug)]
pub(crate) struct Header {
    pub entries: Vec<Entry>,
    /// The raw JSON, for fingerprinting.
    pub raw: Vec<u8>,
    /// The `__metadata__` string map (empty when absent or not strings).
    pub metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Reads and validates the header of the safetensors file `path` (open as `file`, `file_len`
/// bytes long). Only the header is read.
pub(crate) fn read_header(
    path: &Path,
    file: &mut impl Read,
    file_len: u64,
) -> Result<Header, WeightsError> {
    let corrupt = |reason: String| WeightsError::corrupt(path, reason);
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| corrupt("shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER {
        return Err(corrupt(format!("header length {n} is implausible")));
    }
    let data_start = 8 + n;
    if data_start > file_len {
        return Err(corrupt(format!(
            "header length {n} exceeds the file size {file_len}"
        )));
    }
    let mut raw = vec![0u8; n as usize];
    file.read_exact(&mut raw)
        .map_err(|e| WeightsError::io(path, e))?;
    let json: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&raw)
        .map_err(|e| corrupt(format!("header is not valid JSON: {e}")))?;
    let mut entries = Vec::with_capacity(json.len());
    let mut metadata = BTreeMap::new();
    for (name, value) in json {
        if name == "__metadata__" {
            metadata = serde_json::from_value(value).unwrap_or_default();
            continue;
        }
        let e: RawEntry = serde_json::from_value(value)
            .map_err(|e| corrupt(format!("bad header entry `{name}`: {e}")))?;
        let dtype =
            DType::from_safetensors_name(&e.dtype).ok_or_else(|| WeightsError::Unsupported {
                path: path.to_owned(),
                reason: format!("tensor `{name}` has dtype {}", e.dtype),
            })?;
        let [begin, end] = e.data_offsets;
        let numel = e
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| corrupt(format!("tensor `{name}` is impossibly large")))?;
        let expected = numel.checked_mul(dtype.size() as u64);
        if begin > end || expected != Some(end - begin) {
            return Err(corrupt(format!(
                "tensor `{name}` has a byte range that does not fit its shape"
            )));
        }
        if data_start.checked_add(end).is_none_or(|e| e > file_len) {
            return Err(corrupt(format!(
                "tensor `{name}` extends past the end of the file ({file_len} bytes)"
            )));
        }
        let shape = e
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| corrupt(format!("tensor `{name}` is impossibly large")))?;
        entries.push(Entry {
            name,
            dtype,
            shape,
            offset: data_start + begin,
            len: end - begin,
        });
    }
    Ok(Header {
        entries,
        raw,
        metadata,
    })
}

/// Writes an f32 (or f16) safetensors file, header first, then each tensor in the declared
/// order, so a multi-gigabyte conversion never holds more than one tensor in memory.
pub(crate) struct F32Writer<W: Write> {
    out: W,
    pending: std::vec::IntoIter<(String, usize)>,
    dtype: DType,
}

impl<W: Write> F32Writer<W> {
    /// Writes the header for `tensors` (name, shape), in that order, all f32.
    #[cfg(test)]
    pub fn new(
        out: W,
        tensors: &[(String, Vec<usize>)],
        metadata: &BTreeMap<String, String>,
    ) -> std::io::Result<Self> {
        Self::with_dtype(out, tensors, metadata, DType::F32)
    }

    /// The same with every tensor stored as `dtype` (F32 or F16); data is still given as f32.
    pub fn with_dtype(
        mut out: W,
        tensors: &[(String, Vec<usize>)],
        metadata: &BTreeMap<String, String>,
        dtype: DType,
    ) -> std::io::Result<Self> {
        assert!(matches!(dtype, DType::F32 | DType::F16));
        let size = dtype.size() as u64;
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
        }
        let mut offset = 0u64;
        let mut pending = Vec::with_capacity(tensors.len());
        for (name, shape) in tensors {
            let numel: usize = shape.iter().product();
            let end = offset + size * numel as u64;
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype.safetensors_name(), "shape": shape, "data_offsets": [offset, end]}),
            );
            offset = end;
            pending.push((name.clone(), numel));
        }
        let mut json = serde_json::to_vec(&header)?;
        // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
        while (8 + json.len()) % 8 != 0 {
            json.push(b' ');
        }
        out.write_all(&(json.len() as u64).to_le_bytes())?;
        out.write_all(&json)?;
        Ok(F32Writer {
            out,
            pending: pending.into_iter(),
            dtype,
        })
    }

    /// Writes the next tensor's data; it must match the declared order and size.
    pub fn write_next(&mut self, name: &str, data: &[f32]) -> std::io::Result<()> {
        match self.pending.next() {
            Some((n, numel)) if n == name && numel == data.len() => {}
            _ => {
                return Err(std::io::Error::other(format!(
                    "tensor `{name}` written out of order"
                )));
            }
        }
        let mut buf = Vec::with_capacity(data.len() * self.dtype.size());
        if self.dtype == DType::F16 {
            for v in data {
                buf.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        } else {
            for v in data {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        self.out.write_all(&buf)
    }

    /// Checks every tensor was written and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        if self.pending.next().is_some() {
            return Err(std::io::Error::other("not every tensor was written"));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let tensors = vec![("b".to_owned(), vec![2]), ("a".to_owned(), vec![2, 3])];
        let meta = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
        let mut w = F32Writer::new(File::create(&path).unwrap(), &tensors, &meta).unwrap();
        w.write_next("b", &[1.0, 2.0]).unwrap();
        assert!(w.write_next("x", &[0.0; 6]).is_err(), "order is enforced");
        let dir2 = tempfile::tempdir().unwrap();
        let path2 = dir2.path().join("w.safetensors");
        let mut w = F32Writer::new(File::create(&path2).unwrap(), &tensors, &meta).unwrap();
        w.write_next("b", &[1.0, 2.0]).unwrap();
        w.write_next("a", &[0.5; 6]).unwrap();
        w.finish().unwrap();

        let len = std::fs::metadata(&path2).unwrap().len();
        let header = read_header(&path2, &mut File::open(&path2).unwrap(), len).unwrap();
        let b = header.entries.iter().find(|e| e.name == "b").unwrap();
        assert_eq!((b.dtype, b.shape.clone(), b.len), (DType::F32, vec![2], 8));
        assert_eq!(b.offset % 8, 0, "data is 8-byte aligned");
        let bytes = std::fs::read(&path2).unwrap();
        let at = b.offset as usize;
        assert_eq!(
            f32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()),
            2.0
        );
    }

    #[test]
    fn hostile_headers_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let st = |json: &str| [&(json.len() as u64).to_le_bytes()[..], json.as_bytes()].concat();
        let cases: Vec<Vec<u8>> = vec![
            vec![1, 2, 3],                                                    // too short
            u64::MAX.to_le_bytes().to_vec(), // absurd header length
            [&20u64.to_le_bytes()[..], b"{}"].concat(), // header past EOF
            st("nope"),                      // not JSON
            st(r#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#), // data past EOF
            st(r#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#), // size mismatch
            st(
                r#"{"t":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#,
            ),
            st(r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#),
        ];
        for (i, bytes) in cases.iter().enumerate() {
            let path = dir.path().join(format!("{i}.safetensors"));
            std::fs::write(&path, bytes).unwrap();
            let r = read_header(&path, &mut File::open(&path).unwrap(), bytes.len() as u64);
            assert!(
                matches!(r, Err(WeightsError::Corrupt { .. })),
                "case {i}: {r:?}"
            );
        }
    }
}
