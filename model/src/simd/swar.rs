//! Portable Q4_1 products with four tokens (a batch) or four elements (one token) per integer multiply (SWAR: SIMD
//! within a register), for CPUs and emulators without AVX2. Bit-identical to the portable per-output dot products.
//!
//! Under QEMU's TCG, the appliance's development loop, scalar integer instructions translate to a few host
//! instructions each while most SSE instructions become out-of-line helpers, so 128-bit kernels measured slower
//! there than scalar code. Packing four tokens' activations into the 16-bit lanes of one `u64` instead makes each
//! multiply-add of a weight nibble serve four tokens (docs/ARCHITECTURE.md §6); for one token (a decode step),
//! four weights times four activations in reversed lanes give four elements' sum in the top lane ([`block_isum`]).
//! Measured under `qemu-x86_64` (`model/examples/tcg_speed.rs kernels`): 93 -> 57 ns per block for one token.
//!
//! Per block, `Σ w·y` is exact in both kernels: here each lane accumulates `w·(y + 128)` (≤ 15·255 per element,
//! sixteen elements per accumulator: ≤ 61,200 < 2^16, so no lane carries into the next) and `128·Σw` is taken off.
//! The f32 fold then runs the portable kernel's statement per token and block in the same order, so every output
//! equals [`crate::quant::dot_q4_1_q8_1_generic`] bit for bit.

use crate::quant::{f16_to_f32, BlockQ4_1, BlockQ8_1, QK};

use super::ActTile;

/// Tokens per multiply (16-bit lanes of a `u64`).
const TOKENS: usize = 4;

/// Blocks whose packed activations are kept at once (on the stack: 32 · 8 · 16 = 4 KiB).
const CHUNK: usize = 16;

/// `out[c * ld + r] = W[r] · y[c]` for the rows of `w` (`w.len() / nb` rows of `nb` blocks) and `cols` tokens of
/// `y.qs`, as the portable matrix product computes it: groups of four tokens go through the packed kernel, the
/// rest one token at a time with four elements per multiply.
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
        one_token(w, nb, rows, &y.qs[c * nb..(c + 1) * nb], out, c, ld);
    }
}

/// One token (`y`, `nb` blocks) against every row, into `out[c * ld + r]`: a decode step's product. Each 64-bit
/// multiply sums four elements of one row (see [`block_isum`]); blocks are taken `CHUNK` at a time as in [`group`].
fn one_token(
    w: &[BlockQ4_1],
    nb: usize,
    rows: usize,
    y: &[BlockQ8_1],
    out: &mut [f32],
    c: usize,
    ld: usize,
) {
    let mut packed = [[0u64; QK / 4]; CHUNK];
    let mut dy = [0.0f32; CHUNK];
    let mut sy = [0.0f32; CHUNK];
    for b0 in (0..nb).step_by(CHUNK) {
        let n = CHUNK.min(nb - b0);
        for k in 0..n {
            let b = &y[b0 + k];
            packed[k] = reversed_quads(&b.qs);
            dy[k] = f16_to_f32(b.d);
            sy[k] = f16_to_f32(b.s);
        }
        for r in 0..rows {
            let mut sum = if b0 > 0 { out[c * ld + r] } else { 0.0 };
            for (k, a) in w[r * nb + b0..r * nb + b0 + n].iter().enumerate() {
                let isum = block_isum(a, &packed[k]);
                // The portable kernel's statement for this block.
                sum += isum as f32 * (f16_to_f32(a.d) * dy[k]) + f16_to_f32(a.m) * sy[k];
            }
            out[c * ld + r] = sum;
        }
    }
}

/// One block's activations for [`block_isum`]: word `q` (0-3: elements `4q..4q + 4`; 4-7: elements
/// `16 + 4(q - 4)..`) holds `y + 128` of its four elements in reversed 16-bit lanes (the first in bits 48-63).
fn reversed_quads(qs: &[i8; QK]) -> [u64; QK / 4] {
    core::array::from_fn(|q| {
        let first = if q < 4 { 4 * q } else { QK / 2 + 4 * (q - 4) };
        (0..4).fold(0u64, |v, k| {
            v | (((qs[first + k] as i32 + 128) as u64) << (16 * (3 - k)))
        })
    })
}

/// The exact `Σ w·y` of one Q4_1 block against one token's [`reversed_quads`].
///
/// Four weights `w0..w3` in 16-bit lanes times four activations in reversed lanes is a polynomial product whose
/// lane-3 coefficient (bits 48-63 of the wrapping 64-bit product) is `Σ wk·(yk + 128)`. No lane carries into the
/// next, even with four products summed before lane 3 is read: a lane-c coefficient adds at most `c + 1` terms of
/// at most 15 · 255, so four products' lanes stay at or below 4 · 4 · 3,825 = 61,200 < 2^16.
#[inline]
fn block_isum(a: &BlockQ4_1, packed: &[u64; QK / 4]) -> i32 {
    const NIBBLES: u64 = 0x000F_000F_000F_000F;
    let (mut lo, mut hi, mut wsum) = (0u64, 0u64, 0u64);
    for (q, bytes) in a.qs.chunks_exact(4).enumerate() {
        // Bytes 4q..4q + 4 hold elements 4q.. (low nibbles) and 16 + 4q.. (high nibbles): one byte per 16-bit lane.
        let x = u64::from(u32::from_le_bytes(bytes.try_into().expect("4 bytes")));
        let x = (x | x << 16) & 0x0000_FFFF_0000_FFFF;
        let x = (x | x << 8) & 0x00FF_00FF_00FF_00FF;
        let (low, high) = (x & NIBBLES, (x >> 4) & NIBBLES);
        lo = lo.wrapping_add(low.wrapping_mul(packed[q]));
        hi = hi.wrapping_add(high.wrapping_mul(packed[4 + q]));
        wsum += low + high;
    }
    // Each lane of `wsum` is at most 8 · 15; the multiply gathers the four lanes' sum into bits 48-63.
    let wsum = (wsum.wrapping_mul(0x0001_0001_0001_0001) >> 48) as i32;
    (lo >> 48) as i32 + (hi >> 48) as i32 - 128 * wsum
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
    use crate::quant;

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
        // 37 blocks: two full chunks and a partial one. 1, 7 and 9 tokens take the one-token path too.
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
