// Affine quantized matmul kernels: y = x · Wᵀ with W in MLX's packed affine format.
//
// Layout (MLX): row n of W holds K codes, code k in bits [k·b, (k+1)·b) of the row's
// little-endian bit stream, so every 8 consecutive codes fill exactly b bytes; a group of
// `group_size` codes shares one scale s and one bias b, W[n, k] = s · q + b.
//
// Three shapes of work:
// * one activation row (decode): weight rows one after another, one memory stream per thread
//   with the next rows prefetched, s · Σ q·x + b · Σ x per group; 2/4/8-bit codes are read
//   as 32-bit words and split with masks (or, when K is not a whole number of words per
//   vector, as bytes) against activations permuted to match, 3/5/6-bit ones decoded in place;
// * a few rows (M ≤ 6): the codes of a few weight rows at a time are decoded in registers and
//   multiplied into up to 4 activation rows;
// * many rows (prefill): a tile of 16 weight rows × a K chunk is dequantized once into a small
//   k-major buffer, then a register-blocked microkernel (6 × 16, or 12 × 16 with AVX-512)
//   serves all M rows from it.
// Dense float32/bfloat16/float16 weights take the same shapes (dense_columns).
// Per ISA: AVX2+FMA (x86_64, chosen at run time), AVX-512F on top of it, NEON (aarch64), and a
// portable path.

#include "kernels.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define MLXNK_X86 1
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#define MLXNK_NEON 1
#include <arm_neon.h>
#endif

namespace mlxnk {

// ---------------------------------------------------------------------------------------------
// Half-precision conversions.

float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    // Zero or subnormal: man · 2^-24, exact in float.
    float f = static_cast<float>(man) * 5.9604644775390625e-8f;
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  }
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {
    return sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u);
  }
  if (ax >= 0x477ff000u) {  // rounds to 65536 or more
    return sign | 0x7c00u;
  }
  if (ax < 0x38800000u) {  // below 2^-14: a subnormal half (or zero)
    float a;
    std::memcpy(&a, &ax, 4);
    return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
  }
  ax += 0xfffu + ((ax >> 13) & 1u);
  ax -= 112u << 23;
  return sign | static_cast<uint16_t>(ax >> 13);
}

namespace {

// Rows [row0, row0 + nrows) of a [*, G] scale/bias table as float32: a pointer into the table
// itself when it is float32, else converted into `scratch` (nrows · G floats).
const float* rows_f32(const void* base, FType t, int64_t row0, int64_t nrows, int64_t G,
                      float* scratch) {
  const int64_t first = row0 * G;
  const int64_t count = nrows * G;
  switch (t) {
    case FType::F32:
      return static_cast<const float*>(base) + first;
    case FType::BF16: {
      // bfloat16 is the top half of a float32: a shift the compiler vectorises.
      const uint16_t* p = static_cast<const uint16_t*>(base) + first;
      uint32_t* out = reinterpret_cast<uint32_t*>(scratch);
      for (int64_t i = 0; i < count; ++i) out[i] = static_cast<uint32_t>(p[i]) << 16;
      return scratch;
    }
    case FType::F16: {
      const uint16_t* p = static_cast<const uint16_t*>(base) + first;
      for (int64_t i = 0; i < count; ++i) scratch[i] = f16_to_f32(p[i]);
      return scratch;
    }
  }
  return scratch;
}

// Brings rows [row0, row0 + nrows) of a scale/bias table towards the cache, a batch ahead of
// rows_f32 (a separate, short stream the hardware prefetcher does not pick up in time).
void prefetch_rows(const void* base, FType t, int64_t row0, int64_t nrows, int64_t G,
                   int64_t rows) {
  nrows = std::min(nrows, rows - row0);
  if (nrows <= 0) return;
  const int64_t size = t == FType::F32 ? 4 : 2;
  const char* p = static_cast<const char*>(base) + row0 * G * size;
  for (int64_t at = 0; at < nrows * G * size; at += 64) __builtin_prefetch(p + at);
}

// ---------------------------------------------------------------------------------------------
// Portable path: plain C++ (what the compiler makes of it for the baseline target).

template <int BITS>
void dequant_portable(const uint8_t* p, const float* s, const float* b, int64_t ngroups, int gs,
                      float* out) {
  constexpr uint64_t mask = (1u << BITS) - 1u;
  const int blocks = gs / 8;
  for (int64_t g = 0; g < ngroups; ++g) {
    const float sv = s[g];
    const float bv = b[g];
    for (int j = 0; j < blocks; ++j) {
      uint64_t u = 0;
      for (int i = 0; i < BITS; ++i) u |= static_cast<uint64_t>(p[i]) << (8 * i);
      for (int c = 0; c < 8; ++c) {
        out[c] = sv * static_cast<float>((u >> (c * BITS)) & mask) + bv;
      }
      p += BITS;
      out += 8;
    }
  }
}

float dot_portable(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (int j = 0; i < n; ++i, ++j) acc[j] += a[i] * b[i];  // a dense row's tail
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

template <int BITS>
void columns_portable(const QMatrix& w, const float* x, int64_t ldx, int64_t M, float* y,
                      int64_t ldy, int64_t n0, int64_t n1, const float* /*blocks*/) {
  const int64_t K = w.K;
  const int64_t G = K / w.group_size;
  const int64_t row_bytes = K * BITS / 8;
  std::vector<float> row(static_cast<size_t>(K));
  std::vector<float> sbuf(static_cast<size_t>(G)), bbuf(static_cast<size_t>(G));
  for (int64_t n = n0; n < n1; ++n) {
    const float* s = rows_f32(w.scales, w.scale_type, n, 1, G, sbuf.data());
    const float* b = rows_f32(w.biases, w.bias_type, n, 1, G, bbuf.data());
    dequant_portable<BITS>(w.codes + n * row_bytes, s, b, G, w.group_size, row.data());
    for (int64_t m = 0; m < M; ++m) y[m * ldy + n] = dot_portable(x + m * ldx, row.data(), K);
  }
}

// Row n of a dense matrix as float32 (a pointer into it when it is float32).
const float* dense_row(const DMatrix& w, int64_t n, float* scratch) {
  return rows_f32(w.data, w.type, n, 1, w.K, scratch);
}

void dense_portable(const DMatrix& w, const float* x, int64_t ldx, int64_t M, float* y,
                    int64_t ldy, int64_t n0, int64_t n1) {
  std::vector<float> row(static_cast<size_t>(w.K));
  for (int64_t n = n0; n < n1; ++n) {
    const float* r = dense_row(w, n, row.data());
    for (int64_t m = 0; m < M; ++m) y[m * ldy + n] = dot_portable(x + m * ldx, r, w.K);
  }
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA path (x86_64). Everything here carries the target attribute and is only called
// after the CPU was checked; no lambdas (they would not inherit the attribute).

#if defined(MLXNK_X86)
#define MLXNK_AVX2 __attribute__((target("avx2,fma,f16c")))

// Weight rows per tile and K chunk of the many-row path. KC is a multiple of every group size.
constexpr int64_t kTileRows = 16;
constexpr int64_t kChunk = 256;

// Activation rows up to which the register (matvec) path is used: it decodes the codes once
// per 4 rows, the tile path dequantizes (and transposes) them once for all rows.
constexpr int64_t kMatvecRows = 6;

// For 3/5/6-bit codes: per output lane i (code i of a block of LANES codes, read as LANES
// bytes into every 128-bit part), which bytes hold it (vpshufb control, two bytes per lane
// suffice; a byte past the read is zero) and by how much to shift.
template <int BITS, int LANES = 8>
struct Unpack {
  alignas(64) int8_t shuffle[4 * LANES];
  alignas(64) int32_t shift[LANES];
  constexpr Unpack() : shuffle(), shift() {
    for (int i = 0; i < LANES; ++i) {
      const int bit = i * BITS;
      const int byte0 = bit / 8;
      shuffle[4 * i] = static_cast<int8_t>(byte0);
      shuffle[4 * i + 1] = static_cast<int8_t>(byte0 + 1 < LANES ? byte0 + 1 : -128);
      shuffle[4 * i + 2] = -128;
      shuffle[4 * i + 3] = -128;
      shift[i] = bit % 8;
    }
  }
};
template <int BITS, int LANES = 8>
inline constexpr Unpack<BITS, LANES> kUnpack{};

// Whether reading 8 bytes at the last block of rows ending at `rows_end` may pass `end`
// (only the straddling widths read more than their b bytes per block).
template <int BITS>
inline bool needs_exact_reads(const uint8_t* rows_end, const uint8_t* end) {
  if constexpr (BITS == 3 || BITS == 5 || BITS == 6) {
    return rows_end + (8 - BITS) > end;
  } else {
    return false;
  }
}

// The 8 codes of the block at p as floats.
template <int BITS, bool EXACT>
MLXNK_AVX2 inline __m256 decode8_avx2(const uint8_t* p) {
  constexpr int mask = (1 << BITS) - 1;
  if constexpr (BITS == 8) {
    const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
  } else if constexpr (BITS == 4) {
    uint32_t u;
    std::memcpy(&u, p, 4);
    const __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(u)),
                                        _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(mask)));
  } else if constexpr (BITS == 2) {
    uint16_t u;
    std::memcpy(&u, p, 2);
    const __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(u)),
                                        _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(mask)));
  } else {
    uint64_t u = 0;
    if constexpr (EXACT) {
      std::memcpy(&u, p, BITS);
    } else {
      std::memcpy(&u, p, 8);
    }
    __m256i v = _mm256_set1_epi64x(static_cast<long long>(u));
    v = _mm256_shuffle_epi8(
        v, _mm256_load_si256(reinterpret_cast<const __m256i*>(kUnpack<BITS>.shuffle)));
    v = _mm256_srlv_epi32(
        v, _mm256_load_si256(reinterpret_cast<const __m256i*>(kUnpack<BITS>.shift)));
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(mask)));
  }
}

MLXNK_AVX2 inline float hsum_avx2(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 sh = _mm_movehdup_ps(lo);
  __m128 s = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, s);
  s = _mm_add_ss(s, sh);
  return _mm_cvtss_f32(s);
}

// Matvec block: NR consecutive weight rows (codes at c, row stride rb; scales/biases rows of
// G floats) against MR activation rows x (stride ldx) with their group sums xsum (stride G);
// y[m * ldy + r]. Per group, s · Σ q·x + b · Σ x: the codes are decoded once for all MR rows
// and the affine map is applied once per group.
template <int BITS, int MR, int NR, bool EXACT>
MLXNK_AVX2 void matvec_avx2(const uint8_t* c, int64_t rb, const float* s, const float* b,
                            int64_t G, int gs, const float* x, int64_t ldx, const float* xsum,
                            float* y, int64_t ldy) {
  __m256 tot[MR][NR];
  float bias[MR][NR];
  const uint8_t* wp[NR];
#pragma GCC unroll 4
  for (int r = 0; r < NR; ++r) wp[r] = c + r * rb;
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      tot[m][r] = _mm256_setzero_ps();
      bias[m][r] = 0.0f;
    }
  }
  const int blocks = gs / 8;
  const float* xp = x;
  for (int64_t g = 0; g < G; ++g) {
    __m256 acc[MR][NR];
    {
      __m256 xv[MR];
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m) xv[m] = _mm256_loadu_ps(xp + m * ldx);
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) {
        const __m256 q = decode8_avx2<BITS, EXACT>(wp[r]);
        wp[r] += BITS;
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m) acc[m][r] = _mm256_mul_ps(q, xv[m]);
      }
      xp += 8;
    }
    for (int j = 1; j < blocks; ++j, xp += 8) {
      __m256 xv[MR];
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m) xv[m] = _mm256_loadu_ps(xp + m * ldx);
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) {
        const __m256 q = decode8_avx2<BITS, EXACT>(wp[r]);
        wp[r] += BITS;
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m) acc[m][r] = _mm256_fmadd_ps(q, xv[m], acc[m][r]);
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      const __m256 sv = _mm256_set1_ps(s[r * G + g]);
      const float bv = b[r * G + g];
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m) {
        tot[m][r] = _mm256_fmadd_ps(acc[m][r], sv, tot[m][r]);
        bias[m][r] += bv * xsum[m * G + g];
      }
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) y[m * ldy + r] = hsum_avx2(tot[m][r]) + bias[m][r];
  }
}

// In-register transpose of 8 rows of 8 floats.
MLXNK_AVX2 inline void transpose8_avx2(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]);
  const __m256 t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]);
  const __m256 t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]);
  const __m256 t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]);
  const __m256 t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Dequantizes kc columns (from a group boundary) of nt ≤ 16 weight rows (codes at c, row
// stride rb; scales/biases at the chunk's first group, row stride G) into tile[k][r], k-major
// with ld (16 or 32) floats per k; rows nt..15 are zeros.
template <int BITS, bool EXACT>
MLXNK_AVX2 void dequant_tile_avx2(const uint8_t* c, int64_t rb, const float* s, const float* b,
                                  int64_t G, int64_t nt, int64_t kc, int gs, float* tile,
                                  int64_t ld = kTileRows) {
  for (int64_t r0 = 0; r0 < kTileRows; r0 += 8) {
    for (int64_t j = 0; j < kc; j += 8) {
      const int64_t g = j / gs;
      __m256 v[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        const int64_t r = r0 + i;
        if (r < nt) {
          v[i] = _mm256_fmadd_ps(decode8_avx2<BITS, EXACT>(c + r * rb + j * BITS / 8),
                                 _mm256_set1_ps(s[r * G + g]), _mm256_set1_ps(b[r * G + g]));
        } else {
          v[i] = _mm256_setzero_ps();
        }
      }
      transpose8_avx2(v);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(tile + (j + i) * ld + r0, v[i]);
    }
  }
}

// y[m * ldy + r] (+)= Σ_k x[m * ldx + k] · tile[k][r] for MR rows and the tile's nt ≤ 16
// columns: x values broadcast against 16 weight rows at a time, no horizontal sums.
template <int MR>
MLXNK_AVX2 void micro_avx2(const float* x, int64_t ldx, const float* tile, int64_t kc, float* y,
                           int64_t ldy, int64_t nt, bool first) {
  __m256 acc[MR][2];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    acc[m][0] = _mm256_setzero_ps();
    acc[m][1] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 t0 = _mm256_loadu_ps(tile + k * kTileRows);
    const __m256 t1 = _mm256_loadu_ps(tile + k * kTileRows + 8);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m256 xv = _mm256_broadcast_ss(x + m * ldx + k);
      acc[m][0] = _mm256_fmadd_ps(xv, t0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(xv, t1, acc[m][1]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    float* ym = y + m * ldy;
    if (nt == kTileRows) {
      if (first) {
        _mm256_storeu_ps(ym, acc[m][0]);
        _mm256_storeu_ps(ym + 8, acc[m][1]);
      } else {
        _mm256_storeu_ps(ym, _mm256_add_ps(_mm256_loadu_ps(ym), acc[m][0]));
        _mm256_storeu_ps(ym + 8, _mm256_add_ps(_mm256_loadu_ps(ym + 8), acc[m][1]));
      }
    } else {
      alignas(32) float part[kTileRows];
      _mm256_store_ps(part, acc[m][0]);
      _mm256_store_ps(part + 8, acc[m][1]);
      for (int64_t r = 0; r < nt; ++r) ym[r] = first ? part[r] : ym[r] + part[r];
    }
  }
}

constexpr int kMicroRows = 6;
using MicroFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t,
                         bool);
// [mr - 1]
const MicroFn kMicroAvx2[kMicroRows] = {micro_avx2<1>, micro_avx2<2>, micro_avx2<3>,
                                        micro_avx2<4>, micro_avx2<5>, micro_avx2<6>};

// One activation row against whole weight rows, for the widths whose codes never straddle a
// byte (2, 4, 8 bits): 32 codes at a time are split into four vectors of eight with byte masks
// only (no variable shifts), each masked lane holding code · 2^(BITS·r) for its position r in
// the byte. The activations are permuted once per call to match (and the ones multiplied by
// a shifted code scaled by the exact power of two that undoes the shift), so every product is
// bit for bit the q·x of the plain order. Rows are walked in order, one contiguous stream per
// thread, with the next rows prefetched.
template <int BITS>
constexpr int kLanesPerByte = 8 / BITS;

// xp[32 j + 8 r + i] for block j: the x multiplying lane i of vector r (see split32_avx2).
template <int BITS>
void permute_x(const float* x, int64_t K, float* xp) {
  for (int64_t j = 0; j < K; j += 32) {
    const float* xs = x + j;
    float* out = xp + j;
    if constexpr (BITS == 8) {
      for (int i = 0; i < 32; ++i) out[i] = xs[i];
    } else if constexpr (BITS == 4) {
      // Vectors: low nibbles of bytes 0-7, 8-15, then the high nibbles (16 · code).
      for (int i = 0; i < 8; ++i) {
        out[i] = xs[2 * i];
        out[8 + i] = xs[16 + 2 * i];
        out[16 + i] = xs[2 * i + 1] * 0.0625f;
        out[24 + i] = xs[16 + 2 * i + 1] * 0.0625f;
      }
    } else {
      // 2 bits: vector r holds the codes at bits 2r of bytes 0-7, times 4^r.
      for (int r = 0; r < 4; ++r) {
        const float undo = 1.0f / static_cast<float>(1 << (2 * r));
        for (int i = 0; i < 8; ++i) out[8 * r + i] = xs[4 * i + r] * undo;
      }
    }
  }
}

// The 32 codes at p as four float vectors in permute_x's order.
template <int BITS>
MLXNK_AVX2 inline void split32_avx2(const uint8_t* p, __m256 q[4]) {
  if constexpr (BITS == 8) {
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * r));
      q[r] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
    }
  } else if constexpr (BITS == 4) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i lo = _mm_and_si128(v, _mm_set1_epi8(0x0F));
    const __m128i hi = _mm_and_si128(v, _mm_set1_epi8(static_cast<char>(0xF0)));
    q[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
    q[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(lo, lo)));
    q[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
    q[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(hi, hi)));
  } else {
    const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const __m128i m = _mm_and_si128(v, _mm_set1_epi8(static_cast<char>(3 << (2 * r))));
      q[r] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(m));
    }
  }
}

// How far ahead of the codes being read to prefetch (bytes): a few rows of the small
// matrices, well inside what the hardware keeps in flight.
constexpr int64_t kPrefetchBytes = 2048;

// Weight rows whose scales and biases are converted to float32 (if stored narrower) at a time;
// the callers' scratch holds kTileRows rows of them.
constexpr int64_t kRowBatch = kTileRows;

// A single-row stream's batch: the count rows from `first` (at most kRowBatch, not past `end`)
// with their scales and biases as float32 (rows_f32), the next batch's prefetched.
struct RowBatch {
  int64_t count;
  const float* scales;
  const float* biases;
};

RowBatch row_batch(const QMatrix& w, int64_t first, int64_t end, float* sbuf, float* bbuf) {
  const int64_t G = w.K / w.group_size;
  const int64_t count = std::min(kRowBatch, end - first);
  prefetch_rows(w.scales, w.scale_type, first + count, kRowBatch, G, w.N);
  prefetch_rows(w.biases, w.bias_type, first + count, kRowBatch, G, w.N);
  return {count, rows_f32(w.scales, w.scale_type, first, count, G, sbuf),
          rows_f32(w.biases, w.bias_type, first, count, G, bbuf)};
}

template <int BITS>
MLXNK_AVX2 void row_stream_avx2(const QMatrix& w, const float* xp, const float* xsum, float* y,
                                int64_t n0, int64_t n1, float* sbuf, float* bbuf) {
  const int64_t K = w.K;
  const int gs = w.group_size;
  const int64_t G = K / gs;
  const int64_t rb = K * BITS / 8;
  const int blocks = gs / 32;
  for (int64_t nb = n0; nb < n1; nb += kRowBatch) {
    const RowBatch batch = row_batch(w, nb, n1, sbuf, bbuf);
    const int64_t nr = batch.count;
    const float* sc = batch.scales;
    const float* bi = batch.biases;
    for (int64_t r = 0; r < nr; ++r) {
      const uint8_t* c = w.codes + (nb + r) * rb;
      const float* s = sc + r * G;
      const float* b = bi + r * G;
      __m256 tot = _mm256_setzero_ps();
      float bias = 0.0f;
      const float* x = xp;
      for (int64_t g = 0; g < G; ++g) {
        _mm_prefetch(reinterpret_cast<const char*>(c) + kPrefetchBytes, _MM_HINT_T0);
        __m256 acc[4];
        __m256 q[4];
        split32_avx2<BITS>(c, q);
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) acc[v] = _mm256_mul_ps(q[v], _mm256_loadu_ps(x + 8 * v));
        c += 4 * BITS;
        x += 32;
        for (int j = 1; j < blocks; ++j, c += 4 * BITS, x += 32) {
          split32_avx2<BITS>(c, q);
#pragma GCC unroll 4
          for (int v = 0; v < 4; ++v) {
            acc[v] = _mm256_fmadd_ps(q[v], _mm256_loadu_ps(x + 8 * v), acc[v]);
          }
        }
        const __m256 sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]),
                                         _mm256_add_ps(acc[2], acc[3]));
        tot = _mm256_fmadd_ps(sum, _mm256_set1_ps(s[g]), tot);
        bias += b[g] * xsum[g];
      }
      y[nb + r] = hsum_avx2(tot) + bias;
    }
  }
}

// The single-row stream read as 32-bit words, for 2/4/8 bits when K is a whole number of
// blocks: lane i of a vector is word i of a block, and code position j of every lane is taken
// with one AND of the mask shifted to j (so the lane holds code · 2^(BITS·j), which is exact
// in float; the top position with a shift instead, to stay within int32). Each code then costs
// one AND, one convert and one FMA, a third fewer operations than widening bytes, and the
// activations are permuted once per call to match (permute_words) and pre-scaled by the
// power of two that undoes each position's shift, so every product is still exactly q·x.
template <int BITS>
constexpr int kCodesPerWord = 32 / BITS;

// xp[W b + LANES j + i] = x[W b + CPW i + j] · 2^-(BITS j) for block b of W = LANES · CPW codes,
// then the accumulators' starting values: xp[K + 2 LANES b + LANES p + i] = −mid · Σ x over the
// positions j ≡ p (mod 2) of lane i, mid = 2^(BITS−1). Starting there makes each sum run over
// q − mid instead of q: its partial sums, and so its rounding, stay at the size of the result
// rather than of mid · Σ x (the bias term adds mid · s back).
template <int BITS, int LANES>
void permute_words(const float* x, int64_t K, float* xp) {
  constexpr int CPW = kCodesPerWord<BITS>;
  constexpr int64_t W = LANES * CPW;
  const float mid = static_cast<float>(1 << (BITS - 1));
  float* centre = xp + K;
  for (int64_t blk = 0; blk < K; blk += W) {
    for (int j = 0; j < CPW; ++j) {
      const float undo = j == CPW - 1 ? 1.0f : 1.0f / static_cast<float>(1u << (BITS * j));
      for (int i = 0; i < LANES; ++i) xp[blk + LANES * j + i] = x[blk + CPW * i + j] * undo;
    }
    float* c = centre + 2 * LANES * (blk / W);
    for (int p = 0; p < 2; ++p) {
      for (int i = 0; i < LANES; ++i) {
        float t = 0.0f;
        for (int j = p; j < CPW; j += 2) t += x[blk + CPW * i + j];
        c[LANES * p + i] = -mid * t;
      }
    }
  }
}

// Σ_g (b[g] + mid · s[g]) · xsum[g]: a row's bias term when the codes were taken as q − mid.
MLXNK_AVX2 inline float bias_dot_avx2(const float* s, const float* b, float mid,
                                      const float* xsum, int64_t G) {
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= G; g += 8) {
    const __m256 bias =
        _mm256_fmadd_ps(_mm256_set1_ps(mid), _mm256_loadu_ps(s + g), _mm256_loadu_ps(b + g));
    acc = _mm256_fmadd_ps(bias, _mm256_loadu_ps(xsum + g), acc);
  }
  float t = hsum_avx2(acc);
  for (; g < G; ++g) t += (b[g] + mid * s[g]) * xsum[g];
  return t;
}

// Lane i of a block's vector belongs to group (CPW · i) / gs of the block's first group; the
// groups of one block (when a group is shorter than a block) as a lane index.
template <int BITS, int LANES>
std::array<int32_t, LANES> lane_groups(int gs) {
  std::array<int32_t, LANES> idx{};
  for (int i = 0; i < LANES; ++i) idx[i] = kCodesPerWord<BITS> * i / gs;
  return idx;
}

template <int BITS>
MLXNK_AVX2 void word_stream_avx2(const QMatrix& w, const float* xp, const float* xsum, float* y,
                                 int64_t n0, int64_t n1, float* sbuf, float* bbuf) {
  constexpr int CPW = kCodesPerWord<BITS>;
  constexpr int64_t W = 8 * CPW;
  const int64_t K = w.K;
  const int gs = w.group_size;
  const int64_t G = K / gs;
  const int64_t rb = K * BITS / 8;
  const int64_t per_block = gs < W ? W / gs : 0;  // groups in a block, or 0: one group
  const float* centre = xp + K;
  const auto groups = lane_groups<BITS, 8>(gs);
  const __m256i lane_group = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(groups.data()));
  const __m256i first_groups = _mm256_cmpgt_epi32(
      _mm256_set1_epi32(static_cast<int>(per_block)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256i low = _mm256_set1_epi32((1 << BITS) - 1);
  for (int64_t nb = n0; nb < n1; nb += kRowBatch) {
    const RowBatch batch = row_batch(w, nb, n1, sbuf, bbuf);
    const int64_t nr = batch.count;
    const float* sc = batch.scales;
    const float* bi = batch.biases;
    for (int64_t r = 0; r < nr; ++r) {
      const uint8_t* c = w.codes + (nb + r) * rb;
      const float* s = sc + r * G;
      __m256 tot = _mm256_setzero_ps();
      const float* x = xp;
      for (int64_t k = 0; k < K; k += W, c += 32, x += W) {
        _mm_prefetch(reinterpret_cast<const char*>(c) + kPrefetchBytes, _MM_HINT_T0);
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c));
        __m256 acc[2] = {_mm256_loadu_ps(centre + 2 * 8 * (k / W)),
                         _mm256_loadu_ps(centre + 2 * 8 * (k / W) + 8)};
#pragma GCC unroll 16
        for (int j = 0; j < CPW; ++j) {
          const __m256i q = j == CPW - 1
                                ? _mm256_srli_epi32(v, BITS * j)
                                : _mm256_and_si256(v, _mm256_slli_epi32(low, BITS * j));
          acc[j & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), _mm256_loadu_ps(x + 8 * j),
                                       acc[j & 1]);
        }
        const float* sk = s + k / gs;
        const __m256 scale =
            per_block == 0 ? _mm256_broadcast_ss(sk)
                           : _mm256_permutevar8x32_ps(_mm256_maskload_ps(sk, first_groups),
                                                      lane_group);
        tot = _mm256_fmadd_ps(_mm256_add_ps(acc[0], acc[1]), scale, tot);
      }
      y[nb + r] = hsum_avx2(tot) + bias_dot_avx2(s, bi + r * G, 1 << (BITS - 1), xsum, G);
    }
  }
}

// The single-row stream for the widths whose codes straddle bytes (3, 5, 6 bits): eight codes
// at a time through decode8_avx2 (natural order, so x as it is), four accumulators, rows in
// order with the next ones prefetched; the last rows of the buffer read exactly their bytes.
template <int BITS, bool EXACT>
MLXNK_AVX2 void straddle_row_avx2(const uint8_t* c, const float* s, const float* b, int64_t G,
                                  int gs, const float* x, const float* xsum, float* y) {
  __m256 tot = _mm256_setzero_ps();
  float bias = 0.0f;
  const int quads = gs / 32;
  for (int64_t g = 0; g < G; ++g) {
    _mm_prefetch(reinterpret_cast<const char*>(c) + kPrefetchBytes, _MM_HINT_T0);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (int j = 0; j < quads; ++j, c += 4 * BITS, x += 32) {
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        acc[v] = _mm256_fmadd_ps(decode8_avx2<BITS, EXACT>(c + v * BITS),
                                 _mm256_loadu_ps(x + 8 * v), acc[v]);
      }
    }
    const __m256 sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    tot = _mm256_fmadd_ps(sum, _mm256_set1_ps(s[g]), tot);
    bias += b[g] * xsum[g];
  }
  *y = hsum_avx2(tot) + bias;
}

template <int BITS>
void straddle_stream_avx2(const QMatrix& w, const float* x, const float* xsum, float* y,
                          int64_t n0, int64_t n1, float* sbuf, float* bbuf) {
  const int64_t K = w.K;
  const int gs = w.group_size;
  const int64_t G = K / gs;
  const int64_t rb = K * BITS / 8;
  for (int64_t nb = n0; nb < n1; nb += kRowBatch) {
    const RowBatch batch = row_batch(w, nb, n1, sbuf, bbuf);
    const int64_t nr = batch.count;
    const float* sc = batch.scales;
    const float* bi = batch.biases;
    for (int64_t r = 0; r < nr; ++r) {
      const uint8_t* c = w.codes + (nb + r) * rb;
      if (needs_exact_reads<BITS>(c + rb, w.codes_end)) {
        straddle_row_avx2<BITS, true>(c, sc + r * G, bi + r * G, G, gs, x, xsum, y + nb + r);
      } else {
        straddle_row_avx2<BITS, false>(c, sc + r * G, bi + r * G, G, gs, x, xsum, y + nb + r);
      }
    }
  }
}

// The single-row stream for 3 bits as 32-bit words too: a block of 64 codes (24 bytes) is
// spread with one cross-lane dword permute and one byte shuffle into eight words of three
// bytes, word ℓ holding codes 8ℓ … 8ℓ + 7 (code j at bit 3j); then, as in word_stream_avx2,
// one AND, one convert and one FMA per code against activations permuted and pre-scaled to
// match (permute_gathered), and sums that start at −mid · Σ x. (The same scheme for 5 and
// 6 bits, four codes per word, measured slower than the byte decoder below: a 32-code block
// leaves too little work per shuffle.)
struct Gathered3 {
  static constexpr int kPerWord = 8;
  static constexpr int64_t kBlock = 64;  // codes
  static constexpr int64_t kBytes = 24;
  static constexpr int64_t kRead = 32;  // bytes one load reads
  static constexpr int kHighHalf = 12;  // first byte of the words shuffled into the high half
};

template <int LANES>
void permute_gathered(const float* x, int64_t K, float* xp) {
  using B = Gathered3;
  const float mid = 4.0f;
  float* centre = xp + K;
  for (int64_t blk = 0; blk < K; blk += B::kBlock) {
    float* c = centre + 2 * LANES * (blk / B::kBlock);
    for (int l = 0; l < LANES; ++l) {
      float sums[2] = {0.0f, 0.0f};
      for (int j = 0; j < B::kPerWord; ++j) {
        const float v = x[blk + B::kPerWord * l + j];
        xp[blk + LANES * j + l] = v / static_cast<float>(1u << (3 * j));
        sums[j & 1] += v;
      }
      c[l] = -mid * sums[0];
      c[LANES + l] = -mid * sums[1];
    }
  }
}

MLXNK_AVX2 void gathered_stream_avx2(const QMatrix& w, const float* xp, const float* xsum,
                                     const float* x, float* y, int64_t n0, int64_t n1,
                                     float* sbuf, float* bbuf) {
  using B = Gathered3;
  constexpr int BITS = 3;
  constexpr int CPW = B::kPerWord;
  const int64_t K = w.K;
  const int gs = w.group_size;
  const int64_t G = K / gs;
  const int64_t rb = K * BITS / 8;
  const int64_t per_block = gs < B::kBlock ? B::kBlock / gs : 0;
  const float* centre = xp + K;
  alignas(32) int8_t control[32];
  alignas(32) int32_t words[8], masks[CPW][8], groups[8];
  for (int l = 0; l < 8; ++l) {
    const int base = l < 4 ? 0 : B::kHighHalf;  // of the 16 bytes in word l's half
    for (int b = 0; b < 4; ++b) {
      control[4 * l + b] = b < 3 ? static_cast<int8_t>(3 * l + b - base) : int8_t{-128};
    }
    words[l] = base / 4 + l % 4;
    for (int j = 0; j < CPW; ++j) masks[j][l] = ((1 << BITS) - 1) << (BITS * j);
    groups[l] = static_cast<int32_t>(CPW * l / gs);
  }
  const __m256i shuffle = _mm256_load_si256(reinterpret_cast<const __m256i*>(control));
  const __m256i spread = _mm256_load_si256(reinterpret_cast<const __m256i*>(words));
  const __m256i lane_group = _mm256_load_si256(reinterpret_cast<const __m256i*>(groups));
  const __m256i first_groups = _mm256_cmpgt_epi32(
      _mm256_set1_epi32(static_cast<int>(per_block)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (int64_t nb = n0; nb < n1; nb += kRowBatch) {
    const RowBatch batch = row_batch(w, nb, n1, sbuf, bbuf);
    const int64_t nr = batch.count;
    const float* sc = batch.scales;
    const float* bi = batch.biases;
    for (int64_t r = 0; r < nr; ++r) {
      const uint8_t* c = w.codes + (nb + r) * rb;
      const float* s = sc + r * G;
      if (c + rb - B::kBytes + B::kRead > w.codes_end) {
        // The last rows of the buffer: the byte-exact decoder.
        straddle_row_avx2<BITS, true>(c, s, bi + r * G, G, gs, x, xsum, y + nb + r);
        continue;
      }
      __m256 tot = _mm256_setzero_ps();
      const float* xk = xp;
      for (int64_t k = 0; k < K; k += B::kBlock, c += B::kBytes, xk += B::kBlock) {
        _mm_prefetch(reinterpret_cast<const char*>(c) + kPrefetchBytes, _MM_HINT_T0);
        const __m256i v = _mm256_shuffle_epi8(
            _mm256_permutevar8x32_epi32(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)), spread),
            shuffle);
        __m256 acc[2] = {_mm256_loadu_ps(centre + 16 * (k / B::kBlock)),
                         _mm256_loadu_ps(centre + 16 * (k / B::kBlock) + 8)};
#pragma GCC unroll 8
        for (int j = 0; j < CPW; ++j) {
          const __m256i q = _mm256_and_si256(
              v, _mm256_load_si256(reinterpret_cast<const __m256i*>(masks[j])));
          acc[j & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), _mm256_loadu_ps(xk + 8 * j),
                                       acc[j & 1]);
        }
        const float* sk = s + k / gs;
        const __m256 scale =
            per_block == 0 ? _mm256_broadcast_ss(sk)
                           : _mm256_permutevar8x32_ps(_mm256_maskload_ps(sk, first_groups),
                                                      lane_group);
        tot = _mm256_fmadd_ps(_mm256_add_ps(acc[0], acc[1]), scale, tot);
      }
      y[nb + r] = hsum_avx2(tot) + bias_dot_avx2(s, bi + r * G, 1 << (BITS - 1), xsum, G);
    }
  }
}

// The same single-row stream with 16-lane vectors (AVX-512F), for CPUs that have it: the 32
// codes of a block become two vectors (the AVX2 path's vectors 0|1 and 2|3), against the same
// permuted activations.
#define MLXNK_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))

// Σ of the 16 lanes (through memory: GCC 12's _mm512_reduce_add_ps trips -Wuninitialized on
// its own placeholder operands).
MLXNK_AVX512 inline float hsum_avx512(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  return hsum_avx2(_mm256_add_ps(_mm256_load_ps(lanes), _mm256_load_ps(lanes + 8)));
}

template <int BITS>
MLXNK_AVX512 inline void split32_avx512(const uint8_t* p, __m512 q[2]) {
  if constexpr (BITS == 8) {
    q[0] = _mm512_cvtepi32_ps(
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    q[1] = _mm512_cvtepi32_ps(
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
  } else if constexpr (BITS == 4) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    q[0] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(v, _mm_set1_epi8(0x0F))));
    q[1] = _mm512_cvtepi32_ps(
        _mm512_cvtepu8_epi32(_mm_and_si128(v, _mm_set1_epi8(static_cast<char>(0xF0)))));
  } else {
    const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    const __m128i r01 = _mm_unpacklo_epi64(_mm_and_si128(v, _mm_set1_epi8(0x03)),
                                           _mm_and_si128(v, _mm_set1_epi8(0x0C)));
    const __m128i r23 =
        _mm_unpacklo_epi64(_mm_and_si128(v, _mm_set1_epi8(0x30)),
                           _mm_and_si128(v, _mm_set1_epi8(static_cast<char>(0xC0))));
    q[0] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(r01));
    q[1] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(r23));
  }
}

template <int BITS>
MLXNK_AVX512 void row_stream_avx512(const QMatrix& w, const float* xp, const float* xsum,
                                    float* y, int64_t n0, int64_t n1, float* sbuf,
                                    float* bbuf) {
  const int64_t K = w.K;
  const int gs = w.group_size;
  const int64_t G = K / gs;
  const int64_t rb = K * BITS / 8;
  const int blocks = gs / 32;
  for (int64_t nb = n0; nb < n1; nb += kRowBatch) {
    const RowBatch batch = row_batch(w, nb, n1, sbuf, bbuf);
    const int64_t nr = batch.count;
    const float* sc = batch.scales;
    const float* bi = batch.biases;
    for (int64_t r = 0; r < nr; ++r) {
      const uint8_t* c = w.codes + (nb + r) * rb;
      const float* s = sc + r * G;
      const float* b = bi + r * G;
      __m512 tot = _mm512_setzero_ps();
      float bias = 0.0f;
      const float* x = xp;
      for (int64_t g = 0; g < G; ++g) {
        _mm_prefetch(reinterpret_cast<const char*>(c) + kPrefetchBytes, _MM_HINT_T0);
        __m512 q[2];
        split32_avx512<BITS>(c, q);
        __m512 acc0 = _mm512_mul_ps(q[0], _mm512_loadu_ps(x));
        __m512 acc1 = _mm512_mul_ps(q[1], _mm512_loadu_ps(x + 16));
        c += 4 * BITS;
        x += 32;
        for (int j = 1; j < blocks; ++j, c += 4 * BITS, x += 32) {
          split32_avx512<BITS>(c, q);
          acc0 = _mm512_fmadd_ps(q[0], _mm512_loadu_ps(x), acc0);
          acc1 = _mm512_fmadd_ps(q[1], _mm512_loadu_ps(x + 16), acc1);
        }
        tot = _mm512_fmadd_ps(_mm512_add_ps(acc0, acc1), _mm512_set1_ps(s[g]), tot);
        bias += b[g] * xsum[g];
      }
      y[nb + r] = hsum_avx512(tot) + bias;
    }
  }
}

MLXNK_AVX512 inline float bias_dot_avx512(const float* s, const float* b, float mid,
                                          const float* xsum, int64_t G) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; g += 16) {
    const __mmask16 m = G - g >= 16 ? static_cast<__mmask16>(0xFFFF)
                                    : static_cast<__mmask16>((1u << (G - g)) - 1);
    const __m512 bias = _mm512_fmadd_ps(_mm512_set1_ps(mid), _mm512_maskz_loadu_ps(m, s + g),
                                        _mm512_maskz_loadu_ps(m, b + g));
    acc = _mm512_fmadd_ps(bias, _mm512_maskz_loadu_ps(m, xsum + g), acc);
  }
  return hsum_avx512(acc);
}

// word_stream_avx2 with 16-lane vectors: a block is one 64-byte line of codes.
template <int BITS>
MLXNK_AVX512 void word_stream_avx512(const QMatrix& w, const float* xp, const float* xsum,
                                     float* y, int64_t n0, int64_t n1, float* sbuf,
                                     float* bbuf) {
  constexpr int CPW = kCodesPerWord<BITS>;
  constexpr int64_t W = 16 * CPW;
  const int64_t K = w.K;
  const int gs = w.group_size;
  const int64_t G = K / gs;
  const int64_t rb = K * BITS / 8;
  const int64_t per_block = gs < W ? W / gs : 0;
  const float* centre = xp + K;
  const auto groups = lane_groups<BITS, 16>(gs);
  const __m512i lane_group = _mm512_loadu_si512(groups.data());
  const __mmask16 first_groups = static_cast<__mmask16>((1u << per_block) - 1);
  const __m512i low = _mm512_set1_epi32((1 << BITS) - 1);
  for (int64_t nb = n0; nb < n1; nb += kRowBatch) {
    const RowBatch batch = row_batch(w, nb, n1, sbuf, bbuf);
    const int64_t nr = batch.count;
    const float* sc = batch.scales;
    const float* bi = batch.biases;
    for (int64_t r = 0; r < nr; ++r) {
      const uint8_t* c = w.codes + (nb + r) * rb;
      const float* s = sc + r * G;
      __m512 tot = _mm512_setzero_ps();
      const float* x = xp;
      for (int64_t k = 0; k < K; k += W, c += 64, x += W) {
        _mm_prefetch(reinterpret_cast<const char*>(c) + kPrefetchBytes, _MM_HINT_T0);
        const __m512i v = _mm512_loadu_si512(c);
        __m512 acc[2] = {_mm512_loadu_ps(centre + 2 * 16 * (k / W)),
                         _mm512_loadu_ps(centre + 2 * 16 * (k / W) + 16)};
#pragma GCC unroll 16
        for (int j = 0; j < CPW; ++j) {
          const __m512i q = j == CPW - 1
                                ? _mm512_srli_epi32(v, BITS * j)
                                : _mm512_and_si512(v, _mm512_slli_epi32(low, BITS * j));
          acc[j & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), _mm512_loadu_ps(x + 16 * j),
                                       acc[j & 1]);
        }
        const float* sk = s + k / gs;
        const __m512 scale =
            per_block == 0
                ? _mm512_set1_ps(*sk)
                : _mm512_permutexvar_ps(lane_group, _mm512_maskz_loadu_ps(first_groups, sk));
        tot = _mm512_fmadd_ps(_mm512_add_ps(acc[0], acc[1]), scale, tot);
      }
      y[nb + r] = hsum_avx512(tot) + bias_dot_avx512(s, bi + r * G, 1 << (BITS - 1), xsum, G);
    }
  }
}

// The single-row stream for 5 and 6 bits with 16-lane vectors (AVX-512F + BW): the 16 codes
// of a 2·BITS-byte block come from one 16-byte load broadcast to the four 128-bit parts, one
// in-part byte shuffle (each lane takes the two bytes that hold its code), one variable shift
// and one mask; 16 codes for what decode8_avx2 spends on 8. The sums run over q − mid (as in
// word_stream_avx2), so they stay at the size of the result; the bias term adds mid · s back.
#define MLXNK_AVX512BW __attribute__((target("avx512f,avx512bw,avx2,fma,f16c")))

// The 16 codes of the block at p, minus mid, as floats. EXACT: read only the block's bytes.
template <int BITS, bool EXACT>
MLXNK_AVX512BW inline __m512 centred16_avx512(const uint8_t* p, __m512i shuffle, __m512i shift,
                                              __m512i mid) {
  __m128i raw;
  if constexpr (EXACT) {
    alignas(16) uint8_t part[16] = {};
    std::memcpy(part, p, 2 * BITS);
    raw = _mm_load_si128(reinterpret_cast<const __m128i*>(part));
  } else {
    raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  }
  __m512i v = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(raw), shuffle);
  v = _mm512_and_si512(_mm512_srlv_epi32(v, shift), _mm512_set1_epi32((1 << BITS) - 1));
  return _mm512_cvtepi32_ps(_mm512_sub_epi32(v, mid));
}

template <int BITS, bool EXACT>
MLXNK_AVX512BW float straddle_row_avx512(const uint8_t* c, const float* s, const float* b,
                                         int64_t G, int gs, const float* x, const float* xsum) {
  const __m512i shuffle = _mm512_load_si512(kUnpack<BITS, 16>.shuffle);
  const __m512i shift = _mm512_load_si512(kUnpack<BITS, 16>.shift);
  const __m512i mid = _mm512_set1_epi32(1 << (BITS - 1));
  __m512 tot = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    _mm_prefetch(reinterpret_cast<const char*>(c) + kPrefetchBytes, _MM_HINT_T0);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int j = 0; j < gs; j += 32, c += 4 * BITS, x += 32) {
      acc0 = _mm512_fmadd_ps(centred16_avx512<BITS, EXACT>(c, shuffle, shift, mid),
                             _mm512_loadu_ps(x), acc0);
      acc1 = _mm512_fmadd_ps(centred16_avx512<BITS, EXACT>(c + 2 * BITS, shuffle, shift, mid),
                             _mm512_loadu_ps(x + 16), acc1);
    }
    tot = _mm512_fmadd_ps(_mm512_add_ps(acc0, acc1), _mm512_set1_ps(s[g]), tot);
  }
  return hsum_avx512(tot) + bias_dot_avx512(s, b, 1 << (BITS - 1), xsum, G);
}

template <int BITS>
MLXNK_AVX512BW void straddle_stream_avx512(const QMatrix& w, const float* x, const float* xsum,
                                           float* y, int64_t n0, int64_t n1, float* sbuf,
                                           float* bbuf) {
  const int64_t K = w.K;
  const int gs = w.group_size;
  const int64_t G = K / gs;
  const int64_t rb = K * BITS / 8;
  for (int64_t nb = n0; nb < n1; nb += kRowBatch) {
    const RowBatch batch = row_batch(w, nb, n1, sbuf, bbuf);
    for (int64_t r = 0; r < batch.count; ++r) {
      const uint8_t* c = w.codes + (nb + r) * rb;
      const float* s = batch.scales + r * G;
      const float* b = batch.biases + r * G;
      // The last block's 16-byte load reads 16 − 2·BITS bytes past the row.
      y[nb + r] = c + rb + (16 - 2 * BITS) > w.codes_end
                      ? straddle_row_avx512<BITS, true>(c, s, b, G, gs, x, xsum)
                      : straddle_row_avx512<BITS, false>(c, s, b, G, gs, x, xsum);
    }
  }
}

bool has_avx512bw() {
  static const bool bw = __builtin_cpu_supports("avx512bw");
  return bw;
}

// Activation rows per block of the paired many-row path below.
constexpr int kMicroRows512 = 12;

// Weight columns per tile of the paired many-row path below.
constexpr int64_t kPairCols = 2 * kTileRows;

// The first n (clamped to 0…16) lanes.
MLXNK_AVX512 inline __mmask16 lanes_mask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF)
                 : n <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << n) - 1);
}

// y[m * ldy + r] (+)= Σ_k xp[k · MR + m] · tile[k][r] for MR ≤ 12 rows and the tile's nt ≤ 32
// columns: two weight vectors per k, so each broadcast activation feeds two multiply-adds
// (24 accumulators of the 32 registers), read from activations packed [k][row] through one
// pointer. Per output the sum runs over k in order, as in micro_avx2.
template <int MR>
MLXNK_AVX512 void micro_pair_avx512(const float* xp, const float* tile, int64_t kc, float* y,
                                    int64_t ldy, int64_t nt, bool first) {
  __m512 a0[MR], a1[MR];
#pragma GCC unroll 12
  for (int m = 0; m < MR; ++m) {
    a0[m] = _mm512_setzero_ps();
    a1[m] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 t0 = _mm512_loadu_ps(tile + k * kPairCols);
    const __m512 t1 = _mm512_loadu_ps(tile + k * kPairCols + kTileRows);
    const float* xk = xp + k * MR;
#pragma GCC unroll 12
    for (int m = 0; m < MR; ++m) {
      const __m512 xv = _mm512_set1_ps(xk[m]);
      a0[m] = _mm512_fmadd_ps(xv, t0, a0[m]);
      a1[m] = _mm512_fmadd_ps(xv, t1, a1[m]);
    }
  }
  const __mmask16 keep0 = lanes_mask(nt), keep1 = lanes_mask(nt - kTileRows);
#pragma GCC unroll 12
  for (int m = 0; m < MR; ++m) {
    float* ym = y + m * ldy;
    _mm512_mask_storeu_ps(
        ym, keep0, first ? a0[m] : _mm512_add_ps(_mm512_maskz_loadu_ps(keep0, ym), a0[m]));
    if (keep1 != 0) {
      float* yh = ym + kTileRows;
      _mm512_mask_storeu_ps(
          yh, keep1, first ? a1[m] : _mm512_add_ps(_mm512_maskz_loadu_ps(keep1, yh), a1[m]));
    }
  }
}

using PairFn = void (*)(const float*, const float*, int64_t, float*, int64_t, int64_t, bool);
const PairFn kPairAvx512[kMicroRows512] = {
    micro_pair_avx512<1>, micro_pair_avx512<2>,  micro_pair_avx512<3>,  micro_pair_avx512<4>,
    micro_pair_avx512<5>, micro_pair_avx512<6>,  micro_pair_avx512<7>,  micro_pair_avx512<8>,
    micro_pair_avx512<9>, micro_pair_avx512<10>, micro_pair_avx512<11>, micro_pair_avx512<12>};

// The activations x [M, K] as micro_pair_avx512 reads them: rows in blocks of 12 (the last
// block the rest), block m0 at out + m0·K laid out [k][row]. Eight inputs of a row at a time,
// so the stores of a block stay within a few cache lines.
void pack_rows_avx512(const float* x, int64_t ldx, int64_t M, int64_t K, float* out) {
  for (int64_t m0 = 0; m0 < M; m0 += kMicroRows512) {
    const int64_t mr = std::min<int64_t>(kMicroRows512, M - m0);
    float* block = out + m0 * K;
    for (int64_t k0 = 0; k0 < K; k0 += 8) {
      const int64_t kn = std::min<int64_t>(8, K - k0);
      for (int64_t m = 0; m < mr; ++m) {
        const float* xm = x + (m0 + m) * ldx + k0;
        for (int64_t k = 0; k < kn; ++k) block[(k0 + k) * mr + m] = xm[k];
      }
    }
  }
}

// Columns [n0, n1) of a product with many rows on AVX-512: the activations packed (`blocks`
// from pack_rows_avx512, shared by every column piece of the product, or packed here), then
// per 32 weight columns and kChunk inputs one float32 tile [kc][32] that every row block reads.
// `tiles.start(nb, nt)` moves to columns [nb, nb + nt) and `tiles.fill(k0, kc, tile)` writes
// their inputs [k0, k0 + kc), zeros past nt.
template <class Tiles>
void pair_tiles_avx512(Tiles& tiles, const float* x, int64_t ldx, int64_t M, int64_t K, float* y,
                       int64_t ldy, int64_t n0, int64_t n1, const float* blocks) {
  std::vector<float> own;
  if (blocks == nullptr) {
    own.resize(static_cast<size_t>(M * K));
    pack_rows_avx512(x, ldx, M, K, own.data());
    blocks = own.data();
  }
  std::vector<float> tile(static_cast<size_t>(kPairCols * kChunk));
  for (int64_t nb = n0; nb < n1; nb += kPairCols) {
    const int64_t nt = std::min(kPairCols, n1 - nb);
    tiles.start(nb, nt);
    for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
      const int64_t kc = std::min(kChunk, K - k0);
      tiles.fill(k0, kc, tile.data());
      for (int64_t m0 = 0; m0 < M; m0 += kMicroRows512) {
        const int64_t mr = std::min<int64_t>(kMicroRows512, M - m0);
        kPairAvx512[mr - 1](blocks + m0 * K + k0 * mr, tile.data(), kc, y + m0 * ldy + nb, ldy,
                            nt, k0 == 0);
      }
    }
  }
}

// Tiles of a quantized matrix: the two 16-row halves dequantized side by side.
template <int BITS>
struct QuantPairTiles {
  const QMatrix& w;
  int64_t G, rb;
  std::vector<float> sbuf, bbuf;
  const float *s = nullptr, *b = nullptr;
  const uint8_t* c = nullptr;
  int64_t lo = 0, hi = 0;
  bool exact = false;

  explicit QuantPairTiles(const QMatrix& m)
      : w(m),
        G(m.K / m.group_size),
        rb(m.K * BITS / 8),
        sbuf(static_cast<size_t>(kPairCols * G)),
        bbuf(sbuf.size()) {}

  void start(int64_t nb, int64_t nt) {
    s = rows_f32(w.scales, w.scale_type, nb, nt, G, sbuf.data());
    b = rows_f32(w.biases, w.bias_type, nb, nt, G, bbuf.data());
    c = w.codes + nb * rb;
    exact = needs_exact_reads<BITS>(c + nt * rb, w.codes_end);
    lo = std::min(kTileRows, nt);
    hi = nt - lo;
  }

  void fill(int64_t k0, int64_t kc, float* tile) const {
    const int64_t g0 = k0 / w.group_size;
    const uint8_t* ck = c + k0 * BITS / 8;
    // The second half's rows start kTileRows rows on (none when hi is 0: zeros).
    const uint8_t* ch = ck + kTileRows * rb;
    const float *sh = s + kTileRows * G + g0, *bh = b + kTileRows * G + g0;
    const int gs = w.group_size;
    if (exact) {
      dequant_tile_avx2<BITS, true>(ck, rb, s + g0, b + g0, G, lo, kc, gs, tile, kPairCols);
      dequant_tile_avx2<BITS, true>(ch, rb, sh, bh, G, hi, kc, gs, tile + kTileRows, kPairCols);
    } else {
      dequant_tile_avx2<BITS, false>(ck, rb, s + g0, b + g0, G, lo, kc, gs, tile, kPairCols);
      dequant_tile_avx2<BITS, false>(ch, rb, sh, bh, G, hi, kc, gs, tile + kTileRows,
                                     kPairCols);
    }
  }
};

// Dense weights (float32, bfloat16 or float16 rows). One activation row at a time against a
// weight row converted 8 or 16 lanes at a time (bfloat16: a shift, float16: F16C) into four
// accumulators; many rows through the quantized path's tiles and microkernels.
// The scalar tail of a dense dot product from k.
inline float dense_tail(const void* row, FType t, const float* x, int64_t k, int64_t K,
                        float sum) {
  for (; k < K; ++k) {
    float w;
    if (t == FType::F32) {
      w = static_cast<const float*>(row)[k];
    } else {
      const uint16_t h = static_cast<const uint16_t*>(row)[k];
      w = t == FType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
    sum += w * x[k];
  }
  return sum;
}

MLXNK_AVX2 inline __m256 dense8_avx2(const void* row, FType t, int64_t at) {
  if (t == FType::F32) return _mm256_loadu_ps(static_cast<const float*>(row) + at);
  const __m128i h =
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + at));
  return t == FType::BF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                          : _mm256_cvtph_ps(h);
}

MLXNK_AVX2 float dense_dot_avx2(const void* row, FType t, const float* x, int64_t K) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      acc[v] = _mm256_fmadd_ps(dense8_avx2(row, t, k + 8 * v), _mm256_loadu_ps(x + k + 8 * v),
                               acc[v]);
    }
  }
  const float sum =
      hsum_avx2(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  return dense_tail(row, t, x, k, K, sum);
}

MLXNK_AVX512 inline __m512 dense16_avx512(const void* row, FType t, int64_t at) {
  if (t == FType::F32) return _mm512_loadu_ps(static_cast<const float*>(row) + at);
  const __m256i h = _mm256_loadu_si256(
      reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + at));
  return t == FType::BF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                          : _mm512_cvtph_ps(h);
}

MLXNK_AVX512 float dense_dot_avx512(const void* row, FType t, const float* x, int64_t K) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      acc[v] = _mm512_fmadd_ps(dense16_avx512(row, t, k + 16 * v),
                               _mm512_loadu_ps(x + k + 16 * v), acc[v]);
    }
  }
  const float sum = hsum_avx512(
      _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
  return dense_tail(row, t, x, k, K, sum);
}

// Converts kc columns from k0 of nt ≤ 16 dense rows into tile[k][r] (k-major, ld per k).
void dense_tile(const DMatrix& w, int64_t nb, int64_t nt, int64_t k0, int64_t kc, float* tile,
                float* row, int64_t ld = kTileRows) {
  for (int64_t r = 0; r < kTileRows; ++r) {
    if (r < nt) {
      const size_t es = w.type == FType::F32 ? 4 : 2;
      const void* p = static_cast<const uint8_t*>(w.data) + ((nb + r) * w.K + k0) * es;
      const float* f = rows_f32(p, w.type, 0, 1, kc, row);
      for (int64_t k = 0; k < kc; ++k) tile[k * ld + r] = f[k];
    } else {
      for (int64_t k = 0; k < kc; ++k) tile[k * ld + r] = 0.0f;
    }
  }
}

// Tiles of a dense matrix for pair_tiles_avx512: the two 16-row halves converted side by side.
struct DensePairTiles {
  const DMatrix& w;
  std::vector<float> row = std::vector<float>(kChunk);
  int64_t nb = 0, lo = 0, hi = 0;

  void start(int64_t first, int64_t nt) {
    nb = first;
    lo = std::min(kTileRows, nt);
    hi = nt - lo;
  }

  void fill(int64_t k0, int64_t kc, float* tile) {
    dense_tile(w, nb, lo, k0, kc, tile, row.data(), kPairCols);
    dense_tile(w, nb + kTileRows, hi, k0, kc, tile + kTileRows, row.data(), kPairCols);
  }
};

template <bool WIDE>
void dense_rows(const DMatrix& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy,
                int64_t n0, int64_t n1) {
  const size_t es = w.type == FType::F32 ? 4 : 2;
  for (int64_t n = n0; n < n1; ++n) {
    const void* row = static_cast<const uint8_t*>(w.data) + n * w.K * es;
    _mm_prefetch(static_cast<const char*>(row) + w.K * es, _MM_HINT_T0);
    for (int64_t m = 0; m < M; ++m) {
      y[m * ldy + n] = WIDE ? dense_dot_avx512(row, w.type, x + m * ldx, w.K)
                            : dense_dot_avx2(row, w.type, x + m * ldx, w.K);
    }
  }
}

template <bool WIDE>
void dense_avx2(const DMatrix& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy,
                int64_t n0, int64_t n1, const float* blocks) {
  if (M <= 4) {
    dense_rows<WIDE>(w, x, ldx, M, y, ldy, n0, n1);
    return;
  }
  if constexpr (WIDE) {
    DensePairTiles tiles{w};
    pair_tiles_avx512(tiles, x, ldx, M, w.K, y, ldy, n0, n1, blocks);
    return;
  }
  std::vector<float> tile(static_cast<size_t>(kTileRows * kChunk)), row(kChunk);
  for (int64_t nb = n0; nb < n1; nb += kTileRows) {
    const int64_t nt = std::min(kTileRows, n1 - nb);
    for (int64_t k0 = 0; k0 < w.K; k0 += kChunk) {
      const int64_t kc = std::min(kChunk, w.K - k0);
      dense_tile(w, nb, nt, k0, kc, tile.data(), row.data());
      for (int64_t m0 = 0; m0 < M; m0 += kMicroRows) {
        const int64_t mr = std::min<int64_t>(kMicroRows, M - m0);
        kMicroAvx2[mr - 1](x + m0 * ldx + k0, ldx, tile.data(), kc, y + m0 * ldy + nb, ldy, nt,
                           k0 == 0);
      }
    }
  }
}

// Columns [n0, n1) for MR activation rows: weight rows in blocks of NR (4, 2 or 1 as MR
// grows, to stay within the 16 vector registers), single rows at the end.
template <int BITS, int MR, bool EXACT>
void matvec_rows_avx2(const QMatrix& w, const float* x, int64_t ldx, const float* xsum, float* y,
                      int64_t ldy, int64_t n0, int64_t n1, float* sbuf, float* bbuf) {
  constexpr int64_t NR = MR == 1 ? 4 : MR == 2 ? 2 : 1;
  const int64_t K = w.K;
  const int64_t G = K / w.group_size;
  const int64_t rb = K * BITS / 8;
  for (int64_t n = n0; n < n1;) {
    const int64_t nr = n1 - n >= NR ? NR : 1;
    const float* s = rows_f32(w.scales, w.scale_type, n, nr, G, sbuf);
    const float* b = rows_f32(w.biases, w.bias_type, n, nr, G, bbuf);
    const uint8_t* c = w.codes + n * rb;
    if (nr == NR) {
      matvec_avx2<BITS, MR, NR, EXACT>(c, rb, s, b, G, w.group_size, x, ldx, xsum, y + n, ldy);
    } else {
      matvec_avx2<BITS, MR, 1, EXACT>(c, rb, s, b, G, w.group_size, x, ldx, xsum, y + n, ldy);
    }
    n += nr;
  }
}

template <int BITS, int MR>
void matvec_split_avx2(const QMatrix& w, const float* x, int64_t ldx, const float* xsum, float* y,
                       int64_t ldy, int64_t n0, int64_t split, int64_t n1, float* sbuf,
                       float* bbuf) {
  matvec_rows_avx2<BITS, MR, false>(w, x, ldx, xsum, y, ldy, n0, split, sbuf, bbuf);
  matvec_rows_avx2<BITS, MR, true>(w, x, ldx, xsum, y, ldy, split, n1, sbuf, bbuf);
}

template <int BITS, bool WIDE = false>
void columns_avx2(const QMatrix& w, const float* x, int64_t ldx, int64_t M, float* y,
                  int64_t ldy, int64_t n0, int64_t n1, const float* blocks) {
  const int64_t K = w.K;
  const int gs = w.group_size;
  const int64_t G = K / gs;
  const int64_t rb = K * BITS / 8;
  std::vector<float> sbuf(static_cast<size_t>(kTileRows * G)), bbuf(sbuf.size());
  if constexpr (BITS == 3 || BITS == 5 || BITS == 6) {
    if (M == 1) {
      std::vector<float> xsum(static_cast<size_t>(G));
      for (int64_t g = 0; g < G; ++g) {
        float t = 0.0f;
        for (int i = 0; i < gs; ++i) t += x[g * gs + i];
        xsum[g] = t;
      }
      if constexpr (BITS == 3) {
        if (K % Gathered3::kBlock == 0) {
          std::vector<float> xp(static_cast<size_t>(K + 2 * K / Gathered3::kPerWord));
          permute_gathered<8>(x, K, xp.data());
          gathered_stream_avx2(w, xp.data(), xsum.data(), x, y, n0, n1, sbuf.data(),
                               bbuf.data());
          return;
        }
      }
      if constexpr (WIDE && BITS != 3) {
        if (has_avx512bw()) {
          straddle_stream_avx512<BITS>(w, x, xsum.data(), y, n0, n1, sbuf.data(), bbuf.data());
          return;
        }
      }
      straddle_stream_avx2<BITS>(w, x, xsum.data(), y, n0, n1, sbuf.data(), bbuf.data());
      return;
    }
  }
  if constexpr (BITS == 2 || BITS == 4 || BITS == 8) {
    if (M == 1) {
      std::vector<float> xp(static_cast<size_t>(K)), xsum(static_cast<size_t>(G));
      for (int64_t g = 0; g < G; ++g) {
        float t = 0.0f;
        for (int i = 0; i < gs; ++i) t += x[g * gs + i];
        xsum[g] = t;
      }
      constexpr int lanes = WIDE ? 16 : 8;
      if (K % (lanes * kCodesPerWord<BITS>) == 0) {
        xp.resize(static_cast<size_t>(K + 2 * K / kCodesPerWord<BITS>));
        permute_words<BITS, lanes>(x, K, xp.data());
        if constexpr (WIDE) {
          word_stream_avx512<BITS>(w, xp.data(), xsum.data(), y, n0, n1, sbuf.data(),
                                   bbuf.data());
        } else {
          word_stream_avx2<BITS>(w, xp.data(), xsum.data(), y, n0, n1, sbuf.data(),
                                 bbuf.data());
        }
        return;
      }
      permute_x<BITS>(x, K, xp.data());
      if constexpr (WIDE) {
        row_stream_avx512<BITS>(w, xp.data(), xsum.data(), y, n0, n1, sbuf.data(), bbuf.data());
      } else {
        row_stream_avx2<BITS>(w, xp.data(), xsum.data(), y, n0, n1, sbuf.data(), bbuf.data());
      }
      return;
    }
  }
  if (M <= kMatvecRows) {
    // Rows near the end of the buffer are read with exact-size loads.
    int64_t split = n1;
    while (split > n0 && needs_exact_reads<BITS>(w.codes + split * rb, w.codes_end)) --split;
    std::vector<float> xsum(static_cast<size_t>(M * G));
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t g = 0; g < G; ++g) {
        const float* xg = x + m * ldx + g * gs;
        float t = 0.0f;
        for (int i = 0; i < gs; ++i) t += xg[i];
        xsum[m * G + g] = t;
      }
    }
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const float* xm = x + m0 * ldx;
      const float* xs = xsum.data() + m0 * G;
      float* ym = y + m0 * ldy;
      switch (std::min<int64_t>(4, M - m0)) {
        case 1:
          matvec_split_avx2<BITS, 1>(w, xm, ldx, xs, ym, ldy, n0, split, n1, sbuf.data(),
                                     bbuf.data());
          break;
        case 2:
          matvec_split_avx2<BITS, 2>(w, xm, ldx, xs, ym, ldy, n0, split, n1, sbuf.data(),
                                     bbuf.data());
          break;
        case 3:
          matvec_split_avx2<BITS, 3>(w, xm, ldx, xs, ym, ldy, n0, split, n1, sbuf.data(),
                                     bbuf.data());
          break;
        default:
          matvec_split_avx2<BITS, 4>(w, xm, ldx, xs, ym, ldy, n0, split, n1, sbuf.data(),
                                     bbuf.data());
          break;
      }
    }
    return;
  }
  if constexpr (WIDE) {
    QuantPairTiles<BITS> tiles(w);
    pair_tiles_avx512(tiles, x, ldx, M, K, y, ldy, n0, n1, blocks);
    return;
  }
  std::vector<float> tile(static_cast<size_t>(kTileRows * kChunk));
  for (int64_t nb = n0; nb < n1; nb += kTileRows) {
    const int64_t nt = std::min(kTileRows, n1 - nb);
    const float* s = rows_f32(w.scales, w.scale_type, nb, nt, G, sbuf.data());
    const float* b = rows_f32(w.biases, w.bias_type, nb, nt, G, bbuf.data());
    const uint8_t* c = w.codes + nb * rb;
    const bool exact = needs_exact_reads<BITS>(c + nt * rb, w.codes_end);
    for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
      const int64_t kc = std::min(kChunk, K - k0);
      const int64_t g0 = k0 / gs;
      const uint8_t* ck = c + k0 * BITS / 8;
      if (exact) {
        dequant_tile_avx2<BITS, true>(ck, rb, s + g0, b + g0, G, nt, kc, gs, tile.data());
      } else {
        dequant_tile_avx2<BITS, false>(ck, rb, s + g0, b + g0, G, nt, kc, gs, tile.data());
      }
      for (int64_t m0 = 0; m0 < M; m0 += kMicroRows) {
        const int64_t mr = std::min<int64_t>(kMicroRows, M - m0);
        kMicroAvx2[mr - 1](x + m0 * ldx + k0, ldx, tile.data(), kc, y + m0 * ldy + nb, ldy, nt,
                           k0 == 0);
      }
    }
  }
}
#endif  // MLXNK_X86

// ---------------------------------------------------------------------------------------------
// NEON path (aarch64, where NEON is always present): the portable structure with vector
// dequantization and dot products.

#if defined(MLXNK_NEON)
template <int BITS>
void dequant_neon(const uint8_t* p, const float* s, const float* b, int64_t ngroups, int gs,
                  float* out) {
  constexpr uint64_t mask = (1u << BITS) - 1u;
  const int blocks = gs / 8;
  for (int64_t g = 0; g < ngroups; ++g) {
    const float32x4_t sv = vdupq_n_f32(s[g]);
    const float32x4_t bv = vdupq_n_f32(b[g]);
    for (int j = 0; j < blocks; ++j) {
      uint64_t u = 0;
      std::memcpy(&u, p, BITS);  // little-endian
      uint32_t q[8];
      for (int c = 0; c < 8; ++c) q[c] = static_cast<uint32_t>((u >> (c * BITS)) & mask);
      const float32x4_t lo = vcvtq_f32_u32(vld1q_u32(q));
      const float32x4_t hi = vcvtq_f32_u32(vld1q_u32(q + 4));
      vst1q_f32(out, vfmaq_f32(bv, lo, sv));
      vst1q_f32(out + 4, vfmaq_f32(bv, hi, sv));
      p += BITS;
      out += 8;
    }
  }
}

float dot_neon(const float* a, const float* b, int64_t n) {
  float32x4_t a0 = vdupq_n_f32(0.0f);
  float32x4_t a1 = vdupq_n_f32(0.0f);
  for (int64_t i = 0; i < n; i += 8) {
    a0 = vfmaq_f32(a0, vld1q_f32(a + i), vld1q_f32(b + i));
    a1 = vfmaq_f32(a1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
  }
  return vaddvq_f32(vaddq_f32(a0, a1));
}

template <int BITS>
void columns_neon(const QMatrix& w, const float* x, int64_t ldx, int64_t M, float* y,
                  int64_t ldy, int64_t n0, int64_t n1, const float* /*blocks*/) {
  const int64_t K = w.K;
  const int64_t G = K / w.group_size;
  const int64_t row_bytes = K * BITS / 8;
  std::vector<float> row(static_cast<size_t>(K));
  std::vector<float> sbuf(static_cast<size_t>(G)), bbuf(static_cast<size_t>(G));
  for (int64_t n = n0; n < n1; ++n) {
    const float* s = rows_f32(w.scales, w.scale_type, n, 1, G, sbuf.data());
    const float* b = rows_f32(w.biases, w.bias_type, n, 1, G, bbuf.data());
    dequant_neon<BITS>(w.codes + n * row_bytes, s, b, G, w.group_size, row.data());
    for (int64_t m = 0; m < M; ++m) y[m * ldy + n] = dot_neon(x + m * ldx, row.data(), K);
  }
}
#endif  // MLXNK_NEON

using ColumnsFn = void (*)(const QMatrix&, const float*, int64_t, int64_t, float*, int64_t,
                           int64_t, int64_t, const float*);

template <template <int> class Pick>
ColumnsFn by_bits(int bits) {
  switch (bits) {
    case 2:
      return Pick<2>::fn;
    case 3:
      return Pick<3>::fn;
    case 4:
      return Pick<4>::fn;
    case 5:
      return Pick<5>::fn;
    case 6:
      return Pick<6>::fn;
    case 8:
      return Pick<8>::fn;
    default:
      return nullptr;
  }
}

template <int B>
struct PickPortable {
  static constexpr ColumnsFn fn = columns_portable<B>;
};
#if defined(MLXNK_X86)
template <int B>
struct PickAvx2 {
  static constexpr ColumnsFn fn = columns_avx2<B>;
};
template <int B>
struct PickAvx512 {
  static constexpr ColumnsFn fn = columns_avx2<B, true>;
};
#endif
#if defined(MLXNK_NEON)
template <int B>
struct PickNeon {
  static constexpr ColumnsFn fn = columns_neon<B>;
};
#endif

Isa isa_from_env() {
  const char* v = std::getenv("MLX_NODE_KERNELS_ISA");
  if (v == nullptr) return Isa::Default;
  const std::string s(v);
  if (s == "portable") return Isa::Portable;
  if (s == "avx2") return Isa::Avx2;
  if (s == "avx512") return Isa::Avx512;
  if (s == "neon") return Isa::Neon;
  return Isa::Default;  // "auto", "" or anything else
}

Isa best_isa() {
#if defined(MLXNK_X86)
  if (isa_available(Isa::Avx512)) return Isa::Avx512;
  if (isa_available(Isa::Avx2)) return Isa::Avx2;
#endif
#if defined(MLXNK_NEON)
  return Isa::Neon;
#endif
  return Isa::Portable;
}

}  // namespace

bool isa_available(Isa isa) {
  switch (isa) {
    case Isa::Portable:
      return true;
    case Isa::Avx2:
#if defined(MLXNK_X86)
    {
      // libgcc's check also covers the OS saving the YMM registers (XCR0).
      static const bool ok = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
      }();
      return ok;
    }
#else
      return false;
#endif
    case Isa::Avx512:
#if defined(MLXNK_X86)
    {
      static const bool ok = [] {
        __builtin_cpu_init();
        return isa_available(Isa::Avx2) && __builtin_cpu_supports("avx512f");
      }();
      return ok;
    }
#else
      return false;
#endif
    case Isa::Neon:
#if defined(MLXNK_NEON)
      return true;
#else
      return false;
#endif
    case Isa::Default:
      return true;
  }
  return false;
}

Isa resolve_isa(Isa requested) {
  if (requested == Isa::Default) {
    static const Isa chosen = [] {
      const Isa env = isa_from_env();
      if (env == Isa::Default) return best_isa();
      return isa_available(env) ? env : Isa::Portable;
    }();
    return chosen;
  }
  return isa_available(requested) ? requested : Isa::Portable;
}

void dense_columns(Isa isa, const DMatrix& w, const float* x, int64_t ldx, int64_t M, float* y,
                   int64_t ldy, int64_t n0, int64_t n1, const float* blocks) {
  if (n1 <= n0 || M <= 0) return;
  switch (isa) {
#if defined(MLXNK_X86)
    case Isa::Avx2:
      dense_avx2<false>(w, x, ldx, M, y, ldy, n0, n1, blocks);
      return;
    case Isa::Avx512:
      dense_avx2<true>(w, x, ldx, M, y, ldy, n0, n1, blocks);
      return;
#endif
    default:
      dense_portable(w, x, ldx, M, y, ldy, n0, n1);
      return;
  }
}

std::vector<float> pack_row_blocks(Isa isa, const float* x, int64_t ldx, int64_t M, int64_t K) {
  std::vector<float> blocks;
#if defined(MLXNK_X86)
  if (isa == Isa::Avx512 && M > kMatvecRows) {
    blocks.resize(static_cast<size_t>(M * K));
    pack_rows_avx512(x, ldx, M, K, blocks.data());
  }
#else
  (void)isa, (void)x, (void)ldx, (void)M, (void)K;
#endif
  return blocks;
}

void qmm_columns(Isa isa, const QMatrix& w, const float* x, int64_t ldx, int64_t M, float* y,
                 int64_t ldy, int64_t n0, int64_t n1, const float* blocks) {
  if (n1 <= n0 || M <= 0) return;
  ColumnsFn fn = nullptr;
  switch (isa) {
#if defined(MLXNK_X86)
    case Isa::Avx2:
      fn = by_bits<PickAvx2>(w.bits);
      break;
    case Isa::Avx512:
      fn = by_bits<PickAvx512>(w.bits);
      break;
#endif
#if defined(MLXNK_NEON)
    case Isa::Neon:
      fn = by_bits<PickNeon>(w.bits);
      break;
#endif
    default:
      fn = by_bits<PickPortable>(w.bits);
      break;
  }
  if (fn != nullptr) fn(w, x, ldx, M, y, ldy, n0, n1, blocks);
}

}  // namespace mlxnk
