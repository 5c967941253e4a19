//! Q5_K, Q5_1, Q3_K, Q2_K and BF16: the single-row dot products of llama.cpp's AVX2 kernels (`ggml_vec_dot_*` in
//! ggml-cpu/arch/x86/quants.c and vec.cpp), and the tiled-kernel order for K-quant batches.
//! Each equals its scalar twin in [`crate::quant`] bit for bit: the integer lanes are exact (ranges noted at each
//! `vpmaddubsw`) and the f32 operations are the same, in the same order.

use super::kquant::{bcast16, bsum_pairs, q4_k_scales_mins};
use super::*;
use crate::quant::{BlockQ2K, BlockQ3K, BlockQ5K, BlockQ5_1};

/// The 32 bytes at `at` of a block field as a vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_at(b: &[u8], at: usize) -> __m256i {
    load_256(b[at..at + 32].try_into().unwrap_or(&[0; 32]))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_at_i8(b: &[i8], at: usize) -> __m256i {
    load_256_i8(b[at..at + 32].try_into().unwrap_or(&[0; 32]))
}

/// Bit `s` (0..=7) of every byte of `v`, as 0 or 1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bit_of_bytes(v: __m256i, s: usize) -> __m256i {
    // A 16-bit shift carries bits of the high byte into the low byte's top bits only; bit 0 is then masked.
    _mm256_and_si256(
        _mm256_srl_epi16(v, _mm_cvtsi32_si128(s as i32)),
        _mm256_set1_epi8(1),
    )
}

/// Bits `2k..2k + 2` of every byte of `v` (k 0..=3).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::simd) fn crumbs(v: __m256i, k: usize) -> __m256i {
    _mm256_and_si256(
        _mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * k as i32)),
        _mm256_set1_epi8(3),
    )
}

/// i16 lanes: `lo` in the low 128-bit half, `hi` in the high half (the scales of two 16-element sub-blocks).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_pair(lo: i16, hi: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
}

/// `fma(a, b, c)` on scalars, as the C compiler emits for a contracted `c + a * b`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::simd) fn fma1(a: f32, b: f32, c: f32) -> f32 {
    _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)))
}

/// One tiled-kernel fold (see [`crate::quant::tiled_fold`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tiled_fold(acc: f32, d: f32, isum: i32, dmin: f32, imin: i32, y_d: f32) -> f32 {
    let r = d * isum as f32;
    let r = fma1(-dmin, imin as f32, r);
    fma1(r, y_d, acc)
}

/// One Q5_K block against one Q8_K block: the 8 lanes of `Σ sc·q·y` and the total `Σ m·Σy`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_k_ints(a: &BlockQ5K, b: &BlockQ8K) -> (__m256i, i32) {
    let (sc, m) = q4_k_scales_mins(&a.scales);
    // 6-bit mins × |Σ y over 32| ≤ 4064: each `vpmaddwd` pair fits i32.
    let imin = _mm_madd_epi16(m, bsum_pairs(b));
    let imin = _mm_add_epi32(imin, _mm_shuffle_epi32(imin, 0b01_00_11_10));
    let imin = _mm_add_epi32(imin, _mm_shuffle_epi32(imin, 0b10_11_00_01));
    let sc = _mm256_broadcastsi128_si256(sc);
    let qh = load_256(&a.qh);
    let low = _mm256_set1_epi8(0x0F);
    let mut sumi = _mm256_setzero_si256();
    for j in 0..4 {
        let q = load_at(&a.qs, 32 * j);
        let q0 = _mm256_or_si256(
            _mm256_and_si256(q, low),
            _mm256_slli_epi16(bit_of_bytes(qh, 2 * j), 4),
        );
        let q1 = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(q, 4), low),
            _mm256_slli_epi16(bit_of_bytes(qh, 2 * j + 1), 4),
        );
        // q ≤ 31: ≤ 2·31·127 per i16 lane; times a 6-bit scale into i32.
        let p0 = _mm256_madd_epi16(
            bcast16(sc, 2 * j),
            _mm256_maddubs_epi16(q0, load_at_i8(&b.qs, 64 * j)),
        );
        let p1 = _mm256_madd_epi16(
            bcast16(sc, 2 * j + 1),
            _mm256_maddubs_epi16(q1, load_at_i8(&b.qs, 64 * j + 32)),
        );
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
    }
    (sumi, _mm_cvtsi128_si32(imin))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let d = b.d * f16(a.d);
        let dmin = -b.d * f16(a.dmin);
        let (sumi, imin) = q5_k_ints(a, b);
        summs = fma1(dmin, imin as f32, summs);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) + summs
}

/// One Q5_K row of `nb` blocks against `out.len()` tokens (`y[t * nb..]`) in llama.cpp's tiled order.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn mat_q5_k_tiled(w: &[BlockQ5K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) {
    assert!(w.len() >= nb && y.len() >= out.len() * nb);
    for (t, o) in out.iter_mut().enumerate() {
        let mut acc = 0.0f32;
        for (a, b) in w[..nb].iter().zip(&y[t * nb..(t + 1) * nb]) {
            let (sumi, imin) = q5_k_ints(a, b);
            acc = tiled_fold(acc, f16(a.d), hsum_epi32(sumi), f16(a.dmin), imin, b.d);
        }
        *o = acc;
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        summs = fma1(f16(a.m), f16(b.s), summs);
        let d = _mm256_set1_ps(f16(a.d) * f16(b.d));
        // SAFETY: the caller guarantees AVX2, FMA and F16C.
        let qx = unsafe { a.values() };
        // Unsigned q ≤ 31 × signed activations: within `mul_sum_us8`'s range.
        let p = _mm256_cvtepi32_ps(mul_sum_us8(qx, load_256_i8(&b.qs)));
        acc = _mm256_fmadd_ps(p, d, acc);
    }
    hsum_ps(acc) + summs
}

/// Q5_1 in the 32-element formats' tiles ([`mat_q0`]): llama.cpp multiplies Q5_1 by `ggml_vec_dot_q5_1_q8_1` at
/// every batch size, whose operations are Q4_1's with 5-bit values (`acc = fma(d·y.d, Σ q·y, acc)` per block,
/// `summs = fma(m, y.s, summs)`), so the tiles reproduce [`dot_q5_1_q8_1`] bit for bit.
impl Q0Weight for BlockQ5_1 {
    const DECODE_ROWS: usize = 4;
    type Act = BlockQ8_1;
    const SIGNED: bool = false;
    const HAS_MIN: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn values(&self) -> __m256i {
        let hi = _mm256_and_si256(
            bits_to_bytes(u32::from_le_bytes(self.qh)),
            _mm256_set1_epi8(0x10),
        );
        _mm256_or_si256(nibbles(&self.qs), hi)
    }
    #[inline]
    fn head(&self) -> i32 {
        i32::from_le_bytes([self.d[0], self.d[1], self.m[0], self.m[1]])
    }
    fn act_qs(a: &BlockQ8_1) -> &[i8; 32] {
        &a.qs
    }
}

/// One Q3_K block against one Q8_K block: the 8 lanes of `Σ sc·(q - 4)·y`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q3_k_lanes(a: &BlockQ3K, b: &BlockQ8K) -> __m256i {
    let sc = crate::quant::q3_k_scales(&a.scales);
    let hm = load_256(&a.hmask);
    let mut sumi = _mm256_setzero_si256();
    for h in 0..2 {
        let q = load_at(&a.qs, 32 * h);
        for k in 0..4 {
            // q - 4 = low 2 bits - 4 where the high bit is clear: -4..=3.
            let missing = _mm256_xor_si256(bit_of_bytes(hm, 4 * h + k), _mm256_set1_epi8(1));
            let v = _mm256_sub_epi8(crumbs(q, k), _mm256_slli_epi16(missing, 2));
            let yk = load_at_i8(&b.qs, 128 * h + 32 * k);
            // |q - 4| ≤ 4 with the sign moved onto y (|y| ≤ 127): ≤ 2·4·127 per i16 lane.
            let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(yk, v));
            let g = 8 * h + 2 * k;
            let p = _mm256_madd_epi16(scale_pair(sc[g] as i16, sc[g + 1] as i16), p16);
            sumi = _mm256_add_epi32(sumi, p);
        }
    }
    sumi
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q3_k_q8_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (a, b) in x.iter().zip(y) {
        let d = b.d * f16(a.d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q3_k_lanes(a, b)), acc);
    }
    hsum_ps(acc)
}

/// One Q3_K row of `nb` blocks against `out.len()` tokens in llama.cpp's tiled order.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn mat_q3_k_tiled(w: &[BlockQ3K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) {
    assert!(w.len() >= nb && y.len() >= out.len() * nb);
    for (t, o) in out.iter_mut().enumerate() {
        let mut acc = 0.0f32;
        for (a, b) in w[..nb].iter().zip(&y[t * nb..(t + 1) * nb]) {
            let isum = hsum_epi32(q3_k_lanes(a, b));
            acc = tiled_fold(acc, f16(a.d), isum, 0.0, 0, b.d);
        }
        *o = acc;
    }
}

/// One Q2_K block against one Q8_K block: the 8 lanes of `Σ sc·q·y` and the 8 lanes of mins
/// (lane l = `m[2l]·bsums[2l] + m[2l+1]·bsums[2l+1]`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q2_k_lanes(a: &BlockQ2K, b: &BlockQ8K) -> (__m256i, __m256i) {
    let s = load_128(&a.scales);
    let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4), _mm_set1_epi8(0x0F)));
    // SAFETY: reads exactly the 32 bytes of `bsums`.
    let bsums = unsafe { _mm256_loadu_si256(b.bsums.as_ptr().cast()) };
    // 4-bit mins × |Σ y over 16| ≤ 2032: each pair fits i32.
    let min_lanes = _mm256_madd_epi16(mins, bsums);
    let mut sumi = _mm256_setzero_si256();
    for h in 0..2 {
        let q = load_at(&a.qs, 32 * h);
        for k in 0..4 {
            let g = 8 * h + 2 * k;
            let (s0, s1) = (a.scales[g] & 0xF, a.scales[g + 1] & 0xF);
            // q ≤ 3: ≤ 2·3·127 per i16 lane.
            let p16 = _mm256_maddubs_epi16(crumbs(q, k), load_at_i8(&b.qs, 128 * h + 32 * k));
            let p = _mm256_madd_epi16(scale_pair(s0 as i16, s1 as i16), p16);
            sumi = _mm256_add_epi32(sumi, p);
        }
    }
    (sumi, min_lanes)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q2_k_q8_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (a, b) in x.iter().zip(y) {
        let d = b.d * f16(a.d);
        let dmin = -b.d * f16(a.dmin);
        let (sumi, mins) = q2_k_lanes(a, b);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(mins), acc);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

/// One Q2_K row of `nb` blocks against `out.len()` tokens in llama.cpp's tiled order.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn mat_q2_k_tiled(w: &[BlockQ2K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) {
    assert!(w.len() >= nb && y.len() >= out.len() * nb);
    for (t, o) in out.iter_mut().enumerate() {
        let mut acc = 0.0f32;
        for (a, b) in w[..nb].iter().zip(&y[t * nb..(t + 1) * nb]) {
            let (sumi, mins) = q2_k_lanes(a, b);
            let (isum, imin) = (hsum_epi32(sumi), hsum_epi32(mins));
            acc = tiled_fold(acc, f16(a.d), isum, f16(a.dmin), imin, b.d);
        }
        *o = acc;
    }
}

/// 8 bf16 at `p[at..]` as f32 lanes (ggml's AVX2 `LOAD`: zero-extend, shift into the upper half).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bf16x8(p: &[[u8; 2]], at: usize) -> __m256 {
    let s = &p[at..at + 8];
    // SAFETY: reads exactly the 16 bytes of `s`.
    let v = unsafe { _mm_loadu_si128(s.as_ptr().cast()) };
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16))
}

/// BF16 · BF16 in `ggml_vec_dot_bf16`'s AVX2 order (see [`crate::quant::dot_bf16`]).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_bf16(x: &[[u8; 2]], y: &[[u8; 2]]) -> f32 {
    let h = |v: [u8; 2]| crate::quant::bf16_to_f32(u16::from_le_bytes(v));
    let n = x.len().min(y.len());
    let np = n / 32 * 32;
    let mut c = [_mm256_setzero_ps(); 4];
    for i in (0..np).step_by(32) {
        for (j, c) in c.iter_mut().enumerate() {
            let at = i + 8 * j;
            *c = _mm256_add_ps(_mm256_mul_ps(bf16x8(x, at), bf16x8(y, at)), *c);
        }
    }
    let s = _mm256_add_ps(_mm256_add_ps(c[0], c[2]), _mm256_add_ps(c[1], c[3]));
    let mut sum = hsum_ps(s) as f64;
    for i in np..n {
        sum += (h(x[i]) * h(y[i])) as f64;
    }
    sum as f32
}
