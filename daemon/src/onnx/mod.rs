//! Building ONNX graphs in Rust, so no Python exporter is ever needed.
//!
//! Every network of `crate::nets` (ESRGAN, the CLIP text encoder, and SD 1.5's UNet, ControlNet
//! hint encoder and body, VAE encoder and decoder with their GroupNorm-statistics variants and
//! the colour-fix segments) is written against this small builder: named inputs and outputs with symbolic dimensions, cheap-to-clone [`Value`]
//! handles, one method per operator, small constants embedded in the model, and weights as
//! EXTERNAL initializers that point into a `.safetensors` file (so the model protobuf stays a
//! few kilobytes and ONNX Runtime maps the weights straight from disk).
//!
//! ```
//! use tessera::onnx::{Conv2d, Dim, ElemType, Graph};
//! let mut g = Graph::new("example");
//! let x = g.input("input", ElemType::F32, &[Dim::from(1), Dim::from(3), "h".into(), "w".into()]);
//! let y = g.leaky_relu(&x, 0.2);
//! g.output("output", &y, ElemType::F32, None);
//! let bytes = g.to_bytes();
//! assert_eq!(tessera::onnx::decode(&bytes).unwrap().graph.unwrap().node.len(), 2);
//! # let _ = Conv2d::padded(1);
//! ```

mod graph;
mod ops;
pub mod proto;

pub use graph::{
    Dim, ElemType, ExternalTensor, Graph, IR_VERSION, MS_DOMAIN, MS_OPSET, OPSET, Value, attr,
    decode,
};
pub use ops::{Conv2d, Gemm};

#[cfg(test)]
mod tests;
