//! Scalar models of the orders llama.cpp computes in when built for a CPU with SSE4.2 and no AVX: the orders of the
//! engine's portable kernels.
//!
//! The portable kernels are what the appliance's vCPU runs under QEMU's TCG, which `cloister` gives SSE4.2 and no
//! AVX (`runner/src/qemu.rs`, `TCG_CPU`). Built for that CPU (`scripts/llamacpp.sh`, flavor `sse42`), llama.cpp
//! 0.3.36's ggml-cpu takes neither tinyBLAS (`llamafile/sgemm.cpp` needs AVX), nor its repacked or tiled quantized
//! kernels (AVX2), nor fused multiply-adds (GCC contracts nothing without `-mfma`). What it takes instead, and what
//! this module reproduces operation by operation:
//! - `vec.h` `ggml_v_expf(__m128)` with `MADD128` as a multiply then an add, in `ggml_vec_soft_max_f32` (each group
//!   of 4 lanes summed as `(v0 + v1) + (v2 + v3)`, then added to an f64 sum) and `ggml_vec_swiglu_f32`; the last
//!   `n % 4` elements through the C library's `expf`;
//! - `ggml_vec_dot_f16` with `simd-mappings.h`'s `__SSE3__` branch (`GGML_F16_STEP` 32, `GGML_F16_EPR` 4: eight
//!   4-lane accumulators, reduced pairwise, then two `hadd`s; an f64 tail) for every f16 product, batched or not;
//! - the activations quantized by `quantize_row_q8_0_ref` / `quantize_row_q8_1_ref` (`ggml-quants.c`: `d = amax /
//!   127`, `id = 1 / d`, `roundf`);
//! - `ggml_vec_dot_q4_0_q8_0`'s SSSE3 branch (`arch/x86/quants.c`), and the generic `ggml_vec_dot_*` of
//!   `ggml-cpu/quants.c` for Q4_1, Q5_0, Q8_0 (in [`crate::quant`]), Q4_K and Q6_K at every batch size (Q5_K,
//!   Q3_K, Q2_K, Q5_1 and BF16's `ggml_vec_dot_bf16` scalar loop in `more_types`);
//! - the GELU table and the rotary embedding without the FMAs GCC fuses in a build with `-mfma`
//!   (`crate::math`).
//!
//! The C library's `expf` and `sincosf` are the same as for the other builds: the harness runs llama.cpp on the
//! host, whose glibc picks its FMA variants at run time whatever llama.cpp was compiled for.

use crate::quant::{
    self, f16_to_f32, BlockQ4K, BlockQ4_0, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1, QK, QK_K,
};

mod more_types;
pub use more_types::*;

/// One lane of ggml's SSE2 `ggml_v_expf`: [`quant::expf_ggml`]'s steps with each fused multiply-add a multiply and
/// an add (`MADD128(x, y, z)` is `x·y + z`, `NMADD128(x, y, z)` is `z - x·y` without FMA).
pub fn expf4(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x * f32::from_bits(0x3fb8_aa3b) + r; // log2(e)
    let n = z - r;
    let b = (x - n * f32::from_bits(0x3f31_7200)) - n * f32::from_bits(0x35bf_be8e); // ln2 hi, lo
    let e = z.to_bits().wrapping_shl(23);
    let k = f32::from_bits(e.wrapping_add(1.0f32.to_bits()));
    let u = b * b;
    let c0 = f32::from_bits(0x3c07_2010); // 0x1.0e4020p-7
    let c1 = f32::from_bits(0x3d2b_9f17); // 0x1.573e2ep-5
    let c2 = f32::from_bits(0x3e2a_af33); // 0x1.555e66p-3
    let c3 = f32::from_bits(0x3eff_fedb); // 0x1.fffdb6p-2
    let c4 = f32::from_bits(0x3f7f_fff6); // 0x1.ffffecp-1
    let j = ((c0 * b + c1) * u + (c2 * b + c3)) * u + c4 * b;
    // The vector code takes the blend below for all four lanes when one needs it; for a lane with |n| <= 126 the
    // blend yields `k·j + k`, the same value as the fast path's `j·k + k`.
    if n.abs() <= 126.0 {
        return j * k + k;
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        (s2 * j + s2) * s1
    }
}

/// Sum of one 4-lane group as SSE without AVX reduces it (`shuffle`, `movehl`, `add_ss`): `(v0 + v1) + (v2 + v3)`.
#[inline]
fn hsum4(l: &[f32; 4]) -> f32 {
    (l[0] + l[1]) + (l[2] + l[3])
}

/// Softmax numerator as ggml's SSE2 `ggml_vec_soft_max_f32`: `x[i] = expf(x[i] - max)` by [`expf4`] in groups of
/// 4, each group's sum added to an f64 sum, the rest by the C library's `expf`; returns the sum.
pub fn softmax_exp(x: &mut [f32], max: f32) -> f64 {
    quant::softmax_exp_lanes::<4>(x, max, expf4, hsum4)
}

/// `gate[i] = silu(gate[i]) * up[i]` as ggml's SSE2 `ggml_vec_swiglu_f32`: `x / (1 + v_expf(0 - x))` in groups of
/// 4, `ggml_silu_f32` (the C library's `expf`) for the rest.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    quant::swiglu_lanes::<4>(gate, up, expf4);
}

/// f16 dot product as `ggml_vec_dot_f16` computes it with SSE3: eight 4-lane accumulators over steps of 32 (each
/// product exact in f32, so the multiply-then-add is [`quant::fma_f16`]), reduced pairwise (4 + 4, 2 + 2, 1 + 1),
/// the last accumulator's lanes as `(l0 + l1) + (l2 + l3)` (two `hadd`s), plus an f64 tail for the last
/// `len % 32` elements.
pub fn dot_f16_ggml(x: &[u16], y: &[u16]) -> f32 {
    let h = |v: u16| half::f16::from_bits(v).to_f32();
    let n = x.len().min(y.len());
    let np = n / 32 * 32;
    let mut acc = [[0.0f32; 4]; 8];
    accumulate_steps(&mut acc, &x[..np], &y[..np]);
    let mut sum = reduce8x4(acc) as f64;
    for i in np..n {
        sum += (h(x[i]) * h(y[i])) as f64;
    }
    sum as f32
}

/// [`dot_f16_ggml`] of `x` and `y` (equal lengths, a multiple of 32) when `y` is zero from `live` on, computed
/// over the first `live` elements only: each accumulator gets the same nonzero products in the same order, and
/// adding a zero product leaves an accumulator unchanged (one that starts at +0 never becomes -0), so the result is
/// the same bits. Attention's probability rows are zero past the query's position.
pub fn dot_f16_ggml_live(x: &[u16], y: &[u16], live: usize) -> f32 {
    debug_assert!(x.len() == y.len() && x.len().is_multiple_of(32) && live <= x.len());
    let whole = live / 32 * 32;
    let mut acc = [[0.0f32; 4]; 8];
    accumulate_steps(&mut acc, &x[..whole], &y[..whole]);
    // The step `live` falls in, up to `live`.
    for (e, (&a, &b)) in x[whole..live].iter().zip(&y[whole..live]).enumerate() {
        let lane = &mut acc[e / 4][e % 4];
        *lane = quant::fma_f16(a, b, *lane);
    }
    reduce8x4(acc)
}

/// `ggml_vec_dot_f16`'s SSE3 loop over whole steps of 32 (`x.len()` a multiple of 32): element `4j + l` of each
/// step into lane l of accumulator j.
#[inline]
fn accumulate_steps(acc: &mut [[f32; 4]; 8], x: &[u16], y: &[u16]) {
    for (xs, ys) in x.chunks_exact(32).zip(y.chunks_exact(32)) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, lane) in a.iter_mut().enumerate() {
                *lane = quant::fma_f16(xs[4 * j + l], ys[4 * j + l], *lane);
            }
        }
    }
}

/// `GGML_F32x4_REDUCE` of eight 4-lane accumulators: halves added pairwise (4 + 4, 2 + 2, 1 + 1), then the last
/// one's lanes as `(l0 + l1) + (l2 + l3)` (two `hadd`s).
fn reduce8x4(mut acc: [[f32; 4]; 8]) -> f32 {
    for width in [4, 2, 1] {
        for i in 0..width {
            let upper = acc[i + width];
            for (lane, u) in acc[i].iter_mut().zip(upper) {
                *lane += u;
            }
        }
    }
    hsum4(&acc[0])
}

/// The scale of an 8-bit block with largest magnitude `amax` and its inverse, as `quantize_row_q8_0_ref` computes
/// them (the AVX2 quantizer divides 127 by `amax` instead: [`quant::quantize_q8_0`]).
#[inline]
fn q8_scale_ref(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

/// `roundf`: to nearest, halfway cases away from zero, as `i8` (|v| ≤ 127.5 here, in range).
#[inline]
fn round_i8(v: f32) -> i8 {
    libm::roundf(v) as i8
}

/// f32 → Q8_0 blocks as `quantize_row_q8_0_ref` (length a multiple of 32).
pub fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    quant::quantize_q8_0_as(x, out, q8_scale_ref, round_i8);
}

/// f32 → Q8_1 blocks as `quantize_row_q8_1_ref` (length a multiple of 32); `s = f16(d · Σ q)`.
pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    quant::quantize_q8_1_as(x, out, q8_scale_ref, round_i8);
}

/// The four exact 4-element sums `_mm_madd_epi16(1, _mm_maddubs_epi16(..))` gives for 16 weights and activations.
#[inline]
fn pair_sums(w: impl Fn(usize) -> i32, y: &[i8]) -> [f32; 4] {
    core::array::from_fn(|l| (4 * l..4 * l + 4).map(|e| w(e) * y[e] as i32).sum::<i32>() as f32)
}

/// Q4_0 · Q8_0 as `ggml_vec_dot_q4_0_q8_0`'s SSSE3 branch: blocks in pairs, four 4-lane accumulators (block A's low
/// and high nibbles, block B's), each lane `acc += d·s` (a multiply, then an add) with `s` an exact 4-element sum,
/// reduced by `hsum_float_4x4`; an odd last block as the generic code, `sumf += sumi·dx·dy`.
pub fn dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = [[0.0f32; 4]; 4];
    let pairs = x.len() / 2;
    for p in 0..pairs {
        for (half, (a, b)) in x[2 * p..2 * p + 2]
            .iter()
            .zip(&y[2 * p..2 * p + 2])
            .enumerate()
        {
            let d = f16_to_f32(a.d) * f16_to_f32(b.d);
            let lo = pair_sums(|e| (a.qs[e] & 0xF) as i32 - 8, &b.qs[..16]);
            let hi = pair_sums(|e| (a.qs[e] >> 4) as i32 - 8, &b.qs[16..]);
            for l in 0..4 {
                acc[2 * half][l] += d * lo[l];
                acc[2 * half + 1][l] += d * hi[l];
            }
        }
    }
    let r: [f32; 4] = core::array::from_fn(|i| (acc[i][0] + acc[i][1]) + (acc[i][2] + acc[i][3]));
    let mut sum = (r[0] + r[1]) + (r[2] + r[3]);
    for (a, b) in x.iter().zip(y).skip(2 * pairs) {
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            isum += ((a.qs[j] & 0xF) as i32 - 8) * b.qs[j] as i32;
            isum += ((a.qs[j] >> 4) as i32 - 8) * b.qs[j + QK / 2] as i32;
        }
        sum += isum as f32 * f16_to_f32(a.d) * f16_to_f32(b.d);
    }
    sum
}

/// Q4_K · Q8_K as the generic `ggml_vec_dot_q4_K_q8_K`: per block, eight exact lanes `Σ_j sc_j · Σ_g q·y` over
/// element `8g + l` of each 32-element sub-block j, folded as `sums[l] += d·lane` (a multiply, then an add) and
/// `sumf -= dmin·Σ m·bsum`; the eight sums added to `sumf` in order at the end.
pub fn dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let v = quant::q4_k_values(a);
        let mut lanes = [0i32; 8];
        let mut msum = 0i32;
        for j in 0..QK_K / 32 {
            let (sc, m) = quant::scale_min_k4(j, &a.scales);
            for g in 0..4 {
                for (l, lane) in lanes.iter_mut().enumerate() {
                    let e = 32 * j + 8 * g + l;
                    *lane += sc as i32 * (v[e] as i32 * b.qs[e] as i32);
                }
            }
            msum += m as i32 * (b.bsums[2 * j] as i32 + b.bsums[2 * j + 1] as i32);
        }
        let d = f16_to_f32(a.d) * b.d;
        for (s, &l) in sums.iter_mut().zip(&lanes) {
            *s += d * l as f32;
        }
        sumf -= f16_to_f32(a.dmin) * b.d * msum as f32;
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

/// Q6_K · Q8_K as the generic `ggml_vec_dot_q6_K_q8_K`: per block, eight exact lanes `Σ_g sc_g · Σ_h (q - 32)·y`
/// over element `16g + 8h + l`, folded as `sums[l] += d·lane`; the eight sums added in order at the end.
pub fn dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let mut sums = [0.0f32; 8];
    for (a, b) in x.iter().zip(y) {
        let v = quant::q6_k_values(a);
        let mut lanes = [0i32; 8];
        for g in 0..QK_K / 16 {
            let sc = a.scales[g] as i32;
            for h in 0..2 {
                for (l, lane) in lanes.iter_mut().enumerate() {
                    let e = 16 * g + 8 * h + l;
                    *lane += sc * ((v[e] as i32 - 32) * b.qs[e] as i32);
                }
            }
        }
        let d = f16_to_f32(a.d) * b.d;
        for (s, &l) in sums.iter_mut().zip(&lanes) {
            *s += d * l as f32;
        }
    }
    let mut sumf = 0.0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::f32_to_f16;

    /// A small xorshift generator for test data.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// An f16 in [-2, 2) (bits), never a NaN or an infinity.
        fn f16(&mut self) -> u16 {
            let v = (self.next() % 4096) as f32 / 1024.0 - 2.0;
            u16::from_le_bytes(f32_to_f16(v))
        }
    }

    #[test]
    fn the_live_dot_equals_the_whole_row_with_zeros_past_live() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for len in [32usize, 64, 96, 256] {
            for live in [1usize, 3, 4, 31, 32, 33, len - 1, len] {
                if live > len {
                    continue;
                }
                let x: Vec<u16> = (0..len).map(|_| rng.f16()).collect();
                let y: Vec<u16> = (0..len)
                    .map(|i| if i < live { rng.f16() } else { 0 })
                    .collect();
                let whole = dot_f16_ggml(&x, &y);
                let skipped = dot_f16_ggml_live(&x, &y, live);
                assert_eq!(whole.to_bits(), skipped.to_bits(), "len {len}, live {live}");
            }
        }
    }

    #[test]
    fn masked_scores_add_nothing_so_a_prefix_of_whole_groups_gives_the_same_sum() {
        assert_eq!(expf4(f32::NEG_INFINITY).to_bits(), 0);
        let mut rng = Rng(7);
        for live in [1usize, 4, 5, 8, 30] {
            let mut whole: Vec<f32> = (0..64)
                .map(|i| {
                    if i < live {
                        (rng.next() % 2000) as f32 / 100.0 - 10.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .collect();
            let max = whole[..live]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            let mut prefix = whole.clone();
            let end = live.div_ceil(4) * 4;
            let a = softmax_exp(&mut whole, max);
            let b = softmax_exp(&mut prefix[..end], max);
            assert_eq!(a.to_bits(), b.to_bits(), "live {live}");
            assert_eq!(&whole[..end], &prefix[..end]);
            assert!(whole[end..].iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn expf4_is_close_to_exp_and_differs_from_the_fused_form_somewhere() {
        let mut differ = 0;
        for i in -8700..8800 {
            let x = i as f32 / 100.0;
            let (e, exact) = (expf4(x), libm::exp(x as f64));
            assert!(
                ((e as f64 - exact) / exact).abs() < 4e-7,
                "{x}: {e} vs {exact}"
            );
            differ += usize::from(e.to_bits() != quant::expf_ggml(x).to_bits());
        }
        // Without FMA the polynomial rounds differently: the SSE build's numbers are not the AVX2 build's.
        assert!(differ > 0);
    }

    #[test]
    fn the_reference_quantizer_rounds_halves_away_from_zero() {
        // amax 127 gives d = 1 and id = 1: 2.5 is a halfway case.
        let mut x = [0.0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        let mut out = [BlockQ8_0 {
            d: [0; 2],
            qs: [0; QK],
        }];
        quantize_q8_0(&x, &mut out);
        assert_eq!(&out[0].qs[..3], &[127, 3, -3]);
        // The AVX2 quantizer rounds to even.
        quant::quantize_q8_0(&x, &mut out);
        assert_eq!(&out[0].qs[..3], &[127, 2, -2]);
    }

    #[test]
    fn the_k_quant_and_q4_0_orders_compute_the_dot_product() {
        // Against the AVX2 build's orders (other roundings of the same exact products): close, not equal.
        let mut rng = Rng(3);
        let nb = 4;
        let bytes =
            |n: usize, rng: &mut Rng| -> Vec<u8> { (0..n).map(|_| rng.next() as u8).collect() };
        let mut q8k: Vec<BlockQ8K> = bytemuck::cast_slice::<u8, BlockQ8K>(&bytes(
            nb * core::mem::size_of::<BlockQ8K>(),
            &mut rng,
        ))
        .to_vec();
        for b in &mut q8k {
            b.d = 0.01;
            for g in 0..QK_K / 16 {
                b.bsums[g] = b.qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
            }
        }
        let mut q4k: Vec<BlockQ4K> = bytemuck::cast_slice::<u8, BlockQ4K>(&bytes(
            nb * core::mem::size_of::<BlockQ4K>(),
            &mut rng,
        ))
        .to_vec();
        for b in &mut q4k {
            b.d = f32_to_f16(0.02);
            b.dmin = f32_to_f16(0.01);
        }
        let (ours, avx2) = (dot_q4_k_q8_k(&q4k, &q8k), quant::dot_q4_k_q8_k(&q4k, &q8k));
        assert!(
            (ours - avx2).abs() <= 1e-4 * avx2.abs().max(1.0),
            "{ours} vs {avx2}"
        );
        let mut q6k: Vec<BlockQ6K> = bytemuck::cast_slice::<u8, BlockQ6K>(&bytes(
            nb * core::mem::size_of::<BlockQ6K>(),
            &mut rng,
        ))
        .to_vec();
        for b in &mut q6k {
            b.d = f32_to_f16(0.02);
        }
        let (ours, avx2) = (dot_q6_k_q8_k(&q6k, &q8k), quant::dot_q6_k_q8_k(&q6k, &q8k));
        assert!(
            (ours - avx2).abs() <= 1e-4 * avx2.abs().max(1.0),
            "{ours} vs {avx2}"
        );
        let n0 = 5; // odd: the last block goes through the generic step
        let mut q40: Vec<BlockQ4_0> = bytemuck::cast_slice::<u8, BlockQ4_0>(&bytes(
            n0 * core::mem::size_of::<BlockQ4_0>(),
            &mut rng,
        ))
        .to_vec();
        let mut q80: Vec<BlockQ8_0> = bytemuck::cast_slice::<u8, BlockQ8_0>(&bytes(
            n0 * core::mem::size_of::<BlockQ8_0>(),
            &mut rng,
        ))
        .to_vec();
        for (a, b) in q40.iter_mut().zip(&mut q80) {
            a.d = f32_to_f16(0.03);
            b.d = f32_to_f16(0.05);
        }
        let (ours, generic) = (
            dot_q4_0_q8_0(&q40, &q80),
            quant::dot_q4_0_q8_0_generic(&q40, &q80),
        );
        assert!(
            (ours - generic).abs() <= 1e-4 * generic.abs().max(1.0),
            "{ours} vs {generic}"
        );
    }
}
