//! The VAE's CPU sessions hold ONNX Runtime's arena for one call and give it back at its end
//! (`CpuMemory::ArenaPerCall`): within a call, blocks are reused instead of mapped afresh (far
//! fewer page faults than the same graph on the heap), and after it the resident set is back
//! where it was, as with the heap.
//!
//! One test in this binary: it counts the whole process's page faults and resident memory.

#![cfg(target_os = "linux")]

mod common;
mod sd_common;

use ndarray::Array4;
use tessera::engine::{CompiledModel, CpuMemory, Engine, EngineOptions, EngineTuning};

fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    kib / 1024.0
}

fn minor_faults() -> i64 {
    // SAFETY: getrusage writes the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage.ru_minflt
    }
}

/// What a first decode of a shape cost in page faults, and the resident memory it left.
struct FirstCall {
    faults: i64,
    left_mib: f64,
}

/// Decodes `latent` with `model` in a new session: the first call of this shape, before ONNX
/// Runtime has a memory pattern for it (what each new image size meets).
fn first_decode(engine: &Engine, model: &CompiledModel, latent: &Array4<f32>) -> FirstCall {
    let session = engine.session(model).unwrap_or_else(|e| panic!("{e}"));
    let (faults, before) = (minor_faults(), resident_mib());
    let out = tessera::nets::sd::run(
        &session,
        &model.name,
        &[("latent_sample", latent.view().into_dyn())],
        &["sample"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    drop(out);
    FirstCall {
        faults: minor_faults() - faults,
        left_mib: resident_mib() - before,
    }
}

fn engine(cpu_arena: bool) -> Engine {
    let mut options = EngineOptions::new(std::env::temp_dir());
    options.ort_lib = Some(common::ort_lib());
    options.intra_threads = Some(1);
    let tuning = EngineTuning {
        cpu_arena,
        ..EngineTuning::default()
    };
    Engine::with_tuning(options, tuning).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_vae_arena_reuses_blocks_within_a_call_and_is_given_back_after_it() {
    // As the daemon runs: blocks of 1 MiB or more mapped on their own.
    tessera::server::keep_large_blocks_mapped();
    let cache = tempfile::tempdir().unwrap();
    let vae = sd_common::tiny_ldm_vae(cache.path());
    assert_eq!(vae.decoder.cpu_memory, CpuMemory::ArenaPerCall);
    assert_eq!(vae.encoder.cpu_memory, CpuMemory::ArenaPerCall);
    let on_the_heap = CompiledModel {
        cpu_memory: CpuMemory::Heap,
        ..vae.decoder.clone()
    };
    // 512² pixels: the tiny decoder's activations are blocks of 8 to 64 MiB.
    let latent = Array4::from_shape_fn((1, 4, 64, 64), |(_, c, y, x)| {
        ((x + 2 * y + 3 * c) % 17) as f32 / 8.0 - 1.0
    });

    let daemon = engine(false);
    let heap = first_decode(&daemon, &on_the_heap, &latent);
    daemon.release_unused();
    let arena = first_decode(&daemon, &vae.decoder, &latent);
    // `engine.cpu_arena = true`: every session keeps its arena (the measurement sees it).
    let kept = first_decode(&engine(true), &on_the_heap, &latent);
    let report = format!(
        "first 512² decode: heap {} faults, {:.1} MiB left; arena per call {} faults, {:.1} MiB \
         left; arena kept {} faults, {:.1} MiB left",
        heap.faults, heap.left_mib, arena.faults, arena.left_mib, kept.faults, kept.left_mib
    );
    eprintln!("{report}");
    assert!(arena.faults * 3 < heap.faults, "{report}");
    assert!(arena.left_mib < 8.0 && heap.left_mib < 8.0, "{report}");
    assert!(kept.left_mib > 32.0, "{report}");
}
