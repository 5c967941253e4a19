//! Q4_0 · Q8_0 in the order of llama.cpp's repacked Q4_0 (`q4_0_8x8_q8_0`), the scalar twin of the AVX2 kernel in
//! `simd/avx2/q4_0_repacked.rs`.
//!
//! On a CPU with AVX2 (and in its AVX-512 build alike) llama.cpp moves every Q4_0 matrix whose row count is a
//! multiple of 8 into its repack buffer at load time (`ggml_repack_get_optimal_repack_type`, ggml-cpu/repack.cpp)
//! and multiplies it there with `ggml_gemv_q4_0_8x8_q8_0` (a product's last `tokens % 4` tokens) and
//! `ggml_gemm_q4_0_8x8_q8_0` (groups of 4 tokens), both in ggml-cpu/arch/x86/repack.cpp. Every one of their
//! variants (the AVX2 gemv, the AVX2 and AVX-512 gemm tiles) computes each output the same way: per 32-element
//! block the exact integer sum `isum = Σ (q - 8)·y` and one fused multiply-add
//! `acc = fma(isum, d·y.d, acc)`, blocks in order. Their activations are quantized as `quantize_row_q8_0` does
//! (`ggml_quantize_mat_q8_0_4x8` forms the same scale and rounding, only interleaved), so [`super::quantize_q8_0`]
//! serves both.

use super::{f16_to_f32, q4_values, BlockQ4_0, BlockQ8_0};

/// Q4_0 · Q8_0 as llama.cpp's repacked gemv and gemm compute one output (see the module documentation).
pub fn dot_q4_0_q8_0_repacked(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let isum: i32 = q4_values(&a.qs, 8)
            .iter()
            .zip(&b.qs)
            .map(|(&w, &q)| w * i32::from(q))
            .sum();
        acc = libm::fmaf(isum as f32, f16_to_f32(a.d) * f16_to_f32(b.d), acc);
    }
    acc
}
