//! Hostile pickles aimed at the unpickler's and the flattener's resources rather than at code
//! execution: self-referential arguments, nesting, memo abuse, views that multiply a tiny
//! storage, and names that multiply through shared keys. Each must end in an error (or a
//! value) quickly and in bounded memory, never in a stack overflow or an allocation abort.

use super::tests::P;
use super::*;
use crate::weights::torch;

fn invalid_with(p: &[u8], needle: &str) {
    match unpickle(p) {
        Err(PickleError::Invalid(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected an error about {needle}, got {other:?}"),
    }
}

#[test]
fn a_reduce_whose_arguments_contain_themselves_does_not_recurse_forever() {
    // L = [F, torch.Tensor, L, None]; F(*L) with F = _rebuild_from_type_v2 would call
    // F(*L) again, forever, and overflow the engine thread's stack.
    let p = P::default()
        .op(0x80)
        .op(2)
        .global("torch._tensor", "_rebuild_from_type_v2")
        .put(0)
        .op(b']')
        .put(1)
        .op(b'(')
        .get(0)
        .global("torch", "Tensor")
        .get(1)
        .op(b'N')
        .op(b'e')
        .op(b'R')
        .op(b'.')
        .bytes();
    invalid_with(&p, "nested too deeply");
}

#[test]
fn deep_nesting_is_iterative_and_capped() {
    // A million nested empty lists: built without recursion.
    let depth = 1_000_000;
    let mut p = vec![b'('; depth];
    p.extend(std::iter::repeat_n(b'l', depth));
    p.push(b'.');
    assert!(unpickle(&p).is_ok());
    // More marks than the stack allows.
    let mut p = vec![b'('; MAX_STACK + 1];
    p.push(b'.');
    invalid_with(&p, "too deep");
}

#[test]
fn chained_reduces_stay_iterative() {
    // OrderedDict(OrderedDict(OrderedDict(...))) a hundred thousand deep, each REDUCE
    // consuming the previous result.
    let mut p = P::default().op(0x80).op(2).op(b'}');
    for _ in 0..100_000 {
        p = p
            .global("collections", "OrderedDict")
            .op(b']')
            .op(0x85)
            .op(b'R')
            .op(b'0');
    }
    let p = p.op(b'.').bytes();
    assert!(unpickle(&p).is_ok());
}

#[test]
fn huge_memo_indices_are_plain_keys() {
    let mut p = vec![b'K', 7, b'r', 0xff, 0xff, 0xff, 0xff, b'0'];
    p.extend([b'j', 0xff, 0xff, 0xff, 0xff, b'.']);
    assert_eq!(unpickle(&p).unwrap().root, Value::Int(7));
    invalid_with(&[b'j', 0xfe, 0xff, 0xff, 0xff, b'.'], "not defined");
}

#[test]
fn memo_growth_is_capped() {
    // MEMOIZE the same value under ever new indices.
    let mut p = vec![b'N'];
    p.extend(std::iter::repeat_n(0x94, MAX_MEMO + 1));
    p.push(b'.');
    invalid_with(&p, "memo");
}

#[test]
fn expanded_views_of_a_tiny_storage_are_refused() {
    // 200 elements with stride 0 on a one-element storage: in bounds, but 200× the data.
    let p = P::default().tensor("0", 1, 0, 200, 0).op(b'.').bytes();
    invalid_with(&p, "expanded view");
    // Overlapping strides on a large enough storage are fine as long as they fit.
    let p = P::default().tensor("0", 8, 0, 4, 1).op(b'.').bytes();
    assert!(unpickle(&p).is_ok());
}

/// `{key: {key: … {key: tensor}}}` with every level memoised and the key shared, `levels` deep,
/// and `fan` entries per level all pointing at the next level.
fn nested_dicts(key: &str, levels: u8, fan: usize) -> Vec<u8> {
    let mut p = P::default()
        .op(0x80)
        .op(2)
        .str(key)
        .put(0)
        .op(b'0')
        .op(b'}')
        .op(b'(')
        .get(0)
        .tensor("0", 1, 0, 1, 1)
        .op(b'u')
        .put(1);
    for level in 1..levels {
        p = p.op(b'0').op(b'}').op(b'(');
        for i in 0..fan {
            p = p.str(&format!("{key}{i}")).get(level);
        }
        p = p.op(b'u').put(level + 1);
    }
    p.op(b'.').bytes()
}

fn flatten_error(p: &[u8]) -> String {
    let u = unpickle(p).expect("the pickle itself is valid");
    torch::flatten(&u).expect_err("flattening is refused")
}

#[test]
fn names_cannot_multiply_through_shared_long_keys() {
    // Ten levels of a 200-byte key: every name would be over 2 KB.
    let key = "k".repeat(200);
    assert!(flatten_error(&nested_dicts(&key, 10, 1)).contains("longer than"));
    // Short keys at a modest depth still flatten.
    let u = unpickle(&nested_dicts("k", 5, 1)).unwrap();
    let tensors = torch::flatten(&u).unwrap();
    assert_eq!(tensors.len(), 1);
    assert_eq!(
        tensors[0].0, "k0.k0.k0.k",
        "the single-entry root is unwrapped"
    );
}

#[test]
fn shared_subdicts_cannot_make_the_walk_exponential() {
    // Two entries per level, 30 levels: 2^30 paths to the same tensor.
    let error = flatten_error(&nested_dicts("k", 30, 2));
    assert!(
        error.contains("too many") || error.contains("too often") || error.contains("long"),
        "{error}"
    );
}
