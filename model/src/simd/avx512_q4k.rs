//! The batched Q4_K product in llama.cpp's repacked gemm order at the AVX-512 level, with VNNI: two groups of 8
//! rows side by side in a zmm (16 rows, one token), instead of the AVX2 kernel's one group in a ymm. Bit for bit the
//! AVX2 `mat_q4_k_repacked` (`simd/avx2/kquant.rs`), and so llama.cpp's `ggml_gemm_q4_K_8x8_q8_K` and the scalar
//! twin `quant::dot_q4_k_q8_k_gemm`.
//!
//! Intel intrinsics per the Intel Intrinsics Guide. Why the results cannot differ (docs/ARCHITECTURE.md §6):
//! - **Integer part.** Per row, block and sub-block j the AVX2 kernel sums the 32 products q·y in i16 pairs
//!   (`vpmaddubsw`) and multiplies them by the sub-block's scale (`vpmaddwd`); here `vpdpbusd` sums them four at a
//!   time into i32 and one `vpmulld` applies the scale. Every partial sum is exact (32·15·127 < 2¹⁵·2; times a
//!   6-bit scale, and 8 sub-blocks, < 2³¹), so the totals per pair of sub-blocks (`isum`) and the mins term
//!   (`imin`, the same `vpmaddwd` of the mins and the activations' sub-block sums) are the same integers.
//! - **Float part.** Per block and pair of sub-blocks, lane r takes the same `acc = fma(cvt(isum), d·y.d, acc)` and
//!   `accm = fma(cvt(imin), dmin·y.d, accm)` in the same order, and the result is `acc - accm`: each of the 16
//!   lanes does what one lane of the AVX2 kernel does for its row.

use core::arch::x86_64::*;

use crate::quant::{f16_to_f32, scale_min_k4, BlockQ4K, BlockQ8K};

/// Block k of 16 Q4_K rows (two groups of 8: rows 0-7 in the low 256 bits, 8-15 in the high) unpacked once for
/// every token: `q[j][g]` holds elements 4g..4g+4 of sub-block j of row r in 32-bit lane r, `sc[j]` sub-block j's
/// scale of row r in i32 lane r, `mn[p]` the mins of sub-blocks 2p and 2p+1 as the two i16 halves of lane r, then
/// `d` and `dmin`.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Q4KRows16 {
    q: [[[u8; 64]; 8]; 8],
    sc: [[i32; 16]; 8],
    mn: [[i16; 32]; 4],
    d: [f32; 16],
    dmin: [f32; 16],
}

/// f32s of work buffer [`mat_q4_k_repacked`] needs for rows of up to `max_cols` elements: two groups' unpacked
/// blocks (aligned inside it).
pub(super) fn work_len(max_cols: usize) -> usize {
    let unpacked = core::mem::size_of::<Q4KRows16>() / 4;
    max_cols / crate::quant::QK_K * unpacked + core::mem::align_of::<Q4KRows16>() / 4
}

/// Unpacks block k of the 16 rows `w[r * nb + k]` for every k into `u`: the scales and mins one row at a time, the
/// 4-bit values with one gather per 4-byte column of the 16 rows (`vpgatherdd`, row r's dword in lane r), split
/// into low and high nibbles.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_rows16(w: &[BlockQ4K], nb: usize, u: &mut [Q4KRows16]) {
    const BLOCK: i32 = core::mem::size_of::<BlockQ4K>() as i32;
    const QS: i32 = core::mem::offset_of!(BlockQ4K, qs) as i32;
    assert!(w.len() >= 16 * nb && w.len() * (BLOCK as usize) < i32::MAX as usize);
    let low = _mm512_set1_epi8(0x0F);
    // Byte offset of row r's block 0 from w[0], in lane r.
    let rows = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(nb as i32 * BLOCK),
    );
    for (k, uk) in u.iter_mut().enumerate().take(nb) {
        for r in 0..16 {
            let a = &w[r * nb + k];
            uk.d[r] = f16_to_f32(a.d);
            uk.dmin[r] = f16_to_f32(a.dmin);
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, &a.scales);
                uk.sc[j][r] = sc as i32;
                uk.mn[j / 2][2 * r + j % 2] = m as i16;
            }
        }
        for p in 0..4 {
            for g in 0..8 {
                // Sub-block 2p is the low nibbles of qs[32p..32p + 32], sub-block 2p + 1 the high nibbles; bytes
                // 4g..4g+4 of that range hold elements 4g..4g+4 of both.
                let at = _mm512_add_epi32(
                    rows,
                    _mm512_set1_epi32(k as i32 * BLOCK + QS + 32 * p as i32 + 4 * g as i32),
                );
                // SAFETY: lane r reads the 4 bytes at byte offset (r * nb + k) * BLOCK + QS + 32p + 4g of `w`,
                // inside row r's block k (r < 16, k < nb, 16 * nb <= w.len(), asserted above).
                let v = unsafe { _mm512_i32gather_epi32::<1>(at, w.as_ptr().cast()) };
                let lo = _mm512_and_si512(v, low);
                let hi = _mm512_and_si512(_mm512_srli_epi32::<4>(v), low);
                // SAFETY: writes exactly the 64 bytes of each destination.
                unsafe {
                    _mm512_storeu_si512(uk.q[2 * p][g].as_mut_ptr().cast(), lo);
                    _mm512_storeu_si512(uk.q[2 * p + 1][g].as_mut_ptr().cast(), hi);
                }
            }
        }
    }
}

/// 64 bytes as a zmm.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_512<T: bytemuck::Pod>(v: &T) -> __m512i {
    assert_eq!(core::mem::size_of::<T>(), 64);
    // SAFETY: reads exactly the 64 bytes of `v` (asserted).
    unsafe { _mm512_loadu_si512((v as *const T).cast()) }
}

/// Block `uk` of 16 unpacked Q4_K rows against the token's block `yb`, into its accumulators (lane r: row r) in the
/// order of llama.cpp's repacked gemm.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(
    clippy::needless_range_loop,
    reason = "sub-block pair p indexes the weights' and the activations' per-pair arrays at once"
)]
fn block16(uk: &Q4KRows16, yb: &BlockQ8K, acc: &mut __m512, accm: &mut __m512) {
    {
        let dv = _mm512_castsi512_ps(load_512(&uk.d));
        let dminv = _mm512_castsi512_ps(load_512(&uk.dmin));
        let yd = _mm512_set1_ps(yb.d);
        for p in 0..4 {
            // Four independent `vpdpbusd` chains (sub-blocks 2p and 2p+1, even and odd groups), for throughput;
            // integer sums, so their order cannot change the totals.
            let mut s = [_mm512_setzero_si512(); 4];
            for g in (0..8).step_by(2) {
                for (c, (j, gg)) in [
                    (2 * p, g),
                    (2 * p, g + 1),
                    (2 * p + 1, g),
                    (2 * p + 1, g + 1),
                ]
                .into_iter()
                .enumerate()
                {
                    let at = 32 * j + 4 * gg;
                    let y4 = i32::from_le_bytes([
                        yb.qs[at] as u8,
                        yb.qs[at + 1] as u8,
                        yb.qs[at + 2] as u8,
                        yb.qs[at + 3] as u8,
                    ]);
                    s[c] = _mm512_dpbusd_epi32(s[c], load_512(&uk.q[j][gg]), _mm512_set1_epi32(y4));
                }
            }
            let isum = _mm512_add_epi32(
                _mm512_mullo_epi32(_mm512_add_epi32(s[0], s[1]), load_512(&uk.sc[2 * p])),
                _mm512_mullo_epi32(_mm512_add_epi32(s[2], s[3]), load_512(&uk.sc[2 * p + 1])),
            );
            // The activations' sums over sub-blocks 2p and 2p+1 (|·| ≤ 32·127) as the two i16 halves of a lane.
            let b0 = yb.bsums[4 * p] as i32 + yb.bsums[4 * p + 1] as i32;
            let b1 = yb.bsums[4 * p + 2] as i32 + yb.bsums[4 * p + 3] as i32;
            let bp = (b0 & 0xFFFF) | (b1 << 16);
            let imin = _mm512_madd_epi16(load_512(&uk.mn[p]), _mm512_set1_epi32(bp));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dv, yd), *acc);
            *accm = _mm512_fmadd_ps(_mm512_cvtepi32_ps(imin), _mm512_mul_ps(dminv, yd), *accm);
        }
    }
}

/// `T` tokens (`y[t * nb..]`) against 16 unpacked Q4_K rows: lane r of element t is `W[r] · y[t]`. The blocks are
/// the outer loop, so that each unpacked block (5 KiB) is read from L1 by all `T` tokens, whose accumulators stay in
/// registers.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn gemm16<const T: usize>(u: &[Q4KRows16], y: &[BlockQ8K], nb: usize) -> [__m512; T] {
    let mut acc = [_mm512_setzero_ps(); T];
    let mut accm = [_mm512_setzero_ps(); T];
    for (k, uk) in u.iter().enumerate() {
        for t in 0..T {
            block16(uk, &y[t * nb + k], &mut acc[t], &mut accm[t]);
        }
    }
    core::array::from_fn(|t| _mm512_sub_ps(acc[t], accm[t]))
}

/// `cols` tokens (`y[t * nb..]`) against Q4_K rows (`w.len() / nb` of them, a multiple of 8) in llama.cpp's
/// repacked orders, into `out[t * ld + r]`, as the AVX2 kernel of the same name: the first `gemm` tokens through
/// the gemm order, 16 rows at a time from rows unpacked once (into `work`, [`work_len`] f32s), a last group of 8
/// rows and the other tokens through the AVX2 kernel.
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW, VL and VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
    let pairs = if gemm > 0 { rows / 16 } else { 0 };
    for g in 0..pairs {
        let wg = &w[g * 16 * nb..(g + 1) * 16 * nb];
        let u = &mut bytemuck::pod_align_to_mut::<f32, Q4KRows16>(work).1[..nb];
        unpack_rows16(wg, nb, u);
        // Tokens in tiles of 8, and a last one of 4 (gemm is a multiple of 4).
        let mut t = 0;
        while t < gemm {
            let yt = &y[t * nb..];
            let (o8, o4);
            let o: &[__m512] = if t + 8 <= gemm {
                o8 = gemm16::<8>(u, yt, nb);
                &o8
            } else {
                o4 = gemm16::<4>(u, yt, nb);
                &o4
            };
            for (i, &v) in o.iter().enumerate() {
                let at = (t + i) * ld + g * 16;
                // SAFETY: writes exactly 16 floats at `at`, inside `out` (sliced first, so bounds-checked).
                unsafe { _mm512_storeu_ps(out[at..at + 16].as_mut_ptr(), v) };
            }
            t += o.len();
        }
        if gemm < cols {
            // The other tokens through the gemv order, as the AVX2 kernel does them (gemm = 0 there).
            // SAFETY: the caller guarantees AVX2, FMA and F16C.
            unsafe {
                super::avx2::mat_q4_k_repacked(
                    wg,
                    nb,
                    &y[gemm * nb..],
                    cols - gemm,
                    0,
                    &mut out[gemm * ld + g * 16..],
                    ld,
                    &mut [],
                )
            };
        }
    }
    // The rows left (a group of 8, or all of them without a gemm part) through the AVX2 kernel.
    let done = pairs * 16;
    if done < rows {
        // SAFETY: the caller guarantees AVX2, FMA and F16C.
        unsafe {
            super::avx2::mat_q4_k_repacked(
                &w[done * nb..],
                nb,
                y,
                cols,
                gemm,
                &mut out[done..],
                ld,
                work,
            )
        };
    }
}
