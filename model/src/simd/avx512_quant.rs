//! AVX-512 (F, BW, VL, VNNI) matrix products of the 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), one token and
//! batches, bit for bit equal to the AVX2 tiles of `simd/avx2/q0.rs` (and so to llama.cpp and the scalar twins).
//!
//! Intel intrinsics per the Intel Intrinsics Guide. Why the results cannot differ from the AVX2 kernels
//! (docs/ARCHITECTURE.md §6: each SIMD kernel equals its scalar twin):
//! - **Float part.** Each output keeps the AVX2 kernel's 8-lane accumulator, fed the same products in the same
//!   block order, and is reduced by the same `hsum_ps`. Two rows (decode) or two rows of one token (batches) sit
//!   in the two 256-bit halves of a zmm; no row's block sequence is split differently across lanes.
//! - **Integer part.** Lane j of a block's AVX2 product is Σ q_i·y_i over its elements 4j..4j+3, exact (the
//!   `vpmaddubsw` ranges noted in `simd/avx2/q0.rs` never saturate). Here the weights enter `vpdpbusd` as
//!   unsigned bytes u_i = q_i + OFFSET (0 ≤ u_i ≤ 255) and the lane starts at -OFFSET·Σ y_i, so it ends at
//!   Σ u_i·y_i - OFFSET·Σ y_i = Σ q_i·y_i: the same integer, in i32 without overflow (|lane| ≤ 4·255·127 +
//!   128·4·127). `vpdpbusd` forms each u8 × i8 product and the 4-product sum in full i32 precision.
//!   Q4_1 and Q5_1 values are already unsigned (0..=15, 0..=31: OFFSET 0, lanes start at 0); their AVX2 kernels'
//!   `vpmaddubsw` pair sums stay within ±2·31·128, far from i16 saturation, so those integers are exact too.
//!
//! llama.cpp's AVX-512 build computes these products with the same 8-lane float code as its AVX2 build
//! (`ggml_vec_dot_q4_0_q8_0`, `_q4_1_q8_1`, `_q5_0_q8_0`, `_q5_1_q8_1`, `_q8_0_q8_0` in
//! `ggml-cpu/arch/x86/quants.c` take their `__AVX2__` branch, `mul_sum_us8_pairs_float` only switching to
//! `_mm256_dpbusd_epi32` under AVX512VNNI+VL; the batched Q8_0/Q4_0/Q5_0 products go through tinyBLAS's
//! `tinyBLAS_Q0_AVX`, whose accumulators are `__m256` on AVX-512 too, and Q5_1 batches through
//! `ggml_vec_dot_q5_1_q8_1` row by row), which is why these kernels must keep that order rather than sum in 16
//! lanes. Q5_1's AVX2 tiles are those of `simd/avx2/q0.rs` with the block type of `simd/avx2/more_types.rs`.

use core::arch::x86_64::*;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::avx2::{hsum_ps, Q0Weight};
use super::ActTile;
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QK};

pub mod interleaved;

/// Whether the CPU has AVX512_VNNI (CPUID leaf 7 ECX bit 11): 0 = not yet probed, 1 = no, 2 = yes.
static VNNI: AtomicU8 = AtomicU8::new(0);

/// Whether VNNI is withheld ([`super::withhold_vnni`]), as if the CPU did not have it.
static WITHHELD: AtomicBool = AtomicBool::new(false);

/// Runs the AVX-512 level as on a CPU without AVX512_VNNI (`on`), or as the CPU is (`false`).
pub fn withhold(on: bool) {
    WITHHELD.store(on, Ordering::Relaxed);
}

/// Whether these kernels may run, given that the AVX-512 level (F, DQ, BW, VL with OS support) is in use: the
/// CPU must also have AVX512_VNNI (Intel SDM vol. 2A, CPUID leaf 7 sub-leaf 0, ECX bit 11), not withheld.
pub fn vnni() -> bool {
    if WITHHELD.load(Ordering::Relaxed) {
        return false;
    }
    match VNNI.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let ecx = __cpuid_count(7, 0).ecx;
            let yes = ecx & (1 << 11) != 0;
            VNNI.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        }
    }
}

/// A 32-element weight format as these kernels read it: two blocks' values as unsigned bytes in one zmm.
pub trait Q0Wide: Q0Weight {
    /// What is added to each value to make it a byte 0..=255 (`vpdpbusd` takes the weights unsigned).
    const OFFSET: u8;
    /// Block `a`'s 32 values + OFFSET in bytes 0..32 (element order), block `b`'s in bytes 32..64.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
    unsafe fn wide2(a: &Self, b: &Self) -> __m512i;
}

/// Two blocks' 5-bit values (Q5_0, Q5_1: nibbles and the `qh` bits) → the element order of [`nibbles2`], each
/// nibble plus 16 where its fifth bit is set.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn five_bits2(a: (&[u8; 16], [u8; 4]), b: (&[u8; 16], [u8; 4])) -> __m512i {
    // Bit j of qh is element j's fifth bit: bits 0..32 for block a (bytes 0..32), 32..64 for b.
    let high = u64::from(u32::from_le_bytes(a.1)) | (u64::from(u32::from_le_bytes(b.1)) << 32);
    let n = nibbles2(a.0, b.0);
    _mm512_mask_add_epi8(n, high, n, _mm512_set1_epi8(16))
}

/// Two blocks' 16 packed nibble bytes → [a low nibbles, a high nibbles, b low, b high] (the Q4 element order).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn nibbles2(a: &[u8; 16], b: &[u8; 16]) -> __m512i {
    // SAFETY: each load reads exactly the 16 bytes of its array; `loadu` has no alignment requirement.
    let (ta, tb) = unsafe {
        (
            _mm_loadu_si128(a.as_ptr().cast()),
            _mm_loadu_si128(b.as_ptr().cast()),
        )
    };
    let lo = _mm512_castsi256_si512(_mm256_broadcastsi128_si256(ta));
    let both = _mm512_inserti64x4::<1>(lo, _mm256_broadcastsi128_si256(tb));
    // 16-bit shifts by 0 in 128-bit lanes 0 and 2, by 4 in lanes 1 and 3; the mask keeps each byte's own nibble.
    let shift = _mm512_set_epi64(
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0,
        0,
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0,
        0,
    );
    _mm512_and_si512(_mm512_srlv_epi16(both, shift), _mm512_set1_epi8(0x0F))
}

impl Q0Wide for BlockQ4_0 {
    // Values q - 8 for nibbles q: the nibble itself is the value + 8.
    const OFFSET: u8 = 8;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn wide2(a: &Self, b: &Self) -> __m512i {
        nibbles2(&a.qs, &b.qs)
    }
}

impl Q0Wide for BlockQ4_1 {
    // Values are the nibbles 0..=15 (the min is applied through `m·s`).
    const OFFSET: u8 = 0;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn wide2(a: &Self, b: &Self) -> __m512i {
        nibbles2(&a.qs, &b.qs)
    }
}

impl Q0Wide for BlockQ5_0 {
    // Values q - 16 for the 5-bit q = nibble + 16·(bit of qh).
    const OFFSET: u8 = 16;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn wide2(a: &Self, b: &Self) -> __m512i {
        five_bits2((&a.qs, a.qh), (&b.qs, b.qh))
    }
}

impl Q0Wide for BlockQ5_1 {
    // Values are the 5-bit q = nibble + 16·(bit of qh), 0..=31 (the min is applied through `m·s`).
    const OFFSET: u8 = 0;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn wide2(a: &Self, b: &Self) -> __m512i {
        five_bits2((&a.qs, a.qh), (&b.qs, b.qh))
    }
}

impl Q0Wide for BlockQ8_0 {
    // Signed bytes -128..=127; flipping the top bit adds 128.
    const OFFSET: u8 = 128;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn wide2(a: &Self, b: &Self) -> __m512i {
        // SAFETY: each load reads exactly the 32 bytes of its array; `loadu` has no alignment requirement.
        let (ta, tb) = unsafe {
            (
                _mm256_loadu_si256(a.qs.as_ptr().cast()),
                _mm256_loadu_si256(b.qs.as_ptr().cast()),
            )
        };
        let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(ta), tb);
        _mm512_xor_si512(both, _mm512_set1_epi8(0x80u8 as i8))
    }
}

/// The two 8-lane accumulators of a zmm, each reduced by the AVX2 kernels' own [`hsum_ps`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn hsum_halves(v: __m512) -> [f32; 2] {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    [hsum_ps(_mm512_castps512_ps256(v)), hsum_ps(hi)]
}

/// -OFFSET·Σ y over each 4 bytes of the 32 activation bytes in both halves of `y2`: where the weights' lanes start.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn start_lanes<W: Q0Wide>(y2: __m512i) -> __m512i {
    if W::OFFSET == 0 {
        return _mm512_setzero_si512();
    }
    let sum = _mm512_dpbusd_epi32(
        _mm512_setzero_si512(),
        _mm512_set1_epi8(W::OFFSET as i8),
        y2,
    );
    _mm512_sub_epi32(_mm512_setzero_si512(), sum)
}

/// How far ahead [`decode_tile`] prefetches weights (bytes; at least one tile), as the AVX2 kernel.
const PREFETCH_BYTES: usize = 4096;

/// One token (`y.batch == 1`): `out[r] = row rows[r] · y` for the `2P` rows `rows` of `nb` blocks in `w`, rows
/// 2i and 2i+1 in the halves of one zmm. A row may appear twice (an odd row count pairs its last row with itself).
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(
    clippy::needless_range_loop,
    reason = "pair i indexes the blocks, the accumulators and the scale lanes at once"
)]
unsafe fn decode_tile<W: Q0Wide, const P: usize>(
    w: &[W],
    nb: usize,
    rows: [usize; 4],
    y: &ActTile<'_, W::Act>,
    out: &mut [f32; 4],
) {
    const { assert!(P == 1 || P == 2) };
    // These checks make every unchecked index below in bounds: row rows[r] block k is w[rows[r] * nb + k] with
    // rows[r] < w.len() / nb, k < nb; block k of the token is y.qs[k] and its scales y.d[k], y.s[k].
    assert!(rows[..2 * P].iter().all(|&r| (r + 1) * nb <= w.len()));
    assert!(y.qs.len() >= nb && y.d.len() >= nb && y.batch == 1 && y.col0 == 0);
    assert!(!W::HAS_MIN || y.s.len() >= nb);
    let mut acc = [_mm512_setzero_ps(); P];
    // Lane 2r + 1: Q4_1's `summs` of row r, each lane the scalar chain `summs = fma(m, s, summs)` (as in AVX2).
    let mut summs = _mm256_setzero_ps();
    // Lanes 0..8 ← lane 4i of the [d0, m0, d1, m1, ...] vector, lanes 8..16 ← lane 4i + 2.
    let pick: [__m512i; P] = core::array::from_fn(|i| {
        let (a, b) = (4 * i as i32, 4 * i as i32 + 2);
        _mm512_set_epi32(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a)
    });
    // Prefetch of the weights PREFETCH_BYTES ahead of the first row, spread over the iterations, as the AVX2
    // kernel: the tiles walk the rows in order, so that is the stream the next tiles read.
    let bs = core::mem::size_of::<W>();
    let ahead = w
        .as_ptr()
        .cast::<i8>()
        .wrapping_add(rows[0] * nb * bs + PREFETCH_BYTES.max(2 * P * nb * bs));
    for k in 0..nb {
        let p = ahead.wrapping_add(k * 2 * P * bs);
        // Prefetching never faults, whatever the address; past the end of the matrix it is only wasted.
        _mm_prefetch::<_MM_HINT_T0>(p);
        if 2 * P * bs > 64 {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
        }
        // SAFETY: rows[r] * nb + k < w.len() (asserted above).
        let blocks: [&W; 4] =
            core::array::from_fn(|r| unsafe { w.get_unchecked(rows[r.min(2 * P - 1)] * nb + k) });
        let h: [i32; 4] = core::array::from_fn(|r| if r < 2 * P { blocks[r].head() } else { 0 });
        let dm = _mm256_cvtph_ps(_mm_set_epi32(h[3], h[2], h[1], h[0]));
        // SAFETY: k < nb ≤ y.d.len() (asserted above).
        let yd = unsafe { *y.d.get_unchecked(k) };
        let dd = _mm256_mul_ps(dm, _mm256_set1_ps(yd));
        if W::HAS_MIN {
            // SAFETY: as for `yd`.
            let ys = unsafe { *y.s.get_unchecked(k) };
            summs = _mm256_fmadd_ps(dm, _mm256_set1_ps(ys), summs);
        }
        // SAFETY: k < nb ≤ y.qs.len() (asserted above); reads exactly the 32 activation bytes.
        let qy = unsafe { _mm256_loadu_si256(W::act_qs(y.qs.get_unchecked(k)).as_ptr().cast()) };
        let qy2 = _mm512_broadcast_i64x4(qy);
        let start = start_lanes::<W>(qy2);
        let dd512 = _mm512_castps256_ps512(dd);
        for i in 0..P {
            // SAFETY: the caller guarantees AVX-512 F, BW, VL and VNNI.
            let u = unsafe { W::wide2(blocks[2 * i], blocks[2 * i + 1]) };
            let prod = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, u, qy2));
            acc[i] = _mm512_fmadd_ps(_mm512_permutexvar_ps(pick[i], dd512), prod, acc[i]);
        }
    }
    let mut m = [0.0f32; 8];
    // SAFETY: writes exactly the 8 floats of `m`.
    unsafe { _mm256_storeu_ps(m.as_mut_ptr(), summs) };
    for i in 0..P {
        let s = hsum_halves(acc[i]);
        for (h, &v) in s.iter().enumerate() {
            let r = 2 * i + h;
            out[r] = if W::HAS_MIN { v + m[2 * r + 1] } else { v };
        }
    }
}

/// One token: rows in tiles of 4 (two zmm pairs), the last 1-3 in one tile of one pair (an odd last row paired
/// with itself).
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn decode<W: Q0Wide>(w: &[W], nb: usize, y: &ActTile<'_, W::Act>, out: &mut [f32]) {
    let rows = out.len();
    let mut r = 0;
    let mut o = [0.0f32; 4];
    while r + 4 <= rows {
        // SAFETY: the caller guarantees the CPU features.
        unsafe { decode_tile::<W, 2>(w, nb, [r, r + 1, r + 2, r + 3], y, &mut o) };
        out[r..r + 4].copy_from_slice(&o);
        r += 4;
    }
    while r < rows {
        let second = (r + 1).min(rows - 1);
        // SAFETY: as above.
        unsafe { decode_tile::<W, 1>(w, nb, [r, second, 0, 0], y, &mut o) };
        out[r] = o[0];
        if second > r {
            out[second] = o[1];
        }
        r = second + 1;
    }
}

/// Two rows' block k unpacked for a batched product: the values + OFFSET of row 2i in bytes 0..32 and of row
/// 2i + 1 in bytes 32..64.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Pair([u8; 64]);

/// Rows per group of a batched product (two zmm pairs): unpacked together, then multiplied in tiles of
/// `GROUP_ROWS × TILE_COLS`.
const GROUP_ROWS: usize = 4;
/// Columns per tile of a batched product.
const TILE_COLS: usize = 4;

/// f32s of work buffer a batched product over rows of up to `max_cols` elements needs: the group's scales
/// (`[d, m]` of each row and block), then its unpacked pairs (aligned inside the rest).
pub fn work_len(max_cols: usize) -> usize {
    let nb = max_cols / QK;
    let pair = core::mem::size_of::<Pair>() / 4;
    GROUP_ROWS * nb * 2 + GROUP_ROWS / 2 * nb * pair + core::mem::align_of::<Pair>() / 4
}

/// Unpacks rows `rows` (4, a row may repeat) of `nb` blocks in `w` into `un[k * 2 + i]` (pair i = rows 2i, 2i+1)
/// and their `[d, m]` into `dm[(k * 4 + r)]`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack_group<W: Q0Wide>(
    w: &[W],
    nb: usize,
    rows: [usize; 4],
    un: &mut [Pair],
    dm: &mut [[f32; 2]],
) {
    // Software prefetch of the next group (the 4 rows after `rows[0]`'s group, contiguous), spread over the
    // iterations: the rows are read four streams at a time here, which the hardware prefetchers follow less well.
    let bs = core::mem::size_of::<W>();
    let next = w
        .as_ptr()
        .cast::<i8>()
        .wrapping_add((rows[0] + 4) * nb * bs);
    for k in 0..nb {
        let p = next.wrapping_add(k * 4 * bs);
        // Prefetching never faults, whatever the address; past the end of the matrix it is only wasted.
        for line in (0..4 * bs).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line));
        }
        let b: [&W; 4] = core::array::from_fn(|r| &w[rows[r] * nb + k]);
        for i in 0..2 {
            // SAFETY: the caller guarantees the CPU features.
            let u = unsafe { W::wide2(b[2 * i], b[2 * i + 1]) };
            // SAFETY: writes exactly the 64 bytes of the pair.
            unsafe { _mm512_storeu_si512(un[2 * k + i].0.as_mut_ptr().cast(), u) };
        }
        let dmv = _mm256_cvtph_ps(_mm_set_epi32(
            b[3].head(),
            b[2].head(),
            b[1].head(),
            b[0].head(),
        ));
        // SAFETY: writes exactly the 8 floats of dm[4k..4k + 4].
        unsafe { _mm256_storeu_ps(dm[4 * k..4 * k + 4].as_mut_ptr().cast(), dmv) };
    }
}

/// `out[r][c] = row r · column c` for the 4 unpacked rows (`un`, `dm` as [`unpack_group`] lays them out) and `C`
/// columns of `y`, each output in exactly the operations of the AVX2 tile (`tile_unpacked`).
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(
    clippy::needless_range_loop,
    reason = "row pair i and column c index the unpacked rows, the columns and the accumulators at once"
)]
unsafe fn group_tile<W: Q0Wide, const C: usize>(
    un: &[Pair],
    dm: &[[f32; 2]],
    nb: usize,
    y: &ActTile<'_, W::Act>,
    out: &mut [[f32; C]; 4],
) {
    const { assert!(C >= 1 && C <= 8) };
    // These checks make every unchecked index below in bounds (as in the AVX2 tile).
    assert!(
        un.len() >= 2 * nb && dm.len() >= 4 * nb && y.qs.len() >= C * nb && y.col0 + C <= y.batch
    );
    assert!(nb == 0 || (y.d.len() >= (nb - 1) * y.batch + y.col0 + C));
    assert!(!W::HAS_MIN || nb == 0 || (y.s.len() >= (nb - 1) * y.batch + y.col0 + C));
    let mut acc = [[_mm512_setzero_ps(); C]; 2];
    // Lane c of summs[r] is row r × column c (Q4_1's `fma(m, s, summs)` chain, as the AVX2 tile).
    let mut summs = [_mm256_setzero_ps(); 4];
    let low_high = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    for k in 0..nb {
        let at = k * y.batch + y.col0;
        // SAFETY: 2k + 1 < 2 nb ≤ un.len() (asserted above).
        let u: [__m512i; 2] = core::array::from_fn(|i| unsafe {
            _mm512_loadu_si512(un.get_unchecked(2 * k + i).0.as_ptr().cast())
        });
        // SAFETY: 4k + 3 < 4 nb ≤ dm.len(); reads the 8 floats [d0, m0, d1, m1, d2, m2, d3, m3].
        let dmv = unsafe { _mm256_loadu_ps(dm.get_unchecked(4 * k..4 * k + 4).as_ptr().cast()) };
        // Pair i's row scales: d of row 2i in lanes 0..8, of row 2i + 1 in lanes 8..16.
        let dpair = [
            _mm512_permutexvar_ps(low_high, _mm512_castps256_ps512(dmv)),
            _mm512_permutexvar_ps(
                low_high,
                _mm512_castps256_ps512(_mm256_permute2f128_ps::<0x01>(dmv, dmv)),
            ),
        ];
        if W::HAS_MIN {
            let mut sv = [0.0f32; 8];
            // SAFETY: at + c for c < C is within y.s (asserted above).
            sv[..C].copy_from_slice(unsafe { y.s.get_unchecked(at..at + C) });
            // SAFETY: reads exactly the 8 floats of `sv`.
            let sv = unsafe { _mm256_loadu_ps(sv.as_ptr()) };
            for r in 0..4 {
                // SAFETY: 4k + r < dm.len() (asserted above).
                let m = unsafe { dm.get_unchecked(4 * k + r)[1] };
                summs[r] = _mm256_fmadd_ps(_mm256_set1_ps(m), sv, summs[r]);
            }
        }
        for c in 0..C {
            // SAFETY: c * nb + k within y.qs (asserted above); reads exactly the 32 activation bytes.
            let qy = unsafe {
                _mm256_loadu_si256(W::act_qs(y.qs.get_unchecked(c * nb + k)).as_ptr().cast())
            };
            let qy2 = _mm512_broadcast_i64x4(qy);
            let start = start_lanes::<W>(qy2);
            // SAFETY: at + c within y.d (asserted above).
            let yd = _mm512_set1_ps(unsafe { *y.d.get_unchecked(at + c) });
            for i in 0..2 {
                let prod = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, u[i], qy2));
                // d_r · d_c, the product the AVX2 tile forms (multiplication commutes exactly).
                acc[i][c] = _mm512_fmadd_ps(_mm512_mul_ps(dpair[i], yd), prod, acc[i][c]);
            }
        }
    }
    for i in 0..2 {
        for c in 0..C {
            let s = hsum_halves(acc[i][c]);
            out[2 * i][c] = s[0];
            out[2 * i + 1][c] = s[1];
        }
    }
    if W::HAS_MIN {
        for r in 0..4 {
            let mut m = [0.0f32; 8];
            // SAFETY: writes exactly the 8 floats of `m`.
            unsafe { _mm256_storeu_ps(m.as_mut_ptr(), summs[r]) };
            for c in 0..C {
                out[r][c] += m[c];
            }
        }
    }
}

/// Where a batched product's rows come from: a matrix in the file's layout (`&[W]`), or one in the interleaved
/// layout (`interleaved::Slabs`).
trait Groups<W: Q0Wide> {
    /// Rows of the matrix.
    fn rows(&self, nb: usize) -> usize;
    /// Unpacks rows `rows` (4 of them, a row may repeat) into `un` and `dm` as [`unpack_group`] does.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
    unsafe fn unpack(&self, nb: usize, rows: [usize; 4], un: &mut [Pair], dm: &mut [[f32; 2]]);
}

impl<W: Q0Wide> Groups<W> for &[W] {
    fn rows(&self, nb: usize) -> usize {
        self.len().checked_div(nb).unwrap_or(0)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack(&self, nb: usize, rows: [usize; 4], un: &mut [Pair], dm: &mut [[f32; 2]]) {
        // SAFETY: the caller guarantees the CPU features.
        unsafe { unpack_group::<W>(self, nb, rows, un, dm) }
    }
}

/// The batched product (`y.batch > 1`), output as [`mat_q0`]'s: groups of [`GROUP_ROWS`] rows are unpacked once,
/// then multiplied against the columns [`TILE_COLS`] at a time (the last `cols % TILE_COLS` one at a time).
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn batch<W: Q0Wide>(
    w: &impl Groups<W>,
    nb: usize,
    y: &ActTile<'_, W::Act>,
    cols: usize,
    out: &mut [f32],
    ld: usize,
    work: &mut [f32],
) {
    let rows = w.rows(nb);
    let (dm, un) = work.split_at_mut(2 * GROUP_ROWS * nb);
    let dm: &mut [[f32; 2]] = bytemuck::cast_slice_mut(dm);
    let un = &mut bytemuck::pod_align_to_mut::<f32, Pair>(un).1[..GROUP_ROWS / 2 * nb];
    let mut r = 0;
    while r < rows {
        let n = GROUP_ROWS.min(rows - r);
        // Rows past the end repeat the group's last row; their outputs are not stored.
        let group: [usize; 4] = core::array::from_fn(|i| r + i.min(n - 1));
        // SAFETY: the caller guarantees the CPU features.
        unsafe { w.unpack(nb, group, un, dm) };
        let mut c = 0;
        while c < cols {
            let sub = ActTile {
                qs: &y.qs[c * nb..],
                d: y.d,
                s: y.s,
                batch: y.batch,
                col0: y.col0 + c,
            };
            if c + TILE_COLS <= cols {
                let mut o = [[0.0f32; TILE_COLS]; 4];
                // SAFETY: as above.
                unsafe { group_tile::<W, TILE_COLS>(un, dm, nb, &sub, &mut o) };
                for j in 0..TILE_COLS {
                    for (i, row) in o[..n].iter().enumerate() {
                        out[(c + j) * ld + r + i] = row[j];
                    }
                }
                c += TILE_COLS;
            } else {
                let mut o = [[0.0f32; 1]; 4];
                // SAFETY: as above.
                unsafe { group_tile::<W, 1>(un, dm, nb, &sub, &mut o) };
                for (i, row) in o[..n].iter().enumerate() {
                    out[c * ld + r + i] = row[0];
                }
                c += 1;
            }
        }
        r += n;
    }
}

/// `out[c * ld + r] = W[r] · y[col0 + c]` for every row of `w` (`w.len() / nb` rows of `nb` blocks) and the `cols`
/// columns of `y` from `y.col0`, equal bit for bit to `avx2::mat_q0` (see the module comment).
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn mat_q0<W: Q0Wide>(
    w: &[W],
    nb: usize,
    y: &ActTile<'_, W::Act>,
    cols: usize,
    out: &mut [f32],
    ld: usize,
    work: &mut [f32],
) {
    if y.batch == 1 {
        let out = &mut out[..w.len() / nb.max(1)];
        // SAFETY: the caller guarantees the CPU features.
        unsafe { decode::<W>(w, nb, y, out) };
        return;
    }
    // SAFETY: as above.
    unsafe { batch::<W>(&w, nb, y, cols, out, ld, work) }
}
