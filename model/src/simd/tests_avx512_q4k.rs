//! The AVX-512 VNNI Q4_K repacked product of `simd/avx512_q4k.rs` against the AVX2 kernel, bit for bit; skipped
//! on CPUs without AVX-512 VNNI.

use alloc::vec;
use alloc::vec::Vec;

use super::tests::data;
use super::tests_more_types::{q8k, random_blocks};
use super::{avx2, avx512_q4k, avx512_quant};
use crate::quant::{BlockQ4K, GgmlType, QK_K};

/// Every shape class the 16-row kernel meets: row counts of one, two, three and five groups of 8 (pairs and a last
/// group), 1 to 8 blocks per row, token counts with and without a gemm part and a gemv remainder, weights with
/// their 6-bit scales and mins at 63, activations with ordinary and int8-extreme values.
#[test]
fn q4_k_repacked_equals_avx2_bitwise() {
    if !(super::detect_avx2() && super::detect_avx512() && avx512_quant::vnni()) {
        std::println!("skipped: this CPU lacks AVX-512 F/DQ/BW/VL or VNNI");
        return;
    }
    for (rows, nb) in [(8usize, 1usize), (16, 3), (24, 2), (40, 8)] {
        let bytes = random_blocks(
            GgmlType::Q4K,
            rows * nb * QK_K,
            rows as u64 * 31 + nb as u64,
        );
        let mut w: Vec<BlockQ4K> = bytemuck::cast_slice(&bytes).to_vec();
        for b in w.iter_mut().step_by(5) {
            b.scales = [0xFF; 12];
        }
        for cols in [1usize, 4, 5, 8, 11] {
            let mut x = data(cols * nb * QK_K, cols as u64 + 7);
            if cols == 5 {
                // Blocks whose largest element quantizes to ±127 throughout.
                for (i, v) in x.iter_mut().enumerate() {
                    *v = if i % 3 == 0 { -1.0 } else { 1.0 };
                }
            }
            let y = q8k(&x);
            for gemm in [cols - cols % 4, 0] {
                let work_len = super::batch_work_len(nb * QK_K);
                let (mut a, mut b) = (vec![0.0f32; cols * rows], vec![1.0f32; cols * rows]);
                // SAFETY: AVX-512 F/DQ/BW/VL and VNNI, AVX2, FMA and F16C were detected above.
                unsafe {
                    avx2::mat_q4_k_repacked(
                        &w,
                        nb,
                        &y,
                        cols,
                        gemm,
                        &mut a,
                        rows,
                        &mut vec![0.0; work_len],
                    );
                    avx512_q4k::mat_q4_k_repacked(
                        &w,
                        nb,
                        &y,
                        cols,
                        gemm,
                        &mut b,
                        rows,
                        &mut vec![0.0; work_len],
                    );
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&a),
                    bits(&b),
                    "rows {rows}, nb {nb}, cols {cols}, gemm {gemm}"
                );
            }
        }
    }
}
