//! The operator vocabulary of the graph builder, one method per ONNX op (plus a few composite
//! helpers) so that network code reads like the paper rather than like protobuf.
//!
//! Where ONNX Runtime has a faster form than the obvious one, the helper emits that form (the
//! measurements are in `docs/models.md`, "Op forms"): GroupNorm is written as
//! InstanceNormalization between reshapes, and attention as `com.microsoft.MultiHeadAttention`
//! (ONNX Runtime's contrib operator, documented in its `docs/ContribOperators.md`).

use super::graph::{ElemType, Graph, MS_DOMAIN, Value, attr};

/// Attributes of a 2-D convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// top, left, bottom, right (ONNX order: all begins, then all ends).
    pub pads: [i64; 4],
    pub strides: [i64; 2],
    pub dilations: [i64; 2],
    pub group: i64,
}

impl Conv2d {
    /// Stride 1, symmetric zero padding `p` (p = 1 keeps the size for a 3×3 kernel).
    pub fn padded(p: i64) -> Conv2d {
        Conv2d {
            pads: [p; 4],
            strides: [1, 1],
            dilations: [1, 1],
            group: 1,
        }
    }

    /// The same padding with a stride (downsampling convolutions).
    pub fn strided(p: i64, stride: i64) -> Conv2d {
        Conv2d {
            strides: [stride, stride],
            ..Conv2d::padded(p)
        }
    }
}

/// Attributes of Gemm (`alpha·A'·B' + beta·C`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub alpha: f32,
    pub beta: f32,
    pub trans_a: bool,
    pub trans_b: bool,
}

impl Default for Gemm {
    fn default() -> Gemm {
        Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: false,
        }
    }
}

impl Graph {
    /// 2-D convolution with an optional bias.
    pub fn conv(&mut self, x: &Value, w: &Value, b: Option<&Value>, a: Conv2d) -> Value {
        let mut inputs = vec![x, w];
        inputs.extend(b);
        self.node(
            "Conv",
            &inputs,
            vec![
                attr::ints("pads", &a.pads),
                attr::ints("strides", &a.strides),
                attr::ints("dilations", &a.dilations),
                attr::int("group", a.group),
            ],
        )
    }

    pub fn add(&mut self, a: &Value, b: &Value) -> Value {
        self.node("Add", &[a, b], vec![])
    }

    pub fn sub(&mut self, a: &Value, b: &Value) -> Value {
        self.node("Sub", &[a, b], vec![])
    }

    pub fn mul(&mut self, a: &Value, b: &Value) -> Value {
        self.node("Mul", &[a, b], vec![])
    }

    pub fn div(&mut self, a: &Value, b: &Value) -> Value {
        self.node("Div", &[a, b], vec![])
    }

    /// `x · k` for a constant scalar `k`.
    pub fn scale(&mut self, x: &Value, k: f32) -> Value {
        let k = self.scalar(k);
        self.mul(x, &k)
    }

    pub fn leaky_relu(&mut self, x: &Value, alpha: f32) -> Value {
        self.node("LeakyRelu", &[x], vec![attr::float("alpha", alpha)])
    }

    pub fn sigmoid(&mut self, x: &Value) -> Value {
        self.node("Sigmoid", &[x], vec![])
    }

    /// SiLU / swish, `x · sigmoid(x)`.
    pub fn silu(&mut self, x: &Value) -> Value {
        let s = self.sigmoid(x);
        self.mul(x, &s)
    }

    pub fn concat(&mut self, values: &[&Value], axis: i64) -> Value {
        self.node("Concat", values, vec![attr::int("axis", axis)])
    }

    /// Nearest-neighbour upsampling of the last two axes of an NCHW tensor by an integer
    /// factor, with PyTorch's `F.interpolate(mode="nearest")` semantics (asymmetric, floor).
    pub fn resize_nearest(&mut self, x: &Value, factor: f32) -> Value {
        let scales = self.floats(&[1.0, 1.0, factor, factor]);
        self.node(
            "Resize",
            &[x, &Value::absent(), &scales],
            vec![
                attr::string("mode", "nearest"),
                attr::string("coordinate_transformation_mode", "asymmetric"),
                attr::string("nearest_mode", "floor"),
            ],
        )
    }

    /// Reshape to a constant shape (`0` copies the input dimension, `-1` is inferred).
    pub fn reshape(&mut self, x: &Value, shape: &[i64]) -> Value {
        let shape = self.ints(shape);
        self.node("Reshape", &[x, &shape], vec![])
    }

    /// Reshape to a shape computed in the graph (e.g. by [`Graph::shape`]).
    pub fn reshape_to(&mut self, x: &Value, shape: &Value) -> Value {
        self.node("Reshape", &[x, shape], vec![])
    }

    /// The runtime shape of `x` as a 1-D i64 tensor.
    pub fn shape(&mut self, x: &Value) -> Value {
        self.node("Shape", &[x], vec![])
    }

    pub fn transpose(&mut self, x: &Value, perm: &[i64]) -> Value {
        self.node("Transpose", &[x], vec![attr::ints("perm", perm)])
    }

    pub fn matmul(&mut self, a: &Value, b: &Value) -> Value {
        self.node("MatMul", &[a, b], vec![])
    }

    pub fn gemm(&mut self, a: &Value, b: &Value, c: Option<&Value>, g: Gemm) -> Value {
        let mut inputs = vec![a, b];
        inputs.extend(c);
        self.node(
            "Gemm",
            &inputs,
            vec![
                attr::float("alpha", g.alpha),
                attr::float("beta", g.beta),
                attr::int("transA", i64::from(g.trans_a)),
                attr::int("transB", i64::from(g.trans_b)),
            ],
        )
    }

    pub fn softmax(&mut self, x: &Value, axis: i64) -> Value {
        self.node("Softmax", &[x], vec![attr::int("axis", axis)])
    }

    pub fn cast(&mut self, x: &Value, to: ElemType) -> Value {
        self.node("Cast", &[x], vec![attr::elem_type("to", to)])
    }

    /// `x`, of element type `from`, as `to`: `x` itself when they agree, else a Cast. The
    /// networks cross between f32 and their compute type only through `nets::builder`, which
    /// calls this.
    pub fn convert(&mut self, x: &Value, from: ElemType, to: ElemType) -> Value {
        if from == to {
            x.clone()
        } else {
            self.cast(x, to)
        }
    }

    /// Slice with constant bounds; `steps` may be negative (reversal).
    pub fn slice(
        &mut self,
        x: &Value,
        starts: &[i64],
        ends: &[i64],
        axes: &[i64],
        steps: &[i64],
    ) -> Value {
        let starts = self.ints(starts);
        let ends = self.ints(ends);
        let axes = self.ints(axes);
        let steps = self.ints(steps);
        self.node("Slice", &[x, &starts, &ends, &axes, &steps], vec![])
    }

    /// Splits `x` along `axis` into pieces of the given sizes.
    pub fn split(&mut self, x: &Value, axis: i64, sizes: &[i64]) -> Vec<Value> {
        let split = self.ints(sizes);
        self.node_in(
            "",
            "Split",
            &[x, &split],
            vec![attr::int("axis", axis)],
            sizes.len(),
        )
    }

    /// Picks entries along `axis` by constant indices (channel reordering and flips).
    pub fn gather(&mut self, x: &Value, axis: i64, indices: &[i64]) -> Value {
        let indices = self.ints(indices);
        self.node("Gather", &[x, &indices], vec![attr::int("axis", axis)])
    }

    pub fn instance_norm(&mut self, x: &Value, scale: &Value, bias: &Value, epsilon: f32) -> Value {
        self.node(
            "InstanceNormalization",
            &[x, scale, bias],
            vec![attr::float("epsilon", epsilon)],
        )
    }

    /// GroupNorm over an N·C·spatial tensor with per-channel `gamma`/`beta` of length
    /// `channels`.
    ///
    /// Emitted as Reshape → InstanceNormalization → Reshape → Mul → Add: ONNX Runtime has no
    /// kernel for GroupNormalization-21 (its `docs/OperatorKernels.md` lists none) and expands
    /// the operator's function body into about 29 primitive ops, which measured 2× slower.
    /// The networks use `SdNet::group_norm` (`nets/sd_blocks.rs`), which emits the same form with
    /// f32 statistics and exported or frozen statistics; this one serves the unit test.
    #[allow(clippy::too_many_arguments)]
    pub fn group_norm(
        &mut self,
        x: &Value,
        groups: usize,
        channels: usize,
        spatial_rank: usize,
        gamma: &Value,
        beta: &Value,
        epsilon: f32,
    ) -> Value {
        debug_assert!(groups > 0 && channels.is_multiple_of(groups));
        let original_shape = self.shape(x);
        let grouped = self.reshape(x, &[0, groups as i64, -1]);
        let ones = self.floats(&vec![1.0; groups]);
        let zeros = self.floats(&vec![0.0; groups]);
        let normed = self.instance_norm(&grouped, &ones, &zeros, epsilon);
        let normed = self.reshape_to(&normed, &original_shape);
        let mut affine_shape = vec![channels as i64];
        affine_shape.extend(std::iter::repeat_n(1, spatial_rank));
        let gamma = self.reshape(gamma, &affine_shape);
        let beta = self.reshape(beta, &affine_shape);
        let scaled = self.mul(&normed, &gamma);
        self.add(&scaled, &beta)
    }

    /// Scaled dot-product attention over `[B, N, C]` queries and `[B, M, C]` keys/values, split
    /// into `num_heads` heads, as one `com.microsoft.MultiHeadAttention` node: ONNX Runtime's
    /// graph optimiser does not fuse the MatMul/Softmax form, and the contrib op measured faster
    /// and far smaller in memory (`docs/models.md`, "Op forms").
    pub fn multi_head_attention(
        &mut self,
        q: &Value,
        k: &Value,
        v: &Value,
        num_heads: usize,
    ) -> Value {
        self.node_in(
            MS_DOMAIN,
            "MultiHeadAttention",
            &[q, k, v],
            vec![attr::int("num_heads", num_heads as i64)],
            1,
        )
        .remove(0)
    }

    /// PyTorch's `pixel_unshuffle` for an NCHW tensor with `channels` channels: each r×r block
    /// of pixels becomes r² channels, channel-major (`c·r² + dy·r + dx`).
    ///
    /// ONNX SpaceToDepth orders the new channels block-major (`(dy·r + dx)·C + c`), so a Gather
    /// puts them back into PyTorch's order. Height and width must be multiples of `r`.
    pub fn pixel_unshuffle(&mut self, x: &Value, r: usize, channels: usize) -> Value {
        let s2d = self.node("SpaceToDepth", &[x], vec![attr::int("blocksize", r as i64)]);
        let order: Vec<i64> = (0..channels * r * r)
            .map(|t| {
                let (c, block) = (t / (r * r), t % (r * r));
                (block * channels + c) as i64
            })
            .collect();
        self.gather(&s2d, 1, &order)
    }
}
