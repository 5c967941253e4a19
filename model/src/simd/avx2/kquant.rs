//! AVX2 dot products of one Q4_K or Q6_K row with Q8_K activations (`ggml_vec_dot_q4_K_q8_K`, `_q6_K_q8_K`).

use core::arch::x86_64::*;

use super::*;
use crate::quant::{scale_min_k4, BlockQ4K, BlockQ6K, BlockQ8K};

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
pub(super) fn q6_k_half(a: &BlockQ6K, half: usize) -> [__m256i; 4] {
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
