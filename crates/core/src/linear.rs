//! Linear maps and embeddings whose weights are either plain float matrices or MLX affine
//! quantized ones (packed codes with a scale and a bias per group), and the expert banks of a
//! mixture-of-experts layer (one such matrix per expert, applied through gather matmuls).

use mlx_rs::ops::{dequantize, gather_mm, gather_qmm, quantized_matmul};
use mlx_rs::Array;

use crate::config::QuantParams;
use crate::error::Result;

/// A weight matrix `[out, in]` (or a stack `[E, out, in]` of them), plain or quantized.
#[derive(Clone, Debug)]
pub enum Weight {
    Dense(Array),
    Quantized {
        /// Packed codes `[.., out, in · bits / 32]` (uint32).
        codes: Array,
        scales: Array,
        biases: Array,
        params: QuantParams,
    },
}

impl Weight {
    pub fn is_quantized(&self) -> bool {
        matches!(self, Weight::Quantized { .. })
    }
}

/// `y = x Wᵀ`.
#[derive(Clone, Debug)]
pub struct Linear(pub Weight);

impl Linear {
    pub fn forward(&self, x: &Array) -> Result<Array> {
        Ok(match &self.0 {
            Weight::Dense(w) => x.matmul(w.t())?,
            Weight::Quantized {
                codes,
                scales,
                biases,
                params,
            } => quantized_matmul(
                x,
                codes,
                scales,
                biases,
                true,
                params.group_size as i32,
                params.bits as i32,
            )?,
        })
    }
}

/// Rows of a `[vocab, hidden]` table; as a linear map it is the tied output head.
#[derive(Clone, Debug)]
pub struct Embedding(pub Weight);

impl Embedding {
    pub fn lookup(&self, ids: &Array) -> Result<Array> {
        Ok(match &self.0 {
            Weight::Dense(w) => w.take_axis(ids, 0)?,
            Weight::Quantized {
                codes,
                scales,
                biases,
                params,
            } => dequantize(
                codes.take_axis(ids, 0)?,
                scales.take_axis(ids, 0)?,
                &biases.take_axis(ids, 0)?,
                params.group_size as i32,
                params.bits as i32,
            )?,
        })
    }

    pub fn as_linear(&self) -> Linear {
        Linear(self.0.clone())
    }
}

/// `E` expert matrices `[E, out, in]`; each token row is multiplied by the experts it was
/// routed to.
#[derive(Clone, Debug)]
pub struct ExpertBank(pub Weight);

impl ExpertBank {
    /// `x`: `[N, 1, 1, in]` (one row per token), `experts`: `[N, k]` expert indices.
    /// Returns `[N, k, 1, out]`.
    pub fn forward(&self, x: &Array, experts: &Array) -> Result<Array> {
        Ok(match &self.0 {
            Weight::Dense(w) => gather_mm(x, w.swap_axes(-1, -2)?, None, experts, false)?,
            Weight::Quantized {
                codes,
                scales,
                biases,
                params,
            } => gather_qmm(
                x,
                codes,
                scales,
                biases,
                None,
                experts,
                true,
                params.group_size as i32,
                params.bits as i32,
                false,
            )?,
        })
    }
}

/// Slices `[start, end)` of one axis; a thin wrapper because the index syntax is noisy.
pub fn slice_axis(a: &Array, axis: i32, start: i32, end: i32) -> Result<Array> {
    let ndim = a.ndim() as i32;
    let axis = if axis < 0 { axis + ndim } else { axis };
    let mut starts = vec![0i32; ndim as usize];
    let mut stops: Vec<i32> = a.shape().to_vec();
    starts[axis as usize] = start;
    stops[axis as usize] = end;
    let strides = vec![1i32; ndim as usize];
    let stream = mlx_rs::Stream::thread_local_or_default();
    // SAFETY: mlx_slice reads the three arrays of `ndim` ints and writes a new array handle.
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        let status = mlx_sys::mlx_slice(
            &mut res,
            a.as_ptr(),
            starts.as_ptr(),
            starts.len(),
            stops.as_ptr(),
            stops.len(),
            strides.as_ptr(),
            strides.len(),
            stream.as_ref().as_ptr(),
        );
        let out = Array::from_ptr(res);
        if status != 0 {
            return Err(crate::Error::new(
                crate::ErrorCode::Mlx,
                format!(
                    "slicing axis {axis} [{start}, {end}) of {:?} failed",
                    a.shape()
                ),
            ));
        }
        Ok(out)
    }
}
