//! What a Clarity stage needs from the networks, as small traits: the pipeline is written
//! against these, the ONNX networks implement them (`models.rs`), and the tests drive the
//! orchestration with exact stand-ins where the real networks would only blur what is
//! being checked.
//!
//! The VAE interface is where the pipeline asks more of the graphs than plain inference:
//! tiled encoding and decoding need every GroupNorm to run on statistics computed once for
//! the whole image ([`GroupNormStats`]), so a VAE offers (a) a pass that also reports the
//! statistics it computed and (b) a pass that uses given ones instead of its own.

use ndarray::{Array4, ArrayD, ArrayView1, ArrayView3, ArrayView4};

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

/// The UNet with the ControlNet tile, split so that the hint is embedded once per tile.
pub trait ControlledUnet {
    /// The ControlNet's hint encoder: `[B, 3, 8h, 8w]` in 0..1 → `[B, C, h, w]`.
    fn embed_hint(&mut self, hint: ArrayView4<f32>) -> NetResult<Array4<f32>>;
    /// The ControlNet body: the 13 unscaled residuals (12 down blocks, then the mid block)
    /// for `sample` `[B, 4, h, w]` (already scaled by c_in), `timestep` `[B]`, `context`
    /// `[B, L, C]` and the hint embedding `[B, C₀, h, w]`.
    fn control(
        &mut self,
        sample: ArrayView4<f32>,
        timestep: ArrayView1<f32>,
        context: ArrayView3<f32>,
        embedding: ArrayView4<f32>,
    ) -> NetResult<Vec<ArrayD<f32>>>;
    /// The UNet's predicted noise `[B, 4, h, w]`, the residuals added (already scaled).
    fn unet(
        &mut self,
        sample: ArrayView4<f32>,
        timestep: ArrayView1<f32>,
        context: ArrayView3<f32>,
        residuals: &[ArrayD<f32>],
    ) -> NetResult<Array4<f32>>;
}
