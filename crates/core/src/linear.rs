//! Linear maps and embeddings whose weights are either plain float matrices or MLX affine
//! quantized ones (packed codes with a scale and a bias per group), and the expert banks of a
//! mixture-of-experts layer (one such matrix per expert, applied through gather matmuls).
//!
//! Quantized products on a CPU stream go through our own kernels (`mlx-node-kernels`: MLX
//! primitives with AVX2/NEON, multi-threaded); `MLX_NODE_KERNELS=0` turns them off, and
//! whatever they do not handle (other devices, shapes) goes to MLX's own ops.

use mlx_node_kernels::{Isa, QuantizedWeight};
use mlx_rs::ops::{dequantize, gather_mm, gather_qmm, quantized_matmul};
use mlx_rs::{Array, Dtype};

use crate::config::QuantParams;
use crate::error::{Error, ErrorCode, Result};

/// Our kernel's output, or `None` when the kernels are off or leave this call to MLX.
pub(crate) fn kernel<T>(
    op: impl FnOnce() -> mlx_node_kernels::Result<Option<T>>,
) -> Result<Option<T>> {
    if !mlx_node_kernels::enabled() {
        return Ok(None);
    }
    op().map_err(|e| Error::new(ErrorCode::Mlx, e.to_string()))
}

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
            Weight::Dense(w) => {
                match kernel(|| mlx_node_kernels::dense_matmul(x, w, Isa::Default))? {
                    Some(y) => y,
                    None => x.matmul(w.as_dtype(x.dtype())?.t())?,
                }
            }
            Weight::Quantized {
                codes,
                scales,
                biases,
                params,
            } => {
                let (group_size, bits) = (params.group_size as i32, params.bits as i32);
                match kernel(|| {
                    mlx_node_kernels::quantized_matmul(x, codes, scales, biases, group_size, bits)
                })? {
                    Some(y) => y,
                    None => quantized_matmul(x, codes, scales, biases, true, group_size, bits)?,
                }
            }
        })
    }

    /// Our kernels' view of the weight, when it is quantized.
    pub(crate) fn quantized(&self) -> Option<QuantizedWeight<'_>> {
        match &self.0 {
            Weight::Dense(_) => None,
            Weight::Quantized {
                codes,
                scales,
                biases,
                params,
            } => Some(QuantizedWeight {
                codes,
                scales,
                biases,
                group_size: params.group_size as i32,
                bits: params.bits as i32,
            }),
        }
    }

    /// `x · Wᵢᵀ` for each of `linears`: one node of ours when every weight is quantized and
    /// handled (the products of one input then share one pass over the threads), else each
    /// on its own.
    pub fn forward_many(linears: &[&Linear], x: &Array) -> Result<Vec<Array>> {
        let weights: Option<Vec<QuantizedWeight>> = linears.iter().map(|l| l.quantized()).collect();
        if let Some(weights) = weights {
            if let Some(ys) =
                kernel(|| mlx_node_kernels::quantized_linears(x, &weights, Isa::Default))?
            {
                return Ok(ys);
            }
        }
        linears.iter().map(|l| l.forward(x)).collect()
    }
}

/// Rows of a `[vocab, hidden]` table; as a linear map it is the tied output head.
#[derive(Clone, Debug)]
pub struct Embedding(pub Weight);

impl Embedding {
    /// The rows `ids`, in `dtype`.
    pub fn lookup(&self, ids: &Array, dtype: Dtype) -> Result<Array> {
        Ok(match &self.0 {
            Weight::Dense(w) => w.take_axis(ids, 0)?.as_dtype(dtype)?,
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
            Weight::Dense(w) => gather_mm(
                x,
                w.as_dtype(x.dtype())?.swap_axes(-1, -2)?,
                None,
                experts,
                false,
            )?,
            Weight::Quantized {
                codes,
                scales,
                biases,
                params,
            } => {
                let (group_size, bits) = (params.group_size as i32, params.bits as i32);
                match kernel(|| {
                    mlx_node_kernels::gather_qmm(
                        x,
                        codes,
                        scales,
                        biases,
                        None,
                        Some(experts),
                        group_size,
                        bits,
                    )
                })? {
                    Some(y) => y,
                    None => gather_qmm(
                        x, codes, scales, biases, None, experts, true, group_size, bits, false,
                    )?,
                }
            }
        })
    }
}

/// The window `[start, end)` of one axis of `a` (negative axes count from the end) as MLX's
/// per-axis starts, stops and strides, and the axis made non-negative.
fn axis_window(a: &Array, axis: i32, start: i32, end: i32) -> (i32, [Vec<i32>; 3]) {
    let ndim = a.ndim() as i32;
    let axis = if axis < 0 { axis + ndim } else { axis };
    let mut starts = vec![0i32; ndim as usize];
    let mut stops: Vec<i32> = a.shape().to_vec();
    starts[axis as usize] = start;
    stops[axis as usize] = end;
    (axis, [starts, stops, vec![1i32; ndim as usize]])
}

/// Runs one mlx-c call that writes a new array handle; `what` names it in the error.
fn new_array(
    call: impl FnOnce(&mut mlx_sys::mlx_array, mlx_sys::mlx_stream) -> i32,
    what: impl FnOnce() -> String,
) -> Result<Array> {
    let stream = mlx_rs::Stream::thread_local_or_default();
    // SAFETY: `call` only writes `res`, which starts as an empty handle and is owned by `out`.
    let (status, out) = unsafe {
        let mut res = mlx_sys::mlx_array_new();
        let status = call(&mut res, stream.as_ref().as_ptr());
        (status, Array::from_ptr(res))
    };
    if status != 0 {
        return Err(crate::Error::new(
            crate::ErrorCode::Mlx,
            format!("{} failed", what()),
        ));
    }
    Ok(out)
}

/// Slices `[start, end)` of one axis; a thin wrapper because the index syntax is noisy.
pub fn slice_axis(a: &Array, axis: i32, start: i32, end: i32) -> Result<Array> {
    let (axis, [starts, stops, strides]) = axis_window(a, axis, start, end);
    new_array(
        // SAFETY: mlx_slice reads the three arrays of `ndim` ints.
        |res, stream| unsafe {
            mlx_sys::mlx_slice(
                res,
                a.as_ptr(),
                starts.as_ptr(),
                starts.len(),
                stops.as_ptr(),
                stops.len(),
                strides.as_ptr(),
                strides.len(),
                stream,
            )
        },
        || format!("slicing axis {axis} [{start}, {end}) of {:?}", a.shape()),
    )
}

/// `a` with `update` written over `[start, start + len)` of one axis (the update's length
/// there; its other axes match `a`'s). MLX reuses `a`'s buffer when nothing else holds it, so
/// a cache that drops its handle first is updated in place.
pub fn update_axis(a: &Array, update: &Array, axis: i32, start: i32) -> Result<Array> {
    let ndim = a.ndim() as i32;
    let len = update.shape()[(if axis < 0 { axis + ndim } else { axis }) as usize];
    let (axis, [starts, stops, strides]) = axis_window(a, axis, start, start + len);
    new_array(
        // SAFETY: mlx_slice_update reads the three arrays of `ndim` ints.
        |res, stream| unsafe {
            mlx_sys::mlx_slice_update(
                res,
                a.as_ptr(),
                update.as_ptr(),
                starts.as_ptr(),
                starts.len(),
                stops.as_ptr(),
                stops.len(),
                strides.as_ptr(),
                strides.len(),
                stream,
            )
        },
        || {
            format!(
                "writing {:?} into axis {axis} of {:?} at {start}",
                update.shape(),
                a.shape()
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: &Array, b: &Array) -> (f32, f32) {
        let (a, b) = (a.as_slice::<f32>(), b.as_slice::<f32>());
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        (diff, scale)
    }

    /// The quantized layers give MLX's own results (within float32 rounding) whether or not
    /// our kernels take them.
    #[test]
    fn quantized_layers_match_mlx_ops() {
        let key = mlx_rs::random::key(3).unwrap();
        let params = QuantParams {
            group_size: 64,
            bits: 4,
        };
        let w = mlx_rs::random::normal::<f32>(&[3, 40, 128][..], 0.0, 1.0, &key).unwrap();
        let (codes, scales, biases) = mlx_rs::ops::quantize(&w, 64, 4).unwrap();
        let x = mlx_rs::random::normal::<f32>(&[2, 3, 128][..], 0.0, 1.0, &key).unwrap();

        let first = |a: &Array| a.take_axis(Array::from_int(0), 0).unwrap();
        let (c0, s0, b0) = (first(&codes), first(&scales), first(&biases));
        let linear = Linear(Weight::Quantized {
            codes: c0.clone(),
            scales: s0.clone(),
            biases: b0.clone(),
            params,
        });
        let y = linear.forward(&x).unwrap();
        let reference = quantized_matmul(&x, &c0, &s0, &b0, true, 64, 4).unwrap();
        mlx_rs::transforms::eval([&y, &reference]).unwrap();
        let (diff, scale) = max_abs_diff(&y, &reference);
        assert!(diff <= 1e-5 * scale, "linear: {diff} vs {scale}");

        let bank = ExpertBank(Weight::Quantized {
            codes: codes.clone(),
            scales: scales.clone(),
            biases: biases.clone(),
            params,
        });
        let tokens = x.reshape(&[6, 1, 1, 128]).unwrap();
        let experts = Array::from_slice(&[0u32, 2, 1, 1, 2, 0, 0, 1, 2, 2, 1, 0], &[6, 2]);
        let y = bank.forward(&tokens, &experts).unwrap();
        let reference = gather_qmm(
            &tokens, &codes, &scales, &biases, None, &experts, true, 64, 4, false,
        )
        .unwrap();
        mlx_rs::transforms::eval([&y, &reference]).unwrap();
        let (diff, scale) = max_abs_diff(&y, &reference);
        assert!(diff <= 1e-5 * scale, "experts: {diff} vs {scale}");
    }
}
