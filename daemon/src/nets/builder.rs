//! The one way every network builds its ONNX graph: a [`NetBuilder`] holds the graph under
//! construction and the element type it computes in, and is the only place where values cross
//! between f32 and that type.
//!
//! Each network is written the same way: `XConfig::from_weights` reads the shapes once, then
//! `build_graph(config, weights, …)` walks the config, handing each layer the weights of its
//! module as a scope (`w.scope("down_blocks").scope(i)`, canonical names). The layers are
//! methods of a small per-family struct that dereferences to the builder (`SdNet` for the UNet,
//! ControlNet and VAE, `ClipNet`, `Rrdbnet`).
//!
//! Precision: graphs always take and return f32 (so callers never see the precision); an fp16
//! graph casts each input to f16 once, computes in f16 with f16 weights, and casts each output
//! back. Values that must stay f32 inside an fp16 graph (GroupNorm statistics, the timestep
//! embedding's sinusoids, the ControlNet's scales) go through [`NetBuilder::to_f32`] and
//! [`NetBuilder::to_compute`]. In an f32 graph both are no-ops, so fp32 graphs carry no Cast.

use crate::onnx::{Conv2d, Dim, ElemType, ExternalTensor, Graph, Value};
use crate::weights::{Scope, WeightType, WeightsError};

/// Weights of one module, under canonical names.
pub type W<'a> = Scope<'a, ExternalTensor>;

/// A graph under construction and the element type its weights and activations have.
pub struct NetBuilder {
    pub g: Graph,
    /// The type activations and weights have inside the graph.
    pub dtype: ElemType,
}

impl NetBuilder {
    /// An empty graph `name` computing in the element type of `weight_type`.
    pub fn new(name: &str, weight_type: WeightType) -> NetBuilder {
        NetBuilder {
            g: Graph::new(name),
            dtype: weight_type.elem(),
        }
    }

    /// The finished graph.
    pub fn finish(self) -> Graph {
        self.g
    }

    /// An f32 value in the compute type (a Cast in fp16 graphs, folded by ONNX Runtime when the
    /// value is a constant).
    pub fn to_compute(&mut self, x: &Value) -> Value {
        self.g.convert(x, ElemType::F32, self.dtype)
    }

    /// A value of the compute type as f32.
    pub fn to_f32(&mut self, x: &Value) -> Value {
        self.g.convert(x, self.dtype, ElemType::F32)
    }

    /// An f32 graph input, handed on in the compute type.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> Value {
        let x = self.g.input(name, ElemType::F32, dims);
        self.to_compute(&x)
    }

    /// Declares `x` (of the compute type) as the f32 graph output `name`.
    pub fn output(&mut self, name: &str, x: &Value, dims: &[Dim]) {
        let x = self.to_f32(x);
        self.g.output(name, &x, ElemType::F32, Some(dims));
    }

    /// The module's tensor `name`, which must be stored in the compute type.
    pub fn param(&mut self, w: &W, name: &str) -> Result<Value, WeightsError> {
        let t = w.get(name)?;
        if t.elem_type != self.dtype {
            return Err(WeightsError::BadShape {
                name: t.name.clone(),
                shape: t.dims.clone(),
                reason: format!(
                    "stored as {:?}, the graph computes in {:?}",
                    t.elem_type, self.dtype
                ),
            });
        }
        Ok(self.g.external(t))
    }

    /// The module's tensor `name` as f32, whatever the compute type.
    pub fn param_f32(&mut self, w: &W, name: &str) -> Result<Value, WeightsError> {
        let p = self.param(w, name)?;
        Ok(self.to_f32(&p))
    }

    /// A float constant stored in the compute type.
    pub fn constant(&mut self, dims: &[i64], data: &[f32]) -> Value {
        self.g.constant(self.dtype, dims, data)
    }

    /// 2-D convolution with the module's `weight` and `bias` (every convolution of the networks
    /// here has one, so a missing bias is a missing tensor, reported by name).
    pub fn conv(&mut self, x: &Value, w: &W, attrs: Conv2d) -> Result<Value, WeightsError> {
        let weight = self.param(w, "weight")?;
        let bias = self.param(w, "bias")?;
        Ok(self.g.conv(x, &weight, Some(&bias), attrs))
    }
}
