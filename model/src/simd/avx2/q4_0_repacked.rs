//! Q4_0 matrices in the order of llama.cpp's repacked Q4_0 (`q4_0_8x8_q8_0`): 8 rows at a time, 32-bit lane r of
//! every sum belonging to row r, each output `acc = fma(isum, d·y.d, acc)` per block (the twin is
//! [`crate::quant::dot_q4_0_q8_0_repacked`], whose documentation says where llama.cpp takes this order).
//!
//! The weights stay in the file's layout. One token reads each group of 8 rows as it streams past (the gemv); a
//! batch unpacks each group once into the work buffer and runs every token against it. llama.cpp's gemv and gemm
//! give each output the same operations, so one order serves every token of a batch.

use super::*;

/// Block k of 8 Q4_0 rows unpacked once for every token of a batched product: row r's 4-bit values q (unsigned,
/// before the bias of 8) as bytes in `q[r]`, the rows' scales in `d`.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(32))]
struct Q4_0Rows {
    q: [[u8; 32]; 8],
    d: [f32; 8],
}

/// f32s of work buffer [`mat_q4_0_repacked`] needs for rows of up to `max_cols` elements: one group's unpacked
/// blocks (aligned inside it).
pub(super) fn work_len(max_cols: usize) -> usize {
    let unpacked = core::mem::size_of::<Q4_0Rows>() / 4;
    max_cols / QK * unpacked + core::mem::align_of::<Q4_0Rows>() / 4
}

/// `8 · Σ y` over the activation block, in every lane: what the bias of 8 takes off each row's `Σ q·y`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bias_sum(qy: __m256i) -> __m256i {
    // 8 × |y| ≤ 127: within `mul_sum_us8`'s range.
    _mm256_set1_epi32(hsum_epi32(mul_sum_us8(_mm256_set1_epi8(8), qy)))
}

/// `isum` of 8 rows in lane r: `Σ (q - 8)·y = Σ q·y - 8·Σ y` from the rows' `Σ q·y` lanes, exactly (integers).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn row_sums(sums: &[__m256i; 8], qy: __m256i) -> __m256i {
    _mm256_sub_epi32(hsum8x8(sums), bias_sum(qy))
}

/// One token `y` (`nb` blocks) against the 8 rows `w[r * nb..]` in llama.cpp's repacked gemv order: `W[r] · y` in
/// lane r. Each row's block is unpacked as it is read; the next group of rows (`w[8 * nb..]`, what the next call
/// reads, contiguous after this one) is prefetched meanwhile.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn gemv8(w: &[BlockQ4_0], nb: usize, y: &[BlockQ8_0]) -> __m256 {
    // Makes every unchecked index below in bounds: row r block k is w[r * nb + k] with r < 8, k < nb.
    assert!(w.len() >= 8 * nb && y.len() >= nb);
    const BYTES: usize = core::mem::size_of::<BlockQ4_0>();
    let ahead = w.as_ptr().cast::<i8>().wrapping_add(8 * nb * BYTES);
    let mut acc = _mm256_setzero_ps();
    for (k, yb) in y[..nb].iter().enumerate() {
        // This group's 8 · 18 bytes per block, the same stretch of the next group.
        let p = ahead.wrapping_add(8 * BYTES * k);
        // Prefetching never faults, whatever the address; past the end of the matrix it is only wasted.
        _mm_prefetch::<_MM_HINT_T0>(p);
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(128));
        let qy = load_256_i8(&yb.qs);
        let mut sums = [_mm256_setzero_si256(); 8];
        let mut d = [0u16; 8];
        for (r, (s, d)) in sums.iter_mut().zip(&mut d).enumerate() {
            // SAFETY: r * nb + k < 8 * nb ≤ w.len() (asserted above).
            let a = unsafe { w.get_unchecked(r * nb + k) };
            *d = u16::from_le_bytes(a.d);
            // Unsigned q ≤ 15 against |y| ≤ 127: within `mul_sum_us8`'s range, so the sum is exact.
            *s = mul_sum_us8(nibbles(&a.qs), qy);
        }
        let d = _mm_set_epi16(
            d[7] as i16,
            d[6] as i16,
            d[5] as i16,
            d[4] as i16,
            d[3] as i16,
            d[2] as i16,
            d[1] as i16,
            d[0] as i16,
        );
        let dd = _mm256_mul_ps(_mm256_cvtph_ps(d), _mm256_set1_ps(f16(yb.d)));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(row_sums(&sums, qy)), dd, acc);
    }
    acc
}

/// Unpacks block k of the 8 rows `w[r * nb + k]` for every k into `u`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_rows(w: &[BlockQ4_0], nb: usize, u: &mut [Q4_0Rows]) {
    for (k, uk) in u.iter_mut().enumerate().take(nb) {
        for r in 0..8 {
            let a = &w[r * nb + k];
            // SAFETY: writes exactly the 32 bytes of `q[r]`.
            unsafe { _mm256_storeu_si256(uk.q[r].as_mut_ptr().cast(), nibbles(&a.qs)) };
            uk.d[r] = f16(a.d);
        }
    }
}

/// One token `y` against 8 unpacked rows (`u[k]` for block k), in the same order as [`gemv8`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn gemm8(u: &[Q4_0Rows], y: &[BlockQ8_0]) -> __m256 {
    let mut acc = _mm256_setzero_ps();
    for (uk, yb) in u.iter().zip(y) {
        let qy = load_256_i8(&yb.qs);
        let mut sums = [_mm256_setzero_si256(); 8];
        for (s, q) in sums.iter_mut().zip(&uk.q) {
            // Unsigned q ≤ 15 against |y| ≤ 127, exact (`mul_sum_us8`).
            *s = mul_sum_us8(load_256(q), qy);
        }
        let dd = _mm256_mul_ps(load_ps(&uk.d), _mm256_set1_ps(f16(yb.d)));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(row_sums(&sums, qy)), dd, acc);
    }
    acc
}

/// `cols` tokens (`y[t * nb..]`) against Q4_0 rows of `nb` blocks (`w.len() / nb` of them, a multiple of 8) in
/// llama.cpp's repacked order, into `out[t * ld + r]`. One token streams the rows; more unpack each group of 8
/// rows once into `work` ([`work_len`] f32s), or stream it per token where `work` is shorter.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn mat_q4_0_repacked(
    w: &[BlockQ4_0],
    nb: usize,
    y: &[BlockQ8_0],
    cols: usize,
    out: &mut [f32],
    ld: usize,
    work: &mut [f32],
) {
    let rows = w.len().checked_div(nb).unwrap_or(0);
    assert!(rows.is_multiple_of(8) && y.len() >= cols * nb);
    let unpack = cols > 1 && work.len() >= work_len(nb * QK);
    let u: &mut [Q4_0Rows] = if unpack {
        &mut bytemuck::pod_align_to_mut::<f32, Q4_0Rows>(work).1[..nb]
    } else {
        &mut []
    };
    for g in 0..rows / 8 {
        let wg = &w[g * 8 * nb..(g + 1) * 8 * nb];
        if unpack {
            unpack_rows(wg, nb, u);
        }
        for t in 0..cols {
            let yt = &y[t * nb..(t + 1) * nb];
            let o = if unpack {
                gemm8(u, yt)
            } else {
                gemv8(wg, nb, yt)
            };
            let at = t * ld + g * 8;
            // SAFETY: writes exactly 8 floats at `at`, inside `out` (sliced first, so bounds-checked).
            unsafe { _mm256_storeu_ps(out[at..at + 8].as_mut_ptr(), o) };
        }
    }
}
