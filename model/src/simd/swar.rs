//! Portable batched Q4_1 product with four tokens per integer multiply (SWAR: SIMD within a register), for CPUs
//! and emulators without AVX2. Bit-identical to the portable per-output dot products.
//!
//! Under QEMU's TCG, the appliance's development loop, scalar integer instructions translate to a few host
//! instructions each while most SSE instructions become out-of-line helpers, so 128-bit kernels measured slower
//! there than scalar code. Packing four tokens' activations into the 16-bit lanes of one `u64` instead makes each
//! multiply-add of a weight nibble serve four tokens (docs/ARCHITECTURE.md §6).
//!
//! Per block, the portable kernel (as llama.cpp's AVX2 one) sums four elements at a time exactly, into eight lanes:
//! here each 16-bit field accumulates `w·(y + 128)` over one lane's four elements (≤ 4·15·255 = 15,300 < 2^16, so
//! no field carries into the next) and `128·Σw` is taken off. The f32 steps then run the portable kernel's
//! statements per token and block in the same order, so every output equals [`crate::quant::dot_q4_1_q8_1`] bit for
//! bit.

use crate::quant::{self, f16_to_f32, BlockQ4_1, BlockQ8_1, QK};

use super::ActTile;

/// Tokens per multiply (16-bit lanes of a `u64`).
const TOKENS: usize = 4;

/// Blocks whose packed activations are kept at once (on the stack: 32 · 8 · 16 = 4 KiB).
const CHUNK: usize = 16;

/// Rows whose f32 state is kept at once (on the stack: 16 · 4 · 9 · 4 = 2.3 KiB).
const ROWS: usize = 16;

/// `out[c * ld + r] = W[r] · y[c]` for the rows of `w` (`w.len() / nb` rows of `nb` blocks) and `cols` tokens of
/// `y.qs`, as the portable matrix product computes it: groups of four tokens go through the packed kernel, the
/// rest through [`quant::dot_q4_1_q8_1`].
pub fn mat_q4_1(
    w: &[BlockQ4_1],
    nb: usize,
    y: &ActTile<'_, BlockQ8_1>,
    cols: usize,
    out: &mut [f32],
    ld: usize,
) {
    let rows = w.len().checked_div(nb).unwrap_or(0);
    let grouped = cols - cols % TOKENS;
    for c0 in (0..grouped).step_by(TOKENS) {
        group(w, nb, rows, &y.qs[c0 * nb..(c0 + TOKENS) * nb], out, c0, ld);
    }
    for c in grouped..cols {
        let yc = &y.qs[c * nb..(c + 1) * nb];
        for r in 0..rows {
            out[c * ld + r] = quant::dot_q4_1_q8_1(&w[r * nb..(r + 1) * nb], yc);
        }
    }
}

/// Four tokens (`y[t * nb..]`) against every row, into `out[(c0 + t) * ld + r]`. Rows are taken [`ROWS`] at a
/// time with their f32 state (eight lanes and the `m·s` sum per token) on the stack, and for each group of rows
/// the blocks [`CHUNK`] at a time, packed once per group.
fn group(
    w: &[BlockQ4_1],
    nb: usize,
    rows: usize,
    y: &[BlockQ8_1],
    out: &mut [f32],
    c0: usize,
    ld: usize,
) {
    let mut packed = [[0u64; QK]; CHUNK];
    let mut dy = [[0.0f32; TOKENS]; CHUNK];
    let mut sy = [[0.0f32; TOKENS]; CHUNK];
    for r0 in (0..rows).step_by(ROWS) {
        let nr = ROWS.min(rows - r0);
        let mut lanes = [[[0.0f32; 8]; TOKENS]; ROWS];
        let mut summs = [[0.0f32; TOKENS]; ROWS];
        for b0 in (0..nb).step_by(CHUNK) {
            let n = CHUNK.min(nb - b0);
            for k in 0..n {
                for (i, p) in packed[k].iter_mut().enumerate() {
                    *p = (0..TOKENS).fold(0u64, |v, t| {
                        v | (((y[t * nb + b0 + k].qs[i] as i32 + 128) as u64) << (16 * t))
                    });
                }
                for t in 0..TOKENS {
                    let b = &y[t * nb + b0 + k];
                    dy[k][t] = f16_to_f32(b.d);
                    sy[k][t] = f16_to_f32(b.s);
                }
            }
            for (i, (lanes, summs)) in lanes.iter_mut().zip(&mut summs).take(nr).enumerate() {
                let r = r0 + i;
                for (k, a) in w[r * nb + b0..r * nb + b0 + n].iter().enumerate() {
                    let sums = block_lane_sums(a, &packed[k]);
                    let (da, ma) = (f16_to_f32(a.d), f16_to_f32(a.m));
                    for t in 0..TOKENS {
                        // The portable kernel's statements for this block and token.
                        summs[t] = libm::fmaf(ma, sy[k][t], summs[t]);
                        let d = da * dy[k][t];
                        for (lane, &sum) in lanes[t].iter_mut().zip(&sums[t]) {
                            *lane = libm::fmaf(d, sum as f32, *lane);
                        }
                    }
                }
            }
        }
        for i in 0..nr {
            for t in 0..TOKENS {
                out[(c0 + t) * ld + r0 + i] = quant::hsum8(&lanes[i][t]) + summs[i][t];
            }
        }
    }
}

/// The exact 4-element sums `Σ w·y` of one Q4_1 block's eight lanes (elements `4j..4j + 4`, as the portable and
/// AVX2 kernels group them) against four tokens' packed activations (`packed[i]` holds `y + 128` of element `i`
/// for token `t` in bits `16t..16t + 16`).
#[inline]
fn block_lane_sums(a: &BlockQ4_1, packed: &[u64; QK]) -> [[i32; 8]; TOKENS] {
    let mut acc = [0u64; 8];
    let mut wsum = [0u64; 8];
    for (byte_index, &byte) in a.qs.iter().enumerate() {
        // Byte b holds element b (low nibble, lane b / 4) and element 16 + b (high nibble, lane 4 + b / 4).
        let (x, z) = (u64::from(byte & 15), u64::from(byte >> 4));
        let lane = byte_index / 4;
        acc[lane] += x * packed[byte_index];
        acc[4 + lane] += z * packed[QK / 2 + byte_index];
        wsum[lane] += x;
        wsum[4 + lane] += z;
    }
    core::array::from_fn(|t| {
        core::array::from_fn(|j| ((acc[j] >> (16 * t)) & 0xFFFF) as i32 - 128 * wsum[j] as i32)
    })
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;

    /// Deterministic pseudo-random bytes.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 32) as u8
            })
            .collect()
    }

    #[test]
    fn packed_product_equals_portable_dots_bitwise() {
        // 37 blocks: two full chunks and a partial one.
        let (rows, nb) = (5usize, 37usize);
        let w: Vec<BlockQ4_1> = bytes(rows * nb * 20, 1)
            .chunks_exact(20)
            .enumerate()
            .map(|(i, c)| BlockQ4_1 {
                d: quant::f32_to_f16(0.001 + (i % 13) as f32 * 0.0007),
                m: quant::f32_to_f16(if i % 3 == 0 { -0.02 } else { 0.013 }),
                qs: c[4..].try_into().unwrap(),
            })
            .collect();
        for cols in [1usize, 4, 7, 9] {
            let x: Vec<f32> = bytes(cols * nb * 32, 2)
                .iter()
                .enumerate()
                .map(|(i, &b)| (b as f32 - 128.0) * if i % 97 == 0 { 0.5 } else { 0.01 })
                .collect();
            let mut y = alloc::vec![bytemuck::Zeroable::zeroed(); cols * nb];
            quant::quantize_q8_1(&x, &mut y);
            // Activations at the extremes of their range.
            y[0].qs = [-127; 32];
            let last = y.len() - 1;
            y[nb.min(last)].qs = [127; 32];
            let tile = ActTile {
                qs: &y,
                d: &[],
                s: &[],
                batch: cols,
                col0: 0,
            };
            let ld = rows + 3;
            let mut out = alloc::vec![f32::NAN; cols * ld];
            mat_q4_1(&w, nb, &tile, cols, &mut out, ld);
            for c in 0..cols {
                for r in 0..rows {
                    let want =
                        quant::dot_q4_1_q8_1(&w[r * nb..(r + 1) * nb], &y[c * nb..(c + 1) * nb]);
                    assert_eq!(
                        out[c * ld + r].to_bits(),
                        want.to_bits(),
                        "{cols} tokens: row {r}, token {c}"
                    );
                }
            }
        }
    }
}
