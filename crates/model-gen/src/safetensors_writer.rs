//! A streaming safetensors writer: the header is computed from the tensor specs alone, then each
//! tensor's bytes are produced straight into the file. Also the sharding plan and the
//! `model.safetensors.index.json` that goes with several shards.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tensors::TensorSpec;
use crate::weights;

/// Hugging Face's default `max_shard_size` for `save_pretrained`.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// One output file and the tensors (indices into the spec list) it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub file_name: String,
    pub tensors: Vec<usize>,
}

/// Splits the tensors, in model order, into files of at most `max_bytes` of data each (a
/// tensor larger than that gets a file of its own, as transformers does). One file is named
/// `model.safetensors`; several are `model-0000i-of-0000n.safetensors`.
pub fn plan_shards(specs: &[TensorSpec], max_bytes: u64) -> Vec<Shard> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current = Vec::new();
    let mut current_bytes = 0u64;
    for (i, t) in specs.iter().enumerate() {
        if !current.is_empty() && current_bytes + t.nbytes() > max_bytes {
            groups.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push(i);
        current_bytes += t.nbytes();
    }
    if !current.is_empty() || groups.is_empty() {
        groups.push(current);
    }
    let n = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(i, tensors)| Shard {
            file_name: if n == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
            },
            tensors,
        })
        .collect()
}

/// Data order inside one file: wider elements first, so every float32 tensor starts on a
/// 4-byte boundary (the data block itself starts 8-aligned) and can be mapped in place even
/// when an odd-length bf16 tensor precedes it in model order.
fn file_order(specs: &[TensorSpec], shard: &Shard) -> Vec<usize> {
    let mut order = shard.tensors.clone();
    order.sort_by_key(|&i| std::cmp::Reverse(specs[i].dtype.size()));
    order
}

/// The header bytes (length prefix excluded), padded with spaces to a multiple of 8.
fn header(specs: &[TensorSpec], order: &[usize]) -> Result<Vec<u8>> {
    let json_str = |s: &str| {
        serde_json::to_string(s).map_err(|source| Error::Json {
            what: format!("tensor name {s}"),
            source,
        })
    };
    let mut h = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut offset = 0u64;
    for &i in order {
        let t = &specs[i];
        let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        let end = offset + t.nbytes();
        h.push_str(&format!(
            r#",{}:{{"dtype":"{}","shape":[{}],"data_offsets":[{},{}]}}"#,
            json_str(&t.name)?,
            t.dtype.name(),
            dims.join(","),
            offset,
            end
        ));
        offset = end;
    }
    h.push('}');
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    Ok(h.into_bytes())
}

/// Counts what goes through, to prove each tensor produced exactly its declared size.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one shard file with random contents drawn from `seed`; returns its data size.
pub fn write_shard(path: &Path, specs: &[TensorSpec], shard: &Shard, seed: u64) -> Result<u64> {
    let order = file_order(specs, shard);
    let header = header(specs, &order)?;
    let file = File::create(path).map_err(Error::io("cannot create", path))?;
    let mut out = Counting {
        inner: BufWriter::with_capacity(1 << 20, file),
        written: 0,
    };
    let write_err = Error::io("cannot write", path);
    let result = (|| -> std::io::Result<()> {
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        for &i in &order {
            let t = &specs[i];
            let start = out.written;
            let mut rng = weights::tensor_rng(seed, &t.name);
            weights::write_values(t.init, t.dtype, t.numel(), &mut rng, &mut out)?;
            if out.written - start != t.nbytes() {
                return Err(std::io::Error::other(format!(
                    "tensor {} produced {} bytes instead of {}",
                    t.name,
                    out.written - start,
                    t.nbytes()
                )));
            }
        }
        out.flush()?;
        out.inner.get_ref().sync_all()
    })();
    result.map_err(write_err)?;
    Ok(order.iter().map(|&i| specs[i].nbytes()).sum())
}

/// `model.safetensors.index.json` in the layout transformers writes.
pub fn index_json(specs: &[TensorSpec], shards: &[Shard]) -> String {
    let mut weight_map = BTreeMap::new();
    for shard in shards {
        for &i in &shard.tensors {
            weight_map.insert(specs[i].name.clone(), shard.file_name.clone());
        }
    }
    let total: u64 = specs.iter().map(TensorSpec::nbytes).sum();
    let index = serde_json::json!({
        "metadata": { "total_size": total },
        "weight_map": weight_map,
    });
    let mut s = serde_json::to_string_pretty(&index).expect("a map of strings serialises");
    s.push('\n');
    s
}

/// Writes all shards (and the index when there are several) into `dir`; returns the files.
pub fn write_checkpoint(
    dir: &Path,
    specs: &[TensorSpec],
    seed: u64,
    max_shard_bytes: u64,
) -> Result<Vec<PathBuf>> {
    let shards = plan_shards(specs, max_shard_bytes);
    let mut files = Vec::new();
    for shard in &shards {
        let path = dir.join(&shard.file_name);
        write_shard(&path, specs, shard, seed)?;
        files.push(path);
    }
    if shards.len() > 1 {
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, index_json(specs, &shards))
            .map_err(Error::io("cannot write", &path))?;
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{DType, Init};

    fn spec(name: &str, n: usize, dtype: DType) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: vec![n],
            dtype,
            init: Init::Normal { std: 1.0 },
        }
    }

    #[test]
    fn shards_respect_the_limit_and_keep_order() {
        let specs = vec![
            spec("a", 10, DType::BF16),
            spec("b", 10, DType::BF16),
            spec("c", 100, DType::BF16),
            spec("d", 5, DType::BF16),
        ];
        let shards = plan_shards(&specs, 40);
        let groups: Vec<_> = shards.iter().map(|s| s.tensors.clone()).collect();
        assert_eq!(groups, vec![vec![0, 1], vec![2], vec![3]]);
        assert_eq!(shards[1].file_name, "model-00002-of-00003.safetensors");
        let one = plan_shards(&specs, 1 << 30);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].file_name, "model.safetensors");
    }

    #[test]
    fn header_is_padded_and_f32_comes_first() {
        let specs = vec![spec("odd", 3, DType::BF16), spec("f", 2, DType::F32)];
        let shards = plan_shards(&specs, u64::MAX);
        let order = file_order(&specs, &shards[0]);
        assert_eq!(order, vec![1, 0]);
        let h = header(&specs, &order).unwrap();
        assert_eq!(h.len() % 8, 0);
        let v: serde_json::Value = serde_json::from_slice(&h).unwrap();
        assert_eq!(v["f"]["data_offsets"], serde_json::json!([0, 8]));
        assert_eq!(v["odd"]["data_offsets"], serde_json::json!([8, 14]));
        assert_eq!(v["__metadata__"]["format"], "pt");
    }
}
