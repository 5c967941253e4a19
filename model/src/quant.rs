//! Quantized tensor formats: ggml type codes, `#[repr(C)]` block layouts, dequantization, activation quantization
//! and the scalar reference dot products.
//!
//! Layouts and arithmetic follow ggml (`ggml-common.h` block definitions, `ggml-quants.c` reference code): weights
//! of type Q4_0/Q5_0/Q8_0 are dotted with activations quantized to Q8_0, Q4_1 and Q5_1 with Q8_1, the K-quants
//! with Q8_K, F16 with F16, BF16 with BF16 and F32 with F32, exactly as llama.cpp's CPU backend pairs them
//! (`vec_dot_type`); Q5_K, Q5_1, BF16, Q3_K and Q2_K are in `quant/more_types.rs`. The activation quantizers
//! reproduce llama.cpp's x86 code (scale `amax/127`, multiplier `127/amax`, round half to even) so that near-tie
//! logits resolve the same way. Weight blocks keep their `f16` fields as byte pairs, which gives them
//! alignment 1 so they can be viewed in place inside any byte buffer.

use bytemuck::{Pod, Zeroable};

pub mod interleaved;
mod more_types;
mod q4_0_repacked;
pub use more_types::*;
pub use q4_0_repacked::*;

/// Elements per block of the simple formats.
pub const QK: usize = 32;
/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;

/// ggml tensor type codes (`enum ggml_type`). Only types whose block layout is known are representable; IQ4_NL and
/// IQ4_XS are known (so a file holding them parses and is refused by name) but not computable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2K = 10,
    Q3K = 11,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    Q8K = 15,
    IQ4NL = 20,
    IQ4XS = 23,
    BF16 = 30,
}

impl core::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl GgmlType {
    pub fn from_u32(v: u32) -> Option<GgmlType> {
        Some(match v {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            15 => GgmlType::Q8K,
            20 => GgmlType::IQ4NL,
            23 => GgmlType::IQ4XS,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// The type's name as ggml and llama.cpp spell it (`Q4_K`, `BF16`).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Q8K => "Q8_K",
            GgmlType::IQ4NL => "IQ4_NL",
            GgmlType::IQ4XS => "IQ4_XS",
            GgmlType::BF16 => "BF16",
        }
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q8_1
            | GgmlType::IQ4NL => QK,
            _ => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q8_1 => 36,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
            GgmlType::Q8K => 292,
            GgmlType::IQ4NL => 18,
            GgmlType::IQ4XS => 136,
        }
    }

    /// Whether this engine can multiply with weights of this type.
    pub fn is_computable(self) -> bool {
        matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_0
                | GgmlType::Q5_1
                | GgmlType::Q8_0
                | GgmlType::Q2K
                | GgmlType::Q3K
                | GgmlType::Q4K
                | GgmlType::Q5K
                | GgmlType::Q6K
                | GgmlType::BF16
        )
    }

    /// The activation format llama.cpp quantizes the other operand to for a dot product with this weight type.
    pub fn act_type(self) -> Option<ActType> {
        Some(match self {
            GgmlType::F32 => ActType::F32,
            GgmlType::F16 => ActType::F16,
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => ActType::Q8_0,
            GgmlType::Q4_1 | GgmlType::Q5_1 => ActType::Q8_1,
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => {
                ActType::Q8K
            }
            GgmlType::BF16 => ActType::BF16,
            _ => return None,
        })
    }
}

/// Activation formats (the right-hand side of a weight × activation dot product).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActType {
    F32,
    F16,
    Q8_0,
    Q8_1,
    Q8K,
    BF16,
}

/// Q4_0: `d * (q - 8)`, 4-bit q; element j in the low nibble of `qs[j]`, element j+16 in its high nibble.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
}

/// Q4_1: `d * q + m`, 4-bit q, nibble order as Q4_0.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; QK / 2],
}

/// Q5_0: `d * (q - 16)`, 5-bit q: low 4 bits as Q4_0, bit 4 of element j is bit j of the little-endian `qh`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// Q8_0: `d * q`, signed 8-bit q. Used both for weights and for activations.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; QK],
}

/// Q8_1 (activations only): as Q8_0 plus `s = d * sum(q)`, which folds Q4_1's offset into one multiply.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: [u8; 2],
    pub s: [u8; 2],
    pub qs: [i8; QK],
}

/// Q4_K: 8 sub-blocks of 32 with 6-bit scales and mins packed in `scales`; value `d*sc*q - dmin*m`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

/// Q6_K: 16 sub-blocks of 16 with 8-bit scales; value `d * sc * (q - 32)`, q 6-bit split into `ql` and `qh`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: [u8; 2],
}

/// Q8_K (activations only): f32 scale, 8-bit q, and sums of each group of 16 q for the K-quant mins.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(core::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(core::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(core::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(core::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(core::mem::size_of::<BlockQ8_1>() == 36);
const _: () = assert!(core::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(core::mem::size_of::<BlockQ6K>() == 210);
const _: () = assert!(core::mem::size_of::<BlockQ8K>() == 292);
const _: () =
    assert!(core::mem::align_of::<BlockQ4_1>() == 1 && core::mem::align_of::<BlockQ6K>() == 1);

/// IEEE half (little-endian byte pair) to f32.
#[inline]
pub fn f16_to_f32(b: [u8; 2]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes(b)).to_f32()
}

/// f32 to IEEE half, round to nearest even (as F16C's `vcvtps2ph` with mode 0).
#[inline]
pub fn f32_to_f16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

/// `out[i] = f16(x[i] · scale)` as bits (`out.len() == x.len()`): an f32 multiply, then the IEEE conversion to f16
/// (nearest, ties to even), as ggml's `GGML_FP32_TO_FP16` computes it. The scalar twin of
/// `simd::scale_to_f16`.
pub fn scale_to_f16(x: &[f32], scale: f32, out: &mut [u16]) {
    assert_eq!(x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = half::f16::from_f32(v * scale).to_bits();
    }
}

/// Round to nearest, ties to even, for |x| < 2^22 (ggml's `nearest_int` trick; also what `vroundps` mode 0 does).
#[inline]
pub fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Scale and multiplier for an 8-bit block with largest magnitude `amax`, as llama.cpp's AVX2 quantizer computes them.
#[inline]
fn q8_scale(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    (d, id)
}

/// Quantizes `x` (length a multiple of 32) to Q8_0 blocks.
pub fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    quantize_q8_0_as(x, out, q8_scale, |v| nearest_int(v) as i8);
}

/// Quantizes `x` (length a multiple of 32) to Q8_1 blocks.
pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    quantize_q8_1_as(x, out, q8_scale, |v| nearest_int(v) as i8);
}

/// Q8_0 quantization with a block's `(d, 1/d)` from its largest magnitude by `scale` and each `x·(1/d)` rounded by
/// `round`: llama.cpp's AVX quantizer and its reference one (`crate::sse`) differ in both.
pub(crate) fn quantize_q8_0_as(
    x: &[f32],
    out: &mut [BlockQ8_0],
    scale: impl Fn(f32) -> (f32, f32),
    round: impl Fn(f32) -> i8,
) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (d, id) = scale(amax);
        b.d = f32_to_f16(d);
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = round(v * id);
        }
    }
}

/// [`quantize_q8_0_as`] for Q8_1, which also keeps `s = f16(d · Σ q)`.
pub(crate) fn quantize_q8_1_as(
    x: &[f32],
    out: &mut [BlockQ8_1],
    scale: impl Fn(f32) -> (f32, f32),
    round: impl Fn(f32) -> i8,
) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (d, id) = scale(amax);
        b.d = f32_to_f16(d);
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = round(v * id);
            sum += *q as i32;
        }
        b.s = f32_to_f16(d * sum as f32);
    }
}

/// Quantizes `x` (length a multiple of 256) to Q8_K blocks (ggml's `quantize_row_q8_K_ref`).
pub fn quantize_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xs {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *b = BlockQ8K::zeroed();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| i16::from(q)).sum();
        }
        b.d = 1.0 / iscale;
    }
}

/// Q4_K's packed 6-bit scale and min of sub-block `j` (ggml's `get_scale_min_k4`).
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The 5-bit values (0..=31) of a Q5_0 block in element order.
#[inline]
fn q5_0_values(b: &BlockQ5_0) -> [i32; QK] {
    let qh = u32::from_le_bytes(b.qh);
    let mut v = [0i32; QK];
    for j in 0..QK / 2 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        v[j] = ((b.qs[j] & 0xF) as u32 | h0) as i32;
        v[j + QK / 2] = ((b.qs[j] >> 4) as u32 | h1) as i32;
    }
    v
}

/// The 6-bit values (0..=63) of a Q6_K block in element order.
#[inline]
pub(crate) fn q6_k_values(b: &BlockQ6K) -> [i8; QK_K] {
    let mut v = [0i8; QK_K];
    for half in 0..2 {
        let (ql, qh) = (
            &b.ql[half * 64..half * 64 + 64],
            &b.qh[half * 32..half * 32 + 32],
        );
        let out = &mut v[half * 128..half * 128 + 128];
        for l in 0..32 {
            out[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8;
            out[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8;
            out[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8;
            out[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8;
        }
    }
    v
}

/// The 4-bit values of a Q4_K block in element order.
#[inline]
pub(crate) fn q4_k_values(b: &BlockQ4K) -> [u8; QK_K] {
    let mut v = [0u8; QK_K];
    for j in 0..4 {
        for l in 0..32 {
            v[64 * j + l] = b.qs[32 * j + l] & 0xF;
            v[64 * j + 32 + l] = b.qs[32 * j + l] >> 4;
        }
    }
    v
}

/// Why a row could not be dequantized or dotted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantError {
    /// The type has no dequantizer here.
    Unsupported(GgmlType),
    /// The byte slice is not a whole number of blocks, or the output length does not match.
    BadLength,
}

/// Dequantizes a run of blocks of type `t` from `bytes` into `out` (which must hold exactly the elements encoded).
pub fn dequantize(t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    if !bytes.len().is_multiple_of(t.block_bytes())
        || bytes.len() / t.block_bytes() * t.block_len() != out.len()
    {
        return Err(QuantError::BadLength);
    }
    match t {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_to_f32([c[0], c[1]]);
            }
        }
        GgmlType::Q4_0 => {
            for (b, o) in cast::<BlockQ4_0>(bytes)
                .iter()
                .zip(out.chunks_exact_mut(QK))
            {
                let d = f16_to_f32(b.d);
                for j in 0..QK / 2 {
                    o[j] = ((b.qs[j] & 0xF) as i32 - 8) as f32 * d;
                    o[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (b, o) in cast::<BlockQ4_1>(bytes)
                .iter()
                .zip(out.chunks_exact_mut(QK))
            {
                let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
                for j in 0..QK / 2 {
                    o[j] = (b.qs[j] & 0xF) as f32 * d + m;
                    o[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (b, o) in cast::<BlockQ5_0>(bytes)
                .iter()
                .zip(out.chunks_exact_mut(QK))
            {
                let d = f16_to_f32(b.d);
                for (o, v) in o.iter_mut().zip(q5_0_values(b)) {
                    *o = (v - 16) as f32 * d;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (b, o) in cast::<BlockQ8_0>(bytes)
                .iter()
                .zip(out.chunks_exact_mut(QK))
            {
                let d = f16_to_f32(b.d);
                for (o, &q) in o.iter_mut().zip(&b.qs) {
                    *o = q as f32 * d;
                }
            }
        }
        GgmlType::Q4K => {
            for (b, o) in cast::<BlockQ4K>(bytes)
                .iter()
                .zip(out.chunks_exact_mut(QK_K))
            {
                let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
                let v = q4_k_values(b);
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, &b.scales);
                    let (d1, m1) = (d * sc as f32, dmin * m as f32);
                    for l in 0..32 {
                        o[32 * j + l] = d1 * v[32 * j + l] as f32 - m1;
                    }
                }
            }
        }
        GgmlType::Q6K => {
            for (b, o) in cast::<BlockQ6K>(bytes)
                .iter()
                .zip(out.chunks_exact_mut(QK_K))
            {
                let d = f16_to_f32(b.d);
                let v = q6_k_values(b);
                for (i, o) in o.iter_mut().enumerate() {
                    *o = d * b.scales[i / 16] as f32 * (v[i] as i32 - 32) as f32;
                }
            }
        }
        GgmlType::Q5K => dequantize_q5_k(cast(bytes), out),
        GgmlType::Q5_1 => dequantize_q5_1(cast(bytes), out),
        GgmlType::BF16 => dequantize_bf16(bytes, out),
        GgmlType::Q3K => dequantize_q3_k(cast(bytes), out),
        GgmlType::Q2K => dequantize_q2_k(cast(bytes), out),
        other => return Err(QuantError::Unsupported(other)),
    }
    Ok(())
}

/// Views whole blocks of `bytes` as `T` (alignment 1, so this only fails on length, which callers check first).
pub fn cast<T: Pod>(bytes: &[u8]) -> &[T] {
    let n = bytes.len() / core::mem::size_of::<T>();
    bytemuck::cast_slice(&bytes[..n * core::mem::size_of::<T>()])
}

// ---- scalar reference dot products (weights · quantized activations), one per weight type ----

/// One 32-element block's product folded into llama.cpp's AVX2 accumulator: the exact integer sums of each group
/// of 4 elements (the 8 i32 lanes `vpmaddubsw` + `vpmaddwd` leave) times `d`, fused into `acc`'s lanes.
#[inline]
fn q0_block_fma(acc: &mut [f32; 8], values: &[i32; QK], qs: &[i8; QK], d: f32) {
    for (j, lane) in acc.iter_mut().enumerate() {
        let s: i32 = (4 * j..4 * j + 4).map(|e| values[e] * qs[e] as i32).sum();
        *lane = libm::fmaf(d, s as f32, *lane);
    }
}

/// The 32 nibbles of a Q4 block in element order (low nibbles, then high), offset by `bias`.
#[inline]
fn q4_values(qs: &[u8; QK / 2], bias: i32) -> [i32; QK] {
    core::array::from_fn(|e| {
        let byte = qs[e % (QK / 2)];
        (if e < QK / 2 { byte & 0xF } else { byte >> 4 }) as i32 - bias
    })
}

// The 32-element formats' dot products sum as llama.cpp's AVX2 `ggml_vec_dot_*` do (ggml-cpu/arch/x86/quants.c):
// per block, 8 lanes of exact 4-element integer sums fused with the block's scale into an 8-lane accumulator,
// reduced by [`hsum8`] at the end. These are the AVX2 kernels' scalar twins (equal bit for bit); the portable
// kernels use the generic forms below.

pub fn dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (a, b) in x.iter().zip(y) {
        let d = f16_to_f32(a.d) * f16_to_f32(b.d);
        q0_block_fma(&mut acc, &q4_values(&a.qs, 8), &b.qs, d);
    }
    hsum8(&acc)
}

/// As [`dot_q4_0_q8_0`], plus the mins: `summs = fma(m, s, summs)` per block (GCC contracts llama.cpp's
/// `summs += m * s`), added after the reduction.
pub fn dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        summs = libm::fmaf(f16_to_f32(a.m), f16_to_f32(b.s), summs);
        let d = f16_to_f32(a.d) * f16_to_f32(b.d);
        q0_block_fma(&mut acc, &q4_values(&a.qs, 0), &b.qs, d);
    }
    hsum8(&acc) + summs
}

pub fn dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (a, b) in x.iter().zip(y) {
        let v = q5_0_values(a);
        let d = f16_to_f32(a.d) * f16_to_f32(b.d);
        q0_block_fma(&mut acc, &core::array::from_fn(|e| v[e] - 16), &b.qs, d);
    }
    hsum8(&acc)
}

pub fn dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (a, b) in x.iter().zip(y) {
        let d = f16_to_f32(a.d) * f16_to_f32(b.d);
        q0_block_fma(&mut acc, &a.qs.map(|q| q as i32), &b.qs, d);
    }
    hsum8(&acc)
}

// The same four products in llama.cpp's generic order (`ggml_vec_dot_*_generic` in ggml-cpu/quants.c): per block an
// exact integer sum, then one scale product and add. The portable kernels use the Q4_1, Q5_0 and Q8_0 ones
// (`crate::simd`), as llama.cpp built for SSE4.2 without AVX does (`crate::sse`, where Q4_0 takes its SSSE3 branch
// instead); under TCG, where every float operation is a call into QEMU, their two or three per block also cost a
// seventh of the eight fused multiply-adds of the AVX2 order (measured: Q4_1 94 against 661 ns per block). README,
// "Engine outputs against llama.cpp".

pub fn dot_q4_0_q8_0_generic(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            isum += ((a.qs[j] & 0xF) as i32 - 8) * b.qs[j] as i32;
            isum += ((a.qs[j] >> 4) as i32 - 8) * b.qs[j + QK / 2] as i32;
        }
        sum += isum as f32 * (f16_to_f32(a.d) * f16_to_f32(b.d));
    }
    sum
}

pub fn dot_q4_1_q8_1_generic(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let mut sum = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            isum += (a.qs[j] & 0xF) as i32 * b.qs[j] as i32;
            isum += (a.qs[j] >> 4) as i32 * b.qs[j + QK / 2] as i32;
        }
        sum +=
            isum as f32 * (f16_to_f32(a.d) * f16_to_f32(b.d)) + f16_to_f32(a.m) * f16_to_f32(b.s);
    }
    sum
}

pub fn dot_q5_0_q8_0_generic(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let v = q5_0_values(a);
        let isum: i32 = v
            .iter()
            .zip(&b.qs)
            .map(|(&v, &q)| (v - 16) * q as i32)
            .sum();
        sum += isum as f32 * (f16_to_f32(a.d) * f16_to_f32(b.d));
    }
    sum
}

pub fn dot_q8_0_q8_0_generic(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let isum: i32 =
            a.qs.iter()
                .zip(&b.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sum += isum as f32 * (f16_to_f32(a.d) * f16_to_f32(b.d));
    }
    sum
}

pub fn dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let v = q4_k_values(a);
        let (mut isum, mut msum) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &a.scales);
            let s: i32 = (0..32)
                .map(|l| v[32 * j + l] as i32 * b.qs[32 * j + l] as i32)
                .sum();
            isum += sc as i32 * s;
            msum += m as i32 * (b.bsums[2 * j] as i32 + b.bsums[2 * j + 1] as i32);
        }
        sum += b.d * f16_to_f32(a.d) * isum as f32 - b.d * f16_to_f32(a.dmin) * msum as f32;
    }
    sum
}

/// The exact integer total of one Q6_K block against one Q8_K block: `Σ_g sc_g · Σ (q - 32)·y` over its 16 groups.
fn q6_k_block_isum(a: &BlockQ6K, b: &BlockQ8K) -> i32 {
    let v = q6_k_values(a);
    let mut isum = 0i32;
    for g in 0..16 {
        let s: i32 = (0..16)
            .map(|l| (v[16 * g + l] as i32 - 32) * b.qs[16 * g + l] as i32)
            .sum();
        isum += a.scales[g] as i32 * s;
    }
    isum
}

/// Q6_K · Q8_K as llama.cpp's AVX2 `ggml_vec_dot_q6_K_q8_K` sums it, so the portable kernel equals the AVX2 one
/// bit for bit: per block, i32 lane j holds Σ sc·q·y over elements 4j..4j+3 of each 32-element slice (q unsigned,
/// the slice's first or second 16-element scale) minus 32·(sc·bsum) of groups 2j and 2j+1; the 8 lanes are fused
/// with the block scale into an 8-lane accumulator, reduced by [`hsum8`] at the end.
pub fn dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (a, b) in x.iter().zip(y) {
        let q = q6_k_values(a);
        let sc = |g: usize| a.scales[g] as i32;
        let mut lanes: [i32; 8] = core::array::from_fn(|j| {
            -32 * (b.bsums[2 * j] as i32 * sc(2 * j) + b.bsums[2 * j + 1] as i32 * sc(2 * j + 1))
        });
        for off in (0..QK_K).step_by(32) {
            for (j, lane) in lanes.iter_mut().enumerate() {
                let s: i32 = (off + 4 * j..off + 4 * j + 4)
                    .map(|e| q[e] as i32 * b.qs[e] as i32)
                    .sum();
                *lane += sc(off / 16 + j / 4) * s;
            }
        }
        let d = b.d * f16_to_f32(a.d);
        for (a, &l) in acc.iter_mut().zip(&lanes) {
            *a = libm::fmaf(d, l as f32, *a);
        }
    }
    hsum8(&acc)
}

/// f16 · f16 with f32 accumulation (llama.cpp's `ggml_vec_dot_f16`).
pub fn dot_f16(x: &[u16], y: &[u16]) -> f32 {
    dot_f16_bits(x.iter().copied(), y)
}

/// [`dot_f16`] with `x` as the file's little-endian bytes, which may start at any offset (a GGUF file with
/// `general.alignment` 1 places rows at odd offsets, where a `&[u16]` view cannot exist).
pub fn dot_f16_bytes(x: &[u8], y: &[u16]) -> f32 {
    dot_f16_bits(
        x.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])),
        y,
    )
}

fn dot_f16_bits(x: impl Iterator<Item = u16>, y: &[u16]) -> f32 {
    x.zip(y)
        .map(|(a, &b)| half::f16::from_bits(a).to_f32() * half::f16::from_bits(b).to_f32())
        .sum()
}

pub fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

// ---- exact scalar models of ggml's AVX2 float kernels (the SIMD module's twins compare bit for bit) ----

/// Horizontal sum of 8 lanes in the order of `hsum_float_8` / tinyBLAS `hsum`: (hi+lo), then movehl, then movehdup.
#[inline]
pub fn hsum8(l: &[f32; 8]) -> f32 {
    let t = [l[4] + l[0], l[5] + l[1], l[6] + l[2], l[7] + l[3]];
    let u = [t[0] + t[2], t[1] + t[3]];
    u[0] + u[1]
}

/// `fma(a, b, acc)` for two f16 values `a` and `b`, without an FMA instruction: their product has at most 22
/// significant bits (11 each) and a magnitude between 2^-48 and 2^32, so it is exact in f32, and the add's one
/// rounding is the FMA's. Bit for bit what llama.cpp's FMA chains compute, at the cost of a multiply and an add:
/// under QEMU's TCG a software `fmaf` costs several times that (`model/examples/tcg_speed.rs fma`).
#[inline]
pub fn fma_f16(a: u16, b: u16, acc: f32) -> f32 {
    half::f16::from_bits(a).to_f32() * half::f16::from_bits(b).to_f32() + acc
}

/// f16 dot product as tinyBLAS computes it: one 8-lane FMA chain over chunks of 8, then [`hsum8`].
/// `x.len()` must be a multiple of 8.
pub fn dot_f16_chain(x: &[u16], y: &[u16]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (a, b) in x.chunks_exact(8).zip(y.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] = fma_f16(a[l], b[l], acc[l]);
        }
    }
    hsum8(&acc)
}

/// f16 dot product as `ggml_vec_dot_f16` computes it: four 8-lane FMA chains over steps of 32, reduced pairwise
/// and with two `hadd`s, plus an f64 tail for the last `len % 32` elements.
pub fn dot_f16_ggml(x: &[u16], y: &[u16]) -> f32 {
    let h = |v: u16| half::f16::from_bits(v).to_f32();
    let n = x.len().min(y.len());
    let np = n / 32 * 32;
    let mut acc = [[0.0f32; 8]; 4];
    for i in (0..np).step_by(32) {
        for (j, a) in acc.iter_mut().enumerate() {
            for l in 0..8 {
                a[l] = fma_f16(x[i + 8 * j + l], y[i + 8 * j + l], a[l]);
            }
        }
    }
    let mut s = [0.0f32; 8];
    for l in 0..8 {
        let a0 = acc[0][l] + acc[2][l];
        let a1 = acc[1][l] + acc[3][l];
        s[l] = a0 + a1;
    }
    let t0 = [s[0] + s[4], s[1] + s[5], s[2] + s[6], s[3] + s[7]];
    let t1 = [t0[0] + t0[1], t0[2] + t0[3]];
    let mut sum = (t1[0] + t1[1]) as f64;
    for i in np..n {
        sum += (h(x[i]) * h(y[i])) as f64;
    }
    sum as f32
}

/// ggml's vectorised `expf` (`ggml_v_expf`, after ARM's optimized-routines), one lane, with the same FMAs.
pub fn expf_ggml(x: f32) -> f32 {
    let fma = crate::fma::fmaf;
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = fma(x, f32::from_bits(0x3fb8_aa3b), r); // log2(e)
    let n = z - r;
    let b = fma(
        -n,
        f32::from_bits(0x35bf_be8e),
        fma(-n, f32::from_bits(0x3f31_7200), x),
    ); // ln2 lo, hi
    let e = z.to_bits().wrapping_shl(23);
    let k = f32::from_bits(e.wrapping_add(1.0f32.to_bits()));
    let c = n.abs() > 126.0;
    let u = b * b;
    let c0 = f32::from_bits(0x3c07_2010); // 0x1.0e4020p-7
    let c1 = f32::from_bits(0x3d2b_9f17); // 0x1.573e2ep-5
    let c2 = f32::from_bits(0x3e2a_af33); // 0x1.555e66p-3
    let c3 = f32::from_bits(0x3eff_fedb); // 0x1.fffdb6p-2
    let c4 = f32::from_bits(0x3f7f_fff6); // 0x1.ffffecp-1
    let j = fma(fma(fma(c0, b, c1), u, fma(c2, b, c3)), u, c4 * b);
    if !c {
        return fma(j, k, k);
    }
    let d: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(d.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(d));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        fma(s2, j, s2) * s1
    }
}

/// Softmax numerator as ggml's AVX2 `ggml_vec_soft_max_f32`: `x[i] = expf(x[i] - max)` by [`expf_ggml`] in blocks
/// of 8, each block's [`hsum8`] added to an f64 sum; returns the sum.
pub fn softmax_exp(x: &mut [f32], max: f32) -> f64 {
    softmax_exp_lanes::<8>(x, max, expf_ggml, hsum8)
}

/// ggml's `ggml_vec_soft_max_f32` with `N`-lane vectors: `x[i] = expf(x[i] - max)` by the vector `expf` in groups of
/// `N`, each group's `hsum` added to an f64 sum, the last `len % N` by the C library's `expf`; returns the sum. The
/// kernel sets differ only in `N`, the vector `expf` and the horizontal sum (`crate::sse`, this module, `crate::wide`).
pub(crate) fn softmax_exp_lanes<const N: usize>(
    x: &mut [f32],
    max: f32,
    expf: impl Fn(f32) -> f32,
    hsum: impl Fn(&[f32; N]) -> f32,
) -> f64 {
    let mut sum = 0.0f64;
    let mut chunks = x.chunks_exact_mut(N);
    for c in &mut chunks {
        let mut l = [0.0f32; N];
        for (o, v) in l.iter_mut().zip(c.iter_mut()) {
            *v = expf(*v - max);
            *o = *v;
        }
        sum += hsum(&l) as f64;
    }
    for v in chunks.into_remainder() {
        *v = libm::expf(*v - max);
        sum += *v as f64;
    }
    sum
}

/// `gate[i] = silu(gate[i]) * up[i]` as ggml's AVX2 `ggml_vec_swiglu_f32` (`x / (1 + v_expf(-x))` in blocks of 8).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    swiglu_lanes::<8>(gate, up, expf_ggml);
}

/// ggml's `ggml_vec_swiglu_f32` with `N`-lane vectors: `x / (1 + expf(0 - x)) * up` by the vector `expf` over the
/// first `len / N * N` elements, `ggml_silu_f32` (the C library's `expf`) for the rest.
pub(crate) fn swiglu_lanes<const N: usize>(
    gate: &mut [f32],
    up: &[f32],
    expf: impl Fn(f32) -> f32,
) {
    let whole = gate.len().min(up.len()) / N * N;
    for (g, &u) in gate[..whole].iter_mut().zip(up) {
        let x = *g;
        *g = x / (1.0 + expf(0.0 - x)) * u;
    }
    for (g, &u) in gate[whole..].iter_mut().zip(&up[whole..]) {
        let x = *g;
        *g = x / (1.0 + libm::expf(-x)) * u;
    }
}

// ---- scalar models of llama.cpp's batched K-quant kernels (repacked Q4_K, tiled K-quants) ----
//
// On AVX2, llama.cpp multiplies Q4_K matrices whose row count is a multiple of 8 through its repacked `q4_K_8x8`
// kernels (ggml-cpu/arch/x86/repack.cpp): `ggml_gemm_q4_K_8x8_q8_K` for each group of 4 tokens of a batch and
// `ggml_gemv_q4_K_8x8_q8_K` for the remaining tokens (ggml-cpu/repack.cpp `forward_mul_mat_one_chunk`). Other
// K-quant products with 8 or more tokens go through its tiled kernels (ggml-cpu/tiled/, `ggml_tiled_min_batch`).
// The integer part of every product is exact in all of them; they differ from `ggml_vec_dot_*` and from each other
// only in how the exact integer totals are folded into f32, which these functions reproduce operation by operation.

/// The exact integer totals of one Q4_K block against one Q8_K block over sub-blocks `j0..j1`:
/// `(Σ sc_j · Σ q·y, Σ m_j · Σ y)`.
#[inline]
fn q4_k_block_ints(v: &[u8; QK_K], a: &BlockQ4K, b: &BlockQ8K, j0: usize, j1: usize) -> (i32, i32) {
    let (mut isum, mut imin) = (0i32, 0i32);
    for j in j0..j1 {
        let (sc, m) = scale_min_k4(j, &a.scales);
        let s: i32 = (0..32)
            .map(|l| v[32 * j + l] as i32 * b.qs[32 * j + l] as i32)
            .sum();
        isum += sc as i32 * s;
        imin += m as i32 * (b.bsums[2 * j] as i32 + b.bsums[2 * j + 1] as i32);
    }
    (isum, imin)
}

/// Q4_K · Q8_K as llama.cpp's repacked gemv computes one output: per super-block the exact totals are folded into
/// two FMA chains, `acc = fma(isum, d·y.d, acc)` and `accm = fma(imin, dmin·y.d, accm)`; the result is
/// `acc - accm`.
pub fn dot_q4_k_q8_k_gemv(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    let (mut acc, mut accm) = (0.0f32, 0.0f32);
    for (a, b) in x.iter().zip(y) {
        let v = q4_k_values(a);
        let (isum, imin) = q4_k_block_ints(&v, a, b, 0, 8);
        acc = libm::fmaf(isum as f32, f16_to_f32(a.d) * b.d, acc);
        accm = libm::fmaf(imin as f32, f16_to_f32(a.dmin) * b.d, accm);
    }
    acc - accm
}

/// Q4_K · Q8_K as llama.cpp's repacked 4-token gemm computes one output: as [`dot_q4_k_q8_k_gemv`] but with one
/// FMA per pair of 32-element sub-blocks (four per super-block) instead of one per super-block.
pub fn dot_q4_k_q8_k_gemm(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    let (mut acc, mut accm) = (0.0f32, 0.0f32);
    for (a, b) in x.iter().zip(y) {
        let v = q4_k_values(a);
        let (dd, dm) = (f16_to_f32(a.d) * b.d, f16_to_f32(a.dmin) * b.d);
        for p in 0..4 {
            let (isum, imin) = q4_k_block_ints(&v, a, b, 2 * p, 2 * p + 2);
            acc = libm::fmaf(isum as f32, dd, acc);
            accm = libm::fmaf(imin as f32, dm, accm);
        }
    }
    acc - accm
}

/// Q4_K · Q8_K as llama.cpp's tiled kernel computes one output (batches of 8 or more tokens when the weights are
/// not repacked): per super-block `r = d·isum`, `r = fma(-dmin, imin, r)`, `acc = fma(r, y.d, acc)`.
pub fn dot_q4_k_q8_k_tiled(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let v = q4_k_values(a);
        let (isum, imin) = q4_k_block_ints(&v, a, b, 0, 8);
        let r = f16_to_f32(a.d) * isum as f32;
        let r = libm::fmaf(-f16_to_f32(a.dmin), imin as f32, r);
        acc = libm::fmaf(r, b.d, acc);
    }
    acc
}

/// Q6_K · Q8_K as llama.cpp's tiled kernel computes one output (batches of 8 or more tokens): per super-block
/// `acc = fma(d·isum, y.d, acc)` with `isum` the exact total `Σ sc_g · Σ (q - 32)·y`.
pub fn dot_q6_k_q8_k_tiled(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let isum = q6_k_block_isum(a, b);
        acc = libm::fmaf(f16_to_f32(a.d) * isum as f32, b.d, acc);
    }
    acc
}
