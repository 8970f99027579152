//! The GGUF container, as far as importance matrices need it: little-endian GGUF v2/v3, metadata
//! key/value pairs of every GGUF value type (read generically, written back unchanged), and F32
//! tensors.
//!
//! Layout (all little-endian):
//! ```text
//! "GGUF"  u32 version  u64 n_tensors  u64 n_kv
//! n_kv ×      { string key, u32 value_type, value }
//! n_tensors × { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
//! zero padding to `general.alignment` (default 32)
//! tensor data; each tensor starts at a multiple of the alignment, measured from the data start
//! ```
//! A string is `u64 length` + UTF-8 bytes (no terminator); an array is `u32 element_type`,
//! `u64 count`, then the elements (arrays may nest). llama.cpp's writer also pads the data
//! after the last tensor up to the alignment, and so does [`serialize`].

use std::path::Path;

use crate::error::{Error, Result};

/// The first four bytes of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The version [`serialize`] writes (the one llama.cpp writes).
pub const VERSION: u32 = 3;
/// Data alignment when a file has no `general.alignment` key.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// The metadata key that overrides [`DEFAULT_ALIGNMENT`].
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The only tensor type imatrix files use (`GGML_TYPE_F32`).
pub const GGML_TYPE_F32: u32 = 0;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// ggml's `GGML_MAX_NAME`: tensor names must be shorter than this (63 bytes at most).
pub const MAX_TENSOR_NAME: usize = 64;

/// Arrays of arrays are legal GGUF; this bounds the recursion on hostile input.
const MAX_ARRAY_DEPTH: usize = 8;

/// GGUF metadata value types (`enum gguf_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    /// The type for a GGUF type id, `None` for ids GGUF does not define.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// The GGUF type id.
    pub fn id(self) -> u32 {
        match self {
            Self::U8 => 0,
            Self::I8 => 1,
            Self::U16 => 2,
            Self::I16 => 3,
            Self::U32 => 4,
            Self::I32 => 5,
            Self::F32 => 6,
            Self::Bool => 7,
            Self::String => 8,
            Self::Array => 9,
            Self::U64 => 10,
            Self::I64 => 11,
            Self::F64 => 12,
        }
    }

    /// Smallest encoded size of one value of this type (used to bound counts before allocating).
    fn min_size(self) -> u64 {
        match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 | Self::String => 8,
            Self::Array => 12,
        }
    }
}

/// One GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// `elem` is kept so that empty arrays round-trip with their element type.
    Array {
        elem: ValueType,
        items: Vec<Value>,
    },
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The GGUF type of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array { .. } => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// The value as a non-negative integer, for any integer type; `None` otherwise.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// An array of strings (`["a", "b"]`), as written for `imatrix.datasets`.
    pub fn string_array<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Self {
        Self::Array {
            elem: ValueType::String,
            items: items.into_iter().map(|s| Self::String(s.into())).collect(),
        }
    }
}

/// One F32 tensor with its GGUF `ne` (fastest-varying dimension first).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub data: Vec<f32>,
}

/// A parsed GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufFile {
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Data alignment in effect (`general.alignment` or 32).
    pub alignment: u32,
    /// Tensors in file order.
    pub tensors: Vec<Tensor>,
}

impl GgufFile {
    /// The metadata value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Name of a ggml tensor type, for messages.
fn ggml_type_name(t: u32) -> &'static str {
    match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        30 => "BF16",
        _ => "another type",
    }
}

/// Bounds-checked little-endian reader over a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let available = self.remaining() as u64;
        if n > available {
            return Err(Error::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                offset: self.pos as u64,
                needed: n,
                available,
            });
        }
        let n = n as usize;
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let b = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let start = self.pos as u64;
        let len = self.u64(&|| format!("length of {}", what()))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| Error::Malformed {
            path: self.path.to_path_buf(),
            what: what(),
            reason: format!("string at offset {start} is not UTF-8 ({e})"),
        })
    }

    /// Checks that `count` items of at least `min_size` bytes each can still fit, so a hostile
    /// count cannot make us allocate or loop for nothing.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<()> {
        let available = self.remaining() as u64;
        match count.checked_mul(min_size) {
            Some(need) if need <= available => Ok(()),
            _ => Err(Error::Truncated {
                path: self.path.to_path_buf(),
                what: format!("{count} {what}"),
                offset: self.pos as u64,
                needed: count.saturating_mul(min_size),
                available,
            }),
        }
    }

    fn value(&mut self, key: &str, ty: ValueType, depth: usize) -> Result<Value> {
        let what = || format!("value of metadata key {key:?}");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(&what)?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(&what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>(&what)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(Error::BadMetadata {
                            path: self.path.to_path_buf(),
                            key: key.to_string(),
                            reason: format!("bool byte at offset {at} is {b}, expected 0 or 1"),
                        })
                    }
                }
            }
            ValueType::String => Value::String(self.string(&what)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::BadMetadata {
                        path: self.path.to_path_buf(),
                        key: key.to_string(),
                        reason: format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
                    });
                }
                let at = self.pos as u64;
                let elem_id =
                    self.u32(&|| format!("array element type of metadata key {key:?}"))?;
                let elem = ValueType::from_id(elem_id).ok_or_else(|| Error::UnknownValueType {
                    path: self.path.to_path_buf(),
                    key: key.to_string(),
                    type_id: elem_id,
                    offset: at,
                })?;
                let count = self.u64(&|| format!("array length of metadata key {key:?}"))?;
                self.check_count(
                    count,
                    elem.min_size(),
                    &format!("array elements of metadata key {key:?}"),
                )?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(key, elem, depth + 1)?);
                }
                Value::Array { elem, items }
            }
        })
    }
}

/// Parses a GGUF file held in memory. `path` only labels errors. Every tensor must be F32.
pub fn parse(bytes: &[u8], path: &Path) -> Result<GgufFile> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        path,
    };
    let magic = c.array::<4>(&|| "GGUF magic".to_string())?;
    if &magic != MAGIC {
        return Err(Error::BadMagic {
            path: path.to_path_buf(),
            found: format!("{:?}", String::from_utf8_lossy(&magic)),
        });
    }
    let version = c.u32(&|| "GGUF version".to_string())?;
    if version != 2 && version != 3 {
        let hint = if matches!(version.swap_bytes(), 2 | 3) {
            "this looks like a big-endian GGUF; only little-endian files are supported"
        } else if version == 1 {
            "GGUF v1 used 32-bit counts; only versions 2 and 3 are supported"
        } else {
            "only versions 2 and 3 are supported"
        };
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
            hint,
        });
    }
    let n_tensors = c.u64(&|| "tensor count".to_string())?;
    let n_kv = c.u64(&|| "metadata count".to_string())?;
    // A key is at least a length (8) plus a type (4) plus one byte of value.
    c.check_count(n_kv, 13, "metadata entries")?;

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = c.string(&|| format!("key of metadata entry {i}"))?;
        if metadata.iter().any(|(k, _)| *k == key) {
            return Err(Error::BadMetadata {
                path: path.to_path_buf(),
                key,
                reason: "appears twice".to_string(),
            });
        }
        let at = c.pos as u64;
        let type_id = c.u32(&|| format!("value type of metadata key {key:?}"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| Error::UnknownValueType {
            path: path.to_path_buf(),
            key: key.clone(),
            type_id,
            offset: at,
        })?;
        let value = c.value(&key, ty, 0)?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if a.is_power_of_two() => *a,
        Some((_, v)) => {
            return Err(Error::BadMetadata {
                path: path.to_path_buf(),
                key: ALIGNMENT_KEY.to_string(),
                reason: format!("must be a u32 power of two, found {v:?}"),
            })
        }
    };

    // A tensor info is at least name length (8) + n_dims (4) + type (4) + offset (8).
    c.check_count(n_tensors, 24, "tensor infos")?;
    struct Info {
        name: String,
        dims: Vec<u64>,
        offset: u64,
        elements: u64,
    }
    let mut infos: Vec<Info> = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.string(&|| format!("name of tensor {i}"))?;
        if infos.iter().any(|t| t.name == name) {
            return Err(Error::BadTensor {
                path: path.to_path_buf(),
                tensor: name,
                reason: "appears twice".to_string(),
            });
        }
        let what = |field: &str| {
            let name = name.clone();
            let field = field.to_string();
            move || format!("{field} of tensor {name:?}")
        };
        let n_dims = c.u32(&what("dimension count"))?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(Error::BadTensor {
                path: path.to_path_buf(),
                tensor: name,
                reason: format!("{n_dims} dimensions, expected 1..={MAX_DIMS}"),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&what("shape"))?);
        }
        let ggml_type = c.u32(&what("type"))?;
        let offset = c.u64(&what("data offset"))?;
        if ggml_type != GGML_TYPE_F32 {
            return Err(Error::BadTensor {
                path: path.to_path_buf(),
                tensor: name,
                reason: format!(
                    "ggml type {ggml_type} ({}), imatrix tensors must be F32 (type 0)",
                    ggml_type_name(ggml_type)
                ),
            });
        }
        let elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let Some(elements) = elements.filter(|e| e.checked_mul(4).is_some()) else {
            return Err(Error::BadTensor {
                path: path.to_path_buf(),
                tensor: name,
                reason: format!("shape {dims:?} overflows"),
            });
        };
        if offset % u64::from(alignment) != 0 {
            return Err(Error::BadTensor {
                path: path.to_path_buf(),
                tensor: name,
                reason: format!(
                    "data offset {offset} is not a multiple of the alignment {alignment}"
                ),
            });
        }
        infos.push(Info {
            name,
            dims,
            offset,
            elements,
        });
    }

    let data_start = align_up(c.pos as u64, u64::from(alignment));
    let file_len = bytes.len() as u64;
    let mut tensors = Vec::with_capacity(infos.len());
    for info in infos {
        let nbytes = info.elements * 4;
        let start = data_start.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(nbytes));
        let (start, end) = match (start, end) {
            (Some(s), Some(e)) if e <= file_len => (s as usize, e as usize),
            _ => {
                return Err(Error::Truncated {
                    path: path.to_path_buf(),
                    what: format!(
                        "data of tensor {:?} ({} F32 values)",
                        info.name, info.elements
                    ),
                    offset: data_start.saturating_add(info.offset),
                    needed: nbytes,
                    available: file_len.saturating_sub(data_start.saturating_add(info.offset)),
                })
            }
        };
        let data = bytes[start..end]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.push(Tensor {
            name: info.name,
            dims: info.dims,
            data,
        });
    }

    Ok(GgufFile {
        version,
        metadata,
        alignment,
        tensors,
    })
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, key: &str, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array { elem, items } => {
            out.extend_from_slice(&elem.id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                if item.value_type() != *elem {
                    return Err(Error::InvalidEntry {
                        name: Some(key.to_string()),
                        reason: format!(
                            "metadata array declared as {elem:?} holds a {:?} element",
                            item.value_type()
                        ),
                    });
                }
                put_value(out, key, item)?;
            }
        }
    }
    Ok(())
}

/// Serializes metadata and F32 tensors as GGUF v3, laid out as llama.cpp's `gguf_write_to_file`
/// does: tensor data in the given order, each tensor at an offset that is a multiple of the
/// alignment (`general.alignment` from `metadata`, else 32), zero padding between tensors and
/// after the last one.
pub fn serialize(metadata: &[(String, Value)], tensors: &[Tensor]) -> Result<Vec<u8>> {
    let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if a.is_power_of_two() => *a,
        Some((_, v)) => {
            return Err(Error::InvalidEntry {
                name: Some(ALIGNMENT_KEY.to_string()),
                reason: format!("must be a u32 power of two, found {v:?}"),
            })
        }
    };
    let align = u64::from(alignment);
    for (i, (k, _)) in metadata.iter().enumerate() {
        if metadata[..i].iter().any(|(k2, _)| k2 == k) {
            return Err(Error::InvalidEntry {
                name: Some(k.clone()),
                reason: "metadata key appears twice".to_string(),
            });
        }
    }

    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_string(&mut out, k);
        out.extend_from_slice(&v.value_type().id().to_le_bytes());
        put_value(&mut out, k, v)?;
    }

    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let fail = |reason: String| Error::InvalidEntry {
            name: Some(t.name.clone()),
            reason,
        };
        if t.name.len() >= MAX_TENSOR_NAME {
            return Err(fail(format!(
                "tensor name is {} bytes; ggml accepts at most {}",
                t.name.len(),
                MAX_TENSOR_NAME - 1
            )));
        }
        if tensors[..i].iter().any(|u| u.name == t.name) {
            return Err(fail("tensor name appears twice".to_string()));
        }
        if t.dims.is_empty() || t.dims.len() > MAX_DIMS {
            return Err(fail(format!(
                "{} dimensions, expected 1..={MAX_DIMS}",
                t.dims.len()
            )));
        }
        let elements: u64 = t.dims.iter().product();
        if elements != t.data.len() as u64 {
            return Err(fail(format!(
                "shape {:?} holds {elements} values but {} were given",
                t.dims,
                t.data.len()
            )));
        }
        put_string(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&GGML_TYPE_F32.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        offset = align_up(offset + elements * 4, align);
    }

    out.resize(align_up(out.len() as u64, align) as usize, 0);
    let data_start = out.len();
    for (t, off) in tensors.iter().zip(offsets) {
        debug_assert_eq!(out.len() as u64, data_start as u64 + off);
        for x in &t.data {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.resize(align_up(out.len() as u64, align) as usize, 0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("<memory>")
    }

    fn sample() -> (Vec<(String, Value)>, Vec<Tensor>) {
        let metadata = vec![
            ("a.u8".to_string(), Value::U8(7)),
            ("a.i8".to_string(), Value::I8(-7)),
            ("a.u16".to_string(), Value::U16(700)),
            ("a.i16".to_string(), Value::I16(-700)),
            ("a.u32".to_string(), Value::U32(70_000)),
            ("a.i32".to_string(), Value::I32(-70_000)),
            ("a.f32".to_string(), Value::F32(1.5)),
            ("a.bool".to_string(), Value::Bool(true)),
            ("a.str".to_string(), Value::String("héllo".to_string())),
            ("a.u64".to_string(), Value::U64(1 << 40)),
            ("a.i64".to_string(), Value::I64(-(1 << 40))),
            ("a.f64".to_string(), Value::F64(-2.25)),
            (
                "a.empty".to_string(),
                Value::Array {
                    elem: ValueType::F64,
                    items: vec![],
                },
            ),
            (
                "a.nested".to_string(),
                Value::Array {
                    elem: ValueType::Array,
                    items: vec![
                        Value::Array {
                            elem: ValueType::I16,
                            items: vec![Value::I16(1), Value::I16(-2)],
                        },
                        Value::string_array(["x", "yz"]),
                    ],
                },
            ),
        ];
        let tensors = vec![
            Tensor {
                name: "t.a".to_string(),
                dims: vec![3],
                data: vec![1.0, 2.0, 3.0],
            },
            Tensor {
                name: "t.b".to_string(),
                dims: vec![2, 2],
                data: vec![-1.0, 0.5, 0.25, 8.0],
            },
        ];
        (metadata, tensors)
    }

    #[test]
    fn every_value_type_round_trips() {
        let (metadata, tensors) = sample();
        let bytes = serialize(&metadata, &tensors).unwrap();
        assert_eq!(bytes.len() % 32, 0);
        let f = parse(&bytes, p()).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.alignment, 32);
        assert_eq!(f.metadata, metadata);
        assert_eq!(f.tensors, tensors);
        assert_eq!(serialize(&f.metadata, &f.tensors).unwrap(), bytes);
    }

    #[test]
    fn custom_alignment_is_honoured() {
        let (mut metadata, tensors) = sample();
        metadata.push((ALIGNMENT_KEY.to_string(), Value::U32(64)));
        let bytes = serialize(&metadata, &tensors).unwrap();
        assert_eq!(bytes.len() % 64, 0);
        let f = parse(&bytes, p()).unwrap();
        assert_eq!(f.alignment, 64);
        assert_eq!(f.tensors, tensors);
    }

    #[test]
    fn bad_magic_is_refused() {
        let err = parse(b"GGML\x03\0\0\0", p()).unwrap_err();
        assert!(matches!(err, Error::BadMagic { .. }), "{err}");
        assert!(err.to_string().contains("GGML"), "{err}");
    }

    #[test]
    fn unsupported_and_big_endian_versions_are_refused() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        let err = parse(&bytes, p()).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedVersion { version: 1, .. }),
            "{err}"
        );
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_be_bytes());
        let err = parse(&bytes, p()).unwrap_err();
        assert!(err.to_string().contains("big-endian"), "{err}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let (metadata, tensors) = sample();
        let bytes = serialize(&metadata, &tensors).unwrap();
        // The last tensor's data ends 16 bytes before the file (4 values, padded to 32).
        let used = bytes.len() - 16;
        for n in 0..used {
            match parse(&bytes[..n], p()) {
                Err(Error::Truncated { .. }) => {}
                other => panic!("prefix of {n} bytes: expected Truncated, got {other:?}"),
            }
        }
        assert!(parse(&bytes[..used], p()).is_ok());
    }

    /// A GGUF v3 header announcing `tensors` tensors and `kvs` metadata entries.
    fn v3_header(tensors: u64, kvs: u64) -> Vec<u8> {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&tensors.to_le_bytes());
        bytes.extend_from_slice(&kvs.to_le_bytes());
        bytes
    }

    #[test]
    fn unknown_value_type_names_key_and_type() {
        let mut bytes = v3_header(0, 1);
        put_string(&mut bytes, "weird.key");
        bytes.extend_from_slice(&13u32.to_le_bytes());
        bytes.extend_from_slice(&[0; 8]);
        let err = parse(&bytes, p()).unwrap_err();
        match &err {
            Error::UnknownValueType { key, type_id, .. } => {
                assert_eq!(key, "weird.key");
                assert_eq!(*type_id, 13);
            }
            other => panic!("expected UnknownValueType, got {other:?}"),
        }
        assert!(err.to_string().contains("weird.key"), "{err}");
    }

    #[test]
    fn unknown_array_element_type_is_refused() {
        let mut bytes = v3_header(0, 1);
        put_string(&mut bytes, "arr");
        bytes.extend_from_slice(&9u32.to_le_bytes());
        bytes.extend_from_slice(&99u32.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&[0; 8]);
        let err = parse(&bytes, p()).unwrap_err();
        assert!(
            matches!(err, Error::UnknownValueType { type_id: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        let err = parse(&bytes, p()).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "{err}");

        let mut bytes = v3_header(0, 1);
        put_string(&mut bytes, "arr");
        bytes.extend_from_slice(&9u32.to_le_bytes());
        bytes.extend_from_slice(&8u32.to_le_bytes());
        bytes.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        let err = parse(&bytes, p()).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "{err}");
    }

    #[test]
    fn non_f32_tensor_is_refused_by_name() {
        let (metadata, tensors) = sample();
        let mut bytes = serialize(&metadata, &tensors).unwrap();
        // Patch the type of the first tensor: find its name, skip n_dims + ne.
        let needle = b"t.a";
        let at = bytes.windows(3).position(|w| w == needle).unwrap() + 3;
        let type_at = at + 4 + 8;
        bytes[type_at..type_at + 4].copy_from_slice(&30u32.to_le_bytes());
        let err = parse(&bytes, p()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("t.a") && msg.contains("BF16"), "{msg}");
    }

    fn one_bool(key_count: u64, byte: u8) -> Vec<u8> {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&key_count.to_le_bytes());
        for _ in 0..key_count {
            put_string(&mut bytes, "k");
            bytes.extend_from_slice(&7u32.to_le_bytes());
            bytes.push(byte);
        }
        bytes
    }

    #[test]
    fn bad_bool_and_duplicate_key_are_refused() {
        assert_eq!(
            parse(&one_bool(1, 1), p()).unwrap().get("k"),
            Some(&Value::Bool(true))
        );
        let err = parse(&one_bool(2, 1), p()).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let err = parse(&one_bool(1, 5), p()).unwrap_err();
        assert!(err.to_string().contains("bool byte"), "{err}");
    }

    #[test]
    fn serialize_refuses_long_names_and_bad_shapes() {
        let long = Tensor {
            name: "x".repeat(64),
            dims: vec![1],
            data: vec![0.0],
        };
        assert!(serialize(&[], &[long]).is_err());
        let bad = Tensor {
            name: "x".to_string(),
            dims: vec![2],
            data: vec![0.0],
        };
        assert!(serialize(&[], &[bad]).is_err());
    }
}
