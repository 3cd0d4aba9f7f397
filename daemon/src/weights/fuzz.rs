//! Entry points that run the weight-file readers on bytes in memory, for the `cargo fuzz`
//! targets in `fuzz/` and for the corpus replay in `daemon/tests/fuzz_corpus.rs`.
//!
//! Each function takes arbitrary bytes, runs them through the same code that reads a user's
//! model file, and panics only when an invariant the rest of the daemon relies on is broken
//! (a tensor view that reaches outside its storage, a byte range past the end of the file).
//! Errors are the expected outcome for almost every input and are ignored.

use std::io::{Cursor, Read};
use std::path::Path;

use super::pickle::{self, TensorDesc};
use super::{safetensors, source, torch};

/// The path the readers put into their error messages.
const INPUT: &str = "fuzz-input";

/// Storages larger than this are not read back by [`torch_zip`], to keep one run fast.
const MAX_STORAGE_READ: u64 = 1 << 20;

/// A `.safetensors` file: the first 4 bytes (little-endian) say how many zero bytes follow the
/// rest of the input in the virtual file, so that a header can describe tensors whose data the
/// input does not carry. Only the header is read, as when a model is opened.
pub fn safetensors_header(data: &[u8]) {
    let Some((extra, prefix)) = data.split_first_chunk::<4>() else {
        return;
    };
    let extra = u64::from(u32::from_le_bytes(*extra));
    let file_len = prefix.len() as u64 + extra;
    let mut file = Cursor::new(prefix).chain(std::io::repeat(0).take(extra));
    let Ok(header) = safetensors::read_header(Path::new(INPUT), &mut file, file_len) else {
        return;
    };
    for entry in &header.entries {
        let end = entry.offset.checked_add(entry.len);
        assert!(
            end.is_some_and(|end| end <= file_len),
            "`{}` reaches past the end of the file",
            entry.name
        );
        let numel = entry
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        assert_eq!(
            numel.and_then(|n| n.checked_mul(entry.dtype.size() as u64)),
            Some(entry.len),
            "`{}`: the byte range does not fit the shape",
            entry.name
        );
    }
}

/// A raw pickle stream, as found in a checkpoint's `data.pkl`: unpickled, then flattened into
/// tensor names the way a state dict is.
pub fn pickle(data: &[u8]) {
    let Ok(unpickled) = pickle::unpickle(data) else {
        return;
    };
    if let Ok(tensors) = torch::flatten(&unpickled) {
        for (name, desc) in &tensors {
            check_view(name, desc);
        }
    }
}

/// A whole PyTorch zip checkpoint: the index (zip, pickle, storage records), then every small
/// float tensor read back through its strided view, as a conversion does.
pub fn torch_zip(data: &[u8]) {
    let path = Path::new(INPUT);
    let Ok(index) = torch::read_index(path, Cursor::new(data)) else {
        return;
    };
    let mut zip = zip::ZipArchive::new(Cursor::new(data))
        .expect("a zip that read_index accepted opens again");
    for (name, desc) in &index.tensors {
        check_view(name, desc);
        let dtype = desc.storage.dtype;
        let bytes = desc.storage.numel.saturating_mul(dtype.size() as u64);
        if !dtype.is_float() || bytes > MAX_STORAGE_READ {
            continue;
        }
        if let Ok(storage) = torch::read_storage(path, &mut zip, &index.prefix, desc) {
            let values = source::gather_strided(dtype, &storage, desc);
            assert_eq!(values.len(), desc.shape.iter().product::<usize>());
        }
    }
}

/// What the converter relies on: the view stays inside its storage and is no larger than it.
fn check_view(name: &str, desc: &TensorDesc) {
    assert_eq!(desc.shape.len(), desc.strides.len(), "`{name}`: rank");
    let numel = desc
        .shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .expect("the element count fits in a u64");
    assert!(
        numel <= desc.storage.numel,
        "`{name}`: {numel} elements in a storage of {}",
        desc.storage.numel
    );
    if numel > 0 {
        let last = desc
            .shape
            .iter()
            .zip(&desc.strides)
            .try_fold(desc.offset, |at, (&n, &s)| {
                at.checked_add((n as u64 - 1).checked_mul(s as u64)?)
            })
            .expect("the last element's index fits in a u64");
        assert!(
            last < desc.storage.numel,
            "`{name}` reaches element {last} of {}",
            desc.storage.numel
        );
    }
}
