//! Portable batched Q4_1 product with four tokens per integer multiply (SWAR: SIMD within a register), for CPUs
//! and emulators without AVX2. Bit-identical to the portable per-output dot products.
//!
//! Under QEMU's TCG, the appliance's development loop, scalar integer instructions translate to a few host
//! instructions each while most SSE instructions become out-of-line helpers, so 128-bit kernels measured slower
//! there than scalar code. Packing four tokens' activations into the 16-bit lanes of one `u64` instead makes each
//! multiply-add of a weight nibble serve four tokens (docs/ARCHITECTURE.md §6).
//!
//! Per block, `Σ w·y` is exact in both kernels: here each lane accumulates `w·(y + 128)` (≤ 15·255 per element,
//! sixteen elements per accumulator: ≤ 61,200 < 2^16, so no lane carries into the next) and `128·Σw` is taken off.
//! The f32 fold then runs the portable kernel's statement per token and block in the same order, so every output
//! equals [`crate::quant::dot_q4_1_q8_1_generic`] bit for bit.

use crate::quant::{self, f16_to_f32, BlockQ4_1, BlockQ8_1, QK};

use super::ActTile;

/// Tokens per multiply (16-bit lanes of a `u64`).
const TOKENS: usize = 4;

/// Blocks whose packed activations are kept at once (on the stack: 32 · 8 · 16 = 4 KiB).
const CHUNK: usize = 16;

/// `out[c * ld + r] = W[r] · y[c]` for the rows of `w` (`w.len() / nb` rows of `nb` blocks) and `cols` tokens of
/// `y.qs`, as the portable matrix product computes it: groups of four tokens go through the packed kernel, the
/// rest through [`quant::dot_q4_1_q8_1_generic`].
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
            out[c * ld + r] = quant::dot_q4_1_q8_1_generic(&w[r * nb..(r + 1) * nb], yc);
        }
    }
}

/// Four tokens (`y[t * nb..]`) against every row, into `out[(c0 + t) * ld + r]`. Blocks are taken `CHUNK` at a
/// time; each output's running sum waits in `out` between chunks, which leaves its f32 operations unchanged.
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
        for r in 0..rows {
            let mut sum = [0.0f32; TOKENS];
            if b0 > 0 {
                for (t, s) in sum.iter_mut().enumerate() {
                    *s = out[(c0 + t) * ld + r];
                }
            }
            for (k, a) in w[r * nb + b0..r * nb + b0 + n].iter().enumerate() {
                let isum = block_isums(a, &packed[k]);
                let (da, ma) = (f16_to_f32(a.d), f16_to_f32(a.m));
                for t in 0..TOKENS {
                    // The portable kernel's statement for this block and token.
                    sum[t] += isum[t] as f32 * (da * dy[k][t]) + ma * sy[k][t];
                }
            }
            for (t, s) in sum.iter().enumerate() {
                out[(c0 + t) * ld + r] = *s;
            }
        }
    }
}

/// The exact `Σ w·y` of one Q4_1 block against four tokens' packed activations (`packed[i]` holds `y + 128` of
/// element `i` for token `t` in bits `16t..16t + 16`).
#[inline]
fn block_isums(a: &BlockQ4_1, packed: &[u64; QK]) -> [i32; TOKENS] {
    let (mut lo, mut hi, mut wsum) = (0u64, 0u64, 0u64);
    for (half, bytes) in a.qs.chunks_exact(8).enumerate() {
        let q = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        for j in 0..8 {
            // Byte j of this half holds element 8·half + j (low nibble) and element 16 + 8·half + j (high nibble).
            let (x, z) = ((q >> (8 * j)) & 15, (q >> (8 * j + 4)) & 15);
            lo += x * packed[8 * half + j];
            hi += z * packed[16 + 8 * half + j];
            wsum += x + z;
        }
    }
    core::array::from_fn(|t| {
        ((lo >> (16 * t)) & 0xFFFF) as i32 + ((hi >> (16 * t)) & 0xFFFF) as i32 - 128 * wsum as i32
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
                    let want = quant::dot_q4_1_q8_1_generic(
                        &w[r * nb..(r + 1) * nb],
                        &y[c * nb..(c + 1) * nb],
                    );
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
