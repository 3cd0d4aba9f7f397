//! The CLIP BPE tokenizer with OpenAI's vocabulary, giving the same ids as transformers'
//! `CLIPTokenizer` for `openai/clip-vit-large-patch14` (SD 1.x's tokenizer).
//!
//! The vocabulary and the byte-pair merges come from the `instant-clip-tokenizer` crate, which
//! bundles OpenAI's `bpe_simple_vocab_16e6.txt` (byte-identical to the copies in the CLIP,
//! open_clip and refiners wheels, sha256 `67603cfd…`) and applies the merges exactly as
//! OpenAI's reference does. That crate does no text preparation of its own beyond
//! lower-casing, and it treats `<start_of_text>` / `<end_of_text>` as markers, which
//! transformers does not; so the steps in front of it are ours, each one transformers':
//!
//! 1. `<|startoftext|>` and `<|endoftext|>` written in the text are the special tokens (49406,
//!    49407), split off before anything else.
//! 2. Unicode NFC normalisation.
//! 3. Lower-casing character by character (`char::to_lowercase`, like the `tokenizers`
//!    library: a final capital sigma becomes `σ`, not `ς`).
//! 4. Splitting into words with CLIP's pattern: the contractions `'s 't 're 've 'm 'll 'd`,
//!    runs of letters, single digits, runs of other non-space characters. Whitespace only
//!    separates.
//! 5. Byte-level BPE on each word (the crate).
//!
//! A1111 ran the older Python tokenizer with `ftfy.fix_text` in front, which also straightens
//! curly quotes, expands ligatures (ﬁ → fi) and narrows full-width letters; transformers'
//! tokenizer (our reference) does none of that, and neither do we.

use instant_clip_tokenizer::{Token, Tokenizer};
use regex::Regex;
use unicode_normalization::UnicodeNormalization;

/// `<|startoftext|>`.
pub const BOS: i64 = 49406;
/// `<|endoftext|>`, also the padding of SD 1.x.
pub const EOS: i64 = 49407;
/// Size of the vocabulary; textual-inversion ids start here.
pub const VOCAB_SIZE: i64 = 49408;
/// `,</w>`: where A1111 prefers to break a long prompt.
pub const COMMA: i64 = 267;

const SPECIAL: [(&str, i64); 2] = [("<|startoftext|>", BOS), ("<|endoftext|>", EOS)];

/// The tokenizer. Building it parses the 49k merges (a few tens of milliseconds): build it once.
pub struct ClipTokenizer {
    bpe: Tokenizer,
    words: Regex,
}

impl Default for ClipTokenizer {
    fn default() -> ClipTokenizer {
        ClipTokenizer::new()
    }
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClipTokenizer")
    }
}

impl ClipTokenizer {
    pub fn new() -> ClipTokenizer {
        ClipTokenizer {
            bpe: Tokenizer::new(),
            words: Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
                .expect("a valid pattern"),
        }
    }

    /// Token ids of `text` without BOS/EOS and without any limit on the length.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest special token in what is left (the first listed wins a tie; they
            // cannot overlap).
            let next = SPECIAL
                .iter()
                .filter_map(|&(s, id)| rest.find(s).map(|at| (at, s.len(), id)))
                .min_by_key(|&(at, _, _)| at);
            let (plain, special) = match next {
                Some((at, len, id)) => (&rest[..at], Some((at + len, id))),
                None => (rest, None),
            };
            self.encode_plain(plain, &mut ids);
            match special {
                Some((end, id)) => {
                    ids.push(id);
                    rest = &rest[end..];
                }
                None => break,
            }
        }
        ids
    }

    /// `[BOS, ids…, EOS]` without truncation, as `tokenizer(text)` gives it.
    pub fn encode_with_specials(&self, text: &str) -> Vec<i64> {
        let mut ids = vec![BOS];
        ids.extend(self.encode(text));
        ids.push(EOS);
        ids
    }

    fn encode_plain(&self, text: &str, ids: &mut Vec<i64>) {
        let normalized: String = text.nfc().flat_map(char::to_lowercase).collect();
        let mut tokens: Vec<Token> = Vec::new();
        for word in self.words.find_iter(&normalized) {
            // One word at a time: the crate's own splitting then sees exactly this word (its
            // extra marker alternatives can never match inside one).
            tokens.clear();
            self.bpe.encode(word.as_str(), &mut tokens);
            ids.extend(tokens.iter().map(|t| i64::from(t.to_u16())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids() {
        let t = ClipTokenizer::new();
        assert_eq!(
            t.encode_with_specials("a photo of a cat"),
            [49406, 320, 1125, 539, 320, 2368, 49407]
        );
        assert_eq!(t.encode(","), [COMMA]);
        assert_eq!(t.encode("A Photo"), t.encode("a photo"), "lower-cased");
        assert_eq!(
            t.encode("  a\t\nphoto "),
            t.encode("a photo"),
            "whitespace separates only"
        );
        assert_eq!(
            t.encode("x<|endoftext|>y"),
            [t.encode("x"), vec![EOS], t.encode("y")].concat()
        );
        assert_eq!(t.encode(""), Vec::<i64>::new());
        // Decomposed é (e + U+0301) is composed first, so both spellings agree.
        assert_eq!(t.encode("e\u{301}cole"), t.encode("école"));
    }
}
