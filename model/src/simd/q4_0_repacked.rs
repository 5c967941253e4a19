//! Dispatch of the Q4_0 product in llama.cpp's repacked order (`q4_0_8x8_q8_0`): the AVX2 kernel of
//! `avx2/q4_0_repacked.rs` at the AVX2 and AVX-512 levels (llama.cpp's AVX2 and AVX-512 builds both repack Q4_0
//! and sum each output alike), its twin [`quant::dot_q4_0_q8_0_repacked`] otherwise.

use super::avx2;
use crate::quant::{self, BlockQ4_0, BlockQ8_0};

/// Whether Q4_0 matrices of 8k rows are multiplied in llama.cpp's repacked order ([`mat_q4_0_repacked`]): at the
/// AVX2 and AVX-512 levels, as llama.cpp repacks them on any CPU with AVX2 (`ggml_repack_get_optimal_repack_type`).
/// The portable kernels keep `ggml_vec_dot_q4_0_q8_0`'s generic order: llama.cpp without AVX2 does not repack.
pub fn q4_0_repacks() -> bool {
    avx2()
}

dispatch!(
    /// `cols` tokens (`y[t * nb..]`) against Q4_0 rows of `nb` blocks (`w.len() / nb` of them, a multiple of 8) in
    /// llama.cpp's repacked order, `out[t * ld + r] = W[r] · y[t]` (each equal to
    /// [`quant::dot_q4_0_q8_0_repacked`]; its gemm and gemv orders coincide, so every token takes the same one).
    /// `work` holds [`super::batch_work_len`] f32s for the weights a batch unpacks (one token needs none).
    mat_q4_0_repacked(w: &[BlockQ4_0], nb: usize, y: &[BlockQ8_0], cols: usize, out: &mut [f32], ld: usize,
        work: &mut [f32]) -> (), scalar_q4_0_repacked);

fn scalar_q4_0_repacked(
    w: &[BlockQ4_0],
    nb: usize,
    y: &[BlockQ8_0],
    cols: usize,
    out: &mut [f32],
    ld: usize,
    _work: &mut [f32],
) {
    let rows = w.len().checked_div(nb).unwrap_or(0);
    for t in 0..cols {
        let yt = &y[t * nb..(t + 1) * nb];
        for r in 0..rows {
            out[t * ld + r] = quant::dot_q4_0_q8_0_repacked(&w[r * nb..(r + 1) * nb], yt);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use alloc::vec;
    use alloc::vec::Vec;

    use bytemuck::Zeroable;

    use super::*;
    use crate::simd::tests::{data, have_avx2};

    /// The AVX2 kernel (streamed for one token, unpacked for a batch, streamed again without a work buffer) equals
    /// the scalar twin bit for bit, and both stay within the Q8_0 activations' rounding of an f64 reference:
    /// |Δy_i| ≤ amax/254 of y_i's 32-block, so |Δ| ≤ Σ|w_i|·amax/254, plus 1e-5·Σ|w·y| for f32 rounding.
    #[test]
    fn repacked_q4_0_matches_scalar_bitwise_and_f64() {
        for (nb, rows, tokens) in [(18usize, 16usize, 1usize), (4, 24, 5), (48, 8, 4)] {
            let cols = nb * quant::QK;
            let x = data(cols * tokens, 31 + nb as u64);
            let mut q8 = vec![BlockQ8_0::zeroed(); nb * tokens];
            quant::quantize_q8_0(&x, &mut q8);
            // Random nibbles; small finite f16 scales, varied per block.
            let bits = data(rows * nb * 9, 37);
            let w: Vec<BlockQ4_0> = (0..rows * nb)
                .map(|i| {
                    let mut b = BlockQ4_0::zeroed();
                    b.d = quant::f32_to_f16(0.005 + 0.01 * (i % 7) as f32);
                    for (j, q) in b.qs.iter_mut().enumerate() {
                        *q = (bits[i * 9 + j % 9].to_bits() >> (3 * (j / 9))) as u8;
                    }
                    b
                })
                .collect();
            let mut scalar = vec![0.0f32; rows * tokens];
            scalar_q4_0_repacked(&w, nb, &q8, tokens, &mut scalar, rows, &mut []);
            if have_avx2() {
                for work in [vec![0.0f32; crate::simd::batch_work_len(cols)], Vec::new()] {
                    let mut got = vec![0.0f32; rows * tokens];
                    let mut work = work;
                    // SAFETY: AVX2, FMA and F16C were detected.
                    unsafe {
                        avx2::mat_q4_0_repacked(&w, nb, &q8, tokens, &mut got, rows, &mut work)
                    };
                    let as_bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        as_bits(&got),
                        as_bits(&scalar),
                        "{rows}x{cols}, {tokens} tokens, work {}",
                        work.len()
                    );
                }
            }
            let mut wf = vec![0.0f32; cols];
            for r in 0..rows {
                quant::dequantize(
                    quant::GgmlType::Q4_0,
                    bytemuck::cast_slice(&w[r * nb..(r + 1) * nb]),
                    &mut wf,
                )
                .unwrap();
                for t in 0..tokens {
                    let xs = &x[t * cols..(t + 1) * cols];
                    let exact: f64 = wf.iter().zip(xs).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let norm: f64 = wf
                        .iter()
                        .zip(xs)
                        .map(|(&a, &b)| (a as f64 * b as f64).abs())
                        .sum();
                    let quant_err: f64 = wf
                        .chunks_exact(quant::QK)
                        .zip(xs.chunks_exact(quant::QK))
                        .map(|(wb, xb)| {
                            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
                            wb.iter().map(|&a| (a as f64).abs()).sum::<f64>() * amax / 254.0
                        })
                        .sum();
                    let got = scalar[t * rows + r] as f64;
                    assert!(
                        (got - exact).abs() <= quant_err + 1e-5 * norm,
                        "row {r} token {t}: {got} vs f64 {exact}"
                    );
                }
            }
        }
    }
}
