//! Gated DeltaNet, the linear-attention layer of Qwen3.5.
//!
//! Per token: a causal depthwise conv (kernel K, state = the last K − 1 inputs) over the
//! q|k|v projection, SiLU, L2-normalised q (scaled by dk^−½) and k, a decay `exp(g)` with
//! `g = −exp(A_log) · softplus(a + dt_bias)` and a write strength `β = sigmoid(b)`; then for each
//! value head the delta rule on a `[dk, dv]` memory S (float32):
//!
//! ```text
//! S ← exp(g)·S;   S ← S + k (β (v − Sᵀk))ᵀ;   o = Sᵀ q
//! ```
//!
//! Value head j reads key head `j / (Hv / Hk)`. The output is RMS-normalised per head, gated by
//! `silu(z)` and projected back. Prefill runs the same per-token step over the whole chunk.
//!
//! On a CPU stream with float32 activations the whole mixing (conv to gated norm) is one node
//! of ours (`mlx_node_kernels::gated_delta`): as MLX ops it is ~60 small ops per layer and
//! token, which cost more than the layer's matmuls. The MLX ops below are the reference it is
//! tested against and the path on every other device or dtype.

use mlx_node_kernels::Isa;
use mlx_rs::ops::{concatenate, exp, logaddexp, matmul, sigmoid, split_equal, stack, zeros};
use mlx_rs::{Array, Dtype};

use crate::cache::LinearState;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::linear::{kernel, slice_axis, Linear};
use crate::tap::{Proj, Tap};
use crate::weights::WeightStore;

pub struct GatedDeltaNet {
    in_proj_qkv: Linear,
    in_proj_z: Linear,
    in_proj_b: Linear,
    in_proj_a: Linear,
    out_proj: Linear,
    mixer: DeltaMixer,
}

/// Which implementation [`DeltaMixer::mix`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MixPath {
    /// Our fused CPU primitive where it handles the call (CPU stream, float32 activations,
    /// kernels on), else the MLX ops.
    Auto,
    /// MLX ops only (the reference the primitive is tested against, and every other device).
    Ops,
}

/// Everything of a layer between its four input projections and out_proj: the causal conv,
/// the q/k norms, the gates, the delta rule and the gated RMSNorm.
pub struct DeltaMixer {
    /// `[C, K]`; tap K − 1 multiplies the newest input.
    pub conv: Array,
    /// `-exp(A_log)`, float32 `[Hv]`.
    pub neg_a: Array,
    /// Float32 `[Hv]`.
    pub dt_bias: Array,
    /// `[dv]`.
    pub norm_weight: Array,
    pub eps: f32,
    pub key_heads: i32,
    pub value_heads: i32,
    pub key_dim: i32,
    pub value_dim: i32,
    pub kernel: i32,
}

/// `x / ‖x‖` over the last axis with the reference's ε inside the root.
fn l2_normalize(x: &Array) -> Result<Array> {
    let norm = x
        .square()?
        .sum_axis(-1, true)?
        .add(Array::from_f32(1e-6))?
        .rsqrt()?;
    Ok(x.multiply(norm)?)
}

impl GatedDeltaNet {
    pub fn load(w: &WeightStore, prefix: &str, c: &ModelConfig) -> Result<Self> {
        let h = c.hidden_size;
        let (hk, hv, dk, dv) = (
            c.linear_key_heads,
            c.linear_value_heads,
            c.linear_key_dim,
            c.linear_value_dim,
        );
        let channels = c.linear_conv_dim();
        let a_log = w.tensor_f32(&format!("{prefix}.A_log"), &[hv])?;
        Ok(GatedDeltaNet {
            in_proj_qkv: Linear(w.linear(&format!("{prefix}.in_proj_qkv"), channels, h)?),
            in_proj_z: Linear(w.linear(&format!("{prefix}.in_proj_z"), hv * dv, h)?),
            in_proj_b: Linear(w.linear(&format!("{prefix}.in_proj_b"), hv, h)?),
            in_proj_a: Linear(w.linear(&format!("{prefix}.in_proj_a"), hv, h)?),
            out_proj: Linear(w.linear(&format!("{prefix}.out_proj"), h, hv * dv)?),
            mixer: DeltaMixer {
                conv: w.conv_weight(&format!("{prefix}.conv1d.weight"), channels, c.conv_kernel)?,
                neg_a: exp(&a_log)?.negative()?,
                dt_bias: w.tensor_f32(&format!("{prefix}.dt_bias"), &[hv])?,
                norm_weight: w.tensor(&format!("{prefix}.norm.weight"), &[dv])?,
                eps: c.rms_norm_eps,
                key_heads: hk as i32,
                value_heads: hv as i32,
                key_dim: dk as i32,
                value_dim: dv as i32,
                kernel: c.conv_kernel as i32,
            },
        })
    }

    /// `x`: `[B, T, hidden]`. `tap` sees the input of the four input projections and of
    /// out_proj (in Hugging Face value-head order).
    pub fn forward(&self, x: &Array, state: &mut LinearState, tap: &mut Tap) -> Result<Array> {
        tap.linear(
            &[Proj::InProjQkv, Proj::InProjZ, Proj::InProjB, Proj::InProjA],
            x,
        )?;
        let [qkv, z, a, b]: [Array; 4] = Linear::forward_many(
            &[
                &self.in_proj_qkv,
                &self.in_proj_z,
                &self.in_proj_a,
                &self.in_proj_b,
            ],
            x,
        )?
        .try_into()
        .expect("one output per projection");
        let gated = self.mixer.mix(&qkv, &z, &a, &b, state, MixPath::Auto)?;
        tap.linear(&[Proj::OutProj], &gated)?;
        self.out_proj.forward(&gated)
    }
}

impl DeltaMixer {
    /// From the projections `qkv` `[B, T, C]`, `z` `[B, T, Hv·dv]`, `a` and `b` `[B, T, Hv]`
    /// to out_proj's input `[B, T, Hv·dv]` (in `qkv`'s dtype), continuing from `state` and
    /// updating it.
    pub fn mix(
        &self,
        qkv: &Array,
        z: &Array,
        a: &Array,
        b: &Array,
        state: &mut LinearState,
        path: MixPath,
    ) -> Result<Array> {
        if path == MixPath::Auto {
            if let Some(y) = self.mix_fused(qkv, z, a, b, state, Isa::Default)? {
                return Ok(y);
            }
        }
        self.mix_ops(qkv, z, a, b, state)
    }

    /// Our fused primitive with `isa`, or `None` (state untouched) when it does not handle
    /// the call.
    pub fn mix_fused(
        &self,
        qkv: &Array,
        z: &Array,
        a: &Array,
        b: &Array,
        state: &mut LinearState,
        isa: Isa,
    ) -> Result<Option<Array>> {
        let f32 = Dtype::Float32;
        if !mlx_node_kernels::enabled() || [qkv, z, a, b].iter().any(|x| x.dtype() != f32) {
            return Ok(None);
        }
        let batch = qkv.shape()[0];
        let conv_state = match &state.conv {
            Some(past) => past.clone(),
            None => zeros::<f32>(&[batch, self.kernel - 1, qkv.shape()[2]])?,
        };
        let recurrent = match &state.recurrent {
            Some(s) => s.clone(),
            None => zeros::<f32>(&[batch, self.value_heads, self.key_dim, self.value_dim])?,
        };
        let inputs = mlx_node_kernels::GatedDeltaInputs {
            qkv,
            z,
            a,
            b,
            conv_weight: &self.conv,
            conv_state: &conv_state,
            neg_a: &self.neg_a,
            dt_bias: &self.dt_bias,
            norm_weight: &self.norm_weight,
            state: &recurrent,
            key_heads: self.key_heads,
            value_heads: self.value_heads,
            eps: self.eps,
        };
        let Some(out) = kernel(|| mlx_node_kernels::gated_delta(&inputs, isa))? else {
            return Ok(None);
        };
        state.conv = Some(out.conv_state);
        state.recurrent = Some(out.state);
        Ok(Some(out.y))
    }

    /// Causal depthwise conv of `x` `[B, T, C]` continuing from the cached window; updates it.
    fn conv(&self, x: &Array, state: &mut LinearState) -> Result<Array> {
        let (b, t, c) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let window = self.kernel - 1;
        let past = match state.conv.take() {
            Some(past) => past,
            None => zeros::<f32>(&[b, window, c])?.as_dtype(x.dtype())?,
        };
        let padded = concatenate(&[past, x.clone()], 1)?;
        state.conv = Some(slice_axis(&padded, 1, t, t + window)?);
        let mut y: Option<Array> = None;
        for tap in 0..self.kernel {
            let term = slice_axis(&padded, 1, tap, tap + t)?
                .multiply(slice_axis(&self.conv, 1, tap, tap + 1)?.reshape(&[c])?)?;
            y = Some(match y {
                Some(acc) => acc.add(term)?,
                None => term,
            });
        }
        Ok(y.expect("the kernel has at least one tap"))
    }

    fn mix_ops(
        &self,
        qkv: &Array,
        z: &Array,
        a: &Array,
        b: &Array,
        state: &mut LinearState,
    ) -> Result<Array> {
        let (batch, t) = (qkv.shape()[0], qkv.shape()[1]);
        let (hk, hv, dk, dv) = (
            self.key_heads,
            self.value_heads,
            self.key_dim,
            self.value_dim,
        );
        let mixed = mlx_rs::nn::silu(self.conv(qkv, state)?)?;
        let f32 = |a: Array| a.as_dtype(Dtype::Float32);
        let q = f32(slice_axis(&mixed, -1, 0, hk * dk)?.reshape(&[batch, t, hk, dk])?)?;
        let k = f32(slice_axis(&mixed, -1, hk * dk, 2 * hk * dk)?.reshape(&[batch, t, hk, dk])?)?;
        let v = f32(slice_axis(&mixed, -1, 2 * hk * dk, 2 * hk * dk + hv * dv)?
            .reshape(&[batch, t, hv, dv])?)?;
        let q = l2_normalize(&q)?.multiply(Array::from_f32((dk as f32).powf(-0.5)))?;
        let k = l2_normalize(&k)?;
        // Consecutive value heads share a key head.
        let group = hv / hk;
        let (q, k) = if group > 1 {
            (
                Array::repeat_axis::<f32>(q, group, 2)?,
                Array::repeat_axis::<f32>(k, group, 2)?,
            )
        } else {
            (q, k)
        };
        let beta = sigmoid(f32(b.clone())?)?;
        let a = f32(a.clone())?.add(&self.dt_bias)?;
        let softplus = logaddexp(&a, Array::from_f32(0.0))?;
        let decay = exp(softplus.multiply(&self.neg_a)?)?;

        let mut s = match state.recurrent.take() {
            Some(s) => s,
            None => zeros::<f32>(&[batch, hv, dk, dv])?,
        };
        let steps = |a: &Array| -> Result<Vec<Array>> {
            Ok(if t == 1 {
                vec![a.clone()]
            } else {
                split_equal(a, t, 1)?
            })
        };
        let (qs, ks, vs, betas, decays) = (
            steps(&q)?,
            steps(&k)?,
            steps(&v)?,
            steps(&beta)?,
            steps(&decay)?,
        );
        let mut outputs = Vec::with_capacity(t as usize);
        for i in 0..t as usize {
            let q_t = qs[i].reshape(&[batch, hv, 1, dk])?;
            let k_t = ks[i].reshape(&[batch, hv, 1, dk])?;
            let v_t = vs[i].reshape(&[batch, hv, 1, dv])?;
            let beta_t = betas[i].reshape(&[batch, hv, 1, 1])?;
            let decay_t = decays[i].reshape(&[batch, hv, 1, 1])?;
            s = s.multiply(&decay_t)?;
            let predicted = matmul(&k_t, &s)?;
            let delta = v_t.subtract(predicted)?.multiply(&beta_t)?;
            s = s.add(matmul(k_t.swap_axes(-1, -2)?, &delta)?)?;
            outputs.push(matmul(&q_t, &s)?.reshape(&[batch, hv, dv])?);
        }
        state.recurrent = Some(s);
        let o = stack(&outputs, 1)?;

        let z = f32(z.reshape(&[batch, t, hv, dv])?)?;
        let normed = mlx_rs::fast::rms_norm(&o, Some(&f32(self.norm_weight.clone())?), self.eps)?;
        Ok(normed
            .multiply(mlx_rs::nn::silu(&z)?)?
            .as_dtype(qkv.dtype())?
            .reshape(&[batch, t, hv * dv])?)
    }
}
