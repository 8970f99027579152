//! The legacy `.dat` imatrix (`llama-imatrix --output-format dat`). Little-endian, no header:
//!
//! ```text
//! i32 n_entries
//! n_entries × { i32 len, name[len] (UTF-8, no terminator), i32 ncall, i32 nval, f32 values[nval] }
//! i32 chunk_count, i32 len, dataset[len]          # trailer; absent in very old files
//! ```
//!
//! llama-imatrix stores `values = (in_sum2 / count) · ncall` with `ncall = ceil(max(counts) /
//! chunk_size)` (an expert with count 0 stores `1 · ncall`), so `values / ncall` is the mean of x²
//! that llama-quantize uses. The per-expert counts and the chunk size are not stored, and the
//! expert split of an expert stack is lost (`nval = n_expert · n_in`, expert-major).
//!
//! An entry is therefore read as a single-matrix [`Entry`] with `in_sum2 = values` and
//! `counts = [ncall]`: its importance (`values / ncall`) is exactly what llama-quantize uses.
//! Expert stacks come back flattened (`experts = 1`, `columns = n_expert · n_in`);
//! [`crate::Imatrix::hf_importance`] splits them using the model shape.

use std::path::Path;

use crate::error::{Error, Result};
use crate::imatrix::{Entry, Imatrix};

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let available = self.bytes.len() - self.pos;
        if n > available {
            return Err(Error::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                offset: self.pos as u64,
                needed: n as u64,
                available: available as u64,
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn i32(&mut self, what: &dyn Fn() -> String) -> Result<i32> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An i32 that must be at least `min`.
    fn count(&mut self, min: i32, what: &dyn Fn() -> String) -> Result<usize> {
        let at = self.pos;
        let n = self.i32(what)?;
        if n < min {
            return Err(Error::Malformed {
                path: self.path.to_path_buf(),
                what: what(),
                reason: format!("value {n} at offset {at}, expected at least {min}"),
            });
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.count(1, &|| format!("length of {}", what()))?;
        let at = self.pos;
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|e| Error::Malformed {
            path: self.path.to_path_buf(),
            what: what(),
            reason: format!("string at offset {at} is not UTF-8 ({e})"),
        })
    }
}

/// Parses a `.dat` imatrix held in memory; `path` only labels errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Imatrix> {
    let mut r = Reader {
        bytes,
        pos: 0,
        path,
    };
    let n_entries = r.count(0, &|| "entry count".to_string())?;
    let mut out = Imatrix::default();
    for i in 0..n_entries {
        let name = r.string(&|| format!("name of entry {i}"))?;
        let ncall = r.count(1, &|| format!("ncall of entry {name:?}"))?;
        let nval = r.count(1, &|| format!("nval of entry {name:?}"))?;
        let raw = r.take(nval.saturating_mul(4), &|| {
            format!("{nval} values of entry {name:?}")
        })?;
        let values: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let bad = |reason: String| Error::BadTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            reason,
        };
        if out.entries.contains_key(&name) {
            return Err(bad("appears twice".to_string()));
        }
        let entry = Entry::new(values, vec![ncall as f32], 1, nval).map_err(|e| match e {
            Error::InvalidEntry { reason, .. } => bad(reason),
            other => other,
        })?;
        out.entries.insert(name, entry);
    }
    if r.pos < bytes.len() {
        let chunks = r.count(0, &|| "trailing chunk count".to_string())?;
        out.chunk_count = Some(chunks as u32); // 0 ≤ chunks ≤ i32::MAX
        out.datasets
            .push(r.string(&|| "trailing dataset name".to_string())?);
        if r.pos < bytes.len() {
            return Err(Error::Malformed {
                path: path.to_path_buf(),
                what: "end of file".to_string(),
                reason: format!(
                    "{} unexpected bytes after the dataset name at offset {}",
                    bytes.len() - r.pos,
                    r.pos
                ),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("<memory>")
    }

    /// Encodes a .dat file: (name, ncall, values), then an optional (chunk_count, dataset).
    pub(crate) fn encode(
        entries: &[(&str, i32, Vec<f32>)],
        trailer: Option<(i32, &str)>,
    ) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(entries.len() as i32).to_le_bytes());
        for (name, ncall, values) in entries {
            b.extend_from_slice(&(name.len() as i32).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&ncall.to_le_bytes());
            b.extend_from_slice(&(values.len() as i32).to_le_bytes());
            for v in values {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        if let Some((chunks, dataset)) = trailer {
            b.extend_from_slice(&chunks.to_le_bytes());
            b.extend_from_slice(&(dataset.len() as i32).to_le_bytes());
            b.extend_from_slice(dataset.as_bytes());
        }
        b
    }

    #[test]
    fn reads_entries_and_trailer() {
        let bytes = encode(
            &[("a.weight", 4, vec![8.0, 4.0]), ("b.weight", 2, vec![1.0])],
            Some((4, "cal.txt")),
        );
        let m = parse(&bytes, p()).unwrap();
        assert_eq!(m.chunk_count, Some(4));
        assert_eq!(m.chunk_size, None);
        assert_eq!(m.datasets, vec!["cal.txt".to_string()]);
        assert_eq!(m.importance("a.weight").unwrap(), vec![vec![2.0, 1.0]]);
        assert_eq!(m.importance("b.weight").unwrap(), vec![vec![0.5]]);
    }

    #[test]
    fn trailer_is_optional() {
        let m = parse(&encode(&[("a", 1, vec![1.0])], None), p()).unwrap();
        assert_eq!(m.chunk_count, None);
        assert!(m.datasets.is_empty());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&[("a.weight", 4, vec![8.0, 4.0])], Some((4, "cal.txt")));
        // Cutting right after the entries is a legal trailer-less file.
        let entries_end = 4 + 4 + 8 + 4 + 4 + 8;
        for n in 0..bytes.len() {
            let r = parse(&bytes[..n], p());
            if n == entries_end {
                assert!(r.is_ok());
            } else {
                assert!(
                    matches!(r, Err(Error::Truncated { .. })),
                    "prefix {n}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn bad_counts_and_trailing_bytes_are_refused() {
        let err = parse(&encode(&[("a", 0, vec![1.0])], None), p()).unwrap_err();
        assert!(err.to_string().contains("ncall of entry \"a\""), "{err}");
        let err = parse(&(-1i32).to_le_bytes(), p()).unwrap_err();
        assert!(err.to_string().contains("entry count"), "{err}");
        let err = parse(
            &encode(&[("a", 1, vec![1.0]), ("a", 1, vec![1.0])], None),
            p(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let err = parse(&encode(&[("a", 1, vec![f32::INFINITY])], None), p()).unwrap_err();
        assert!(err.to_string().contains("\"a\""), "{err}");
        let mut bytes = encode(&[("a", 1, vec![1.0])], Some((1, "d")));
        bytes.push(0);
        let err = parse(&bytes, p()).unwrap_err();
        assert!(err.to_string().contains("unexpected bytes"), "{err}");
    }

    #[test]
    fn huge_nval_does_not_allocate() {
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_le_bytes());
        b.extend_from_slice(&1i32.to_le_bytes());
        b.push(b'a');
        b.extend_from_slice(&1i32.to_le_bytes());
        b.extend_from_slice(&i32::MAX.to_le_bytes());
        assert!(matches!(parse(&b, p()), Err(Error::Truncated { .. })));
    }
}
