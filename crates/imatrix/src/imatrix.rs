//! The importance matrix itself: per weight, the sum of squared input activations per input
//! column (per expert for MoE expert stacks) and the token counts, plus the run's metadata.
//! Reading and writing the GGUF form live here; the legacy `.dat` form is in [`crate::dat`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gguf::{self, Tensor, Value};

/// `general.type` of an imatrix GGUF.
pub const GENERAL_TYPE_KEY: &str = "general.type";
/// The value of `general.type`.
pub const GENERAL_TYPE: &str = "imatrix";
/// Array of strings: calibration file names.
pub const DATASETS_KEY: &str = "imatrix.datasets";
/// u32: number of chunks processed.
pub const CHUNK_COUNT_KEY: &str = "imatrix.chunk_count";
/// u32: tokens per chunk (`n_ctx / n_parallel`).
pub const CHUNK_SIZE_KEY: &str = "imatrix.chunk_size";
/// Suffix of the per-column sum-of-squares tensor.
pub const IN_SUM2_SUFFIX: &str = ".in_sum2";
/// Suffix of the token-count tensor.
pub const COUNTS_SUFFIX: &str = ".counts";

/// One weight's statistics. `in_sum2` is row-major `[experts][columns]` (GGUF `ne =
/// [columns, experts]`); `counts[e]` is the number of tokens expert `e` saw (one value for a dense
/// weight). Invariants (checked by [`Entry::new`]): `experts ≥ 1`, `columns ≥ 1`,
/// `in_sum2.len() == experts · columns`, `counts.len() == experts`, every value finite and ≥ 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    in_sum2: Vec<f32>,
    counts: Vec<f32>,
    experts: usize,
    columns: usize,
}

impl Entry {
    /// Builds an entry, checking the invariants above.
    pub fn new(
        in_sum2: Vec<f32>,
        counts: Vec<f32>,
        experts: usize,
        columns: usize,
    ) -> Result<Self> {
        check(&in_sum2, &counts, experts, columns)
            .map_err(|reason| Error::InvalidEntry { name: None, reason })?;
        Ok(Self {
            in_sum2,
            counts,
            experts,
            columns,
        })
    }

    /// A dense (single-matrix) entry.
    pub fn dense(in_sum2: Vec<f32>, count: f32) -> Result<Self> {
        let columns = in_sum2.len();
        Self::new(in_sum2, vec![count], 1, columns)
    }

    /// Σ x² per input column, row-major `[experts][columns]`.
    pub fn in_sum2(&self) -> &[f32] {
        &self.in_sum2
    }

    /// Token count per expert (one value for a dense weight).
    pub fn counts(&self) -> &[f32] {
        &self.counts
    }

    /// Number of matrices (experts); 1 for a dense weight.
    pub fn experts(&self) -> usize {
        self.experts
    }

    /// Number of input columns of one matrix.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// The sums of expert `e`.
    pub fn expert_in_sum2(&self, e: usize) -> &[f32] {
        &self.in_sum2[e * self.columns..(e + 1) * self.columns]
    }

    /// Mean of x² per input column, per expert: `in_sum2[e][j] / counts[e]`. An expert that saw
    /// no token gets 1.0 in every column, as llama-quantize does.
    pub fn importance(&self) -> Vec<Vec<f32>> {
        (0..self.experts)
            .map(|e| {
                let c = self.counts[e];
                self.expert_in_sum2(e)
                    .iter()
                    .map(|&s| if c > 0.0 { s / c } else { 1.0 })
                    .collect()
            })
            .collect()
    }
}

fn check(in_sum2: &[f32], counts: &[f32], experts: usize, columns: usize) -> Result<(), String> {
    if experts == 0 || columns == 0 {
        return Err(format!(
            "{experts} experts × {columns} columns: both must be at least 1"
        ));
    }
    if experts.checked_mul(columns) != Some(in_sum2.len()) {
        return Err(format!(
            "in_sum2 has {} values, expected {experts} experts × {columns} columns",
            in_sum2.len()
        ));
    }
    if counts.len() != experts {
        return Err(format!("{} counts for {experts} experts", counts.len()));
    }
    if let Some((i, c)) = counts
        .iter()
        .enumerate()
        .find(|(_, c)| !(c.is_finite() && **c >= 0.0))
    {
        return Err(format!("counts[{i}] = {c}, expected a finite count ≥ 0"));
    }
    if let Some((i, s)) = in_sum2
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && **s >= 0.0))
    {
        return Err(format!(
            "in_sum2[{i}] = {s}, expected a finite sum of squares ≥ 0"
        ));
    }
    Ok(())
}

/// An importance matrix: entries keyed by GGUF weight name (`blk.0.attn_qkv.weight`), plus the
/// metadata llama-imatrix records.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Imatrix {
    pub entries: BTreeMap<String, Entry>,
    /// `imatrix.chunk_count` (GGUF) or the trailing chunk count (.dat); `None` if absent.
    pub chunk_count: Option<u32>,
    /// `imatrix.chunk_size` (GGUF); `None` if absent and always for `.dat` (which does not store it).
    pub chunk_size: Option<u32>,
    /// `imatrix.datasets` (GGUF) or the one trailing dataset name (.dat).
    pub datasets: Vec<String>,
    /// Any other metadata of a GGUF file, in file order, written back after the keys above.
    pub extra_metadata: Vec<(String, Value)>,
}

impl Imatrix {
    /// Reads either form, telling them apart by the GGUF magic.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        if bytes.starts_with(gguf::MAGIC) {
            Self::from_gguf_bytes(&bytes, path)
        } else {
            crate::dat::parse(&bytes, path)
        }
    }

    /// Reads a GGUF imatrix (`llama-imatrix --output-format gguf`).
    pub fn read_gguf(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_gguf_bytes(&read_file(path)?, path)
    }

    /// Reads a legacy `.dat` imatrix (`llama-imatrix --output-format dat`).
    pub fn read_dat(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        crate::dat::parse(&read_file(path)?, path)
    }

    /// Parses a GGUF imatrix held in memory; `path` only labels errors.
    pub fn from_gguf_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let file = gguf::parse(bytes, path)?;
        let mut out = Imatrix::default();
        let bad_meta = |key: &str, reason: String| Error::BadMetadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        for (key, value) in file.metadata {
            match key.as_str() {
                GENERAL_TYPE_KEY => match value.as_str() {
                    Some(GENERAL_TYPE) => {}
                    _ => {
                        return Err(bad_meta(
                            &key,
                            format!("expected the string \"imatrix\", found {value:?}"),
                        ))
                    }
                },
                DATASETS_KEY => match value {
                    Value::Array { items, .. } => {
                        for item in items {
                            match item {
                                Value::String(s) => out.datasets.push(s),
                                other => {
                                    return Err(bad_meta(
                                        &key,
                                        format!("expected strings, found {other:?}"),
                                    ));
                                }
                            }
                        }
                    }
                    other => {
                        return Err(bad_meta(
                            &key,
                            format!("expected an array of strings, found {other:?}"),
                        ))
                    }
                },
                CHUNK_COUNT_KEY | CHUNK_SIZE_KEY => {
                    let n = value
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| {
                            bad_meta(&key, format!("expected a u32, found {value:?}"))
                        })?;
                    if key == CHUNK_COUNT_KEY {
                        out.chunk_count = Some(n);
                    } else {
                        out.chunk_size = Some(n);
                    }
                }
                _ => out.extra_metadata.push((key, value)),
            }
        }

        let mut sums: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut counts: BTreeMap<String, Tensor> = BTreeMap::new();
        for t in file.tensors {
            if let Some(w) = t.name.strip_suffix(IN_SUM2_SUFFIX) {
                sums.insert(w.to_string(), t);
            } else if let Some(w) = t.name.strip_suffix(COUNTS_SUFFIX) {
                counts.insert(w.to_string(), t);
            } else {
                return Err(Error::BadTensor {
                    path: path.to_path_buf(),
                    tensor: t.name,
                    reason: format!(
                        "not an imatrix tensor (names end in {IN_SUM2_SUFFIX} or {COUNTS_SUFFIX})"
                    ),
                });
            }
        }
        if let Some(w) = counts.keys().find(|w| !sums.contains_key(*w)) {
            return Err(Error::BadTensor {
                path: path.to_path_buf(),
                tensor: format!("{w}{COUNTS_SUFFIX}"),
                reason: format!("has no matching {w}{IN_SUM2_SUFFIX}"),
            });
        }
        for (w, s) in sums {
            let Some(c) = counts.remove(&w) else {
                return Err(Error::BadTensor {
                    path: path.to_path_buf(),
                    tensor: s.name,
                    reason: format!("has no matching {w}{COUNTS_SUFFIX}"),
                });
            };
            let entry = entry_from_tensors(&s, &c).map_err(|reason| Error::BadTensor {
                path: path.to_path_buf(),
                tensor: s.name.clone(),
                reason,
            })?;
            out.entries.insert(w, entry);
        }
        Ok(out)
    }

    /// The entry of a GGUF weight name.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// Adds or replaces an entry.
    pub fn insert(&mut self, name: impl Into<String>, entry: Entry) -> Option<Entry> {
        self.entries.insert(name.into(), entry)
    }

    /// Per-expert mean of x² per input column of `name` (see [`Entry::importance`]).
    pub fn importance(&self, name: &str) -> Option<Vec<Vec<f32>>> {
        self.entries.get(name).map(Entry::importance)
    }

    /// The GGUF metadata this matrix is written with: `general.type`, `imatrix.datasets`,
    /// `imatrix.chunk_count`, `imatrix.chunk_size` (in llama-imatrix's order; the last two only
    /// when known), then [`Imatrix::extra_metadata`].
    pub fn gguf_metadata(&self) -> Vec<(String, Value)> {
        let mut m = vec![
            (
                GENERAL_TYPE_KEY.to_string(),
                Value::String(GENERAL_TYPE.to_string()),
            ),
            (
                DATASETS_KEY.to_string(),
                Value::string_array(self.datasets.iter().cloned()),
            ),
        ];
        if let Some(n) = self.chunk_count {
            m.push((CHUNK_COUNT_KEY.to_string(), Value::U32(n)));
        }
        if let Some(n) = self.chunk_size {
            m.push((CHUNK_SIZE_KEY.to_string(), Value::U32(n)));
        }
        m.extend(self.extra_metadata.iter().cloned());
        m
    }

    /// The GGUF imatrix bytes, laid out as llama-imatrix writes them: entries sorted by name, for
    /// each `<name>.in_sum2` (`ne = [columns]`, or `[columns, experts]`) then `<name>.counts`
    /// (`ne = [1]`, or `[1, experts]`), F32, 32-byte aligned.
    pub fn to_gguf_bytes(&self) -> Result<Vec<u8>> {
        const RESERVED: [&str; 4] = [
            GENERAL_TYPE_KEY,
            DATASETS_KEY,
            CHUNK_COUNT_KEY,
            CHUNK_SIZE_KEY,
        ];
        if let Some((k, _)) = self
            .extra_metadata
            .iter()
            .find(|(k, _)| RESERVED.contains(&k.as_str()))
        {
            return Err(Error::InvalidEntry {
                name: Some(k.clone()),
                reason: "this key is written from the typed fields; remove it from extra_metadata"
                    .to_string(),
            });
        }
        let mut tensors = Vec::with_capacity(2 * self.entries.len());
        for (name, e) in &self.entries {
            let (sum_dims, count_dims) = if e.experts == 1 {
                (vec![e.columns as u64], vec![1])
            } else {
                (
                    vec![e.columns as u64, e.experts as u64],
                    vec![1, e.experts as u64],
                )
            };
            tensors.push(Tensor {
                name: format!("{name}{IN_SUM2_SUFFIX}"),
                dims: sum_dims,
                data: e.in_sum2.clone(),
            });
            tensors.push(Tensor {
                name: format!("{name}{COUNTS_SUFFIX}"),
                dims: count_dims,
                data: e.counts.clone(),
            });
        }
        gguf::serialize(&self.gguf_metadata(), &tensors)
    }

    /// Writes the GGUF imatrix to `path` (see [`Imatrix::to_gguf_bytes`]).
    pub fn write_gguf(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_gguf_bytes()?;
        std::fs::write(path, bytes).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Pairs `W.in_sum2` (`ne = [n_in]` or `[n_in, n_mat]`) with `W.counts` (`n_mat` values, `ne =
/// [1]`, `[1, n_mat]` or `[n_mat]`).
fn entry_from_tensors(sums: &Tensor, counts: &Tensor) -> Result<Entry, String> {
    let (columns, experts) = match sums.dims[..] {
        [n] => (n, 1),
        [n, m] => (n, m),
        _ => {
            return Err(format!(
                "shape {:?}: expected [n_in] or [n_in, n_expert]",
                sums.dims
            ))
        }
    };
    let counts_ok = match counts.dims[..] {
        [m] => m == experts,
        [1, m] => m == experts,
        _ => false,
    };
    if !counts_ok {
        return Err(format!(
            "counts shape {:?} does not match in_sum2 shape {:?} (expected [1, {experts}] or [{experts}])",
            counts.dims, sums.dims
        ));
    }
    let (Ok(columns), Ok(experts)) = (usize::try_from(columns), usize::try_from(experts)) else {
        return Err(format!("shape {:?} too large", sums.dims));
    };
    check(&sums.data, &counts.data, experts, columns)?;
    Ok(Entry {
        in_sum2: sums.data.clone(),
        counts: counts.data.clone(),
        experts,
        columns,
    })
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: PathBuf::from(path),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("<memory>")
    }

    fn sample() -> Imatrix {
        let mut m = Imatrix {
            chunk_count: Some(3),
            chunk_size: Some(4),
            datasets: vec!["a.txt".to_string(), "b.txt".to_string()],
            ..Default::default()
        };
        m.insert(
            "blk.0.ffn_up.weight",
            Entry::dense(vec![4.0, 8.0, 0.0], 4.0).unwrap(),
        );
        m.insert(
            "blk.0.ffn_up_exps.weight",
            Entry::new(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![2.0, 0.0], 2, 3).unwrap(),
        );
        m
    }

    #[test]
    fn importance_divides_per_expert_and_defaults_empty_experts_to_one() {
        let m = sample();
        assert_eq!(
            m.importance("blk.0.ffn_up.weight").unwrap(),
            vec![vec![1.0, 2.0, 0.0]]
        );
        assert_eq!(
            m.importance("blk.0.ffn_up_exps.weight").unwrap(),
            vec![vec![0.5, 1.0, 1.5], vec![1.0, 1.0, 1.0]]
        );
        assert!(m.importance("nope").is_none());
    }

    #[test]
    fn gguf_round_trip_in_memory() {
        let mut m = sample();
        m.extra_metadata
            .push(("general.name".to_string(), Value::String("x".to_string())));
        let bytes = m.to_gguf_bytes().unwrap();
        let back = Imatrix::from_gguf_bytes(&bytes, p()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.to_gguf_bytes().unwrap(), bytes);
    }

    #[test]
    fn entry_invariants_are_checked() {
        assert!(Entry::new(vec![1.0; 6], vec![1.0], 2, 3).is_err());
        assert!(Entry::new(vec![1.0; 5], vec![1.0, 1.0], 2, 3).is_err());
        assert!(Entry::new(vec![], vec![], 0, 0).is_err());
        assert!(Entry::dense(vec![1.0, -1.0], 1.0).is_err());
        assert!(Entry::dense(vec![1.0, f32::NAN], 1.0).is_err());
        assert!(Entry::dense(vec![1.0], -2.0).is_err());
        assert!(Entry::dense(vec![1.0], 0.0).is_ok());
    }

    fn with_tensors(tensors: Vec<Tensor>, metadata: Vec<(String, Value)>) -> Result<Imatrix> {
        let bytes = gguf::serialize(&metadata, &tensors).unwrap();
        Imatrix::from_gguf_bytes(&bytes, p())
    }

    fn t(name: &str, dims: Vec<u64>, data: Vec<f32>) -> Tensor {
        Tensor {
            name: name.to_string(),
            dims,
            data,
        }
    }

    #[test]
    fn unpaired_and_misshapen_tensors_are_refused_by_name() {
        let err = with_tensors(vec![t("w.in_sum2", vec![2], vec![1.0, 2.0])], vec![]).unwrap_err();
        assert!(
            err.to_string().contains("w.in_sum2") && err.to_string().contains("w.counts"),
            "{err}"
        );

        let err = with_tensors(vec![t("w.counts", vec![1], vec![1.0])], vec![]).unwrap_err();
        assert!(err.to_string().contains("\"w.counts\""), "{err}");

        let err = with_tensors(vec![t("w.weight", vec![1], vec![1.0])], vec![]).unwrap_err();
        assert!(err.to_string().contains("not an imatrix tensor"), "{err}");

        let err = with_tensors(
            vec![
                t("w.in_sum2", vec![2, 2], vec![1.0; 4]),
                t("w.counts", vec![1, 3], vec![1.0; 3]),
            ],
            vec![],
        )
        .unwrap_err();
        assert!(err.to_string().contains("counts shape"), "{err}");

        let err = with_tensors(
            vec![
                t("w.in_sum2", vec![1], vec![1.0]),
                t("w.counts", vec![1], vec![-1.0]),
            ],
            vec![],
        )
        .unwrap_err();
        assert!(err.to_string().contains("counts[0] = -1"), "{err}");
    }

    #[test]
    fn wrong_general_type_and_bad_metadata_types_are_refused() {
        let ok = vec![
            t("w.in_sum2", vec![1], vec![1.0]),
            t("w.counts", vec![1], vec![1.0]),
        ];
        let err = with_tensors(
            ok.clone(),
            vec![(
                GENERAL_TYPE_KEY.to_string(),
                Value::String("model".to_string()),
            )],
        )
        .unwrap_err();
        assert!(err.to_string().contains("general.type"), "{err}");
        let err = with_tensors(
            ok.clone(),
            vec![(CHUNK_COUNT_KEY.to_string(), Value::String("3".to_string()))],
        )
        .unwrap_err();
        assert!(err.to_string().contains(CHUNK_COUNT_KEY), "{err}");
        let err =
            with_tensors(ok.clone(), vec![(DATASETS_KEY.to_string(), Value::U32(1))]).unwrap_err();
        assert!(err.to_string().contains(DATASETS_KEY), "{err}");
        // Absent keys are accepted (an older or foreign writer).
        let m = with_tensors(ok, vec![]).unwrap();
        assert_eq!((m.chunk_count, m.chunk_size), (None, None));
    }

    #[test]
    fn reserved_keys_in_extra_metadata_are_refused() {
        let mut m = sample();
        m.extra_metadata
            .push((CHUNK_SIZE_KEY.to_string(), Value::U32(1)));
        assert!(m.to_gguf_bytes().is_err());
    }
}
