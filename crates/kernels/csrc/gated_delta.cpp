// The Gated DeltaNet mixing of Qwen3.5 in float32: everything between a layer's four input
// projections and its out_proj, per token
//
//   conv:  x_t = silu(Σ_tap w[c, tap] · padded[t + tap, c])  (causal depthwise, K taps)
//   q, k:  l2-normalised per key head (ε 1e-6 inside the root), q also scaled by dk^-½
//   gates: β = sigmoid(b),  decay = exp(−exp(A_log) · softplus(a + dt_bias))
//   rule:  S ← decay·S;  S ← S + k (β (v − Sᵀk))ᵀ;  o = Sᵀq     (per value head, S [dk, dv])
//   out:   rms_norm(o) · w · silu(z)                            (per value head)
//
// as the engine's MLX ops compute it (crates/core/src/gated_delta.rs), to float32 rounding.
// Three phases: the convolution, norms and gates of every token (tokens spread over the pool);
// the rule over all tokens for strips of value columns of every head (strips spread over the
// pool; a strip of the state stays in L1 for the whole chunk); the output norm and
// gate of every token.
//
// The loops are written once and compiled for the baseline target, AVX2+FMA and, for the
// rule, AVX-512 (chosen at run time like the matmul kernels); the compiler vectorises the
// inner loops over channels and value columns, and the exponentials go through vexp.

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
MLXNK_INLINE void token_inputs(Isa isa, const DeltaArgs& a, int64_t b, int64_t t,
                               float* __restrict mixed, float* __restrict beta,
                               float* __restrict decay) {
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
  // silu, the exponentials a vector at a time.
  thread_local std::vector<float> e;
  e.resize(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) e[c] = -mixed[c];
  vexp(isa, e.data(), e.data(), C);
  for (int64_t c = 0; c < C; ++c) mixed[c] = mixed[c] * (1.0f / (1.0f + e[c]));
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

// Value columns per phase-2 task. Over a chunk of tokens a strip of 64 stays in L1 for all of
// them; for one or two tokens (decode) whole rows of 128 read faster, the state then being
// streamed from memory once in contiguous rows (gated_delta_bench, 0.8B shapes: T = 1 in
// 0.12-0.15 ms per layer against 0.25-0.27 with strips of 32 and 0.18-0.22 with 64).
constexpr int64_t kChunkStrip = 64;
constexpr int64_t kDecodeStrip = 128;
constexpr int64_t kDecodeTokens = 2;

// One token of the rule on a strip of S value columns: rows of the state read at src
// (stride ss) and written at dst (stride ds; IN_PLACE: read at dst, src unused), o [S]
// out. The product Sᵀk of the decayed state is taken as decay · (Sᵀk) and the update as
// decay·S + k δᵀ, so each element is stored once; even and odd rows go into separate sums (two
// dependency chains per column), each a fixed array the compiler keeps in registers.
template <int64_t S, bool IN_PLACE>
MLXNK_INLINE void strip_token(const float* __restrict src, int64_t ss, float* __restrict dst,
                              int64_t ds, const float* __restrict q, const float* __restrict k,
                              const float* __restrict v, int64_t w, float g, float bj,
                              int64_t dk, float* __restrict o) {
  float m0[S] = {}, m1[S] = {};
  for (int64_t i = 0; i < dk; i += 2) {
    const float* s0 = (IN_PLACE ? dst : src) + i * (IN_PLACE ? ds : ss);
    const float k0 = k[i];
    for (int64_t c = 0; c < S; ++c) m0[c] += k0 * s0[c];
    if (i + 1 == dk) break;
    const float* s1 = s0 + (IN_PLACE ? ds : ss);
    const float k1 = k[i + 1];
    for (int64_t c = 0; c < S; ++c) m1[c] += k1 * s1[c];
  }
  float delta[S];
  for (int64_t c = 0; c < S; ++c) {
    delta[c] = ((c < w ? v[c] : 0.0f) - g * (m0[c] + m1[c])) * bj;
  }
  float o0[S] = {}, o1[S] = {};
  for (int64_t i = 0; i < dk; i += 2) {
    float* u0 = dst + i * ds;
    const float* s0 = IN_PLACE ? u0 : src + i * ss;
    const float k0 = k[i], q0 = q[i];
    for (int64_t c = 0; c < S; ++c) {
      u0[c] = s0[c] * g + k0 * delta[c];
      o0[c] += q0 * u0[c];
    }
    if (i + 1 == dk) break;
    float* u1 = u0 + ds;
    const float* s1 = IN_PLACE ? u1 : s0 + ss;
    const float k1 = k[i + 1], q1 = q[i + 1];
    for (int64_t c = 0; c < S; ++c) {
      u1[c] = s1[c] * g + k1 * delta[c];
      o1[c] += q1 * u1[c];
    }
  }
  for (int64_t c = 0; c < S; ++c) o[c] = o0[c] + o1[c];
}

// Phase 2 for value columns [c0, c0 + S) of value head j of sequence b, over all T tokens.
// Each column of S evolves on its own (the rule mixes S's rows through k, never its columns),
// so the strip's dk × S block is read once, kept in L1 as `st` for the whole chunk and
// written once: the first token reads it from state_in, the last writes it to state. (A strip
// narrower than S, at the end of a row, goes through `st` zero-padded instead.) Leaves the
// raw o in y for phase 3.
template <int64_t S>
MLXNK_INLINE void strip_recurrence(const DeltaArgs& a, const float* mixed, const float* beta,
                                   const float* decay, int64_t b, int64_t j, int64_t c0,
                                   float* st) {
  const DeltaShape& d = a.shape;
  const int64_t C = d.channels();
  const int64_t dk = d.dk, dv = d.dv;
  const int64_t w = std::min(S, dv - c0);
  const int64_t h = j / (d.Hv / d.Hk);  // consecutive value heads share a key head
  const float* in = a.state_in + (b * d.Hv + j) * dk * dv + c0;
  float* out = a.state + (b * d.Hv + j) * dk * dv + c0;
  const bool full = w == S;
  if (!full) {
    for (int64_t i = 0; i < dk; ++i) {
      for (int64_t c = 0; c < S; ++c) st[i * S + c] = c < w ? in[i * dv + c] : 0.0f;
    }
  }
  for (int64_t t = 0; t < d.T; ++t) {
    const int64_t bt = b * d.T + t;
    const float* q = mixed + bt * C + h * dk;
    const float* k = mixed + bt * C + (d.Hk + h) * dk;
    const float* v = mixed + bt * C + 2 * d.Hk * dk + j * dv + c0;
    const float g = decay[bt * d.Hv + j];
    const float bj = beta[bt * d.Hv + j];
    float o[S];
    const bool first = full && t == 0, last = full && t == d.T - 1;
    if (first || last) {
      strip_token<S, false>(first ? in : st, first ? dv : S, last ? out : st,
                         last ? dv : S, q, k, v, w, g, bj, dk, o);
    } else {
      strip_token<S, true>(nullptr, 0, st, S, q, k, v, w, g, bj, dk, o);
    }
    float* y = a.y + bt * d.Hv * dv + j * dv + c0;
    for (int64_t c = 0; c < w; ++c) y[c] = o[c];
  }
  if (!full) {
    for (int64_t i = 0; i < dk; ++i) {
      for (int64_t c = 0; c < w; ++c) out[i * dv + c] = st[i * S + c];
    }
  }
}

// Phase 3 for token bt and value head j: y ← rms_norm(o) · w · silu(z), o being phase 2's y.
MLXNK_INLINE void gate_output(Isa isa, const DeltaArgs& a, int64_t bt, int64_t j) {
  const DeltaShape& d = a.shape;
  const int64_t dv = d.dv;
  float* __restrict y = a.y + bt * d.Hv * dv + j * dv;
  const float* __restrict z = a.z + bt * d.Hv * dv + j * dv;
  thread_local std::vector<float> e;
  e.resize(static_cast<size_t>(dv));
  for (int64_t c = 0; c < dv; ++c) e[c] = -z[c];
  vexp(isa, e.data(), e.data(), dv);
  float ms = 0.0f;
  for (int64_t c = 0; c < dv; ++c) ms += y[c] * y[c];
  const float r = 1.0f / std::sqrt(ms / static_cast<float>(dv) + a.eps);
  for (int64_t c = 0; c < dv; ++c) {
    y[c] = y[c] * r * a.norm_weight[c] * (z[c] * (1.0f / (1.0f + e[c])));
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
  token_inputs(Isa::Portable, a, b, t, mixed, beta, decay);
}
// strip_recurrence with strips of kDecodeStrip (wide) or kChunkStrip columns.
MLXNK_INLINE void strip_recurrence_of(bool wide, const DeltaArgs& a, const float* mixed,
                                      const float* beta, const float* decay, int64_t b,
                                      int64_t j, int64_t c0, float* st) {
  if (wide) {
    strip_recurrence<kDecodeStrip>(a, mixed, beta, decay, b, j, c0, st);
  } else {
    strip_recurrence<kChunkStrip>(a, mixed, beta, decay, b, j, c0, st);
  }
}

void strip_recurrence_portable(const DeltaArgs& a, const float* mixed, const float* beta,
                               const float* decay, int64_t b, int64_t j, int64_t c0, float* st,
                               bool wide) {
  strip_recurrence_of(wide, a, mixed, beta, decay, b, j, c0, st);
}
void gate_output_portable(const DeltaArgs& a, int64_t bt, int64_t j) {
  gate_output(Isa::Portable, a, bt, j);
}

#if defined(MLXNK_X86)
__attribute__((target("avx2,fma"))) void token_inputs_avx2(const DeltaArgs& a, int64_t b,
                                                            int64_t t, float* mixed,
                                                            float* beta, float* decay) {
  token_inputs(Isa::Avx2, a, b, t, mixed, beta, decay);
}
__attribute__((target("avx2,fma"))) void strip_recurrence_avx2(
    const DeltaArgs& a, const float* mixed, const float* beta, const float* decay, int64_t b,
    int64_t j, int64_t c0, float* st, bool wide) {
  strip_recurrence_of(wide, a, mixed, beta, decay, b, j, c0, st);
}
__attribute__((target("avx512f,avx2,fma,prefer-vector-width=512"))) void strip_recurrence_avx512(
    const DeltaArgs& a, const float* mixed, const float* beta, const float* decay, int64_t b,
    int64_t j, int64_t c0, float* st, bool wide) {
  strip_recurrence_of(wide, a, mixed, beta, decay, b, j, c0, st);
}
__attribute__((target("avx2,fma"))) void gate_output_avx2(const DeltaArgs& a, int64_t bt,
                                                          int64_t j) {
  gate_output(Isa::Avx2, a, bt, j);
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
  auto strip_fn = strip_recurrence_portable;
  auto gate_fn = gate_output_portable;
#if defined(MLXNK_X86)
  if (isa == Isa::Avx2 || isa == Isa::Avx512) {
    token_fn = token_inputs_avx2;
    strip_fn = isa == Isa::Avx512 ? strip_recurrence_avx512 : strip_recurrence_avx2;
    gate_fn = gate_output_avx2;
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
  const bool wide = d.T <= kDecodeTokens;
  const int64_t width = wide ? kDecodeStrip : kChunkStrip;
  const int64_t strips = (d.dv + width - 1) / width;
  parallel_for(d.B * d.Hv * strips, [&](int64_t i) {
    thread_local std::vector<float> st;
    st.resize(static_cast<size_t>(d.dk * width));
    const int64_t head = i / strips;
    strip_fn(a, mixed.data(), beta.data(), decay.data(), head / d.Hv, head % d.Hv,
             (i % strips) * width, st.data(), wide);
  });
  const int64_t per_gate = std::max<int64_t>(1, 64 / d.Hv);  // tokens per phase-3 task
  parallel_for((tokens + per_gate - 1) / per_gate, [&](int64_t task) {
    const int64_t end = std::min(tokens, (task + 1) * per_gate);
    for (int64_t bt = task * per_gate; bt < end; ++bt) {
      for (int64_t j = 0; j < d.Hv; ++j) gate_fn(a, bt, j);
    }
  });
  for (int64_t b = 0; b < d.B; ++b) conv_window(a, b);
}

}  // namespace mlxnk
