//! Our CPU kernels under MLX: custom MLX primitives (C++ `mlx::core::Primitive` subclasses in
//! `csrc/`, compiled against the very MLX headers `mlx-sys` links) for the work of a Qwen3.5
//! decode or prefill step, reached through a small C ABI.
//!
//! * [`quantized_matmul`]: `x · dequantize(w)ᵀ` like MLX's `quantized_matmul(…, transpose =
//!   true)` in affine mode, 2/3/4/5/6/8 bits, groups 32/64/128.
//! * [`gather_qmm`]: the same per gathered matrix, like MLX's `gather_qmm` (mixture-of-experts
//!   banks, `rhs_indices` = the experts of each token).
//! * [`quantized_linears`]: one `x` times several quantized matrices as one node (a layer's
//!   input projections); [`quantized_swiglu`]: `silu(x·Gᵀ) · (x·Uᵀ)` as one node.
//! * [`dense_matmul`]: `x · wᵀ` for a plain float32/bfloat16/float16 `w` (the layers a
//!   mixed-precision recipe keeps unquantized, and unquantized checkpoints), float32 `x`.
//! * [`attention`]: MLX's `scaled_dot_product_attention` (no mask or causal), float32.
//! * [`rope`]: MLX's `fast::rope` (NeoX layout, scale 1) from given frequencies, float32.
//! * [`rms_norm`], [`add_rms_norm`], [`silu_mul`], [`sigmoid_mul`]: the per-layer row and
//!   element ops, float32; [`argmax`]: the greedy token of each row of logits.
//! * [`gated_delta`]: a Gated DeltaNet layer's whole mixing between its input projections and
//!   out_proj (conv, norms, gates, the delta rule over all tokens, the gated RMSNorm) in
//!   float32, as one node with three outputs.
//!
//! All build lazy graph nodes (MLX evaluates them with `eval`/`async_eval` like its own ops)
//! and return `Ok(None)` when they do not handle a call: a stream on another device than the
//! CPU, parameters or shapes outside the above. Callers then use MLX's own op, which also
//! reports shape errors in MLX's words.
//!
//! Run-time knobs: `MLX_NODE_KERNELS=0` ([`enabled`] is false; for callers to compare),
//! `MLX_NODE_KERNELS_ISA=portable|avx2|avx512|neon|auto` (the default ISA: the best the CPU
//! has, AVX-512F over AVX2+FMA) and `MLX_NODE_THREADS` (threads of the pool, default one per
//! available CPU).

use std::ffi::CStr;
use std::fmt;
use std::sync::OnceLock;

use mlx_rs::{Array, Stream};
use mlx_sys::{mlx_array, mlx_stream};

mod ffi {
    use super::{mlx_array, mlx_stream};

    extern "C" {
        pub fn mlxnk_quantized_matmul(
            res: *mut mlx_array,
            x: mlx_array,
            w: mlx_array,
            scales: mlx_array,
            biases: mlx_array,
            group_size: i32,
            bits: i32,
            isa: i32,
            stream: mlx_stream,
        ) -> i32;
        #[allow(clippy::too_many_arguments)]
        pub fn mlxnk_gather_qmm(
            res: *mut mlx_array,
            x: mlx_array,
            w: mlx_array,
            scales: mlx_array,
            biases: mlx_array,
            lhs_indices: mlx_array,
            rhs_indices: mlx_array,
            group_size: i32,
            bits: i32,
            isa: i32,
            stream: mlx_stream,
        ) -> i32;
        #[allow(clippy::too_many_arguments)]
        pub fn mlxnk_gated_delta(
            y: *mut mlx_array,
            conv_state: *mut mlx_array,
            state: *mut mlx_array,
            inputs: *const mlx_array,
            key_heads: i32,
            value_heads: i32,
            eps: f32,
            isa: i32,
            stream: mlx_stream,
        ) -> i32;
        pub fn mlxnk_pointwise(
            res: *mut mlx_array,
            op: i32,
            a: mlx_array,
            b: mlx_array,
            eps: f32,
            stream: mlx_stream,
        ) -> i32;
        #[allow(clippy::too_many_arguments)]
        pub fn mlxnk_attention(
            res: *mut mlx_array,
            q: mlx_array,
            k: mlx_array,
            v: mlx_array,
            scale: f32,
            causal: i32,
            isa: i32,
            stream: mlx_stream,
        ) -> i32;
        pub fn mlxnk_dense_matmul(
            res: *mut mlx_array,
            x: mlx_array,
            w: mlx_array,
            isa: i32,
            stream: mlx_stream,
        ) -> i32;
        pub fn mlxnk_rope(
            res: *mut mlx_array,
            x: mlx_array,
            freqs: mlx_array,
            dims: i32,
            offset: i32,
            stream: mlx_stream,
        ) -> i32;
        #[allow(clippy::too_many_arguments)]
        pub fn mlxnk_quantized_linears(
            res: *mut mlx_array,
            x: mlx_array,
            weights: *const mlx_array,
            group_sizes: *const i32,
            bits: *const i32,
            count: i32,
            glu: i32,
            isa: i32,
            stream: mlx_stream,
        ) -> i32;
        pub fn mlxnk_add_rms_norm(
            sum: *mut mlx_array,
            y: *mut mlx_array,
            h: mlx_array,
            x: mlx_array,
            w: mlx_array,
            eps: f32,
            stream: mlx_stream,
        ) -> i32;
        pub fn mlxnk_argmax(res: *mut mlx_array, x: mlx_array, isa: i32, stream: mlx_stream)
            -> i32;
        pub fn mlxnk_last_error() -> *const std::ffi::c_char;
        pub fn mlxnk_resolve_isa(isa: i32) -> i32;
        pub fn mlxnk_threads() -> i32;
    }
}

/// The instruction set a kernel runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Isa {
    /// `MLX_NODE_KERNELS_ISA` if set, else the best this CPU has.
    Default = 0,
    /// Plain C++ for the baseline target (the fallback everywhere).
    Portable = 1,
    /// AVX2 + FMA (x86_64 CPUs that have them, checked at run time).
    Avx2 = 2,
    /// NEON (aarch64).
    Neon = 3,
    /// AVX2 + FMA, with AVX-512F vectors in the single-row matvec (x86_64 CPUs that have it).
    Avx512 = 4,
}

impl Isa {
    /// What a request runs as on this machine (an ISA it lacks becomes [`Isa::Portable`]).
    pub fn resolved(self) -> Isa {
        // SAFETY: a pure query.
        match unsafe { ffi::mlxnk_resolve_isa(self as i32) } {
            2 => Isa::Avx2,
            3 => Isa::Neon,
            4 => Isa::Avx512,
            _ => Isa::Portable,
        }
    }

    /// Every ISA this machine runs, the portable one first.
    pub fn available() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Neon]
            .into_iter()
            .filter(|isa| isa.resolved() == *isa)
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Default => "default",
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Neon => "neon",
            Isa::Avx512 => "avx512",
        }
    }
}

/// A failure inside the C++ side while building the graph node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelError(pub String);

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mlx-node kernels: {}", self.0)
    }
}

impl std::error::Error for KernelError {}

pub type Result<T> = std::result::Result<T, KernelError>;

/// False when `MLX_NODE_KERNELS=0` (read once): callers then use MLX's own ops.
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("MLX_NODE_KERNELS").map_or(true, |v| v.trim() != "0"))
}

/// Threads the kernels split work over (the calling thread included).
pub fn threads() -> usize {
    // SAFETY: a pure query (starts the pool on first use).
    unsafe { ffi::mlxnk_threads() }.max(1) as usize
}

/// Turns a C ABI status into the op's result, taking ownership of `res`.
///
/// # Safety
/// `res` must be the array handle the C function was given.
unsafe fn finish(status: i32, res: mlx_array) -> Result<Option<Array>> {
    match status {
        0 => Ok(Some(Array::from_ptr(res))),
        other => {
            if !res.ctx.is_null() {
                mlx_sys::mlx_array_free(res);
            }
            if other == 2 {
                Ok(None)
            } else {
                let message = CStr::from_ptr(ffi::mlxnk_last_error())
                    .to_string_lossy()
                    .into_owned();
                Err(KernelError(message))
            }
        }
    }
}

/// `x · dequantize(w, scales, biases)ᵀ` (MLX's affine `quantized_matmul` with `transpose`),
/// on the thread's default stream; `Ok(None)` when not handled here (see the crate docs).
pub fn quantized_matmul(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: &Array,
    group_size: i32,
    bits: i32,
) -> Result<Option<Array>> {
    quantized_matmul_isa(x, w, scales, biases, group_size, bits, Isa::Default)
}

/// [`quantized_matmul`] with a chosen ISA (tests and benchmarks compare them).
pub fn quantized_matmul_isa(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: &Array,
    group_size: i32,
    bits: i32,
    isa: Isa,
) -> Result<Option<Array>> {
    let stream = Stream::thread_local_or_default();
    // SAFETY: every handle is a live array/stream; the function writes a new handle to res.
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        let status = ffi::mlxnk_quantized_matmul(
            &mut res,
            x.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            biases.as_ptr(),
            group_size,
            bits,
            isa as i32,
            stream.as_ptr(),
        );
        finish(status, res)
    }
}

/// One affine quantized matrix: packed codes `[N, K · bits / 32]` (uint32) with its scales and
/// biases `[N, K / group_size]`.
#[derive(Clone, Copy)]
pub struct QuantizedWeight<'a> {
    pub codes: &'a Array,
    pub scales: &'a Array,
    pub biases: &'a Array,
    pub group_size: i32,
    pub bits: i32,
}

/// Runs mlxnk_quantized_linears for `weights`, expecting `outputs` results.
fn linears(
    x: &Array,
    weights: &[QuantizedWeight],
    glu: bool,
    isa: Isa,
) -> Result<Option<Vec<Array>>> {
    let stream = Stream::thread_local_or_default();
    let handles: Vec<mlx_array> = weights
        .iter()
        .flat_map(|w| [w.codes, w.scales, w.biases].map(Array::as_ptr))
        .collect();
    let group_sizes: Vec<i32> = weights.iter().map(|w| w.group_size).collect();
    let bits: Vec<i32> = weights.iter().map(|w| w.bits).collect();
    let outputs = if glu { 1 } else { weights.len() };
    // SAFETY: every handle is a live array/stream; res holds `outputs` fresh handles, which the
    // function fills on success (we take ownership of each) and finish frees otherwise.
    unsafe {
        let mut res: Vec<mlx_array> = (0..outputs).map(|_| mlx_sys::mlx_array_new()).collect();
        let status = ffi::mlxnk_quantized_linears(
            res.as_mut_ptr(),
            x.as_ptr(),
            handles.as_ptr(),
            group_sizes.as_ptr(),
            bits.as_ptr(),
            weights.len() as i32,
            i32::from(glu),
            isa as i32,
            stream.as_ptr(),
        );
        let mut arrays = Vec::with_capacity(outputs);
        for r in res {
            arrays.push(finish(status, r)?);
        }
        Ok(arrays.into_iter().collect())
    }
}

/// `x · dequantize(wᵢ)ᵀ` for every matrix of `weights` (each as [`quantized_matmul`] computes
/// it), as one graph node whose evaluation spreads all the products over the threads at once;
/// `Ok(None)` when any of them is not handled here.
pub fn quantized_linears(
    x: &Array,
    weights: &[QuantizedWeight],
    isa: Isa,
) -> Result<Option<Vec<Array>>> {
    if weights.is_empty() {
        return Ok(Some(Vec::new()));
    }
    linears(x, weights, false, isa)
}

/// SwiGLU's `silu(x · Gᵀ) · (x · Uᵀ)` as one node (the products as [`quantized_matmul`], the
/// gating as [`silu_mul`]); `Ok(None)` unless both are handled, of one shape, and the result
/// is float32.
pub fn quantized_swiglu(
    x: &Array,
    gate: QuantizedWeight,
    up: QuantizedWeight,
    isa: Isa,
) -> Result<Option<Array>> {
    Ok(linears(x, &[gate, up], true, isa)?.map(|mut v| v.remove(0)))
}

/// MLX's affine `gather_qmm(x, w, scales, biases, lhs_indices, rhs_indices, transpose = true)`:
/// for each (broadcast) index pair, x's batch entry `lhs` times matrix `rhs` of the stack `w`
/// `[.., N, K · bits / 32]`. Output `broadcast(lhs, rhs).shape + [M, N]`.
#[allow(clippy::too_many_arguments)]
pub fn gather_qmm(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: &Array,
    lhs_indices: Option<&Array>,
    rhs_indices: Option<&Array>,
    group_size: i32,
    bits: i32,
) -> Result<Option<Array>> {
    gather_qmm_isa(
        x,
        w,
        scales,
        biases,
        lhs_indices,
        rhs_indices,
        group_size,
        bits,
        Isa::Default,
    )
}

/// [`gather_qmm`] with a chosen ISA.
#[allow(clippy::too_many_arguments)]
pub fn gather_qmm_isa(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: &Array,
    lhs_indices: Option<&Array>,
    rhs_indices: Option<&Array>,
    group_size: i32,
    bits: i32,
    isa: Isa,
) -> Result<Option<Array>> {
    let stream = Stream::thread_local_or_default();
    // SAFETY: as in quantized_matmul_isa; an absent index is a handle with a null ctx, which
    // the C side reads as "not given" and never frees.
    unsafe {
        let none = mlx_sys::mlx_array_new();
        let mut res = mlx_sys::mlx_array_new();
        let status = ffi::mlxnk_gather_qmm(
            &mut res,
            x.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            biases.as_ptr(),
            lhs_indices.map_or(none, Array::as_ptr),
            rhs_indices.map_or(none, Array::as_ptr),
            group_size,
            bits,
            isa as i32,
            stream.as_ptr(),
        );
        finish(status, res)
    }
}

/// The inputs of [`gated_delta`], all float32; C = 2·Hk·dk + Hv·dv.
pub struct GatedDeltaInputs<'a> {
    /// `[B, T, C]` in_proj_qkv output.
    pub qkv: &'a Array,
    /// `[B, T, Hv·dv]` in_proj_z output.
    pub z: &'a Array,
    /// `[B, T, Hv]` in_proj_a output.
    pub a: &'a Array,
    /// `[B, T, Hv]` in_proj_b output.
    pub b: &'a Array,
    /// `[C, K]` depthwise conv taps, the last one for the newest input.
    pub conv_weight: &'a Array,
    /// `[B, K − 1, C]` the previous inputs (zeros at the start).
    pub conv_state: &'a Array,
    /// `[Hv]` −exp(A_log).
    pub neg_a: &'a Array,
    /// `[Hv]`.
    pub dt_bias: &'a Array,
    /// `[dv]` the per-head RMSNorm weight.
    pub norm_weight: &'a Array,
    /// `[B, Hv, dk, dv]` the recurrent state.
    pub state: &'a Array,
    pub key_heads: i32,
    pub value_heads: i32,
    pub eps: f32,
}

/// What [`gated_delta`] computes.
pub struct GatedDeltaOutputs {
    /// `[B, T, Hv·dv]` `rms_norm(o)·w·silu(z)`, the input of out_proj.
    pub y: Array,
    /// `[B, K − 1, C]` the last K − 1 inputs.
    pub conv_state: Array,
    /// `[B, Hv, dk, dv]`.
    pub state: Array,
}

/// A Gated DeltaNet layer's mixing on the CPU (see `csrc/gated_delta.cpp` for the math);
/// `Ok(None)` when not handled here: another device, or an input not float32 or not of the
/// shapes above.
pub fn gated_delta(inputs: &GatedDeltaInputs, isa: Isa) -> Result<Option<GatedDeltaOutputs>> {
    let stream = Stream::thread_local_or_default();
    let arrays = [
        inputs.qkv,
        inputs.z,
        inputs.a,
        inputs.b,
        inputs.conv_weight,
        inputs.conv_state,
        inputs.neg_a,
        inputs.dt_bias,
        inputs.norm_weight,
        inputs.state,
    ]
    .map(Array::as_ptr);
    // SAFETY: every handle is a live array/stream; on success the function writes three new
    // handles, which we take ownership of; on failure the fresh handles are freed by finish.
    unsafe {
        let (mut y, mut conv, mut state) = (
            mlx_sys::mlx_array_new(),
            mlx_sys::mlx_array_new(),
            mlx_sys::mlx_array_new(),
        );
        let status = ffi::mlxnk_gated_delta(
            &mut y,
            &mut conv,
            &mut state,
            arrays.as_ptr(),
            inputs.key_heads,
            inputs.value_heads,
            inputs.eps,
            isa as i32,
            stream.as_ptr(),
        );
        let y = finish(status, y)?;
        let conv = finish(status, conv)?;
        let state = finish(status, state)?;
        Ok(match (y, conv, state) {
            (Some(y), Some(conv_state), Some(state)) => Some(GatedDeltaOutputs {
                y,
                conv_state,
                state,
            }),
            _ => None,
        })
    }
}

/// Runs one of our single-output C ABI ops on the thread's default stream: `op` gets the
/// handle to write and the stream.
fn call_op(op: impl FnOnce(*mut mlx_array, mlx_stream) -> i32) -> Result<Option<Array>> {
    let stream = Stream::thread_local_or_default();
    // SAFETY: res is a fresh handle the op writes a new array to (or leaves empty); the
    // callers pass live handles only.
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        let status = op(&mut res, stream.as_ptr());
        finish(status, res)
    }
}

fn pointwise(op: i32, a: &Array, b: &Array, eps: f32) -> Result<Option<Array>> {
    // SAFETY: live handles (see call_op).
    call_op(|res, stream| unsafe {
        ffi::mlxnk_pointwise(res, op, a.as_ptr(), b.as_ptr(), eps, stream)
    })
}

/// `x · (mean(x²) + eps)^-½ · weight` over the last axis (MLX's `fast::rms_norm`), float32.
pub fn rms_norm(x: &Array, weight: &Array, eps: f32) -> Result<Option<Array>> {
    pointwise(-1, x, weight, eps)
}

/// A residual add and the norm after it as one node: `(h + x, rms_norm(h + x) · weight)`,
/// float32, `h` and `x` of one shape.
pub fn add_rms_norm(
    h: &Array,
    x: &Array,
    weight: &Array,
    eps: f32,
) -> Result<Option<(Array, Array)>> {
    let stream = Stream::thread_local_or_default();
    // SAFETY: live handles; on success the function writes two new handles, which we own; on
    // failure finish frees the fresh ones.
    unsafe {
        let (mut sum, mut y) = (mlx_sys::mlx_array_new(), mlx_sys::mlx_array_new());
        let status = ffi::mlxnk_add_rms_norm(
            &mut sum,
            &mut y,
            h.as_ptr(),
            x.as_ptr(),
            weight.as_ptr(),
            eps,
            stream.as_ptr(),
        );
        let sum = finish(status, sum)?;
        let y = finish(status, y)?;
        Ok(sum.zip(y))
    }
}

/// MLX's `argmax(x, axis = −1)` (uint32, the first index of the largest value; a NaN only
/// wins at index 0) for float32 `x`.
pub fn argmax(x: &Array, isa: Isa) -> Result<Option<Array>> {
    // SAFETY: live handles (see call_op).
    call_op(|res, stream| unsafe { ffi::mlxnk_argmax(res, x.as_ptr(), isa as i32, stream) })
}

/// `a · sigmoid(a) · b` (SwiGLU's `silu(gate) · up`), float32, equal shapes.
pub fn silu_mul(a: &Array, b: &Array) -> Result<Option<Array>> {
    pointwise(0, a, b, 0.0)
}

/// `x · sigmoid(gate)`, float32, equal shapes.
pub fn sigmoid_mul(x: &Array, gate: &Array) -> Result<Option<Array>> {
    pointwise(1, x, gate, 0.0)
}

/// `softmax(scale · q kᵀ [+ causal mask]) v` like MLX's `scaled_dot_product_attention`:
/// q `[B, Hq, T, D]`, k `[B, Hkv, L, D]`, v `[B, Hkv, L, Dv]` (query head h reads key head
/// h / (Hq / Hkv)); `causal` lines the T queries up with the last T keys. Float32.
pub fn attention(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    causal: bool,
    isa: Isa,
) -> Result<Option<Array>> {
    // SAFETY: live handles (see call_op).
    call_op(|res, stream| unsafe {
        ffi::mlxnk_attention(
            res,
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            scale,
            i32::from(causal),
            isa as i32,
            stream,
        )
    })
}

/// `x · wᵀ` for float32 `x` `[.., K]` and a dense `w` `[N, K]` of float32, bfloat16 or float16
/// (converted exactly as it is read, never copied).
pub fn dense_matmul(x: &Array, w: &Array, isa: Isa) -> Result<Option<Array>> {
    // SAFETY: live handles (see call_op).
    call_op(|res, stream| unsafe {
        ffi::mlxnk_dense_matmul(res, x.as_ptr(), w.as_ptr(), isa as i32, stream)
    })
}

/// The frequencies MLX's `fast::rope` uses for `dims` rotated dimensions and `base`,
/// `exp(−i · ln(base) / (dims / 2))`, made with MLX's ops as MLX makes them (so that [`rope`]
/// rounds its angles the same).
pub fn rope_frequencies(
    dims: i32,
    base: f32,
) -> std::result::Result<Array, mlx_rs::error::Exception> {
    let half = dims / 2;
    let steps = mlx_rs::ops::arange::<_, f32>(0.0, -(half as f64), -1.0)?;
    mlx_rs::ops::exp(steps.multiply(Array::from_f32(base.ln() / half as f32))?)
}

/// MLX's `fast::rope(x, dims, traditional = false, base, scale = 1, offset)` for x
/// `[B, N, T, D]` with `freqs` from [`rope_frequencies`], float32.
pub fn rope(x: &Array, freqs: &Array, dims: i32, offset: i32) -> Result<Option<Array>> {
    // SAFETY: live handles (see call_op).
    call_op(|res, stream| unsafe {
        ffi::mlxnk_rope(res, x.as_ptr(), freqs.as_ptr(), dims, offset, stream)
    })
}
