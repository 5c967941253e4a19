//! The interleaved layout of Q4_1 and Q5_0 matrices: what the AVX-512 VNNI one-token kernels read fastest
//! (`simd/avx512_interleaved.rs`), made in place by [`crate::interleave`] on the host.
//!
//! A matrix whose row count is a multiple of 4 is kept as groups of 4 rows; group g's block k is a *slab* of the
//! same 4 blocks' bytes (so the matrix keeps its size), slabs in order of g, then k:
//! - **Q4_1** (80 bytes): the 4 rows' `d, m` pairs (16 bytes), then for the row pairs (0, 1) and (2, 3) 32 bytes each
//!   whose byte i holds the first row's value i in its low nibble and the second row's in its high nibble.
//! - **Q5_0** (88 bytes): the 4 rows' `d` (8 bytes), their `qh` words (16 bytes), then the two row pairs' low 4 bits
//!   of each value, packed as Q4_1's.
//!
//! Value i is element i of the block (ggml's packing keeps elements 0..16 in the low nibbles of `qs` and 16..32 in
//! the high ones). The layout moves bytes only: every scale, min, `qh` bit and value of the file is in the slab, so
//! [`unpack_group`] gives the file's blocks back and every product computed from either is the same.

use super::{BlockQ4_1, BlockQ5_0, GgmlType, QK};

/// Rows per group.
pub const GROUP: usize = 4;

/// A block format that has an interleaved layout.
pub trait Interleave: bytemuck::Pod {
    /// Bytes of one block (a slab holds [`GROUP`] of them).
    const BYTES: usize;
    /// Writes the slab of the 4 blocks `b` (rows 0..4 of a group, one block index) into `out` (`4 * BYTES`).
    fn pack(b: &[Self; GROUP], out: &mut [u8]);
    /// The 4 blocks a slab holds (the inverse of [`Interleave::pack`]).
    fn unpack(slab: &[u8]) -> [Self; GROUP];
}

/// The 32 values of a block's 16 packed bytes, in element order.
fn values(qs: &[u8; QK / 2]) -> [u8; QK] {
    core::array::from_fn(|e| {
        if e < QK / 2 {
            qs[e] & 0x0F
        } else {
            qs[e - QK / 2] >> 4
        }
    })
}

/// Packs two blocks' values (each < 16) into 32 bytes: `a`'s in the low nibbles, `b`'s in the high ones.
fn pack_pair(a: &[u8; QK], b: &[u8; QK], out: &mut [u8]) {
    for (i, o) in out[..QK].iter_mut().enumerate() {
        *o = (a[i] & 0x0F) | (b[i] << 4);
    }
}

/// The two blocks' packed bytes (`qs`) from 32 pair bytes: the first block's from the low nibbles.
fn unpack_pair(p: &[u8]) -> [[u8; QK / 2]; 2] {
    core::array::from_fn(|half| {
        let v = |e: usize| (p[e] >> (4 * half)) & 0x0F;
        core::array::from_fn(|i| v(i) | (v(i + QK / 2) << 4))
    })
}

impl Interleave for BlockQ4_1 {
    const BYTES: usize = 20;
    fn pack(b: &[Self; GROUP], out: &mut [u8]) {
        for (r, x) in b.iter().enumerate() {
            out[4 * r..4 * r + 2].copy_from_slice(&x.d);
            out[4 * r + 2..4 * r + 4].copy_from_slice(&x.m);
        }
        for p in 0..2 {
            let o = &mut out[16 + 32 * p..16 + 32 * (p + 1)];
            pack_pair(&values(&b[2 * p].qs), &values(&b[2 * p + 1].qs), o);
        }
    }
    fn unpack(slab: &[u8]) -> [Self; GROUP] {
        let pairs = [unpack_pair(&slab[16..48]), unpack_pair(&slab[48..80])];
        core::array::from_fn(|r| BlockQ4_1 {
            d: [slab[4 * r], slab[4 * r + 1]],
            m: [slab[4 * r + 2], slab[4 * r + 3]],
            qs: pairs[r / 2][r % 2],
        })
    }
}

impl Interleave for BlockQ5_0 {
    const BYTES: usize = 22;
    fn pack(b: &[Self; GROUP], out: &mut [u8]) {
        for (r, x) in b.iter().enumerate() {
            out[2 * r..2 * r + 2].copy_from_slice(&x.d);
            out[8 + 4 * r..12 + 4 * r].copy_from_slice(&x.qh);
        }
        for p in 0..2 {
            let o = &mut out[24 + 32 * p..24 + 32 * (p + 1)];
            pack_pair(&values(&b[2 * p].qs), &values(&b[2 * p + 1].qs), o);
        }
    }
    fn unpack(slab: &[u8]) -> [Self; GROUP] {
        let pairs = [unpack_pair(&slab[24..56]), unpack_pair(&slab[56..88])];
        core::array::from_fn(|r| BlockQ5_0 {
            d: [slab[2 * r], slab[2 * r + 1]],
            qh: [
                slab[8 + 4 * r],
                slab[9 + 4 * r],
                slab[10 + 4 * r],
                slab[11 + 4 * r],
            ],
            qs: pairs[r / 2][r % 2],
        })
    }
}

/// Whether a matrix of this type and row count can take the interleaved layout.
pub fn interleavable(t: GgmlType, rows: usize) -> bool {
    matches!(t, GgmlType::Q4_1 | GgmlType::Q5_0) && rows.is_multiple_of(GROUP)
}

/// Rearranges one group of 4 rows (`bytes`: the 4 rows of `nb` blocks each, in the file's layout) into its slabs,
/// in place; `scratch` holds at least `bytes.len()` bytes.
pub fn pack_group<W: Interleave>(bytes: &mut [u8], nb: usize, scratch: &mut [u8]) {
    let n = GROUP * nb * W::BYTES;
    let scratch = &mut scratch[..n];
    scratch.copy_from_slice(&bytes[..n]);
    let blocks: &[W] = super::cast(scratch);
    for k in 0..nb {
        let group: [W; GROUP] = core::array::from_fn(|r| blocks[r * nb + k]);
        W::pack(
            &group,
            &mut bytes[k * GROUP * W::BYTES..(k + 1) * GROUP * W::BYTES],
        );
    }
}

/// The file-layout blocks of one group (`slabs`: its `nb` slabs) into `rows` (4 rows of `nb` blocks, row-major).
pub fn unpack_group<W: Interleave>(slabs: &[u8], nb: usize, rows: &mut [W]) {
    for k in 0..nb {
        let blocks = W::unpack(&slabs[k * GROUP * W::BYTES..(k + 1) * GROUP * W::BYTES]);
        for (r, b) in blocks.into_iter().enumerate() {
            rows[r * nb + k] = b;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic bytes (xorshift); also `simd::interleaved`'s tests' random blocks.
    pub(crate) fn bytes(n: usize, seed: u32) -> alloc::vec::Vec<u8> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as u8
            })
            .collect()
    }

    fn round_trip<W: Interleave>() {
        let nb = 5;
        let file = bytes(GROUP * nb * W::BYTES, 7);
        let mut data = file.clone();
        let mut scratch = alloc::vec![0u8; file.len()];
        pack_group::<W>(&mut data, nb, &mut scratch);
        assert_ne!(data, file, "the layout differs from the file's");
        let mut back = alloc::vec![<W as bytemuck::Zeroable>::zeroed(); GROUP * nb];
        unpack_group::<W>(&data, nb, &mut back);
        assert_eq!(bytemuck::cast_slice::<W, u8>(&back), &file[..]);
    }

    #[test]
    fn q4_1_slabs_give_back_the_files_blocks() {
        round_trip::<BlockQ4_1>();
    }

    #[test]
    fn q5_0_slabs_give_back_the_files_blocks() {
        round_trip::<BlockQ5_0>();
    }

    #[test]
    fn a_slab_holds_each_rows_values_in_its_nibble() {
        // Row r's block: every value r + 3 (Q4_1), scale bytes [r, 0x3c], min [0, r].
        let blocks: [BlockQ4_1; GROUP] = core::array::from_fn(|r| BlockQ4_1 {
            d: [r as u8, 0x3c],
            m: [0, r as u8],
            qs: [(r as u8 + 3) * 0x11; 16],
        });
        let mut slab = [0u8; 80];
        BlockQ4_1::pack(&blocks, &mut slab);
        assert_eq!(&slab[..8], &[0, 0x3c, 0, 0, 1, 0x3c, 0, 1]);
        assert!(slab[16..48].iter().all(|&b| b == 3 | (4 << 4)));
        assert!(slab[48..80].iter().all(|&b| b == 5 | (6 << 4)));
    }
}
