//! AVX-512 (F, BW, VL) Q6_K products whose result llama.cpp's AVX-512 build takes from its AVX2 code: the one-token
//! dot product (`ggml_vec_dot_q6_K_q8_K` in `ggml-cpu/arch/x86/quants.c` has no AVX-512 branch) and the tiled batch
//! order (an exact integer per block and token, then one scalar FMA). Each equals the AVX2 kernel of
//! `simd/avx2/kquant.rs` bit for bit, and so llama.cpp and the scalar twins.
//!
//! Intel intrinsics per the Intel Intrinsics Guide. Why the results cannot differ (docs/ARCHITECTURE.md §6):
//! - **Integer part.** The AVX2 kernel forms, per block, 8 i32 lanes: lane j sums sc·q·y over bytes 4j..4j+3 of
//!   each of the block's eight 32-element chunks (sc the scale of the 16 elements the bytes belong to), minus
//!   32·Σ sc·bsum over the two 16-element groups 2j and 2j+1. Here two chunks sit side by side in a zmm (chunk
//!   2c in the low 256 bits, 2c+1 in the high), go through the same `vpmaddubsw` and `vpmaddwd` with each chunk's
//!   scales, and the two halves are added at the end of the block: lane j gets the same products. Every partial
//!   sum is exact (q ≤ 63: a `vpmaddubsw` pair is within ±2·63·128, far from i16 saturation; a block's total
//!   within ±256·63·128·128 < 2³¹), so the order of the integer additions cannot change the total.
//! - **Float part.** One-token: one `fmadd(d, cvt(sumi), acc)` per block into the same 8-lane accumulator, reduced
//!   by the same `hsum_ps`. Tiled: the block's integer (all lanes summed, exact) enters the same scalar FMA.

use core::arch::x86_64::*;

use super::avx2::{hsum_epi32, hsum_ps};
use crate::quant::{f16_to_f32, BlockQ6K, BlockQ8K};

/// 32 i16 scales for the two chunks of a zmm: chunk groups `g`, `g+1` in the low 256 bits, `g+2`, `g+3` in the
/// high, each repeated over the 8 i16 lanes of its 16 elements (`vpmaddwd` multiplies lane pairs).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
fn chunk_scales(scales: __m512i, g: i16) -> __m512i {
    let index = _mm512_set_epi16(
        g + 3,
        g + 3,
        g + 3,
        g + 3,
        g + 3,
        g + 3,
        g + 3,
        g + 3,
        g + 2,
        g + 2,
        g + 2,
        g + 2,
        g + 2,
        g + 2,
        g + 2,
        g + 2,
        g + 1,
        g + 1,
        g + 1,
        g + 1,
        g + 1,
        g + 1,
        g + 1,
        g + 1,
        g,
        g,
        g,
        g,
        g,
        g,
        g,
        g,
    );
    _mm512_permutexvar_epi16(index, scales)
}

/// One Q6_K block unpacked for 512-bit products: the 256 six-bit values (0..=63) as 4 zmm of two 32-element chunks
/// each (chunk 2c in the low 256 bits of `q[c]`, 2c + 1 in the high), the i16 scales for each (`sc`), and the 16
/// scales as the i16 lanes of a ymm for the bsum term.
struct Q6Wide {
    q: [__m512i; 4],
    sc: [__m512i; 4],
    scales16: __m256i,
}

#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
fn unpack_q6_k(a: &BlockQ6K) -> Q6Wide {
    let (m4, m3) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(3));
    // SAFETY: 16 bytes of the 16 scales; `loadu` needs no alignment.
    let scales16 = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(a.scales.as_ptr().cast()) });
    let scales = _mm512_castsi256_si512(scales16);
    let mut q = [_mm512_setzero_si512(); 4];
    for half in 0..2 {
        // SAFETY: half ≤ 1, so 64 bytes of the 128 `ql` from 64·half and 32 of the 64 `qh` from 32·half stay
        // inside their arrays; `loadu` needs no alignment.
        let (ql, qh) = unsafe {
            (
                _mm512_loadu_si512(a.ql.as_ptr().add(64 * half).cast()),
                _mm256_loadu_si256(a.qh.as_ptr().add(32 * half).cast()),
            )
        };
        // High bits: chunk 0's from qh bits 0-1, chunk 1's from bits 2-3 (the high half, shifted by 2), chunks 2
        // and 3 from bits 4-5 and 6-7. 16-bit shifts move bits within a byte here: each result is masked to its
        // own byte.
        let h = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2));
        q[2 * half] = _mm512_or_si512(
            _mm512_and_si512(ql, m4),
            _mm512_slli_epi16(_mm512_and_si512(h, m3), 4),
        );
        q[2 * half + 1] = _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
            _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(h, 4), m3), 4),
        );
    }
    Q6Wide {
        q,
        sc: core::array::from_fn(|c| chunk_scales(scales, 4 * c as i16)),
        scales16,
    }
}

/// A block's 8 integer lanes against one token's Q8_K block, as the AVX2 kernels form them (module note).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
fn q6_k_lanes(a: &Q6Wide, b: &BlockQ8K) -> __m256i {
    let mut sumi = _mm512_setzero_si512();
    for c in 0..4 {
        // SAFETY: c ≤ 3, so 64 of the 256 `qs` from 64·c; `loadu` needs no alignment.
        let y = unsafe { _mm512_loadu_si512(b.qs.as_ptr().add(64 * c).cast()) };
        sumi = _mm512_add_epi32(
            sumi,
            _mm512_madd_epi16(_mm512_maddubs_epi16(a.q[c], y), a.sc[c]),
        );
    }
    // SAFETY: 32 bytes of the 16 i16 bsums; `loadu` needs no alignment.
    let bsums = unsafe { _mm256_loadu_si256(b.bsums.as_ptr().cast()) };
    // 32·Σ sc·bsum per pair of 16-element groups, as the AVX2 kernels subtract it.
    let sub = _mm256_slli_epi32(_mm256_madd_epi16(bsums, a.scales16), 5);
    let sumi = _mm256_add_epi32(
        _mm512_castsi512_si256(sumi),
        _mm512_extracti64x4_epi64::<1>(sumi),
    );
    _mm256_sub_epi32(sumi, sub)
}

/// Q6_K · Q8_K, equal to `avx2::dot_q6_k_q8_k` bit for bit (see the module's note).
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (a, b) in x.iter().zip(y) {
        let sumi = q6_k_lanes(&unpack_q6_k(a), b);
        let d = b.d * f16_to_f32(a.d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

/// One Q6_K row against `out.len()` tokens in llama.cpp's tiled order, equal to `avx2::mat_q6_k_tiled` bit for bit:
/// each block unpacked once for all the tokens, its exact integer per token then `out = fma(dw·isum, d_y, out)`.
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn mat_q6_k_tiled(w: &[BlockQ6K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) {
    let n = out.len();
    assert!(w.len() >= nb && y.len() >= n * nb);
    out.iter_mut().for_each(|o| *o = 0.0);
    for (k, a) in w[..nb].iter().enumerate() {
        let unpacked = unpack_q6_k(a);
        let dw = f16_to_f32(a.d);
        for (t, o) in out.iter_mut().enumerate() {
            let b = &y[t * nb + k];
            // All 8 lanes summed: an exact integer, whatever the order.
            let isum = hsum_epi32(q6_k_lanes(&unpacked, b));
            *o = _mm_cvtss_f32(_mm_fmadd_ss(
                _mm_set_ss(dw * isum as f32),
                _mm_set_ss(b.d),
                _mm_set_ss(*o),
            ));
        }
    }
}
