//! Zero-copy reader for GGUF v2/v3 model files: header, typed metadata (arrays included), tensor infos, alignment.
//!
//! Follows the GGUF specification in ggml's `docs/gguf.md`: little-endian, `u64` counts and string lengths (v2+),
//! metadata value types 0..=12, tensor data offsets relative to the start of the data section, which begins at the
//! first multiple of `general.alignment` (default 32) after the tensor infos. Every length and count read from the
//! file is checked against the bytes that remain before anything is sized from it; bad input yields [`GgufError`].

use alloc::vec::Vec;

use crate::quant::GgmlType;

/// `"GGUF"` read as a little-endian `u32`.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Alignment of the data section and of every tensor when the file does not say otherwise.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// At most this many dimensions per tensor (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// Why a GGUF blob was refused. Each variant names one problem; `at` fields are byte offsets into the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufError {
    /// The first four bytes are not `GGUF`.
    BadMagic,
    /// Only versions 2 and 3 are read (v1 used 32-bit counts).
    UnsupportedVersion(u32),
    /// The blob ends before the structure starting at `at` does.
    Truncated { at: usize },
    /// The tensor count cannot fit in the bytes that remain.
    TooManyTensors(u64),
    /// The metadata count cannot fit in the bytes that remain.
    TooManyKeys(u64),
    /// A string is not valid UTF-8.
    BadUtf8 { at: usize },
    /// A metadata value type outside 0..=12.
    UnknownValueType { at: usize, value_type: u32 },
    /// An array whose elements are arrays (not used by any model this engine reads).
    NestedArray { at: usize },
    /// `general.alignment` is zero, not a power of two, or not a u32.
    BadAlignment,
    /// A tensor type this reader does not know the block layout of.
    UnknownTensorType { tensor: usize, ggml_type: u32 },
    /// More than [`MAX_DIMS`] dimensions.
    TooManyDims { tensor: usize, n_dims: u32 },
    /// A zero dimension, an element count that overflows, or a row length that is not a whole number of blocks.
    BadShape { tensor: usize },
    /// A tensor's offset is not a multiple of the alignment.
    Misaligned { tensor: usize },
    /// A tensor's bytes run past the end of the blob.
    OutOfBounds { tensor: usize },
    /// Two tensors share bytes.
    Overlap { first: usize, second: usize },
    /// Two tensors have the same name.
    DuplicateTensor { tensor: usize },
}

/// ggml's name for a tensor type code [`GgmlType`] does not represent (the i-quants, integer and ternary types and
/// the newer float formats of `enum ggml_type`), so that a file holding one is refused by name.
/// Set in a tensor's type code by `crate::interleave`, in memory, when it has rearranged the tensor's bytes into the
/// interleaved layout of `quant::interleaved`. Not a ggml type: a file on disk never carries it (ggml's codes are
/// below 64), and a blob that does is read as that layout, which holds the same bytes as the base type.
pub const INTERLEAVED_TYPE_FLAG: u32 = 0x8000_0000;

fn ggml_type_name(code: u32) -> Option<&'static str> {
    Some(match code {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        21 => "IQ3_S",
        22 => "IQ2_S",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        40 => "NVFP4",
        41 => "Q1_0",
        42 => "Q2_0",
        _ => return None,
    })
}

impl core::fmt::Display for GgufError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            GgufError::BadMagic => write!(f, "not a GGUF file (bad magic)"),
            GgufError::UnsupportedVersion(v) => {
                write!(f, "GGUF version {v} is not supported (2 and 3 are)")
            }
            GgufError::Truncated { at } => write!(
                f,
                "GGUF truncated: a structure at byte {at} runs past the end"
            ),
            GgufError::TooManyTensors(n) => {
                write!(
                    f,
                    "GGUF claims {n} tensors, more than the file can hold or than the reader accepts ({MAX_TENSORS})"
                )
            }
            GgufError::TooManyKeys(n) => write!(
                f,
                "GGUF claims {n} metadata keys, more than the file can hold or than the reader accepts ({MAX_KEYS})"
            ),
            GgufError::BadUtf8 { at } => write!(f, "GGUF string at byte {at} is not UTF-8"),
            GgufError::UnknownValueType { at, value_type } => {
                write!(
                    f,
                    "GGUF metadata value type {value_type} at byte {at} is unknown"
                )
            }
            GgufError::NestedArray { at } => {
                write!(f, "GGUF nested array at byte {at} is not supported")
            }
            GgufError::BadAlignment => {
                write!(f, "GGUF general.alignment is not a power-of-two u32")
            }
            GgufError::UnknownTensorType { tensor, ggml_type } => match ggml_type_name(ggml_type) {
                Some(name) => write!(
                    f,
                    "tensor #{tensor} has ggml type {name} ({ggml_type}), which this engine does not support"
                ),
                None => write!(f, "tensor #{tensor} has unknown ggml type {ggml_type}"),
            },
            GgufError::TooManyDims { tensor, n_dims } => {
                write!(f, "tensor #{tensor} has {n_dims} dimensions")
            }
            GgufError::BadShape { tensor } => {
                write!(f, "tensor #{tensor} has an invalid shape for its type")
            }
            GgufError::Misaligned { tensor } => write!(f, "tensor #{tensor} is not aligned"),
            GgufError::OutOfBounds { tensor } => {
                write!(f, "tensor #{tensor} runs past the end of the file")
            }
            GgufError::Overlap { first, second } => {
                write!(f, "tensors #{first} and #{second} overlap")
            }
            GgufError::DuplicateTensor { tensor } => {
                write!(f, "tensor #{tensor} repeats an earlier name")
            }
        }
    }
}

/// Metadata value type codes (`gguf_metadata_value_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    fn from_u32(v: u32) -> Option<ValueType> {
        Some(match v {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    /// Encoded size of a scalar of this type; `None` for strings and arrays.
    fn fixed_size(self) -> Option<usize> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }
}

/// One metadata value, borrowing strings and array bodies from the blob.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(&'a str),
    U64(u64),
    I64(i64),
    F64(f64),
    Array(ArrayView<'a>),
}

impl<'a> Value<'a> {
    /// Any integer type that fits in `u64` without loss.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// F32 or F64 (narrowed) values.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<ArrayView<'a>> {
        match *self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A metadata array: element type, element count and the validated bytes of its body.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArrayView<'a> {
    elem_type: ValueType,
    len: usize,
    body: &'a [u8],
    /// Offset of `body` in the blob, for error positions.
    at: usize,
}

impl<'a> ArrayView<'a> {
    pub fn elem_type(&self) -> ValueType {
        self.elem_type
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Iterates the elements in order. The body was validated at parse time, so iteration cannot fail.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            cursor: Cursor {
                data: self.body,
                pos: 0,
                base: self.at,
            },
            elem_type: self.elem_type,
            left: self.len,
        }
    }
}

/// Iterator over an [`ArrayView`].
pub struct ArrayIter<'a> {
    cursor: Cursor<'a>,
    elem_type: ValueType,
    left: usize,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated when the array was parsed; a failure here would mean the blob changed, so stop.
        self.cursor.scalar_or_string(self.elem_type).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// One `key = value` pair.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetaEntry<'a> {
    pub key: &'a str,
    pub value: Value<'a>,
}

/// One tensor: name, shape (`dims[0]` is the contiguous dimension, as in ggml), type and its bytes in the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorInfo<'a> {
    pub name: &'a str,
    pub n_dims: usize,
    pub dims: [u64; MAX_DIMS],
    pub ggml_type: GgmlType,
    /// Offset of the tensor's bytes from the start of the blob (already checked to lie inside it).
    pub offset: usize,
    pub data: &'a [u8],
    /// Whether the bytes are in the interleaved layout of `quant::interleaved` (the type code carried
    /// [`INTERLEAVED_TYPE_FLAG`]; only Q4_1 and Q5_0 2-D tensors whose row count is a multiple of 4 may).
    pub interleaved: bool,
    /// Offset of the tensor's type code in the blob (where `crate::interleave` marks a tensor it rearranged).
    pub(crate) type_at: usize,
}

impl TensorInfo<'_> {
    pub fn dims(&self) -> &[u64] {
        &self.dims[..self.n_dims]
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims().iter().product()
    }
}

/// A parsed GGUF file borrowing everything from the blob.
#[derive(Debug)]
pub struct Gguf<'a> {
    pub version: u32,
    pub alignment: usize,
    /// Offset of the data section in the blob.
    pub data_offset: usize,
    pub metadata: Vec<MetaEntry<'a>>,
    pub tensors: Vec<TensorInfo<'a>>,
}

/// Bounds-checked little-endian reader; `base` is the offset of `data` in the whole blob.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn at(&self) -> usize {
        self.base + self.pos
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated { at: self.at() });
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let b = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<&'a str, GgufError> {
        let at = self.at();
        let len = self.u64()?;
        let len = usize::try_from(len).map_err(|_| GgufError::Truncated { at })?;
        let b = self.bytes(len).map_err(|_| GgufError::Truncated { at })?;
        core::str::from_utf8(b).map_err(|_| GgufError::BadUtf8 { at })
    }

    fn value_type(&mut self) -> Result<ValueType, GgufError> {
        let at = self.at();
        let t = self.u32()?;
        ValueType::from_u32(t).ok_or(GgufError::UnknownValueType { at, value_type: t })
    }

    fn scalar_or_string(&mut self, t: ValueType) -> Result<Value<'a>, GgufError> {
        Ok(match t {
            ValueType::U8 => Value::U8(self.array::<1>()?[0]),
            ValueType::I8 => Value::I8(self.array::<1>()?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array()?)),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array()?)),
            ValueType::Bool => Value::Bool(self.array::<1>()?[0] != 0),
            ValueType::String => Value::Str(self.string()?),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array()?)),
            ValueType::Array => return Err(GgufError::NestedArray { at: self.at() }),
        })
    }

    fn value(&mut self, t: ValueType) -> Result<Value<'a>, GgufError> {
        if t != ValueType::Array {
            return self.scalar_or_string(t);
        }
        let elem_at = self.at();
        let elem_type = self.value_type()?;
        if elem_type == ValueType::Array {
            return Err(GgufError::NestedArray { at: elem_at });
        }
        let count_at = self.at();
        let count = self.u64()?;
        let len = usize::try_from(count).map_err(|_| GgufError::Truncated { at: count_at })?;
        let body_start = self.pos;
        match elem_type.fixed_size() {
            Some(size) => {
                let total = len
                    .checked_mul(size)
                    .ok_or(GgufError::Truncated { at: count_at })?;
                self.bytes(total)
                    .map_err(|_| GgufError::Truncated { at: count_at })?;
            }
            None => {
                // Strings: every element needs at least its 8-byte length, so this loop ends after at most
                // remaining/8 iterations whatever `len` claims.
                if len > self.remaining() / 8 {
                    return Err(GgufError::Truncated { at: count_at });
                }
                for _ in 0..len {
                    self.string()?;
                }
            }
        }
        let body = &self.data[body_start..self.pos];
        Ok(Value::Array(ArrayView {
            elem_type,
            len,
            body,
            at: self.base + body_start,
        }))
    }
}

/// Smallest encoding of one metadata pair: key length (8) + empty key + type (4) + a 1-byte value.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// Smallest encoding of one tensor info: name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 8 + 4 + 8;
/// Most metadata pairs a file may declare. Each pair costs more in memory than its smallest encoding (an entry is
/// several times `MIN_KV_BYTES`), so a bound by file size alone would let a large file of empty keys take several
/// times its size; real models have a few dozen pairs (the vocabulary is one array).
pub const MAX_KEYS: u64 = 1 << 16;
/// Most tensors a file may declare, for the same reason (real models have hundreds to a few thousand).
pub const MAX_TENSORS: u64 = 1 << 16;

impl<'a> Gguf<'a> {
    /// Parses and validates the whole header of `blob`. Tensor bytes are borrowed, never copied.
    pub fn parse(blob: &'a [u8]) -> Result<Gguf<'a>, GgufError> {
        let mut c = Cursor {
            data: blob,
            pos: 0,
            base: 0,
        };
        if c.u32().map_err(|_| GgufError::BadMagic)? != GGUF_MAGIC {
            return Err(GgufError::BadMagic);
        }
        let version = c.u32()?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        // Bound both counts by what the rest of the file could possibly encode before allocating from them.
        let room = c.remaining() as u64;
        if n_kv > MAX_KEYS || n_kv > room / MIN_KV_BYTES as u64 {
            return Err(GgufError::TooManyKeys(n_kv));
        }
        if n_tensors > MAX_TENSORS || n_tensors > room / MIN_TENSOR_INFO_BYTES as u64 {
            return Err(GgufError::TooManyTensors(n_tensors));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        for _ in 0..n_kv {
            let key = c.string()?;
            let t = c.value_type()?;
            let value = c.value(t)?;
            metadata.push(MetaEntry { key, value });
        }
        let alignment = match metadata.iter().find(|e| e.key == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(MetaEntry {
                value: Value::U32(a),
                ..
            }) if *a != 0 && a.is_power_of_two() => *a as usize,
            Some(_) => return Err(GgufError::BadAlignment),
        };

        struct RawInfo<'a> {
            name: &'a str,
            n_dims: usize,
            dims: [u64; MAX_DIMS],
            ggml_type: GgmlType,
            interleaved: bool,
            type_at: usize,
            rel_offset: u64,
            size: usize,
        }
        if n_tensors > c.remaining() as u64 / MIN_TENSOR_INFO_BYTES as u64 {
            return Err(GgufError::TooManyTensors(n_tensors));
        }
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for tensor in 0..n_tensors as usize {
            let name = c.string()?;
            let n_dims = c.u32()?;
            if n_dims as usize > MAX_DIMS || n_dims == 0 {
                return Err(GgufError::TooManyDims { tensor, n_dims });
            }
            let mut dims = [1u64; MAX_DIMS];
            for d in dims.iter_mut().take(n_dims as usize) {
                *d = c.u64()?;
            }
            let type_at = c.pos;
            let t = c.u32()?;
            let unknown = GgufError::UnknownTensorType {
                tensor,
                ggml_type: t,
            };
            let interleaved = t & INTERLEAVED_TYPE_FLAG != 0;
            let ggml_type = GgmlType::from_u32(t & !INTERLEAVED_TYPE_FLAG).ok_or(unknown)?;
            // Only a matrix (2-D: dims [cols, rows]) of a type with an interleaved layout may carry the flag.
            if interleaved
                && (n_dims != 2
                    || !usize::try_from(dims[1]).is_ok_and(|rows| {
                        crate::quant::interleaved::interleavable(ggml_type, rows)
                    }))
            {
                return Err(unknown);
            }
            let rel_offset = c.u64()?;
            let size = tensor_size(&dims[..n_dims as usize], ggml_type)
                .ok_or(GgufError::BadShape { tensor })?;
            raw.push(RawInfo {
                name,
                n_dims: n_dims as usize,
                dims,
                ggml_type,
                interleaved,
                type_at,
                rel_offset,
                size,
            });
        }
        let data_offset = c
            .pos
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or(GgufError::Truncated { at: c.pos })?;

        let mut tensors = Vec::with_capacity(raw.len());
        for (tensor, r) in raw.iter().enumerate() {
            if r.rel_offset % alignment as u64 != 0 {
                return Err(GgufError::Misaligned { tensor });
            }
            let start = usize::try_from(r.rel_offset)
                .ok()
                .and_then(|o| o.checked_add(data_offset))
                .ok_or(GgufError::OutOfBounds { tensor })?;
            let end = start
                .checked_add(r.size)
                .ok_or(GgufError::OutOfBounds { tensor })?;
            if end > blob.len() {
                return Err(GgufError::OutOfBounds { tensor });
            }
            tensors.push(TensorInfo {
                name: r.name,
                n_dims: r.n_dims,
                dims: r.dims,
                ggml_type: r.ggml_type,
                offset: start,
                data: &blob[start..end],
                interleaved: r.interleaved,
                type_at: r.type_at,
            });
        }
        // Overlap and duplicate checks over sorted index lists (sized by the already-bounded tensor count).
        let mut by_offset: Vec<usize> = (0..tensors.len()).collect();
        by_offset.sort_unstable_by_key(|&i| (tensors[i].offset, i));
        for w in by_offset.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            if a.offset + a.data.len() > b.offset && !a.data.is_empty() {
                return Err(GgufError::Overlap {
                    first: w[0].min(w[1]),
                    second: w[0].max(w[1]),
                });
            }
        }
        let mut by_name: Vec<usize> = (0..tensors.len()).collect();
        by_name.sort_unstable_by_key(|&i| (tensors[i].name, i));
        for w in by_name.windows(2) {
            if tensors[w[0]].name == tensors[w[1]].name {
                return Err(GgufError::DuplicateTensor { tensor: w[1] });
            }
        }
        Ok(Gguf {
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
        })
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.metadata
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Byte size of a tensor of `dims` and type `t`, or `None` if the shape is invalid (zero or overflowing sizes, or
/// a contiguous dimension that is not a whole number of blocks).
pub fn tensor_size(dims: &[u64], t: GgmlType) -> Option<usize> {
    let (block, bytes) = (t.block_len() as u64, t.block_bytes() as u64);
    let first = *dims.first()?;
    if dims.contains(&0) || !first.is_multiple_of(block) {
        return None;
    }
    let mut n = 1u64;
    for &d in dims {
        n = n.checked_mul(d)?;
    }
    usize::try_from((n / block).checked_mul(bytes)?).ok()
}
