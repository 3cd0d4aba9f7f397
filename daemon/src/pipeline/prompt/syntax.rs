//! A1111's prompt syntax: extra-network tags (`<lora:name:0.5>`) and attention weights
//! (`(word)`, `[word]`, `(word:1.3)`, escapes, `BREAK`).
//!
//! Both follow A1111 v1.7 (the version Clarity runs) as documented in its `extra_networks.py`
//! and `prompt_parser.parse_prompt_attention`, quirks included:
//!
//! - Every `<kind:args>` tag (`kind` a word, args up to the next `>`) is removed from the text;
//!   `lora` tags are returned, other kinds (hypernet, lyco, …) are dropped.
//! - Weights multiply: `((x))` is 1.1·1.1 = 1.2100000000000002 (computed in f64, in A1111's
//!   order, so runs merge exactly where A1111's do); `[x]` divides by 1.1; `(x:w)` multiplies
//!   by w. A bracket left open applies to the end of the prompt; a closer without an opener,
//!   and a colon that does not end a `(…:w)`, are plain text. `\(` `\)` `\[` `\]` `\\` are
//!   literal characters; a backslash before anything else disappears.
//! - `BREAK` (upper case, a whole word) ends the current 75-token chunk. It is marked with
//!   weight −1, so inside brackets it gets scaled, stops being a marker and is read as the
//!   word "break" with a negative weight — as in A1111.
//! - Neighbouring pieces of equal weight are merged, and each piece is tokenized on its own.

use std::sync::LazyLock;

use regex::Regex;

static EXTRA_NETWORK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"<(\w+):([^>]+)>").expect("a valid pattern"));
static WEIGHTED_CLOSE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^:\s*([+-]?[.\d]+)\s*\)").expect("a valid pattern"));
static BREAK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\s*\bBREAK\b\s*").expect("a valid pattern"));

/// Multiplier of `(…)`.
const ROUND: f64 = 1.1;
/// Multiplier of `[…]`.
const SQUARE: f64 = 1.0 / 1.1;

/// A prompt the syntax cannot read (A1111 fails on these too).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("`{0}` is not a number, in a `(text:weight)` weight")]
    BadWeight(String),
    #[error("the LoRA tag `{tag}` is invalid: {reason}")]
    BadLora { tag: String, reason: String },
}

/// A `<lora:name:te:unet>` tag: the LoRA file name (without extension) and its multipliers
/// for the text encoder and the UNet.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraTag {
    pub name: String,
    pub te: f64,
    pub unet: f64,
}

/// A run of prompt text with its attention weight; `BREAK` markers are `("BREAK", −1)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub text: String,
    pub weight: f64,
}

impl Segment {
    fn new(text: &str, weight: f64) -> Segment {
        Segment {
            text: text.to_owned(),
            weight,
        }
    }

    /// Whether this is a chunk break (A1111 checks exactly this pair).
    pub fn is_break(&self) -> bool {
        self.text == "BREAK" && self.weight == -1.0
    }
}

/// Removes every extra-network tag from `prompt`; returns the text left and the LoRA tags in
/// order. A LoRA tag's arguments are `name[:te[:unet]]`, or named `te=`/`unet=`; the UNet
/// multiplier defaults to the text encoder's, which defaults to 1.
pub fn extract_networks(prompt: &str) -> Result<(String, Vec<LoraTag>), SyntaxError> {
    let mut loras = Vec::new();
    let mut error = None;
    let text = EXTRA_NETWORK.replace_all(prompt, |c: &regex::Captures| {
        if &c[1] == "lora" && error.is_none() {
            match lora_tag(&c[2]) {
                Ok(tag) => loras.push(tag),
                Err(reason) => {
                    error = Some(SyntaxError::BadLora {
                        tag: c[0].to_owned(),
                        reason,
                    })
                }
            }
        }
        ""
    });
    match error {
        Some(e) => Err(e),
        None => Ok((text.into_owned(), loras)),
    }
}

fn lora_tag(args: &str) -> Result<LoraTag, String> {
    let mut positional = Vec::new();
    let mut named = std::collections::HashMap::new();
    for item in args.split(':') {
        // Like Python's `item.split('=', 2)`: exactly two parts make a named argument.
        let parts: Vec<&str> = item.splitn(3, '=').collect();
        match parts[..] {
            [key, value] => {
                named.insert(key, value);
            }
            _ => positional.push(item),
        }
    }
    let name = positional.first().ok_or("it names no LoRA")?;
    let number = |s: &str| python_float(s).ok_or_else(|| format!("`{s}` is not a number"));
    let mut te = match positional.get(1) {
        Some(s) => number(s)?,
        None => 1.0,
    };
    if let Some(s) = named.get("te") {
        te = number(s)?;
    }
    let mut unet = match positional.get(2) {
        Some(s) => number(s)?,
        None => te,
    };
    if let Some(s) = named.get("unet") {
        unet = number(s)?;
    }
    Ok(LoraTag {
        name: (*name).to_owned(),
        te,
        unet,
    })
}

/// Python's `float(s)` for the forms prompts use (surrounding whitespace allowed); non-finite
/// values are refused.
fn python_float(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Splits `text` into weighted segments (see the module docs).
pub fn parse_attention(text: &str) -> Result<Vec<Segment>, SyntaxError> {
    let mut out: Vec<Segment> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let scale = |out: &mut Vec<Segment>, from: usize, k: f64| {
        for s in &mut out[from..] {
            s.weight *= k;
        }
    };
    let push_text = |out: &mut Vec<Segment>, s: &str| {
        for (i, piece) in BREAK.split(s).enumerate() {
            if i > 0 {
                out.push(Segment::new("BREAK", -1.0));
            }
            out.push(Segment::new(piece, 1.0));
        }
    };

    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let c = rest.chars().next().expect("not at the end");
        match c {
            '\\' => {
                let next = rest[1..].chars().next();
                match next {
                    Some(e @ ('(' | ')' | '[' | ']' | '\\')) => {
                        out.push(Segment::new(&e.to_string(), 1.0));
                        i += 2;
                    }
                    _ => {
                        out.push(Segment::new("", 1.0));
                        i += 1;
                    }
                }
            }
            '(' => {
                round.push(out.len());
                i += 1;
            }
            '[' => {
                square.push(out.len());
                i += 1;
            }
            ':' => match WEIGHTED_CLOSE.captures(rest) {
                Some(m) => {
                    let whole = m.get(0).expect("match").as_str();
                    match round.pop() {
                        Some(from) => {
                            let w = python_float(&m[1])
                                .ok_or_else(|| SyntaxError::BadWeight(m[1].to_owned()))?;
                            scale(&mut out, from, w);
                        }
                        None => push_text(&mut out, whole),
                    }
                    i += whole.len();
                }
                None => {
                    push_text(&mut out, ":");
                    i += 1;
                }
            },
            ')' | ']' => {
                let opened = if c == ')' { round.pop() } else { square.pop() };
                match opened {
                    Some(from) => scale(&mut out, from, if c == ')' { ROUND } else { SQUARE }),
                    None => push_text(&mut out, &rest[..1]),
                }
                i += 1;
            }
            _ => {
                let end = rest
                    .find(['\\', '(', ')', '[', ']', ':'])
                    .unwrap_or(rest.len());
                push_text(&mut out, &rest[..end]);
                i += end;
            }
        }
    }
    for from in round {
        scale(&mut out, from, ROUND);
    }
    for from in square {
        scale(&mut out, from, SQUARE);
    }
    if out.is_empty() {
        out.push(Segment::new("", 1.0));
    }
    let mut merged: Vec<Segment> = Vec::with_capacity(out.len());
    for s in out {
        match merged.last_mut() {
            Some(last) if last.weight == s.weight => last.text.push_str(&s.text),
            _ => merged.push(s),
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Vec<(String, f64)> {
        parse_attention(text)
            .unwrap()
            .into_iter()
            .map(|s| (s.text, s.weight))
            .collect()
    }

    fn pairs(p: &[(&str, f64)]) -> Vec<(String, f64)> {
        p.iter().map(|(t, w)| ((*t).to_owned(), *w)).collect()
    }

    /// The examples in A1111's documentation of `parse_prompt_attention`.
    #[test]
    fn documented_examples() {
        assert_eq!(parsed("normal text"), pairs(&[("normal text", 1.0)]));
        assert_eq!(
            parsed("an (important) word"),
            pairs(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)])
        );
        assert_eq!(parsed("(unbalanced"), pairs(&[("unbalanced", 1.1)]));
        assert_eq!(parsed("\\(literal\\]"), pairs(&[("(literal]", 1.0)]));
        assert_eq!(
            parsed("(unnecessary)(parens)"),
            pairs(&[("unnecessaryparens", 1.1)])
        );
        assert_eq!(
            parsed("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            pairs(&[
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ])
        );
    }

    #[test]
    fn breaks_and_errors() {
        assert_eq!(
            parsed("a BREAK b"),
            pairs(&[("a", 1.0), ("BREAK", -1.0), ("b", 1.0)])
        );
        assert_eq!(parsed(""), pairs(&[("", 1.0)]));
        assert_eq!(
            parse_attention("(a:1.2.3)"),
            Err(SyntaxError::BadWeight("1.2.3".into()))
        );
        assert_eq!(parsed("a:1.5)"), pairs(&[("a:1.5)", 1.0)]));
    }

    #[test]
    fn lora_tags() {
        let (text, loras) =
            extract_networks("x <lora:a:0.5> y<lora:b:te=0.2:unet=0.7><hypernet:h:1>").unwrap();
        assert_eq!(text, "x  y");
        assert_eq!(
            loras,
            vec![
                LoraTag {
                    name: "a".into(),
                    te: 0.5,
                    unet: 0.5
                },
                LoraTag {
                    name: "b".into(),
                    te: 0.2,
                    unet: 0.7
                },
            ]
        );
        assert!(matches!(
            extract_networks("<lora:a:lots>"),
            Err(SyntaxError::BadLora { .. })
        ));
        assert!(matches!(
            extract_networks("<lora:te=1>"),
            Err(SyntaxError::BadLora { .. })
        ));
    }
}
