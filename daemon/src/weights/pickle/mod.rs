//! A restricted unpickler for the `data.pkl` inside PyTorch checkpoints.
//!
//! A pickle is a program for a small stack machine, and an ordinary unpickler runs whatever
//! callables it names: loading an untrusted `.pth` with `torch.load` can execute code. This one
//! builds only plain data (None, bools, ints, floats, strings, bytes, lists, tuples, dicts),
//! storages named by persistent ids, and tensors rebuilt by the handful of torch functions that
//! `torch.save` emits for state dicts. Every other global is refused by name as soon as it is
//! read, before anything could call it.
//!
//! It is bounded for hostile input: every length is checked against the bytes that are left
//! before anything is allocated, and the stack, memo and object count have caps. Malformed input
//! is an error, never a panic.

use std::collections::HashMap;

use super::DType;

mod globals;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hostile;

use globals::{Global, lookup_global};

/// Caps that keep a hostile pickle from exhausting memory; real state dicts are far below them.
const MAX_STACK: usize = 1 << 20;
const MAX_OBJECTS: usize = 1 << 22;
const MAX_MEMO: usize = 1 << 21;
const MAX_RANK: usize = 16;

/// Why a pickle was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PickleError {
    /// The pickle names a global outside the allowlist (`module.name`).
    Foreign(String),
    /// Anything else: truncated, malformed, or using features state dicts never use.
    Invalid(String),
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, PickleError> {
    Err(PickleError::Invalid(msg.into()))
}

/// A value on the stack. Containers live in the object arena and are shared by index, which
/// is what pickle's memo semantics need (a memoised dict is filled after it was memoised).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Obj(usize),
}

/// A storage named by a persistent id: `('storage', torch.FloatStorage, key, location, numel)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Storage {
    pub dtype: DType,
    /// Name of the record under `data/` in the zip; only `[A-Za-z0-9_]` is accepted.
    pub key: String,
    /// Size in elements.
    pub numel: u64,
}

/// A tensor as `torch._utils._rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TensorDesc {
    pub storage: Storage,
    /// In elements.
    pub offset: u64,
    pub shape: Vec<usize>,
    /// In elements.
    pub strides: Vec<usize>,
}

/// Heap objects; `Value::Obj` indexes into the arena.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Object {
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(GlobalRef),
    Storage(Storage),
    Tensor(TensorDesc),
}

/// An allowed global, kept opaque outside this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GlobalRef(Global);

/// The result of unpickling: the root value and the arena it points into.
#[derive(Debug)]
pub(crate) struct Unpickled {
    pub root: Value,
    pub objects: Vec<Object>,
}

impl Unpickled {
    pub fn get(&self, v: Value) -> Option<&Object> {
        match v {
            Value::Obj(i) => self.objects.get(i),
            _ => None,
        }
    }

    pub fn str(&self, v: Value) -> Option<&str> {
        match self.get(v) {
            Some(Object::Str(s)) => Some(s),
            _ => None,
        }
    }
}

/// Runs the restricted unpickler over `data`.
pub(crate) fn unpickle(data: &[u8]) -> Result<Unpickled, PickleError> {
    Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objects: Vec::new(),
    }
    .run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Object>,
}

impl Machine<'_> {
    fn run(mut self) -> Result<Unpickled, PickleError> {
        loop {
            let at = self.pos;
            let op = self.take(1)?[0];
            match op {
                0x80 => {
                    let proto = self.take(1)?[0];
                    if proto > 5 {
                        return invalid(format!("pickle protocol {proto} is not supported"));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'.' => {
                    let root = self.pop()?;
                    return Ok(Unpickled {
                        root,
                        objects: self.objects,
                    });
                }
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return invalid("pickle nesting is too deep");
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    self.push(top)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.take(1)?[0];
                    self.push(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()))?;
                }
                0x8a => {
                    let n = usize::from(self.take(1)?[0]);
                    let v = self.long(n)?;
                    self.push(Value::Int(v))?;
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.array()?);
                    let n = usize::try_from(n).or_else(|_| invalid("negative LONG4 length"))?;
                    let v = self.long(n)?;
                    self.push(Value::Int(v))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(v))?;
                }
                b'X' | 0x8c | 0x8d | b'T' | b'U' => {
                    let n = match op {
                        b'X' => u32::from_le_bytes(self.array()?) as u64,
                        0x8d => u64::from_le_bytes(self.array()?),
                        b'T' => u64::try_from(i32::from_le_bytes(self.array()?))
                            .or_else(|_| invalid("negative string length"))?,
                        _ => u64::from(self.take(1)?[0]),
                    };
                    let bytes = self.take_len(n)?;
                    let s = if matches!(op, b'T' | b'U') {
                        bytes.iter().map(|&b| char::from(b)).collect()
                    } else {
                        std::str::from_utf8(bytes)
                            .or_else(|_| invalid("a pickled string is not UTF-8"))?
                            .to_owned()
                    };
                    self.push_obj(Object::Str(s))?;
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => u32::from_le_bytes(self.array()?) as u64,
                        b'C' => u64::from(self.take(1)?[0]),
                        _ => u64::from_le_bytes(self.array()?),
                    };
                    let bytes = self.take_len(n)?.to_vec();
                    self.push_obj(Object::Bytes(bytes))?;
                }
                b')' => self.push_obj(Object::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_obj(Object::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return Err(empty_stack());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_obj(Object::Tuple(items))?;
                }
                b']' => self.push_obj(Object::List(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_obj(Object::List(items))?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_list(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                b'}' => self.push_obj(Object::Dict(Vec::new()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.push_obj(Object::Dict(pairs))?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.extend_dict(vec![(key, value)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.extend_dict(pairs)?;
                }
                b'c' | b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let global = lookup_global(&module, &name)
                        .ok_or_else(|| PickleError::Foreign(format!("{module}.{name}")))?;
                    if op == b'i' {
                        // INST builds an instance directly; no state dict needs it.
                        return invalid(format!(
                            "pickle opcode INST ({module}.{name}) is not supported"
                        ));
                    }
                    self.push_obj(Object::Global(GlobalRef(global)))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (self.str_of(module), self.str_of(name))
                    else {
                        return invalid("STACK_GLOBAL needs two strings");
                    };
                    let global = lookup_global(&module, &name)
                        .ok_or_else(|| PickleError::Foreign(format!("{module}.{name}")))?;
                    self.push_obj(Object::Global(GlobalRef(global)))?;
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = self.call(callable, args)?;
                    self.push(result)?;
                }
                b'b' => {
                    let _state = self.pop()?;
                    let target = self.top()?;
                    // OrderedDicts carry `_metadata` and tensors may carry attributes; neither
                    // matters for weights, and nothing else may be built.
                    match self.object(target) {
                        Some(Object::Dict(_) | Object::Tensor(_)) => {}
                        _ => return invalid("BUILD on something that is not a dict or tensor"),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent_storage(pid)?;
                    self.push_obj(Object::Storage(storage))?;
                }
                b'q' => {
                    let i = u32::from(self.take(1)?[0]);
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).or_else(|_| invalid("memo overflow"))?;
                    self.memo_put(i)?;
                }
                b'h' | b'j' => {
                    let i = if op == b'h' {
                        u32::from(self.take(1)?[0])
                    } else {
                        u32::from_le_bytes(self.array()?)
                    };
                    let v = *self.memo.get(&i).ok_or_else(|| {
                        PickleError::Invalid(format!("memo entry {i} is not defined"))
                    })?;
                    self.push(v)?;
                }
                _ => {
                    return invalid(format!("unsupported pickle opcode 0x{op:02x} at byte {at}"));
                }
            }
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return invalid("the pickle ends early (truncated?)");
        };
        let slice = &self.data[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn take_len(&mut self, n: u64) -> Result<&[u8], PickleError> {
        let n = usize::try_from(n).or_else(|_| invalid("length too large"))?;
        self.take(n)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().take(512).position(|&b| b == b'\n') else {
            return invalid("a GLOBAL name is unterminated or too long");
        };
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    /// Little-endian two's-complement integer of `n` bytes; more than 8 bytes is refused.
    fn long(&mut self, n: usize) -> Result<i64, PickleError> {
        if n > 8 {
            return invalid("an integer wider than 64 bits");
        }
        let bytes = self.take(n)?;
        if n == 0 {
            return Ok(0);
        }
        let mut buf = if bytes[n - 1] & 0x80 != 0 {
            [0xff; 8]
        } else {
            [0; 8]
        };
        buf[..n].copy_from_slice(bytes);
        Ok(i64::from_le_bytes(buf))
    }

    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        if self.stack.len() >= MAX_STACK {
            return invalid("the pickle stack grows too large");
        }
        self.stack.push(v);
        Ok(())
    }

    fn push_obj(&mut self, o: Object) -> Result<(), PickleError> {
        let v = self.alloc(o)?;
        self.push(v)
    }

    fn alloc(&mut self, o: Object) -> Result<Value, PickleError> {
        if self.objects.len() >= MAX_OBJECTS {
            return invalid("the pickle has too many objects");
        }
        self.objects.push(o);
        Ok(Value::Obj(self.objects.len() - 1))
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        // Popping below the innermost mark would corrupt the mark stack.
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return invalid("pickle pops across a MARK");
        }
        self.stack.pop().ok_or_else(empty_stack)
    }

    /// The top of the stack above the innermost mark.
    fn top(&self) -> Result<Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(empty_stack());
        }
        Ok(self.stack[self.stack.len() - 1])
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(m) = self.marks.pop() else {
            return invalid("pickle uses a MARK that was never set");
        };
        if m > self.stack.len() {
            return Err(empty_stack());
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, i: u32) -> Result<(), PickleError> {
        let top = self.top()?;
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&i) {
            return invalid("the pickle memo grows too large");
        }
        self.memo.insert(i, top);
        Ok(())
    }

    fn object(&self, v: Value) -> Option<&Object> {
        match v {
            Value::Obj(i) => self.objects.get(i),
            _ => None,
        }
    }

    fn str_of(&self, v: Value) -> Option<String> {
        match self.object(v) {
            Some(Object::Str(s)) => Some(s.clone()),
            _ => None,
        }
    }

    fn int_of(&self, v: Value) -> Option<i64> {
        match v {
            Value::Int(i) => Some(i),
            Value::Bool(b) => Some(i64::from(b)),
            _ => None,
        }
    }

    fn extend_list(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let target = self.top()?;
        match target {
            Value::Obj(i) => match self.objects.get_mut(i) {
                Some(Object::List(list)) => {
                    list.extend(items);
                    Ok(())
                }
                _ => invalid("APPEND to something that is not a list"),
            },
            _ => invalid("APPEND to something that is not a list"),
        }
    }

    fn extend_dict(&mut self, new: Vec<(Value, Value)>) -> Result<(), PickleError> {
        let target = self.top()?;
        match target {
            Value::Obj(i) => match self.objects.get_mut(i) {
                Some(Object::Dict(d)) => {
                    d.extend(new);
                    Ok(())
                }
                _ => invalid("SETITEM on something that is not a dict"),
            },
            _ => invalid("SETITEM on something that is not a dict"),
        }
    }

    fn tuple_items(&self, v: Value) -> Result<Vec<Value>, PickleError> {
        match self.object(v) {
            Some(Object::Tuple(items) | Object::List(items)) => Ok(items.clone()),
            _ => invalid("expected a tuple of arguments"),
        }
    }
}

fn empty_stack() -> PickleError {
    PickleError::Invalid("the pickle pops from an empty stack".into())
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, PickleError> {
    if !items.len().is_multiple_of(2) {
        return invalid("odd number of items for a dict");
    }
    Ok(items.chunks(2).map(|c| (c[0], c[1])).collect())
}
