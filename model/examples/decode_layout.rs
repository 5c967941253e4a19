//! The interleaved layout against the file's (diagnostic, issue 15; README "Engine speed"): random Q4_1 and Q5_0
//! matrices multiplied by `simd::mat_q4_1` / `mat_q5_0` in the file's layout and by `mat_q4_1_interleaved` /
//! `mat_q5_0_interleaved` after `quant::interleaved::pack_group`, one token and a batch of 32, the weights in cache
//! (256 rows) and streaming from memory (300,000 rows). Checks the outputs bit for bit, then prints ns per block and
//! weight GB/s, wall clock, best of 5, on the calling thread (`taskset -c 1` on a quiet core gives steady figures).
//! With the AVX-512 VNNI kernels the one-token products read the slabs; elsewhere they take the file layout's
//! kernels group by group (slower; the host does not interleave there).
//!
//! `cargo run --release -p model --features std --example decode_layout`. Exits 1 if an output differs.

use std::time::Instant;

use model::quant::interleaved::{pack_group, Interleave, GROUP};
use model::quant::{BlockQ4_1, BlockQ5_0, BlockQ8_0, BlockQ8_1};
use model::simd::{self, ActTile};

/// Columns of the test matrices: 640, Gemma 3 270M's width (SmolLM2's is 576).
const BLOCKS: usize = 20;

/// A product with `simd::mat_q4_1`'s arguments.
type FileMat<W, A> = fn(&[W], usize, &ActTile<'_, A>, usize, &mut [f32], usize, &mut [f32]);
/// A product with `simd::mat_q4_1_interleaved`'s arguments.
type SlabMat<A> = fn(&[u8], usize, usize, &ActTile<'_, A>, usize, &mut [f32], usize, &mut [f32]);

/// Deterministic pseudo-random bytes (xorshift).
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

/// `n` random blocks of `size` bytes whose leading f16 (the scale) is finite and varies.
fn blocks<B: bytemuck::Pod>(n: usize, size: usize, seed: u32) -> Vec<B> {
    let mut b = bytes(n * size, seed);
    for (i, block) in b.chunks_exact_mut(size).enumerate() {
        block[..2].copy_from_slice(&[(i * 7) as u8, 0x2c + (i % 16) as u8]);
    }
    bytemuck::cast_slice(&b).to_vec()
}

/// Best wall-clock seconds per call over 5 samples of `reps` calls.
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::MAX, f64::min)
}

/// Checks and times one format; `false` if an output differs.
fn compare<W: Interleave, A: bytemuck::Pod>(
    name: &str,
    act_bytes: usize,
    file: FileMat<W, A>,
    slabs: SlabMat<A>,
) -> bool {
    let nb = BLOCKS;
    let mut equal = true;
    for batch in [1usize, 32] {
        let y: Vec<A> = blocks(nb * batch, act_bytes, 5);
        let d: Vec<f32> = (0..nb * batch)
            .map(|k| 0.01 + (k % 13) as f32 * 0.003)
            .collect();
        let s: Vec<f32> = (0..nb * batch)
            .map(|k| 0.5 - (k % 11) as f32 * 0.07)
            .collect();
        let tile = ActTile {
            qs: &y[..],
            d: &d,
            s: &s,
            batch,
            col0: 0,
        };
        let mut work = vec![0.0f32; simd::batch_work_len(nb * 32)];
        let sizes: &[(usize, usize)] = if batch == 1 {
            &[(256, 20_000), (300_000, 5)]
        } else {
            &[(256, 1_000), (20_000, 3)]
        };
        for &(rows, reps) in sizes {
            let w: Vec<W> = blocks(rows * nb, W::BYTES, 3);
            let mut x4: Vec<u8> = bytemuck::cast_slice(&w).to_vec();
            let mut scratch = vec![0u8; GROUP * nb * W::BYTES];
            for group in x4.chunks_exact_mut(GROUP * nb * W::BYTES) {
                pack_group::<W>(group, nb, &mut scratch);
            }
            let (mut a, mut b) = (vec![0.0f32; rows * batch], vec![0.0f32; rows * batch]);
            file(&w, nb, &tile, batch, &mut a, rows, &mut work);
            slabs(&x4, rows, nb, &tile, batch, &mut b, rows, &mut work);
            let same = a
                .iter()
                .zip(&b)
                .filter(|(x, y)| x.to_bits() == y.to_bits())
                .count();
            equal &= same == a.len();
            let t_file = best(reps, || file(&w, nb, &tile, batch, &mut a, rows, &mut work));
            let t_slabs = best(reps, || {
                slabs(&x4, rows, nb, &tile, batch, &mut b, rows, &mut work)
            });
            let n = (rows * nb) as f64;
            let gbs = |t: f64| n * W::BYTES as f64 / t / 1e9;
            println!(
                "{name} batch {batch:>2} {rows:>7} rows: bit-equal {same}/{}; file layout {:.3} ns/block ({:.1} GB/s), \
                 interleaved {:.3} ns/block ({:.1} GB/s), {:.2}x",
                a.len(),
                t_file / n * 1e9,
                gbs(t_file),
                t_slabs / n * 1e9,
                gbs(t_slabs),
                t_file / t_slabs
            );
        }
    }
    equal
}

fn main() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("model name"))?;
            Some(line.split(':').nth(1)?.trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "CPU: {cpu}; kernels {:?}, interleaved kernels: {}; one thread, {BLOCKS} blocks per row",
        simd::level(),
        simd::interleaved_kernels()
    );
    let mut equal =
        compare::<BlockQ4_1, BlockQ8_1>("q4_1", 36, simd::mat_q4_1, simd::mat_q4_1_interleaved);
    equal &=
        compare::<BlockQ5_0, BlockQ8_0>("q5_0", 34, simd::mat_q5_0, simd::mat_q5_0_interleaved);
    if !equal {
        eprintln!("decode_layout: the interleaved products differ from the file layout's");
        std::process::exit(1);
    }
}
