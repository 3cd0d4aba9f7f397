//! The CLIP text encoder through the real loaders and ONNX Runtime, against transformers'
//! outputs on the same files (`tests/fixtures/gen_clip.py`): the diffusers folder, the fp16 LDM
//! single file, textual-inversion embeddings, CLIP skip, the fp16 graph.

mod common;

use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayD};
use tessera::nets::ModelError;
use tessera::nets::Precision;
use tessera::nets::clip::{self, ClipOptions, TextEncoder};
use tessera::weights::WeightsError;
use tessera::weights::clip_keys::Layout;
use tessera::weights::embedding::TextualInversion;

/// fp32 graphs against transformers in fp32.
const TOLERANCE: f32 = 1e-4;
/// fp16 graphs (weights and every op in half precision) against transformers in fp32, on
/// outputs of unit scale (they leave a layer norm). Measured: at most 3.9e-3.
const TOLERANCE_F16: f32 = 1e-2;

fn fixture(name: &str) -> PathBuf {
    common::repo_root().join("tests/fixtures/clip").join(name)
}

fn reference(name: &str) -> ArrayD<f32> {
    let bytes = std::fs::read(fixture("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("no reference `{name}`"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let data = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    ArrayD::from_shape_vec(t.shape().to_vec(), data).unwrap()
}

fn reference_ids(name: &str) -> Array2<i64> {
    let bytes = std::fs::read(fixture("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::I64);
    let data = t
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Array2::from_shape_vec((t.shape()[0], t.shape()[1]), data).unwrap()
}

fn max_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn embeddings() -> Vec<TextualInversion> {
    ["tiny-neg.pt", "TinyStyle.safetensors", "tiny-concept.bin"]
        .iter()
        .map(|f| TextualInversion::load(&fixture(f)).unwrap_or_else(|e| panic!("{f}: {e}")))
        .collect()
}

/// Loads `model`, encodes `ids` and returns the largest differences from the references
/// `<prefix>.last` and (when given) `<prefix>.pooled`.
fn run(
    model: &Path,
    embeddings: &[TextualInversion],
    options: ClipOptions,
    ids: &Array2<i64>,
    prefix: &str,
    pooled: bool,
) -> (TextEncoder, f32, f32) {
    let cache = tempfile::tempdir().unwrap();
    let mut enc = TextEncoder::load(common::engine(), model, embeddings, &options, cache.path())
        .unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    let (last, pool) = enc.run(ids.view()).unwrap();
    let last_err = max_diff(&last.into_dyn(), &reference(&format!("{prefix}.last")));
    let pool_err = if pooled {
        max_diff(&pool.into_dyn(), &reference(&format!("{prefix}.pooled")))
    } else {
        0.0
    };
    println!(
        "{prefix} {options:?}: last_hidden_state {last_err:.2e}, pooler_output {pool_err:.2e}"
    );
    (enc, last_err, pool_err)
}

#[test]
fn diffusers_folder_matches_transformers() {
    let ids = reference_ids("ids");
    // The pipeline folder and its text_encoder/ folder both work.
    for model in [fixture("tiny-sd"), fixture("tiny-sd/text_encoder")] {
        let (enc, last, pooled) = run(&model, &[], ClipOptions::default(), &ids, "tiny-sd", true);
        assert!(last < TOLERANCE && pooled < TOLERANCE, "{last} {pooled}");
        let c = enc.config();
        assert_eq!(c.layout, Layout::Transformers);
        assert_eq!((c.vocab_size, c.hidden, c.positions), (160, 64, 77));
        assert_eq!(
            (c.layers, c.intermediate, c.heads),
            (2, 96, 4),
            "heads from config.json"
        );
    }
}

#[test]
fn f32_safetensors_are_used_in_place() {
    let cache = tempfile::tempdir().unwrap();
    let compiled = clip::compile(
        &fixture("tiny-sd"),
        &[],
        &ClipOptions::default(),
        cache.path(),
    )
    .unwrap();
    assert_eq!(
        compiled.model.weight_files,
        vec![std::path::absolute(fixture("tiny-sd/text_encoder/model.safetensors")).unwrap()]
    );
    assert_eq!(
        std::fs::read_dir(cache.path()).unwrap().count(),
        0,
        "nothing converted"
    );
}

#[test]
fn clip_skip_stops_early_and_applies_the_final_norm() {
    let ids = reference_ids("ids");
    let options = ClipOptions {
        clip_skip: 2,
        ..ClipOptions::default()
    };
    let (_, last, _) = run(
        &fixture("tiny-sd"),
        &[],
        options,
        &ids,
        "tiny-sd.skip2",
        false,
    );
    assert!(last < TOLERANCE, "{last}");
    // Not the same as the full model (so the option does something).
    let (_, full, _) = run(&fixture("tiny-sd"), &[], options, &ids, "tiny-sd", false);
    assert!(full > 1e-2);
}

#[test]
fn textual_inversion_tokens_past_the_vocabulary() {
    let ids = reference_ids("ti_ids");
    let e = embeddings();
    assert_eq!(
        e.iter()
            .map(|e| (e.name.as_str(), e.len()))
            .collect::<Vec<_>>(),
        [("tiny-neg", 3), ("TinyStyle", 2), ("tiny-concept", 1)]
    );
    let (enc, last, pooled) = run(
        &fixture("tiny-sd"),
        &e,
        ClipOptions::default(),
        &ids,
        "tiny-sd.ti",
        true,
    );
    assert!(last < TOLERANCE && pooled < TOLERANCE, "{last} {pooled}");
    let slots: Vec<_> = enc
        .embeddings()
        .iter()
        .map(|s| (s.name.as_str(), s.first_id, s.len))
        .collect();
    assert_eq!(
        slots,
        [
            ("tiny-neg", 160, 3),
            ("TinyStyle", 163, 2),
            ("tiny-concept", 165, 1)
        ]
    );
}

#[test]
fn ldm_single_file_matches_diffusers_single_file_loader() {
    let ids = reference_ids("ids");
    let (enc, last, pooled) = run(
        &fixture("tiny-ldm.safetensors"),
        &[],
        ClipOptions::default(),
        &ids,
        "tiny-ldm",
        true,
    );
    assert!(last < TOLERANCE && pooled < TOLERANCE, "{last} {pooled}");
    let c = enc.config();
    assert_eq!(c.layout, Layout::LdmSingleFile);
    assert_eq!(
        (c.layers, c.intermediate, c.heads),
        (2, 64, 1),
        "64 wide: one CLIP head"
    );
}

#[test]
fn fp16_graphs_on_the_cpu() {
    let ids = reference_ids("ids");
    let half = ClipOptions {
        precision: Precision::F16,
        ..ClipOptions::default()
    };
    // The fp16 LDM file is used in place; the f32 diffusers weights are converted to f16.
    for (model, prefix) in [
        (fixture("tiny-ldm.safetensors"), "tiny-ldm"),
        (fixture("tiny-sd"), "tiny-sd"),
    ] {
        let (_, last, pooled) = run(&model, &[], half, &ids, prefix, true);
        assert!(
            last < TOLERANCE_F16 && pooled < TOLERANCE_F16,
            "{prefix}: {last} {pooled}"
        );
    }
    let (_, last, _) = run(
        &fixture("tiny-sd"),
        &embeddings(),
        half,
        &reference_ids("ti_ids"),
        "tiny-sd.ti",
        false,
    );
    assert!(last < TOLERANCE_F16, "{last}");
    let cache = tempfile::tempdir().unwrap();
    let compiled =
        clip::compile(&fixture("tiny-ldm.safetensors"), &[], &half, cache.path()).unwrap();
    assert_eq!(
        compiled.model.weight_files,
        vec![std::path::absolute(fixture("tiny-ldm.safetensors")).unwrap()],
        "f16 weights used in place"
    );
}

/// Files saved by transformers ≥ 5.6 drop the `text_model.` prefix.
#[test]
fn flattened_transformers_layout() {
    let bytes = std::fs::read(fixture("tiny-sd/text_encoder/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("position_ids"))
        .map(|(k, v)| (k.strip_prefix("text_model.").unwrap().to_owned(), v))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    safetensors::serialize_to_file(renamed, None, &dir.path().join("model.safetensors")).unwrap();
    std::fs::copy(
        fixture("tiny-sd/text_encoder/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let ids = reference_ids("ids");
    let (enc, last, _) = run(
        dir.path(),
        &[],
        ClipOptions::default(),
        &ids,
        "tiny-sd",
        false,
    );
    assert!(last < TOLERANCE, "{last}");
    assert_eq!(enc.config().layout, Layout::TransformersFlat);
}

#[test]
fn refusals_say_why() {
    let cache = tempfile::tempdir().unwrap();
    let opts = |clip_skip| ClipOptions {
        clip_skip,
        ..ClipOptions::default()
    };
    for skip in [0, 3] {
        let e = clip::compile(&fixture("tiny-sd"), &[], &opts(skip), cache.path()).unwrap_err();
        assert!(e.to_string().contains("CLIP skip"), "{e}");
    }
    for (file, says) in [
        ("sdxl-embedding.safetensors", "SDXL embedding"),
        ("two-terms.safetensors", "one-tensor"),
    ] {
        let e = TextualInversion::load(&fixture(file)).unwrap_err();
        assert!(matches!(e, WeightsError::UnknownLayout { .. }), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    let e = TextualInversion::load(&fixture("old-module.pt")).unwrap_err();
    assert!(
        matches!(&e, WeightsError::ForeignGlobal { global, .. } if global.contains("ParameterDict")),
        "{e}"
    );
    // An embedding file is not a text encoder, and an ESRGAN is not one either.
    for file in [
        fixture("tiny-neg.pt"),
        common::fixture("tiny-x4.safetensors"),
    ] {
        let e = clip::compile(&file, &[], &ClipOptions::default(), cache.path()).unwrap_err();
        assert!(
            matches!(e, ModelError::Invalid(WeightsError::UnknownLayout { .. })),
            "{e}"
        );
    }
    // Vectors of the wrong width.
    let mut wide = embeddings().remove(0);
    wide.vectors = Array2::zeros((2, 65));
    let e = clip::compile(
        &fixture("tiny-sd"),
        &[wide],
        &ClipOptions::default(),
        cache.path(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("65 wide"), "{e}");
    // Ids outside the vocabulary are refused before ONNX Runtime sees them.
    let mut enc = TextEncoder::load(
        common::engine(),
        &fixture("tiny-sd"),
        &[],
        &ClipOptions::default(),
        cache.path(),
    )
    .unwrap();
    let mut ids = reference_ids("ids");
    ids[[0, 3]] = 160;
    assert!(
        enc.encode(ids.view())
            .unwrap_err()
            .to_string()
            .contains("outside the vocabulary")
    );
    assert!(enc.encode(Array2::zeros((1, 5)).view()).is_err());
}

/// A patch (how fused LoRAs arrive) reaches the graph: doubling the final layer norm's gain and
/// bias doubles the output exactly.
#[test]
fn patches_are_applied_to_canonical_tensors() {
    struct DoubleFinalNorm;
    impl tessera::weights::Patch for DoubleFinalNorm {
        fn fingerprint(&self) -> String {
            "double-final-norm".into()
        }
        fn apply(&self, name: &str, _: &[usize], data: &mut [f32]) -> Result<(), WeightsError> {
            if name.starts_with("text_model.final_layer_norm.") {
                data.iter_mut().for_each(|v| *v *= 2.0);
            }
            Ok(())
        }
    }
    let cache = tempfile::tempdir().unwrap();
    let options = ClipOptions::default();
    let compiled = clip::compile_patched(
        &fixture("tiny-sd"),
        &[],
        &options,
        cache.path(),
        Some(&DoubleFinalNorm),
    )
    .unwrap();
    assert!(compiled.model.weight_files[0].starts_with(std::path::absolute(cache.path()).unwrap()));
    let mut enc = TextEncoder::from_compiled(common::engine(), compiled).unwrap();
    let last = enc.encode(reference_ids("ids").view()).unwrap();
    let err = max_diff(&last.into_dyn(), &(reference("tiny-sd.last") * 2.0));
    assert!(err < 2.0 * TOLERANCE, "{err}");
}

/// A kohya LoRA on the text encoder, fused by `weights::lora` through `compile_patched`,
/// against transformers with the weights fused as A1111 does (multiplier 0.7).
#[test]
fn kohya_lora_on_the_text_encoder() {
    use tessera::weights::lora::{Lora, LoraPatch, LoraTarget};
    let lora = Lora::open(&fixture("tiny-lora-te.safetensors")).unwrap();
    let model = fixture("tiny-sd");
    let (_, canonical, _) = clip::open(&model).unwrap();
    let patch = LoraPatch::resolve(&[(&lora, 0.7)], LoraTarget::TextEncoder, &canonical).unwrap();
    assert_eq!(patch.patched().count(), 3);
    let ids = reference_ids("ids");
    for precision in [Precision::F32, Precision::F16] {
        let cache = tempfile::tempdir().unwrap();
        let options = ClipOptions {
            precision,
            ..ClipOptions::default()
        };
        let compiled =
            clip::compile_patched(&model, &[], &options, cache.path(), Some(&patch)).unwrap();
        let mut enc = TextEncoder::from_compiled(common::engine(), compiled).unwrap();
        let (last, pooled) = enc.run(ids.view()).unwrap();
        let last = max_diff(&last.into_dyn(), &reference("tiny-sd.lora.last"));
        let pooled = max_diff(&pooled.into_dyn(), &reference("tiny-sd.lora.pooled"));
        println!(
            "tiny-sd.lora {precision:?}: last_hidden_state {last:.2e}, pooler_output {pooled:.2e}"
        );
        let tolerance = if precision == Precision::F32 {
            TOLERANCE
        } else {
            TOLERANCE_F16
        };
        assert!(
            last < tolerance && pooled < tolerance,
            "{precision:?}: {last} {pooled}"
        );
    }
}
