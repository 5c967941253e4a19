//! Activation quantizers: f32 rows into Q8_0 and Q8_1 blocks, and into f16 (attention's query and probabilities).

use super::*;

/// Rounds 32 floats times `id` to i32 (nearest, ties to even) and returns them with the block's absolute maximum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn block_amax(xs: &[f32]) -> (f32, [__m256; 4]) {
    let sign = _mm256_set1_ps(-0.0);
    let v = [
        load_ps(xs[0..8].try_into().unwrap_or(&[0.0; 8])),
        load_ps(xs[8..16].try_into().unwrap_or(&[0.0; 8])),
        load_ps(xs[16..24].try_into().unwrap_or(&[0.0; 8])),
        load_ps(xs[24..32].try_into().unwrap_or(&[0.0; 8])),
    ];
    let mut m = _mm256_andnot_ps(sign, v[0]);
    for vi in &v[1..] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
    }
    let h = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_max_ss(h, _mm_movehdup_ps(h));
    (_mm_cvtss_f32(h), v)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_block(v: &[__m256; 4], id: f32, qs: &mut [i8; QK]) -> i32 {
    let mul = _mm256_set1_ps(id);
    let mut sum = _mm256_setzero_si256();
    let mut tmp = [0i32; 8];
    for (k, vk) in v.iter().enumerate() {
        let r = _mm256_cvtps_epi32(_mm256_round_ps(
            _mm256_mul_ps(*vk, mul),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        ));
        sum = _mm256_add_epi32(sum, r);
        // SAFETY: `tmp` holds exactly 8 i32 = 32 bytes.
        unsafe { _mm256_storeu_si256(tmp.as_mut_ptr().cast(), r) };
        for (q, &t) in qs[8 * k..8 * k + 8].iter_mut().zip(&tmp) {
            *q = t as i8;
        }
    }
    hsum_epi32(sum)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let (amax, v) = block_amax(xs);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        b.d = crate::quant::f32_to_f16(d);
        round_block(&v, id, &mut b.qs);
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let (amax, v) = block_amax(xs);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        b.d = crate::quant::f32_to_f16(d);
        let sum = round_block(&v, id, &mut b.qs);
        b.s = crate::quant::f32_to_f16(d * sum as f32);
    }
}

/// `out[i] = f16(x[i] · scale)` (`out.len() == x.len()`), each product an f32 multiply rounded to f16 to nearest,
/// ties to even, by F16C's `vcvtps2ph`: the IEEE conversion the scalar twin ([`crate::quant::scale_to_f16`])
/// computes in software, so the bits are the same.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scale_to_f16(x: &[f32], scale: f32, out: &mut [u16]) {
    assert_eq!(x.len(), out.len());
    let s = _mm256_set1_ps(scale);
    let mut xs = x.chunks_exact(8);
    let mut os = out.chunks_exact_mut(8);
    for (x8, o8) in (&mut xs).zip(&mut os) {
        let v = _mm256_mul_ps(load_ps(x8.try_into().unwrap_or(&[0.0; 8])), s);
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
        // SAFETY: writes exactly the 8 u16 of `o8`.
        unsafe { _mm_storeu_si128(o8.as_mut_ptr().cast(), h) };
    }
    crate::quant::scale_to_f16(xs.remainder(), scale, os.into_remainder());
}
