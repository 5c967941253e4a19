//! The AVX-512 VNNI products of Q4_1 and Q5_0 matrices in the interleaved layout (`quant::interleaved`), bit for
//! bit those of the file's layout (`super::decode_tile`, `super::batch`).
//!
//! One token: each group of 4 rows is one tile of [`super::decode_tile`]'s, with the same operations in the same
//! order (two rows to a zmm, the 8-lane FMA chain per row in block order, the same horizontal sums); only the
//! loads differ. A slab gives the 4 rows' scales in one load where the file's layout needs four loads and three
//! inserts, and a row pair's values in one broadcast, shift and mask where it needs two loads and an insert. On the
//! AMD EPYC (Zen 4) we measure on that is 1.2x for Q4_1 and 1.14x for Q5_0 streaming from memory
//! (`model/examples/decode_layout.rs`). Batches unpack each group from its slabs into the buffer
//! [`super::group_tile`] reads, as [`super::unpack_group`] does from the file's layout.

use core::arch::x86_64::*;
use core::marker::PhantomData;

use super::{batch, hsum_halves, start_lanes, ActTile, Groups, Pair, Q0Wide, PREFETCH_BYTES};
use crate::quant::interleaved::{Interleave, GROUP};
use crate::quant::{BlockQ4_1, BlockQ5_0};

/// A format whose slabs these kernels read.
pub trait SlabWide: Q0Wide + Interleave {
    /// The 4 rows' heads as [`Q0Wide`]'s tiles convert them: `[d0, x0, d1, x1, d2, x2, d3, x3]`, x the min for
    /// Q4_1 (unused for Q5_0, 0 here).
    ///
    /// # Safety
    /// `slab` points at a whole slab; the CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
    unsafe fn heads(slab: *const u8) -> __m256;
    /// Row pair `i`'s values + OFFSET, as [`Q0Wide::wide2`] gives them: row 2i's 32 in bytes 0..32, row 2i+1's in
    /// bytes 32..64.
    ///
    /// # Safety
    /// As [`SlabWide::heads`].
    unsafe fn pair(slab: *const u8, i: usize) -> __m512i;
}

/// The 32 bytes at `p` in both halves of a zmm, the low half masked to the low nibbles and the high half shifted
/// to the high nibbles: [first row's 32 values, second row's 32 values].
///
/// # Safety
/// `p` points at 32 readable bytes; the CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn nibble_pair(p: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 32 readable bytes; `loadu` has no alignment requirement.
    let v = _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(p.cast()) });
    let shift = _mm512_set_epi64(
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0,
        0,
        0,
        0,
    );
    _mm512_and_si512(_mm512_srlv_epi16(v, shift), _mm512_set1_epi8(0x0F))
}

impl SlabWide for BlockQ4_1 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn heads(slab: *const u8) -> __m256 {
        // SAFETY: the slab's first 16 bytes are the 4 rows' (d, m) pairs.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(slab.cast()) })
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn pair(slab: *const u8, i: usize) -> __m512i {
        // SAFETY: pair i's 32 bytes lie at 16 + 32i of the 80-byte slab.
        unsafe { nibble_pair(slab.add(16 + 32 * i)) }
    }
}

impl SlabWide for BlockQ5_0 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn heads(slab: *const u8) -> __m256 {
        // SAFETY: the slab's first 8 bytes are the 4 rows' d; widened to [d0, 0, d1, 0, ...].
        _mm256_cvtph_ps(_mm_cvtepu16_epi32(unsafe { _mm_loadl_epi64(slab.cast()) }))
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn pair(slab: *const u8, i: usize) -> __m512i {
        // SAFETY: rows 2i and 2i+1's `qh` words are the 8 bytes at 8 + 8i, their nibbles the 32 bytes at 24 + 32i
        // of the 88-byte slab. Bit j of the two words is element j's fifth bit (row 2i+1's from bit 32), the
        // element in byte j of the pair, which gains 16 where it is set (`five_bits2`).
        unsafe {
            let high = slab.add(8 + 8 * i).cast::<u64>().read_unaligned();
            let n = nibble_pair(slab.add(24 + 32 * i));
            _mm512_mask_add_epi8(n, high, n, _mm512_set1_epi8(16))
        }
    }
}

/// Bytes of a slab.
const fn slab_bytes<W: SlabWide>() -> usize {
    GROUP * W::BYTES
}

/// One token: `out[r] = row r · y` for the `out.len()` rows (a multiple of 4) in `slabs`, each group of 4 one tile
/// of [`super::decode_tile`]'s operations.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn decode<W: SlabWide>(slabs: &[u8], nb: usize, y: &ActTile<'_, W::Act>, out: &mut [f32]) {
    let sb = slab_bytes::<W>();
    // These checks make every slab read below in bounds: group g's block k is the slab at (g nb + k) sb with
    // g < out.len() / 4, k < nb; block k of the token is y.qs[k] and its scales y.d[k], y.s[k].
    assert!(out.len().is_multiple_of(GROUP) && slabs.len() >= out.len() / GROUP * nb * sb);
    assert!(y.qs.len() >= nb && y.d.len() >= nb && y.batch == 1 && y.col0 == 0);
    assert!(!W::HAS_MIN || y.s.len() >= nb);
    // Lanes 0..8 ← lane 4i of the heads, lanes 8..16 ← lane 4i + 2 (as `decode_tile`).
    let pick: [__m512i; 2] = core::array::from_fn(|i| {
        let (a, b) = (4 * i as i32, 4 * i as i32 + 2);
        _mm512_set_epi32(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a)
    });
    for (g, o) in out.chunks_exact_mut(GROUP).enumerate() {
        let base = slabs.as_ptr().wrapping_add(g * nb * sb);
        let mut acc = [_mm512_setzero_ps(); 2];
        // Lane 2r + 1: the min term of row r, the scalar chain `summs = fma(m, s, summs)` (as `decode_tile`).
        let mut summs = _mm256_setzero_ps();
        for k in 0..nb {
            let slab = base.wrapping_add(k * sb);
            // The slabs are one stream; prefetching never faults, and past the end it is only wasted.
            let ahead = slab.wrapping_add(PREFETCH_BYTES).cast::<i8>();
            for line in (0..sb).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
            }
            // SAFETY: slab k of group g lies inside `slabs` (asserted above).
            let dm = unsafe { W::heads(slab) };
            // SAFETY: k < nb ≤ y.d.len() (asserted above).
            let dd = _mm256_mul_ps(dm, _mm256_set1_ps(unsafe { *y.d.get_unchecked(k) }));
            if W::HAS_MIN {
                // SAFETY: as for y.d.
                summs =
                    _mm256_fmadd_ps(dm, _mm256_set1_ps(unsafe { *y.s.get_unchecked(k) }), summs);
            }
            // SAFETY: k < nb ≤ y.qs.len() (asserted above); reads exactly the 32 activation bytes.
            let qy =
                unsafe { _mm256_loadu_si256(W::act_qs(y.qs.get_unchecked(k)).as_ptr().cast()) };
            let qy2 = _mm512_broadcast_i64x4(qy);
            let start = start_lanes::<W>(qy2);
            let dd512 = _mm512_castps256_ps512(dd);
            for i in 0..2 {
                // SAFETY: as for the heads.
                let u = unsafe { W::pair(slab, i) };
                let prod = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, u, qy2));
                acc[i] = _mm512_fmadd_ps(_mm512_permutexvar_ps(pick[i], dd512), prod, acc[i]);
            }
        }
        let mut m = [0.0f32; 8];
        // SAFETY: writes exactly the 8 floats of `m`.
        unsafe { _mm256_storeu_ps(m.as_mut_ptr(), summs) };
        for (i, a) in acc.into_iter().enumerate() {
            for (h, v) in hsum_halves(a).into_iter().enumerate() {
                let r = 2 * i + h;
                o[r] = if W::HAS_MIN { v + m[2 * r + 1] } else { v };
            }
        }
    }
}

/// A matrix in the interleaved layout as a batched product's row source.
struct Slabs<'a, W> {
    bytes: &'a [u8],
    rows: usize,
    _format: PhantomData<W>,
}

impl<W: SlabWide> Groups<W> for Slabs<'_, W> {
    fn rows(&self, _nb: usize) -> usize {
        self.rows
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack(&self, nb: usize, rows: [usize; 4], un: &mut [Pair], dm: &mut [[f32; 2]]) {
        // `batch` asks for whole groups: the row count is a multiple of 4, so rows[0] starts one.
        let g = rows[0] / GROUP;
        let sb = slab_bytes::<W>();
        let group = &self.bytes[g * nb * sb..(g + 1) * nb * sb];
        assert!(un.len() >= 2 * nb && dm.len() >= 4 * nb);
        for k in 0..nb {
            let slab = group[k * sb..(k + 1) * sb].as_ptr();
            // The next group's slabs, one stream; prefetching never faults.
            let ahead = slab.wrapping_add(nb * sb).cast::<i8>();
            for line in (0..sb).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
            }
            for i in 0..2 {
                // SAFETY: `slab` is a whole slab of `group`; writes exactly the 64 bytes of the pair.
                unsafe {
                    _mm512_storeu_si512(un[2 * k + i].0.as_mut_ptr().cast(), W::pair(slab, i))
                };
            }
            // SAFETY: as above; writes exactly the 8 floats of dm[4k..4k + 4].
            unsafe { _mm256_storeu_ps(dm[4 * k..4 * k + 4].as_mut_ptr().cast(), W::heads(slab)) };
        }
    }
}

/// `out[c * ld + r] = W[r] · y[col0 + c]` for the `rows` rows (a multiple of 4) of `nb` blocks in `slabs`, equal
/// bit for bit to [`super::mat_q0`] on the same rows in the file's layout.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
#[allow(
    clippy::too_many_arguments,
    reason = "mat_q0's arguments, with the row count the slabs do not carry"
)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn mat<W: SlabWide>(
    slabs: &[u8],
    rows: usize,
    nb: usize,
    y: &ActTile<'_, W::Act>,
    cols: usize,
    out: &mut [f32],
    ld: usize,
    work: &mut [f32],
) {
    assert!(rows.is_multiple_of(GROUP) && slabs.len() >= rows * nb * W::BYTES);
    if y.batch == 1 {
        // SAFETY: the caller guarantees the CPU features.
        unsafe { decode::<W>(slabs, nb, y, &mut out[..rows]) };
        return;
    }
    let src = Slabs::<W> {
        bytes: slabs,
        rows,
        _format: PhantomData,
    };
    // SAFETY: as above.
    unsafe { batch::<W>(&src, nb, y, cols, out, ld, work) }
}
