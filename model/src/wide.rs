//! Scalar models of the orders llama.cpp's AVX-512 build computes in: 16-lane f16 dot products (tinyBLAS's chain
//! and `ggml_vec_dot_f16`), the AVX-512 `ggml_v_expf`, and the softmax sum and SwiGLU built on it.
//!
//! These are the scalar twins of `simd::avx512`, which must equal them bit for bit (docs/ARCHITECTURE.md §6). Built
//! with `-march=native` on a CPU with AVX-512 F/DQ, llama.cpp (0.3.36's ggml-cpu) takes these forms instead of its
//! AVX2 ones, so the engine mirrors whichever set the CPU at hand would make llama.cpp use:
//! - `ggml-cpu/llamafile/sgemm.cpp`: `tinyBLAS<16, __m512, ...>` for f16 × f16 products of 2 or more columns (a
//!   batch's KQ and KQV), one 16-lane FMA chain per output reduced by `_mm512_reduce_add_ps`;
//! - `ggml-cpu/vec.cpp` `ggml_vec_dot_f16` with `GGML_F16_STEP` 64 / `GGML_F16_EPR` 16 (`simd-mappings.h`, the
//!   `__AVX512F__` branch) for one column (a decode step's KQ and KQV);
//! - `ggml-cpu/vec.h` `ggml_v_expf(__m512)` (scales by `_mm512_scalef_ps` instead of building 2^n), used by
//!   `ggml_vec_soft_max_f32` (sums of 16 lanes) and `ggml_vec_swiglu_f32` (16 lanes).
//!
//! The horizontal sum is GCC's `_mm512_reduce_add_ps` (what the pinned build was compiled with): the two 256-bit
//! halves added, then the 128-bit halves, then lanes {0,1} + {2,3}, then lane 0 + lane 1.

use crate::quant;

mod more_types;
pub use more_types::*;

fn f16(v: u16) -> f32 {
    half::f16::from_bits(v).to_f32()
}

/// `_mm512_reduce_add_ps` as GCC expands it.
pub fn hsum16(l: &[f32; 16]) -> f32 {
    let t: [f32; 8] = core::array::from_fn(|i| l[i + 8] + l[i]);
    let u: [f32; 4] = core::array::from_fn(|i| t[i + 4] + t[i]);
    let v = [u[0] + u[2], u[1] + u[3]];
    v[0] + v[1]
}

/// f16 dot product as tinyBLAS computes it with 16 lanes: one FMA chain over chunks of 16, then [`hsum16`].
/// `x.len()` must be a multiple of 16.
pub fn dot_f16_chain16(x: &[u16], y: &[u16]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (a, b) in x.chunks_exact(16).zip(y.chunks_exact(16)) {
        for ((lane, &p), &q) in acc.iter_mut().zip(a).zip(b) {
            *lane = quant::fma_f16(p, q, *lane);
        }
    }
    hsum16(&acc)
}

/// f16 dot product as AVX-512 `ggml_vec_dot_f16` computes it: four 16-lane FMA chains over steps of 64, added
/// (0 + 2) + (1 + 3), then [`hsum16`], plus an f64 tail for the last `len % 64` elements.
pub fn dot_f16_ggml16(x: &[u16], y: &[u16]) -> f32 {
    let n = x.len().min(y.len());
    let np = n / 64 * 64;
    let mut acc = [[0.0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, lane) in a.iter_mut().enumerate() {
                let k = i + 16 * j + l;
                *lane = quant::fma_f16(x[k], y[k], *lane);
            }
        }
    }
    let s: [f32; 16] = core::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
    let mut sum = hsum16(&s) as f64;
    for i in np..n {
        sum += (f16(x[i]) * f16(y[i])) as f64;
    }
    sum as f32
}

/// ggml's AVX-512 `ggml_v_expf`, one lane: the same polynomial as [`crate::quant::expf_ggml`] but with 1 folded into its last
/// FMA and the result scaled by 2^n as `_mm512_scalef_ps` does (one rounding, gradual underflow); `|n| > 192` gives
/// 0 or +∞.
pub fn expf_ggml16(x: f32) -> f32 {
    let fma = crate::fma::fmaf;
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = fma(x, f32::from_bits(0x3fb8_aa3b), r); // log2(e)
    let n = z - r;
    let b = fma(
        -n,
        f32::from_bits(0x35bf_be8e),
        fma(-n, f32::from_bits(0x3f31_7200), x),
    ); // ln2 lo, hi
    let u = b * b;
    let c0 = f32::from_bits(0x3c07_2010); // 0x1.0e4020p-7
    let c1 = f32::from_bits(0x3d2b_9f17); // 0x1.573e2ep-5
    let c2 = f32::from_bits(0x3e2a_af33); // 0x1.555e66p-3
    let c3 = f32::from_bits(0x3eff_fedb); // 0x1.fffdb6p-2
    let c4 = f32::from_bits(0x3f7f_fff6); // 0x1.ffffecp-1
    let j = fma(fma(fma(c0, b, c1), u, fma(c2, b, c3)), u, fma(c4, b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // j · 2^n is exact in f64 (n is an integer in [-192, 192]), so the one rounding is the conversion to f32,
    // subnormal and overflowing results included, as `vscalefps` rounds.
    let scale = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    (j as f64 * scale) as f32
}

/// Softmax numerator as AVX-512 `ggml_vec_soft_max_f32`: `x[i] = expf(x[i] - max)` by [`expf_ggml16`] in blocks of
/// 16, each block's [`hsum16`] added to an f64 sum; the tail by `expf`. Returns the sum.
pub fn softmax_exp16(x: &mut [f32], max: f32) -> f64 {
    quant::softmax_exp_lanes::<16>(x, max, expf_ggml16, hsum16)
}

/// `gate[i] = silu(gate[i]) * up[i]` as AVX-512 `ggml_vec_swiglu_f32`: `x / (1 + v_expf(-x))` by [`expf_ggml16`]
/// in blocks of 16, the tail by `expf`.
pub fn swiglu16(gate: &mut [f32], up: &[f32]) {
    quant::swiglu_lanes::<16>(gate, up, expf_ggml16);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 form of ggml's expf stays as close to libm's as the AVX2 form does, and agrees with it except
    /// for the last bit or so.
    #[test]
    fn expf16_is_close_to_libm_and_the_avx2_form() {
        for i in 0..40_000 {
            let v = (i as f32 - 20_000.0) * 0.004;
            let (e, r, a) = (expf_ggml16(v), libm::expf(v), crate::quant::expf_ggml(v));
            let tol = 4.0 * f32::EPSILON * r.abs() + f32::MIN_POSITIVE;
            assert!((e - r).abs() <= tol, "{v}: {e} vs libm {r}");
            assert!((e - a).abs() <= tol, "{v}: {e} vs avx2 form {a}");
        }
        assert_eq!(expf_ggml16(-200.0), 0.0);
        assert_eq!(expf_ggml16(200.0), f32::INFINITY);
        assert_eq!(expf_ggml16(f32::NEG_INFINITY), 0.0);
    }

    /// The 16-lane dot products stay within rounding of an f64 reference.
    #[test]
    fn f16_dots16_are_close_to_f64() {
        let xs: alloc::vec::Vec<u16> = (0..200)
            .map(|i| half::f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 25.0).to_bits())
            .collect();
        let ys: alloc::vec::Vec<u16> = (0..200)
            .map(|i| half::f16::from_f32(((i * 53 % 89) as f32 - 44.0) / 30.0).to_bits())
            .collect();
        let exact: f64 = xs
            .iter()
            .zip(&ys)
            .map(|(&a, &b)| f16(a) as f64 * f16(b) as f64)
            .sum();
        let chain = dot_f16_chain16(&xs[..192], &ys[..192]);
        let exact192: f64 = xs[..192]
            .iter()
            .zip(&ys[..192])
            .map(|(&a, &b)| f16(a) as f64 * f16(b) as f64)
            .sum();
        assert!((chain as f64 - exact192).abs() < 1e-4);
        assert!((dot_f16_ggml16(&xs, &ys) as f64 - exact).abs() < 1e-4);
    }
}
