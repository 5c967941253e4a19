//! AVX-512 kernels for the tensor types whose order llama.cpp's AVX-512 build changes (see
//! [`crate::wide::dot_q2_k_q8_k_gemm`]'s module): repacked Q2_K (8 rows advance together, one f32 lane per row, as
//! `ggml_gemv/gemm_q2_K_8x8_q8_K` keep them) and BF16 through `vdpbf16ps` (AVX512-BF16) or 16-lane f32 products
//! (AVX-512F). Each equals its scalar twin in [`crate::wide`] bit for bit. Q5_K, Q5_1 and Q3_K need none: llama.cpp
//! runs its AVX2 code for them on such a CPU, and the engine its AVX2 kernels.
//!
//! Intel intrinsics per the Intel Intrinsics Guide.

use core::arch::x86_64::*;
use core::sync::atomic::{AtomicU8, Ordering};

use super::avx2::{crumbs, fma1};
use super::avx512::hsum16;
use crate::quant::{f16_to_f32, BlockQ2K, BlockQ3K, BlockQ5K, BlockQ8K};

/// Whether the CPU has AVX512-BF16: 0 = not yet probed, 1 = no, 2 = yes.
static BF16: AtomicU8 = AtomicU8::new(0);

/// AVX512-BF16 (CPUID leaf 7 sub-leaf 1, EAX bit 5; Intel SDM vol. 2A). Called at the AVX-512 level only, so leaf 7
/// exists and the OS saves ZMM state.
pub fn has_bf16() -> bool {
    match BF16.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let yes = __cpuid_count(7, 1).eax & (1 << 5) != 0;
            BF16.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        }
    }
}

/// 32 bytes from `b[at..]`.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
fn load32<T: bytemuck::Pod>(b: &[T], at: usize) -> __m256i {
    let bytes: &[u8] = bytemuck::cast_slice(b);
    let s = &bytes[at..at + 32];
    // SAFETY: `s` is exactly 32 bytes; `loadu` needs no alignment.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// The sum of the 8 i32 lanes of `v`.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// One Q2_K block against one Q8_K block, per half super-block: the exact `Σ sc·q·y` and `Σ m·Σy`
/// ([`crate::wide::q2_k_half_ints`]).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
fn q2_k_halves(a: &BlockQ2K, b: &BlockQ8K) -> ([i32; 2], [i32; 2]) {
    // SAFETY: reads exactly the 16 bytes of `scales` and the 32 bytes of `bsums`.
    let (s, bsums) = unsafe {
        (
            _mm_loadu_si128(a.scales.as_ptr().cast()),
            _mm256_loadu_si256(b.bsums.as_ptr().cast()),
        )
    };
    let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(s), _mm_set1_epi8(0x0F)));
    // 4-bit mins × |Σ y over 16| ≤ 2032: each pair fits i32. Lanes 0-3 are the first half's sub-blocks.
    let min_lanes = _mm256_madd_epi16(mins, bsums);
    let imin = [
        hsum_i32(_mm256_and_si256(
            min_lanes,
            _mm256_set_epi32(0, 0, 0, 0, -1, -1, -1, -1),
        )),
        hsum_i32(_mm256_and_si256(
            min_lanes,
            _mm256_set_epi32(-1, -1, -1, -1, 0, 0, 0, 0),
        )),
    ];
    let mut isum = [0i32; 2];
    for (h, sum) in isum.iter_mut().enumerate() {
        let q = load32(&a.qs, 32 * h);
        let mut acc = _mm256_setzero_si256();
        for k in 0..4 {
            let g = 8 * h + 2 * k;
            let (s0, s1) = ((a.scales[g] & 0xF) as i16, (a.scales[g + 1] & 0xF) as i16);
            // q ≤ 3: ≤ 2·3·128 per i16 lane; times a 4-bit scale into i32.
            let p16 = _mm256_maddubs_epi16(crumbs(q, k), load32(&b.qs, 128 * h + 32 * k));
            let sc = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(sc, p16));
        }
        *sum = hsum_i32(acc);
    }
    (isum, imin)
}

/// `cols` tokens (`y[t * nb..]`) against Q2_K rows of `nb` blocks (`w[r * nb..]`, a multiple of 8 rows) in the
/// orders of llama.cpp's repacked Q2_K kernels, `out[t * ld + r] = W[r] · y[t]`: the first `gemm` tokens through its
/// gemm ([`crate::wide::dot_q2_k_q8_k_gemm`]), the rest through its gemv ([`crate::wide::dot_q2_k_q8_k_gemv`]).
/// Eight rows share each token's pass, one f32 lane each.
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[allow(
    clippy::too_many_arguments,
    reason = "the product's operands, shape and output layout, as the dispatch passes them"
)]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn mat_q2_k_repacked(
    w: &[BlockQ2K],
    nb: usize,
    y: &[BlockQ8K],
    cols: usize,
    gemm: usize,
    out: &mut [f32],
    ld: usize,
) {
    let rows = w.len().checked_div(nb).unwrap_or(0);
    assert!(rows.is_multiple_of(8) && y.len() >= cols * nb);
    assert!(cols == 0 || out.len() >= (cols - 1) * ld + rows);
    if cols >= 4 {
        // SAFETY: the caller guarantees the CPU features.
        unsafe { q2_k_repacked_batch(w, nb, y, cols, gemm, out, ld) };
        return;
    }
    for g in (0..rows).step_by(8) {
        for t in 0..cols {
            let (mut acc, mut acc_min) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for k in 0..nb {
                let b = &y[t * nb + k];
                let (mut isum, mut imin) = ([[0i32; 8]; 2], [[0i32; 8]; 2]);
                let (mut d, mut dmin) = ([0.0f32; 8], [0.0f32; 8]);
                for r in 0..8 {
                    let a = &w[(g + r) * nb + k];
                    let (i, m) = q2_k_halves(a, b);
                    for h in 0..2 {
                        isum[h][r] = i[h];
                        imin[h][r] = m[h];
                    }
                    d[r] = f16_to_f32(a.d);
                    dmin[r] = f16_to_f32(a.dmin);
                }
                let yd = _mm256_set1_ps(b.d);
                // SAFETY: each array is exactly 8 lanes.
                let (dv, dmv, i0, i1, m0, m1) = unsafe {
                    (
                        _mm256_mul_ps(_mm256_loadu_ps(d.as_ptr()), yd),
                        _mm256_mul_ps(_mm256_loadu_ps(dmin.as_ptr()), yd),
                        _mm256_loadu_si256(isum[0].as_ptr().cast()),
                        _mm256_loadu_si256(isum[1].as_ptr().cast()),
                        _mm256_loadu_si256(imin[0].as_ptr().cast()),
                        _mm256_loadu_si256(imin[1].as_ptr().cast()),
                    )
                };
                if t < gemm {
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), dv, acc);
                    acc_min = _mm256_fmadd_ps(_mm256_cvtepi32_ps(m0), dmv, acc_min);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), dv, acc);
                    acc_min = _mm256_fmadd_ps(_mm256_cvtepi32_ps(m1), dmv, acc_min);
                } else {
                    let i = _mm256_cvtepi32_ps(_mm256_add_epi32(i0, i1));
                    let m = _mm256_cvtepi32_ps(_mm256_add_epi32(m0, m1));
                    acc = _mm256_fmadd_ps(i, dv, acc);
                    acc_min = _mm256_fmadd_ps(m, dmv, acc_min);
                }
            }
            let o = &mut out[t * ld + g..t * ld + g + 8];
            // SAFETY: `o` is exactly 8 floats.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), _mm256_sub_ps(acc, acc_min)) };
        }
    }
}

/// 32 bf16 from `p[at..]` as the `__m512bh` operand of `vdpbf16ps`.
///
/// # Safety
/// `at + 32 ≤ p.len()`.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn load_bh(p: &[[u8; 2]], at: usize) -> __m512bh {
    debug_assert!(at + 32 <= p.len());
    // SAFETY: the caller guarantees 64 bytes from `at`; `loadu` needs no alignment. `__m512i` and `__m512bh` are
    // both 512 bits of plain data, so the transmute only renames the lanes.
    unsafe {
        core::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.as_ptr().add(at).cast()))
    }
}

/// 16 bf16 from `p[at..]` as f32 lanes (ggml's AVX-512F `LOAD`: zero-extend, shift into the upper half).
///
/// # Safety
/// `at + 16 ≤ p.len()`.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn load_bf16x16(p: &[[u8; 2]], at: usize) -> __m512 {
    debug_assert!(at + 16 <= p.len());
    // SAFETY: the caller guarantees 32 bytes from `at`.
    let v = unsafe { _mm256_loadu_si256(p.as_ptr().add(at).cast()) };
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
}

/// `ggml_vec_dot_bf16`'s f64 tail: the products from element `from`, added one at a time onto `sum`.
fn bf16_tail(mut sum: f64, x: &[[u8; 2]], y: &[[u8; 2]], from: usize, n: usize) -> f32 {
    let h = |v: [u8; 2]| crate::quant::bf16_to_f32(u16::from_le_bytes(v));
    for i in from..n {
        sum += (h(x[i]) * h(y[i])) as f64;
    }
    sum as f32
}

/// BF16 · BF16 as AVX512-BF16 `ggml_vec_dot_bf16` ([`crate::wide::dot_bf16_dp`]).
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX512-BF16, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
pub unsafe fn dot_bf16_dp(x: &[[u8; 2]], y: &[[u8; 2]]) -> f32 {
    let n = x.len().min(y.len());
    let np = n / 64 * 64;
    let (mut c1, mut c2) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for i in (0..np).step_by(64) {
        // SAFETY: i + 64 ≤ np ≤ both lengths.
        unsafe {
            c1 = _mm512_dpbf16_ps(c1, load_bh(x, i), load_bh(y, i));
            c2 = _mm512_dpbf16_ps(c2, load_bh(x, i + 32), load_bh(y, i + 32));
        }
    }
    let sum = hsum16(c1) as f64 + hsum16(c2) as f64;
    bf16_tail(sum, x, y, np, n)
}

/// BF16 · BF16 as tinyBLAS with AVX512-BF16 ([`crate::wide::dot_bf16_chain_dp`]); lengths a multiple of 32.
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX512-BF16, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
pub unsafe fn dot_bf16_chain_dp(x: &[[u8; 2]], y: &[[u8; 2]]) -> f32 {
    let n = x.len().min(y.len()) / 32 * 32;
    let mut acc = _mm512_setzero_ps();
    for i in (0..n).step_by(32) {
        // SAFETY: i + 32 ≤ n ≤ both lengths.
        acc = unsafe { _mm512_dpbf16_ps(acc, load_bh(x, i), load_bh(y, i)) };
    }
    hsum16(acc)
}

/// BF16 · BF16 as AVX-512F `ggml_vec_dot_bf16` ([`crate::wide::dot_bf16_f`]).
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dot_bf16_f(x: &[[u8; 2]], y: &[[u8; 2]]) -> f32 {
    let n = x.len().min(y.len());
    let np = n / 32 * 32;
    let (mut c1, mut c2) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for i in (0..np).step_by(32) {
        // SAFETY: i + 32 ≤ np ≤ both lengths. A bf16 product is exact in f32, so the FMA equals C's `c + x·y`.
        unsafe {
            c1 = _mm512_fmadd_ps(load_bf16x16(x, i), load_bf16x16(y, i), c1);
            c2 = _mm512_fmadd_ps(load_bf16x16(x, i + 16), load_bf16x16(y, i + 16), c2);
        }
    }
    let sum = hsum16(c1) as f64 + hsum16(c2) as f64;
    bf16_tail(sum, x, y, np, n)
}

/// BF16 · BF16 as tinyBLAS with AVX-512F only ([`crate::wide::dot_bf16_chain_f`]); lengths a multiple of 16.
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dot_bf16_chain_f(x: &[[u8; 2]], y: &[[u8; 2]]) -> f32 {
    let n = x.len().min(y.len()) / 16 * 16;
    let mut acc = _mm512_setzero_ps();
    for i in (0..n).step_by(16) {
        // SAFETY: i + 16 ≤ n ≤ both lengths.
        acc = unsafe { _mm512_fmadd_ps(load_bf16x16(x, i), load_bf16x16(y, i), acc) };
    }
    hsum16(acc)
}

/// One weight block decoded for [`block_ints`]: unsigned codes in element order (64 per vector), the i32 scale of
/// each lane's 16-element group, the code bias (the value is `code - bias`), and the 16 groups' scales and mins
/// as i16 for the products with Q8_K's `bsums`.
struct Decoded {
    codes: [__m512i; 4],
    scales: [__m512i; 4],
    bias: i32,
    sc16: __m256i,
    m16: __m256i,
}

/// `codes` (0..=31), per-16-group `sc` and `m`, and `bias` as a [`Decoded`].
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
fn decode(codes: &[u8; 256], sc: &[i16; 16], m: &[i16; 16], bias: i32) -> Decoded {
    let lanes = |i: usize| -> __m512i {
        let s: [i32; 16] = core::array::from_fn(|l| sc[4 * i + l / 4] as i32);
        // SAFETY: `s` is exactly 16 i32.
        unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
    };
    // SAFETY: each load reads 64 bytes of the 256 in `codes`, or the 32 bytes of `sc` / `m`.
    unsafe {
        Decoded {
            codes: core::array::from_fn(|i| _mm512_loadu_si512(codes[64 * i..].as_ptr().cast())),
            scales: core::array::from_fn(lanes),
            bias,
            sc16: _mm256_loadu_si256(sc.as_ptr().cast()),
            m16: _mm256_loadu_si256(m.as_ptr().cast()),
        }
    }
}

/// The sum of the 4 i32 lanes of `v`.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
fn hsum4_i32(v: __m128i) -> i32 {
    let s = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// One decoded block against one Q8_K block, per half super-block (elements `128h..128h + 128`): the exact
/// `Σ sc·(code - bias)·y` and `Σ m·Σy`. Integer sums, so any order gives the values the AVX2 kernels give.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
fn block_ints(a: &Decoded, b: &BlockQ8K) -> ([i32; 2], [i32; 2]) {
    let ones = _mm512_set1_epi16(1);
    let mut dots = [_mm512_setzero_si512(); 2];
    for i in 0..4 {
        let y = load64(&b.qs, 64 * i);
        // code ≤ 31 × |y| ≤ 128: a pair ≤ 7936 fits i16; 4 products per i32 lane, times a scale ≤ 63 in size.
        let p = _mm512_madd_epi16(_mm512_maddubs_epi16(a.codes[i], y), ones);
        dots[i / 2] = _mm512_add_epi32(dots[i / 2], _mm512_mullo_epi32(p, a.scales[i]));
    }
    // SAFETY: reads exactly the 32 bytes of `bsums`.
    let bsums = unsafe { _mm256_loadu_si256(b.bsums.as_ptr().cast()) };
    // Lanes 0-3 (the low 128 bits) are the first half's 8 groups, in pairs.
    let corr = _mm256_madd_epi16(bsums, a.sc16);
    let mins = _mm256_madd_epi16(bsums, a.m16);
    let half = |v: __m256i, h: usize| {
        hsum4_i32(if h == 0 {
            _mm256_castsi256_si128(v)
        } else {
            _mm256_extracti128_si256::<1>(v)
        })
    };
    let isum = core::array::from_fn(|h| _mm512_reduce_add_epi32(dots[h]) - a.bias * half(corr, h));
    (isum, core::array::from_fn(|h| half(mins, h)))
}

/// 64 bytes from `b[at..]`.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
fn load64(b: &[i8], at: usize) -> __m512i {
    let s = &b[at..at + 64];
    // SAFETY: `s` is exactly 64 bytes; `loadu` needs no alignment.
    unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
}

/// One row of `nb` blocks against `out.len()` tokens (`y[t * nb..]`) in llama.cpp's tiled order
/// ([`crate::quant::tiled_fold`] per super-block), each block decoded once for all the tokens.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
fn tiled_row<B>(
    w: &[B],
    nb: usize,
    y: &[BlockQ8K],
    out: &mut [f32],
    decode_block: impl Fn(&B) -> (Decoded, f32, f32),
) {
    assert!(w.len() >= nb && y.len() >= out.len() * nb);
    out.fill(0.0);
    for (k, a) in w[..nb].iter().enumerate() {
        let (dec, d, dmin) = decode_block(a);
        for (t, o) in out.iter_mut().enumerate() {
            let b = &y[t * nb + k];
            let (isum, imin) = block_ints(&dec, b);
            let r = d * (isum[0] + isum[1]) as f32;
            let r = fma1(-dmin, (imin[0] + imin[1]) as f32, r);
            *o = fma1(r, b.d, *o);
        }
    }
}

/// Q3_K in the tiled order ([`crate::quant::dot_q3_k_q8_k_tiled`], as the AVX2 kernel), each block decoded once
/// for all the tokens.
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn mat_q3_k_tiled(w: &[BlockQ3K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) {
    tiled_row(w, nb, y, out, |a| {
        let codes = crate::quant::q3_k_values(a).map(|v| (v + 4) as u8);
        let sc = crate::quant::q3_k_scales(&a.scales).map(i16::from);
        (decode(&codes, &sc, &[0; 16], 4), f16_to_f32(a.d), 0.0)
    });
}

/// Q2_K in the tiled order ([`crate::quant::dot_q2_k_q8_k_tiled`]), each block decoded once for all the tokens.
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn mat_q2_k_tiled(w: &[BlockQ2K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) {
    tiled_row(w, nb, y, out, |a| {
        let codes = crate::quant::q2_k_values(a);
        let sc = a.scales.map(|s| (s & 0xF) as i16);
        let m = a.scales.map(|s| (s >> 4) as i16);
        (
            decode(&codes, &sc, &m, 0),
            f16_to_f32(a.d),
            f16_to_f32(a.dmin),
        )
    });
}

/// Q5_K in the tiled order ([`crate::quant::dot_q5_k_q8_k_tiled`]), each block decoded once for all the tokens.
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn mat_q5_k_tiled(w: &[BlockQ5K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) {
    tiled_row(w, nb, y, out, |a| {
        let codes = crate::quant::q5_k_values(a);
        let sm: [(u8, u8); 8] = core::array::from_fn(|j| crate::quant::scale_min_k4(j, &a.scales));
        let sc = core::array::from_fn(|g| sm[g / 2].0 as i16);
        let m = core::array::from_fn(|g| sm[g / 2].1 as i16);
        (
            decode(&codes, &sc, &m, 0),
            f16_to_f32(a.d),
            f16_to_f32(a.dmin),
        )
    });
}

/// [`mat_q2_k_repacked`] for a batch: tokens in passes of [`PASS`], each 8-row group's blocks decoded once per pass.
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[allow(
    clippy::too_many_arguments,
    reason = "the product's operands, shape and output layout, as the dispatch passes them"
)]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn q2_k_repacked_batch(
    w: &[BlockQ2K],
    nb: usize,
    y: &[BlockQ8K],
    cols: usize,
    gemm: usize,
    out: &mut [f32],
    ld: usize,
) {
    const PASS: usize = 16;
    let rows = w.len() / nb;
    for g in (0..rows).step_by(8) {
        for t0 in (0..cols).step_by(PASS) {
            let n = PASS.min(cols - t0);
            let mut acc = [_mm256_setzero_ps(); PASS];
            let mut acc_min = [_mm256_setzero_ps(); PASS];
            for k in 0..nb {
                let dec: [Decoded; 8] = core::array::from_fn(|r| {
                    let a = &w[(g + r) * nb + k];
                    let sc = a.scales.map(|s| (s & 0xF) as i16);
                    let m = a.scales.map(|s| (s >> 4) as i16);
                    decode(&crate::quant::q2_k_values(a), &sc, &m, 0)
                });
                let d: [f32; 8] = core::array::from_fn(|r| f16_to_f32(w[(g + r) * nb + k].d));
                let dmin: [f32; 8] = core::array::from_fn(|r| f16_to_f32(w[(g + r) * nb + k].dmin));
                // SAFETY: `d` and `dmin` are exactly 8 floats.
                let (d, dmin) =
                    unsafe { (_mm256_loadu_ps(d.as_ptr()), _mm256_loadu_ps(dmin.as_ptr())) };
                for j in 0..n {
                    let t = t0 + j;
                    let b = &y[t * nb + k];
                    let (mut isum, mut imin) = ([[0i32; 8]; 2], [[0i32; 8]; 2]);
                    for (r, dec) in dec.iter().enumerate() {
                        let (i, m) = block_ints(dec, b);
                        for h in 0..2 {
                            isum[h][r] = i[h];
                            imin[h][r] = m[h];
                        }
                    }
                    let yd = _mm256_set1_ps(b.d);
                    let (dv, dmv) = (_mm256_mul_ps(d, yd), _mm256_mul_ps(dmin, yd));
                    // SAFETY: each array is exactly 8 lanes.
                    let (i0, i1, m0, m1) = unsafe {
                        (
                            _mm256_loadu_si256(isum[0].as_ptr().cast()),
                            _mm256_loadu_si256(isum[1].as_ptr().cast()),
                            _mm256_loadu_si256(imin[0].as_ptr().cast()),
                            _mm256_loadu_si256(imin[1].as_ptr().cast()),
                        )
                    };
                    if t < gemm {
                        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), dv, acc[j]);
                        acc_min[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(m0), dmv, acc_min[j]);
                        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), dv, acc[j]);
                        acc_min[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(m1), dmv, acc_min[j]);
                    } else {
                        let i = _mm256_cvtepi32_ps(_mm256_add_epi32(i0, i1));
                        let m = _mm256_cvtepi32_ps(_mm256_add_epi32(m0, m1));
                        acc[j] = _mm256_fmadd_ps(i, dv, acc[j]);
                        acc_min[j] = _mm256_fmadd_ps(m, dmv, acc_min[j]);
                    }
                }
            }
            for j in 0..n {
                let t = t0 + j;
                let o = &mut out[t * ld + g..t * ld + g + 8];
                // SAFETY: `o` is exactly 8 floats.
                unsafe { _mm256_storeu_ps(o.as_mut_ptr(), _mm256_sub_ps(acc[j], acc_min[j])) };
            }
        }
    }
}

/// `out[j] = dot_bf16_chain_dp(x, y[j * stride..][..x.len()])` for every `j < out.len()`, bit for bit: each token
/// keeps its own chain; up to 4 advance together and share each load of `x`.
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX512-BF16, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
pub unsafe fn dots_bf16_chain_dp(x: &[[u8; 2]], y: &[[u8; 2]], stride: usize, out: &mut [f32]) {
    let n = x.len() / 32 * 32;
    assert!(out.is_empty() || y.len() >= (out.len() - 1) * stride + n);
    for (j0, o) in (0..out.len()).step_by(4).zip(out.chunks_mut(4)) {
        let mut acc = [_mm512_setzero_ps(); 4];
        for i in (0..n).step_by(32) {
            // SAFETY: i + 32 ≤ n ≤ x.len(), and (j0 + j) * stride + i + 32 ≤ y.len() (asserted above).
            unsafe {
                let a = load_bh(x, i);
                for (j, acc) in acc.iter_mut().enumerate().take(o.len()) {
                    *acc = _mm512_dpbf16_ps(*acc, a, load_bh(y, (j0 + j) * stride + i));
                }
            }
        }
        for (o, acc) in o.iter_mut().zip(acc) {
            *o = hsum16(acc);
        }
    }
}

/// As [`dots_bf16_chain_dp`] for tinyBLAS's AVX-512F form ([`dot_bf16_chain_f`]).
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dots_bf16_chain_f(x: &[[u8; 2]], y: &[[u8; 2]], stride: usize, out: &mut [f32]) {
    let n = x.len() / 16 * 16;
    assert!(out.is_empty() || y.len() >= (out.len() - 1) * stride + n);
    for (j0, o) in (0..out.len()).step_by(4).zip(out.chunks_mut(4)) {
        let mut acc = [_mm512_setzero_ps(); 4];
        for i in (0..n).step_by(16) {
            // SAFETY: as in `dots_bf16_chain_dp`.
            unsafe {
                let a = load_bf16x16(x, i);
                for (j, acc) in acc.iter_mut().enumerate().take(o.len()) {
                    *acc = _mm512_fmadd_ps(a, load_bf16x16(y, (j0 + j) * stride + i), *acc);
                }
            }
        }
        for (o, acc) in o.iter_mut().zip(acc) {
            *o = hsum16(acc);
        }
    }
}
