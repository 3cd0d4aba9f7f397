//! Replays the fuzz corpus on stable Rust: every file under `fuzz/corpus/<target>/` (seeds and
//! what the fuzzers found worth keeping) and `fuzz/regressions/<target>/` (inputs that once
//! crashed a target) goes through the same entry point as the `cargo fuzz` target, so CI keeps
//! every one of them passing without nightly or libFuzzer. See `docs/hardening.md`.

use std::path::{Path, PathBuf};
use tessera::fuzzing::{TARGETS, Target};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every input of one target; a panic names the file that caused it.
fn replay(target: &Target, folder: &str) -> usize {
    let inputs = files(&fuzz_dir().join(folder).join(target.name));
    for path in &inputs {
        let data = match std::fs::read(path) {
            Ok(data) => data,
            // A fuzzer running in this checkout replaces corpus files as it minimises them.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        let outcome = std::panic::catch_unwind(|| (target.run)(&data));
        assert!(
            outcome.is_ok(),
            "fuzz target {} fails on {}",
            target.name,
            path.display()
        );
    }
    inputs.len()
}

#[test]
fn every_corpus_input_passes_its_target() {
    for target in TARGETS {
        let count = replay(target, "corpus");
        assert!(
            count > 0,
            "fuzz/corpus/{} is empty: run `scripts/fuzz seed`",
            target.name
        );
        eprintln!("{}: {count} corpus inputs", target.name);
    }
}

#[test]
fn every_past_crash_passes_its_target() {
    let mut total = 0;
    for target in TARGETS {
        total += replay(target, "regressions");
    }
    eprintln!("{total} regression inputs");
    // Every folder there names a target: a typo would silently skip its inputs.
    for entry in std::fs::read_dir(fuzz_dir().join("regressions")).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            TARGETS.iter().any(|t| name == t.name),
            "fuzz/regressions/{} is not a fuzz target",
            name.to_string_lossy()
        );
    }
}
