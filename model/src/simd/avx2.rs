//! AVX2+FMA+F16C kernels: the quantized dot products and activation quantizers of [`crate::quant`], vectorised.
//!
//! Intel intrinsics per the Intel Intrinsics Guide. Integer products use `vpmaddubsw` (unsigned × signed bytes →
//! i16 pairs) and `vpmaddwd` (i16 pairs → i32), whose intermediate ranges are noted at each use; the integer sums
//! are therefore exact and only the f32 accumulation order differs from the scalar twins.

use core::arch::x86_64::*;

use super::ActTile;
use crate::quant::{
    scale_min_k4, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ6K, BlockQ8K, BlockQ8_0,
    BlockQ8_1, QK,
};

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
fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_epi32(v: __m256i) -> i32 {
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

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    // Mins as llama.cpp accumulates them: 4 lanes, lane i = m[2i]·bs[2i] + m[2i+1]·bs[2i+1] where bs[j] is the
    // sum of the q8 values of sub-block j, times -d·dmin, fused into the lane.
    let mut acc_m = _mm_setzero_ps();
    let low = _mm256_set1_epi8(0x0F);
    for (a, b) in x.iter().zip(y) {
        let mut sumi = _mm256_setzero_si256();
        let mut sc = [0u8; 8];
        let mut mn = [0i32; 8];
        for (j, (s, m)) in sc.iter_mut().zip(mn.iter_mut()).enumerate() {
            let (sj, mj) = scale_min_k4(j, &a.scales);
            *s = sj;
            *m = mj as i32;
        }
        let bs = |j: usize| b.bsums[2 * j] as i32 + b.bsums[2 * j + 1] as i32;
        let prod = _mm_set_epi32(
            mn[6] * bs(6) + mn[7] * bs(7),
            mn[4] * bs(4) + mn[5] * bs(5),
            mn[2] * bs(2) + mn[3] * bs(3),
            mn[0] * bs(0) + mn[1] * bs(1),
        );
        let dmin = -b.d * f16(a.dmin);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);
        for j in 0..4 {
            let q = load_256(a.qs[32 * j..32 * j + 32].try_into().unwrap_or(&[0; 32]));
            let lo = _mm256_and_si256(q, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
            let y0 = load_256_i8(b.qs[64 * j..64 * j + 32].try_into().unwrap_or(&[0; 32]));
            let y1 = load_256_i8(
                b.qs[64 * j + 32..64 * j + 64]
                    .try_into()
                    .unwrap_or(&[0; 32]),
            );
            // ≤ 2·15·127 per i16 lane, then × a 6-bit scale into i32.
            let p0 = _mm256_madd_epi16(
                _mm256_set1_epi16(sc[2 * j] as i16),
                _mm256_maddubs_epi16(lo, y0),
            );
            let p1 = _mm256_madd_epi16(
                _mm256_set1_epi16(sc[2 * j + 1] as i16),
                _mm256_maddubs_epi16(hi, y1),
            );
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        let d = b.d * f16(a.d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    let m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    let m = _mm_add_ss(m, _mm_movehdup_ps(m));
    hsum_ps(acc) + _mm_cvtss_f32(m)
}

/// Half `half` (0 or 1) of a Q6_K block: its 128 six-bit values (0..=63) in element order, as 4 vectors of 32,
/// from the low nibbles in `ql` and the two high bits in `qh` (ggml's Q6_K layout).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_half(a: &BlockQ6K, half: usize) -> [__m256i; 4] {
    let (m4, m2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
    let ql_a = load_256(
        a.ql[64 * half..64 * half + 32]
            .try_into()
            .unwrap_or(&[0; 32]),
    );
    let ql_b = load_256(
        a.ql[64 * half + 32..64 * half + 64]
            .try_into()
            .unwrap_or(&[0; 32]),
    );
    let qh = load_256(
        a.qh[32 * half..32 * half + 32]
            .try_into()
            .unwrap_or(&[0; 32]),
    );
    // 16-bit shifts only move bits within a byte here: every shifted value is masked to its own byte.
    let hbits = |s: i32| -> __m256i {
        let h = match s {
            0 => qh,
            2 => _mm256_srli_epi16(qh, 2),
            4 => _mm256_srli_epi16(qh, 4),
            _ => _mm256_srli_epi16(qh, 6),
        };
        _mm256_slli_epi16(_mm256_and_si256(h, m2), 4)
    };
    [
        _mm256_or_si256(_mm256_and_si256(ql_a, m4), hbits(0)),
        _mm256_or_si256(_mm256_and_si256(ql_b, m4), hbits(2)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql_a, 4), m4), hbits(4)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql_b, 4), m4), hbits(6)),
    ]
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (a, b) in x.iter().zip(y) {
        // Lanes as llama.cpp forms them: Σ sc·q·y per 4 elements (q unsigned 0..63), minus 32·Σ sc·bsum per pair
        // of 16-element groups, subtracted lane by lane at the end.
        let bsums = _mm256_set_epi16(
            b.bsums[15],
            b.bsums[14],
            b.bsums[13],
            b.bsums[12],
            b.bsums[11],
            b.bsums[10],
            b.bsums[9],
            b.bsums[8],
            b.bsums[7],
            b.bsums[6],
            b.bsums[5],
            b.bsums[4],
            b.bsums[3],
            b.bsums[2],
            b.bsums[1],
            b.bsums[0],
        );
        let sc = &a.scales;
        let scales16 = _mm256_set_epi16(
            sc[15] as i16,
            sc[14] as i16,
            sc[13] as i16,
            sc[12] as i16,
            sc[11] as i16,
            sc[10] as i16,
            sc[9] as i16,
            sc[8] as i16,
            sc[7] as i16,
            sc[6] as i16,
            sc[5] as i16,
            sc[4] as i16,
            sc[3] as i16,
            sc[2] as i16,
            sc[1] as i16,
            sc[0] as i16,
        );
        let sub = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5);
        let mut sumi = _mm256_setzero_si256();
        for half in 0..2 {
            let q = q6_k_half(a, half);
            let mut p = [_mm256_setzero_si256(); 4];
            for (k, qk) in q.iter().enumerate() {
                let off = 128 * half + 32 * k;
                let yk = load_256_i8(b.qs[off..off + 32].try_into().unwrap_or(&[0; 32]));
                let g = off / 16;
                let scv = _mm256_set_m128i(
                    _mm_set1_epi16(sc[g + 1] as i16),
                    _mm_set1_epi16(sc[g] as i16),
                );
                // q ≤ 63: 2·63·127 per i16 lane.
                p[k] = _mm256_madd_epi16(scv, _mm256_maddubs_epi16(*qk, yk));
            }
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p[0], p[1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p[2], p[3]));
        }
        sumi = _mm256_sub_epi32(sumi, sub);
        let d = b.d * f16(a.d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(x: &[u16], y: &[u16]) -> f32 {
    let n = x.len().min(y.len());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n ≤ both lengths, so 8 u16 (16 bytes) are in bounds of each slice.
        let (a, b) = unsafe {
            (
                _mm_loadu_si128(x.as_ptr().add(i).cast()),
                _mm_loadu_si128(y.as_ptr().add(i).cast()),
            )
        };
        acc = _mm256_fmadd_ps(_mm256_cvtph_ps(a), _mm256_cvtph_ps(b), acc);
        i += 8;
    }
    let mut sum = hsum_ps(acc);
    for j in i..n {
        sum += f16(x[j].to_le_bytes()) * f16(y[j].to_le_bytes());
    }
    sum
}

/// Rows per pass of [`dots_f16`]: enough independent FMA chains to cover the FMA latency.
const DOTS_ROWS: usize = 8;

/// `out[i] = dot_f16(x[i * stride..][..y.len()], y)` for every `i < out.len()`, bit for bit: each row keeps its own
/// 8-lane chain, [`DOTS_ROWS`] rows advance together and share each converted block of `y`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dots_f16(x: &[u16], stride: usize, y: &[u16], out: &mut [f32]) {
    let n = y.len();
    let rows = out.len();
    assert!(rows == 0 || x.len() >= (rows - 1) * stride + n);
    let n8 = n / 8 * 8;
    let full = rows / DOTS_ROWS * DOTS_ROWS;
    for r in (0..full).step_by(DOTS_ROWS) {
        let mut acc = [_mm256_setzero_ps(); DOTS_ROWS];
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 ≤ n = y.len().
            let b = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(y.as_ptr().add(i).cast()) });
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: (r + j) * stride + i + 8 ≤ (rows - 1) * stride + n ≤ x.len() (asserted above).
                let xa = unsafe { _mm_loadu_si128(x.as_ptr().add((r + j) * stride + i).cast()) };
                *a = _mm256_fmadd_ps(_mm256_cvtph_ps(xa), b, *a);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            let row = &x[(r + j) * stride..(r + j) * stride + n];
            let mut sum = hsum_ps(*a);
            for k in n8..n {
                sum += f16(row[k].to_le_bytes()) * f16(y[k].to_le_bytes());
            }
            out[r + j] = sum;
        }
    }
    for (i, o) in out.iter_mut().enumerate().skip(full) {
        // SAFETY: the caller guarantees AVX2, FMA and F16C.
        *o = unsafe { dot_f16(&x[i * stride..i * stride + n], y) };
    }
}

/// Rounds 32 floats times `id` to i32 (nearest, ties to even) and returns them with the block's absolute maximum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn block_amax(xs: &[f32]) -> (f32, [__m256; 4]) {
    let sign = _mm256_set1_ps(-0.0);
    let v = [
        load_ps(xs[0..8].try_into().unwrap_or(&[0.0; 8])),
        load_ps(xs[8..16].try_into().unwrap_or(&[0.0; 8])),
        load_ps(xs[16..24].try_into().unwrap_or(&[0.0; 8])),
        load_ps(xs[24..32].try_into().unwrap_or(&[0.0; 8])),
    ];
    let mut m = _mm256_andnot_ps(sign, v[0]);
    for vi in &v[1..] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
    }
    let h = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_max_ss(h, _mm_movehdup_ps(h));
    (_mm_cvtss_f32(h), v)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_block(v: &[__m256; 4], id: f32, qs: &mut [i8; QK]) -> i32 {
    let mul = _mm256_set1_ps(id);
    let mut sum = _mm256_setzero_si256();
    let mut tmp = [0i32; 8];
    for (k, vk) in v.iter().enumerate() {
        let r = _mm256_cvtps_epi32(_mm256_round_ps(
            _mm256_mul_ps(*vk, mul),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        ));
        sum = _mm256_add_epi32(sum, r);
        // SAFETY: `tmp` holds exactly 8 i32 = 32 bytes.
        unsafe { _mm256_storeu_si256(tmp.as_mut_ptr().cast(), r) };
        for (q, &t) in qs[8 * k..8 * k + 8].iter_mut().zip(&tmp) {
            *q = t as i8;
        }
    }
    hsum_epi32(sum)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let (amax, v) = block_amax(xs);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        b.d = crate::quant::f32_to_f16(d);
        round_block(&v, id, &mut b.qs);
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let (amax, v) = block_amax(xs);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        b.d = crate::quant::f32_to_f16(d);
        let sum = round_block(&v, id, &mut b.qs);
        b.s = crate::quant::f32_to_f16(d * sum as f32);
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16_ggml(x: &[u16], y: &[u16]) -> f32 {
    let n = x.len().min(y.len());
    let np = n / 32 * 32;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i < np {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8j + 8 ≤ np ≤ both lengths.
            let (p, q) = unsafe {
                (
                    _mm_loadu_si128(x.as_ptr().add(i + 8 * j).cast()),
                    _mm_loadu_si128(y.as_ptr().add(i + 8 * j).cast()),
                )
            };
            *a = _mm256_fmadd_ps(_mm256_cvtph_ps(p), _mm256_cvtph_ps(q), *a);
        }
        i += 32;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
    let t0 = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    let t1 = _mm_hadd_ps(t0, t0);
    let mut sum = _mm_cvtss_f32(_mm_hadd_ps(t1, t1)) as f64;
    for j in np..n {
        sum += (f16(x[j].to_le_bytes()) * f16(y[j].to_le_bytes())) as f64;
    }
    sum as f32
}

/// ggml's `ggml_v_expf` on 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn expf8(x: __m256) -> __m256 {
    let r = _mm256_set1_ps(f32::from_bits(0x4b40_0000));
    let z = _mm256_fmadd_ps(x, _mm256_set1_ps(f32::from_bits(0x3fb8_aa3b)), r);
    let n = _mm256_sub_ps(z, r);
    let b = _mm256_fnmadd_ps(
        n,
        _mm256_set1_ps(f32::from_bits(0x35bf_be8e)),
        _mm256_fnmadd_ps(n, _mm256_set1_ps(f32::from_bits(0x3f31_7200)), x),
    );
    let e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    let k = _mm256_castsi256_ps(_mm256_add_epi32(
        e,
        _mm256_castps_si256(_mm256_set1_ps(1.0)),
    ));
    let c = _mm256_cmp_ps(
        _mm256_andnot_ps(_mm256_set1_ps(-0.0), n),
        _mm256_set1_ps(126.0),
        _CMP_GT_OQ,
    );
    let u = _mm256_mul_ps(b, b);
    let set = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(set(0x3c07_2010), b, set(0x3d2b_9f17)),
            u,
            _mm256_fmadd_ps(set(0x3e2a_af33), b, set(0x3eff_fedb)),
        ),
        u,
        _mm256_mul_ps(set(0x3f7f_fff6), b),
    );
    if _mm256_movemask_ps(c) == 0 {
        return _mm256_fmadd_ps(j, k, k);
    }
    let d = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
        _mm256_set1_epi32(0x8200_0000u32 as i32),
    );
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(d, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, d));
    let g = _mm256_cmp_ps(
        _mm256_andnot_ps(_mm256_set1_ps(-0.0), n),
        _mm256_set1_ps(192.0),
        _CMP_GT_OQ,
    );
    _mm256_or_ps(
        _mm256_and_ps(g, _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(
            g,
            _mm256_or_ps(
                _mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)),
            ),
        ),
    )
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn softmax_exp(x: &mut [f32], max: f32) -> f64 {
    let mut sum = 0.0f64;
    let m = _mm256_set1_ps(max);
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` is exactly 8 floats.
        let v = expf8(_mm256_sub_ps(unsafe { _mm256_loadu_ps(c.as_ptr()) }, m));
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), v) };
        sum += hsum_ps(v) as f64;
    }
    for v in chunks.into_remainder() {
        *v = libm::expf(*v - max);
        sum += *v as f64;
    }
    sum
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
    let n8 = gate.len().min(up.len()) / 8 * 8;
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 ≤ n8 ≤ both lengths.
        let (x, u) = unsafe {
            (
                _mm256_loadu_ps(gate.as_ptr().add(i)),
                _mm256_loadu_ps(up.as_ptr().add(i)),
            )
        };
        let s = _mm256_div_ps(
            x,
            _mm256_add_ps(one, expf8(_mm256_sub_ps(_mm256_setzero_ps(), x))),
        );
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(gate.as_mut_ptr().add(i), _mm256_mul_ps(s, u)) };
        i += 8;
    }
    for (g, &u) in gate[n8..].iter_mut().zip(&up[n8..]) {
        let x = *g;
        *g = x / (1.0 + libm::expf(-x)) * u;
    }
}

/// `gate = gelu(gate) * up` through ggml's f16 GELU table (`table[f16 bits of x]`, 65,536 entries): 0 for
/// x ≤ -10, x·up for x ≥ 10, as [`crate::math::geglu_lookup`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn geglu_lookup(table: &[u16], gate: &mut [f32], up: &[f32]) {
    assert!(table.len() == 1 << 16);
    let n8 = gate.len().min(up.len()) / 8 * 8;
    let (lo, hi) = (_mm256_set1_ps(-10.0), _mm256_set1_ps(10.0));
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 ≤ n8 ≤ both lengths.
        let (x, u) = unsafe {
            (
                _mm256_loadu_ps(gate.as_ptr().add(i)),
                _mm256_loadu_ps(up.as_ptr().add(i)),
            )
        };
        // Round to nearest even, as the scalar f32 → f16 conversion.
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
        let mut idx = [0u16; 8];
        // SAFETY: writes exactly the 16 bytes of `idx`.
        unsafe { _mm_storeu_si128(idx.as_mut_ptr().cast(), h) };
        // SAFETY: a u16 index is below the table's 65,536 entries (asserted above).
        let g: [u16; 8] =
            core::array::from_fn(|j| unsafe { *table.get_unchecked(idx[j] as usize) });
        // SAFETY: reads exactly the 16 bytes of `g`.
        let gv = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(g.as_ptr().cast()) });
        let r = _mm256_blendv_ps(
            _mm256_mul_ps(gv, u),
            _mm256_mul_ps(x, u),
            _mm256_cmp_ps::<_CMP_GE_OQ>(x, hi),
        );
        let r = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(x, lo), r);
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(gate.as_mut_ptr().add(i), r) };
    }
    crate::math::geglu_lookup(table, &mut gate[n8..], &up[n8..]);
}

// ---- multi-row × multi-token tiles of the 32-element formats (decode and prefill matrix products) ----
//
// One token: `R` weight rows stream past one activation row, each block unpacked as it is read. A batch: every
// group of rows is unpacked once into a small buffer, then multiplied against the batch in `R × C` tiles, so each
// activation block is loaded once per `R` rows and no weight block is unpacked twice. Every output keeps its own
// accumulator and sees exactly the operations of the single-row kernels above (and of llama.cpp's
// `ggml_vec_dot_*` and tinyBLAS), in the same order, so the results are bit-identical to them.

/// A 32-element weight block whose products with 8-bit activations fit one `vpmaddubsw` per block. Every such
/// block starts with its f16 scale `d`; Q4_1's f16 min `m` follows it.
pub trait Q0Weight: Copy {
    /// Activation block type llama.cpp pairs with this weight type.
    type Act: Copy;
    /// `true`: the decoded bytes are signed (the sign is moved onto the activations); `false`: unsigned ≤ 15.
    const SIGNED: bool;
    /// Whether the block carries a min `m`, accumulated as `fma(m, s, summs)` against the activations' `s`.
    const HAS_MIN: bool;
    /// Rows per tile when multiplying one token (1, 2 or 4; measured per format).
    const DECODE_ROWS: usize;
    /// The block's 32 values as bytes.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    unsafe fn values(&self) -> __m256i;
    /// The first four bytes: `d`, then `m` (Q4_1) or bytes that are ignored.
    fn head(&self) -> i32;
    /// The activation block's 32 quantized values.
    fn act_qs(a: &Self::Act) -> &[i8; 32];
}

impl Q0Weight for BlockQ4_0 {
    const DECODE_ROWS: usize = 4;
    type Act = BlockQ8_0;
    const SIGNED: bool = true;
    const HAS_MIN: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn values(&self) -> __m256i {
        _mm256_sub_epi8(nibbles(&self.qs), _mm256_set1_epi8(8))
    }
    #[inline]
    fn head(&self) -> i32 {
        i32::from_le_bytes([self.d[0], self.d[1], self.qs[0], self.qs[1]])
    }
    fn act_qs(a: &BlockQ8_0) -> &[i8; 32] {
        &a.qs
    }
}

impl Q0Weight for BlockQ4_1 {
    const DECODE_ROWS: usize = 4;
    type Act = BlockQ8_1;
    const SIGNED: bool = false;
    const HAS_MIN: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn values(&self) -> __m256i {
        nibbles(&self.qs)
    }
    #[inline]
    fn head(&self) -> i32 {
        i32::from_le_bytes([self.d[0], self.d[1], self.m[0], self.m[1]])
    }
    fn act_qs(a: &BlockQ8_1) -> &[i8; 32] {
        &a.qs
    }
}

impl Q0Weight for BlockQ5_0 {
    const DECODE_ROWS: usize = 4;
    type Act = BlockQ8_0;
    const SIGNED: bool = true;
    const HAS_MIN: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn values(&self) -> __m256i {
        // As in `dot_q5_0_q8_0`: OR-ing 0xF0 where bit 4 is clear gives (q - 16) as a signed byte.
        let hi = _mm256_andnot_si256(
            bits_to_bytes(u32::from_le_bytes(self.qh)),
            _mm256_set1_epi8(0xF0u8 as i8),
        );
        _mm256_or_si256(nibbles(&self.qs), hi)
    }
    #[inline]
    fn head(&self) -> i32 {
        i32::from_le_bytes([self.d[0], self.d[1], self.qh[0], self.qh[1]])
    }
    fn act_qs(a: &BlockQ8_0) -> &[i8; 32] {
        &a.qs
    }
}

impl Q0Weight for BlockQ8_0 {
    // Streaming 34-byte blocks, several rows at once measured slower here than one row at a time.
    const DECODE_ROWS: usize = 1;
    type Act = BlockQ8_0;
    const SIGNED: bool = true;
    const HAS_MIN: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn values(&self) -> __m256i {
        load_256_i8(&self.qs)
    }
    #[inline]
    fn head(&self) -> i32 {
        i32::from_le_bytes([self.d[0], self.d[1], 0, 0])
    }
    fn act_qs(a: &BlockQ8_0) -> &[i8; 32] {
        &a.qs
    }
}

/// Lane `i` of `v` in all eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lane(v: __m256, i: usize) -> __m256 {
    _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(i as i32))
}

/// How far ahead [`decode_tile`] prefetches weights (bytes; at least one tile).
const PREFETCH_BYTES: usize = 4096;

/// One token (`y.batch == 1`): `out[r] = row r · y` for `R ≤ 4` rows of `nb` blocks at the start of `w`, each
/// row's blocks unpacked as they stream past and every activation block shared by the `R` rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
// Row r indexes several parallel per-row arrays at once; iterators would hide that.
#[allow(clippy::needless_range_loop)]
unsafe fn decode_tile<W: Q0Weight, const R: usize>(
    w: &[W],
    nb: usize,
    y: &ActTile<'_, W::Act>,
    out: &mut [f32; R],
) {
    const { assert!(R >= 1 && R <= 4) };
    // These checks make every unchecked index below in bounds: row r block k is w[r * nb + k] with r < R, k < nb;
    // block k of the token is y.qs[k] and its scales y.d[k], y.s[k] (batch 1, col0 0).
    assert!(
        w.len() >= R * nb && y.qs.len() >= nb && y.d.len() >= nb && y.batch == 1 && y.col0 == 0
    );
    assert!(!W::HAS_MIN || y.s.len() >= nb);
    let mut acc = [_mm256_setzero_ps(); R];
    // Lane 2r + 1: Q4_1's `summs` of row r; lanes are independent, so each is exactly the scalar FMA chain
    // `summs = fma(m, s, summs)` llama.cpp's C code becomes under GCC's contraction.
    let mut summs = _mm256_setzero_ps();
    let ones = _mm256_set1_epi16(1);
    // Software prefetch of the weights PREFETCH_BYTES ahead, spread over this tile's iterations (R blocks'
    // worth of bytes per block step): the rows are contiguous, so that is the stream the next tiles will read.
    let bs = core::mem::size_of::<W>();
    let ahead = w
        .as_ptr()
        .cast::<i8>()
        .wrapping_add(PREFETCH_BYTES.max(R * nb * bs));
    for k in 0..nb {
        let p = ahead.wrapping_add(k * R * bs);
        // Prefetching never faults, whatever the address; past the end of the matrix it is only wasted.
        _mm_prefetch::<_MM_HINT_T0>(p);
        if R * bs > 64 {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
        }
        // SAFETY: r * nb + k < R * nb ≤ w.len() (asserted above).
        let blocks: [&W; R] = core::array::from_fn(|r| unsafe { w.get_unchecked(r * nb + k) });
        // [d0, m0, d1, m1, ...] as f32.
        let mut h = [0i32; 4];
        for r in 0..R {
            h[r] = blocks[r].head();
        }
        let dm = _mm256_cvtph_ps(_mm_set_epi32(h[3], h[2], h[1], h[0]));
        // SAFETY: k < nb ≤ y.d.len() (asserted above).
        let yd = unsafe { *y.d.get_unchecked(k) };
        let dd = _mm256_mul_ps(dm, _mm256_set1_ps(yd));
        if W::HAS_MIN {
            // SAFETY: as for `yd`.
            let ys = unsafe { *y.s.get_unchecked(k) };
            summs = _mm256_fmadd_ps(dm, _mm256_set1_ps(ys), summs);
        }
        // SAFETY: k < nb ≤ y.qs.len() (asserted above).
        let qy = load_256_i8(W::act_qs(unsafe { y.qs.get_unchecked(k) }));
        for r in 0..R {
            // SAFETY: the caller guarantees AVX2, FMA and F16C.
            let qx = unsafe { blocks[r].values() };
            let (ax, by) = if W::SIGNED {
                (_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx))
            } else {
                (qx, qy)
            };
            // Unsigned bytes ≤ 128 × signed bytes ≤ 127 in magnitude: no `vpmaddubsw` saturation.
            let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(ax, by), ones));
            acc[r] = _mm256_fmadd_ps(lane(dd, 2 * r), p, acc[r]);
        }
    }
    let mut m = [0.0f32; 8];
    // SAFETY: writes exactly the 8 floats of `m`.
    unsafe { _mm256_storeu_ps(m.as_mut_ptr(), summs) };
    for r in 0..R {
        out[r] = if W::HAS_MIN {
            hsum_ps(acc[r]) + m[2 * r + 1]
        } else {
            hsum_ps(acc[r])
        };
    }
}

/// One token (`y.batch == 1`): `R` rows at a time share each activation block.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_rows<W: Q0Weight, const R: usize>(
    w: &[W],
    nb: usize,
    y: &ActTile<'_, W::Act>,
    out: &mut [f32],
) {
    let done = out.len() / R * R;
    for (i, o) in out[..done].chunks_exact_mut(R).enumerate() {
        let o: &mut [f32; R] = o.try_into().expect("chunks_exact gives R floats");
        // SAFETY: the caller guarantees AVX2, FMA and F16C.
        unsafe { decode_tile::<W, R>(&w[i * R * nb..], nb, y, o) };
    }
    for r in done..out.len() {
        let mut o = [0.0f32; 1];
        // SAFETY: as above.
        unsafe { decode_tile::<W, 1>(&w[r * nb..], nb, y, &mut o) };
        out[r] = o[0];
    }
}

/// `out[c * ld + r] = W[r] · y[col0 + c]` for every row of `w` (`w.len() / nb` rows of `nb` blocks) and the `cols`
/// columns of `y` from `y.col0` (`y.qs` starting at column `col0`'s blocks).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn mat_q0<W: Q0Weight>(
    w: &[W],
    nb: usize,
    y: &ActTile<'_, W::Act>,
    cols: usize,
    out: &mut [f32],
    ld: usize,
) {
    if y.batch == 1 {
        let out = &mut out[..w.len() / nb.max(1)];
        match W::DECODE_ROWS {
            // SAFETY: the caller guarantees AVX2, FMA and F16C.
            4 => unsafe { decode_rows::<W, 4>(w, nb, y, out) },
            // SAFETY: as above.
            2 => unsafe { decode_rows::<W, 2>(w, nb, y, out) },
            // SAFETY: as above.
            _ => unsafe { decode_rows::<W, 1>(w, nb, y, out) },
        }
        return;
    }
    // SAFETY: the caller guarantees AVX2, FMA and F16C.
    unsafe { mat_q0_batch::<W>(w, nb, y, cols, out, ld) }
}

/// A weight block unpacked once per batched product: `ax` is the operand `vpmaddubsw` takes unsigned (|q| for
/// signed formats, q itself otherwise) and `sx` the signed values whose signs move onto the activations.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Unpacked {
    ax: [u8; 32],
    sx: [u8; 32],
}

/// Rows per group of a batched product: unpacked together, then multiplied in `TILE_ROWS × TILE_COLS` tiles.
const TILE_ROWS: usize = 2;
/// Columns per tile of a batched product.
const TILE_COLS: usize = 4;

/// Unpacks `rows` rows of `nb` blocks (at most [`TILE_ROWS`]) into `un` (row-major) and their `[d, m]` into `dm`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_rows<W: Q0Weight>(
    w: &[W],
    nb: usize,
    rows: usize,
    un: &mut [Unpacked],
    dm: &mut [[f32; 2]],
) {
    for (i, b) in w[..rows * nb].iter().enumerate() {
        // SAFETY: the caller guarantees AVX2, FMA and F16C.
        let q = unsafe { b.values() };
        let a = if W::SIGNED { _mm256_sign_epi8(q, q) } else { q };
        // SAFETY: each store writes exactly the 32 bytes of its array.
        unsafe {
            _mm256_storeu_si256(un[i].ax.as_mut_ptr().cast(), a);
            _mm256_storeu_si256(un[i].sx.as_mut_ptr().cast(), q);
        }
        let h = _mm_cvtph_ps(_mm_cvtsi32_si128(b.head()));
        dm[i] = [_mm_cvtss_f32(h), _mm_cvtss_f32(_mm_movehdup_ps(h))];
    }
}

/// `out[r][c] = row r · column c` for `R` unpacked rows (`un[r * nb + k]`, scales `dm[r * nb + k]`) and `C`
/// columns of `y`, each output in exactly the operations of the single-row kernel.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
unsafe fn tile_unpacked<W: Q0Weight, const R: usize, const C: usize>(
    un: &[Unpacked],
    dm: &[[f32; 2]],
    nb: usize,
    y: &ActTile<'_, W::Act>,
    out: &mut [[f32; C]; R],
) {
    const { assert!(R >= 1 && R <= 4 && C >= 1 && C <= 8) };
    // These checks make every unchecked index below in bounds (as in `tile`).
    assert!(
        un.len() >= R * nb && dm.len() >= R * nb && y.qs.len() >= C * nb && y.col0 + C <= y.batch
    );
    assert!(nb == 0 || (y.d.len() >= (nb - 1) * y.batch + y.col0 + C));
    assert!(!W::HAS_MIN || nb == 0 || (y.s.len() >= (nb - 1) * y.batch + y.col0 + C));
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    // Lane c of summs[r] is row r × column c (Q4_1's `fma(m, s, summs)` chain).
    let mut summs = [_mm256_setzero_ps(); R];
    let ones = _mm256_set1_epi16(1);
    for k in 0..nb {
        let at = k * y.batch + y.col0;
        // SAFETY: r * nb + k < R * nb (asserted above).
        let xs: [&Unpacked; R] = core::array::from_fn(|r| unsafe { un.get_unchecked(r * nb + k) });
        // SAFETY: as for `xs`.
        let xdm: [[f32; 2]; R] = core::array::from_fn(|r| unsafe { *dm.get_unchecked(r * nb + k) });
        let ax: [__m256i; R] = core::array::from_fn(|r| load_256(&xs[r].ax));
        if W::HAS_MIN {
            let mut sv = [0.0f32; 8];
            // SAFETY: at + c for c < C is within y.s (asserted above).
            sv[..C].copy_from_slice(unsafe { y.s.get_unchecked(at..at + C) });
            let sv = load_ps(&sv);
            for r in 0..R {
                summs[r] = _mm256_fmadd_ps(_mm256_set1_ps(xdm[r][1]), sv, summs[r]);
            }
        }
        // dd[r][c] = d_r · d_c, formed 8 columns at a time and read back one broadcast per product (a load,
        // not two arithmetic instructions).
        let mut yd = [0.0f32; 8];
        // SAFETY: at + c for c < C is within y.d (asserted above).
        yd[..C].copy_from_slice(unsafe { y.d.get_unchecked(at..at + C) });
        let ydv = load_ps(&yd);
        let mut dd = [[0.0f32; 8]; R];
        for r in 0..R {
            // SAFETY: writes exactly the 8 floats of `dd[r]`.
            unsafe {
                _mm256_storeu_ps(
                    dd[r].as_mut_ptr(),
                    _mm256_mul_ps(_mm256_set1_ps(xdm[r][0]), ydv),
                )
            };
        }
        for c in 0..C {
            // SAFETY: c * nb + k within y.qs (asserted above).
            let yb = unsafe { y.qs.get_unchecked(c * nb + k) };
            let qy = load_256_i8(W::act_qs(yb));
            for r in 0..R {
                let by = if W::SIGNED {
                    _mm256_sign_epi8(qy, load_256(&xs[r].sx))
                } else {
                    qy
                };
                // Unsigned bytes ≤ 128 × signed bytes ≤ 127 in magnitude: no `vpmaddubsw` saturation.
                let p =
                    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(ax[r], by), ones));
                acc[r][c] = _mm256_fmadd_ps(_mm256_broadcast_ss(&dd[r][c]), p, acc[r][c]);
            }
        }
    }
    for r in 0..R {
        let mut m = [0.0f32; 8];
        // SAFETY: writes exactly the 8 floats of `m`.
        unsafe { _mm256_storeu_ps(m.as_mut_ptr(), summs[r]) };
        for c in 0..C {
            out[r][c] = if W::HAS_MIN {
                hsum_ps(acc[r][c]) + m[c]
            } else {
                hsum_ps(acc[r][c])
            };
        }
    }
}

/// The batched product (`y.batch > 1`), output as [`mat_q0`]'s: groups of [`TILE_ROWS`] rows are unpacked once,
/// then multiplied against the columns [`TILE_COLS`] at a time (the last `cols % TILE_COLS` one at a time).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mat_q0_batch<W: Q0Weight>(
    w: &[W],
    nb: usize,
    y: &ActTile<'_, W::Act>,
    cols: usize,
    out: &mut [f32],
    ld: usize,
) {
    let rows = w.len().checked_div(nb).unwrap_or(0);
    let mut un = alloc::vec![Unpacked { ax: [0; 32], sx: [0; 32] }; TILE_ROWS * nb];
    let mut dm = alloc::vec![[0.0f32; 2]; TILE_ROWS * nb];
    let mut r = 0;
    while r < rows {
        let n = TILE_ROWS.min(rows - r);
        // SAFETY: the caller guarantees AVX2, FMA and F16C.
        unsafe { unpack_rows::<W>(&w[r * nb..], nb, n, &mut un, &mut dm) };
        let mut c = 0;
        while c < cols {
            let sub = ActTile {
                qs: &y.qs[c * nb..],
                d: y.d,
                s: y.s,
                batch: y.batch,
                col0: y.col0 + c,
            };
            if c + TILE_COLS <= cols && n == TILE_ROWS {
                let mut o = [[0.0f32; TILE_COLS]; TILE_ROWS];
                // SAFETY: as above.
                unsafe { tile_unpacked::<W, TILE_ROWS, TILE_COLS>(&un, &dm, nb, &sub, &mut o) };
                for j in 0..TILE_COLS {
                    for (i, row) in o.iter().enumerate() {
                        out[(c + j) * ld + r + i] = row[j];
                    }
                }
                c += TILE_COLS;
            } else if c + TILE_COLS <= cols {
                for i in 0..n {
                    let mut o = [[0.0f32; TILE_COLS]; 1];
                    // SAFETY: as above.
                    unsafe {
                        tile_unpacked::<W, 1, TILE_COLS>(
                            &un[i * nb..],
                            &dm[i * nb..],
                            nb,
                            &sub,
                            &mut o,
                        )
                    };
                    for (j, &v) in o[0].iter().enumerate() {
                        out[(c + j) * ld + r + i] = v;
                    }
                }
                c += TILE_COLS;
            } else {
                for i in 0..n {
                    let mut o = [[0.0f32; 1]; 1];
                    // SAFETY: as above.
                    unsafe {
                        tile_unpacked::<W, 1, 1>(&un[i * nb..], &dm[i * nb..], nb, &sub, &mut o)
                    };
                    out[c * ld + r + i] = o[0][0];
                }
                c += 1;
            }
        }
        r += n;
    }
}

// ---- K-quant products in llama.cpp's batched orders (see `crate::quant`, "scalar models of llama.cpp's batched
// K-quant kernels"). Weights are read in place: `w` holds whole rows of `nb` blocks each, row r at `w[r * nb..]`.
// Every integer total is exact (ranges at each `vpmaddubsw`), so any reduction order of the integers gives the same
// value; the f32 operations per output are exactly those of the scalar twins. ----

/// The 8 six-bit scales and 8 mins of a Q4_K block, as the i16 lanes of two 128-bit vectors.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_scales_mins(s: &[u8; 12]) -> (__m128i, __m128i) {
    // Little-endian words of the 12 packed bytes; layout per `scale_min_k4`: bytes 0-3 low 6 bits = sc0-3,
    // bytes 4-7 low 6 bits = m0-3, bytes 8-11 = low nibbles sc4-7 / high nibbles m4-7, whose top 2 bits are the
    // top 2 bits of bytes 0-3 (sc) and 4-7 (m).
    let w0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let w1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let w2 = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let sc_lo = w0 & 0x3f3f_3f3f;
    let m_lo = w1 & 0x3f3f_3f3f;
    let sc_hi = (w2 & 0x0f0f_0f0f) | (((w0 >> 6) & 0x0303_0303) << 4);
    let m_hi = ((w2 >> 4) & 0x0f0f_0f0f) | (((w1 >> 6) & 0x0303_0303) << 4);
    let sc = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, sc_hi as i32, sc_lo as i32));
    let m = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, m_hi as i32, m_lo as i32));
    (sc, m)
}

/// Lane `j` (an i16) of the 8 lanes `v` (duplicated in both 128-bit halves) in all 16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bcast16(v: __m256i, j: usize) -> __m256i {
    // Byte pair (2j, 2j+1) selected into every i16 lane of each half.
    let pick = (((2 * j + 1) << 8) | (2 * j)) as i16;
    _mm256_shuffle_epi8(v, _mm256_set1_epi16(pick))
}

/// Σ over sub-blocks 2p and 2p+1 of sc_j · Σ q·y for one Q4_K block and one Q8_K block, as 8 i32 lanes.
/// Nibbles ≤ 15 times |y| ≤ 127: ≤ 2·15·127 per `vpmaddubsw` lane; times a 6-bit scale fits i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_pair(a: &BlockQ4K, y: &BlockQ8K, p: usize, sc0: __m256i, sc1: __m256i) -> __m256i {
    let low = _mm256_set1_epi8(0x0F);
    let q = load_256(a.qs[32 * p..32 * p + 32].try_into().unwrap_or(&[0; 32]));
    let lo = _mm256_and_si256(q, low);
    let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
    let y0 = load_256_i8(y.qs[64 * p..64 * p + 32].try_into().unwrap_or(&[0; 32]));
    let y1 = load_256_i8(
        y.qs[64 * p + 32..64 * p + 64]
            .try_into()
            .unwrap_or(&[0; 32]),
    );
    _mm256_add_epi32(
        _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y0), sc0),
        _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y1), sc1),
    )
}

/// Lane r of the result = the sum of the 8 lanes of `v[r]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum8x8(v: &[__m256i; 8]) -> __m256i {
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    let h45 = _mm256_hadd_epi32(v[4], v[5]);
    let h67 = _mm256_hadd_epi32(v[6], v[7]);
    // Per 128-bit half: [r0, r1, r2, r3] partial sums of that half's lanes.
    let h0123 = _mm256_hadd_epi32(h01, h23);
    let h4567 = _mm256_hadd_epi32(h45, h67);
    let lo = _mm256_permute2x128_si256(h0123, h4567, 0x20);
    let hi = _mm256_permute2x128_si256(h0123, h4567, 0x31);
    _mm256_add_epi32(lo, hi)
}

/// The Q8_K block's 16 group sums added in pairs: i16 lane j = Σ y over sub-block j (|·| ≤ 32·127).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bsum_pairs(y: &BlockQ8K) -> __m128i {
    // SAFETY: reads exactly the 32 bytes of `bsums`.
    let b = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
    _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1))
}

/// The f16 fields at byte offset `off` of 8 blocks as f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16x8(h: [u16; 8]) -> __m256 {
    // SAFETY: reads exactly the 16 bytes of `h`.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(h.as_ptr().cast()) })
}

/// One token against 8 Q4_K rows (llama.cpp's repacked gemv order): `out[r] = W[r] · y`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
// Row r indexes several per-row arrays at once.
#[allow(clippy::needless_range_loop)]
pub unsafe fn mat_q4_k_gemv8(w: &[BlockQ4K], nb: usize, y: &[BlockQ8K], out: &mut [f32; 8]) {
    assert!(w.len() >= 8 * nb && y.len() >= nb);
    let (mut acc, mut accm) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for k in 0..nb {
        let yb = &y[k];
        let bp = bsum_pairs(yb);
        let mut sums = [_mm256_setzero_si256(); 8];
        let mut mins = [_mm_setzero_si128(); 8];
        let (mut d, mut dmin) = ([0u16; 8], [0u16; 8]);
        for r in 0..8 {
            let a = &w[r * nb + k];
            // The next group of 8 rows (the stream the next call reads), one block's 144 bytes per (row, block).
            let ahead = (a as *const BlockQ4K)
                .cast::<i8>()
                .wrapping_add(8 * nb * 144);
            // Prefetching never faults, whatever the address; past the end of the matrix it is only wasted.
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(128));
            d[r] = u16::from_le_bytes(a.d);
            dmin[r] = u16::from_le_bytes(a.dmin);
            let (sc, m) = q4_k_scales_mins(&a.scales);
            let sc = _mm256_broadcastsi128_si256(sc);
            let mut s = _mm256_setzero_si256();
            for p in 0..4 {
                s = _mm256_add_epi32(
                    s,
                    q4_k_pair(a, yb, p, bcast16(sc, 2 * p), bcast16(sc, 2 * p + 1)),
                );
            }
            sums[r] = s;
            // 6-bit mins × |Σ y| ≤ 4064: each `vpmaddwd` pair fits i32.
            mins[r] = _mm_madd_epi16(m, bp);
        }
        let isum = hsum8x8(&sums);
        let m01 = _mm_hadd_epi32(mins[0], mins[1]);
        let m23 = _mm_hadd_epi32(mins[2], mins[3]);
        let m45 = _mm_hadd_epi32(mins[4], mins[5]);
        let m67 = _mm_hadd_epi32(mins[6], mins[7]);
        let imin = _mm256_set_m128i(_mm_hadd_epi32(m45, m67), _mm_hadd_epi32(m01, m23));
        let yd = _mm256_set1_ps(yb.d);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(f16x8(d), yd), acc);
        accm = _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(imin),
            _mm256_mul_ps(f16x8(dmin), yd),
            accm,
        );
    }
    // SAFETY: writes exactly the 8 floats of `out`.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_sub_ps(acc, accm)) };
}

/// Block k of 8 Q4_K rows unpacked once for every token of a batched product, interleaved so that 32-bit lane r
/// of every vector belongs to row r (as llama.cpp's repacked layout, which spares the horizontal sums):
/// `q[j][g]` holds elements 4g..4g+4 of sub-block j of each row, `sc[j]` sub-block j's scale in both i16 halves
/// of lane r, `mn[p]` the mins of sub-blocks 2p and 2p+1 as the two i16 halves of lane r, then `d` and `dmin`.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Q4KRows {
    q: [[[u8; 32]; 8]; 8],
    sc: [[i16; 16]; 8],
    mn: [[i16; 16]; 4],
    d: [f32; 8],
    dmin: [f32; 8],
}

/// Unpacks block k of the 8 rows `w[r * nb + k]` for every k into `u`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_q4_k_rows(w: &[BlockQ4K], nb: usize, u: &mut [Q4KRows]) {
    for (k, uk) in u.iter_mut().enumerate().take(nb) {
        for r in 0..8 {
            let a = &w[r * nb + k];
            uk.d[r] = f16(a.d);
            uk.dmin[r] = f16(a.dmin);
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, &a.scales);
                uk.sc[j][2 * r] = sc as i16;
                uk.sc[j][2 * r + 1] = sc as i16;
                uk.mn[j / 2][2 * r + j % 2] = m as i16;
            }
            for p in 0..4 {
                // Sub-block 2p is the low nibbles of qs[32p..32p + 32], sub-block 2p + 1 the high nibbles.
                let qs = &a.qs[32 * p..32 * p + 32];
                for g in 0..8 {
                    for e in 0..4 {
                        let b = qs[4 * g + e];
                        uk.q[2 * p][g][4 * r + e] = b & 0x0F;
                        uk.q[2 * p + 1][g][4 * r + e] = b >> 4;
                    }
                }
            }
        }
    }
}

/// One token `y` against 8 unpacked Q4_K rows in the order of llama.cpp's repacked gemm: `W[r] · y` in lane r.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
// Sub-block pair p indexes the weights' and the activations' per-pair arrays at once.
#[allow(clippy::needless_range_loop)]
fn q4_k_gemm8(u: &[Q4KRows], y: &[BlockQ8K]) -> __m256 {
    let mut acc = _mm256_setzero_ps();
    let mut accm = _mm256_setzero_ps();
    for (uk, yb) in u.iter().zip(y) {
        let (dv, dminv) = (load_ps(&uk.d), load_ps(&uk.dmin));
        let yd = _mm256_set1_ps(yb.d);
        let bp = bsum_pairs(yb);
        let mut bps = [0i32; 4];
        // SAFETY: writes exactly the 16 bytes of `bps`.
        unsafe { _mm_storeu_si128(bps.as_mut_ptr().cast(), bp) };
        for p in 0..4 {
            let mut isum = _mm256_setzero_si256();
            for j in [2 * p, 2 * p + 1] {
                // Each i16 lane sums 8 `vpmaddubsw` results of ≤ 2·15·127: ≤ 30,480, no overflow.
                let mut s16 = _mm256_setzero_si256();
                for g in 0..8 {
                    let at = 32 * j + 4 * g;
                    let y4 = i32::from_le_bytes([
                        yb.qs[at] as u8,
                        yb.qs[at + 1] as u8,
                        yb.qs[at + 2] as u8,
                        yb.qs[at + 3] as u8,
                    ]);
                    s16 = _mm256_add_epi16(
                        s16,
                        _mm256_maddubs_epi16(load_256(&uk.q[j][g]), _mm256_set1_epi32(y4)),
                    );
                }
                // SAFETY: reads exactly the 16 i16 of `sc[j]`.
                let sc = unsafe { _mm256_loadu_si256(uk.sc[j].as_ptr().cast()) };
                // Lane r: sc_r[j] · Σ q·y over the sub-block, exact in i32.
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(s16, sc));
            }
            // SAFETY: reads exactly the 16 i16 of `mn[p]`.
            let mn = unsafe { _mm256_loadu_si256(uk.mn[p].as_ptr().cast()) };
            // Lane r: m_r[2p]·Σy(2p) + m_r[2p+1]·Σy(2p+1) (the two sub-block sums as the i16 halves of bps[p]).
            let imin = _mm256_madd_epi16(mn, _mm256_set1_epi32(bps[p]));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dv, yd), acc);
            accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_mul_ps(dminv, yd), accm);
        }
    }
    _mm256_sub_ps(acc, accm)
}

/// `cols` tokens (`y[t * nb..]`) against Q4_K rows (`w.len() / nb` of them, a multiple of 8) in llama.cpp's
/// repacked orders, into `out[t * ld + r]`: per group of 8 rows, the first `gemm` tokens (a multiple of 4) through
/// the gemm order, from the group unpacked once, the rest one at a time through the gemv order.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn mat_q4_k_repacked(
    w: &[BlockQ4K],
    nb: usize,
    y: &[BlockQ8K],
    cols: usize,
    gemm: usize,
    out: &mut [f32],
    ld: usize,
) {
    let rows = w.len().checked_div(nb).unwrap_or(0);
    assert!(
        rows.is_multiple_of(8) && gemm.is_multiple_of(4) && gemm <= cols && y.len() >= cols * nb
    );
    let zero = Q4KRows {
        q: [[[0; 32]; 8]; 8],
        sc: [[0; 16]; 8],
        mn: [[0; 16]; 4],
        d: [0.0; 8],
        dmin: [0.0; 8],
    };
    let mut u = alloc::vec![zero; if gemm > 0 { nb } else { 0 }];
    for g in 0..rows / 8 {
        let wg = &w[g * 8 * nb..(g + 1) * 8 * nb];
        if gemm > 0 {
            unpack_q4_k_rows(wg, nb, &mut u);
        }
        for t in 0..gemm {
            let o = q4_k_gemm8(&u, &y[t * nb..(t + 1) * nb]);
            let at = t * ld + g * 8;
            // SAFETY: writes exactly 8 floats at `at`, inside `out` (sliced first, so bounds-checked).
            unsafe { _mm256_storeu_ps(out[at..at + 8].as_mut_ptr(), o) };
        }
        for t in gemm..cols {
            let mut o = [0.0f32; 8];
            // SAFETY: the caller guarantees AVX2, FMA and F16C.
            unsafe { mat_q4_k_gemv8(wg, nb, &y[t * nb..(t + 1) * nb], &mut o) };
            let at = t * ld + g * 8;
            out[at..at + 8].copy_from_slice(&o);
        }
    }
}

/// One Q6_K row against `out.len()` tokens (llama.cpp's tiled order): `out[t] = W · y[t]`, token t's blocks at
/// `y[t * nb..]`. Each weight block is unpacked once for all tokens.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn mat_q6_k_tiled(w: &[BlockQ6K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) {
    let n = out.len();
    assert!(w.len() >= nb && y.len() >= n * nb);
    out.iter_mut().for_each(|o| *o = 0.0);
    for k in 0..nb {
        let a = &w[k];
        // The 256 six-bit values (0..63) in element order, as 8 vectors of 32.
        let mut q = [_mm256_setzero_si256(); 8];
        for half in 0..2 {
            let [q0, q1, q2, q3] = q6_k_half(a, half);
            q[4 * half..4 * half + 4].copy_from_slice(&[q0, q1, q2, q3]);
        }
        let sc = &a.scales;
        let scv: [__m256i; 8] = core::array::from_fn(|i| {
            _mm256_set_m128i(
                _mm_set1_epi16(sc[2 * i + 1] as i16),
                _mm_set1_epi16(sc[2 * i] as i16),
            )
        });
        // SAFETY: reads exactly the 16 bytes of `scales`.
        let scales16 = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(sc.as_ptr().cast()) });
        let dw = f16(a.d);
        for (t, o) in out.iter_mut().enumerate() {
            let b = &y[t * nb + k];
            let mut sumi = _mm256_setzero_si256();
            for (i, qi) in q.iter().enumerate() {
                let yi = load_256_i8(b.qs[32 * i..32 * i + 32].try_into().unwrap_or(&[0; 32]));
                // q ≤ 63: 2·63·127 per i16 lane.
                sumi = _mm256_add_epi32(
                    sumi,
                    _mm256_madd_epi16(scv[i], _mm256_maddubs_epi16(*qi, yi)),
                );
            }
            // Σ sc·(q - 32)·y = Σ sc·q·y - 32·Σ sc·Σy.
            // SAFETY: reads exactly the 32 bytes of `bsums`.
            let bsums = unsafe { _mm256_loadu_si256(b.bsums.as_ptr().cast()) };
            let sub = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5);
            let isum = hsum_epi32(_mm256_sub_epi32(sumi, sub));
            *o = _mm_cvtss_f32(_mm_fmadd_ss(
                _mm_set_ss(dw * isum as f32),
                _mm_set_ss(b.d),
                _mm_set_ss(*o),
            ));
        }
    }
}
