//! Prompts as A1111 (and so Clarity) reads them: the text a user types becomes LoRA tags, 77-
//! token chunks with per-token weights, and finally the text encoder's conditioning.
//!
//! ```text
//! "masterpiece, (detail:1.2) <lora:more_details:0.5> JuggernautNegative-neg"
//!   ─ syntax::extract_networks ─▶ LoRA tags + text          (tags removed)
//!   ─ syntax::parse_attention ──▶ weighted segments          ((x) ×1.1, [x] ÷1.1, (x:w), BREAK)
//!   ─ tokenizer (per segment) ──▶ token ids                  (CLIP BPE, OpenAI vocabulary)
//!   ─ chunks::chunk ───────────▶ 77-token chunks + weights   (commas, BREAK, embeddings)
//!   ─ conditioning::encode ────▶ [77·chunks, C]              (text encoder, emphasis)
//! ```
//!
//! The user-facing syntax is described in `docs/prompts.md`. Not supported (yet): A1111's
//! prompt editing `[a:b:0.5]`, alternation `[a|b]` and `AND`, which are read as ordinary text
//! and brackets.

pub mod chunks;
pub mod conditioning;
pub mod syntax;
pub mod tokenizer;

pub use chunks::{CHUNK_LEN, Chunk, EmbeddingWord};
pub use conditioning::{apply_emphasis, encode};
pub use syntax::{LoraTag, Segment, SyntaxError};
pub use tokenizer::ClipTokenizer;

use crate::nets::clip::EmbeddingSlot;

/// A prompt taken apart (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedPrompt {
    /// The text with the extra-network tags removed.
    pub text: String,
    /// The LoRA tags, in order.
    pub loras: Vec<LoraTag>,
    /// Weighted segments, each tokenized on its own.
    pub segments: Vec<Segment>,
    /// The rows for the text encoder.
    pub chunks: Vec<Chunk>,
}

/// Reads prompts for one text encoder (its textual-inversion embeddings are known by name).
#[derive(Debug)]
pub struct PromptParser {
    tokenizer: ClipTokenizer,
    words: Vec<EmbeddingWord>,
}

impl PromptParser {
    /// A parser that knows `embeddings` (from `TextEncoder::embeddings`). Building the
    /// tokenizer takes a few tens of milliseconds: keep the parser.
    pub fn new(embeddings: &[EmbeddingSlot]) -> PromptParser {
        let tokenizer = ClipTokenizer::new();
        let mut words: Vec<EmbeddingWord> = embeddings
            .iter()
            .enumerate()
            // A later embedding of the same name replaces an earlier one, as in A1111.
            .filter(|(i, e)| !embeddings[i + 1..].iter().any(|later| later.name == e.name))
            .map(|(_, e)| EmbeddingWord {
                // A1111 registers an embedding under the tokens of its name.
                name_ids: tokenizer.encode(&e.name),
                first_id: e.first_id,
                len: e.len,
            })
            .filter(|w| !w.name_ids.is_empty())
            .collect();
        words.sort_by_key(|w| std::cmp::Reverse(w.name_ids.len()));
        PromptParser { tokenizer, words }
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// Takes `prompt` apart without A1111's emphasis: brackets, colons and `BREAK` are text
    /// and every token weighs 1, as the Refiners library reads prompts. Extra-network tags are
    /// still taken out (Refiners has none; they would only be noise).
    pub fn parse_plain(&self, prompt: &str) -> Result<ParsedPrompt, SyntaxError> {
        let (text, loras) = syntax::extract_networks(prompt)?;
        let ids = self.tokenizer.encode(&text);
        let segments = vec![Segment {
            text: text.clone(),
            weight: 1.0,
        }];
        let chunks = chunks::chunk([(1.0, &ids[..], false)], &self.words);
        Ok(ParsedPrompt {
            text,
            loras,
            segments,
            chunks,
        })
    }

    /// Takes `prompt` apart: LoRA tags, weighted segments, 77-token chunks.
    pub fn parse(&self, prompt: &str) -> Result<ParsedPrompt, SyntaxError> {
        let (text, loras) = syntax::extract_networks(prompt)?;
        let segments = syntax::parse_attention(&text)?;
        let ids: Vec<Vec<i64>> = segments
            .iter()
            .map(|s| self.tokenizer.encode(&s.text))
            .collect();
        let pieces = segments
            .iter()
            .zip(&ids)
            .map(|(s, ids)| (s.weight, &ids[..], s.is_break()));
        let chunks = chunks::chunk(pieces, &self.words);
        Ok(ParsedPrompt {
            text,
            loras,
            segments,
            chunks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_prompts_keep_brackets_as_text_and_weigh_every_token_1() {
        let parser = PromptParser::new(&[]);
        let plain = parser
            .parse_plain("(worst quality:2) <lora:x:1> BREAK a")
            .unwrap();
        let a1111 = parser
            .parse("(worst quality:2) <lora:x:1> BREAK a")
            .unwrap();
        assert_eq!(plain.loras.len(), 1);
        assert_eq!(plain.chunks.len(), 1, "BREAK is a word here");
        assert!(plain.chunks[0].weights.iter().all(|&w| w == 1.0));
        assert_eq!(a1111.chunks.len(), 2);
        let tok = parser.tokenizer();
        let expected = tok.encode("(worst quality:2)  BREAK a");
        assert_eq!(&plain.chunks[0].ids[1..1 + expected.len()], &expected[..]);
    }

    #[test]
    fn a_later_embedding_of_the_same_name_wins() {
        let slot = |first_id, len| EmbeddingSlot {
            name: "style".into(),
            first_id,
            len,
        };
        let parser = PromptParser::new(&[slot(49408, 2), slot(49410, 1)]);
        let p = parser.parse("a style").unwrap();
        assert_eq!(&p.chunks[0].ids[..4], &[49406, 320, 49410, 49407]);
    }
}
