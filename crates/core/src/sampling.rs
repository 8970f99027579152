//! Choosing the next token from the logits: penalties, temperature, top-k, top-p, min-p, and a
//! seeded random draw (the same seed gives the same tokens).

use std::collections::HashMap;

use crate::error::{fail, ErrorCode, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1 = all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one (0 = none).
    pub min_p: f32,
    /// Multiplicative penalty on tokens already seen in prompt or output (1 = none; the
    /// Hugging Face rule: positive logits are divided by it, negative ones multiplied).
    pub repetition_penalty: f32,
    /// Subtracted once from every token already generated (OpenAI semantics).
    pub presence_penalty: f32,
    /// Subtracted per occurrence of a token already generated (OpenAI semantics).
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| fail(ErrorCode::InvalidArgument, what);
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be a number ≥ 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("topP must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("minP must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetitionPenalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        for (name, v) in [
            ("presencePenalty", self.presence_penalty),
            ("frequencyPenalty", self.frequency_penalty),
        ] {
            if !v.is_finite() || v.abs() > 100.0 {
                return bad(format!("{name} must be a number in [-100, 100], got {v}"));
            }
        }
        Ok(())
    }
}

/// SplitMix64: small, fast, and plenty for sampling.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The sampler of one generation: its parameters, its random state and the counts of the
/// tokens it has produced (for the penalties).
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    seen: HashMap<u32, u32>,
    generated: HashMap<u32, u32>,
}

impl Sampler {
    /// `context`: the prompt tokens, which the repetition penalty also covers.
    pub fn new(params: SamplingParams, context: &[u32]) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let mut seen = HashMap::new();
        if params.repetition_penalty != 1.0 {
            for &t in context {
                *seen.entry(t).or_insert(0) += 1;
            }
        }
        Sampler {
            params,
            rng: Rng::new(seed),
            seen,
            generated: HashMap::new(),
        }
    }

    /// Whether the choice is plain argmax, so a caller may skip copying the logits.
    pub fn is_greedy(&self) -> bool {
        self.params.temperature == 0.0
            && self.params.repetition_penalty == 1.0
            && self.params.presence_penalty == 0.0
            && self.params.frequency_penalty == 0.0
    }

    /// Records a token chosen elsewhere (e.g. by a greedy argmax on the device).
    pub fn accept(&mut self, token: u32) {
        *self.generated.entry(token).or_insert(0) += 1;
        if self.params.repetition_penalty != 1.0 {
            *self.seen.entry(token).or_insert(0) += 1;
        }
    }

    /// Chooses the next token from `logits` (modified in place) and records it.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &t in self.seen.keys() {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &count) in &self.generated {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * count as f32;
                }
            }
        }
        let token = if p.temperature == 0.0 {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        self.accept(token);
        token
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature as f64;
        // Candidates sorted by logit, most likely first; top-k cuts the list before softmax.
        let mut order: Vec<u32> = (0..logits.len() as u32)
            .filter(|&i| logits[i as usize].is_finite())
            .collect();
        if order.is_empty() {
            return argmax(logits);
        }
        let keep = if p.top_k > 0 {
            p.top_k.min(order.len())
        } else {
            order.len()
        };
        if keep < order.len() {
            order.select_nth_unstable_by(keep - 1, |&a, &b| {
                logits[b as usize].total_cmp(&logits[a as usize])
            });
            order.truncate(keep);
        }
        order.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        let top = logits[order[0] as usize] as f64;
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i as usize] as f64 - top) * inv_t).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        let mut cut = probs.len();
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p as f64;
            cut = cut.min(probs.iter().position(|&x| x < floor).unwrap_or(probs.len()));
        }
        if p.top_p < 1.0 {
            let mut mass = 0.0;
            for (i, &x) in probs.iter().enumerate() {
                mass += x;
                if mass >= p.top_p as f64 {
                    cut = cut.min(i + 1);
                    break;
                }
            }
        }
        let cut = cut.max(1);
        let kept: f64 = probs[..cut].iter().sum();
        let mut r = self.rng.uniform() * kept;
        for (i, &x) in probs[..cut].iter().enumerate() {
            r -= x;
            if r < 0.0 {
                return order[i];
            }
        }
        order[cut - 1]
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            seed: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn greedy_and_penalties() {
        let mut s = Sampler::new(SamplingParams::default(), &[]);
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9]), 1);
        let mut s = Sampler::new(
            SamplingParams {
                presence_penalty: 0.5,
                ..Default::default()
            },
            &[],
        );
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9]), 1);
        assert_eq!(
            s.sample(&mut [0.1, 3.0, 2.9]),
            2,
            "token 1 is penalised after its first use"
        );
        let mut s = Sampler::new(
            SamplingParams {
                repetition_penalty: 2.0,
                ..Default::default()
            },
            &[1],
        );
        assert_eq!(
            s.sample(&mut [0.1, 3.0, 2.9]),
            2,
            "the prompt's token 1 is penalised"
        );
        let mut s = Sampler::new(
            SamplingParams {
                frequency_penalty: 0.06,
                ..Default::default()
            },
            &[],
        );
        let picks: Vec<u32> = (0..4).map(|_| s.sample(&mut [0.0, 3.0, 2.9])).collect();
        assert_eq!(picks, [1, 1, 2, 1], "3.0 − 0.06·n against 2.9 − 0.06·m");
    }

    #[test]
    fn same_seed_same_tokens_and_the_distribution_is_right() {
        let logits = [0.0f32, 1.0, 2.0, 0.5];
        let run = |seed| {
            let mut s = Sampler::new(
                SamplingParams {
                    seed: Some(seed),
                    ..params()
                },
                &[],
            );
            (0..50)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
        let mut s = Sampler::new(params(), &[]);
        let n = 40_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[s.draw(&logits) as usize] += 1;
        }
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let expected = (logits[i] as f64).exp() / z;
            let got = c as f64 / n as f64;
            assert!(
                (got - expected).abs() < 0.01,
                "token {i}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn top_k_top_p_and_min_p_cut_the_tail() {
        let logits = [0.0f32, 1.0, 2.0, 0.5, 1.9];
        let picks = |p: SamplingParams| {
            let mut s = Sampler::new(p, &[]);
            let mut seen: Vec<u32> = (0..2000).map(|_| s.draw(&logits)).collect();
            seen.sort();
            seen.dedup();
            seen
        };
        assert_eq!(
            picks(SamplingParams {
                top_k: 2,
                ..params()
            }),
            [2, 4]
        );
        assert_eq!(
            picks(SamplingParams {
                top_p: 0.5,
                ..params()
            }),
            [2, 4]
        );
        assert_eq!(
            picks(SamplingParams {
                top_p: 1e-6,
                ..params()
            }),
            [2]
        );
        assert_eq!(
            picks(SamplingParams {
                min_p: 0.5,
                ..params()
            }),
            [2, 4]
        );
        assert_eq!(
            picks(SamplingParams {
                min_p: 0.3,
                ..params()
            }),
            [1, 2, 4]
        );
        assert_eq!(picks(params()), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn invalid_parameters_are_refused() {
        for p in [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                min_p: 2.0,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert_eq!(p.validate().unwrap_err().code, ErrorCode::InvalidArgument);
        }
    }
}
