//! GGUF v3 writer: the inverse of [`crate::gguf`], used by the tiny-model generator and by the reader's tests.
//!
//! Emits the layout of ggml's `docs/gguf.md`: header, metadata pairs in insertion order, tensor infos, padding to
//! `general.alignment` (32), then each tensor's bytes at an aligned offset.

use alloc::string::String;
use alloc::vec::Vec;

use crate::gguf::{DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::quant::GgmlType;

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Vec<u8>,
}

/// Accumulates metadata and tensors, then serialises them with [`GgufWriter::finish`].
#[derive(Default)]
pub struct GgufWriter {
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<PendingTensor>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    fn key(&mut self, key: &str, value_type: u32) {
        put_str(&mut self.kv, key);
        self.kv.extend_from_slice(&value_type.to_le_bytes());
        self.n_kv += 1;
    }

    pub fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.key(key, 4);
        self.kv.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.key(key, 6);
        self.kv.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.key(key, 7);
        self.kv.push(v as u8);
        self
    }

    pub fn string(&mut self, key: &str, v: &str) -> &mut Self {
        self.key(key, 8);
        put_str(&mut self.kv, v);
        self
    }

    pub fn strings(&mut self, key: &str, v: &[&str]) -> &mut Self {
        self.key(key, 9);
        self.kv.extend_from_slice(&8u32.to_le_bytes());
        self.kv.extend_from_slice(&(v.len() as u64).to_le_bytes());
        for s in v {
            put_str(&mut self.kv, s);
        }
        self
    }

    pub fn f32s(&mut self, key: &str, v: &[f32]) -> &mut Self {
        self.key(key, 9);
        self.kv.extend_from_slice(&6u32.to_le_bytes());
        self.kv.extend_from_slice(&(v.len() as u64).to_le_bytes());
        for x in v {
            self.kv.extend_from_slice(&x.to_le_bytes());
        }
        self
    }

    pub fn i32s(&mut self, key: &str, v: &[i32]) -> &mut Self {
        self.key(key, 9);
        self.kv.extend_from_slice(&5u32.to_le_bytes());
        self.kv.extend_from_slice(&(v.len() as u64).to_le_bytes());
        for x in v {
            self.kv.extend_from_slice(&x.to_le_bytes());
        }
        self
    }

    /// Adds a tensor; `dims[0]` is the contiguous dimension and `data` its encoded bytes.
    pub fn tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: String::from(name),
            dims: dims.to_vec(),
            ggml_type,
            data,
        });
        self
    }

    /// Serialises everything (version 3, alignment 32).
    pub fn finish(&self) -> Vec<u8> {
        let align = DEFAULT_ALIGNMENT;
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.n_kv.to_le_bytes());
        out.extend_from_slice(&self.kv);
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&(t.ggml_type as u32).to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += (t.data.len() as u64).div_ceil(align as u64) * align as u64;
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            out.resize(out.len().div_ceil(align) * align, 0);
        }
        out
    }
}
