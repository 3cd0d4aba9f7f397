//! The engine says which sessions it holds, and frees those no network uses any more.

mod common;

use common::{engine, fixture};
use tessera::nets::esrgan::Esrgan;

#[test]
fn held_sessions_are_reported_and_unused_ones_freed() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.pth"), dir.path().join("b.pth"));
    std::fs::copy(fixture("tiny-x4-old.pth"), &a).unwrap();
    std::fs::copy(fixture("tiny-x4-realesrgan.pth"), &b).unwrap();

    let first = Esrgan::load(engine(), &a, cache.path()).unwrap();
    let second = Esrgan::load(engine(), &b, cache.path()).unwrap();
    let held = engine().held_sessions();
    assert!(held.contains(&"ESRGAN a.pth".to_owned()), "{held:?}");
    assert!(held.contains(&"ESRGAN b.pth".to_owned()), "{held:?}");

    // Nothing is freed while the networks hold their sessions.
    assert_eq!(engine().release_unused(), 0);
    drop(first);
    assert_eq!(engine().release_unused(), 1, "a.pth is no longer selected");
    let held = engine().held_sessions();
    assert!(!held.contains(&"ESRGAN a.pth".to_owned()), "{held:?}");
    assert!(held.contains(&"ESRGAN b.pth".to_owned()));
    drop(second);
    engine().release_unused();
    assert!(engine().held_sessions().is_empty());
}
