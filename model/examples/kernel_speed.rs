//! Micro-benchmark of the Q4_1·Q8_1 kernel in cache and streaming from memory (diagnostic).
use model::quant::{BlockQ4_1, BlockQ8_1};
use std::time::Instant;
fn main() {
    let cols = 576;
    let nb = cols / 32;
    for rows in [64usize, 200_000] {
        let w: Vec<BlockQ4_1> = (0..rows * nb)
            .map(|i| BlockQ4_1 {
                d: [0x00, 0x3c],
                m: [0, 0],
                qs: [(i % 251) as u8; 16],
            })
            .collect();
        let y: Vec<BlockQ8_1> = (0..nb)
            .map(|_| BlockQ8_1 {
                d: [0, 0x3c],
                s: [0, 0],
                qs: [3; 32],
            })
            .collect();
        let reps = if rows < 1000 { 20000 } else { 10 };
        let t = Instant::now();
        let mut acc = 0.0;
        for _ in 0..reps {
            for r in 0..rows {
                acc += model::simd::dot_q4_1_q8_1(&w[r * nb..(r + 1) * nb], &y);
            }
        }
        let el = t.elapsed().as_secs_f64();
        let blocks = (reps * rows * nb) as f64;
        println!(
            "rows {rows}: {:.2} ns/block, {:.2} GB/s ({acc})",
            el / blocks * 1e9,
            blocks * 20.0 / el / 1e9
        );
    }
}
