//! Micro-benchmark of the quantized matrix kernels (diagnostic): single-row dot products against the tiled
//! matrix kernels, in cache (64 rows) and streaming from memory (200,000 rows). Times are this thread's CPU time
//! (`/proc/thread-self/schedstat`), best of several short runs, so that a busy machine disturbs them less.
use model::quant::{BlockQ4_1, BlockQ8_0, BlockQ8_1};
use model::simd::{self, ActTile};

mod timing;

use timing::best;

/// Samples per measurement (the best is kept).
const SAMPLES: usize = 5;

fn main() {
    let cols = 576;
    let nb = cols / 32;
    for (rows, reps) in [(64usize, 20_000usize), (200_000, 3)] {
        let w: Vec<BlockQ4_1> = (0..rows * nb)
            .map(|i| BlockQ4_1 {
                d: [0x00, 0x3c],
                m: [0, 0],
                qs: [(i % 251) as u8; 16],
            })
            .collect();
        let w8: Vec<BlockQ8_0> = (0..rows * nb)
            .map(|i| BlockQ8_0 {
                d: [0x00, 0x3c],
                qs: [(i % 251) as i8; 32],
            })
            .collect();
        for batch in [1usize, 8] {
            let y: Vec<BlockQ8_1> = (0..nb * batch)
                .map(|_| BlockQ8_1 {
                    d: [0, 0x3c],
                    s: [0, 0],
                    qs: [3; 32],
                })
                .collect();
            let y0: Vec<BlockQ8_0> = (0..nb * batch)
                .map(|_| BlockQ8_0 {
                    d: [0, 0x3c],
                    qs: [3; 32],
                })
                .collect();
            let d = vec![1.0f32; nb * batch];
            let mut work = vec![0.0f32; simd::batch_work_len(nb * 32)];
            let mut out = vec![0.0f32; rows * batch];
            let blocks = (rows * nb * batch) as f64;
            let el = best(SAMPLES, reps, || {
                for r in 0..rows {
                    for t in 0..batch {
                        out[r * batch + t] =
                            simd::dot_q4_1_q8_1(&w[r * nb..(r + 1) * nb], &y[t * nb..(t + 1) * nb]);
                    }
                }
            });
            let tile = ActTile {
                qs: &y[..],
                d: &d,
                s: &d,
                batch,
                col0: 0,
            };
            let el2 = best(SAMPLES, reps, || {
                simd::mat_q4_1(&w, nb, &tile, batch, &mut out, rows, &mut work)
            });
            let tile0 = ActTile {
                qs: &y0[..],
                d: &d,
                s: &d,
                batch,
                col0: 0,
            };
            let el3 = best(SAMPLES, reps, || {
                for r in 0..rows {
                    for t in 0..batch {
                        out[r * batch + t] = simd::dot_q8_0_q8_0(
                            &w8[r * nb..(r + 1) * nb],
                            &y0[t * nb..(t + 1) * nb],
                        );
                    }
                }
            });
            let el4 = best(SAMPLES, reps, || {
                simd::mat_q8_0(&w8, nb, &tile0, batch, &mut out, rows, &mut work)
            });
            println!(
                "rows {rows:6} batch {batch}: q4_1 dot {:.2} ns/blk, tile {:.2} ns/blk ({:.1} GB/s); \
                 q8_0 dot {:.2}, tile {:.2} ns/blk ({:.1} GB/s)",
                el / blocks * 1e9,
                el2 / blocks * 1e9,
                (rows * nb * 20) as f64 / el2 / 1e9,
                el3 / blocks * 1e9,
                el4 / blocks * 1e9,
                (rows * nb * 34) as f64 / el4 / 1e9,
            );
        }
    }
}
