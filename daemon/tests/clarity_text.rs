//! The text side of a Clarity job on the tiny pipeline's text encoder (the real CLIP
//! vocabulary, so real prompts tokenize into it): A1111's emphasis rescale as the
//! pipeline applies it (re-derived here from the raw encoder output), plain prompts for the
//! Refiners preset, and the cache that spares a repeated prompt the encoder.

mod common;

use ndarray::{Array2, Axis};
use tessera::nets::clip::{ClipOptions, TextEncoder};
use tessera::pipeline::clarity::text::TextSide;
use tessera::pipeline::prompt::PromptParser;
use tessera::weights::embedding::TextualInversion;

fn pipeline_fixture(name: &str) -> std::path::PathBuf {
    common::repo_root()
        .join("tests/fixtures/pipeline")
        .join(name)
}

fn encoder(cache: &std::path::Path) -> TextEncoder {
    let neg = TextualInversion::load(&pipeline_fixture("tiny-embedding.pt")).unwrap();
    TextEncoder::load(
        common::engine(),
        &pipeline_fixture("tiny-clarity"),
        &[neg],
        &ClipOptions::default(),
        cache,
    )
    .unwrap()
}

/// Clarity's negative prompt with the test embedding in place of JuggernautNegative-neg.
const NEGATIVE: &str = "(worst quality, low quality, normal quality:2) tiny-embedding";

#[test]
fn emphasis_multiplies_rows_then_restores_the_chunk_mean() {
    let cache = tempfile::tempdir().unwrap();
    let mut side = TextSide::new(encoder(cache.path()));
    let got = side.conditioning(NEGATIVE, true).unwrap();

    // The same chunk through the raw encoder, weighted and rescaled by hand.
    let mut raw = encoder(cache.path());
    let parsed = PromptParser::new(raw.embeddings()).parse(NEGATIVE).unwrap();
    assert_eq!(parsed.chunks.len(), 1);
    let chunk = &parsed.chunks[0];
    assert!(chunk.weights.contains(&2.0) && chunk.weights.contains(&1.0));
    assert!(
        chunk.ids.iter().any(|&id| id >= 49408),
        "the embedding's vectors are used"
    );
    let ids = Array2::from_shape_vec((1, chunk.ids.len()), chunk.ids.clone()).unwrap();
    let z = raw.encode(ids.view()).unwrap().index_axis_move(Axis(0), 0);
    let before: f64 = z.iter().map(|&v| f64::from(v)).sum::<f64>() / z.len() as f64;
    let mut weighted = z.clone();
    for (mut row, &w) in weighted.rows_mut().into_iter().zip(&chunk.weights) {
        row.mapv_inplace(|v| v * w as f32);
    }
    let after: f64 = weighted.iter().map(|&v| f64::from(v)).sum::<f64>() / z.len() as f64;
    let expected = weighted.mapv(|v| v * (before / after) as f32);
    let diff = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-5, "emphasis differs by {diff}");
    assert_ne!(got, z, "the weight changed something");

    // The Refiners preset reads the same text without weights: brackets are tokens.
    let plain = side.conditioning(NEGATIVE, false).unwrap();
    assert_ne!(plain, got);
}

#[test]
fn repeated_prompts_come_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let mut side = TextSide::new(encoder(cache.path()));
    let first = side.conditioning(NEGATIVE, true).unwrap();
    let again = side.conditioning(NEGATIVE, true).unwrap();
    assert_eq!(first, again);
    assert_eq!(side.runs, 1, "the second job's prompt costs no encoder run");
    side.conditioning("masterpiece, best quality, highres", true)
        .unwrap();
    assert_eq!(side.runs, 2);
    // Old prompts give way to new ones (8 are kept).
    for i in 0..8 {
        side.conditioning(&format!("a photo of {i} cats"), true)
            .unwrap();
    }
    side.conditioning(NEGATIVE, true).unwrap();
    assert_eq!(side.runs, 11, "the first prompt was evicted");
    assert!(side.conditioning("(unclosed:1.2.3)", true).is_err());
}

#[test]
fn a_set_aside_encoder_still_answers_cached_prompts_until_warmed() {
    let cache = tempfile::tempdir().unwrap();
    let engine = common::engine();
    let mut side = TextSide::new(encoder(cache.path()));
    let first = side.conditioning(NEGATIVE, true).unwrap();
    let held = |part: &str| engine.held_sessions().iter().any(|s| s.starts_with(part));
    assert!(side.is_warm() && held("CLIP"));

    side.set_aside(engine);
    // (Other tests of this binary hold encoders of their own, so `held` proves nothing here.)
    assert!(!side.is_warm());
    assert_eq!(side.conditioning(NEGATIVE, true).unwrap(), first);
    let err = side
        .conditioning("a prompt never encoded", true)
        .unwrap_err();
    assert!(err.to_string().contains("set aside"), "{err}");

    side.warm(engine).unwrap();
    assert!(side.is_warm() && held("CLIP"));
    side.conditioning("a prompt never encoded", true).unwrap();
    assert_eq!(side.conditioning(NEGATIVE, true).unwrap(), first);
}
