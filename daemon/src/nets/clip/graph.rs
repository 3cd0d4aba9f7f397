//! The text encoder as an ONNX graph (see the parent module for the architecture and the
//! interface).

use ndarray::Array2;

use super::{Activation, ClipConfig, ClipOptions};
use crate::onnx::{Dim, ElemType, ExternalTensor, Gemm, Graph, MS_DOMAIN, Value, attr};
use crate::weights::{self, Scope, WeightsError};

/// quick_gelu's sigmoid slope.
const QUICK_GELU: f32 = 1.702;

/// Builds the text encoder's ONNX graph over `w` (external weights in the dtype of
/// `options.precision`), with `extra_rows` (`[n, C]`, textual inversion) appended to the token
/// table.
pub fn build_graph(
    config: &ClipConfig,
    w: &weights::Weights,
    options: &ClipOptions,
    extra_rows: Option<&Array2<f32>>,
) -> Result<Graph, WeightsError> {
    if options.clip_skip == 0 || options.clip_skip > config.layers {
        return Err(WeightsError::Unsupported {
            path: w.file().to_owned(),
            reason: format!(
                "CLIP skip {} with a {}-layer text encoder (1 to {} is possible)",
                options.clip_skip, config.layers, config.layers
            ),
        });
    }
    let dtype = options.precision.weight_type().elem();
    let mut b = Builder {
        g: Graph::new("clip_text_encoder"),
        dtype,
    };
    let (c, s) = (config.hidden as i64, config.positions as i64);
    let batch = Dim::from("batch");
    let ids =
        b.g.input("input_ids", ElemType::I64, &[batch.clone(), Dim::from(s)]);
    let root = w.scope("text_model");

    // Embeddings: token rows (plus the textual-inversion rows) and learned positions.
    let mut table = b.weight(&root.scope("embeddings").scope("token_embedding"), "weight")?;
    if let Some(rows) = extra_rows {
        let extra = b.g.constant_f32(
            &[rows.nrows() as i64, c],
            rows.as_slice().expect("standard layout"),
        );
        let extra = b.in_dtype(&extra);
        table = b.g.concat(&[&table, &extra], 0);
    }
    let tokens =
        b.g.node("Gather", &[&table, &ids], vec![attr::int("axis", 0)]);
    let position = b.weight(
        &root.scope("embeddings").scope("position_embedding"),
        "weight",
    )?;
    let h = b.g.add(&tokens, &position);
    // Rows [batch·77, C] from here on, so every linear layer is one Gemm.
    let mut h = b.g.reshape(&h, &[-1, c]);

    let run = config.layers + 1 - options.clip_skip;
    for l in 0..run {
        h = b.encoder_layer(config, &h, &root.scope("encoder").scope("layers").scope(l))?;
    }
    let h = b.layer_norm(config, &h, &root.scope("final_layer_norm"))?;
    let last = b.g.reshape(&h, &[-1, s, c]);

    // Pooler: the row of the first end-of-text token of each sequence.
    let eos = b.g.constant_i64(&[], &[config.eos_id()]);
    let is_eos = b.g.node("Equal", &[&ids, &eos], vec![]);
    let is_eos = b.g.cast(&is_eos, ElemType::F32);
    let first = b.g.node(
        "ArgMax",
        &[&is_eos],
        vec![attr::int("axis", 1), attr::int("keepdims", 1)],
    );
    let pooled = b.g.node(
        "GatherND",
        &[&last, &first],
        vec![attr::int("batch_dims", 1)],
    );

    b.g.f32_output(
        "last_hidden_state",
        &last,
        dtype,
        Some(&[batch.clone(), Dim::from(s), Dim::from(c)]),
    );
    b.g.f32_output(
        "pooler_output",
        &pooled,
        dtype,
        Some(&[batch, Dim::from(c)]),
    );
    Ok(b.g)
}

/// The graph under construction and the element type its weights and activations use.
struct Builder {
    g: Graph,
    dtype: ElemType,
}

impl Builder {
    /// An external weight, which must be stored in the graph's element type.
    fn weight(&mut self, w: &Scope<ExternalTensor>, name: &str) -> Result<Value, WeightsError> {
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

    /// An f32 value converted to the graph's element type (folded away by ONNX Runtime when
    /// the value is a constant).
    fn in_dtype(&mut self, v: &Value) -> Value {
        self.g.convert(v, ElemType::F32, self.dtype)
    }

    fn scalar(&mut self, v: f32) -> Value {
        let s = self.g.scalar(v);
        self.in_dtype(&s)
    }

    /// `x·Wᵀ + b` over rows, with the weight as stored (`[out, in]`).
    fn linear(&mut self, x: &Value, w: &Scope<ExternalTensor>) -> Result<Value, WeightsError> {
        let weight = self.weight(w, "weight")?;
        let bias = self.weight(w, "bias")?;
        Ok(self.g.gemm(
            x,
            &weight,
            Some(&bias),
            Gemm {
                trans_b: true,
                ..Gemm::default()
            },
        ))
    }

    fn layer_norm(
        &mut self,
        config: &ClipConfig,
        x: &Value,
        w: &Scope<ExternalTensor>,
    ) -> Result<Value, WeightsError> {
        let gamma = self.weight(w, "weight")?;
        let beta = self.weight(w, "bias")?;
        Ok(self.g.node(
            "LayerNormalization",
            &[x, &gamma, &beta],
            vec![
                attr::int("axis", -1),
                attr::float("epsilon", config.layer_norm_eps),
            ],
        ))
    }

    /// One pre-norm transformer layer on rows `[batch·77, C]`.
    fn encoder_layer(
        &mut self,
        config: &ClipConfig,
        h: &Value,
        w: &Scope<ExternalTensor>,
    ) -> Result<Value, WeightsError> {
        let (c, s) = (config.hidden as i64, config.positions as i64);
        let attn = w.scope("self_attn");
        let x = self.layer_norm(config, h, &w.scope("layer_norm1"))?;
        let mut qkv = Vec::with_capacity(3);
        for proj in ["q_proj", "k_proj", "v_proj"] {
            let y = self.linear(&x, &attn.scope(proj))?;
            qkv.push(self.g.reshape(&y, &[-1, s, c]));
        }
        // Causal self-attention: token t sees tokens 0..=t (`unidirectional`), scaled by
        // 1/√(head width), the op's default.
        let a = self
            .g
            .node_in(
                MS_DOMAIN,
                "MultiHeadAttention",
                &[&qkv[0], &qkv[1], &qkv[2]],
                vec![
                    attr::int("num_heads", config.heads as i64),
                    attr::int("unidirectional", 1),
                ],
                1,
            )
            .remove(0);
        let a = self.g.reshape(&a, &[-1, c]);
        let a = self.linear(&a, &attn.scope("out_proj"))?;
        let h = self.g.add(h, &a);

        let x = self.layer_norm(config, &h, &w.scope("layer_norm2"))?;
        let x = self.linear(&x, &w.scope("mlp").scope("fc1"))?;
        let x = match config.activation {
            Activation::QuickGelu => {
                let k = self.scalar(QUICK_GELU);
                let kx = self.g.mul(&x, &k);
                let gate = self.g.sigmoid(&kx);
                self.g.mul(&x, &gate)
            }
            Activation::Gelu => self.g.node("Gelu", &[&x], vec![]),
        };
        let x = self.linear(&x, &w.scope("mlp").scope("fc2"))?;
        Ok(self.g.add(&h, &x))
    }
}
