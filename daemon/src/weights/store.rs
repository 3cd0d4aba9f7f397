//! Placing canonical weights where ONNX Runtime can map them: one `.safetensors` file (f32, or
//! f16 for fp16 graphs) in one folder, referenced by external-data entries.
//!
//! A `.safetensors` source whose tensors already have the wanted type is used in place (no copy
//! at all). Anything else (another type, pickles, strided views, or weights patched by a
//! [`Patch`] such as fused LoRAs) is converted once into
//! `<cache dir>/<network>-<key>.safetensors`, written to a temporary file and renamed into place
//! so a crash never leaves a half-written cache file. The key hashes the source's fingerprint
//! (size, times and inode, header or pickle bytes), the canonical names and shapes, the target type and
//! the patch's fingerprint, so an edited source file, a change to the layout translation, or
//! another set of LoRAs and multipliers gets a fresh conversion, and the same ones reuse it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::safetensors::{self, F32Writer};
use super::source::hex;
use super::{DType, Format, Scope, SourceFile, SourceTensor, TensorMap, WeightsError};
use crate::onnx::{ElemType, ExternalTensor};

/// Bump when the conversion itself changes, to invalidate every cached file.
const CONVERSION_VERSION: &str = "tessera-weights-1";

/// Conversions write `<cache dir>/.converting-XXXXXX.tmp`, then rename it into place.
const TEMP_PREFIX: &str = ".converting-";
const TEMP_SUFFIX: &str = ".tmp";

/// A temporary conversion file untouched for this long belongs to a conversion that died
/// (a killed daemon, a power cut): a live one writes tensor after tensor.
pub const STALE_CONVERSION_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes temporary conversion files in `cache_dir` not written to for `older_than`, which a
/// daemon killed mid-conversion leaves behind (they are never read: only finished files are
/// renamed into place). Returns how many were removed.
pub fn remove_stale_conversions(cache_dir: &Path, older_than: std::time::Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)) {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > older_than));
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(file = %entry.path().display(), "removed an abandoned conversion");
            removed += 1;
        }
    }
    removed
}

/// The element type a graph's weights are stored and computed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    F32,
    F16,
}

impl WeightType {
    pub fn dtype(self) -> DType {
        match self {
            WeightType::F32 => DType::F32,
            WeightType::F16 => DType::F16,
        }
    }

    pub fn elem(self) -> ElemType {
        match self {
            WeightType::F32 => ElemType::F32,
            WeightType::F16 => ElemType::F16,
        }
    }
}

/// A change applied to some canonical tensors while they are converted (LoRA fusion).
pub trait Patch {
    /// Identifies the patch in cache keys: the same fingerprint must mean the same result.
    fn fingerprint(&self) -> String;
    /// Applies the patch to tensor `name` (f32, row-major, of shape `shape`), if it touches it.
    fn apply(&self, name: &str, shape: &[usize], data: &mut [f32]) -> Result<(), WeightsError>;
}

/// What [`materialize_as`] should produce.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// Names the cache file (`unet-….safetensors`).
    pub network: &'a str,
    pub weight_type: WeightType,
    pub patch: Option<&'a dyn Patch>,
}

impl<'a> Target<'a> {
    /// Plain f32 weights.
    pub fn f32(network: &'a str) -> Target<'a> {
        Target {
            network,
            weight_type: WeightType::F32,
            patch: None,
        }
    }
}

/// Canonical weights as external-data references into one f32 file.
#[derive(Clone, Debug)]
pub struct Weights {
    folder: PathBuf,
    file: PathBuf,
    converted: bool,
    tensors: TensorMap<ExternalTensor>,
}

impl Weights {
    /// The folder ONNX Runtime must resolve external data against.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The weights file (inside [`Weights::folder`]).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Whether the weights were converted into the cache (rather than used in place).
    pub fn converted(&self) -> bool {
        self.converted
    }

    pub fn tensors(&self) -> &TensorMap<ExternalTensor> {
        &self.tensors
    }

    /// f16 when every tensor is stored in f16, else f32: the type a graph over these weights
    /// computes in.
    pub fn weight_type(&self) -> WeightType {
        if !self.tensors.is_empty()
            && self
                .tensors
                .iter()
                .all(|(_, t)| t.elem_type == ElemType::F16)
        {
            WeightType::F16
        } else {
            WeightType::F32
        }
    }

    pub fn root(&self) -> Scope<'_, ExternalTensor> {
        self.tensors.root()
    }

    pub fn scope(&self, name: impl std::fmt::Display) -> Scope<'_, ExternalTensor> {
        self.tensors.scope(name)
    }

    /// Copies every tensor, in its type, into the new file `dest` (e.g. beside an exported
    /// `.onnx`) and returns the weights there.
    pub fn copy_to(&self, dest: &Path) -> Result<Weights, WeightsError> {
        let write_error = |source| WeightsError::Cache {
            path: dest.to_owned(),
            source,
        };
        let weight_type = self.weight_type();
        let order: Vec<(String, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(n, t)| (n.to_owned(), t.dims.iter().map(|&d| d as usize).collect()))
            .collect();
        let file = File::create(dest).map_err(write_error)?;
        let mut writer = F32Writer::with_dtype(
            BufWriter::new(file),
            &order,
            &BTreeMap::from([("format".to_owned(), "pt".to_owned())]),
            weight_type.dtype(),
        )
        .map_err(write_error)?;
        let mut open: Option<(String, File)> = None;
        for (name, t) in self.tensors.iter() {
            if open.as_ref().is_none_or(|(loc, _)| *loc != t.location) {
                let path = self.folder.join(&t.location);
                let f = File::open(&path).map_err(|e| WeightsError::io(&path, e))?;
                open = Some((t.location.clone(), f));
            }
            let (_, f) = open.as_mut().expect("just opened");
            let mut bytes = vec![0u8; t.length as usize];
            f.seek(SeekFrom::Start(t.offset))
                .and_then(|_| f.read_exact(&mut bytes))
                .map_err(|e| WeightsError::io(&self.folder.join(&t.location), e))?;
            let data: Vec<f32> = match t.elem_type {
                ElemType::F16 => bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                _ => bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            };
            writer.write_next(name, &data).map_err(write_error)?;
        }
        writer
            .finish()
            .map_err(write_error)?
            .into_inner()
            .map_err(|e| write_error(e.into_error()))?
            .sync_all()
            .map_err(write_error)?;
        let len = std::fs::metadata(dest).map_err(write_error)?.len();
        let header =
            safetensors::read_header(dest, &mut File::open(dest).map_err(write_error)?, len)?;
        let file_name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let tensors = header
            .entries
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    external(&e.name, &e.shape, weight_type, &file_name, e.offset, e.len),
                )
            })
            .collect();
        let folder = std::path::absolute(dest)
            .map_err(write_error)?
            .parent()
            .expect("a file lives in a folder")
            .to_owned();
        Ok(Weights {
            file: folder.join(&file_name),
            folder,
            converted: true,
            tensors,
        })
    }
}

/// Makes `canonical` (tensors of `source` under canonical names) loadable by ONNX Runtime as
/// f32; see the module docs. `network` names the cache file (`esrgan-….safetensors`).
pub fn materialize(
    source: &SourceFile,
    canonical: &TensorMap<SourceTensor>,
    cache_dir: &Path,
    network: &str,
) -> Result<Weights, WeightsError> {
    materialize_as(source, canonical, cache_dir, Target::f32(network))
}

/// [`materialize`] for any [`Target`]: f16 weights, or weights with a patch applied.
pub fn materialize_as(
    source: &SourceFile,
    canonical: &TensorMap<SourceTensor>,
    cache_dir: &Path,
    target: Target<'_>,
) -> Result<Weights, WeightsError> {
    let dtype = target.weight_type.dtype();
    if source.format() == Format::Safetensors
        && target.patch.is_none()
        && canonical.iter().all(|(_, t)| t.is_in_place(dtype))
    {
        return in_place(source, canonical, target.weight_type);
    }
    convert(source, canonical, cache_dir, target)
}

fn in_place(
    source: &SourceFile,
    canonical: &TensorMap<SourceTensor>,
    weight_type: WeightType,
) -> Result<Weights, WeightsError> {
    let path = source.path();
    // The real file, not a symlink to it: ONNX Runtime refuses external data that leaves the
    // folder it is resolved against, and users link models shared with other tools.
    let absolute = std::fs::canonicalize(path).map_err(|e| WeightsError::io(path, e))?;
    let (Some(folder), Some(name)) = (
        absolute.parent(),
        absolute.file_name().and_then(|n| n.to_str()),
    ) else {
        return Err(WeightsError::io(
            path,
            std::io::Error::other("the file name is not valid UTF-8"),
        ));
    };
    let tensors = canonical.try_map(|canonical_name, t| {
        let (offset, length) = t.file_range().expect("in-place tensors are contiguous");
        Ok::<_, WeightsError>(external(
            canonical_name,
            &t.shape,
            weight_type,
            name,
            offset,
            length,
        ))
    })?;
    Ok(Weights {
        folder: folder.to_owned(),
        file: absolute.clone(),
        converted: false,
        tensors,
    })
}

fn convert(
    source: &SourceFile,
    canonical: &TensorMap<SourceTensor>,
    cache_dir: &Path,
    target: Target<'_>,
) -> Result<Weights, WeightsError> {
    let network = target.network;
    let weight_type = target.weight_type;
    let cache_error = |path: &Path, source: std::io::Error| WeightsError::Cache {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(cache_dir).map_err(|e| cache_error(cache_dir, e))?;
    let cache_dir = std::path::absolute(cache_dir).map_err(|e| cache_error(cache_dir, e))?;

    let mut key = Sha256::new();
    key.update(CONVERSION_VERSION);
    key.update(network);
    key.update(source.fingerprint());
    for (name, t) in canonical.iter() {
        key.update(name);
        key.update(format!("{:?}", t.shape));
    }
    key.update(format!("{weight_type:?}"));
    if let Some(patch) = target.patch {
        key.update(patch.fingerprint());
    }
    let file_name = format!("{network}-{}.safetensors", &hex(&key.finalize())[..24]);
    let path = cache_dir.join(&file_name);

    if let Some(weights) = reuse(&path, &file_name, canonical, weight_type)? {
        return Ok(weights);
    }

    tracing::info!(
        source = %source.path().display(),
        cache = %path.display(),
        ?weight_type,
        "converting weights"
    );
    let order: Vec<(String, Vec<usize>)> = canonical
        .iter()
        .map(|(n, t)| (n.to_owned(), t.shape.clone()))
        .collect();
    let metadata = BTreeMap::from([
        ("format".to_owned(), "pt".to_owned()),
        (
            "tessera_source".to_owned(),
            source
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    ]);
    let tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(TEMP_SUFFIX)
        .tempfile_in(&cache_dir)
        .map_err(|e| cache_error(&cache_dir, e))?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| cache_error(tmp.path(), e))?;
    let mut writer =
        F32Writer::with_dtype(BufWriter::new(file), &order, &metadata, weight_type.dtype())
            .map_err(|e| cache_error(tmp.path(), e))?;
    let mut reader = source.reader()?;
    for (name, t) in canonical.iter() {
        let mut data = reader.read_f32(t)?;
        if let Some(patch) = target.patch {
            patch.apply(name, &t.shape, &mut data)?;
        }
        writer
            .write_next(name, &data)
            .map_err(|e| cache_error(tmp.path(), e))?;
    }
    let out = writer.finish().map_err(|e| cache_error(tmp.path(), e))?;
    out.into_inner()
        .map_err(|e| cache_error(tmp.path(), e.into_error()))?
        .sync_all()
        .map_err(|e| cache_error(tmp.path(), e))?;
    if let Err(e) = tmp.persist(&path) {
        // Another process may have finished the same conversion first; its file is as good.
        if let Some(weights) = reuse(&path, &file_name, canonical, weight_type)? {
            return Ok(weights);
        }
        return Err(cache_error(&path, e.error));
    }
    reuse(&path, &file_name, canonical, weight_type)?
        .ok_or_else(|| WeightsError::corrupt(&path, "the converted file does not read back"))
}

/// The cache file's weights if it exists and holds exactly the expected tensors.
fn reuse(
    path: &Path,
    file_name: &str,
    canonical: &TensorMap<SourceTensor>,
    weight_type: WeightType,
) -> Result<Option<Weights>, WeightsError> {
    let Ok(mut file) = File::open(path) else {
        return Ok(None);
    };
    let len = file
        .metadata()
        .map_err(|e| WeightsError::io(path, e))?
        .len();
    let Ok(header) = safetensors::read_header(path, &mut file, len) else {
        tracing::warn!(cache = %path.display(), "ignoring an unreadable cache file");
        return Ok(None);
    };
    let mut tensors = TensorMap::new();
    for e in header.entries {
        let fits = canonical.get(&e.name).is_some_and(|t| t.shape == e.shape)
            && e.dtype == weight_type.dtype();
        if !fits {
            return Ok(None);
        }
        tensors.insert(
            e.name.clone(),
            external(&e.name, &e.shape, weight_type, file_name, e.offset, e.len),
        );
    }
    if tensors.len() != canonical.len() {
        return Ok(None);
    }
    Ok(Some(Weights {
        folder: path
            .parent()
            .expect("cache files live in a folder")
            .to_owned(),
        file: path.to_owned(),
        converted: true,
        tensors,
    }))
}

fn external(
    name: &str,
    shape: &[usize],
    weight_type: WeightType,
    location: &str,
    offset: u64,
    length: u64,
) -> ExternalTensor {
    ExternalTensor {
        name: name.to_owned(),
        elem_type: weight_type.elem(),
        dims: shape.iter().map(|&d| d as i64).collect(),
        location: location.to_owned(),
        offset,
        length,
    }
}
