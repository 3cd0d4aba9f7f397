//! Execution providers on the ONNX Runtime library the tests use (the CPU-only wheel): an
//! accelerator asked for in the configuration cannot be registered, is dropped with its reason,
//! and the model still runs on the CPU with the same result.

mod common;

use common::{fixture, ort_lib, procedural_image};
use tessera::engine::{Engine, EngineOptions, EngineTuning, ExecutionProvider};
use tessera::nets::esrgan::Esrgan;
use tessera::nets::tiling::Tiling;

#[test]
fn unusable_accelerators_fall_back_to_the_cpu_with_a_reason() {
    let mut options = EngineOptions::new(std::env::temp_dir());
    options.ort_lib = Some(ort_lib());
    options.intra_threads = Some(2);
    let engine = Engine::with_tuning(
        options,
        EngineTuning {
            execution_providers: tessera::engine::parse_providers(&[
                "cuda".into(),
                "coreml".into(),
            ])
            .unwrap(),
            ..EngineTuning::default()
        },
    )
    .unwrap();
    assert_eq!(engine.execution_providers(), [ExecutionProvider::Cpu]);
    let dropped: Vec<_> = engine
        .dropped_providers()
        .iter()
        .map(|(ep, _)| *ep)
        .collect();
    assert_eq!(
        dropped,
        [
            ExecutionProvider::Cuda { device_id: 0 },
            ExecutionProvider::CoreMl
        ]
    );
    for (ep, reason) in engine.dropped_providers() {
        assert!(!reason.trim().is_empty(), "{ep}: a reason is given");
    }
    assert_eq!(engine.device_description(), "CPU (2 threads)");
    let probe = engine.probe_providers(&[
        ExecutionProvider::Cpu,
        ExecutionProvider::Cuda { device_id: 0 },
    ]);
    assert!(probe[0].1.is_ok() && probe[1].1.is_err());

    let cache = tempfile::tempdir().unwrap();
    let mut model = Esrgan::load(&engine, &fixture("tiny-x4.safetensors"), cache.path()).unwrap();
    let input = procedural_image(6, 5);
    let out = model
        .upscale(
            input.view(),
            &Tiling::default(),
            tessera::nets::esrgan::ChannelOrder::Rgb,
            &mut |_, _| Ok(()),
        )
        .unwrap();
    assert_eq!(out.dim(), (3, 24, 20));
}
