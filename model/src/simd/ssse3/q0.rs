//! The 32-element formats (Q4_0, Q4_1, Q5_0, Q8_0): single-row dot products and the matrix products built from
//! them, in the portable kernels' order.

use super::*;
use crate::quant::{f16_to_f32, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8_0, BlockQ8_1};
use crate::simd::ActTile;

/// A 32-element weight block: its exact integer product with an activation block, and the portable kernel's f32
/// step for it.
pub trait Q0Block: Copy {
    /// Activation block type the format pairs with.
    type Act: Copy;
    /// `Σ q·y` over the block as 4 i32 lanes (their sum is the exact total).
    ///
    /// # Safety
    /// The CPU must support SSSE3.
    unsafe fn lanes(&self, y: &Self::Act) -> __m128i;
    /// The running sum after this block: the portable kernel's statement `sum += …` for integer total `isum`.
    fn fold(sum: f32, isum: i32, a: &Self, b: &Self::Act) -> f32;
}

/// The two 16-byte halves of an activation block.
#[inline]
#[target_feature(enable = "ssse3")]
fn halves(qs: &[i8; 32]) -> (__m128i, __m128i) {
    (load_i8_at(qs, 0), load_i8_at(qs, 16))
}

impl Q0Block for BlockQ4_0 {
    type Act = BlockQ8_0;
    #[inline]
    #[target_feature(enable = "ssse3")]
    unsafe fn lanes(&self, y: &BlockQ8_0) -> __m128i {
        let (lo, hi) = nibbles(load_u8x16(&self.qs));
        let eight = _mm_set1_epi8(8);
        let (y0, y1) = halves(&y.qs);
        // |q - 8| ≤ 8: each i16 lane ≤ 2·8·127 = 2,032 per half, 4,064 for both.
        widen(_mm_add_epi16(
            madd_i8(_mm_sub_epi8(lo, eight), y0),
            madd_i8(_mm_sub_epi8(hi, eight), y1),
        ))
    }
    #[inline]
    fn fold(sum: f32, isum: i32, a: &Self, b: &BlockQ8_0) -> f32 {
        sum + isum as f32 * (f16_to_f32(a.d) * f16_to_f32(b.d))
    }
}

impl Q0Block for BlockQ4_1 {
    type Act = BlockQ8_1;
    #[inline]
    #[target_feature(enable = "ssse3")]
    unsafe fn lanes(&self, y: &BlockQ8_1) -> __m128i {
        let (lo, hi) = nibbles(load_u8x16(&self.qs));
        let (y0, y1) = halves(&y.qs);
        // q ≤ 15, any signed byte: each i16 lane ≤ 2·15·128 = 3,840 per half, 7,680 for both.
        widen(_mm_add_epi16(maddubs(lo, y0), maddubs(hi, y1)))
    }
    #[inline]
    fn fold(sum: f32, isum: i32, a: &Self, b: &BlockQ8_1) -> f32 {
        sum + (isum as f32 * (f16_to_f32(a.d) * f16_to_f32(b.d))
            + f16_to_f32(a.m) * f16_to_f32(b.s))
    }
}

/// Bits `16·h..16·h + 16` of `qh` → 16 bytes, 0xFF where the bit is set and 0 where it is clear.
#[inline]
#[target_feature(enable = "ssse3")]
fn bits_to_bytes(qh: u32, h: usize) -> __m128i {
    let lo = 0x0101_0101_0101_0101i64 * (2 * h as i64);
    let shuf = _mm_set_epi64x(lo + 0x0101_0101_0101_0101, lo);
    let bytes = _mm_shuffle_epi8(_mm_set1_epi32(qh as i32), shuf);
    let bit_mask = _mm_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm_cmpeq_epi8(_mm_or_si128(bytes, bit_mask), _mm_set1_epi64x(-1))
}

impl Q0Block for BlockQ5_0 {
    type Act = BlockQ8_0;
    #[inline]
    #[target_feature(enable = "ssse3")]
    unsafe fn lanes(&self, y: &BlockQ8_0) -> __m128i {
        let (lo, hi) = nibbles(load_u8x16(&self.qs));
        let qh = u32::from_le_bytes(self.qh);
        // Where bit 4 is clear, OR-ing 0xF0 into the nibble gives (q - 16) as a signed byte; where it is set, the
        // nibble is already q - 16.
        let f0 = _mm_set1_epi8(0xF0u8 as i8);
        let lo = _mm_or_si128(lo, _mm_andnot_si128(bits_to_bytes(qh, 0), f0));
        let hi = _mm_or_si128(hi, _mm_andnot_si128(bits_to_bytes(qh, 1), f0));
        let (y0, y1) = halves(&y.qs);
        // |q - 16| ≤ 16: each i16 lane ≤ 2·16·127 = 4,064 per half, 8,128 for both.
        widen(_mm_add_epi16(madd_i8(lo, y0), madd_i8(hi, y1)))
    }
    #[inline]
    fn fold(sum: f32, isum: i32, a: &Self, b: &BlockQ8_0) -> f32 {
        sum + isum as f32 * (f16_to_f32(a.d) * f16_to_f32(b.d))
    }
}

impl Q0Block for BlockQ8_0 {
    type Act = BlockQ8_0;
    #[inline]
    #[target_feature(enable = "ssse3")]
    unsafe fn lanes(&self, y: &BlockQ8_0) -> __m128i {
        let (a0, a1) = halves(&self.qs);
        let (y0, y1) = halves(&y.qs);
        // |q| ≤ 128: each i16 lane ≤ 2·128·127 = 32,512, so the halves are widened before they are added.
        _mm_add_epi32(widen(madd_i8(a0, y0)), widen(madd_i8(a1, y1)))
    }
    #[inline]
    fn fold(sum: f32, isum: i32, a: &Self, b: &BlockQ8_0) -> f32 {
        sum + isum as f32 * (f16_to_f32(a.d) * f16_to_f32(b.d))
    }
}

/// `x · y` for a 32-element format, block by block in the portable kernel's order (four blocks' integer totals
/// are reduced together).
#[inline]
#[target_feature(enable = "ssse3")]
fn dot<W: Q0Block>(x: &[W], y: &[W::Act]) -> f32 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut sum = 0.0f32;
    let mut xs = x.chunks_exact(4);
    let mut ys = y.chunks_exact(4);
    for (a, b) in (&mut xs).zip(&mut ys) {
        // SAFETY: this function requires SSSE3.
        let l = unsafe { [0, 1, 2, 3].map(|k| a[k].lanes(&b[k])) };
        let isums = hsum4(l[0], l[1], l[2], l[3]);
        for k in 0..4 {
            sum = W::fold(sum, isums[k], &a[k], &b[k]);
        }
    }
    for (a, b) in xs.remainder().iter().zip(ys.remainder()) {
        // SAFETY: this function requires SSSE3.
        let isum = hsum(unsafe { a.lanes(b) });
        sum = W::fold(sum, isum, a, b);
    }
    sum
}

/// # Safety
/// The CPU must support SSSE3.
#[target_feature(enable = "ssse3")]
pub unsafe fn dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    dot(x, y)
}

/// # Safety
/// The CPU must support SSSE3.
#[target_feature(enable = "ssse3")]
pub unsafe fn dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    dot(x, y)
}

/// # Safety
/// The CPU must support SSSE3.
#[target_feature(enable = "ssse3")]
pub unsafe fn dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    dot(x, y)
}

/// # Safety
/// The CPU must support SSSE3.
#[target_feature(enable = "ssse3")]
pub unsafe fn dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    dot(x, y)
}

/// `out[c * ld + r] = W[r] · y[col0 + c]` as the portable matrix product computes it: one dot product per output.
///
/// # Safety
/// The CPU must support SSSE3.
#[target_feature(enable = "ssse3")]
pub unsafe fn mat_q0<W: Q0Block>(
    w: &[W],
    nb: usize,
    y: &ActTile<'_, W::Act>,
    cols: usize,
    out: &mut [f32],
    ld: usize,
) {
    let rows = w.len().checked_div(nb).unwrap_or(0);
    for c in 0..cols {
        let yc = &y.qs[c * nb..(c + 1) * nb];
        for r in 0..rows {
            out[c * ld + r] = dot(&w[r * nb..(r + 1) * nb], yc);
        }
    }
}
