//! The text encoder as an ONNX graph (see the parent module for the architecture and the
//! interface), built like every network here: [`ClipConfig`] → layers over a `NetBuilder`
//! with scoped weight names.

use std::ops::{Deref, DerefMut};

use ndarray::Array2;

use super::{Activation, ClipConfig, ClipOptions};
use crate::nets::builder::{NetBuilder, W};
use crate::onnx::{Dim, ElemType, Gemm, Graph, MS_DOMAIN, Value, attr};
use crate::weights::{self, WeightsError};

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
    let mut b = ClipNet {
        b: NetBuilder::new("clip_text_encoder", options.precision.weight_type()),
        config,
    };
    let (c, s) = (config.hidden as i64, config.positions as i64);
    let batch = Dim::from("batch");
    let ids =
        b.g.input("input_ids", ElemType::I64, &[batch.clone(), Dim::from(s)]);
    let root = w.scope("text_model");

    // Embeddings: token rows (plus the textual-inversion rows) and learned positions.
    let mut table = b.param(&root.scope("embeddings").scope("token_embedding"), "weight")?;
    if let Some(rows) = extra_rows {
        let extra = b.g.constant_f32(
            &[rows.nrows() as i64, c],
            rows.as_slice().expect("standard layout"),
        );
        let extra = b.to_compute(&extra);
        table = b.g.concat(&[&table, &extra], 0);
    }
    let tokens =
        b.g.node("Gather", &[&table, &ids], vec![attr::int("axis", 0)]);
    let position = b.param(
        &root.scope("embeddings").scope("position_embedding"),
        "weight",
    )?;
    let h = b.g.add(&tokens, &position);
    // Rows [batch·77, C] from here on, so every linear layer is one Gemm.
    let mut h = b.g.reshape(&h, &[-1, c]);

    let run = config.layers + 1 - options.clip_skip;
    for l in 0..run {
        h = b.encoder_layer(&h, &root.scope("encoder").scope("layers").scope(l))?;
    }
    let h = b.layer_norm(&h, &root.scope("final_layer_norm"))?;
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

    b.output(
        "last_hidden_state",
        &last,
        &[batch.clone(), Dim::from(s), Dim::from(c)],
    );
    b.output("pooler_output", &pooled, &[batch, Dim::from(c)]);
    Ok(b.b.finish())
}

/// The text encoder's layers over a [`NetBuilder`].
struct ClipNet<'c> {
    b: NetBuilder,
    config: &'c ClipConfig,
}

impl Deref for ClipNet<'_> {
    type Target = NetBuilder;
    fn deref(&self) -> &NetBuilder {
        &self.b
    }
}

impl DerefMut for ClipNet<'_> {
    fn deref_mut(&mut self) -> &mut NetBuilder {
        &mut self.b
    }
}

impl ClipNet<'_> {
    /// An f32 scalar in the compute type.
    fn scalar(&mut self, v: f32) -> Value {
        let s = self.g.scalar(v);
        self.to_compute(&s)
    }

    /// `x·Wᵀ + b` over rows, with the weight as stored (`[out, in]`).
    fn linear(&mut self, x: &Value, w: &W) -> Result<Value, WeightsError> {
        let weight = self.param(w, "weight")?;
        let bias = self.param(w, "bias")?;
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

    fn layer_norm(&mut self, x: &Value, w: &W) -> Result<Value, WeightsError> {
        let gamma = self.param(w, "weight")?;
        let beta = self.param(w, "bias")?;
        let eps = self.config.layer_norm_eps;
        Ok(self.g.node(
            "LayerNormalization",
            &[x, &gamma, &beta],
            vec![attr::int("axis", -1), attr::float("epsilon", eps)],
        ))
    }

    /// One pre-norm transformer layer on rows `[batch·77, C]`.
    fn encoder_layer(&mut self, h: &Value, w: &W) -> Result<Value, WeightsError> {
        let config = self.config;
        let (c, s) = (config.hidden as i64, config.positions as i64);
        let attn = w.scope("self_attn");
        let x = self.layer_norm(h, &w.scope("layer_norm1"))?;
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

        let x = self.layer_norm(&h, &w.scope("layer_norm2"))?;
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
