//! Q5_K, Q3_K, Q2_K, Q5_1 and BF16 as llama.cpp built for SSE4.2 without AVX computes them: the portable kernels'
//! orders for the types of `quant/more_types.rs`.
//!
//! `arch/x86/quants.c` has AVX2 and AVX forms of `ggml_vec_dot_q5_K_q8_K`, `_q3_K_q8_K`, `_q2_K_q8_K` and
//! `_q5_1_q8_1` and nothing for SSE alone, so that build calls their `*_generic` functions (`ggml-cpu/quants.c`);
//! `vec.cpp`'s `ggml_vec_dot_bf16` likewise has no SSE branch and takes its scalar loop. None of them is tiled or
//! repacked there (no tinyBLAS, no `-mfma`), so the engine takes these orders for every batch size. GCC contracts
//! nothing without `-mfma`: C's `a*b + c` is a multiply, then an add, left to right, and an integer operand is
//! converted to f32 (rounded to nearest) before its multiply. The integer sums are exact in any order.

use crate::quant::{
    bf16_to_f32, f16_to_f32, q2_k_values, q3_k_scales, q3_k_values, q5_1_values, q5_k_values,
    scale_min_k4, BlockQ2K, BlockQ3K, BlockQ5K, BlockQ5_1, BlockQ8K, BlockQ8_1, QK_K,
};

/// The generic K-quant kernels' eight exact lanes for one block (`aux32`): lane `l` sums `scale(e)·q[e]·y[e]` over
/// the elements `e ≡ l (mod 8)` (the C code steps through the block 8 elements at a time).
#[inline]
fn lanes_mod8<Q: Copy + Into<i32>>(
    q: &[Q; QK_K],
    y: &[i8; QK_K],
    scale: impl Fn(usize) -> i32,
) -> [i32; 8] {
    let mut lanes = [0i32; 8];
    for (e, (&q, &y)) in q.iter().zip(y).enumerate() {
        lanes[e % 8] += scale(e) * (q.into() * y as i32);
    }
    lanes
}

/// The generic kernels' end: `sumf += sums[l]` for `l` in order (`sumf` starting at `sumf`).
#[inline]
fn add_lanes(mut sumf: f32, sums: &[f32; 8]) -> f32 {
    for &s in sums {
        sumf += s;
    }
    sumf
}

/// Q5_K · Q8_K as `ggml_vec_dot_q5_K_q8_K_generic`: per block `sums[l] += d·aux32[l]` (a multiply, then an add)
/// with `d = d_x·d_y` and the 5-bit values times their sub-block's 6-bit scale, then `sumf -= dmin·Σ m·bsums`;
/// the eight sums added to `sumf` in order at the end.
pub fn dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let v = q5_k_values(a);
        let (scales, mins): ([i32; 8], [i32; 8]) = (
            core::array::from_fn(|j| scale_min_k4(j, &a.scales).0 as i32),
            core::array::from_fn(|j| scale_min_k4(j, &a.scales).1 as i32),
        );
        let sumi: i32 = (0..QK_K / 16)
            .map(|j| b.bsums[j] as i32 * mins[j / 2])
            .sum();
        let lanes = lanes_mod8(&v, &b.qs, |e| scales[e / 32]);
        let d = f16_to_f32(a.d) * b.d;
        for (s, &l) in sums.iter_mut().zip(&lanes) {
            *s += d * l as f32;
        }
        let dmin = f16_to_f32(a.dmin) * b.d;
        sumf -= dmin * sumi as f32;
    }
    add_lanes(sumf, &sums)
}

/// Q3_K · Q8_K as `ggml_vec_dot_q3_K_q8_K_generic`: per block `sums[l] += d·aux32[l]` with `d = d_x·d_y` and the
/// signed 3-bit values times their 16-element sub-block's scale; the eight sums added in order at the end.
pub fn dot_q3_k_q8_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    let mut sums = [0.0f32; 8];
    for (a, b) in x.iter().zip(y) {
        let v = q3_k_values(a);
        let sc = q3_k_scales(&a.scales);
        let lanes = lanes_mod8(&v, &b.qs, |e| sc[e / 16] as i32);
        let d = f16_to_f32(a.d) * b.d;
        for (s, &l) in sums.iter_mut().zip(&lanes) {
            *s += d * l as f32;
        }
    }
    add_lanes(0.0, &sums)
}

/// Q2_K · Q8_K as `ggml_vec_dot_q2_K_q8_K_generic`: per block one exact `isum = Σ sc·q·y` and `summs = Σ m·bsums`,
/// folded as `sumf += dall·isum - dmin·summs` (two multiplies, the difference, then the add), with
/// `dall = d_y·d_x` and `dmin = d_y·dmin_x`.
pub fn dot_q2_k_q8_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let summs: i32 = (0..QK_K / 16)
            .map(|j| b.bsums[j] as i32 * (a.scales[j] >> 4) as i32)
            .sum();
        let dall = b.d * f16_to_f32(a.d);
        let dmin = b.d * f16_to_f32(a.dmin);
        let v = q2_k_values(a);
        let isum: i32 = v
            .iter()
            .zip(&b.qs)
            .enumerate()
            .map(|(e, (&q, &y))| (a.scales[e / 16] & 0xF) as i32 * (q as i32 * y as i32))
            .sum();
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

/// Q5_1 · Q8_1 as `ggml_vec_dot_q5_1_q8_1_generic`: per block one exact `sumi = Σ q·y` over the 5-bit values,
/// folded as `sumf += (d_x·d_y)·sumi + m_x·s_y` (the two products, their sum, then the add).
pub fn dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let v = q5_1_values(a);
        let sumi: i32 = v
            .iter()
            .zip(&b.qs)
            .map(|(&q, &y)| q as i32 * y as i32)
            .sum();
        sumf +=
            (f16_to_f32(a.d) * f16_to_f32(b.d)) * sumi as f32 + f16_to_f32(a.m) * f16_to_f32(b.s);
    }
    sumf
}

/// BF16 · BF16 as `ggml_vec_dot_bf16` without AVX: its scalar loop, each product in f32 (exact: 8 significant
/// bits each) added in element order to an f64 sum (`ggml_float`), returned as f32. Operands are little-endian
/// byte pairs, read in place at any alignment.
pub fn dot_bf16(x: &[[u8; 2]], y: &[[u8; 2]]) -> f32 {
    let h = |v: [u8; 2]| bf16_to_f32(u16::from_le_bytes(v));
    let mut sumf = 0.0f64;
    for (&a, &b) in x.iter().zip(y) {
        sumf += (h(a) * h(b)) as f64;
    }
    sumf as f32
}
