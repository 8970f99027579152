//! Writes the output safetensors files as mlx-lm lays them out: tensors sorted by name, shards
//! of at most `max_shard_bytes` (`model.safetensors` when one suffices,
//! `model-0000i-of-0000n.safetensors` otherwise), `{"format": "mlx"}` metadata, and
//! `model.safetensors.index.json`.
//!
//! Every tensor's size is known before any data exists, so the headers are written first and
//! each tensor (or a slice of its rows) is written in place when it is ready: nothing has to
//! be held until the end.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use mlx_node_core::error::{Error, ErrorCode, Result};
use serde_json::{json, Map, Value};

/// The dtype of an output tensor, spelled as safetensors does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutDtype {
    U32,
    F32,
    F16,
    BF16,
}

impl OutDtype {
    pub fn name(self) -> &'static str {
        match self {
            OutDtype::U32 => "U32",
            OutDtype::F32 => "F32",
            OutDtype::F16 => "F16",
            OutDtype::BF16 => "BF16",
        }
    }

    pub fn size(self) -> u64 {
        match self {
            OutDtype::U32 | OutDtype::F32 => 4,
            OutDtype::F16 | OutDtype::BF16 => 2,
        }
    }
}

#[derive(Clone, Debug)]
pub struct OutTensor {
    pub name: String,
    pub dtype: OutDtype,
    pub shape: Vec<usize>,
}

impl OutTensor {
    pub fn bytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size()
    }
}

struct Placed {
    file: usize,
    /// Absolute offset of the tensor's data in its file.
    offset: u64,
    bytes: u64,
}

pub struct ShardWriter {
    dir: PathBuf,
    names: Vec<String>,
    files: Vec<File>,
    placed: HashMap<String, Placed>,
    index: Value,
}

/// Maps an I/O failure to a coded error; a full disk gets its own code.
pub fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(28) {
        Error::new(
            ErrorCode::NoSpace,
            format!(
                "no space left on the device while {what} {}",
                path.display()
            ),
        )
    } else {
        Error::new(ErrorCode::Io, format!("{what} {}: {e}", path.display()))
    }
}

impl ShardWriter {
    /// Lays out `tensors` in shards under `dir` and writes every header.
    pub fn create(
        dir: &Path,
        mut tensors: Vec<OutTensor>,
        max_shard_bytes: u64,
        parameters: u64,
    ) -> Result<ShardWriter> {
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let mut shards: Vec<Vec<&OutTensor>> = vec![Vec::new()];
        let mut size = 0;
        for t in &tensors {
            if size > 0 && size + t.bytes() > max_shard_bytes {
                shards.push(Vec::new());
                size = 0;
            }
            size += t.bytes();
            shards.last_mut().unwrap().push(t);
        }
        let n = shards.len();
        let names: Vec<String> = (0..n)
            .map(|i| {
                if n == 1 {
                    "model.safetensors".to_string()
                } else {
                    format!("model-{:05}-of-{n:05}.safetensors", i + 1)
                }
            })
            .collect();
        let mut files = Vec::new();
        let mut placed = HashMap::new();
        let mut weight_map = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            let mut header = Map::new();
            header.insert("__metadata__".into(), json!({"format": "mlx"}));
            let mut offset = 0u64;
            for t in shard {
                header.insert(
                    t.name.clone(),
                    json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, offset + t.bytes()]}),
                );
                offset += t.bytes();
            }
            let mut text = serde_json::to_string(&Value::Object(header)).expect("json");
            while !(text.len() + 8).is_multiple_of(8) {
                text.push(' ');
            }
            let data_start = 8 + text.len() as u64;
            let path = dir.join(&names[i]);
            let file = File::create(&path).map_err(|e| io_error(&path, "creating", e))?;
            let mut head = (text.len() as u64).to_le_bytes().to_vec();
            head.extend_from_slice(text.as_bytes());
            file.write_all_at(&head, 0)
                .map_err(|e| io_error(&path, "writing", e))?;
            let mut at = data_start;
            for t in shard {
                placed.insert(
                    t.name.clone(),
                    Placed {
                        file: i,
                        offset: at,
                        bytes: t.bytes(),
                    },
                );
                weight_map.insert(t.name.clone(), names[i].clone());
                at += t.bytes();
            }
            files.push(file);
        }
        let total: u64 = tensors.iter().map(|t| t.bytes()).sum();
        let index = json!({
            "metadata": {"total_size": total, "total_parameters": parameters},
            "weight_map": weight_map,
        });
        Ok(ShardWriter {
            dir: dir.to_path_buf(),
            names,
            files,
            placed,
            index,
        })
    }

    /// Writes `data` at byte `at` of tensor `name`'s data.
    pub fn write(&self, name: &str, at: u64, data: &[u8]) -> Result<()> {
        let p = self.placed.get(name).ok_or_else(|| {
            Error::new(
                ErrorCode::Internal,
                format!("tensor `{name}` was not planned"),
            )
        })?;
        if at + data.len() as u64 > p.bytes {
            return Err(Error::new(
                ErrorCode::Internal,
                format!(
                    "tensor `{name}`: writing {} bytes at {at} overruns its {} bytes",
                    data.len(),
                    p.bytes
                ),
            ));
        }
        let path = self.dir.join(&self.names[p.file]);
        self.files[p.file]
            .write_all_at(data, p.offset + at)
            .map_err(|e| io_error(&path, "writing", e))
    }

    /// Flushes the files and writes the index; returns the shard file names.
    pub fn finish(self) -> Result<Vec<String>> {
        for (file, name) in self.files.iter().zip(&self.names) {
            file.sync_all()
                .map_err(|e| io_error(&self.dir.join(name), "writing", e))?;
        }
        let path = self.dir.join("model.safetensors.index.json");
        let text = serde_json::to_string_pretty(&self.index).expect("json") + "\n";
        std::fs::write(&path, text).map_err(|e| io_error(&path, "writing", e))?;
        Ok(self.names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_node_core::safetensors::SafetensorsFile;

    fn t(name: &str, n: usize) -> OutTensor {
        OutTensor {
            name: name.into(),
            dtype: OutDtype::F32,
            shape: vec![n],
        }
    }

    #[test]
    fn shards_split_in_name_order_and_headers_parse() {
        let dir = std::env::temp_dir().join(format!("mlx-node-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tensors = vec![t("b", 10), t("a", 10), t("c", 3)];
        let w = ShardWriter::create(&dir, tensors, 80, 23).unwrap();
        w.write("a", 0, &[1u8; 40]).unwrap();
        w.write("b", 4, &[2u8; 36]).unwrap();
        assert!(w.write("c", 4, &[0u8; 12]).is_err(), "overrun refused");
        let names = w.finish().unwrap();
        assert_eq!(
            names,
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
        let first = SafetensorsFile::open(&dir.join(&names[0])).unwrap();
        assert_eq!(first.tensors.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            first.metadata.get("format").map(String::as_str),
            Some("mlx")
        );
        let index: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(index["weight_map"]["c"], names[1]);
        assert_eq!(index["metadata"]["total_size"], 92);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
