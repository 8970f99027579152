//! Safetensors files: the header read and checked by us (so that a truncated or corrupt file
//! gets an error naming the file and tensor), the data loaded lazily by MLX (each tensor is
//! read from the file when it is first evaluated, so nothing is held twice).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use mlx_rs::Array;
use serde_json::Value;

use crate::error::{fail, Error, ErrorCode, Result};

/// Header entries larger than this are not a safetensors header (the format caps it at 100 MB).
const MAX_HEADER: u64 = 100 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StDtype {
    Bool,
    U8,
    I8,
    U16,
    I16,
    F16,
    BF16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
}

impl StDtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => StDtype::Bool,
            "U8" => StDtype::U8,
            "I8" => StDtype::I8,
            "U16" => StDtype::U16,
            "I16" => StDtype::I16,
            "F16" => StDtype::F16,
            "BF16" => StDtype::BF16,
            "U32" => StDtype::U32,
            "I32" => StDtype::I32,
            "F32" => StDtype::F32,
            "U64" => StDtype::U64,
            "I64" => StDtype::I64,
            "F64" => StDtype::F64,
            _ => return None,
        })
    }

    pub fn size(self) -> u64 {
        match self {
            StDtype::Bool | StDtype::U8 | StDtype::I8 => 1,
            StDtype::U16 | StDtype::I16 | StDtype::F16 | StDtype::BF16 => 2,
            StDtype::U32 | StDtype::I32 | StDtype::F32 => 4,
            StDtype::U64 | StDtype::I64 | StDtype::F64 => 8,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub dtype: StDtype,
    pub shape: Vec<usize>,
}

/// The checked header of one safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: HashMap<String, String>,
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::InvalidSafetensors,
        format!("{}: {what}", path.display()),
    )
}

impl SafetensorsFile {
    /// Reads and checks the header: its length, its JSON, every tensor's dtype, shape and byte
    /// range against the file's size.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| {
            Error::new(
                ErrorCode::Io,
                format!("cannot open {}: {e}", path.display()),
            )
        })?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::new(ErrorCode::Io, format!("{}: {e}", path.display())))?
            .len();
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes).map_err(|_| {
            invalid(
                path,
                format!("only {file_len} bytes, too short for a header"),
            )
        })?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER || header_len > file_len - 8 {
            return Err(invalid(
                path,
                format!("header length {header_len} exceeds the file ({file_len} bytes)"),
            ));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| invalid(path, format!("cannot read the header: {e}")))?;
        let json: Value = serde_json::from_slice(&header)
            .map_err(|e| invalid(path, format!("header is not valid JSON: {e}")))?;
        let Value::Object(entries) = json else {
            return Err(invalid(path, "header is not a JSON object"));
        };
        let data_len = file_len - 8 - header_len;

        let mut tensors = BTreeMap::new();
        let mut metadata = HashMap::new();
        for (name, entry) in entries {
            if name == "__metadata__" {
                if let Value::Object(m) = entry {
                    for (k, v) in m {
                        if let Value::String(s) = v {
                            metadata.insert(k, s);
                        }
                    }
                }
                continue;
            }
            let tensor = |what: &str| invalid(path, format!("tensor `{name}`: {what}"));
            let dtype_name = entry["dtype"].as_str().ok_or_else(|| tensor("no dtype"))?;
            let dtype = StDtype::parse(dtype_name)
                .ok_or_else(|| tensor(&format!("unknown dtype `{dtype_name}`")))?;
            let shape = entry["shape"]
                .as_array()
                .and_then(|dims| {
                    dims.iter()
                        .map(|d| d.as_u64().map(|d| d as usize))
                        .collect()
                })
                .ok_or_else(|| tensor("shape is not a list of sizes"))?;
            let offsets: Option<Vec<u64>> = entry["data_offsets"]
                .as_array()
                .and_then(|o| o.iter().map(Value::as_u64).collect());
            let Some([begin, end]) = offsets.as_deref() else {
                return Err(tensor("data_offsets is not [begin, end]"));
            };
            let (begin, end) = (*begin, *end);
            let info = TensorInfo { dtype, shape };
            let expected = info.shape.iter().product::<usize>() as u64 * dtype.size();
            if begin > end || end > data_len {
                return Err(tensor(&format!(
                    "data_offsets [{begin}, {end}] run past the {data_len} data bytes (truncated file?)"
                )));
            }
            if end - begin != expected {
                return Err(tensor(&format!(
                    "{} bytes for shape {:?} of {dtype_name}, expected {expected}",
                    end - begin,
                    info.shape
                )));
            }
            tensors.insert(name, info);
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            tensors,
            metadata,
        })
    }

    /// Every tensor of the file as a lazy MLX array (read on first evaluation).
    pub fn load(&self) -> Result<HashMap<String, Array>> {
        Array::load_safetensors(&self.path)
            .map_err(|e| invalid(&self.path, format!("MLX could not load it: {e}")))
    }
}

/// The safetensors files of a model folder: `model.safetensors.index.json`'s shards when the
/// index exists, else every `*.safetensors` file in the folder.
pub fn model_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| {
            Error::new(
                ErrorCode::Io,
                format!("cannot read {}: {e}", index.display()),
            )
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| {
            Error::new(
                ErrorCode::InvalidSafetensors,
                format!("{} is not valid JSON: {e}", index.display()),
            )
        })?;
        let Some(map) = json["weight_map"].as_object() else {
            return fail(
                ErrorCode::InvalidSafetensors,
                format!("{} has no `weight_map` object", index.display()),
            );
        };
        let mut files: Vec<PathBuf> = Vec::new();
        for shard in map.values() {
            let Some(name) = shard.as_str() else { continue };
            let path = dir.join(name);
            if !files.contains(&path) {
                if !path.is_file() {
                    return fail(
                        ErrorCode::Io,
                        format!(
                            "{} names {name}, which is not in {}",
                            index.display(),
                            dir.display()
                        ),
                    );
                }
                files.push(path);
            }
        }
        files.sort();
        return Ok(files);
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::new(ErrorCode::Io, format!("cannot read {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return fail(
            ErrorCode::Io,
            format!("{} has no .safetensors files", dir.display()),
        );
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mlx-node-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data));
        bytes
    }

    fn error(name: &str, bytes: &[u8]) -> String {
        let e = SafetensorsFile::open(&write(name, bytes)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidSafetensors, "{}", e.message);
        assert!(e.message.contains(name), "{}", e.message);
        e.message
    }

    #[test]
    fn reads_a_valid_header() {
        let h = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}}"#;
        let f = SafetensorsFile::open(&write("ok.safetensors", &file(h, 12))).unwrap();
        assert_eq!(
            f.tensors["a"],
            TensorInfo {
                dtype: StDtype::BF16,
                shape: vec![2, 3]
            }
        );
        assert_eq!(f.metadata["format"], "pt");
    }

    #[test]
    fn rejects_corrupt_files_with_the_reason() {
        assert!(error("short.safetensors", &[1, 2, 3]).contains("too short"));
        let mut huge = file("{}", 0);
        huge[..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(error("len.safetensors", &huge).contains("header length 1000"));
        assert!(error("json.safetensors", &file("{not json", 0)).contains("not valid JSON"));
        let h = r#"{"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}}"#;
        assert!(error("dtype.safetensors", &file(h, 2)).contains("unknown dtype `Q4`"));
        let h = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let m = error("trunc.safetensors", &file(h, 8));
        assert!(m.contains("`w`") && m.contains("truncated"), "{m}");
        let h = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#;
        assert!(error("size.safetensors", &file(h, 16)).contains("expected 12"));
    }
}
