//! Textual-inversion embeddings: a few learned token vectors in a small file, used in a prompt
//! by writing the file's name.
//!
//! The formats A1111 reads, told apart by their contents as A1111 does:
//!
//! | format | made by | contents |
//! |---|---|---|
//! | A1111 `.pt` | A1111's trainer, most Civitai embeddings (`JuggernautNegative-neg.pt`) | a dict whose `string_to_param` holds one term (`'*'`) with an `[N, C]` tensor, plus `string_to_token`, `name`, `step`, … |
//! | one-tensor `.safetensors` / `.bin` | kohya-style converters (`emb_params`), diffusers concepts (`{"<token>": [C]}`) | exactly one tensor, `[N, C]` or `[C]` |
//!
//! SDXL embeddings (`clip_l` + `clip_g`) and files with several terms are refused with a
//! message saying so, as are vectors whose width does not match the text encoder (A1111 skips
//! those silently; an explicitly requested embedding that cannot be used is an error here).
//! Old `.pt` files that pickled a `torch.nn.ParameterDict` object are refused by the restricted
//! unpickler (the error names that class).
//!
//! The embedding's name is the file name without its extension, as in A1111.

use std::path::Path;

use ndarray::Array2;

use super::{SourceFile, WeightsError};

/// The largest embedding accepted: a chunk holds 75 prompt tokens, and A1111 cannot place a
/// longer one either.
pub const MAX_VECTORS: usize = 75;

/// One textual-inversion embedding.
#[derive(Clone, Debug, PartialEq)]
pub struct TextualInversion {
    /// The word that calls it in a prompt: the file name without extension.
    pub name: String,
    /// `[N, C]` f32: the N token vectors that replace the word.
    pub vectors: Array2<f32>,
}

impl TextualInversion {
    /// Number of token vectors.
    pub fn len(&self) -> usize {
        self.vectors.nrows()
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.nrows() == 0
    }

    /// Width of each vector (768 for SD 1.x).
    pub fn width(&self) -> usize {
        self.vectors.ncols()
    }

    /// Reads an embedding file (`.pt`, `.bin` or `.safetensors`; the format is told by the
    /// bytes, not the extension).
    pub fn load(path: &Path) -> Result<TextualInversion, WeightsError> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| WeightsError::Unsupported {
                path: path.to_owned(),
                reason: "an embedding's file name is the word that calls it, and this one has none (or is not UTF-8)".into(),
            })?
            .to_owned();
        let source = SourceFile::open(path)?;
        let unknown = |found: String| WeightsError::UnknownLayout {
            path: path.to_owned(),
            network: "textual-inversion embedding",
            found,
        };
        let tensors = source.tensors();
        let terms: Vec<&str> = tensors
            .keys()
            .filter(|k| k.starts_with("string_to_param."))
            .collect();
        let key = if !terms.is_empty() {
            let [only] = terms.as_slice() else {
                return Err(unknown(format!(
                    "the file has {} terms ({}); A1111 embeddings hold one",
                    terms.len(),
                    terms.join(", ")
                )));
            };
            (*only).to_owned()
        } else if tensors.contains("clip_l") && tensors.contains("clip_g") {
            return Err(unknown(
                "this is an SDXL embedding (clip_l + clip_g), not an SD 1.x one".into(),
            ));
        } else if tensors.len() == 1 {
            tensors.keys().next().expect("one tensor").to_owned()
        } else {
            return Err(unknown(format!(
                "neither an A1111 embedding (string_to_param) nor a one-tensor concept ({})",
                tensors.describe()
            )));
        };
        let t = tensors.get(&key).expect("key listed above");
        let (rows, cols) = match t.shape[..] {
            [c] => (1, c),
            [n, c] => (n, c),
            _ => {
                return Err(WeightsError::BadShape {
                    name: key,
                    shape: t.shape.iter().map(|&d| d as i64).collect(),
                    reason: "an embedding is [vectors, width] or [width]".into(),
                });
            }
        };
        if rows == 0 || rows > MAX_VECTORS || cols == 0 {
            return Err(WeightsError::BadShape {
                name: key,
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                reason: format!("an embedding has 1 to {MAX_VECTORS} vectors of non-zero width"),
            });
        }
        let data = source.reader()?.read_f32(t)?;
        if data.iter().any(|v| !v.is_finite()) {
            return Err(WeightsError::corrupt(
                path,
                format!("`{key}` holds non-finite values"),
            ));
        }
        let vectors = Array2::from_shape_vec((rows, cols), data)
            .map_err(|e| WeightsError::corrupt(path, e.to_string()))?;
        Ok(TextualInversion { name, vectors })
    }
}
