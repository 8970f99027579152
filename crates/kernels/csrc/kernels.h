// Internal interface of the CPU kernels: the per-ISA affine quantized matmul over a range of
// output columns, and the thread pool that splits the columns. No MLX types here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mlxnk {

// Values shared with the C ABI (`isa` arguments) and the Rust crate's `Isa`.
// Avx512 is the AVX2 path with AVX-512F vectors where they pay (the single-row matvec).
enum class Isa : int { Default = 0, Portable = 1, Avx2 = 2, Neon = 3, Avx512 = 4 };

// Storage type of scales and biases.
enum class FType : int { F32 = 0, BF16 = 1, F16 = 2 };

// An affine quantized matrix W [N, K]: row n holds K codes of `bits` bits packed LSB-first
// into K * bits / 8 bytes, and K / group_size scales and biases; W[n, k] = s * q + b.
struct QMatrix {
  const uint8_t* codes;      // row 0 of this matrix
  const uint8_t* codes_end;  // one past the last byte of the whole buffer (bounds for reads)
  const void* scales;        // [N, K / group_size], row-major, of scale_type
  const void* biases;        // [N, K / group_size], row-major, of bias_type
  FType scale_type;
  FType bias_type;
  int64_t N;
  int64_t K;
  int bits;
  int group_size;
};

// A dense matrix W [N, K], row-major, of float32, bfloat16 or float16.
struct DMatrix {
  const void* data;
  FType type;
  int64_t N;
  int64_t K;
};

// As qmm_columns, for a dense W.
void dense_columns(Isa isa, const DMatrix& w, const float* x, int64_t ldx, int64_t M, float* y,
                   int64_t ldy, int64_t n0, int64_t n1, const float* blocks = nullptr);

// y[m * ldy + n] = sum_k x[m * ldx + k] * W[n, k] for 0 <= m < M and n0 <= n < n1.
// `isa` must be a resolved one (see resolve_isa). `blocks`: x as pack_row_blocks made it for
// this isa, or nullptr (then a path that wants it packs x itself, once per call).
void qmm_columns(Isa isa, const QMatrix& w, const float* x, int64_t ldx, int64_t M, float* y,
                 int64_t ldy, int64_t n0, int64_t n1, const float* blocks = nullptr);

// x [M, K] rearranged as the many-row path of `isa` reads it, so that the column pieces of one
// product share one copy; empty where that path reads x as it is.
std::vector<float> pack_row_blocks(Isa isa, const float* x, int64_t ldx, int64_t M, int64_t K);

// Shapes of one Gated DeltaNet mixing call (gated_delta.cpp): B sequences of T tokens, Hk key
// heads of dk and Hv value heads of dv (Hv a multiple of Hk), a K-tap convolution.
struct DeltaShape {
  int64_t B, T, Hk, Hv, dk, dv, K;
  int64_t channels() const { return 2 * Hk * dk + Hv * dv; }
};

// Row-major float32 buffers of a Gated DeltaNet mixing call; C = shape.channels().
struct DeltaArgs {
  DeltaShape shape;
  const float* qkv;            // [B, T, C] in_proj_qkv output
  const float* z;              // [B, T, Hv * dv] in_proj_z output
  const float* a;              // [B, T, Hv] in_proj_a output
  const float* b;              // [B, T, Hv] in_proj_b output
  const float* conv_weight;    // [C, K]
  const float* conv_state_in;  // [B, K - 1, C] the previous inputs
  const float* neg_a;          // [Hv] −exp(A_log)
  const float* dt_bias;        // [Hv]
  const float* norm_weight;    // [dv]
  float eps;
  float* conv_state_out;  // [B, K - 1, C]
  const float* state_in;  // [B, Hv, dk, dv] the recurrent state
  float* state;           // [B, Hv, dk, dv] the new one (may not alias state_in)
  float* y;               // [B, T, Hv * dv] normalised, gated output
};

// Runs the mixing (see gated_delta.cpp) over the pool; `isa` resolved.
void gated_delta(Isa isa, const DeltaArgs& args);

// Scaled dot-product attention (attention.cpp), float32: q [B, Hq, T, D] and o [B, Hq, T, Dv]
// row-major; k [B, Hkv, L, D] and v [B, Hkv, L, Dv] with contiguous rows but any batch and
// head strides (in elements), so a cache's view of its first L positions is read in place;
// causal: the queries are the last T of the L positions.
struct AttentionArgs {
  const float* q;
  const float* k;
  const float* v;
  float* o;
  int64_t B, Hq, Hkv, T, L, D, Dv;
  int64_t k_batch_stride, k_head_stride, v_batch_stride, v_head_stride;
  float scale;
  bool causal;
};
void attention(Isa isa, const AttentionArgs& args);

// Rotary embedding (rope.cpp), row-major float32 x, y [B, N, T, D]: the first `dims` of each
// row rotated in NeoX pairs for positions offset … offset + T − 1 with frequencies freqs[dims/2].
struct RopeArgs {
  const float* x;
  const float* freqs;
  float* y;
  int64_t B, N, T, D, dims, offset;
};
void rope(const RopeArgs& args);

// Float32 row and element ops (pointwise.cpp), spread over the pool when large.
// y[r, :] = x[r, :] · (mean(x[r, :]²) + eps)^-½ · w for `rows` rows of D.
void rms_norm(const float* x, const float* w, float eps, int64_t rows, int64_t D, float* y);
// sum = h + x, then y = rms_norm(sum) · w (a residual add and the norm after it), rows of D.
void add_rms_norm(const float* h, const float* x, const float* w, float eps, int64_t rows,
                  int64_t D, float* sum, float* y);
// out[r] = the first index of the largest value of row r of x [rows, n] as MLX's argmax finds
// it: a NaN never counts, except at index 0, which then wins. `isa` resolved.
void argmax_rows(Isa isa, const float* x, int64_t rows, int64_t n, uint32_t* out);
enum class PointwiseOp : int { SiluMul = 0, SigmoidMul = 1 };
// SiluMul: y = a · sigmoid(a) · b; SigmoidMul: y = a · sigmoid(b); n elements each.
void pointwise(PointwiseOp op, const float* a, const float* b, int64_t n, float* y);

// y[i] = exp(x[i]) for n floats (x and y may be the same buffer): eight lanes at a time on
// AVX2 (range reduction to [−ln2/2, ln2/2] and Cephes' expf polynomial; results below the
// smallest normal float become 0), else std::exp. `isa` resolved. Its callers' tests (the
// gates, Gated DeltaNet, attention) hold it to MLX's ops within 1e-5.
void vexp(Isa isa, const float* x, float* y, int64_t n);

// What a request runs as here: Default picks MLX_NODE_KERNELS_ISA (portable/avx2/neon/auto)
// or the best this CPU has; an ISA this build or CPU lacks becomes Portable.
Isa resolve_isa(Isa requested);
bool isa_available(Isa isa);

// The persistent pool: MLX_NODE_THREADS threads, else one per CPU this process may run on.
// The calling thread is one of them.
int pool_threads();
// Runs fn(0) … fn(n - 1), spread over the pool; returns when all have finished. A call made
// while the pool is busy with another caller's work runs on the calling thread alone.
void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

// MLX_NODE_PROFILE=1 (profile.cpp): our tasks timed by what they are (`what`), and the time
// between them, printed to stderr at exit.
bool profiling();
double profile_clock();  // seconds
void profile_task(const std::string& what, double start, double end);

// Half-precision conversions (round to nearest even), used by the primitives too.
float bf16_to_f32(uint16_t h);
float f16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
uint16_t f32_to_f16(float f);

}  // namespace mlxnk
