//! SSSE3 kernels (128-bit integer dot products) for CPUs and emulators without AVX2: the quantized dot products
//! of [`crate::quant`] with the integer part vectorised and the f32 part exactly as the portable kernels fold it.
//!
//! Every portable dot product computes, per block, an exact integer total (`Σ q·y`, and for the K-quants the
//! scaled sub-block totals and the mins' total) and folds it into f32 in a fixed order. The kernels here compute
//! the same integers with `pmaddubsw` (unsigned × signed bytes → i16 pairs) and `pmaddwd` (i16 pairs → i32), whose
//! ranges are noted at each use, and then run the portable kernel's f32 operations unchanged, so their results are
//! bit-identical to the portable kernels' (and the appliance's output does not depend on which of the two runs).
//! That matters under QEMU's TCG, which emulates AVX2 slowly but executes these 128-bit integer instructions far
//! faster than the scalar code they replace (docs/ARCHITECTURE.md, inference engine).
//!
//! Intel intrinsics per the Intel Intrinsics Guide; only SSE2 and SSSE3 instructions are used.

use core::arch::x86_64::*;

mod q0;

pub use q0::*;

#[inline]
#[target_feature(enable = "ssse3")]
fn load_u8x16(b: &[u8; 16]) -> __m128i {
    // SAFETY: reads exactly the 16 bytes of `b`; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "ssse3")]
fn load_i8x16(b: &[i8; 16]) -> __m128i {
    // SAFETY: reads exactly the 16 bytes of `b`; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// The 16 signed bytes of `s` from byte `at` (which the caller keeps ≤ `s.len() - 16`; checked).
#[inline]
#[target_feature(enable = "ssse3")]
fn load_i8_at(s: &[i8], at: usize) -> __m128i {
    load_i8x16(s[at..at + 16].try_into().expect("16 bytes"))
}

/// Σ unsigned(a) × signed(b) over 16 bytes as 8 i16 lanes. Callers keep the pair sums within i16
/// (`pmaddubsw` saturates), as noted at each use.
#[inline]
#[target_feature(enable = "ssse3")]
fn maddubs(a: __m128i, b: __m128i) -> __m128i {
    _mm_maddubs_epi16(a, b)
}

/// Σ signed(a) × signed(b) over 16 bytes as 8 i16 lanes: the sign of `a` moves onto `b`. Exact when `b` has no
/// -128 (quantized activations are within ±127): |a| ≤ 128 then bounds each pair by 2·128·127 = 32,512.
#[inline]
#[target_feature(enable = "ssse3")]
fn madd_i8(a: __m128i, b: __m128i) -> __m128i {
    _mm_maddubs_epi16(_mm_sign_epi8(a, a), _mm_sign_epi8(b, a))
}

/// i16 lanes summed in pairs into 4 i32 lanes (exact).
#[inline]
#[target_feature(enable = "ssse3")]
fn widen(v: __m128i) -> __m128i {
    _mm_madd_epi16(v, _mm_set1_epi16(1))
}

/// Horizontal sums of four vectors of 4 i32 lanes: `[Σa, Σb, Σc, Σd]` (exact, wrapping as i32 addition does).
#[inline]
#[target_feature(enable = "ssse3")]
fn hsum4(a: __m128i, b: __m128i, c: __m128i, d: __m128i) -> [i32; 4] {
    let s = _mm_hadd_epi32(_mm_hadd_epi32(a, b), _mm_hadd_epi32(c, d));
    let mut out = [0i32; 4];
    // SAFETY: writes exactly the 16 bytes of `out`; `storeu` has no alignment requirement.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), s) };
    out
}

/// Horizontal sum of 4 i32 lanes.
#[inline]
#[target_feature(enable = "ssse3")]
fn hsum(v: __m128i) -> i32 {
    let s = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Low nibbles and high nibbles of 16 packed bytes, each as 16 bytes ≤ 15.
#[inline]
#[target_feature(enable = "ssse3")]
fn nibbles(t: __m128i) -> (__m128i, __m128i) {
    let m = _mm_set1_epi8(0x0F);
    (_mm_and_si128(t, m), _mm_and_si128(_mm_srli_epi16(t, 4), m))
}

#[cfg(test)]
mod tests;
