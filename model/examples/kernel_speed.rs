//! Micro-benchmark of the quantized matrix kernels (diagnostic): single-row dot products against the tiled
//! matrix kernels, in cache (64 rows) and streaming from memory (200,000 rows). Times are wall clock, the best of
//! several short runs (the run a busy machine disturbed least; `timing`). Then the
//! matrix kernels of the five 32-element formats at each kernel level the CPU has (AVX2, AVX-512), one token and
//! batches of 8 and 32, streaming.
use model::quant::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
use model::simd::{self, ActTile, Level};

mod timing;

use timing::best;

/// Samples per measurement (the best is kept).
const SAMPLES: usize = 5;

fn main() {
    by_level();
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

/// Random blocks of `bs` bytes with f16 1.0 as scale (and min).
fn blocks<W: bytemuck::Pod>(n: usize, bs: usize, seed: u32) -> Vec<W> {
    let mut b = bytes(n * bs, seed);
    for blk in b.chunks_exact_mut(bs) {
        blk[..2].copy_from_slice(&[0x00, 0x3c]);
    }
    bytemuck::cast_slice(&b).to_vec()
}

/// `mat_q4_0`, `mat_q4_1`, `mat_q5_0`, `mat_q5_1` and `mat_q8_0` (576 columns, 400,000 rows: 100-250 MB each,
/// streaming from memory past the L3 cache) at the AVX2 level and, where the CPU has it, the AVX-512 one: ns per row
/// and weight GB/s.
fn by_level() {
    let (cols, rows) = (576usize, 400_000usize);
    let nb = cols / 32;
    let w40: Vec<BlockQ4_0> = blocks(rows * nb, 18, 1);
    let w41: Vec<BlockQ4_1> = blocks(rows * nb, 20, 2);
    let w50: Vec<BlockQ5_0> = blocks(rows * nb, 22, 3);
    let w51: Vec<BlockQ5_1> = blocks(rows * nb, 24, 7);
    let w80: Vec<BlockQ8_0> = blocks(rows * nb, 34, 4);
    let mut levels = vec![Level::Avx2];
    simd::force(None);
    if simd::level() == Level::Avx512 {
        levels.push(Level::Avx512);
    }
    for batch in [1usize, 8, 32] {
        let y0: Vec<BlockQ8_0> = blocks(nb * batch, 34, 5);
        let y1: Vec<BlockQ8_1> = blocks(nb * batch, 36, 6);
        let d = vec![1.0f32; nb * batch];
        let t0 = ActTile {
            qs: &y0[..],
            d: &d,
            s: &d,
            batch,
            col0: 0,
        };
        let t1 = ActTile {
            qs: &y1[..],
            d: &d,
            s: &d,
            batch,
            col0: 0,
        };
        let mut work = vec![0.0f32; simd::batch_work_len(cols)];
        let mut out = vec![0.0f32; rows * batch];
        for &level in &levels {
            simd::force(Some(level));
            let mut line = format!("{level:?} batch {batch}:");
            let mut time = |name: &str, bytes: usize, f: &mut dyn FnMut(&mut [f32], &mut [f32])| {
                let el = best(SAMPLES, if batch == 1 { 30 } else { 40 / batch }, || {
                    f(&mut out, &mut work)
                });
                line += &format!(
                    " {name} {:.1} ns/row ({:.1} GB/s);",
                    el / rows as f64 * 1e9,
                    (rows * nb * bytes) as f64 / el / 1e9
                );
            };
            time("q4_0", 18, &mut |o, wk| {
                simd::mat_q4_0(&w40, nb, &t0, batch, o, rows, wk)
            });
            time("q4_1", 20, &mut |o, wk| {
                simd::mat_q4_1(&w41, nb, &t1, batch, o, rows, wk)
            });
            time("q5_0", 22, &mut |o, wk| {
                simd::mat_q5_0(&w50, nb, &t0, batch, o, rows, wk)
            });
            time("q5_1", 24, &mut |o, wk| {
                simd::mat_q5_1(&w51, nb, &t1, batch, o, rows, wk)
            });
            time("q8_0", 34, &mut |o, wk| {
                simd::mat_q8_0(&w80, nb, &t0, batch, o, rows, wk)
            });
            println!("{line}");
        }
    }
    simd::force(None);
}
