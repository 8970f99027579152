//! Activation taps: a way to see the input of every linear map of the decoder layers as the
//! forward pass computes it, without a second implementation of the model. Calibration
//! (`mlx imatrix`) sums the squared inputs per column; nothing else is needed from the layers.
//!
//! The layers report each distinct input once, with the list of linears that multiply it
//! (q/k/v_proj read the same normed hidden state, for instance), so a sink does its work once
//! per activation. Without a sink ([`Tap::none`]) a report is a branch on `None`: no MLX op
//! is built and normal inference costs the same as before.

use mlx_rs::Array;

use crate::error::Result;

/// A linear map of a decoder layer, named after its Hugging Face module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    /// `self_attn.q_proj` (query and output gate, interleaved per head).
    QProj,
    /// `self_attn.k_proj`.
    KProj,
    /// `self_attn.v_proj`.
    VProj,
    /// `self_attn.o_proj`; input `heads × head_dim`, the gated attention output.
    OProj,
    /// `linear_attn.in_proj_qkv`.
    InProjQkv,
    /// `linear_attn.in_proj_z`.
    InProjZ,
    /// `linear_attn.in_proj_b`.
    InProjB,
    /// `linear_attn.in_proj_a`.
    InProjA,
    /// `linear_attn.out_proj`; input `Hv × dv` in Hugging Face (grouped) value-head order.
    OutProj,
    /// `mlp.gate_proj` (dense MLP).
    GateProj,
    /// `mlp.up_proj` (dense MLP).
    UpProj,
    /// `mlp.down_proj` (dense MLP); input `silu(gate) · up`.
    DownProj,
    /// `mlp.gate`, the MoE router.
    Router,
    /// `mlp.shared_expert.gate_proj`.
    SharedGateProj,
    /// `mlp.shared_expert.up_proj`.
    SharedUpProj,
    /// `mlp.shared_expert.down_proj`.
    SharedDownProj,
    /// `mlp.shared_expert_gate` (one output: the shared expert's weight).
    SharedExpertGate,
    /// `mlp.experts.gate_up_proj`, every expert (reported through [`ActivationSink::expert_input`]).
    ExpertsGateUp,
    /// `mlp.experts.down_proj`, every expert; input the expert's `silu(gate) · up`, before the
    /// routing weight.
    ExpertsDown,
}

impl Proj {
    /// The module path below `layers.N.`.
    pub fn hf_path(self) -> &'static str {
        match self {
            Proj::QProj => "self_attn.q_proj",
            Proj::KProj => "self_attn.k_proj",
            Proj::VProj => "self_attn.v_proj",
            Proj::OProj => "self_attn.o_proj",
            Proj::InProjQkv => "linear_attn.in_proj_qkv",
            Proj::InProjZ => "linear_attn.in_proj_z",
            Proj::InProjB => "linear_attn.in_proj_b",
            Proj::InProjA => "linear_attn.in_proj_a",
            Proj::OutProj => "linear_attn.out_proj",
            Proj::GateProj => "mlp.gate_proj",
            Proj::UpProj => "mlp.up_proj",
            Proj::DownProj => "mlp.down_proj",
            Proj::Router => "mlp.gate",
            Proj::SharedGateProj => "mlp.shared_expert.gate_proj",
            Proj::SharedUpProj => "mlp.shared_expert.up_proj",
            Proj::SharedDownProj => "mlp.shared_expert.down_proj",
            Proj::SharedExpertGate => "mlp.shared_expert_gate",
            Proj::ExpertsGateUp => "mlp.experts.gate_up_proj",
            Proj::ExpertsDown => "mlp.experts.down_proj",
        }
    }
}

/// Receives the inputs of the linears while a tapped forward pass builds its graph. The arrays
/// are lazy; a sink builds what it needs from them (lazily too, ideally) and evaluates later.
pub trait ActivationSink {
    /// `x` `[.., in]`: the input every linear of `readers` multiplies (in the activation dtype,
    /// exactly as the matmul sees it); all leading axes are tokens.
    fn linear_input(&mut self, layer: usize, readers: &[Proj], x: &Array) -> Result<()>;

    /// An expert bank's input. `experts` `[N, k]`: the experts each of the `N` tokens is routed
    /// to. `x` is either `[N, in]` (one row per token, multiplied by each of its `k` experts:
    /// `gate_up_proj`) or `[N, k, 1, in]` (one row per token and routing slot: `down_proj`).
    fn expert_input(
        &mut self,
        layer: usize,
        readers: &[Proj],
        x: &Array,
        experts: &Array,
    ) -> Result<()>;
}

/// What the layers' forward passes receive: a sink, or nothing, and the index of the layer
/// being run (set by the model).
pub struct Tap<'a> {
    sink: Option<&'a mut dyn ActivationSink>,
    layer: usize,
}

impl Tap<'static> {
    /// No sink: every report is a no-op.
    pub fn none() -> Self {
        Tap {
            sink: None,
            layer: 0,
        }
    }
}

impl<'a> Tap<'a> {
    pub fn new(sink: &'a mut dyn ActivationSink) -> Self {
        Tap {
            sink: Some(sink),
            layer: 0,
        }
    }

    /// Whether a sink listens (layers may skip preparing an activation when not).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.sink.is_some()
    }

    pub(crate) fn set_layer(&mut self, layer: usize) {
        self.layer = layer;
    }

    /// Reports `x`, the input of `readers`, for the current layer.
    #[inline]
    pub fn linear(&mut self, readers: &[Proj], x: &Array) -> Result<()> {
        match self.sink.as_deref_mut() {
            Some(sink) => sink.linear_input(self.layer, readers, x),
            None => Ok(()),
        }
    }

    /// Reports an expert bank's input (see [`ActivationSink::expert_input`]).
    #[inline]
    pub fn experts(&mut self, readers: &[Proj], x: &Array, experts: &Array) -> Result<()> {
        match self.sink.as_deref_mut() {
            Some(sink) => sink.expert_input(self.layer, readers, x, experts),
            None => Ok(()),
        }
    }
}
