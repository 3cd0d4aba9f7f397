//! The text conditioning of a job: both prompts through the text encoder, with A1111's
//! emphasis (Clarity) or plain (Refiners), cached by prompt so that a job that repeats a
//! prompt (every default job does) pays nothing for it.

use ndarray::Array2;

use crate::engine::{Engine, EngineError};
use crate::nets::clip::TextEncoder;
use crate::pipeline::prompt::{self, PromptParser, SyntaxError};

/// Conditionings kept per text encoder.
const CACHE: usize = 8;

/// A text encoder with its prompt parser and the conditionings it computed.
pub struct TextSide {
    encoder: TextEncoder,
    parser: PromptParser,
    cache: Vec<(String, bool, Array2<f32>)>,
    /// Encoder runs so far (for the tests of the cache and the logs).
    pub runs: usize,
}

impl TextSide {
    pub fn new(encoder: TextEncoder) -> TextSide {
        let parser = PromptParser::new(encoder.embeddings());
        TextSide {
            encoder,
            parser,
            cache: Vec::new(),
            runs: 0,
        }
    }

    /// Lets the encoder's session go until [`TextSide::warm`]: the cached conditionings stay,
    /// so a prompt already encoded is still answered.
    pub fn set_aside(&mut self, engine: &Engine) {
        self.encoder.set_aside(engine);
    }

    /// Creates the encoder's session again if it was set aside.
    pub fn warm(&mut self, engine: &Engine) -> Result<(), EngineError> {
        self.encoder.warm(engine)
    }

    /// Whether the encoder's session is held.
    pub fn is_warm(&self) -> bool {
        self.encoder.is_warm()
    }

    /// `[77·chunks, C]` for `prompt`; `emphasis` reads A1111's weighting syntax.
    pub fn conditioning(&mut self, prompt: &str, emphasis: bool) -> Result<Array2<f32>, TextError> {
        if let Some(i) = self
            .cache
            .iter()
            .position(|(p, e, _)| p == prompt && *e == emphasis)
        {
            let entry = self.cache.remove(i);
            let z = entry.2.clone();
            self.cache.push(entry);
            return Ok(z);
        }
        let parsed = if emphasis {
            self.parser.parse(prompt)
        } else {
            self.parser.parse_plain(prompt)
        }?;
        let z = prompt::encode(&mut self.encoder, &parsed).map_err(|e| TextError::Net(e.into()))?;
        self.runs += 1;
        if self.cache.len() >= CACHE {
            self.cache.remove(0);
        }
        self.cache.push((prompt.to_owned(), emphasis, z.clone()));
        Ok(z)
    }
}

/// Why a prompt could not be turned into conditioning.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error(transparent)]
    Syntax(#[from] SyntaxError),
    #[error(transparent)]
    Net(super::network_traits::StageError),
}

impl From<TextError> for super::network_traits::StageError {
    fn from(e: TextError) -> Self {
        match e {
            TextError::Net(e) => e,
            TextError::Syntax(e) => super::network_traits::StageError::Unexpected(e.to_string()),
        }
    }
}
