//! The feed-forward half of each layer: a SwiGLU MLP, or a sparse mixture of SwiGLU experts
//! (softmax router in float32, top-k, weights renormalised) plus a shared expert whose output
//! is scaled by `sigmoid(shared_expert_gate(x))`.

use mlx_node_kernels::Isa;
use mlx_rs::ops::indexing::take_along_axis;
use mlx_rs::ops::{argpartition_axis, sigmoid, softmax_axis};
use mlx_rs::{Array, Dtype};

use crate::activation::silu_mul;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::linear::{kernel, slice_axis, ExpertBank, Linear};
use crate::tap::{Proj, Tap};
use crate::weights::WeightStore;

pub struct SwiGlu {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl SwiGlu {
    pub fn load(w: &WeightStore, prefix: &str, hidden: usize, width: usize) -> Result<Self> {
        Ok(SwiGlu {
            gate_proj: Linear(w.linear(&format!("{prefix}.gate_proj"), width, hidden)?),
            up_proj: Linear(w.linear(&format!("{prefix}.up_proj"), width, hidden)?),
            down_proj: Linear(w.linear(&format!("{prefix}.down_proj"), hidden, width)?),
        })
    }

    /// `reads` names gate_proj/up_proj for `tap` (whose input is reported here, unless empty)
    /// and `reads_down` down_proj: the dense MLP and the shared expert differ.
    fn forward_as(
        &self,
        x: &Array,
        tap: &mut Tap,
        reads: &[Proj],
        reads_down: Proj,
    ) -> Result<Array> {
        if !reads.is_empty() {
            tap.linear(reads, x)?;
        }
        let h = swiglu(&self.gate_proj, &self.up_proj, x)?;
        tap.linear(&[reads_down], &h)?;
        self.down_proj.forward(&h)
    }

    /// The dense MLP of a layer; `tap` sees the inputs of its three projections.
    pub fn forward(&self, x: &Array, tap: &mut Tap) -> Result<Array> {
        self.forward_as(x, tap, &[Proj::GateProj, Proj::UpProj], Proj::DownProj)
    }
}

/// `silu(x · Gᵀ) · (x · Uᵀ)` for `gate` G and `up` U: one node of ours when both are quantized
/// and handled, else the two products and [`silu_mul`].
fn swiglu(gate: &Linear, up: &Linear, x: &Array) -> Result<Array> {
    if let (Some(g), Some(u)) = (gate.quantized(), up.quantized()) {
        if let Some(y) = kernel(|| mlx_node_kernels::quantized_swiglu(x, g, u, Isa::Default))? {
            return Ok(y);
        }
    }
    silu_mul(&gate.forward(x)?, &up.forward(x)?)
}

pub struct SparseMoe {
    router: Linear,
    gate: ExpertBank,
    up: ExpertBank,
    down: ExpertBank,
    shared: SwiGlu,
    shared_gate: Linear,
    top_k: i32,
    renormalize: bool,
}

impl SparseMoe {
    pub fn load(w: &WeightStore, layer: usize, c: &ModelConfig) -> Result<Self> {
        let moe = c
            .moe
            .as_ref()
            .expect("SparseMoe is only built for MoE configs");
        let h = c.hidden_size;
        let prefix = format!("layers.{layer}.mlp");
        let [gate, up, down] =
            w.experts(layer, moe.num_experts, h, moe.expert_intermediate_size)?;
        Ok(SparseMoe {
            router: Linear(w.linear(&format!("{prefix}.gate"), moe.num_experts, h)?),
            gate: ExpertBank(gate),
            up: ExpertBank(up),
            down: ExpertBank(down),
            shared: SwiGlu::load(
                w,
                &format!("{prefix}.shared_expert"),
                h,
                moe.shared_expert_intermediate_size,
            )?,
            shared_gate: Linear(w.linear(&format!("{prefix}.shared_expert_gate"), 1, h)?),
            top_k: moe.experts_per_token as i32,
            renormalize: moe.norm_topk_prob,
        })
    }

    /// `tap` sees the input of the router, the shared expert and its gate, and of the experts
    /// (with the routing).
    pub fn forward(&self, x: &Array, tap: &mut Tap) -> Result<Array> {
        let shape = x.shape().to_vec();
        let hidden = shape[shape.len() - 1];
        let tokens: i32 = shape[..shape.len() - 1].iter().product();
        let flat = x.reshape(&[tokens, hidden])?;
        tap.linear(
            &[
                Proj::Router,
                Proj::SharedGateProj,
                Proj::SharedUpProj,
                Proj::SharedExpertGate,
            ],
            &flat,
        )?;

        let logits = self.router.forward(&flat)?.as_dtype(Dtype::Float32)?;
        let probs = softmax_axis(&logits, -1, true)?;
        // The k largest probabilities, in no particular order (the sum does not care).
        let experts = slice_axis(
            &argpartition_axis(probs.negative()?, self.top_k - 1, -1)?,
            -1,
            0,
            self.top_k,
        )?;
        let mut weights = take_along_axis(&probs, &experts, -1)?;
        if self.renormalize {
            weights = weights.divide(weights.sum_axis(-1, true)?)?;
        }

        tap.experts(&[Proj::ExpertsGateUp], &flat, &experts)?;
        let rows = flat.reshape(&[tokens, 1, 1, hidden])?;
        let g = self.gate.forward(&rows, &experts)?;
        let u = self.up.forward(&rows, &experts)?;
        let h = silu_mul(&g, &u)?;
        tap.experts(&[Proj::ExpertsDown], &h, &experts)?;
        let y = self.down.forward(&h, &experts)?.squeeze_axes(&[-2])?;
        let routed = y
            .multiply(weights.as_dtype(y.dtype())?.expand_dims(-1)?)?
            .sum_axis(-2, false)?;
        let shared = self
            .shared
            .forward_as(&flat, tap, &[], Proj::SharedDownProj)?
            .multiply(sigmoid(self.shared_gate.forward(&flat)?)?)?;
        Ok(routed.add(shared)?.reshape(&shape)?)
    }
}

pub enum FeedForward {
    Dense(SwiGlu),
    Sparse(Box<SparseMoe>),
}

impl FeedForward {
    pub fn forward(&self, x: &Array, tap: &mut Tap) -> Result<Array> {
        match self {
            FeedForward::Dense(m) => m.forward(x, tap),
            FeedForward::Sparse(m) => m.forward(x, tap),
        }
    }
}
