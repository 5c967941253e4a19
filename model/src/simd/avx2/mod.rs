//! AVX2+FMA+F16C kernels: the quantized dot products and activation quantizers of [`crate::quant`], vectorised.
//!
//! Intel intrinsics per the Intel Intrinsics Guide. Integer products use `vpmaddubsw` (unsigned × signed bytes →
//! i16 pairs) and `vpmaddwd` (i16 pairs → i32), whose intermediate ranges are noted at each use; the integer sums
//! are therefore exact and only the f32 accumulation order differs from the scalar twins.
//!
//! One submodule per kernel family; the load, sum and unpacking helpers they share are here.

use core::arch::x86_64::*;

use super::ActTile;
use crate::quant::{
    scale_min_k4, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ6K, BlockQ8K, BlockQ8_0,
    BlockQ8_1, QK,
};

mod activation;
mod f16_dots;
mod kquant;
mod more_types;
mod q0;
mod q4_0_repacked;
mod quantize;

pub use activation::*;
pub use f16_dots::*;
pub use kquant::*;
pub use more_types::*;
pub use q0::*;
pub use q4_0_repacked::*;
pub use quantize::*;

/// f32s of work buffer the batched products need for rows of up to `max_cols` elements.
pub fn work_len(max_cols: usize) -> usize {
    q0::work_len(max_cols)
        .max(kquant::work_len(max_cols))
        .max(q4_0_repacked::work_len(max_cols))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_256(b: &[u8; 32]) -> __m256i {
    // SAFETY: reads exactly the 32 bytes of `b`; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_256_i8(b: &[i8; 32]) -> __m256i {
    // SAFETY: reads exactly the 32 bytes of `b`; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_128(b: &[u8; 16]) -> __m128i {
    // SAFETY: reads exactly the 16 bytes of `b`; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_ps(x: &[f32; 8]) -> __m256 {
    // SAFETY: reads exactly the 8 floats of `x`; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16(b: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(b) as i32),
    ))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_extracti128_si256(v, 1), _mm256_castsi256_si128(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// 32 nibbles as bytes: low nibbles of `qs` → lanes 0..16, high nibbles → lanes 16..32 (the Q4 element order).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    let t = load_128(qs);
    let both = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Σ unsigned(a) × signed(b) over 32 bytes as 8 f32 lanes. Callers keep a ≤ 128 and |b| ≤ 127 so `vpmaddubsw`
/// (two products per i16 lane, ≤ 2·128·127 = 32,512) never saturates.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_us8(a: __m256i, b: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))
}

/// Σ signed(a) × signed(b) over 32 bytes as 8 i32 lanes (sign moved onto `b`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_i8(a: __m256i, b: __m256i) -> __m256i {
    mul_sum_us8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a))
}

/// Bit j of `qh` → byte j is 0xFF when set, 0 otherwise.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bits_to_bytes(qh: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuf);
    let bit_mask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, bit_mask), _mm256_set1_epi64x(-1))
}
