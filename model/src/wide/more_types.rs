//! Q2_K and BF16 as llama.cpp's AVX-512 build computes them: the scalar twins of `simd/avx512_more_types.rs`.
//!
//! Of the tensor types Q5_K, Q5_1, BF16, Q3_K and Q2_K, llama.cpp (0.3.36's ggml-cpu, built with `-march=native` on
//! a CPU with AVX-512) computes three exactly as its AVX2 build: Q5_K, Q5_1 and Q3_K go through the same
//! `ggml_vec_dot_*` AVX2 code (`arch/x86/quants.c` has no AVX-512 forms of them; where it uses VNNI the integer sums
//! are exact either way) and the same tiled kernels' fold (`tiled/tiled-kernel.cpp`, VNNI microkernel: exact integer
//! sums, then `d·isum`, `fma(-dmin, imin, ·)` and `fma(·, y.d, acc)` as in the AVX2 one). Two differ:
//!
//! - **Q2_K** is repacked at load into 8-row interleaved blocks on AVX-512 CPUs only (`repack.cpp`,
//!   `ggml_repack_get_optimal_repack_type`: `q2_K_8x8_q8_K` for a row count that is a multiple of 8), and then
//!   multiplied by `ggml_gemv_q2_K_8x8_q8_K` (one token) and `ggml_gemm_q2_K_8x8_q8_K` (groups of 4 tokens) in
//!   `arch/x86/repack.cpp`, whose folds are per super-block (gemv) and per half super-block (gemm); repacked weights
//!   never take the tiled path.
//! - **BF16** with AVX512-BF16 (`__AVX512BF16__`): `vdpbf16ps` in `ggml_vec_dot_bf16` (`vec.cpp`: two 16-lane
//!   accumulators over steps of 64, each reduced by `_mm512_reduce_add_ps` into an f64 sum, an f64 tail) for one
//!   token, and in tinyBLAS (`llamafile/sgemm.cpp`, `tinyBLAS<32, __m512, __m512bh, ...>`: one 16-lane chain over
//!   steps of 32 per output) for 2 or more tokens. Without AVX512-BF16 the AVX-512F forms are the same shapes with
//!   the pair step replaced by two separate lanes (`_f` functions below).
//!
//! `vdpbf16ps` (Intel SDM, VDPBF16PS) adds to f32 lane `j` the products of bf16 pairs `2j + 1`, then `2j`, each
//! rounded to nearest even; a bf16 × bf16 product is exact in f32, and input and output denormals are zero.

use super::hsum16;
use crate::quant::{bf16_to_f32, f16_to_f32, q2_k_values, BlockQ2K, BlockQ8K};

/// One Q2_K block against one Q8_K block, per half super-block h (elements `128h..128h + 128`, sub-blocks
/// `8h..8h + 8`): the exact `Σ sc·q·y` and `Σ m·Σy`.
#[inline]
pub(crate) fn q2_k_half_ints(a: &BlockQ2K, b: &BlockQ8K) -> ([i32; 2], [i32; 2]) {
    let v = q2_k_values(a);
    let (mut isum, mut imin) = ([0i32; 2], [0i32; 2]);
    for g in 0..16 {
        let s: i32 = (16 * g..16 * g + 16)
            .map(|e| v[e] as i32 * b.qs[e] as i32)
            .sum();
        isum[g / 8] += (a.scales[g] & 0xF) as i32 * s;
        imin[g / 8] += (a.scales[g] >> 4) as i32 * b.bsums[g] as i32;
    }
    (isum, imin)
}

/// Q2_K · Q8_K as `ggml_gemv_q2_K_8x8_q8_K` computes one output: per super-block
/// `acc = fma(isum, d·y.d, acc)` and `acc_min = fma(imin, dmin·y.d, acc_min)`; the result is `acc - acc_min`.
pub fn dot_q2_k_q8_k_gemv(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for (a, b) in x.iter().zip(y) {
        let (isum, imin) = q2_k_half_ints(a, b);
        let (d, dmin) = (f16_to_f32(a.d) * b.d, f16_to_f32(a.dmin) * b.d);
        acc = libm::fmaf((isum[0] + isum[1]) as f32, d, acc);
        acc_min = libm::fmaf((imin[0] + imin[1]) as f32, dmin, acc_min);
    }
    acc - acc_min
}

/// Q2_K · Q8_K as `ggml_gemm_q2_K_8x8_q8_K` computes one output: as [`dot_q2_k_q8_k_gemv`], with the two folds
/// per half super-block.
pub fn dot_q2_k_q8_k_gemm(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for (a, b) in x.iter().zip(y) {
        let (isum, imin) = q2_k_half_ints(a, b);
        let (d, dmin) = (f16_to_f32(a.d) * b.d, f16_to_f32(a.dmin) * b.d);
        for h in 0..2 {
            acc = libm::fmaf(isum[h] as f32, d, acc);
            acc_min = libm::fmaf(imin[h] as f32, dmin, acc_min);
        }
    }
    acc - acc_min
}

/// A bf16 operand as `vdpbf16ps` reads it: denormals as zero.
#[inline]
fn bf16_daz(v: [u8; 2]) -> f32 {
    let b = u16::from_le_bytes(v);
    if b & 0x7F80 == 0 {
        return if b & 0x8000 != 0 { -0.0 } else { 0.0 };
    }
    bf16_to_f32(b)
}

/// An f32 result as `vdpbf16ps` writes it: denormals flushed to zero.
#[inline]
fn ftz(v: f32) -> f32 {
    if v != 0.0 && v.abs() < f32::MIN_POSITIVE {
        return if v.is_sign_negative() { -0.0 } else { 0.0 };
    }
    v
}

/// One `vdpbf16ps` step on 16 lanes: lane j adds the products of pairs `at + 2j + 1`, then `at + 2j`.
#[inline]
fn dpbf16_step(acc: &mut [f32; 16], x: &[[u8; 2]], y: &[[u8; 2]], at: usize) {
    for (j, a) in acc.iter_mut().enumerate() {
        let (hi, lo) = (at + 2 * j + 1, at + 2 * j);
        *a = ftz(*a + bf16_daz(x[hi]) * bf16_daz(y[hi]));
        *a = ftz(*a + bf16_daz(x[lo]) * bf16_daz(y[lo]));
    }
}

/// BF16 · BF16 as AVX512-BF16 `ggml_vec_dot_bf16` computes it: accumulators c1 (elements `64i..64i + 32`) and c2
/// (`64i + 32..64i + 64`) stepped by `vdpbf16ps`, `(f64) hsum16(c1) + (f64) hsum16(c2)`, then the last
/// `len % 64` products in f64.
pub fn dot_bf16_dp(x: &[[u8; 2]], y: &[[u8; 2]]) -> f32 {
    let n = x.len().min(y.len());
    let np = n / 64 * 64;
    let (mut c1, mut c2) = ([0.0f32; 16], [0.0f32; 16]);
    for i in (0..np).step_by(64) {
        dpbf16_step(&mut c1, x, y, i);
        dpbf16_step(&mut c2, x, y, i + 32);
    }
    let mut sum = hsum16(&c1) as f64;
    sum += hsum16(&c2) as f64;
    let h = |v: [u8; 2]| bf16_to_f32(u16::from_le_bytes(v));
    for i in np..n {
        sum += (h(x[i]) * h(y[i])) as f64;
    }
    sum as f32
}

/// BF16 · BF16 as tinyBLAS computes one output with AVX512-BF16: one 16-lane `vdpbf16ps` chain over steps of 32,
/// then [`hsum16`]. `x.len()` must be a multiple of 32.
pub fn dot_bf16_chain_dp(x: &[[u8; 2]], y: &[[u8; 2]]) -> f32 {
    let n = x.len().min(y.len()) / 32 * 32;
    let mut acc = [0.0f32; 16];
    for i in (0..n).step_by(32) {
        dpbf16_step(&mut acc, x, y, i);
    }
    hsum16(&acc)
}

/// BF16 · BF16 as AVX-512F `ggml_vec_dot_bf16` computes it (no AVX512-BF16): accumulators c1 (elements
/// `32i..32i + 16`) and c2 (`32i + 16..32i + 32`), `c = x·y + c` per lane, reduced as [`dot_bf16_dp`].
pub fn dot_bf16_f(x: &[[u8; 2]], y: &[[u8; 2]]) -> f32 {
    let h = |v: [u8; 2]| bf16_to_f32(u16::from_le_bytes(v));
    let n = x.len().min(y.len());
    let np = n / 32 * 32;
    let (mut c1, mut c2) = ([0.0f32; 16], [0.0f32; 16]);
    for i in (0..np).step_by(32) {
        for l in 0..16 {
            c1[l] += h(x[i + l]) * h(y[i + l]);
            c2[l] += h(x[i + 16 + l]) * h(y[i + 16 + l]);
        }
    }
    let mut sum = hsum16(&c1) as f64;
    sum += hsum16(&c2) as f64;
    for i in np..n {
        sum += (h(x[i]) * h(y[i])) as f64;
    }
    sum as f32
}

/// BF16 · BF16 as tinyBLAS computes one output with AVX-512F only (`tinyBLAS<16, __m512, __m512, ...>`): one
/// 16-lane chain over steps of 16, then [`hsum16`]. `x.len()` must be a multiple of 16.
pub fn dot_bf16_chain_f(x: &[[u8; 2]], y: &[[u8; 2]]) -> f32 {
    let h = |v: [u8; 2]| bf16_to_f32(u16::from_le_bytes(v));
    let n = x.len().min(y.len()) / 16 * 16;
    let mut acc = [0.0f32; 16];
    for i in (0..n).step_by(16) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += h(x[i + l]) * h(y[i + l]);
        }
    }
    hsum16(&acc)
}
