//! Unit tests of the restricted unpickler on hand-assembled pickles, including hostile ones.
//! Real `torch.save` output is covered by the fixture tests in `daemon/tests/`.

use super::*;

/// A tiny pickle assembler so tests read as opcode listings.
#[derive(Default)]
pub(super) struct P(Vec<u8>);

impl P {
    pub(super) fn op(mut self, b: u8) -> P {
        self.0.push(b);
        self
    }
    pub(super) fn global(mut self, module: &str, name: &str) -> P {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }
    pub(super) fn str(mut self, s: &str) -> P {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub(super) fn int(mut self, v: u8) -> P {
        self.0.extend_from_slice(&[b'K', v]);
        self
    }
    pub(super) fn put(mut self, i: u8) -> P {
        self.0.extend_from_slice(&[b'q', i]);
        self
    }
    pub(super) fn get(mut self, i: u8) -> P {
        self.0.extend_from_slice(&[b'h', i]);
        self
    }
    /// `('storage', torch.FloatStorage, key, 'cpu', numel)` as a persistent id.
    pub(super) fn storage(self, key: &str, numel: u8) -> P {
        self.op(b'(')
            .str("storage")
            .global("torch", "FloatStorage")
            .str(key)
            .str("cpu")
            .int(numel)
            .op(b't')
            .op(b'Q')
    }
    /// `_rebuild_tensor_v2(storage, offset, (size,), (stride,), False, OrderedDict())`.
    pub(super) fn tensor(self, key: &str, numel: u8, offset: u8, size: u8, stride: u8) -> P {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b'(')
            .storage(key, numel)
            .int(offset)
            .int(size)
            .op(0x85)
            .int(stride)
            .op(0x85)
            .op(0x89)
            .global("collections", "OrderedDict")
            .op(b')')
            .op(b'R')
            .op(b't')
            .op(b'R')
    }
    pub(super) fn bytes(self) -> Vec<u8> {
        self.0
    }
}

fn state_dict() -> Vec<u8> {
    P::default()
        .op(0x80)
        .op(2)
        .op(b'}')
        .put(0)
        .op(b'(')
        .str("a.weight")
        .tensor("0", 6, 0, 6, 1)
        .str("a.bias")
        .tensor("0", 6, 2, 2, 2)
        .str("step")
        .int(9)
        .op(b'u')
        .op(b'.')
        .bytes()
}

#[test]
fn reads_a_state_dict() {
    let u = unpickle(&state_dict()).unwrap();
    let Some(Object::Dict(pairs)) = u.get(u.root) else {
        panic!("root is a dict")
    };
    assert_eq!(pairs.len(), 3);
    assert_eq!(u.str(pairs[0].0), Some("a.weight"));
    let Some(Object::Tensor(t)) = u.get(pairs[1].1) else {
        panic!("a tensor")
    };
    assert_eq!(
        (t.offset, t.shape.clone(), t.strides.clone()),
        (2, vec![2], vec![2])
    );
    assert_eq!(
        t.storage,
        Storage {
            dtype: DType::F32,
            key: "0".into(),
            numel: 6
        }
    );
    assert_eq!(pairs[2].1, Value::Int(9));
}

#[test]
fn memo_shares_containers() {
    // A dict is memoised while empty and filled afterwards; BINGET must see the filled one.
    let p = P::default()
        .op(b']')
        .op(b'}')
        .put(1)
        .str("k")
        .int(1)
        .op(b's')
        .op(b'a')
        .get(1)
        .op(b'a')
        .op(b'.')
        .bytes();
    let u = unpickle(&p).unwrap();
    let Some(Object::List(items)) = u.get(u.root) else {
        panic!()
    };
    assert_eq!(items[0], items[1]);
    assert!(matches!(u.get(items[1]), Some(Object::Dict(d)) if d.len() == 1));
}

#[test]
fn refuses_foreign_globals_by_name() {
    for (module, name) in [
        ("posix", "system"),
        ("builtins", "eval"),
        ("__main__", "Evil"),
        ("torch", "load"),
    ] {
        let p = P::default()
            .op(0x80)
            .op(2)
            .global(module, name)
            .str("x")
            .op(0x85)
            .op(b'R')
            .op(b'.')
            .bytes();
        assert_eq!(
            unpickle(&p).unwrap_err(),
            PickleError::Foreign(format!("{module}.{name}"))
        );
    }
    // STACK_GLOBAL (protocol 4) is checked too.
    let p = P::default()
        .str("os")
        .str("system")
        .op(0x93)
        .op(b'.')
        .bytes();
    assert_eq!(
        unpickle(&p).unwrap_err(),
        PickleError::Foreign("os.system".into())
    );
}

#[test]
fn tensors_must_stay_inside_their_storage() {
    let p = P::default().tensor("0", 4, 2, 3, 1).op(b'.').bytes();
    assert!(matches!(unpickle(&p), Err(PickleError::Invalid(m)) if m.contains("storage")));
    let p = P::default().tensor("0", 4, 0, 2, 4).op(b'.').bytes();
    assert!(unpickle(&p).is_err(), "stride reaches past the end");
    let p = P::default().tensor("0", 4, 0, 2, 2).op(b'.').bytes();
    assert!(unpickle(&p).is_ok());
}

#[test]
fn storage_keys_cannot_name_paths() {
    let p = P::default().tensor("../x", 4, 0, 1, 1).op(b'.').bytes();
    assert!(matches!(unpickle(&p), Err(PickleError::Invalid(_))));
}

#[test]
fn structural_errors_are_errors() {
    let cases: Vec<Vec<u8>> = vec![
        vec![],                                         // nothing
        vec![b'.'],                                     // STOP on an empty stack
        vec![b'a', b'.'],                               // APPEND with nothing
        vec![b'K', 1, b's', b'.'],                      // SETITEM on an int
        vec![b'(', b'K', 1, b'0', b'0'],                // pop across a mark
        vec![b'h', 5, b'.'],                            // undefined memo entry
        vec![b'X', 255, 255, 255, 255],                 // string longer than the input
        vec![0x8b, 0, 0, 0, 0x7f],                      // LONG4 of 2 GB
        vec![0x8a, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, b'.'], // 72-bit integer
        vec![b'c', b'a', b'b'],                         // unterminated GLOBAL
        vec![b'K', 1, b'K', 2, b'R', b'.'],             // REDUCE on an int
        vec![b'I', b'1', b'\n', b'.'],                  // text-protocol opcode
        vec![0x80, 9],                                  // unknown protocol
        vec![b')', b'K', 1, b'b', b'.'],                // BUILD on a tuple
    ];
    for (i, c) in cases.iter().enumerate() {
        assert!(
            matches!(unpickle(c), Err(PickleError::Invalid(_))),
            "case {i}: {:?}",
            unpickle(c)
        );
    }
}

#[test]
fn stack_growth_is_capped() {
    let mut p = vec![b'N'; MAX_STACK + 10];
    p.push(b'.');
    assert!(matches!(unpickle(&p), Err(PickleError::Invalid(m)) if m.contains("stack")));
}

/// Every truncation and many single-byte corruptions of a real-shaped pickle must give an
/// error or a value, never a panic. (A cheap stand-in until the proper fuzzer exists.)
#[test]
fn mutations_never_panic() {
    let good = state_dict();
    for cut in 0..good.len() {
        let _ = unpickle(&good[..cut]);
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut p = good.clone();
        let at = (seed % p.len() as u64) as usize;
        p[at] = (seed >> 32) as u8;
        let _ = unpickle(&p);
    }
}

#[test]
fn ordered_dict_with_items_and_bytes() {
    // OrderedDict([('k', 1)]) and _codecs.encode('\xff', 'latin1').
    let p = P::default()
        .op(b']')
        .global("collections", "OrderedDict")
        .op(b']')
        .str("k")
        .int(1)
        .op(0x86)
        .op(b'a')
        .op(0x85)
        .op(b'R')
        .op(b'a')
        .global("_codecs", "encode")
        .str("\u{ff}")
        .str("latin1")
        .op(0x86)
        .op(b'R')
        .op(b'a')
        .op(b'.')
        .bytes();
    let u = unpickle(&p).unwrap();
    let Some(Object::List(items)) = u.get(u.root) else {
        panic!()
    };
    assert!(matches!(u.get(items[0]), Some(Object::Dict(d)) if d.len() == 1));
    assert_eq!(u.get(items[1]), Some(&Object::Bytes(vec![0xff])));
}
