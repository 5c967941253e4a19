//! The AVX-512 K-quant dot products of `simd/avx512_kquant.rs` against the AVX2 kernels and the scalar twins, bit
//! for bit; skipped on CPUs without AVX-512.

use alloc::vec;
use alloc::vec::Vec;

use super::tests::data;
use super::tests_avx512::have_avx512;
use super::tests_more_types::{q8k, random_blocks};
use super::{avx2, avx512_kquant};
use crate::quant::{self, BlockQ6K, GgmlType, QK_K};

/// Random Q6_K blocks (`random_blocks`: every byte of `ql`, `qh` and `scales` random, a small finite `d`), every
/// third with its first and last scale at -128 and 127.
fn q6k_blocks(nb: usize, seed: u64) -> Vec<BlockQ6K> {
    let bytes = random_blocks(GgmlType::Q6K, nb * QK_K, seed);
    let mut blocks: Vec<BlockQ6K> = bytemuck::cast_slice(&bytes).to_vec();
    for b in blocks.iter_mut().step_by(3) {
        b.scales[0] = -128;
        b.scales[15] = 127;
    }
    blocks
}

/// Q6_K at the AVX-512 level equals the AVX2 kernel and the scalar twin bit for bit, at 1 to 12 blocks, with
/// activations at the int8 extremes as well as ordinary ones.
#[test]
fn q6_k_dot_equals_avx2_and_twin_bitwise() {
    if !have_avx512() {
        return;
    }
    for nb in [1usize, 2, 3, 8, 12] {
        for seed in 0..8u64 {
            let w = q6k_blocks(nb, 300 + seed);
            let mut y = q8k(&data(nb * QK_K, 400 + seed));
            if seed % 2 == 1 {
                // Extremes: -128 and 127 in every other element of the first block, bsums recomputed.
                for (j, q) in y[0].qs.iter_mut().enumerate() {
                    *q = if j % 2 == 0 { -128 } else { 127 };
                }
                for g in 0..QK_K / 16 {
                    y[0].bsums[g] = y[0].qs[16 * g..16 * g + 16]
                        .iter()
                        .map(|&q| i16::from(q))
                        .sum();
                }
            }
            let twin = quant::dot_q6_k_q8_k(&w, &y);
            // SAFETY: AVX-512 F, DQ, BW, VL (and so AVX2, FMA, F16C) were detected.
            let (wide, narrow) = unsafe {
                (
                    avx512_kquant::dot_q6_k_q8_k(&w, &y),
                    avx2::dot_q6_k_q8_k(&w, &y),
                )
            };
            assert_eq!(
                wide.to_bits(),
                narrow.to_bits(),
                "nb {nb} seed {seed}: {wide} vs AVX2 {narrow}"
            );
            assert_eq!(
                wide.to_bits(),
                twin.to_bits(),
                "nb {nb} seed {seed}: {wide} vs twin {twin}"
            );
        }
    }
}

/// The tiled Q6_K batch at the AVX-512 level equals the AVX2 kernel and the scalar twin bit for bit, for 1 to 9
/// tokens against rows of 1 to 8 blocks.
#[test]
fn q6_k_tiled_equals_avx2_and_twin_bitwise() {
    if !have_avx512() {
        return;
    }
    for nb in [1usize, 3, 8] {
        for tokens in [1usize, 2, 5, 9] {
            let w = q6k_blocks(nb, 500 + (nb * tokens) as u64);
            let y = q8k(&data(tokens * nb * QK_K, 600 + tokens as u64));
            let (mut wide, mut narrow) = (vec![0.0f32; tokens], vec![0.0f32; tokens]);
            // SAFETY: AVX-512 F, DQ, BW, VL (and so AVX2, FMA, F16C) were detected.
            unsafe {
                avx512_kquant::mat_q6_k_tiled(&w, nb, &y, &mut wide);
                avx2::mat_q6_k_tiled(&w, nb, &y, &mut narrow);
            }
            for t in 0..tokens {
                let twin = quant::dot_q6_k_q8_k_tiled(&w, &y[t * nb..(t + 1) * nb]);
                assert_eq!(
                    wide[t].to_bits(),
                    narrow[t].to_bits(),
                    "nb {nb} token {t}/{tokens}"
                );
                assert_eq!(
                    wide[t].to_bits(),
                    twin.to_bits(),
                    "nb {nb} token {t}/{tokens}"
                );
            }
        }
    }
}
