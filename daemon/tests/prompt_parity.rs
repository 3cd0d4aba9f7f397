//! The tokenizer and A1111's prompt syntax against the references of
//! `tests/fixtures/gen_clip_prompts.py`: token ids from transformers' `CLIPTokenizer` with the
//! OpenAI vocabulary, and segments, LoRA tags, chunks and weights from a re-implementation of
//! A1111's documented behaviour, on the same prompts.

mod common;

use ndarray::{Array2, Axis, s};
use serde::Deserialize;
use tessera::nets::clip::{ClipOptions, EmbeddingSlot, TextEncoder};
use tessera::pipeline::prompt::{
    Chunk, ClipTokenizer, ParsedPrompt, PromptParser, apply_emphasis, encode,
};

#[derive(Deserialize)]
struct Lora {
    name: String,
    te: f64,
    unet: f64,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    ids: Vec<i64>,
    text: String,
    loras: Vec<Lora>,
    segments: Vec<(String, f64)>,
    segment_ids: Vec<Vec<i64>>,
    chunk_ids: Vec<Vec<i64>>,
    chunk_weights: Vec<Vec<f64>>,
}

fn cases() -> Vec<Case> {
    let path = common::repo_root().join("tests/fixtures/clip/prompts.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The fixture embeddings in the real vocabulary: ids from 49408 on, in file order.
fn slots() -> Vec<EmbeddingSlot> {
    [
        ("tiny-neg", 49408, 3),
        ("TinyStyle", 49411, 2),
        ("tiny-concept", 49413, 1),
    ]
    .into_iter()
    .map(|(name, first_id, len)| EmbeddingSlot {
        name: name.into(),
        first_id,
        len,
    })
    .collect()
}

#[test]
fn token_ids_match_transformers() {
    let tokenizer = ClipTokenizer::new();
    let cases = cases();
    assert!(cases.len() >= 30, "{} prompts", cases.len());
    let mut mismatches = Vec::new();
    let mut tokens = 0;
    for case in &cases {
        tokens += case.ids.len();
        let ids = tokenizer.encode_with_specials(&case.prompt);
        if ids != case.ids {
            mismatches.push(format!(
                "{:?}\n  ours   {ids:?}\n  theirs {:?}",
                case.prompt, case.ids
            ));
        }
        // Each emphasis segment alone, as A1111 tokenizes them.
        for ((text, _), expected) in case.segments.iter().zip(&case.segment_ids) {
            if tokenizer.encode(text) != *expected {
                mismatches.push(format!("segment {text:?} of {:?}", case.prompt));
            }
        }
    }
    println!(
        "{} of {} prompts ({tokens} tokens) identical to transformers",
        cases.len() - mismatches.len(),
        cases.len()
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn prompts_parse_as_a1111() {
    let parser = PromptParser::new(&slots());
    let mut embedding_tokens = 0;
    for case in cases() {
        let p = parser
            .parse(&case.prompt)
            .unwrap_or_else(|e| panic!("{:?}: {e}", case.prompt));
        let what = format!("{:?}", case.prompt);
        assert_eq!(p.text, case.text, "{what}: text without tags");
        let loras: Vec<_> = p
            .loras
            .iter()
            .map(|l| (l.name.clone(), l.te, l.unet))
            .collect();
        let expected: Vec<_> = case
            .loras
            .iter()
            .map(|l| (l.name.clone(), l.te, l.unet))
            .collect();
        assert_eq!(loras, expected, "{what}: LoRA tags");
        let segments: Vec<_> = p
            .segments
            .iter()
            .map(|s| (s.text.clone(), s.weight))
            .collect();
        // Weights are compared exactly: they decide which pieces merge.
        assert_eq!(segments, case.segments, "{what}: segments");
        let ids: Vec<_> = p.chunks.iter().map(|c| c.ids.clone()).collect();
        assert_eq!(ids, case.chunk_ids, "{what}: chunk ids");
        let weights: Vec<_> = p.chunks.iter().map(|c| c.weights.clone()).collect();
        assert_eq!(weights, case.chunk_weights, "{what}: chunk weights");
        embedding_tokens += ids.iter().flatten().filter(|&&t| t >= 49408).count();
    }
    assert!(embedding_tokens > 20, "the prompts call the embeddings");
}

#[test]
fn emphasis_matches_a1111_on_arrays() {
    let bytes =
        std::fs::read(common::repo_root().join("tests/fixtures/clip/reference.safetensors"))
            .unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let get = |name: &str| -> Vec<f32> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    for case in ["clarity-negative", "nested"] {
        let weights = get(&format!("emphasis.{case}.weights"));
        let z = get(&format!("emphasis.{case}.z"));
        let expected = get(&format!("emphasis.{case}.out"));
        let mut z = Array2::from_shape_vec((77, z.len() / 77), z).unwrap();
        apply_emphasis(z.view_mut(), &weights);
        let err = z
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        println!("emphasis {case}: max abs {err:.1e}");
        assert!(err < 1e-5, "{case}: {err}");
        assert!(weights.iter().any(|&w| w != 1.0));
    }
}

#[test]
fn broken_prompts_are_errors() {
    let parser = PromptParser::new(&[]);
    for bad in [
        "(word:1.2.3)",
        "(word:.)",
        "<lora:name:strong>",
        "<lora:te=0.5>",
    ] {
        let e = parser.parse(bad).unwrap_err();
        assert!(!e.to_string().is_empty(), "{bad}");
    }
}

/// `encode` runs every chunk in one batch, weights each, and lays them side by side.
#[test]
fn chunks_are_encoded_weighted_and_concatenated() {
    let fixtures = common::repo_root().join("tests/fixtures/clip");
    let bytes = std::fs::read(fixtures.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<i64> = st
        .tensor("ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let reference: Vec<f32> = st
        .tensor("tiny-sd.last")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let reference = ndarray::Array3::from_shape_vec((2, 77, 64), reference).unwrap();
    // Two chunks of the tiny model's vocabulary with A1111 weights from a real prompt.
    let weights = cases()[2].chunk_weights[0].clone();
    let parsed = ParsedPrompt {
        text: String::new(),
        loras: vec![],
        segments: vec![],
        chunks: (0..2)
            .map(|i| Chunk {
                ids: ids[i * 77..(i + 1) * 77].to_vec(),
                weights: if i == 0 {
                    weights.clone()
                } else {
                    vec![1.0; 77]
                },
            })
            .collect(),
    };
    let cache = tempfile::tempdir().unwrap();
    let mut encoder = TextEncoder::load(
        common::engine(),
        &fixtures.join("tiny-sd"),
        &[],
        &ClipOptions::default(),
        cache.path(),
    )
    .unwrap();
    let z = encode(&mut encoder, &parsed).unwrap();
    assert_eq!(z.dim(), (154, 64));
    let mut expected = reference.clone();
    let w: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    apply_emphasis(expected.index_axis_mut(Axis(0), 0), &w);
    let expected = expected.into_shape_with_order((154, 64)).unwrap();
    let err = (&z - &expected).iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(err < 1e-4, "{err}");
    // The second chunk was not weighted.
    let plain = (&z.slice(s![77.., ..]) - &reference.index_axis(Axis(0), 1))
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(plain < 1e-4, "{plain}");
}
