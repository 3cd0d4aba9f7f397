//! Placing canonical weights where ONNX Runtime can map them: one f32 `.safetensors` file in
//! one folder, referenced by external-data entries.
//!
//! An f32 `.safetensors` source is used in place (no copy at all). Anything else is converted
//! once into `<cache dir>/<network>-<key>.safetensors`, written to a temporary file and renamed
//! into place so a crash never leaves a half-written cache file. The key hashes the source's
//! fingerprint (size, mtime, header or pickle bytes) and the canonical names and shapes, so an
//! edited source file, or a change to the layout translation, gets a fresh conversion.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::safetensors::{self, F32Writer};
use super::source::hex;
use super::{DType, Format, Scope, SourceFile, SourceTensor, TensorMap, WeightsError};
use crate::onnx::{ElemType, ExternalTensor};

/// Bump when the conversion itself changes, to invalidate every cached file.
const CONVERSION_VERSION: &str = "tessera-weights-1";

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

    pub fn root(&self) -> Scope<'_, ExternalTensor> {
        self.tensors.root()
    }

    pub fn scope(&self, name: impl std::fmt::Display) -> Scope<'_, ExternalTensor> {
        self.tensors.scope(name)
    }
}

/// Makes `canonical` (tensors of `source` under canonical names) loadable by ONNX Runtime; see
/// the module docs. `network` names the cache file (`esrgan-….safetensors`).
pub fn materialize(
    source: &SourceFile,
    canonical: &TensorMap<SourceTensor>,
    cache_dir: &Path,
    network: &str,
) -> Result<Weights, WeightsError> {
    if source.format() == Format::Safetensors && canonical.iter().all(|(_, t)| t.is_f32_in_place())
    {
        return in_place(source, canonical);
    }
    convert(source, canonical, cache_dir, network)
}

fn in_place(
    source: &SourceFile,
    canonical: &TensorMap<SourceTensor>,
) -> Result<Weights, WeightsError> {
    let path = source.path();
    let absolute = std::path::absolute(path).map_err(|e| WeightsError::io(path, e))?;
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
        Ok::<_, WeightsError>(external(canonical_name, &t.shape, name, offset, length))
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
    network: &str,
) -> Result<Weights, WeightsError> {
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
    let file_name = format!("{network}-{}.safetensors", &hex(&key.finalize())[..24]);
    let path = cache_dir.join(&file_name);

    if let Some(weights) = reuse(&path, &file_name, canonical)? {
        return Ok(weights);
    }

    tracing::info!(
        source = %source.path().display(),
        cache = %path.display(),
        "converting weights to f32 safetensors"
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
        .prefix(".converting-")
        .suffix(".tmp")
        .tempfile_in(&cache_dir)
        .map_err(|e| cache_error(&cache_dir, e))?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| cache_error(tmp.path(), e))?;
    let mut writer = F32Writer::new(BufWriter::new(file), &order, &metadata)
        .map_err(|e| cache_error(tmp.path(), e))?;
    let mut reader = source.reader()?;
    for (name, t) in canonical.iter() {
        let data = reader.read_f32(t)?;
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
        if let Some(weights) = reuse(&path, &file_name, canonical)? {
            return Ok(weights);
        }
        return Err(cache_error(&path, e.error));
    }
    reuse(&path, &file_name, canonical)?
        .ok_or_else(|| WeightsError::corrupt(&path, "the converted file does not read back"))
}

/// The cache file's weights if it exists and holds exactly the expected f32 tensors.
fn reuse(
    path: &Path,
    file_name: &str,
    canonical: &TensorMap<SourceTensor>,
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
        let fits =
            canonical.get(&e.name).is_some_and(|t| t.shape == e.shape) && e.dtype == DType::F32;
        if !fits {
            return Ok(None);
        }
        tensors.insert(
            e.name.clone(),
            external(&e.name, &e.shape, file_name, e.offset, e.len),
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
    location: &str,
    offset: u64,
    length: u64,
) -> ExternalTensor {
    ExternalTensor {
        name: name.to_owned(),
        elem_type: ElemType::F32,
        dims: shape.iter().map(|&d| d as i64).collect(),
        location: location.to_owned(),
        offset,
        length,
    }
}
