//! The Tessera daemon and its command line, as a library so that tests and
//! benchmarks reach the same code the binary runs.
//!
//! The modules follow the pipeline: `weights` reads model files into one
//! canonical naming, `onnx` builds graphs, `nets` describes each network,
//! `engine` runs graphs on ONNX Runtime, `pipeline` turns an image into an
//! upscaled image, `server` serves jobs over the local socket, `job` is what those two share
//! (the runner and checker traits, progress and cancellation), `store` (the crate
//! `tessera-store`, shared with the installer) knows the data directory, `setup` (in the same
//! crate) knows what the installer puts where, `tray`
//! (cargo feature `tray`) is the tray icon, and `cli` is the user's side of it all.
//!
//! Development code is left out of the product unless a cargo feature asks for it: `dev` adds
//! the benchmarks (`tessera bench`), `fuzzing` the fuzzing entry points. This crate's own tests
//! turn both on (a dev-dependency on itself), so `cargo test` and `cargo clippy --all-targets`
//! build and check them.

pub mod cli;
pub mod config;
pub mod engine;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod job;
pub mod nets;
pub mod onnx;
pub mod pipeline;
pub mod server;
pub use tessera_store as store;
pub use tessera_store::setup;
#[cfg(all(feature = "tray", target_os = "linux"))]
pub mod tray;
pub mod weights;

pub use job::Cancelled;
