//! Gated-DeltaNet value-head order: Hugging Face groups value heads by key head, llama.cpp's
//! converter tiles them.
//!
//! With `r = Hv / Hk`, HF head `h = k·r + j` (key head `k`, `0 ≤ j < r`) is stored at GGUF head
//! position `p = j·Hk + k`. Within a head the `d` channels keep their order, so channel
//! `p·d + i` of a GGUF axis holds HF channel `perm[p]·d + i`. The converter applies this to the
//! input columns of `ssm_out` (HF `linear_attn.out_proj`), which is why the imatrix of `ssm_out`
//! is in GGUF head order. With `Hv == Hk` the order is unchanged.

use crate::error::{Error, Result};

fn check(hk: usize, hv: usize) -> Result<usize> {
    if hk == 0 || hv == 0 || !hv.is_multiple_of(hk) {
        return Err(Error::Config {
            key: "linear_num_value_heads".to_string(),
            reason: format!("Hv = {hv} must be a positive multiple of Hk = {hk}"),
        });
    }
    Ok(hv / hk)
}

/// `perm[p]` = the HF value head stored at GGUF head position `p`.
pub fn gguf_to_hf_heads(hk: usize, hv: usize) -> Result<Vec<usize>> {
    let r = check(hk, hv)?;
    Ok((0..hv).map(|p| (p % hk) * r + p / hk).collect())
}

/// Reorders one vector of `Hv·d` channels from GGUF (tiled) head order to HF (grouped) head
/// order: `hf[perm[p]·d + i] = gguf[p·d + i]`.
pub fn value_channels_gguf_to_hf(gguf: &[f32], hk: usize, hv: usize, d: usize) -> Result<Vec<f32>> {
    let perm = gguf_to_hf_heads(hk, hv)?;
    if d == 0 || gguf.len() != hv * d {
        return Err(Error::Config {
            key: "linear_value_head_dim".to_string(),
            reason: format!("{} channels do not form {hv} heads of {d}", gguf.len()),
        });
    }
    let mut hf = vec![0.0; gguf.len()];
    for (p, &h) in perm.iter().enumerate() {
        hf[h * d..(h + 1) * d].copy_from_slice(&gguf[p * d..(p + 1) * d]);
    }
    Ok(hf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_match_the_documented_examples() {
        // imatrix.md: Hk = 2, Hv = 4 gives [0, 2, 1, 3]; Hk = 2, Hv = 6 gives [0, 3, 1, 4, 2, 5].
        assert_eq!(gguf_to_hf_heads(2, 4).unwrap(), vec![0, 2, 1, 3]);
        assert_eq!(gguf_to_hf_heads(2, 6).unwrap(), vec![0, 3, 1, 4, 2, 5]);
        assert_eq!(gguf_to_hf_heads(3, 3).unwrap(), vec![0, 1, 2]);
        assert!(gguf_to_hf_heads(2, 5).is_err());
        assert!(gguf_to_hf_heads(0, 4).is_err());
    }

    #[test]
    fn matches_the_converter_reshape_swap_flatten() {
        // The converter reshapes an HF axis to [Hk, r, d], swaps the first two axes and flattens.
        for (hk, hv, d) in [(2, 4, 3), (2, 6, 2), (16, 48, 4), (16, 64, 1), (4, 4, 5)] {
            let r = hv / hk;
            let hf: Vec<f32> = (0..hv * d).map(|i| i as f32).collect();
            let mut gguf = Vec::with_capacity(hf.len());
            for j in 0..r {
                for k in 0..hk {
                    gguf.extend_from_slice(&hf[(k * r + j) * d..(k * r + j + 1) * d]);
                }
            }
            assert_eq!(
                value_channels_gguf_to_hf(&gguf, hk, hv, d).unwrap(),
                hf,
                "{hk} {hv} {d}"
            );
        }
    }
}
