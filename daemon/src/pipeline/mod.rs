//! From an image to an upscaled image: pixel-format conversion at the edges,
//! the upscaling stages in between, and progress/cancel at every network call.

pub mod cache;
pub mod clarity;
pub mod eta;
pub mod filters;
pub mod pixels;
pub mod prompt;
pub mod resize;
pub mod sampling;
pub mod upscale;
