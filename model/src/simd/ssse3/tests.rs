//! The SSSE3 kernels against their scalar twins, bit for bit.

use alloc::vec::Vec;

use crate::quant::{self, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8_0, BlockQ8_1};
use crate::simd::ActTile;

/// Deterministic pseudo-random bytes.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 32) as u8
        })
        .collect()
}

/// `n` blocks of `T` from random bytes, with each f16 field at `f16_at` replaced by a finite scale of either sign
/// and the 32 bytes at `qs_at` (activations) kept within ±127, as the quantizers produce them.
fn blocks<T: bytemuck::Pod>(n: usize, seed: u64, f16_at: &[usize], qs_at: Option<usize>) -> Vec<T> {
    let size = core::mem::size_of::<T>();
    let mut raw = bytes(n * size, seed);
    for (i, b) in raw.chunks_exact_mut(size).enumerate() {
        for (k, &at) in f16_at.iter().enumerate() {
            let v = (0.001 + (i * 7 + k * 3) as f32 * 0.0007)
                * if (i + k) % 3 == 0 { -1.0 } else { 1.0 };
            b[at..at + 2].copy_from_slice(&quant::f32_to_f16(v));
        }
        if let Some(at) = qs_at {
            for q in &mut b[at..at + 32] {
                if *q == 0x80 {
                    *q = 0x81;
                }
            }
        }
    }
    bytemuck::cast_slice(&raw).to_vec()
}

fn bits(v: f32) -> u32 {
    v.to_bits()
}

#[test]
fn q0_dots_equal_scalar_bitwise() {
    if !super::super::detect_ssse3() {
        return;
    }
    // 37 blocks: nine groups of four and a remainder of one.
    for n in [1usize, 3, 4, 37] {
        let q80: Vec<BlockQ8_0> = blocks(n, 11, &[0], Some(2));
        let q81: Vec<BlockQ8_1> = blocks(n, 12, &[0, 2], Some(4));
        let w40: Vec<BlockQ4_0> = blocks(n, 13, &[0], None);
        let w41: Vec<BlockQ4_1> = blocks(n, 14, &[0, 2], None);
        let w50: Vec<BlockQ5_0> = blocks(n, 15, &[0], None);
        // Weights may hold -128.
        let mut w80: Vec<BlockQ8_0> = blocks(n, 16, &[0], None);
        w80[0].qs[5] = -128;
        // SAFETY: SSSE3 was detected above, and every call below only needs SSSE3.
        unsafe {
            assert_eq!(
                bits(super::dot_q4_0_q8_0(&w40, &q80)),
                bits(quant::dot_q4_0_q8_0(&w40, &q80)),
                "Q4_0, {n} blocks"
            );
            assert_eq!(
                bits(super::dot_q4_1_q8_1(&w41, &q81)),
                bits(quant::dot_q4_1_q8_1(&w41, &q81)),
                "Q4_1, {n} blocks"
            );
            assert_eq!(
                bits(super::dot_q5_0_q8_0(&w50, &q80)),
                bits(quant::dot_q5_0_q8_0(&w50, &q80)),
                "Q5_0, {n} blocks"
            );
            assert_eq!(
                bits(super::dot_q8_0_q8_0(&w80, &q80)),
                bits(quant::dot_q8_0_q8_0(&w80, &q80)),
                "Q8_0, {n} blocks"
            );
        }
    }
}

#[test]
fn q0_matrix_product_equals_row_dots() {
    if !super::super::detect_ssse3() {
        return;
    }
    let (rows, nb, cols) = (5usize, 6usize, 3usize);
    let w: Vec<BlockQ4_1> = blocks(rows * nb, 21, &[0, 2], None);
    let y: Vec<BlockQ8_1> = blocks(cols * nb, 22, &[0, 2], Some(4));
    let tile = ActTile {
        qs: &y,
        d: &[],
        s: &[],
        batch: cols,
        col0: 0,
    };
    let ld = rows + 2;
    let mut out = alloc::vec![0.0f32; cols * ld];
    // SAFETY: SSSE3 was detected above.
    unsafe { super::mat_q0(&w, nb, &tile, cols, &mut out, ld) };
    for c in 0..cols {
        for r in 0..rows {
            let want = quant::dot_q4_1_q8_1(&w[r * nb..(r + 1) * nb], &y[c * nb..(c + 1) * nb]);
            assert_eq!(bits(out[c * ld + r]), bits(want), "row {r}, column {c}");
        }
    }
}
