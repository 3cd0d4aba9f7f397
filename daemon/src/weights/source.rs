//! A model file as a list of tensors (name, dtype, shape, where the bytes are), whatever its
//! format, plus the means to read one tensor as f32 when a conversion needs it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use sha2::{Digest, Sha256};

use super::pickle::TensorDesc;
use super::{DType, TensorMap, WeightsError, safetensors, torch};

/// Container format of a weight file, told by its first bytes (not its extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// `torch.save` zip (`.pth`, `.pt`, `.ckpt`, `.bin`).
    Torch,
}

/// One tensor of a source file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub(crate) data: DataRef,
}

impl SourceTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the bytes are f32, contiguous, directly in the file, so ONNX Runtime can map
    /// them in place.
    pub fn is_f32_in_place(&self) -> bool {
        self.is_in_place(DType::F32)
    }

    /// Whether the bytes are `dtype`, contiguous, directly in the file.
    pub fn is_in_place(&self, dtype: DType) -> bool {
        self.dtype == dtype && matches!(self.data, DataRef::Contiguous { .. })
    }

    /// The same tensor with its trailing size-1 axes dropped down to `rank` axes (a 1×1
    /// convolution kernel seen as a Linear weight); `None` if those axes are not all 1.
    pub fn squeezed(&self, rank: usize) -> Option<SourceTensor> {
        if self.shape.len() < rank || self.shape[rank..].iter().any(|&d| d != 1) {
            return None;
        }
        let mut t = self.clone();
        t.shape.truncate(rank);
        if let DataRef::Torch(desc) = &mut t.data {
            // Size-1 axes never move the element offset, so their strides can simply go.
            desc.shape.truncate(rank);
            desc.strides.truncate(rank);
        }
        Some(t)
    }

    /// `(absolute byte offset, byte length)` when the data is contiguous in the file.
    pub fn file_range(&self) -> Option<(u64, u64)> {
        match self.data {
            DataRef::Contiguous { offset, len } => Some((offset, len)),
            DataRef::Torch(_) => None,
        }
    }
}

/// Where a tensor's bytes live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DataRef {
    /// Contiguous little-endian bytes at an absolute file offset.
    Contiguous { offset: u64, len: u64 },
    /// A strided view of a storage record inside a torch zip.
    Torch(TensorDesc),
}

/// An opened weight file: its tensors under their original names.
#[derive(Debug)]
pub struct SourceFile {
    path: PathBuf,
    format: Format,
    tensors: TensorMap<SourceTensor>,
    fingerprint: String,
    torch_prefix: Arc<str>,
    metadata: std::collections::BTreeMap<String, String>,
    skipped: Vec<String>,
}

impl SourceFile {
    /// Reads the header (safetensors) or the pickle (torch zip) of `path`. No tensor data is
    /// read. Wrapper dicts (`params_ema`, `state_dict`, …) and a common `module.` prefix are
    /// removed so that layout detection sees the state dict itself.
    pub fn open(path: &Path) -> Result<SourceFile, WeightsError> {
        let mut file = File::open(path).map_err(|e| WeightsError::io(path, e))?;
        let meta = file.metadata().map_err(|e| WeightsError::io(path, e))?;
        if !meta.is_file() {
            return Err(WeightsError::io(
                path,
                std::io::Error::other("not a regular file"),
            ));
        }
        let len = meta.len();
        let mut head = [0u8; 16];
        let n = read_up_to(&mut file, &mut head).map_err(|e| WeightsError::io(path, e))?;
        let head = &head[..n];
        file.seek(SeekFrom::Start(0))
            .map_err(|e| WeightsError::io(path, e))?;

        let mut metadata = std::collections::BTreeMap::new();
        let mut skipped = Vec::new();
        let (format, names, fingerprint_bytes, prefix) = if head.starts_with(b"PK\x03\x04") {
            let index = torch::read_index(path, file)?;
            skipped = index.skipped;
            let tensors = index
                .tensors
                .into_iter()
                .map(|(name, desc)| {
                    let t = SourceTensor {
                        dtype: desc.storage.dtype,
                        shape: desc.shape.clone(),
                        data: DataRef::Torch(desc),
                    };
                    (name, t)
                })
                .collect::<Vec<_>>();
            (Format::Torch, tensors, index.pickle, index.prefix)
        } else if torch::is_legacy(head) {
            return Err(WeightsError::Unsupported {
                path: path.to_owned(),
                reason: "this is the legacy (before PyTorch 1.6) checkpoint format; re-save it with a current torch.save or convert it to .safetensors".into(),
            });
        } else if head.len() >= 9 && head[8] == b'{' {
            let header = safetensors::read_header(path, &mut file, len)?;
            metadata = header.metadata;
            let tensors = header
                .entries
                .into_iter()
                .map(|e| {
                    let t = SourceTensor {
                        dtype: e.dtype,
                        shape: e.shape,
                        data: DataRef::Contiguous {
                            offset: e.offset,
                            len: e.len,
                        },
                    };
                    (e.name, t)
                })
                .collect::<Vec<_>>();
            (Format::Safetensors, tensors, header.raw, String::new())
        } else {
            return Err(WeightsError::Unsupported {
                path: path.to_owned(),
                reason: "neither a .safetensors file nor a PyTorch zip checkpoint".into(),
            });
        };

        let mut hash = Sha256::new();
        hash.update(crate::store::FileStamp::of(&meta).to_bytes());
        hash.update(&fingerprint_bytes);
        let fingerprint = hex(&hash.finalize());

        Ok(SourceFile {
            path: path.to_owned(),
            format,
            tensors: strip_common_prefix(names),
            fingerprint,
            torch_prefix: prefix.into(),
            metadata,
            skipped,
        })
    }

    /// Top-level entries of a torch checkpoint that hold tensors but were left out for a
    /// preferred wrapper beside them (`params` beside `params_ema`).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// A value of a `.safetensors` file's `__metadata__` map.
    pub fn metadata(&self, key: &str) -> Option<String> {
        self.metadata.get(key).cloned()
    }

    pub fn tensors(&self) -> &TensorMap<SourceTensor> {
        &self.tensors
    }

    /// Changes when the file's [`FileStamp`](crate::store::FileStamp) (size, times, inode) or
    /// header/pickle changes; keys converted copies.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A reader for tensor data (one open file handle, reused).
    pub(crate) fn reader(&self) -> Result<Reader<'_>, WeightsError> {
        let file = File::open(&self.path).map_err(|e| WeightsError::io(&self.path, e))?;
        let zip = match self.format {
            Format::Torch => Some(
                zip::ZipArchive::new(
                    file.try_clone()
                        .map_err(|e| WeightsError::io(&self.path, e))?,
                )
                .map_err(|e| WeightsError::corrupt(&self.path, e.to_string()))?,
            ),
            Format::Safetensors => None,
        };
        Ok(Reader {
            source: self,
            file,
            zip,
            last_storage: None,
        })
    }
}

/// Reads tensors of one source file as f32.
pub(crate) struct Reader<'a> {
    source: &'a SourceFile,
    file: File,
    zip: Option<zip::ZipArchive<File>>,
    /// Consecutive tensors often share a storage record (views); keep the last one.
    last_storage: Option<(String, Vec<u8>)>,
}

impl Reader<'_> {
    /// The tensor's elements as f32 in row-major order.
    pub fn read_f32(&mut self, t: &SourceTensor) -> Result<Vec<f32>, WeightsError> {
        let path = &self.source.path;
        if !t.dtype.is_float() {
            return Err(WeightsError::Unsupported {
                path: path.clone(),
                reason: format!("a weight of integer type {:?}", t.dtype),
            });
        }
        match &t.data {
            DataRef::Contiguous { offset, len } => {
                let mut bytes =
                    vec![
                        0u8;
                        usize::try_from(*len)
                            .map_err(|_| WeightsError::corrupt(path, "tensor too large"))?
                    ];
                self.file
                    .seek(SeekFrom::Start(*offset))
                    .and_then(|_| self.file.read_exact(&mut bytes))
                    .map_err(|e| WeightsError::io(path, e))?;
                Ok(decode_all(t.dtype, &bytes))
            }
            DataRef::Torch(desc) => {
                let key = desc.storage.key.clone();
                if self.last_storage.as_ref().is_none_or(|(k, _)| *k != key) {
                    let zip = self.zip.as_mut().expect("torch sources have a zip");
                    let bytes = torch::read_storage(path, zip, &self.source.torch_prefix, desc)?;
                    self.last_storage = Some((key, bytes));
                }
                let storage = &self.last_storage.as_ref().expect("just filled").1;
                Ok(gather_strided(t.dtype, storage, desc))
            }
        }
    }
}

fn decode_all(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    let n = dtype.size();
    bytes
        .chunks_exact(n)
        .map(|c| decode_one(dtype, c))
        .collect()
}

fn decode_one(dtype: DType, c: &[u8]) -> f32 {
    match dtype {
        DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
        DType::F16 => f16::from_le_bytes([c[0], c[1]]).to_f32(),
        DType::BF16 => bf16::from_le_bytes([c[0], c[1]]).to_f32(),
        DType::F64 => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
        _ => unreachable!("only float dtypes are decoded"),
    }
}

/// Copies a strided view out of its storage (bounds were checked when the pickle was read).
pub(super) fn gather_strided(dtype: DType, storage: &[u8], desc: &TensorDesc) -> Vec<f32> {
    let numel: usize = desc.shape.iter().product();
    let size = dtype.size();
    let mut out = Vec::with_capacity(numel);
    let mut index = vec![0usize; desc.shape.len()];
    for _ in 0..numel {
        let elem = desc.offset as usize
            + index
                .iter()
                .zip(&desc.strides)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.push(decode_one(dtype, &storage[elem * size..(elem + 1) * size]));
        // Odometer increment, last axis fastest.
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            if index[axis] < desc.shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    out
}

/// Removes a `module.` / `netG.` prefix shared by every key (DataParallel and GAN training
/// leave them), like spandrel's canonicalisation.
fn strip_common_prefix(names: Vec<(String, SourceTensor)>) -> TensorMap<SourceTensor> {
    for prefix in ["module.", "netG."] {
        if !names.is_empty() && names.iter().all(|(n, _)| n.starts_with(prefix)) {
            return names
                .into_iter()
                .map(|(n, t)| (n[prefix.len()..].to_owned(), t))
                .collect();
        }
    }
    names.into_iter().collect()
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
