//! PyTorch checkpoints (`torch.save` since 1.6: a zip with `<name>/data.pkl` and one record per
//! storage under `<name>/data/`), read through the restricted unpickler.
//!
//! Only the pickle is read here; tensor bytes stay in the zip until a conversion asks for them.
//! The legacy pre-1.6 format (a bare pickle stream) is refused with a message saying so.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::Path;

use super::WeightsError;
use super::pickle::{self, Object, PickleError, TensorDesc, Unpickled, Value};

/// A `data.pkl` larger than this is refused; real state dicts have a few hundred KB.
const MAX_PICKLE: u64 = 64 * 1024 * 1024;
/// Keys under which training checkpoints wrap their state dict, in order of preference (the
/// same list spandrel uses: EMA weights before raw ones).
const WRAPPERS: [&str; 7] = [
    "model_state_dict",
    "state_dict",
    "params_ema",
    "params-ema",
    "params",
    "model",
    "net",
];
const MAX_DEPTH: usize = 32;
const MAX_TENSORS: usize = 1 << 20;
/// Dict entries visited while flattening; shared sub-dicts could otherwise make the walk
/// exponential.
const MAX_VISITS: usize = 1 << 22;
/// Longest flattened tensor name, and all names together: long keys shared through the memo
/// at every level of a nested dict would otherwise multiply into gigabytes of names.
const MAX_NAME_BYTES: usize = 1024;
const MAX_TOTAL_NAME_BYTES: usize = 64 << 20;

/// Whether `head` (the first bytes of a file) look like the legacy torch format.
pub(crate) fn is_legacy(head: &[u8]) -> bool {
    // A protocol-2 pickle whose first item is the torch magic number (a LONG1 of 10 bytes).
    head.len() >= 4 && head[..4] == [0x80, 0x02, 0x8a, 0x0a]
}

/// What a checkpoint holds.
#[derive(Debug)]
pub(crate) struct Index {
    /// Folder prefix of the records inside the zip (`archive/`, or the file stem for old torch).
    pub prefix: String,
    /// Flattened tensor names (nested dicts joined by `.`) and descriptors.
    pub tensors: Vec<(String, TensorDesc)>,
    /// The pickle bytes, for fingerprinting.
    pub pickle: Vec<u8>,
    /// Top-level entries left out for the preferred wrapper ([`skipped_beside_wrapper`]).
    pub skipped: Vec<String>,
}

/// Opens the zip `path` (read through `file`) and reads its tensor index.
pub(crate) fn read_index<R: Read + Seek>(path: &Path, file: R) -> Result<Index, WeightsError> {
    let corrupt = |reason: String| WeightsError::corrupt(path, reason);
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| corrupt(format!("not a readable zip: {e}")))?;
    let pkl_names: Vec<String> = zip
        .file_names()
        .filter_map(Result::ok)
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .map(|n| n.into_owned())
        .collect();
    let [pkl_name] = pkl_names.as_slice() else {
        return Err(corrupt(format!(
            "expected one data.pkl in the zip, found {}",
            pkl_names.len()
        )));
    };
    let prefix = pkl_name
        .strip_suffix("data.pkl")
        .unwrap_or_default()
        .to_owned();

    if let Ok(mut entry) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut order = String::new();
        let _ = entry.by_ref().take(16).read_to_string(&mut order);
        if order.trim() != "little" {
            return Err(WeightsError::Unsupported {
                path: path.to_owned(),
                reason: format!("tensors are stored {} endian", order.trim()),
            });
        }
    }

    let mut pickle_bytes = Vec::new();
    {
        let entry = zip
            .by_name(pkl_name)
            .map_err(|e| corrupt(format!("cannot open {pkl_name}: {e}")))?;
        entry
            .take(MAX_PICKLE + 1)
            .read_to_end(&mut pickle_bytes)
            .map_err(|e| corrupt(format!("cannot read {pkl_name}: {e}")))?;
    }
    if pickle_bytes.len() as u64 > MAX_PICKLE {
        return Err(corrupt(format!("{pkl_name} is implausibly large")));
    }

    let unpickled = pickle::unpickle(&pickle_bytes).map_err(|e| match e {
        PickleError::Foreign(global) => WeightsError::ForeignGlobal {
            path: path.to_owned(),
            global,
        },
        PickleError::Invalid(reason) => corrupt(format!("{pkl_name}: {reason}")),
    })?;
    let tensors = flatten(&unpickled).map_err(|reason| corrupt(format!("{pkl_name}: {reason}")))?;

    // Every storage must exist and be large enough for what the pickle says it holds.
    let mut sizes = BTreeMap::new();
    for (name, t) in &tensors {
        let record = format!("{prefix}data/{}", t.storage.key);
        let size = match sizes.get(&record) {
            Some(&s) => s,
            None => {
                let s = zip
                    .by_name(&record)
                    .map_err(|_| {
                        corrupt(format!(
                            "tensor `{name}`: storage record {record} is missing"
                        ))
                    })?
                    .size();
                sizes.insert(record.clone(), s);
                s
            }
        };
        let needed = t.storage.numel.checked_mul(t.storage.dtype.size() as u64);
        if needed.is_none_or(|n| n > size) {
            return Err(corrupt(format!(
                "tensor `{name}`: storage record {record} is too short"
            )));
        }
    }
    Ok(Index {
        prefix,
        tensors,
        pickle: pickle_bytes,
        skipped: skipped_beside_wrapper(&unpickled),
    })
}

/// Reads one storage record's bytes, bounded by the size the pickle declares.
pub(crate) fn read_storage(
    path: &Path,
    zip: &mut zip::ZipArchive<impl Read + Seek>,
    prefix: &str,
    t: &TensorDesc,
) -> Result<Vec<u8>, WeightsError> {
    let record = format!("{prefix}data/{}", t.storage.key);
    let corrupt = |reason: String| WeightsError::corrupt(path, reason);
    let entry = zip
        .by_name(&record)
        .map_err(|e| corrupt(format!("cannot open {record}: {e}")))?;
    let len = t.storage.numel * t.storage.dtype.size() as u64;
    let mut bytes = Vec::new();
    entry
        .take(len)
        .read_to_end(&mut bytes)
        .map_err(|e| corrupt(format!("cannot read {record}: {e}")))?;
    if (bytes.len() as u64) < len {
        return Err(corrupt(format!("{record} is truncated")));
    }
    Ok(bytes)
}

/// The top-level entries that hold tensors but are left out because [`flatten`] takes a
/// preferred wrapper beside them: a Real-ESRGAN file's `params` beside its `params_ema`, a
/// training checkpoint's optimizer state beside its `state_dict`.
pub(super) fn skipped_beside_wrapper(u: &Unpickled) -> Vec<String> {
    let Some(Object::Dict(pairs)) = u.get(u.root) else {
        return Vec::new();
    };
    let holds = |v: &Value| matches!(u.get(*v), Some(Object::Dict(_) | Object::Tensor(_)));
    let Some(chosen) = WRAPPERS.iter().find(|w| {
        pairs
            .iter()
            .any(|(k, v)| u.str(*k) == Some(**w) && matches!(u.get(*v), Some(Object::Dict(_))))
    }) else {
        return Vec::new();
    };
    pairs
        .iter()
        .filter(|(k, v)| holds(v) && u.str(*k) != Some(*chosen))
        .filter_map(|(k, _)| u.str(*k).map(str::to_owned))
        .collect()
}

/// Descends through wrapper dicts, then flattens nested dicts into dotted names. Entries that
/// are not tensors (step counters, hyper-parameters, `_metadata`) are skipped.
pub(super) fn flatten(u: &Unpickled) -> Result<Vec<(String, TensorDesc)>, String> {
    let mut root = u.root;
    if let Some(Object::Dict(pairs)) = u.get(root) {
        let dict_value = |key: &str| {
            pairs
                .iter()
                .rev()
                .find(|(k, v)| u.str(*k) == Some(key) && matches!(u.get(*v), Some(Object::Dict(_))))
                .map(|(_, v)| *v)
        };
        if let Some(inner) = WRAPPERS.iter().find_map(|w| dict_value(w)) {
            root = inner;
        }
    }
    if let Some(Object::Dict(pairs)) = u.get(root)
        && let [(_, only)] = pairs.as_slice()
        && matches!(u.get(*only), Some(Object::Dict(_)))
    {
        root = *only;
    }
    if !matches!(u.get(root), Some(Object::Dict(_))) {
        return Err("the pickle does not hold a dict of tensors".into());
    }
    let mut walk = Walk {
        u,
        visits: 0,
        name_bytes: 0,
        out: BTreeMap::new(),
    };
    walk.visit(root, String::new(), 0)?;
    Ok(walk.out.into_iter().collect())
}

/// The state of one flattening walk, with its budgets.
struct Walk<'a> {
    u: &'a Unpickled,
    visits: usize,
    name_bytes: usize,
    out: BTreeMap<String, TensorDesc>,
}

impl Walk<'_> {
    fn visit(&mut self, v: Value, prefix: String, depth: usize) -> Result<(), String> {
        self.visits += 1;
        if depth > MAX_DEPTH || self.visits > MAX_VISITS {
            return Err("dicts nested too deeply or too often".into());
        }
        let u = self.u;
        match u.get(v) {
            Some(Object::Tensor(t)) => {
                if self.out.len() >= MAX_TENSORS {
                    return Err("too many tensors".into());
                }
                self.name_bytes += prefix.len();
                if self.name_bytes > MAX_TOTAL_NAME_BYTES {
                    return Err("the tensor names are implausibly long".into());
                }
                self.out.insert(prefix, t.clone());
            }
            Some(Object::Dict(pairs)) => {
                for (k, child) in pairs {
                    // Step counters, hyper-parameters and the like name nothing.
                    if !matches!(u.get(*child), Some(Object::Tensor(_) | Object::Dict(_))) {
                        continue;
                    }
                    let key = match (u.str(*k), k) {
                        (Some(s), _) => Cow::Borrowed(s),
                        (None, Value::Int(i)) => Cow::Owned(i.to_string()),
                        _ => continue,
                    };
                    if prefix.len() + 1 + key.len() > MAX_NAME_BYTES {
                        return Err(format!(
                            "a tensor name is longer than {MAX_NAME_BYTES} bytes"
                        ));
                    }
                    let name = if prefix.is_empty() {
                        key.into_owned()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    self.visit(*child, name, depth + 1)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
