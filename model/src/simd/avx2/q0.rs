//! The 32-element formats (Q4_0, Q4_1, Q5_0, Q8_0): single-row dot products and the multi-row × multi-token
//! tiles of decode and prefill products.

use super::*;

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
#[allow(
    clippy::needless_range_loop,
    reason = "row r indexes several parallel per-row arrays at once; iterators would hide that"
)]
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
    work: &mut [f32],
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
    unsafe { mat_q0_batch::<W>(w, nb, y, cols, out, ld, work) }
}

/// A weight block unpacked once per batched product: `ax` is the operand `vpmaddubsw` takes unsigned (|q| for
/// signed formats, q itself otherwise) and `sx` the signed values whose signs move onto the activations.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
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
#[allow(
    clippy::needless_range_loop,
    reason = "row r and column c index the unpacked rows, the columns and the accumulators at once"
)]
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

/// f32s of work buffer a batched product over rows of up to `max_cols` elements needs: each group's blocks'
/// scales, then the unpacked blocks (aligned inside the rest).
pub(super) fn work_len(max_cols: usize) -> usize {
    let nb = max_cols / QK;
    let unpacked = core::mem::size_of::<Unpacked>() / 4;
    TILE_ROWS * nb * (2 + unpacked) + core::mem::align_of::<Unpacked>() / 4
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
    work: &mut [f32],
) {
    let rows = w.len().checked_div(nb).unwrap_or(0);
    let (dm, un) = work.split_at_mut(2 * TILE_ROWS * nb);
    let dm: &mut [[f32; 2]] = bytemuck::cast_slice_mut(dm);
    let un = &mut bytemuck::pod_align_to_mut::<f32, Unpacked>(un).1[..TILE_ROWS * nb];
    let mut r = 0;
    while r < rows {
        let n = TILE_ROWS.min(rows - r);
        // SAFETY: the caller guarantees AVX2, FMA and F16C.
        unsafe { unpack_rows::<W>(&w[r * nb..], nb, n, un, dm) };
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
                unsafe { tile_unpacked::<W, TILE_ROWS, TILE_COLS>(un, dm, nb, &sub, &mut o) };
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
