//! Deterministic random tensor contents, produced in chunks so that a tensor of any size is
//! streamed to disk without being held in memory.

use std::io::{self, Write};

/// How a tensor's values are drawn. The distributions follow what transformers' `_init_weights`
/// gives the same parameters, except that the constants it uses (zeros, ones) are perturbed: a
/// checkpoint whose norms are exactly 0 or 1 cannot tell an engine that forgets the `1 + w` of
/// a zero-centred RMSNorm from a correct one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Projections, embeddings, experts, router, conv taps: normal(0, std).
    Normal { std: f32 },
    /// Zero-centred RMSNorm weights, used as `1 + w`: uniform(-0.25, 0.25).
    ZeroCentredNorm,
    /// The gated RMSNorm of GDN, a plain multiplier: 1 + uniform(-0.25, 0.25).
    GatedNorm,
    /// GDN `dt_bias`: normal(0, 1).
    DtBias,
    /// GDN `A_log`: ln(uniform(0.01, 16)), so the decay rates `exp(A_log)` span 0.01..16.
    ALog,
}

/// Element type on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    BF16,
    F32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::BF16 => 2,
            DType::F32 => 4,
        }
    }

    /// The safetensors spelling.
    pub fn name(self) -> &'static str {
        match self {
            DType::BF16 => "BF16",
            DType::F32 => "F32",
        }
    }
}

/// SplitMix64: turns a seed into well-mixed words, used only to seed [`Xoshiro256pp`].
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// xoshiro256++ (Blackman and Vigna): fast, 256 bits of state, good enough statistics for
/// weights, and fully specified, so the bytes do not depend on any crate's version.
pub struct Xoshiro256pp([u64; 4]);

impl Xoshiro256pp {
    pub fn seed_from(seed: u64) -> Xoshiro256pp {
        let mut sm = SplitMix64(seed);
        Xoshiro256pp([sm.next(), sm.next(), sm.next(), sm.next()])
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 24 bits, the full precision of an f32 mantissa.
    #[inline]
    pub fn next_unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Approximately standard normal: the sum of four 16-bit uniforms (Irwin-Hall, n = 4),
    /// centred and scaled to unit variance. One generator call per value keeps the 0.8B model
    /// (752M values) to a few seconds; the tails stop at ±3.46σ, which random weights do not
    /// miss.
    #[inline]
    pub fn next_normal(&mut self) -> f32 {
        // Variance of one discrete uniform over 0..=65535 is (65536² - 1) / 12.
        const MEAN: f32 = 4.0 * 32767.5;
        const INV_SD: f32 = 1.0 / 37837.23; // 1 / sqrt(4 * (65536² - 1) / 12)
        let x = self.next_u64();
        let sum = (x & 0xFFFF) + ((x >> 16) & 0xFFFF) + ((x >> 32) & 0xFFFF) + (x >> 48);
        (sum as f32 - MEAN) * INV_SD
    }
}

/// FNV-1a: a stable hash of the tensor name, so each tensor has its own stream and its values
/// do not depend on which other tensors exist, their order or the sharding.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// The generator for one tensor of one checkpoint.
pub fn tensor_rng(seed: u64, name: &str) -> Xoshiro256pp {
    let mut sm = SplitMix64(seed);
    Xoshiro256pp::seed_from(sm.next() ^ fnv1a(name.as_bytes()))
}

/// f32 -> bf16 bits, round to nearest, ties to even (what torch's `.to(torch.bfloat16)` does).
/// NaN stays NaN; the generators never produce one.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x0040) as u16;
    }
    let round = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

#[inline]
fn sample(init: Init, rng: &mut Xoshiro256pp) -> f32 {
    match init {
        Init::Normal { std } => std * rng.next_normal(),
        Init::ZeroCentredNorm => (rng.next_unit() - 0.5) * 0.5,
        Init::GatedNorm => 1.0 + (rng.next_unit() - 0.5) * 0.5,
        Init::DtBias => rng.next_normal(),
        Init::ALog => (0.01 + rng.next_unit() * (16.0 - 0.01)).ln(),
    }
}

/// Writes `count` values of `init` as little-endian `dtype` into `out`, in chunks.
pub fn write_values(
    init: Init,
    dtype: DType,
    count: usize,
    rng: &mut Xoshiro256pp,
    out: &mut dyn Write,
) -> io::Result<()> {
    const CHUNK: usize = 1 << 16;
    let mut buf = vec![0u8; CHUNK * dtype.size()];
    let mut left = count;
    while left > 0 {
        let n = left.min(CHUNK);
        let bytes = &mut buf[..n * dtype.size()];
        match dtype {
            DType::BF16 => {
                for b in bytes.chunks_exact_mut(2) {
                    b.copy_from_slice(&f32_to_bf16(sample(init, rng)).to_le_bytes());
                }
            }
            DType::F32 => {
                for b in bytes.chunks_exact_mut(4) {
                    b.copy_from_slice(&sample(init, rng).to_le_bytes());
                }
            }
        }
        out.write_all(bytes)?;
        left -= n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_to_f32(b: u16) -> f32 {
        f32::from_bits(u32::from(b) << 16)
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        assert_eq!(f32_to_bf16(-2.0), 0xC000);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3F80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3F82);
        // just above the halfway point rounds up
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_7FFF)), 0x3F80);
        assert_eq!(f32_to_bf16(f32::MAX), 0x7F80, "overflow rounds to infinity");
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn xoshiro_matches_the_reference_sequence() {
        // First outputs of xoshiro256++ for the state {1, 2, 3, 4} (reference C implementation).
        let mut r = Xoshiro256pp([1, 2, 3, 4]);
        assert_eq!(r.next_u64(), 41943041);
        assert_eq!(r.next_u64(), 58720359);
        assert_eq!(r.next_u64(), 3588806011781223);
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut r = Xoshiro256pp::seed_from(7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| f64::from(r.next_normal())).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
    }

    #[test]
    fn distributions_stay_in_their_ranges() {
        let mut r = Xoshiro256pp::seed_from(3);
        for _ in 0..10_000 {
            let z = sample(Init::ZeroCentredNorm, &mut r);
            assert!((-0.25..0.25).contains(&z));
            let g = sample(Init::GatedNorm, &mut r);
            assert!((0.75..1.25).contains(&g));
            let a = sample(Init::ALog, &mut r);
            assert!(((0.01f32).ln() - 1e-6..=16f32.ln()).contains(&a), "{a}");
        }
    }

    #[test]
    fn streams_depend_on_seed_and_name() {
        let mut a = tensor_rng(1, "x");
        let mut b = tensor_rng(1, "x");
        let mut c = tensor_rng(2, "x");
        let mut d = tensor_rng(1, "y");
        let first = a.next_u64();
        assert_eq!(first, b.next_u64());
        assert_ne!(first, c.next_u64());
        assert_ne!(first, d.next_u64());
    }

    #[test]
    fn write_values_emits_exactly_count_elements() {
        let mut out = Vec::new();
        let mut r = Xoshiro256pp::seed_from(0);
        write_values(
            Init::Normal { std: 0.02 },
            DType::BF16,
            70_001,
            &mut r,
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 140_002);
        let mut out = Vec::new();
        write_values(Init::ALog, DType::F32, 5, &mut r, &mut out).unwrap();
        assert_eq!(out.len(), 20);
    }
}
