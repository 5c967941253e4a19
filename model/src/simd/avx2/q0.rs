//! AVX2 dot products of one row of a 32-element format (Q4_0, Q4_1, Q5_0, Q8_0) with 8-bit activations.

use core::arch::x86_64::*;

use super::*;
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8_0, BlockQ8_1};

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (a, b) in x.iter().zip(y) {
        let d = _mm256_set1_ps(f16(a.d) * f16(b.d));
        let qx = _mm256_sub_epi8(nibbles(&a.qs), _mm256_set1_epi8(8));
        let p = _mm256_cvtepi32_ps(mul_sum_i8(qx, load_256_i8(&b.qs)));
        acc = _mm256_fmadd_ps(d, p, acc);
    }
    hsum_ps(acc)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        // llama.cpp's C source writes `summs += m * s`; GCC contracts it into one FMA (-ffp-contract=fast).
        summs = _mm_cvtss_f32(_mm_fmadd_ss(
            _mm_set_ss(f16(a.m)),
            _mm_set_ss(f16(b.s)),
            _mm_set_ss(summs),
        ));
        let d = _mm256_set1_ps(f16(a.d) * f16(b.d));
        // Unsigned nibbles (≤ 15) × signed activations: within `mul_sum_us8`'s range.
        let p = _mm256_cvtepi32_ps(mul_sum_us8(nibbles(&a.qs), load_256_i8(&b.qs)));
        acc = _mm256_fmadd_ps(d, p, acc);
    }
    hsum_ps(acc) + summs
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (a, b) in x.iter().zip(y) {
        let d = _mm256_set1_ps(f16(a.d) * f16(b.d));
        // Where bit 4 is clear, OR-ing 0xF0 into the nibble yields (q - 16) as a signed byte; where it is set the
        // byte is already q + 16 - 16.
        let hi = _mm256_andnot_si256(
            bits_to_bytes(u32::from_le_bytes(a.qh)),
            _mm256_set1_epi8(0xF0u8 as i8),
        );
        let qx = _mm256_or_si256(nibbles(&a.qs), hi);
        let p = _mm256_cvtepi32_ps(mul_sum_i8(qx, load_256_i8(&b.qs)));
        acc = _mm256_fmadd_ps(d, p, acc);
    }
    hsum_ps(acc)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (a, b) in x.iter().zip(y) {
        let d = _mm256_set1_ps(f16(a.d) * f16(b.d));
        // |a| may reach 128 (a weight of -128): still ≤ 2·128·127 per i16 lane.
        let p = _mm256_cvtepi32_ps(mul_sum_i8(load_256_i8(&a.qs), load_256_i8(&b.qs)));
        acc = _mm256_fmadd_ps(d, p, acc);
    }
    hsum_ps(acc)
}
