// The Gated DeltaNet mixing of Qwen3.5 in float32: everything between a layer's four input
// projections and its out_proj, per token
//
//   conv:  x_t = silu(Σ_tap w[c, tap] · padded[t + tap, c])  (causal depthwise, K taps)
//   q, k:  l2-normalised per key head (ε 1e-6 inside the root), q also scaled by dk^-½
//   gates: β = sigmoid(b),  decay = exp(−exp(A_log) · softplus(a + dt_bias))
//   rule:  S ← decay·S;  S ← S + k (β (v − Sᵀk))ᵀ;  o = Sᵀq     (per value head, S [dk, dv])
//   out:   rms_norm(o) · w · silu(z)                            (per value head)
//
// in the order the engine's MLX ops compute it (crates/core/src/gated_delta.rs), so both
// agree to float32 rounding. Two phases: the convolution, norms and gates of every token
// (tokens spread over the pool), then the recurrence of every value head over all tokens
// (heads spread over the pool; a head's state stays in cache for the whole chunk).
//
// The loops are written once and compiled twice, for the baseline target and for AVX2+FMA
// (chosen at run time like the matmul kernels); the compiler vectorises the inner loops over
// channels and value dimensions.

#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define MLXNK_X86 1
#endif

#define MLXNK_INLINE inline __attribute__((always_inline))

namespace mlxnk {
namespace {

MLXNK_INLINE float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// MLX's logaddexp(a, 0).
MLXNK_INLINE float softplus(float a) {
  const float hi = a > 0.0f ? a : 0.0f;
  const float lo = a > 0.0f ? 0.0f : a;
  return hi + std::log1p(std::exp(lo - hi));
}

// x · (Σ x² + 1e-6)^-½ over n values, in place.
MLXNK_INLINE void l2_normalize(float* __restrict x, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += x[i] * x[i];
  const float r = 1.0f / std::sqrt(sum + 1e-6f);
  for (int64_t i = 0; i < n; ++i) x[i] *= r;
}

// Phase 1 for token t of sequence b: mixed[C] = the convolved, activated and normalised
// q | k | v, and the head gates beta[Hv], decay[Hv].
MLXNK_INLINE void token_inputs(const DeltaArgs& a, int64_t b, int64_t t, float* __restrict mixed,
                               float* __restrict beta, float* __restrict decay) {
  const DeltaShape& d = a.shape;
  const int64_t C = d.channels();
  const int64_t window = d.K - 1;
  const float* past = a.conv_state_in + b * window * C;
  const float* now = a.qkv + b * d.T * C;
  for (int64_t c = 0; c < C; ++c) mixed[c] = 0.0f;
  for (int64_t tap = 0; tap < d.K; ++tap) {
    const int64_t r = t + tap;  // row of [past; now]
    const float* __restrict in = r < window ? past + r * C : now + (r - window) * C;
    const float* __restrict w = a.conv_weight;
    for (int64_t c = 0; c < C; ++c) mixed[c] += in[c] * w[c * d.K + tap];
  }
  for (int64_t c = 0; c < C; ++c) mixed[c] = mixed[c] * sigmoid(mixed[c]);
  const float q_scale = 1.0f / std::sqrt(static_cast<float>(d.dk));
  for (int64_t h = 0; h < d.Hk; ++h) {
    float* q = mixed + h * d.dk;
    l2_normalize(q, d.dk);
    for (int64_t i = 0; i < d.dk; ++i) q[i] *= q_scale;
    l2_normalize(mixed + (d.Hk + h) * d.dk, d.dk);
  }
  const int64_t row = (b * d.T + t) * d.Hv;
  for (int64_t j = 0; j < d.Hv; ++j) {
    beta[j] = sigmoid(a.b[row + j]);
    decay[j] = std::exp(softplus(a.a[row + j] + a.dt_bias[j]) * a.neg_a[j]);
  }
}

// Phase 2 for value head j of sequence b over all T tokens; work[2 dv] is scratch.
MLXNK_INLINE void head_recurrence(const DeltaArgs& a, const float* mixed, const float* beta,
                                  const float* decay, int64_t b, int64_t j, float* work) {
  const DeltaShape& d = a.shape;
  const int64_t C = d.channels();
  const int64_t dk = d.dk, dv = d.dv;
  const int64_t h = j / (d.Hv / d.Hk);  // consecutive value heads share a key head
  const float* prev = a.state_in + (b * d.Hv + j) * dk * dv;
  float* __restrict S = a.state + (b * d.Hv + j) * dk * dv;
  float* __restrict mem = work;
  float* __restrict o = work + dv;
  for (int64_t t = 0; t < d.T; ++t) {
    const int64_t bt = b * d.T + t;
    const float* __restrict q = mixed + bt * C + h * dk;
    const float* __restrict k = mixed + bt * C + (d.Hk + h) * dk;
    const float* __restrict v = mixed + bt * C + 2 * d.Hk * dk + j * dv;
    const float g = decay[bt * d.Hv + j];
    const float bj = beta[bt * d.Hv + j];
    for (int64_t c = 0; c < dv; ++c) mem[c] = 0.0f;
    for (int64_t i = 0; i < dk; ++i) {
      // The first token reads the state it was given, the others the one it updates.
      const float* __restrict from = (t == 0 ? prev : S) + i * dv;
      float* __restrict s = S + i * dv;
      const float ki = k[i];
      for (int64_t c = 0; c < dv; ++c) {
        s[c] = from[c] * g;
        mem[c] += ki * s[c];
      }
    }
    for (int64_t c = 0; c < dv; ++c) mem[c] = (v[c] - mem[c]) * bj;  // the delta
    for (int64_t c = 0; c < dv; ++c) o[c] = 0.0f;
    for (int64_t i = 0; i < dk; ++i) {
      float* __restrict s = S + i * dv;
      const float ki = k[i], qi = q[i];
      for (int64_t c = 0; c < dv; ++c) {
        s[c] += ki * mem[c];
        o[c] += qi * s[c];
      }
    }
    float ms = 0.0f;
    for (int64_t c = 0; c < dv; ++c) ms += o[c] * o[c];
    const float r = 1.0f / std::sqrt(ms / static_cast<float>(dv) + a.eps);
    const float* __restrict z = a.z + bt * d.Hv * dv + j * dv;
    float* __restrict y = a.y + bt * d.Hv * dv + j * dv;
    for (int64_t c = 0; c < dv; ++c) {
      y[c] = o[c] * r * a.norm_weight[c] * (z[c] * sigmoid(z[c]));
    }
  }
}

// The new convolution window of sequence b: the last K − 1 rows of [past; now].
void conv_window(const DeltaArgs& a, int64_t b) {
  const DeltaShape& d = a.shape;
  const int64_t C = d.channels();
  const int64_t window = d.K - 1;
  for (int64_t r = 0; r < window; ++r) {
    const int64_t src = d.T + r;  // row of [past; now]
    const float* in = src < window ? a.conv_state_in + (b * window + src) * C
                                   : a.qkv + (b * d.T + src - window) * C;
    float* out = a.conv_state_out + (b * window + r) * C;
    for (int64_t c = 0; c < C; ++c) out[c] = in[c];
  }
}

void token_inputs_portable(const DeltaArgs& a, int64_t b, int64_t t, float* mixed, float* beta,
                           float* decay) {
  token_inputs(a, b, t, mixed, beta, decay);
}
void head_recurrence_portable(const DeltaArgs& a, const float* mixed, const float* beta,
                              const float* decay, int64_t b, int64_t j, float* work) {
  head_recurrence(a, mixed, beta, decay, b, j, work);
}

#if defined(MLXNK_X86)
__attribute__((target("avx2,fma"))) void token_inputs_avx2(const DeltaArgs& a, int64_t b,
                                                            int64_t t, float* mixed,
                                                            float* beta, float* decay) {
  token_inputs(a, b, t, mixed, beta, decay);
}
__attribute__((target("avx2,fma"))) void head_recurrence_avx2(const DeltaArgs& a,
                                                               const float* mixed,
                                                               const float* beta,
                                                               const float* decay, int64_t b,
                                                               int64_t j, float* work) {
  head_recurrence(a, mixed, beta, decay, b, j, work);
}
#endif

}  // namespace

void gated_delta(Isa isa, const DeltaArgs& a) {
  const DeltaShape& d = a.shape;
  const int64_t C = d.channels();
  const int64_t tokens = d.B * d.T;
  if (tokens == 0) {
    for (int64_t b = 0; b < d.B; ++b) conv_window(a, b);
    std::copy(a.state_in, a.state_in + d.B * d.Hv * d.dk * d.dv, a.state);
    return;
  }
  auto token_fn = token_inputs_portable;
  auto head_fn = head_recurrence_portable;
#if defined(MLXNK_X86)
  if (isa == Isa::Avx2 || isa == Isa::Avx512) {
    token_fn = token_inputs_avx2;
    head_fn = head_recurrence_avx2;
  }
#else
  (void)isa;
#endif
  std::vector<float> mixed(static_cast<size_t>(tokens * C));
  std::vector<float> beta(static_cast<size_t>(tokens * d.Hv)), decay(beta.size());
  // A token's phase 1 is ~C·K multiply-adds: batch tokens so a task is worth a wake-up.
  const int64_t per_task = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, C * d.K));
  const int64_t token_tasks = (tokens + per_task - 1) / per_task;
  parallel_for(token_tasks, [&](int64_t task) {
    const int64_t end = std::min(tokens, (task + 1) * per_task);
    for (int64_t bt = task * per_task; bt < end; ++bt) {
      token_fn(a, bt / d.T, bt % d.T, mixed.data() + bt * C, beta.data() + bt * d.Hv,
               decay.data() + bt * d.Hv);
    }
  });
  parallel_for(d.B * d.Hv, [&](int64_t i) {
    std::vector<float> work(static_cast<size_t>(2 * d.dv));
    head_fn(a, mixed.data(), beta.data(), decay.data(), i / d.Hv, i % d.Hv, work.data());
  });
  for (int64_t b = 0; b < d.B; ++b) conv_window(a, b);
}

}  // namespace mlxnk
