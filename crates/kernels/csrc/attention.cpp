// Scaled dot-product attention in float32 for the CPU: per query row, the scores against
// every key it may see (all of them, or causally the ones up to its own position when the
// queries are the last T of the L keys), a softmax and the weighted sum of the values, with
// grouped key/value heads (query head h reads key head h / (Hq / Hkv)). The order follows
// MLX's own CPU path: q scaled first, scores, max-shifted exponentials, then the sum.
// Query rows are spread over the pool.

#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define MLXNK_X86 1
#endif

namespace mlxnk {
namespace {

inline __attribute__((always_inline)) void attend_row(Isa isa, const AttentionArgs& a,
                                                      int64_t row, float* __restrict scores,
                                                      float* __restrict qs) {
  const int64_t t = row % a.T;
  const int64_t bh = row / a.T;
  const int64_t h = bh % a.Hq, b = bh / a.Hq;
  const int64_t kh = h / (a.Hq / a.Hkv);
  const float* __restrict q = a.q + row * a.D;
  const float* k = a.k + (b * a.Hkv + kh) * a.L * a.D;
  const float* v = a.v + (b * a.Hkv + kh) * a.L * a.Dv;
  float* __restrict o = a.o + row * a.Dv;
  const int64_t seen = a.causal ? std::min(a.L, a.L - a.T + t + 1) : a.L;
  for (int64_t i = 0; i < a.D; ++i) qs[i] = q[i] * a.scale;
  float top = -INFINITY;
  for (int64_t j = 0; j < seen; ++j) {
    const float* __restrict kj = k + j * a.D;
    float s = 0.0f;
    for (int64_t i = 0; i < a.D; ++i) s += qs[i] * kj[i];
    scores[j] = s;
    top = std::max(top, s);
  }
  for (int64_t j = 0; j < seen; ++j) scores[j] -= top;
  vexp(isa, scores, scores, seen);
  float sum = 0.0f;
  for (int64_t j = 0; j < seen; ++j) sum += scores[j];
  for (int64_t c = 0; c < a.Dv; ++c) o[c] = 0.0f;
  for (int64_t j = 0; j < seen; ++j) {
    const float* __restrict vj = v + j * a.Dv;
    const float p = scores[j];
    for (int64_t c = 0; c < a.Dv; ++c) o[c] += p * vj[c];
  }
  const float inv = 1.0f / sum;
  for (int64_t c = 0; c < a.Dv; ++c) o[c] *= inv;
}

void attend_rows_portable(const AttentionArgs& a, int64_t r0, int64_t r1, float* scores,
                          float* qs) {
  for (int64_t r = r0; r < r1; ++r) attend_row(Isa::Portable, a, r, scores, qs);
}

#if defined(MLXNK_X86)
__attribute__((target("avx2,fma"))) void attend_rows_avx2(const AttentionArgs& a, int64_t r0,
                                                           int64_t r1, float* scores,
                                                           float* qs) {
  for (int64_t r = r0; r < r1; ++r) attend_row(Isa::Avx2, a, r, scores, qs);
}
#endif

}  // namespace

void attention(Isa isa, const AttentionArgs& a) {
  const int64_t rows = a.B * a.Hq * a.T;
  if (rows == 0) return;
  auto fn = attend_rows_portable;
#if defined(MLXNK_X86)
  if (isa == Isa::Avx2 || isa == Isa::Avx512) fn = attend_rows_avx2;
#else
  (void)isa;
#endif
  // About 64k multiply-adds per task.
  const int64_t per_row = std::max<int64_t>(1, a.L * (a.D + a.Dv));
  const int64_t per_task = std::max<int64_t>(1, (int64_t{1} << 16) / per_row);
  const int64_t tasks = (rows + per_task - 1) / per_task;
  parallel_for(tasks, [&](int64_t task) {
    std::vector<float> scores(static_cast<size_t>(a.L)), qs(static_cast<size_t>(a.D));
    fn(a, task * per_task, std::min(rows, (task + 1) * per_task), scores.data(), qs.data());
  });
}

}  // namespace mlxnk
