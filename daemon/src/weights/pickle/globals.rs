//! The allowlist of Python globals and what "calling" each one means: the torch functions that
//! rebuild tensors from storages, `OrderedDict`, and a few plain helpers. This is the only place
//! where a pickle can make the unpickler do anything beyond building containers.

use super::{
    GlobalRef, MAX_RANK, Machine, Object, PickleError, Storage, TensorDesc, Value, invalid,
};
use crate::weights::DType;

/// Nested `_rebuild_from_type_v2` calls allowed (torch emits one level).
const MAX_CALL_NESTING: usize = 2;

/// The globals a state dict needs. Anything else is `PickleError::Foreign`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    /// `torch.Tensor` / `torch.nn.parameter.Parameter`, only as the type argument above.
    TensorType,
    Size,
    CodecsEncode,
    StorageType(DType),
}

pub(super) fn lookup_global(module: &str, name: &str) -> Option<Global> {
    let storage = |d| Some(Global::StorageType(d));
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => {
            Some(Global::RebuildParameterWithState)
        }
        ("torch._tensor", "_rebuild_from_type_v2") => Some(Global::RebuildFromTypeV2),
        ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Some(Global::TensorType),
        ("torch", "Size") => Some(Global::Size),
        ("_codecs", "encode") => Some(Global::CodecsEncode),
        ("torch", "FloatStorage") => storage(DType::F32),
        ("torch", "HalfStorage") => storage(DType::F16),
        ("torch", "BFloat16Storage") => storage(DType::BF16),
        ("torch", "DoubleStorage") => storage(DType::F64),
        ("torch", "LongStorage") => storage(DType::I64),
        ("torch", "IntStorage") => storage(DType::I32),
        ("torch", "ShortStorage") => storage(DType::I16),
        ("torch", "CharStorage") => storage(DType::I8),
        ("torch", "ByteStorage") => storage(DType::U8),
        ("torch", "BoolStorage") => storage(DType::Bool),
        _ => None,
    }
}

impl Machine<'_> {
    pub(super) fn call(&mut self, callable: Value, args: Value) -> Result<Value, PickleError> {
        self.call_nested(callable, args, 0)
    }

    /// `depth` counts the `_rebuild_from_type_v2` calls around this one: `torch.save` nests
    /// one, and a list that contains itself could otherwise nest them without end.
    fn call_nested(
        &mut self,
        callable: Value,
        args: Value,
        depth: usize,
    ) -> Result<Value, PickleError> {
        if depth > MAX_CALL_NESTING {
            return invalid("tensor rebuild calls nested too deeply");
        }
        let Some(Object::Global(GlobalRef(global))) = self.object(callable).cloned() else {
            return invalid("REDUCE on something that is not an allowed global");
        };
        let args = self.tuple_items(args)?;
        match global {
            Global::OrderedDict => {
                let pairs = match args.as_slice() {
                    [] => Vec::new(),
                    [items] => {
                        let mut pairs = Vec::new();
                        for item in self.tuple_items(*items)? {
                            match self.tuple_items(item)?.as_slice() {
                                [k, v] => pairs.push((*k, *v)),
                                _ => return invalid("OrderedDict item is not a pair"),
                            }
                        }
                        pairs
                    }
                    _ => return invalid("OrderedDict takes at most one argument"),
                };
                self.alloc(Object::Dict(pairs))
            }
            Global::RebuildTensor | Global::RebuildTensorV2 => {
                if args.len() < 4 {
                    return invalid("tensor rebuild with too few arguments");
                }
                let tensor = self.tensor(&args[..4])?;
                self.alloc(Object::Tensor(tensor))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => match args.first() {
                Some(&data) if matches!(self.object(data), Some(Object::Tensor(_))) => Ok(data),
                _ => invalid("parameter rebuild without a tensor"),
            },
            Global::RebuildFromTypeV2 => {
                // (func, new_type, args, state): only plain tensors and Parameters.
                let [func, new_type, inner, _state] = args.as_slice() else {
                    return invalid("_rebuild_from_type_v2 takes four arguments");
                };
                match self.object(*new_type) {
                    Some(Object::Global(GlobalRef(Global::TensorType))) => {}
                    _ => return invalid("_rebuild_from_type_v2 of a type other than Tensor"),
                }
                self.call_nested(*func, *inner, depth + 1)
            }
            Global::Size => match args.as_slice() {
                [dims] => {
                    let items = self.tuple_items(*dims)?;
                    self.alloc(Object::Tuple(items))
                }
                _ => invalid("torch.Size takes one argument"),
            },
            Global::CodecsEncode => match args.as_slice() {
                [text, _encoding] => {
                    let Some(text) = self.str_of(*text) else {
                        return invalid("_codecs.encode of a non-string");
                    };
                    // Protocol 2 writes bytes as their latin-1 decoding.
                    let bytes = text.chars().map(|c| c as u32 as u8).collect();
                    self.alloc(Object::Bytes(bytes))
                }
                _ => invalid("_codecs.encode takes two arguments"),
            },
            Global::TensorType | Global::StorageType(_) => {
                invalid("a type is called as a function")
            }
        }
    }

    fn tensor(&self, args: &[Value]) -> Result<TensorDesc, PickleError> {
        let Some(Object::Storage(storage)) = self.object(args[0]) else {
            return invalid("tensor rebuild without a storage");
        };
        let offset = self
            .int_of(args[1])
            .and_then(|o| u64::try_from(o).ok())
            .ok_or_else(|| PickleError::Invalid("bad storage offset".into()))?;
        let ints = |v: Value| -> Result<Vec<usize>, PickleError> {
            let items = self.tuple_items(v)?;
            if items.len() > MAX_RANK {
                return invalid("tensor rank too large");
            }
            items
                .into_iter()
                .map(|i| {
                    self.int_of(i)
                        .and_then(|i| usize::try_from(i).ok())
                        .ok_or_else(|| PickleError::Invalid("bad tensor size or stride".into()))
                })
                .collect()
        };
        let shape = ints(args[2])?;
        let strides = ints(args[3])?;
        if shape.len() != strides.len() {
            return invalid("tensor size and stride differ in rank");
        }
        // The view must stay inside its storage.
        let mut numel: u64 = 1;
        let mut last: u64 = offset;
        for (&n, &s) in shape.iter().zip(&strides) {
            numel = numel
                .checked_mul(n as u64)
                .ok_or_else(|| PickleError::Invalid("tensor too large".into()))?;
            if n > 0 {
                let reach = ((n - 1) as u64).checked_mul(s as u64);
                last = reach
                    .and_then(|r| last.checked_add(r))
                    .ok_or_else(|| PickleError::Invalid("tensor too large".into()))?;
            }
        }
        if numel > 0 && last >= storage.numel {
            return invalid(format!(
                "a tensor reaches element {last} of a storage with {} elements",
                storage.numel
            ));
        }
        // A view with more elements than its storage repeats elements (zero or overlapping
        // strides). Weights are never saved that way, and a tiny file could otherwise make a
        // conversion allocate without bound.
        if numel > storage.numel {
            return invalid(format!(
                "a tensor of {numel} elements is an expanded view of a storage with {} elements",
                storage.numel
            ));
        }
        Ok(TensorDesc {
            storage: storage.clone(),
            offset,
            shape,
            strides,
        })
    }

    pub(super) fn persistent_storage(&self, pid: Value) -> Result<Storage, PickleError> {
        let items = self.tuple_items(pid)?;
        let [kind, storage_type, key, _location, numel] = items.as_slice() else {
            return invalid("a persistent id that is not a storage reference");
        };
        if self.str_of(*kind).as_deref() != Some("storage") {
            return invalid("a persistent id that is not a storage reference");
        }
        let Some(Object::Global(GlobalRef(Global::StorageType(dtype)))) =
            self.object(*storage_type)
        else {
            return invalid("a storage of unknown type");
        };
        let key = match (self.str_of(*key), self.int_of(*key)) {
            (Some(k), _) => k,
            (None, Some(i)) => i.to_string(),
            _ => return invalid("a storage key that is not a string"),
        };
        if key.is_empty()
            || key.len() > 64
            || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return invalid("a storage key with unexpected characters");
        }
        let numel = self
            .int_of(*numel)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| PickleError::Invalid("a storage with a bad size".into()))?;
        Ok(Storage {
            dtype: *dtype,
            key,
            numel,
        })
    }
}
