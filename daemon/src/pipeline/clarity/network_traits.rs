//! What a Clarity stage needs from the networks, as small traits: the pipeline is written
//! against these, the ONNX networks implement them (`model_set.rs`), and the tests drive the
//! orchestration with exact stand-ins where the real networks would only blur what is
//! being checked.
//!
//! The VAE interface is where the pipeline asks more of the graphs than plain inference:
//! tiled encoding and decoding need every GroupNorm to run on statistics computed once for
//! the whole image ([`GroupNormStats`]), so a VAE offers (a) a pass that also reports the
//! statistics it computed and (b) a pass that uses given ones instead of its own.

use ndarray::{Array4, ArrayView2, ArrayView4};

use super::control::RESIDUALS;

use crate::Cancelled;
use crate::engine::EngineError;

/// Per-group mean and (biased) variance of every GroupNorm of one VAE graph, in the order the
/// graph applies them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupNormStats {
    pub layers: Vec<GroupStats>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// Where a VAE pass takes its GroupNorm statistics from.
#[derive(Clone, Copy, Debug)]
pub enum Norms<'a> {
    /// Each GroupNorm normalises by the statistics of its own input (ordinary inference).
    Own,
    /// Each GroupNorm uses the given statistics (tiles of a larger image).
    Frozen(&'a GroupNormStats),
}

/// A tile's state between two segments of the cut encoder (Tiled VAE's colour fix): the
/// tensor in front of the next GroupNorm and, inside a ResNet, its residual.
#[derive(Clone, Debug)]
pub struct Carried {
    pub x: Array4<f32>,
    pub skip: Option<Array4<f32>>,
}

/// What a segment of the cut encoder gives back.
#[derive(Clone, Debug)]
pub enum Segmented {
    /// The tile's state and the statistics of its `x` (what the next GroupNorm would compute).
    State(Carried, GroupStats),
    /// The last segment's posterior (mean, log-variance).
    Posterior(Array4<f32>, Array4<f32>),
}

/// Why a stage stopped.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("the job was cancelled")]
    Cancelled,
    #[error(transparent)]
    Runtime(#[from] EngineError),
    /// A network gave something the pipeline cannot use (wrong shape or count).
    #[error("{0}")]
    Unexpected(String),
}

impl From<Cancelled> for StageError {
    fn from(_: Cancelled) -> StageError {
        StageError::Cancelled
    }
}

pub type NetResult<T> = Result<T, StageError>;

/// The SD VAE, without the latent scale factor (the pipeline applies 0.18215).
pub trait Vae {
    /// `[1, 3, H, W]` RGB in −1..1 → posterior (mean, log-variance), each `[1, 4, H/8, W/8]`.
    fn encode(
        &mut self,
        image: ArrayView4<f32>,
        norms: Norms<'_>,
    ) -> NetResult<(Array4<f32>, Array4<f32>)>;
    /// The GroupNorm statistics an ordinary encoder pass over `image` computes.
    fn encoder_stats(&mut self, image: ArrayView4<f32>) -> NetResult<GroupNormStats>;
    /// `[1, 4, h, w]` latent → `[1, 3, 8h, 8w]` RGB in about −1..1.
    fn decode(&mut self, latent: ArrayView4<f32>, norms: Norms<'_>) -> NetResult<Array4<f32>>;
    /// The decoder's input for `latent`: `post_quant_conv`, which Tiled VAE leaves in front of
    /// the decoder it hooks, so its statistics proxy is taken behind it.
    fn post_quant(&mut self, latent: ArrayView4<f32>) -> NetResult<Array4<f32>>;
    /// The GroupNorm statistics an ordinary decoder pass computes on `input`, a decoder input
    /// (behind `post_quant_conv`, see [`Vae::post_quant`]).
    fn decoder_stats(&mut self, input: ArrayView4<f32>) -> NetResult<GroupNormStats>;
    /// How many segments the encoder is cut into for the colour fix (the head, then one per
    /// GroupNorm after the first downsample).
    fn encoder_segments(&mut self) -> NetResult<usize>;
    /// The statistics of the head's GroupNorms (those before the first downsample) on `image`.
    fn encoder_head_stats(&mut self, image: ArrayView4<f32>) -> NetResult<GroupNormStats>;
    /// Segment `index` of the cut encoder on one tile: the head takes the image tile as
    /// `input.x` and the head's statistics, every other segment the state the previous one
    /// left and one layer of statistics for its leading GroupNorm.
    fn encoder_segment(
        &mut self,
        index: usize,
        input: Carried,
        stats: &GroupNormStats,
    ) -> NetResult<Segmented>;
    /// A tiled pass of the decoder (or encoder) starts: the plain graph's session, which it
    /// does not use, may go until the job is over (the next stages are larger still, so they
    /// tile too). Its memory is worth more to the tiles than a second's start-up after the job.
    fn begin_tiles(&mut self, _decoder: bool) {}
    /// A tiled pass is over (done, failed or cancelled): what was kept only for it, such as
    /// the sessions of the frozen-statistics graphs, may go. Tiles are for large images, whose
    /// next phases need that memory more than the next large image needs the time.
    fn end_tiles(&mut self) {}
}

/// Which prompt the samples of a network call take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prompts {
    /// 2b samples: the first b with the prompt, the next b (the same latents) with the
    /// negative prompt (classifier-free guidance in one call).
    Both,
    /// b samples with the prompt.
    Cond,
    /// b samples with the negative prompt.
    Uncond,
}

/// What stays fixed over a stage's evaluations.
#[derive(Clone, Copy, Debug)]
pub struct StageConditioning<'a> {
    /// Text conditioning `[L, C]` of the prompt and of the negative prompt.
    pub cond: ArrayView2<'a, f32>,
    pub uncond: ArrayView2<'a, f32>,
    /// The scale of each ControlNet residual (12 down blocks, then the mid block).
    pub scales: [f32; RESIDUALS],
}

/// The UNet with the ControlNet tile, as a stage uses it: what stays fixed over the stage (the
/// text contexts, the residual scales, each batch of tiles' hint embedding) is handed over
/// once and kept where the networks run (in device memory on an accelerator), and each
/// evaluation sends only the latents and gets back the predicted noise. Between the ControlNet
/// and the UNet the residuals stay with the networks.
pub trait ControlledUnet {
    /// A stage starts: its contexts and scales are kept until [`ControlledUnet::end_stage`].
    fn begin_stage(&mut self, conditioning: &StageConditioning<'_>) -> NetResult<()>;
    /// Embeds the hints of batch `batch` of the stage's tiles (`[b, 3, 8h, 8w]`, 0..1, one
    /// per tile) and keeps the embedding for the stage. Batches come in order; batch 0 again
    /// starts a new layout (fewer tiles per call, after an out-of-memory).
    fn embed_hints(&mut self, batch: usize, hints: ArrayView4<f32>) -> NetResult<()>;
    /// The predicted noise for batch `batch`: `sample` (`[n, 4, h, w]`, already scaled by
    /// c_in; n = 2b for [`Prompts::Both`], else b) at `timestep`, through the ControlNet (its
    /// residuals scaled) and the UNet.
    fn predict(
        &mut self,
        batch: usize,
        sample: ArrayView4<f32>,
        timestep: f32,
        prompts: Prompts,
    ) -> NetResult<Array4<f32>>;
    /// The stage is over (done, failed or cancelled): what it kept goes.
    fn end_stage(&mut self);
}
