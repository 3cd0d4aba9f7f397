//! A1111's 77-token chunks: how a weighted, tokenized prompt becomes the rows the text encoder
//! sees (`modules/sd_hijack_clip.py`, `tokenize_line`, v1.7).
//!
//! - A chunk is `BOS + 75 prompt tokens + EOS`, padded with EOS (SD 1.x's padding) and weight 1
//!   for BOS, EOS and padding. An empty prompt is one chunk of padding.
//! - When a chunk is full and the next token is not a comma, and the last comma of the chunk is
//!   at most [`COMMA_BACKTRACK`] tokens back, the tokens after that comma move to the next
//!   chunk, so a long prompt breaks between phrases rather than inside one.
//! - `BREAK` closes the current chunk (even an empty one).
//! - A textual-inversion embedding is called by its name *in token space*: wherever a piece's
//!   tokens continue with the tokens of an embedding's name (so matching ignores case, as the
//!   tokenizer lower-cases), they are replaced by the embedding's ids, longest name first. Its
//!   vectors are never split across chunks.

use super::tokenizer::{BOS, COMMA, EOS};

/// Prompt tokens per chunk.
pub const CHUNK_TOKENS: usize = 75;
/// Tokens per chunk with BOS and EOS: the text encoder's sequence length.
pub const CHUNK_LEN: usize = CHUNK_TOKENS + 2;
/// A1111's default "comma padding backtrack".
pub const COMMA_BACKTRACK: usize = 20;

/// One row for the text encoder, with the attention weight of every position.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    /// [`CHUNK_LEN`] token ids.
    pub ids: Vec<i64>,
    /// [`CHUNK_LEN`] weights (f64 as A1111 computes them; the encoder output takes them as f32).
    pub weights: Vec<f64>,
}

/// An embedding as the chunker sees it: the tokens of its name and the ids of its vectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddingWord {
    pub name_ids: Vec<i64>,
    pub first_id: i64,
    pub len: usize,
}

/// Builds chunks from `(weight, token ids, is_break)` pieces; `words` must be sorted longest
/// name first (stable, so equal lengths keep their registration order, as in A1111).
pub(crate) fn chunk<'a>(
    pieces: impl IntoIterator<Item = (f64, &'a [i64], bool)>,
    words: &[EmbeddingWord],
) -> Vec<Chunk> {
    let mut b = Chunker::default();
    for (weight, ids, is_break) in pieces {
        if is_break {
            b.close();
            continue;
        }
        let mut pos = 0;
        while pos < ids.len() {
            if ids[pos] == COMMA {
                b.last_comma = Some(b.tokens.len());
            } else if b.tokens.len() == CHUNK_TOKENS
                && let Some(comma) = b.last_comma
                && CHUNK_TOKENS - comma <= COMMA_BACKTRACK
            {
                let moved = b.tokens.split_off(comma + 1);
                let moved_weights = b.weights.split_off(comma + 1);
                b.close();
                b.tokens = moved;
                b.weights = moved_weights;
            }
            if b.tokens.len() == CHUNK_TOKENS {
                b.close();
            }
            let rest = &ids[pos..];
            match words.iter().find(|w| rest.starts_with(&w.name_ids)) {
                None => {
                    b.tokens.push(ids[pos]);
                    b.weights.push(weight);
                    pos += 1;
                }
                Some(word) => {
                    if b.tokens.len() + word.len > CHUNK_TOKENS {
                        b.close();
                    }
                    b.tokens
                        .extend((0..word.len as i64).map(|k| word.first_id + k));
                    b.weights.extend(std::iter::repeat_n(weight, word.len));
                    pos += word.name_ids.len();
                }
            }
        }
    }
    if !b.tokens.is_empty() || b.chunks.is_empty() {
        b.close();
    }
    b.chunks
}

#[derive(Default)]
struct Chunker {
    chunks: Vec<Chunk>,
    tokens: Vec<i64>,
    weights: Vec<f64>,
    last_comma: Option<usize>,
}

impl Chunker {
    /// Pads the current chunk, adds BOS and EOS, and starts a new one.
    fn close(&mut self) {
        let pad = CHUNK_TOKENS.saturating_sub(self.tokens.len());
        let mut ids = Vec::with_capacity(CHUNK_LEN);
        ids.push(BOS);
        ids.append(&mut self.tokens);
        ids.extend(std::iter::repeat_n(EOS, pad + 1));
        let mut weights = Vec::with_capacity(CHUNK_LEN);
        weights.push(1.0);
        weights.append(&mut self.weights);
        weights.extend(std::iter::repeat_n(1.0, pad + 1));
        self.chunks.push(Chunk { ids, weights });
        self.last_comma = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_break() {
        let chunks = chunk([(1.0, &[][..], false)], &[]);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].ids[0], BOS);
        assert!(chunks[0].ids[1..].iter().all(|&t| t == EOS));
        let chunks = chunk(
            [
                (1.0, &[5][..], false),
                (-1.0, &[][..], true),
                (2.0, &[6][..], false),
            ],
            &[],
        );
        assert_eq!(chunks.len(), 2);
        assert_eq!((chunks[1].ids[1], chunks[1].weights[1]), (6, 2.0));
    }

    #[test]
    fn commas_pull_the_tail_into_the_next_chunk() {
        // 70 tokens, a comma, 10 more: the 5 after the comma that overflowed move along.
        let mut ids = vec![7; 70];
        ids.push(COMMA);
        ids.extend([8; 10]);
        let chunks = chunk([(1.0, &ids[..], false)], &[]);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].ids[71], COMMA);
        assert_eq!(chunks[0].ids[72], EOS);
        assert_eq!(&chunks[1].ids[1..11], &[8; 10]);
    }

    #[test]
    fn embeddings_replace_their_names_and_stay_whole() {
        let word = EmbeddingWord {
            name_ids: vec![3, 4],
            first_id: 1000,
            len: 3,
        };
        let mut ids = vec![9; 73];
        ids.extend([3, 4]);
        let chunks = chunk([(1.5, &ids[..], false)], std::slice::from_ref(&word));
        assert_eq!(chunks.len(), 2, "3 vectors do not fit after 73 tokens");
        assert_eq!(&chunks[1].ids[1..4], &[1000, 1001, 1002]);
        assert_eq!(&chunks[1].weights[1..4], &[1.5; 3]);
    }
}
