//! AVX-512 kernels (F, DQ, BW, VL): the f16 dot products, softmax exponentials and SwiGLU in the 16-lane forms that
//! llama.cpp's AVX-512 build computes; their scalar twins, and the llama.cpp sources each mirrors, are in
//! [`crate::wide`].
//!
//! Intel intrinsics per the Intel Intrinsics Guide. The quantized products need no AVX-512 forms to match llama.cpp:
//! its AVX-512 build runs the same AVX2 code for them (`ggml-cpu/arch/x86/quants.c`), whose integer sums are exact.

use core::arch::x86_64::*;

/// `_mm512_reduce_add_ps` as GCC expands it ([`crate::wide::hsum16`]).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn hsum16(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm512_extractf32x8_ps::<1>(v);
    let t = _mm256_add_ps(hi, lo);
    let u = _mm_add_ps(_mm256_extractf128_ps::<1>(t), _mm256_castps256_ps128(t));
    let w = _mm_add_ps(u, _mm_permute_ps::<0b01_00_11_10>(u));
    _mm_cvtss_f32(w) + _mm_cvtss_f32(_mm_movehdup_ps(w))
}

/// [`hsum16`] of four vectors at once, each sum bit for bit [`hsum16`]'s: the same lanes are added in the same
/// tree with the same operand order, only the four vectors sit side by side in the lanes of each step instead of
/// going through it one after another (about a third of the instructions).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn hsum16x4(v: [__m512; 4]) -> [f32; 4] {
    // hsum16's `t = hi + lo` (lanes 8..16 plus lanes 0..8): vectors 0 and 1 in `a`, 2 and 3 in `b`, 8 lanes each.
    // `_mm512_shuffle_f32x4` takes 128-bit quarters: 0b01_00_01_00 gives [x.q0, x.q1, y.q0, y.q1], 0b11_10_11_10
    // gives [x.q2, x.q3, y.q2, y.q3].
    let halves = |x: __m512, y: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y),
            _mm512_shuffle_f32x4::<0b01_00_01_00>(x, y),
        )
    };
    let (a, b) = (halves(v[0], v[1]), halves(v[2], v[3]));
    // hsum16's `u = t.hi + t.lo` (4 lanes each): the odd quarters of `a` and `b` plus the even ones, so quarter r
    // of `u` is vector r's.
    let u = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
    );
    // hsum16's last two steps within each quarter: `w = u + swap of its 64-bit halves`, then `w[0] + w[1]`.
    let w = _mm512_add_ps(u, _mm512_permute_ps::<0b01_00_11_10>(u));
    let s = _mm512_add_ps(w, _mm512_movehdup_ps(w));
    let mut lanes = [0.0f32; 16];
    // SAFETY: writes exactly the 16 floats of `lanes`.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), s) };
    [lanes[0], lanes[4], lanes[8], lanes[12]]
}

/// 16 f16 values from `x[i..i + 16]` as f32 lanes.
///
/// # Safety
/// `i + 16 ≤ x.len()`.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn load_f16x16(x: &[u16], i: usize) -> __m512 {
    debug_assert!(i + 16 <= x.len());
    // SAFETY: the caller guarantees 16 u16 (32 bytes) from `i` are in bounds; `loadu` needs no alignment.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(x.as_ptr().add(i).cast()) })
}

/// f16 · f16 as tinyBLAS with 16 lanes ([`crate::wide::dot_f16_chain16`]); lengths a multiple of 16.
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dot_f16(x: &[u16], y: &[u16]) -> f32 {
    let n = x.len().min(y.len()) / 16 * 16;
    let mut acc = _mm512_setzero_ps();
    for i in (0..n).step_by(16) {
        // SAFETY: i + 16 ≤ n ≤ both lengths.
        let (a, b) = unsafe { (load_f16x16(x, i), load_f16x16(y, i)) };
        acc = _mm512_fmadd_ps(a, b, acc);
    }
    hsum16(acc)
}

/// Rows per pass of [`dots_f16`]: enough independent FMA chains to cover the FMA latency.
const DOTS_ROWS: usize = 8;

/// `out[i] = dot_f16(x[i * stride..][..y.len()], y)` for every `i < out.len()`, bit for bit: each row keeps its own
/// 16-lane chain, [`DOTS_ROWS`] rows advance together and share each converted block of `y`. `y.len()` must be a
/// multiple of 16.
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dots_f16(x: &[u16], stride: usize, y: &[u16], out: &mut [f32]) {
    let n = y.len() / 16 * 16;
    let rows = out.len();
    assert!(rows == 0 || x.len() >= (rows - 1) * stride + n);
    let full = rows / DOTS_ROWS * DOTS_ROWS;
    for r in (0..full).step_by(DOTS_ROWS) {
        let mut acc = [_mm512_setzero_ps(); DOTS_ROWS];
        for i in (0..n).step_by(16) {
            // SAFETY: i + 16 ≤ n ≤ y.len().
            let b = unsafe { load_f16x16(y, i) };
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: (r + j) * stride + i + 16 ≤ (rows - 1) * stride + n ≤ x.len() (asserted above).
                let xa = unsafe { load_f16x16(x, (r + j) * stride + i) };
                *a = _mm512_fmadd_ps(xa, b, *a);
            }
        }
        for (j, four) in acc.chunks_exact(4).enumerate() {
            let sums = hsum16x4([four[0], four[1], four[2], four[3]]);
            out[r + 4 * j..r + 4 * j + 4].copy_from_slice(&sums);
        }
    }
    for (i, o) in out.iter_mut().enumerate().skip(full) {
        // SAFETY: the caller guarantees the CPU features.
        *o = unsafe { dot_f16(&x[i * stride..i * stride + n], &y[..n]) };
    }
}

/// f16 · f16 as AVX-512 `ggml_vec_dot_f16` ([`crate::wide::dot_f16_ggml16`]): four 16-lane chains over steps of
/// 64, an f64 tail.
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dot_f16_ggml(x: &[u16], y: &[u16]) -> f32 {
    let n = x.len().min(y.len());
    let np = n / 64 * 64;
    let mut acc = [_mm512_setzero_ps(); 4];
    for i in (0..np).step_by(64) {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: i + 16j + 16 ≤ np ≤ both lengths.
            let (p, q) = unsafe { (load_f16x16(x, i + 16 * j), load_f16x16(y, i + 16 * j)) };
            *a = _mm512_fmadd_ps(p, q, *a);
        }
    }
    f16_ggml_finish(acc, &x[..n], &y[..n], np)
}

/// [`dot_f16_ggml`]'s end: the four chains summed as ggml sums them, then the f64 tail of `x`, `y` from `np`.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
fn f16_ggml_finish(acc: [__m512; 4], x: &[u16], y: &[u16], np: usize) -> f32 {
    f16_ggml_tail(hsum16(f16_ggml_chains(acc)), x, y, np)
}

/// ggml's sum of its four chains (`GGML_F32x16_REDUCE`'s vector steps), before the horizontal sum.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
fn f16_ggml_chains(acc: [__m512; 4]) -> __m512 {
    _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]))
}

/// The chains' horizontal sum `h` in f64 plus the products of `x`, `y` from `np` on, rounded to f32.
fn f16_ggml_tail(h: f32, x: &[u16], y: &[u16], np: usize) -> f32 {
    let f = |v: u16| half::f16::from_bits(v).to_f32();
    let mut sum = h as f64;
    for (&a, &b) in x[np..].iter().zip(&y[np..]) {
        sum += (f(a) * f(b)) as f64;
    }
    sum as f32
}

/// `out[r] = dot_f16_ggml(x[r * stride..][..y.len()], y)` for every row, bit for bit: rows four at a time, each
/// step's 64 elements of `y` converted once for the four (every row's chains take the same FMAs in the same order).
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dots_f16_ggml(x: &[u16], stride: usize, y: &[u16], out: &mut [f32]) {
    let n = y.len();
    let rows = out.len();
    // Every row read below lies in `x`: row r spans r * stride .. r * stride + n.
    assert!(rows == 0 || (rows - 1) * stride + n <= x.len());
    let np = n / 64 * 64;
    let mut r = 0;
    while r + 4 <= rows {
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        for i in (0..np).step_by(64) {
            for j in 0..4 {
                // SAFETY: i + 16j + 16 ≤ np ≤ n = y.len().
                let q = unsafe { load_f16x16(y, i + 16 * j) };
                for (k, a) in acc.iter_mut().enumerate() {
                    // SAFETY: (r + k) stride + i + 16j + 16 ≤ (r + k) stride + n ≤ x.len() (asserted above).
                    let p = unsafe { load_f16x16(x, (r + k) * stride + i + 16 * j) };
                    a[j] = _mm512_fmadd_ps(p, q, a[j]);
                }
            }
        }
        // The four rows' horizontal sums side by side (bit for bit one at a time, `hsum16x4`).
        let sums = hsum16x4(acc.map(|a| f16_ggml_chains(a)));
        for (k, h) in sums.into_iter().enumerate() {
            let row = &x[(r + k) * stride..(r + k) * stride + n];
            out[r + k] = f16_ggml_tail(h, row, y, np);
        }
        r += 4;
    }
    for (k, o) in out[r..].iter_mut().enumerate() {
        // SAFETY: the caller's guarantee of the CPU features holds.
        *o = unsafe { dot_f16_ggml(&x[(r + k) * stride..(r + k) * stride + n], y) };
    }
}

/// ggml's `ggml_v_expf` on 16 lanes ([`crate::wide::expf_ggml16`]).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
fn expf16(x: __m512) -> __m512 {
    let set = |bits: u32| _mm512_set1_ps(f32::from_bits(bits));
    let r = set(0x4b40_0000);
    let z = _mm512_fmadd_ps(x, set(0x3fb8_aa3b), r);
    let n = _mm512_sub_ps(z, r);
    let b = _mm512_fnmadd_ps(
        n,
        set(0x35bf_be8e),
        _mm512_fnmadd_ps(n, set(0x3f31_7200), x),
    );
    let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
    let u = _mm512_mul_ps(b, b);
    let j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(
            _mm512_fmadd_ps(set(0x3c07_2010), b, set(0x3d2b_9f17)),
            u,
            _mm512_fmadd_ps(set(0x3e2a_af33), b, set(0x3eff_fedb)),
        ),
        u,
        _mm512_fmadd_ps(set(0x3f7f_fff6), b, _mm512_set1_ps(1.0)),
    );
    let res = _mm512_scalef_ps(j, n);
    if d == 0 {
        return res;
    }
    let zero = _mm512_setzero_ps();
    let alt = _mm512_mask_blend_ps(
        _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, zero),
        _mm512_set1_ps(f32::INFINITY),
        zero,
    );
    _mm512_mask_blend_ps(d, res, alt)
}

/// `x[i] = exp(x[i] - max)` in blocks of 16, returning the f64 sum of the blocks' [`hsum16`]s
/// ([`crate::wide::softmax_exp16`]).
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn softmax_exp(x: &mut [f32], max: f32) -> f64 {
    let mut sum = 0.0f64;
    let m = _mm512_set1_ps(max);
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        // SAFETY: `c` is exactly 16 floats.
        let v = expf16(_mm512_sub_ps(unsafe { _mm512_loadu_ps(c.as_ptr()) }, m));
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(c.as_mut_ptr(), v) };
        sum += hsum16(v) as f64;
    }
    for v in chunks.into_remainder() {
        *v = libm::expf(*v - max);
        sum += *v as f64;
    }
    sum
}

/// `gate = silu(gate) * up` in blocks of 16 ([`crate::wide::swiglu16`]).
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
    let n16 = gate.len().min(up.len()) / 16 * 16;
    let one = _mm512_set1_ps(1.0);
    for i in (0..n16).step_by(16) {
        // SAFETY: i + 16 ≤ n16 ≤ both lengths.
        let (x, u) = unsafe {
            (
                _mm512_loadu_ps(gate.as_ptr().add(i)),
                _mm512_loadu_ps(up.as_ptr().add(i)),
            )
        };
        let s = _mm512_div_ps(
            x,
            _mm512_add_ps(one, expf16(_mm512_sub_ps(_mm512_setzero_ps(), x))),
        );
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(gate.as_mut_ptr().add(i), _mm512_mul_ps(s, u)) };
    }
    for (g, &u) in gate[n16..].iter_mut().zip(&up[n16..]) {
        let x = *g;
        *g = x / (1.0 + libm::expf(-x)) * u;
    }
}
