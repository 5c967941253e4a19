//! Element-wise functions: ggml's vector expf, the softmax exponentials, SwiGLU and the GELU-table GeGLU.

use super::*;

/// ggml's `ggml_v_expf` on 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn expf8(x: __m256) -> __m256 {
    let r = _mm256_set1_ps(f32::from_bits(0x4b40_0000));
    let z = _mm256_fmadd_ps(x, _mm256_set1_ps(f32::from_bits(0x3fb8_aa3b)), r);
    let n = _mm256_sub_ps(z, r);
    let b = _mm256_fnmadd_ps(
        n,
        _mm256_set1_ps(f32::from_bits(0x35bf_be8e)),
        _mm256_fnmadd_ps(n, _mm256_set1_ps(f32::from_bits(0x3f31_7200)), x),
    );
    let e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    let k = _mm256_castsi256_ps(_mm256_add_epi32(
        e,
        _mm256_castps_si256(_mm256_set1_ps(1.0)),
    ));
    let c = _mm256_cmp_ps(
        _mm256_andnot_ps(_mm256_set1_ps(-0.0), n),
        _mm256_set1_ps(126.0),
        _CMP_GT_OQ,
    );
    let u = _mm256_mul_ps(b, b);
    let set = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(set(0x3c07_2010), b, set(0x3d2b_9f17)),
            u,
            _mm256_fmadd_ps(set(0x3e2a_af33), b, set(0x3eff_fedb)),
        ),
        u,
        _mm256_mul_ps(set(0x3f7f_fff6), b),
    );
    if _mm256_movemask_ps(c) == 0 {
        return _mm256_fmadd_ps(j, k, k);
    }
    let d = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
        _mm256_set1_epi32(0x8200_0000u32 as i32),
    );
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(d, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, d));
    let g = _mm256_cmp_ps(
        _mm256_andnot_ps(_mm256_set1_ps(-0.0), n),
        _mm256_set1_ps(192.0),
        _CMP_GT_OQ,
    );
    _mm256_or_ps(
        _mm256_and_ps(g, _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(
            g,
            _mm256_or_ps(
                _mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)),
            ),
        ),
    )
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn softmax_exp(x: &mut [f32], max: f32) -> f64 {
    let mut sum = 0.0f64;
    let m = _mm256_set1_ps(max);
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` is exactly 8 floats.
        let v = expf8(_mm256_sub_ps(unsafe { _mm256_loadu_ps(c.as_ptr()) }, m));
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), v) };
        sum += hsum_ps(v) as f64;
    }
    for v in chunks.into_remainder() {
        *v = libm::expf(*v - max);
        sum += *v as f64;
    }
    sum
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
    let n8 = gate.len().min(up.len()) / 8 * 8;
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 ≤ n8 ≤ both lengths.
        let (x, u) = unsafe {
            (
                _mm256_loadu_ps(gate.as_ptr().add(i)),
                _mm256_loadu_ps(up.as_ptr().add(i)),
            )
        };
        let s = _mm256_div_ps(
            x,
            _mm256_add_ps(one, expf8(_mm256_sub_ps(_mm256_setzero_ps(), x))),
        );
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(gate.as_mut_ptr().add(i), _mm256_mul_ps(s, u)) };
        i += 8;
    }
    for (g, &u) in gate[n8..].iter_mut().zip(&up[n8..]) {
        let x = *g;
        *g = x / (1.0 + libm::expf(-x)) * u;
    }
}

/// `gate = gelu(gate) * up` through ggml's f16 GELU table (`table[f16 bits of x]`, 65,536 entries): 0 for
/// x ≤ -10, x·up for x ≥ 10, as [`crate::math::geglu_lookup`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn geglu_lookup(table: &[u16], gate: &mut [f32], up: &[f32]) {
    assert!(table.len() == 1 << 16);
    let n8 = gate.len().min(up.len()) / 8 * 8;
    let (lo, hi) = (_mm256_set1_ps(-10.0), _mm256_set1_ps(10.0));
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 ≤ n8 ≤ both lengths.
        let (x, u) = unsafe {
            (
                _mm256_loadu_ps(gate.as_ptr().add(i)),
                _mm256_loadu_ps(up.as_ptr().add(i)),
            )
        };
        // Round to nearest even, as the scalar f32 → f16 conversion.
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
        let mut idx = [0u16; 8];
        // SAFETY: writes exactly the 16 bytes of `idx`.
        unsafe { _mm_storeu_si128(idx.as_mut_ptr().cast(), h) };
        // SAFETY: a u16 index is below the table's 65,536 entries (asserted above).
        let g: [u16; 8] =
            core::array::from_fn(|j| unsafe { *table.get_unchecked(idx[j] as usize) });
        // SAFETY: reads exactly the 16 bytes of `g`.
        let gv = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(g.as_ptr().cast()) });
        let r = _mm256_blendv_ps(
            _mm256_mul_ps(gv, u),
            _mm256_mul_ps(x, u),
            _mm256_cmp_ps::<_CMP_GE_OQ>(x, hi),
        );
        let r = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(x, lo), r);
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(gate.as_mut_ptr().add(i), r) };
    }
    crate::math::geglu_lookup(table, &mut gate[n8..], &up[n8..]);
}
