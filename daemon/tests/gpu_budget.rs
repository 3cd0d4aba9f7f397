//! The engine on an accelerator, simulated (`TESSERA_FAULTS`' `accelerator`, here through
//! `EngineTuning::faults`): sessions are placed on it and counted against the VRAM budget,
//! idle cached ones are set aside least recently used first while those in use stay, and a
//! session that runs out of memory is moved to the CPU in place, where it computes the same.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, ort_lib, procedural_image};
use tessera::engine::{
    BudgetSetting, Engine, EngineError, EngineOptions, EngineTuning, ExecutionProvider, Placement,
};
use tessera::nets::esrgan::{Esrgan, EsrganError};

/// What the budget counts for one tiny ESRGAN session: its few kilobytes of weights (and 1/20)
/// and the fixed 64 MiB allowance.
const SESSION: u64 = 64 << 20;

fn engine(faults: &str, budget: BudgetSetting) -> Engine {
    let mut options = EngineOptions::new(std::env::temp_dir());
    options.ort_lib = Some(ort_lib());
    options.intra_threads = Some(1);
    Engine::with_tuning(
        options,
        EngineTuning {
            vram_budget: budget,
            faults: faults.parse().unwrap(),
            session_cache_size: 8,
            ..EngineTuning::default()
        },
    )
    .unwrap()
}

/// Copies of one tiny model under different names (different files: different sessions).
fn models(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let path = dir.join(format!("{n}.safetensors"));
            std::fs::copy(fixture("tiny-x4.safetensors"), &path).unwrap();
            path
        })
        .collect()
}

#[test]
fn idle_sessions_are_set_aside_by_bytes_and_those_in_use_stay() {
    // Room for two sessions and a half.
    let engine = engine("accelerator", BudgetSetting::Bytes(5 * SESSION / 2));
    assert_eq!(
        engine.execution_providers(),
        [ExecutionProvider::Simulated, ExecutionProvider::Cpu]
    );
    set_aside_by_bytes(&engine);
}

#[test]
fn a_budget_configured_on_the_cpu_holds_the_cpu_sessions() {
    let engine = engine("", BudgetSetting::Bytes(5 * SESSION / 2));
    assert_eq!(engine.execution_providers(), [ExecutionProvider::Cpu]);
    set_aside_by_bytes(&engine);
    assert_eq!(
        self::engine("", BudgetSetting::Auto).session_budget(),
        None,
        "no budget on the CPU unless configured"
    );
}

fn set_aside_by_bytes(engine: &Engine) {
    assert_eq!(engine.session_budget(), Some(5 * SESSION / 2));
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let [a, b, c, d] = models(dir.path(), &["a", "b", "c", "d"])
        .try_into()
        .unwrap();
    let held = |engine: &Engine| engine.held_sessions();

    let first = Esrgan::load(engine, &a, cache.path()).unwrap();
    let second = Esrgan::load(engine, &b, cache.path()).unwrap();
    assert!(engine.session_bytes() >= 2 * SESSION);
    drop(first);
    // a is idle (only the cache holds it), b in use: c takes a's place.
    let third = Esrgan::load(engine, &c, cache.path()).unwrap();
    assert_eq!(
        held(engine),
        ["ESRGAN b.safetensors", "ESRGAN c.safetensors"]
    );
    assert!(engine.session_bytes() <= 5 * SESSION / 2);
    // Everything in use: nothing can go, d is built over the budget all the same.
    let fourth = Esrgan::load(engine, &d, cache.path()).unwrap();
    assert_eq!(held(engine).len(), 3);
    // a comes back when asked for again (b, now idle, makes room).
    drop(second);
    let again = Esrgan::load(engine, &a, cache.path()).unwrap();
    assert!(held(engine).contains(&"ESRGAN a.safetensors".to_owned()));
    assert!(!held(engine).contains(&"ESRGAN b.safetensors".to_owned()));
    drop((third, fourth, again));
}

#[test]
fn a_session_out_of_memory_moves_to_the_cpu_in_place_and_computes_the_same() {
    let engine = engine("accelerator, oom=ESRGAN oom@2", BudgetSetting::Auto);
    assert_eq!(
        engine.session_budget(),
        None,
        "no device memory to budget by"
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let [path] = models(dir.path(), &["oom"]).try_into().unwrap();
    let mut net = Esrgan::load(&engine, &path, cache.path()).unwrap();
    let x = procedural_image(8, 8).insert_axis(ndarray::Axis(0));
    let clean = net.forward(x.view()).unwrap();
    let error = net.forward(x.view()).unwrap_err();
    let EsrganError::Runtime(EngineError::OutOfMemory { model, .. }) = &error else {
        panic!("an out-of-memory error: {error}");
    };
    assert_eq!(model, "ESRGAN oom.safetensors");
    engine.move_to_cpu(model).unwrap();
    assert_eq!(
        engine.held_sessions(),
        ["ESRGAN oom.safetensors (on the CPU)"]
    );
    let session = engine.session(net.compiled()).unwrap();
    assert!(matches!(
        session.lock().unwrap().placement(),
        Placement::Cpu { reason: Some(_) }
    ));
    assert_eq!(net.forward(x.view()).unwrap(), clean);
    // The job that ran it is told it still runs there.
    let mark = engine.warning_mark();
    net.forward(x.view()).unwrap();
    assert_eq!(
        engine.warnings_since(mark),
        ["ESRGAN oom.safetensors runs on the CPU (slower): it ran out of GPU memory"]
    );
}
