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

use mlx_rs::ops::{concatenate, exp, logaddexp, matmul, sigmoid, split_equal, stack, zeros};
use mlx_rs::{Array, Dtype};

use crate::cache::LinearState;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::linear::{slice_axis, Linear};
use crate::tap::{Proj, Tap};
use crate::weights::WeightStore;

pub struct GatedDeltaNet {
    in_proj_qkv: Linear,
    in_proj_z: Linear,
    in_proj_b: Linear,
    in_proj_a: Linear,
    out_proj: Linear,
    /// `[C, K]`; tap K − 1 multiplies the newest input.
    conv: Array,
    /// `-exp(A_log)`, float32 `[Hv]`.
    neg_a: Array,
    dt_bias: Array,
    norm_weight: Array,
    eps: f32,
    key_heads: i32,
    value_heads: i32,
    key_dim: i32,
    value_dim: i32,
    kernel: i32,
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
        })
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

    /// `x`: `[B, T, hidden]`. `tap` sees the input of the four input projections and of
    /// out_proj (in Hugging Face value-head order).
    pub fn forward(&self, x: &Array, state: &mut LinearState, tap: &mut Tap) -> Result<Array> {
        let (b, t) = (x.shape()[0], x.shape()[1]);
        tap.linear(
            &[Proj::InProjQkv, Proj::InProjZ, Proj::InProjB, Proj::InProjA],
            x,
        )?;
        let (hk, hv, dk, dv) = (
            self.key_heads,
            self.value_heads,
            self.key_dim,
            self.value_dim,
        );
        let mixed = mlx_rs::nn::silu(self.conv(&self.in_proj_qkv.forward(x)?, state)?)?;
        let f32 = |a: Array| a.as_dtype(Dtype::Float32);
        let q = f32(slice_axis(&mixed, -1, 0, hk * dk)?.reshape(&[b, t, hk, dk])?)?;
        let k = f32(slice_axis(&mixed, -1, hk * dk, 2 * hk * dk)?.reshape(&[b, t, hk, dk])?)?;
        let v =
            f32(slice_axis(&mixed, -1, 2 * hk * dk, 2 * hk * dk + hv * dv)?
                .reshape(&[b, t, hv, dv])?)?;
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
        let beta = sigmoid(f32(self.in_proj_b.forward(x)?)?)?;
        let a = f32(self.in_proj_a.forward(x)?)?.add(&self.dt_bias)?;
        let softplus = logaddexp(&a, Array::from_f32(0.0))?;
        let decay = exp(softplus.multiply(&self.neg_a)?)?;

        let mut s = match state.recurrent.take() {
            Some(s) => s,
            None => zeros::<f32>(&[b, hv, dk, dv])?,
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
            let q_t = qs[i].reshape(&[b, hv, 1, dk])?;
            let k_t = ks[i].reshape(&[b, hv, 1, dk])?;
            let v_t = vs[i].reshape(&[b, hv, 1, dv])?;
            let beta_t = betas[i].reshape(&[b, hv, 1, 1])?;
            let decay_t = decays[i].reshape(&[b, hv, 1, 1])?;
            s = s.multiply(&decay_t)?;
            let predicted = matmul(&k_t, &s)?;
            let delta = v_t.subtract(predicted)?.multiply(&beta_t)?;
            s = s.add(matmul(k_t.swap_axes(-1, -2)?, &delta)?)?;
            outputs.push(matmul(&q_t, &s)?.reshape(&[b, hv, dv])?);
        }
        state.recurrent = Some(s);
        let o = stack(&outputs, 1)?;

        let z = f32(self.in_proj_z.forward(x)?.reshape(&[b, t, hv, dv])?)?;
        let normed = mlx_rs::fast::rms_norm(&o, Some(&f32(self.norm_weight.clone())?), self.eps)?;
        let gated = normed
            .multiply(mlx_rs::nn::silu(&z)?)?
            .as_dtype(x.dtype())?
            .reshape(&[b, t, hv * dv])?;
        tap.linear(&[Proj::OutProj], &gated)?;
        self.out_proj.forward(&gated)
    }
}
