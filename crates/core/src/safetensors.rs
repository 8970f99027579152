//! Safetensors files: the header read and checked by us (so that a truncated or corrupt file
//! gets an error naming the file and tensor), and each tensor read straight into the buffer of
//! an MLX array in the dtype the engine wants. Converting while reading (bf16 → float32 in
//! small pieces) means a weight is never held twice, so loading peaks at about the size of the
//! weights as the engine keeps them.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};
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
    /// Byte offset of the data in the file.
    pub offset: u64,
}

impl TensorInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
            let info = TensorInfo {
                dtype,
                shape,
                offset: 8 + header_len + begin,
            };
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

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| {
            Error::new(
                ErrorCode::MissingTensor,
                format!("tensor `{name}` is not in {}", self.path.display()),
            )
        })
    }

    /// Reads tensor `name` into a new MLX array, converted to `dtype` when both are floats.
    pub fn read(&self, name: &str, dtype: Option<Dtype>) -> Result<Array> {
        let rows = self.info(name)?.shape.first().copied().unwrap_or(1);
        self.read_rows(name, 0..rows, dtype)
    }

    /// Reads rows `rows` (along the first axis) of tensor `name`, so a converter can stream a
    /// tensor larger than it wants to hold (an embedding, a stack of experts).
    pub fn read_rows(
        &self,
        name: &str,
        rows: std::ops::Range<usize>,
        dtype: Option<Dtype>,
    ) -> Result<Array> {
        let info = self.info(name)?;
        let source = info.dtype;
        let target = match (dtype, float_kind(source)) {
            (Some(d), Some(_)) if float_kind_of(d).is_some() => d,
            _ => mlx_dtype(source),
        };
        let out_size = dtype_size(target);
        let (mut shape, row_len) = match info.shape.split_first() {
            Some((&all, rest)) => {
                if rows.start > rows.end || rows.end > all {
                    return fail(
                        ErrorCode::InvalidArgument,
                        format!(
                            "tensor `{name}` in {}: rows {rows:?} outside its {all}",
                            self.path.display()
                        ),
                    );
                }
                (vec![rows.len()], rest.iter().product::<usize>())
            }
            None => (vec![], 1),
        };
        shape.extend_from_slice(info.shape.get(1..).unwrap_or(&[]));
        let count: usize = shape.iter().product();
        let shape: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
        let mut file = File::open(&self.path).map_err(|e| {
            Error::new(
                ErrorCode::Io,
                format!("cannot open {}: {e}", self.path.display()),
            )
        })?;
        let in_size = source.size() as usize;
        let start = info.offset + (rows.start * row_len * in_size) as u64;
        file.seek(SeekFrom::Start(start))
            .map_err(|e| invalid(&self.path, format!("tensor `{name}`: {e}")))?;
        let same = mlx_dtype(source) == target;
        // Convert in pieces so the source bytes never need a tensor-sized buffer of their own.
        const PIECE: usize = 1 << 20;
        let mut raw = vec![0u8; if same { 0 } else { PIECE * in_size }];
        filled_array(&shape, target, count * out_size, |out| {
            let mut done = 0;
            while done < count {
                let n = PIECE.min(count - done);
                let dst = &mut out[done * out_size..(done + n) * out_size];
                let src: &mut [u8] = if same { dst } else { &mut raw[..n * in_size] };
                file.read_exact(src).map_err(|e| {
                    invalid(
                        &self.path,
                        format!("tensor `{name}`: reading its data: {e}"),
                    )
                })?;
                if !same {
                    convert(&raw[..n * in_size], source, dst, target);
                }
                done += n;
            }
            Ok(())
        })
    }
}

/// A new MLX array of `shape` whose `len` bytes of data `fill` writes.
///
/// MLX copies any buffer handed to it (its CPU allocator cannot adopt foreign memory), which
/// would hold every weight twice while it loads; writing into a buffer MLX itself allocated
/// avoids that. The array is fresh and referenced only here, and is filled before anything
/// reads it, so writing through MLX's data pointer is sound.
fn filled_array(
    shape: &[i32],
    dtype: Dtype,
    len: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<()>,
) -> Result<Array> {
    // `zeros` is a broadcast scalar; `contiguous` gives it a buffer of its own.
    let array = mlx_rs::ops::zeros_dtype(shape, dtype)?.contiguous()?;
    array.eval()?;
    let raw = array.as_ptr();
    // SAFETY: each accessor returns the start of the array's `len`-byte buffer for its dtype.
    let ptr = unsafe {
        match dtype {
            Dtype::Float32 => mlx_sys::mlx_array_data_float32(raw) as *mut u8,
            Dtype::Bfloat16 => mlx_sys::mlx_array_data_bfloat16(raw) as *mut u8,
            Dtype::Float16 => mlx_sys::mlx_array_data_float16(raw) as *mut u8,
            Dtype::Float64 => mlx_sys::mlx_array_data_float64(raw) as *mut u8,
            Dtype::Uint32 => mlx_sys::mlx_array_data_uint32(raw) as *mut u8,
            Dtype::Int32 => mlx_sys::mlx_array_data_int32(raw) as *mut u8,
            Dtype::Uint64 => mlx_sys::mlx_array_data_uint64(raw) as *mut u8,
            Dtype::Int64 => mlx_sys::mlx_array_data_int64(raw) as *mut u8,
            Dtype::Uint16 => mlx_sys::mlx_array_data_uint16(raw) as *mut u8,
            Dtype::Int16 => mlx_sys::mlx_array_data_int16(raw) as *mut u8,
            Dtype::Uint8 => mlx_sys::mlx_array_data_uint8(raw) as *mut u8,
            Dtype::Int8 => mlx_sys::mlx_array_data_int8(raw) as *mut u8,
            Dtype::Bool => mlx_sys::mlx_array_data_bool(raw) as *mut u8,
            _ => {
                return fail(
                    ErrorCode::InvalidSafetensors,
                    format!("cannot read {dtype:?} tensors"),
                )
            }
        }
    };
    if ptr.is_null() && len > 0 {
        return fail(ErrorCode::Mlx, "MLX allocated no buffer for a tensor");
    }
    let ptr = if len == 0 {
        std::ptr::NonNull::dangling().as_ptr()
    } else {
        ptr
    };
    // SAFETY: see above; the slice lives only for the call to `fill`, while `array` is alive.
    fill(unsafe { std::slice::from_raw_parts_mut(ptr, len) })?;
    Ok(array)
}

/// Whether a safetensors dtype is a float the engine converts, and which.
fn float_kind(d: StDtype) -> Option<Dtype> {
    match d {
        StDtype::F32 => Some(Dtype::Float32),
        StDtype::BF16 => Some(Dtype::Bfloat16),
        StDtype::F16 => Some(Dtype::Float16),
        _ => None,
    }
}

fn float_kind_of(d: Dtype) -> Option<Dtype> {
    matches!(d, Dtype::Float32 | Dtype::Bfloat16 | Dtype::Float16).then_some(d)
}

fn mlx_dtype(d: StDtype) -> Dtype {
    match d {
        StDtype::Bool => Dtype::Bool,
        StDtype::U8 => Dtype::Uint8,
        StDtype::I8 => Dtype::Int8,
        StDtype::U16 => Dtype::Uint16,
        StDtype::I16 => Dtype::Int16,
        StDtype::F16 => Dtype::Float16,
        StDtype::BF16 => Dtype::Bfloat16,
        StDtype::U32 => Dtype::Uint32,
        StDtype::I32 => Dtype::Int32,
        StDtype::F32 => Dtype::Float32,
        StDtype::U64 => Dtype::Uint64,
        StDtype::I64 => Dtype::Int64,
        StDtype::F64 => Dtype::Float64,
    }
}

fn dtype_size(d: Dtype) -> usize {
    match d {
        Dtype::Bool | Dtype::Uint8 | Dtype::Int8 => 1,
        Dtype::Uint16 | Dtype::Int16 | Dtype::Float16 | Dtype::Bfloat16 => 2,
        Dtype::Uint32 | Dtype::Int32 | Dtype::Float32 => 4,
        _ => 8,
    }
}

/// Little-endian float conversion between the three float formats.
fn convert(src: &[u8], from: StDtype, dst: &mut [u8], to: Dtype) {
    // The common case (bf16 checkpoints, float32 on the CPU) is a 16-bit shift; written as a
    // plain loop over fixed-size chunks so that it vectorizes.
    if from == StDtype::BF16 && to == Dtype::Float32 {
        for (out, inp) in dst.chunks_exact_mut(4).zip(src.chunks_exact(2)) {
            let bits = (u16::from_le_bytes([inp[0], inp[1]]) as u32) << 16;
            out.copy_from_slice(&bits.to_le_bytes());
        }
        return;
    }
    let value = |i: usize| -> f32 {
        match from {
            StDtype::F32 => f32::from_le_bytes(src[4 * i..4 * i + 4].try_into().unwrap()),
            StDtype::BF16 => {
                half::bf16::from_bits(u16::from_le_bytes([src[2 * i], src[2 * i + 1]])).to_f32()
            }
            StDtype::F16 => {
                half::f16::from_bits(u16::from_le_bytes([src[2 * i], src[2 * i + 1]])).to_f32()
            }
            _ => unreachable!("only floats are converted"),
        }
    };
    let n = src.len() / from.size() as usize;
    match to {
        Dtype::Float32 => {
            for (i, out) in dst.chunks_exact_mut(4).enumerate().take(n) {
                out.copy_from_slice(&value(i).to_le_bytes());
            }
        }
        Dtype::Bfloat16 => {
            for (i, out) in dst.chunks_exact_mut(2).enumerate().take(n) {
                out.copy_from_slice(&half::bf16::from_f32(value(i)).to_bits().to_le_bytes());
            }
        }
        Dtype::Float16 => {
            for (i, out) in dst.chunks_exact_mut(2).enumerate().take(n) {
                out.copy_from_slice(&half::f16::from_f32(value(i)).to_bits().to_le_bytes());
            }
        }
        _ => unreachable!("only floats are converted"),
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
                shape: vec![2, 3],
                offset: 8 + h.len() as u64,
            }
        );
        assert_eq!(f.metadata["format"], "pt");
    }

    #[test]
    fn reads_and_converts_tensors() {
        let values = [1.5f32, -2.25, 3.0e-3, 65504.0];
        let bf16: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        let codes: Vec<u8> = [7u32, 0xdead_beef]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let h = r#"{"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"q":{"dtype":"U32","shape":[2],"data_offsets":[8,16]}}"#;
        let mut bytes = file(h, 0);
        bytes.extend(&bf16);
        bytes.extend(&codes);
        let f = SafetensorsFile::open(&write("read.safetensors", &bytes)).unwrap();
        let w = f.read("w", Some(Dtype::Float32)).unwrap();
        assert_eq!((w.dtype(), w.shape()), (Dtype::Float32, &[2, 2][..]));
        let expected: Vec<f32> = values
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        assert_eq!(w.as_slice::<f32>(), expected);
        let w16 = f.read("w", Some(Dtype::Float16)).unwrap();
        assert_eq!(
            w16.as_dtype(Dtype::Float32).unwrap().as_slice::<f32>()[0],
            1.5
        );
        // Integer tensors are never converted.
        let q = f.read("q", Some(Dtype::Float32)).unwrap();
        assert_eq!(q.dtype(), Dtype::Uint32);
        assert_eq!(q.as_slice::<u32>(), [7, 0xdead_beef]);
        assert_eq!(
            f.read("nope", None).unwrap_err().code,
            ErrorCode::MissingTensor
        );
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
