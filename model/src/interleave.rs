//! Rearranges a GGUF blob's Q4_1 and Q5_0 weight matrices, in place, into the interleaved layout that the AVX-512
//! VNNI one-token kernels read fastest (`quant::interleaved`, `simd/avx512_interleaved.rs`).
//!
//! For the host engine only (`cloister generate`, `cloister bench`): the appliance parses the measured bytes as they
//! are and never calls this (docs/ARCHITECTURE.md §6). The products stay bit for bit those of the file's layout, at
//! every kernel level: where the interleaved kernels do not apply (batches, a CPU or a forced level without
//! AVX-512 VNNI), `matmul` gives each group of 4 rows back in the file's layout and multiplies it as before.
//!
//! Each rearranged tensor is marked in the blob's own header: its type code gains
//! [`gguf::INTERLEAVED_TYPE_FLAG`], so the blob describes itself and `Gguf::parse` hands the flag to the model. The
//! token embedding is never rearranged (its rows are looked up one at a time, in the file's layout).

use alloc::vec;
use alloc::vec::Vec;

use crate::gguf::{self, Gguf, GgufError};
use crate::quant::interleaved::{self, Interleave, GROUP};
use crate::quant::{BlockQ4_1, BlockQ5_0, GgmlType, QK};

/// Names of tensors that stay in the file's layout whatever their type.
const KEEP: [&str; 1] = ["token_embd.weight"];

/// What [`interleave`] rearranged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interleaved {
    /// Tensors rearranged.
    pub tensors: usize,
    /// Their bytes.
    pub bytes: usize,
}

/// Rearranges every Q4_1 and Q5_0 matrix of `blob` (a GGUF file's bytes) whose row count is a multiple of 4, except
/// the token embedding, and marks it in the header. A blob `Gguf::parse` refuses is returned unchanged with its
/// error; tensors already marked are left as they are, so a second call changes nothing.
pub fn interleave(blob: &mut [u8]) -> Result<Interleaved, GgufError> {
    struct Target {
        ggml_type: GgmlType,
        type_at: usize,
        offset: usize,
        len: usize,
        nb: usize,
    }
    let targets: Vec<Target> = {
        let g = Gguf::parse(blob)?;
        g.tensors
            .iter()
            .filter(|t| {
                !t.interleaved
                    && t.n_dims == 2
                    && !KEEP.contains(&t.name)
                    && usize::try_from(t.dims[1])
                        .is_ok_and(|rows| interleaved::interleavable(t.ggml_type, rows))
            })
            .filter_map(|t| {
                Some(Target {
                    ggml_type: t.ggml_type,
                    type_at: t.type_at,
                    offset: t.offset,
                    len: t.data.len(),
                    nb: usize::try_from(t.dims[0]).ok()? / QK,
                })
            })
            .collect()
    };
    let mut done = Interleaved::default();
    let mut scratch = Vec::new();
    for t in &targets {
        let data = &mut blob[t.offset..t.offset + t.len];
        match t.ggml_type {
            GgmlType::Q4_1 => pack_matrix::<BlockQ4_1>(data, t.nb, &mut scratch),
            GgmlType::Q5_0 => pack_matrix::<BlockQ5_0>(data, t.nb, &mut scratch),
            // `interleavable` admits only the two.
            _ => continue,
        }
        let code = t.ggml_type as u32 | gguf::INTERLEAVED_TYPE_FLAG;
        blob[t.type_at..t.type_at + 4].copy_from_slice(&code.to_le_bytes());
        done.tensors += 1;
        done.bytes += t.len;
    }
    Ok(done)
}

/// Rearranges a whole matrix (`data`: its rows of `nb` blocks) group by group.
fn pack_matrix<W: Interleave>(data: &mut [u8], nb: usize, scratch: &mut Vec<u8>) {
    let group_bytes = GROUP * nb * W::BYTES;
    if group_bytes == 0 {
        return;
    }
    if scratch.len() < group_bytes {
        *scratch = vec![0; group_bytes];
    }
    for group in data.chunks_exact_mut(group_bytes) {
        interleaved::pack_group::<W>(group, nb, scratch);
    }
}
