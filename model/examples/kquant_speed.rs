//! Micro-benchmark of the K-quant matrix kernels (diagnostic): Q4_K single-row dot products against the 8-row gemv
//! and the repacked gemm (32 tokens), and Q6_K single-row dots against the tiled kernel, in cache (64 rows) and
//! streaming from memory (40,000 rows). Times are wall clock, the best of several short runs (`timing`).
use model::quant::{BlockQ4K, BlockQ6K, BlockQ8K};
use model::simd;

mod timing;

use timing::best;

/// Tokens of the Q4_K gemm measurement (a prefill chunk of the appliance).
const GEMM_TOKENS: usize = 32;

/// Samples per measurement (the best is kept).
const SAMPLES: usize = 7;

/// Deterministic bytes.
fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as u8
        })
        .collect()
}

fn main() {
    let nb = 8; // 2048 columns, as Gemma 3's ffn_down
    for (rows, reps) in [(64usize, 4_000usize), (40_000, 3)] {
        let mut w4: Vec<BlockQ4K> = bytemuck::cast_slice(&bytes(rows * nb * 144, 1)).to_vec();
        let mut w6: Vec<BlockQ6K> = bytemuck::cast_slice(&bytes(rows * nb * 210, 2)).to_vec();
        for b in &mut w4 {
            b.d = [0x00, 0x1c];
            b.dmin = [0x00, 0x1c];
        }
        for b in &mut w6 {
            b.d = [0x00, 0x1c];
        }
        let mut y: Vec<BlockQ8K> = (0..GEMM_TOKENS * nb)
            .map(|_| BlockQ8K {
                d: 0.01,
                qs: [0; 256],
                bsums: [0; 16],
            })
            .collect();
        for (i, b) in y.iter_mut().enumerate() {
            for (j, q) in b.qs.iter_mut().enumerate() {
                *q = ((i * 7 + j * 13) % 255) as i8 / 2;
            }
            for g in 0..16 {
                b.bsums[g] = b.qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
            }
        }
        let mut out = vec![0.0f32; rows * 4];
        let blocks = (rows * nb) as f64;
        let dot1 = best(SAMPLES, reps, || {
            for r in 0..rows {
                out[r] = simd::dot_q4_k_q8_k(&w4[r * nb..(r + 1) * nb], &y[..nb]);
            }
        });
        let gemv = best(SAMPLES, reps, || {
            for g in 0..rows / 8 {
                let mut o = [0.0f32; 8];
                simd::mat_q4_k_gemv8(&w4[g * 8 * nb..(g + 1) * 8 * nb], nb, &y[..nb], &mut o);
                out[g * 8..g * 8 + 8].copy_from_slice(&o);
            }
        });
        let mut work = vec![0.0f32; simd::batch_work_len(nb * 256)];
        // All rows in one call, as a matrix product's chunk is (the AVX-512 VNNI kernel takes 16 rows at a time),
        // against GEMM_TOKENS tokens, so that unpacking the weights once per product is amortised as in a prefill.
        let mut o = vec![0.0f32; GEMM_TOKENS * rows];
        let mut gemm = || {
            best(SAMPLES, reps, || {
                simd::mat_q4_k_repacked(
                    &w4[..rows * nb],
                    nb,
                    &y,
                    GEMM_TOKENS,
                    GEMM_TOKENS,
                    &mut o,
                    rows,
                    &mut work,
                );
                out[0] = o[0];
            })
        };
        // The CPU's best set, then (on an AVX-512 CPU) the AVX2 kernel for comparison.
        let (gemm, gemm_avx2) = if simd::level() == simd::Level::Avx512 {
            let best_set = gemm();
            simd::force(Some(simd::Level::Avx2));
            let avx2 = gemm();
            simd::force(None);
            (best_set, Some(avx2))
        } else {
            (gemm(), None)
        };
        let mut dot6 = || {
            best(SAMPLES, reps, || {
                for r in 0..rows {
                    out[r] = simd::dot_q6_k_q8_k(&w6[r * nb..(r + 1) * nb], &y[..nb]);
                }
            })
        };
        // The CPU's best set, then (on an AVX-512 CPU) the AVX2 kernel for comparison.
        let (dot6, dot6_avx2) = if simd::level() == simd::Level::Avx512 {
            let best_set = dot6();
            simd::force(Some(simd::Level::Avx2));
            let avx2 = dot6();
            simd::force(None);
            (best_set, Some(avx2))
        } else {
            (dot6(), None)
        };
        let tiled6 = best(SAMPLES, reps, || {
            for r in 0..rows {
                simd::mat_q6_k_tiled(
                    &w6[r * nb..(r + 1) * nb],
                    nb,
                    &y[..4 * nb],
                    &mut out[4 * r..4 * r + 4],
                );
            }
        });
        println!(
            "rows {rows:6}: q4_K dot {:.2} ns/blk, gemv8 {:.2} ns/blk, gemm8x{GEMM_TOKENS} {:.2} ns/(blk·token){}; \
             q6_K dot {:.2} ns/blk ({:?}{}), tiled {:.2} ns/(blk·token)",
            dot1 / blocks * 1e9,
            gemv / blocks * 1e9,
            gemm / blocks / GEMM_TOKENS as f64 * 1e9,
            gemm_avx2.map_or(String::new(), |t| format!(" (AVX2 {:.2})", t / blocks / GEMM_TOKENS as f64 * 1e9)),
            dot6 / blocks * 1e9,
            simd::level(),
            dot6_avx2.map_or(String::new(), |t| format!("; AVX2 {:.2}", t / blocks * 1e9)),
            tiled6 / blocks / 4.0 * 1e9,
        );
    }
}
