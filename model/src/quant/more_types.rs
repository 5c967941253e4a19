//! Q5_K, Q5_1, BF16, Q3_K and Q2_K: block layouts, dequantization and the scalar dot products.
//!
//! Layouts follow ggml's `ggml-common.h`, dequantization its `dequantize_row_*` reference code. Each weight type is
//! dotted with the activation type llama.cpp's CPU backend pairs it with (`vec_dot_type`): Q8_K for the K-quants,
//! Q8_1 for Q5_1, BF16 for BF16. The scalar dot products here reproduce, operation by operation, the f32 arithmetic
//! of llama.cpp's AVX2 kernels (`ggml_vec_dot_*` in ggml-cpu/arch/x86/quants.c, `ggml_vec_dot_bf16` in vec.cpp):
//! the integer part of every product is exact, and what remains is how its totals are folded into f32, lane by
//! lane, so that the SIMD module's AVX2 kernels equal them bit for bit. The `_tiled` functions model llama.cpp's
//! tiled kernels (ggml-cpu/tiled/), which it uses for K-quant products of 8 or more tokens.

use bytemuck::{Pod, Zeroable};

use super::{f16_to_f32, hsum8, scale_min_k4, BlockQ8K, BlockQ8_1, QK, QK_K};

/// Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins packed as Q4_K's; value `d*sc*q - dmin*m` with a 5-bit q
/// whose low 4 bits are in `qs` (Q4_K's order) and whose bit 4 for element `64j + l` (`64j + 32 + l`) is bit `2j`
/// (`2j + 1`) of `qh[l]`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// Q5_1: `d * q + m`, 5-bit q: low 4 bits as Q4_1, bit 4 of element j is bit j of the little-endian `qh`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// Q3_K: 16 sub-blocks of 16 with signed 6-bit scales (stored + 32, packed in `scales`); value `d * sc * (q - 4)`
/// with q 3-bit: 2 low bits in `qs`, the high bit in `hmask`. Element `128h + 32k + l` has its low bits at bits
/// `2k` of `qs[32h + l]` and its high bit at bit `4h + k` of `hmask[l]`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}

/// Q2_K: 16 sub-blocks of 16, each with a 4-bit scale (low nibble of `scales[g]`) and 4-bit min (high nibble);
/// value `d*sc*q - dmin*m`, q 2-bit, element `128h + 32k + l` at bits `2k` of `qs[32h + l]`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ5K>() == 176);
const _: () = assert!(core::mem::size_of::<BlockQ5_1>() == 24);
const _: () = assert!(core::mem::size_of::<BlockQ3K>() == 110);
const _: () = assert!(core::mem::size_of::<BlockQ2K>() == 84);
const _: () = assert!(
    core::mem::align_of::<BlockQ5K>() == 1
        && core::mem::align_of::<BlockQ5_1>() == 1
        && core::mem::align_of::<BlockQ3K>() == 1
        && core::mem::align_of::<BlockQ2K>() == 1
);

/// bf16 bits to f32 (the upper half of an f32).
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// f32 to bf16, round to nearest even, NaN kept quiet (ggml's `ggml_compute_fp32_to_bf16`).
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// The 5-bit values (0..=31) of a Q5_K block in element order.
#[inline]
pub(crate) fn q5_k_values(b: &BlockQ5K) -> [u8; QK_K] {
    let mut v = [0u8; QK_K];
    for j in 0..4 {
        for l in 0..32 {
            let (q, h) = (b.qs[32 * j + l], b.qh[l]);
            v[64 * j + l] = (q & 0xF) | (((h >> (2 * j)) & 1) << 4);
            v[64 * j + 32 + l] = (q >> 4) | (((h >> (2 * j + 1)) & 1) << 4);
        }
    }
    v
}

/// The 5-bit values (0..=31) of a Q5_1 block in element order.
#[inline]
pub(crate) fn q5_1_values(b: &BlockQ5_1) -> [u8; QK] {
    let qh = u32::from_le_bytes(b.qh);
    let mut v = [0u8; QK];
    for j in 0..QK / 2 {
        v[j] = (b.qs[j] & 0xF) | ((((qh >> j) & 1) as u8) << 4);
        v[j + QK / 2] = (b.qs[j] >> 4) | ((((qh >> (j + QK / 2)) & 1) as u8) << 4);
    }
    v
}

/// The signed 3-bit values (-4..=3) of a Q3_K block in element order.
#[inline]
pub(crate) fn q3_k_values(b: &BlockQ3K) -> [i8; QK_K] {
    let mut v = [0i8; QK_K];
    for h in 0..2 {
        for k in 0..4 {
            for l in 0..32 {
                let low = (b.qs[32 * h + l] >> (2 * k)) & 3;
                let high = (b.hmask[l] >> (4 * h + k)) & 1;
                v[128 * h + 32 * k + l] = low as i8 - if high != 0 { 0 } else { 4 };
            }
        }
    }
    v
}

/// The 16 scales of a Q3_K block (-32..=31), unpacked as ggml does (`kmask1`/`kmask2` in `dequantize_row_q3_K`):
/// the low nibble of scale i is nibble `i / 8` of byte `i % 8`, its top 2 bits are bits `2 * (i / 4)` of byte
/// `8 + i % 4`.
#[inline]
pub fn q3_k_scales(s: &[u8; 12]) -> [i8; 16] {
    core::array::from_fn(|i| {
        let low = (s[i % 8] >> (4 * (i / 8))) & 0xF;
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    })
}

/// The 2-bit values (0..=3) of a Q2_K block in element order.
#[inline]
pub(crate) fn q2_k_values(b: &BlockQ2K) -> [u8; QK_K] {
    let mut v = [0u8; QK_K];
    for h in 0..2 {
        for k in 0..4 {
            for l in 0..32 {
                v[128 * h + 32 * k + l] = (b.qs[32 * h + l] >> (2 * k)) & 3;
            }
        }
    }
    v
}

// ---- dequantization (ggml's `dequantize_row_*`) ----

pub fn dequantize_q5_k(x: &[BlockQ5K], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        let v = q5_k_values(b);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &b.scales);
            let (d1, m1) = (d * sc as f32, dmin * m as f32);
            for l in 0..32 {
                o[32 * j + l] = d1 * v[32 * j + l] as f32 - m1;
            }
        }
    }
}

pub fn dequantize_q5_1(x: &[BlockQ5_1], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
        for (o, v) in o.iter_mut().zip(q5_1_values(b)) {
            *o = v as f32 * d + m;
        }
    }
}

/// BF16 from little-endian byte pairs (any alignment).
pub fn dequantize_bf16(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
    }
}

pub fn dequantize_q3_k(x: &[BlockQ3K], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        let sc = q3_k_scales(&b.scales);
        let v = q3_k_values(b);
        for (i, o) in o.iter_mut().enumerate() {
            *o = d * sc[i / 16] as f32 * v[i] as f32;
        }
    }
}

pub fn dequantize_q2_k(x: &[BlockQ2K], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        let v = q2_k_values(b);
        for (i, o) in o.iter_mut().enumerate() {
            let s = b.scales[i / 16];
            *o = d * (s & 0xF) as f32 * v[i] as f32 - dmin * (s >> 4) as f32;
        }
    }
}

// ---- exact integer totals ----

/// The 8 i32 lanes llama.cpp's AVX2 K-quant kernels accumulate for one block: lane l sums `scale(e) · q[e] · y[e]`
/// over the elements `e = 32c + 4l .. 32c + 4l + 4` of every 32-element chunk c (`vpmaddubsw` then `vpmaddwd` with
/// the scale of the sub-block holding e). Exact in i32 for every format here.
#[inline]
fn lanes8<Q: Copy + Into<i32>>(
    q: &[Q; QK_K],
    y: &[i8; QK_K],
    scale: impl Fn(usize) -> i32,
) -> [i32; 8] {
    let mut lanes = [0i32; 8];
    for c in 0..QK_K / 32 {
        for (l, lane) in lanes.iter_mut().enumerate() {
            let e = 32 * c + 4 * l;
            let s: i32 = (e..e + 4).map(|e| q[e].into() * y[e] as i32).sum();
            *lane += scale(e) * s;
        }
    }
    lanes
}

/// `Σ_j m_j · (bsums[2j] + bsums[2j+1])` over the 8 sub-blocks of 32 (Q4_K/Q5_K mins against Q8_K sums).
#[inline]
fn mins32(a_scales: &[u8; 12], b: &BlockQ8K) -> i32 {
    (0..8)
        .map(|j| {
            scale_min_k4(j, a_scales).1 as i32 * (b.bsums[2 * j] as i32 + b.bsums[2 * j + 1] as i32)
        })
        .sum()
}

/// One Q5_K block against one Q8_K block: the AVX2 kernel's 8 lanes of `Σ sc·q·y` and the total `Σ m·Σy`.
#[inline]
pub(crate) fn q5_k_block_ints(a: &BlockQ5K, b: &BlockQ8K) -> ([i32; 8], i32) {
    let v = q5_k_values(a);
    let sc: [u8; 8] = core::array::from_fn(|j| scale_min_k4(j, &a.scales).0);
    (
        lanes8(&v, &b.qs, |e| sc[e / 32] as i32),
        mins32(&a.scales, b),
    )
}

/// One Q3_K block against one Q8_K block: the AVX2 kernel's 8 lanes of `Σ sc·(q - 4)·y`.
#[inline]
pub(crate) fn q3_k_block_lanes(a: &BlockQ3K, b: &BlockQ8K) -> [i32; 8] {
    let v = q3_k_values(a);
    let sc = q3_k_scales(&a.scales);
    lanes8(&v, &b.qs, |e| sc[e / 16] as i32)
}

/// One Q2_K block against one Q8_K block: the AVX2 kernel's 8 lanes of `Σ sc·q·y`, and its 8 lanes of mins,
/// lane l = `m[2l]·bsums[2l] + m[2l+1]·bsums[2l+1]`.
#[inline]
pub(crate) fn q2_k_block_lanes(a: &BlockQ2K, b: &BlockQ8K) -> ([i32; 8], [i32; 8]) {
    let v = q2_k_values(a);
    let sums = lanes8(&v, &b.qs, |e| (a.scales[e / 16] & 0xF) as i32);
    let m = |g: usize| (a.scales[g] >> 4) as i32 * b.bsums[g] as i32;
    (sums, core::array::from_fn(|l| m(2 * l) + m(2 * l + 1)))
}

/// The 8 i32 lanes of Σ q·y for one 32-element block (`vpmaddubsw` with an unsigned q, `vpmaddwd` with ones):
/// lane l sums elements `4l .. 4l + 4`.
#[inline]
pub(crate) fn block32_lanes(q: &[u8; QK], y: &[i8; QK]) -> [i32; 8] {
    core::array::from_fn(|l| (4 * l..4 * l + 4).map(|e| q[e] as i32 * y[e] as i32).sum())
}

// ---- scalar dot products in llama.cpp's AVX2 order ----

/// Q5_K · Q8_K as `ggml_vec_dot_q5_K_q8_K` (AVX2) computes it: per block `acc[l] = fma(d·y.d, lane_l, acc[l])`
/// and `summs = fma(-dmin·y.d, Σ m·Σy, summs)` (the C source's `summs += dmin * ...`, which GCC contracts);
/// the result is `hsum8(acc) + summs`.
pub fn dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let d = b.d * f16_to_f32(a.d);
        let dmin = -b.d * f16_to_f32(a.dmin);
        let (lanes, imin) = q5_k_block_ints(a, b);
        summs = libm::fmaf(dmin, imin as f32, summs);
        for (acc, &l) in acc.iter_mut().zip(&lanes) {
            *acc = libm::fmaf(d, l as f32, *acc);
        }
    }
    hsum8(&acc) + summs
}

/// Q5_K · Q8_K as llama.cpp's tiled kernel computes one output (8 or more tokens): per super-block
/// `r = d·isum`, `r = fma(-dmin, imin, r)`, `acc = fma(r, y.d, acc)` (as [`super::dot_q4_k_q8_k_tiled`]).
pub fn dot_q5_k_q8_k_tiled(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let (lanes, imin) = q5_k_block_ints(a, b);
        let isum: i32 = lanes.iter().sum();
        acc = tiled_fold(acc, f16_to_f32(a.d), isum, f16_to_f32(a.dmin), imin, b.d);
    }
    acc
}

/// One super-block's exact totals folded into a tiled kernel's accumulator (ggml-cpu/tiled/tiled-kernel.cpp,
/// AVX2 epilogue): `r = d·isum`, `r = fma(-dmin, imin, r)`, `fma(r, y_d, acc)`. Formats without mins pass 0.
#[inline]
pub fn tiled_fold(acc: f32, d: f32, isum: i32, dmin: f32, imin: i32, y_d: f32) -> f32 {
    let r = d * isum as f32;
    let r = libm::fmaf(-dmin, imin as f32, r);
    libm::fmaf(r, y_d, acc)
}

/// Q5_1 · Q8_1 as `ggml_vec_dot_q5_1_q8_1` (AVX2) computes it: per block `acc[l] = fma(lane_l, d·y.d, acc[l])`
/// and `summs = fma(m, y.s, summs)`; the result is `hsum8(acc) + summs`.
pub fn dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        summs = libm::fmaf(f16_to_f32(a.m), f16_to_f32(b.s), summs);
        let d = f16_to_f32(a.d) * f16_to_f32(b.d);
        let lanes = block32_lanes(&q5_1_values(a), &b.qs);
        for (acc, &l) in acc.iter_mut().zip(&lanes) {
            *acc = libm::fmaf(l as f32, d, *acc);
        }
    }
    hsum8(&acc) + summs
}

/// BF16 · BF16 as `ggml_vec_dot_bf16` (AVX2) computes it: four 8-lane chains `c = x·y + c` over steps of 32
/// (the product rounded, then added), reduced `(c1 + c3) + (c2 + c4)` and by [`hsum8`], plus an f64 tail for the
/// last `len % 32` elements. Operands are little-endian byte pairs, so a row is read in place at any alignment.
pub fn dot_bf16(x: &[[u8; 2]], y: &[[u8; 2]]) -> f32 {
    let h = |v: [u8; 2]| bf16_to_f32(u16::from_le_bytes(v));
    let n = x.len().min(y.len());
    let np = n / 32 * 32;
    let mut c = [[0.0f32; 8]; 4];
    for i in (0..np).step_by(32) {
        for (j, c) in c.iter_mut().enumerate() {
            for (l, c) in c.iter_mut().enumerate() {
                let at = i + 8 * j + l;
                *c += h(x[at]) * h(y[at]);
            }
        }
    }
    let s: [f32; 8] = core::array::from_fn(|l| (c[0][l] + c[2][l]) + (c[1][l] + c[3][l]));
    let mut sum = hsum8(&s) as f64;
    for i in np..n {
        sum += (h(x[i]) * h(y[i])) as f64;
    }
    sum as f32
}

/// Q3_K · Q8_K as `ggml_vec_dot_q3_K_q8_K` (AVX2) computes it: per block `acc[l] = fma(d·y.d, lane_l, acc[l])`,
/// then `hsum8(acc)`.
pub fn dot_q3_k_q8_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (a, b) in x.iter().zip(y) {
        let d = b.d * f16_to_f32(a.d);
        let lanes = q3_k_block_lanes(a, b);
        for (acc, &l) in acc.iter_mut().zip(&lanes) {
            *acc = libm::fmaf(d, l as f32, *acc);
        }
    }
    hsum8(&acc)
}

/// Q3_K · Q8_K as llama.cpp's tiled kernel computes one output: per super-block `acc = fma(d·isum, y.d, acc)`.
pub fn dot_q3_k_q8_k_tiled(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let isum: i32 = q3_k_block_lanes(a, b).iter().sum();
        acc = tiled_fold(acc, f16_to_f32(a.d), isum, 0.0, 0, b.d);
    }
    acc
}

/// Q2_K · Q8_K as `ggml_vec_dot_q2_K_q8_K` (AVX2) computes it: per block first the mins,
/// `acc[l] = fma(-dmin·y.d, min_lane_l, acc[l])`, then `acc[l] = fma(d·y.d, lane_l, acc[l])`; then `hsum8(acc)`.
pub fn dot_q2_k_q8_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (a, b) in x.iter().zip(y) {
        let d = b.d * f16_to_f32(a.d);
        let dmin = -b.d * f16_to_f32(a.dmin);
        let (lanes, mins) = q2_k_block_lanes(a, b);
        for l in 0..8 {
            acc[l] = libm::fmaf(dmin, mins[l] as f32, acc[l]);
            acc[l] = libm::fmaf(d, lanes[l] as f32, acc[l]);
        }
    }
    hsum8(&acc)
}

/// Q2_K · Q8_K as llama.cpp's tiled kernel computes one output (see [`tiled_fold`]).
pub fn dot_q2_k_q8_k_tiled(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let (lanes, mins) = q2_k_block_lanes(a, b);
        let (isum, imin): (i32, i32) = (lanes.iter().sum(), mins.iter().sum());
        acc = tiled_fold(acc, f16_to_f32(a.d), isum, f16_to_f32(a.dmin), imin, b.d);
    }
    acc
}
