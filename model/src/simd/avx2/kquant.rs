//! The K-quant formats (Q4_K, Q6_K): single-row dot products and llama.cpp's batched orders (repacked Q4_K gemv
//! and gemm, tiled Q6_K).

use super::*;

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

// ---- K-quant products in llama.cpp's batched orders (see `crate::quant`, "scalar models of llama.cpp's batched
// K-quant kernels"). Weights are read in place: `w` holds whole rows of `nb` blocks each, row r at `w[r * nb..]`.
// Every integer total is exact (ranges at each `vpmaddubsw`), so any reduction order of the integers gives the same
// value; the f32 operations per output are exactly those of the scalar twins. ----

/// The 8 six-bit scales and 8 mins of a Q4_K block, as the i16 lanes of two 128-bit vectors.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q4_k_scales_mins(s: &[u8; 12]) -> (__m128i, __m128i) {
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
pub(super) fn bcast16(v: __m256i, j: usize) -> __m256i {
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
pub(super) fn hsum8x8(v: &[__m256i; 8]) -> __m256i {
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
pub(super) fn bsum_pairs(y: &BlockQ8K) -> __m128i {
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
#[allow(
    clippy::needless_range_loop,
    reason = "row r indexes several per-row arrays at once"
)]
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
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
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
#[allow(
    clippy::needless_range_loop,
    reason = "sub-block pair p indexes the weights' and the activations' per-pair arrays at once"
)]
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

/// f32s of work buffer [`mat_q4_k_repacked`] needs for rows of up to `max_cols` elements: one group's unpacked
/// blocks (aligned inside it).
pub(super) fn work_len(max_cols: usize) -> usize {
    let unpacked = core::mem::size_of::<Q4KRows>() / 4;
    max_cols / crate::quant::QK_K * unpacked + core::mem::align_of::<Q4KRows>() / 4
}

/// `cols` tokens (`y[t * nb..]`) against Q4_K rows (`w.len() / nb` of them, a multiple of 8) in llama.cpp's
/// repacked orders, into `out[t * ld + r]`: per group of 8 rows, the first `gemm` tokens (a multiple of 4) through
/// the gemm order, from the group unpacked once (into `work`, [`work_len`] f32s), the rest one at a time through
/// the gemv order.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(
    clippy::too_many_arguments,
    reason = "the product's operands, shape, output layout and work buffer; the dispatch passes them through"
)]
pub unsafe fn mat_q4_k_repacked(
    w: &[BlockQ4K],
    nb: usize,
    y: &[BlockQ8K],
    cols: usize,
    gemm: usize,
    out: &mut [f32],
    ld: usize,
    work: &mut [f32],
) {
    let rows = w.len().checked_div(nb).unwrap_or(0);
    assert!(
        rows.is_multiple_of(8) && gemm.is_multiple_of(4) && gemm <= cols && y.len() >= cols * nb
    );
    let u =
        &mut bytemuck::pod_align_to_mut::<f32, Q4KRows>(work).1[..if gemm > 0 { nb } else { 0 }];
    for g in 0..rows / 8 {
        let wg = &w[g * 8 * nb..(g + 1) * 8 * nb];
        if gemm > 0 {
            unpack_q4_k_rows(wg, nb, u);
        }
        for t in 0..gemm {
            let o = q4_k_gemm8(u, &y[t * nb..(t + 1) * nb]);
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
