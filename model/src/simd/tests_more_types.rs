//! Q5_K, Q5_1, Q3_K, Q2_K and BF16: the AVX2 kernels equal their scalar twins bit for bit (both reproduce
//! llama.cpp's AVX2 operation order), and the scalar twins equal the f64 dot product of the dequantized weights up
//! to the activation quantization error; the portable kernels' models of llama.cpp's SSE4.2 build (`crate::sse`)
//! agree with both.

use alloc::vec;
use alloc::vec::Vec;

use bytemuck::Zeroable;

use super::avx2;
use super::tests::{data, have_avx2};
use crate::quant::{self, *};

/// `n` elements of weight type `t` as random bit patterns (valid blocks for every format here) with small, finite
/// f16 scales.
pub(super) fn random_blocks(t: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let mut out: Vec<u8> = data(n / t.block_len() * t.block_bytes(), seed)
        .iter()
        .map(|v| (v.to_bits() >> 3) as u8)
        .collect();
    let bs = t.block_bytes();
    for blk in out.chunks_exact_mut(bs) {
        let (d, dmin) = (quant::f32_to_f16(0.01), quant::f32_to_f16(0.003));
        match t {
            GgmlType::Q5K | GgmlType::Q4K => {
                blk[0..2].copy_from_slice(&d);
                blk[2..4].copy_from_slice(&dmin);
            }
            GgmlType::Q5_1 => {
                blk[0..2].copy_from_slice(&d);
                blk[2..4].copy_from_slice(&quant::f32_to_f16(-0.05));
            }
            GgmlType::Q3K | GgmlType::Q6K => blk[bs - 2..].copy_from_slice(&d),
            GgmlType::Q2K => {
                blk[bs - 4..bs - 2].copy_from_slice(&d);
                blk[bs - 2..].copy_from_slice(&dmin);
            }
            _ => unreachable!(),
        }
    }
    out
}

pub(super) fn q8k(x: &[f32]) -> Vec<BlockQ8K> {
    let mut q = vec![BlockQ8K::zeroed(); x.len() / QK_K];
    quant::quantize_q8_k(x, &mut q);
    q
}

/// Scalar and (when the CPU has it) AVX2 results of the single-row dot and of the tiled order for weight type `t`
/// against `x`; `n` elements.
fn dots(t: GgmlType, w: &[u8], x: &[f32]) -> [(f32, Option<f32>); 2] {
    let y = q8k(x);
    let nb = x.len() / QK_K;
    let tiled = |scalar: f32, simd: &dyn Fn(&mut [f32])| {
        let mut o = [0.0f32];
        (
            scalar,
            have_avx2().then(|| {
                simd(&mut o);
                o[0]
            }),
        )
    };
    match t {
        GgmlType::Q5K => {
            let w = quant::cast(w);
            [
                (
                    quant::dot_q5_k_q8_k(w, &y),
                    // SAFETY: only called when AVX2, FMA and F16C were detected.
                    have_avx2().then(|| unsafe { avx2::dot_q5_k_q8_k(w, &y) }),
                ),
                // SAFETY: only called when AVX2, FMA and F16C were detected.
                tiled(quant::dot_q5_k_q8_k_tiled(w, &y), &|o| unsafe {
                    avx2::mat_q5_k_tiled(w, nb, &y, o)
                }),
            ]
        }
        GgmlType::Q3K => {
            let w = quant::cast(w);
            [
                (
                    quant::dot_q3_k_q8_k(w, &y),
                    // SAFETY: only called when AVX2, FMA and F16C were detected.
                    have_avx2().then(|| unsafe { avx2::dot_q3_k_q8_k(w, &y) }),
                ),
                // SAFETY: only called when AVX2, FMA and F16C were detected.
                tiled(quant::dot_q3_k_q8_k_tiled(w, &y), &|o| unsafe {
                    avx2::mat_q3_k_tiled(w, nb, &y, o)
                }),
            ]
        }
        GgmlType::Q2K => {
            let w = quant::cast(w);
            [
                (
                    quant::dot_q2_k_q8_k(w, &y),
                    // SAFETY: only called when AVX2, FMA and F16C were detected.
                    have_avx2().then(|| unsafe { avx2::dot_q2_k_q8_k(w, &y) }),
                ),
                // SAFETY: only called when AVX2, FMA and F16C were detected.
                tiled(quant::dot_q2_k_q8_k_tiled(w, &y), &|o| unsafe {
                    avx2::mat_q2_k_tiled(w, nb, &y, o)
                }),
            ]
        }
        GgmlType::Q5_1 => {
            let w = quant::cast(w);
            let mut q = vec![BlockQ8_1::zeroed(); x.len() / QK];
            quant::quantize_q8_1(x, &mut q);
            let r = (
                quant::dot_q5_1_q8_1(w, &q),
                // SAFETY: only called when AVX2, FMA and F16C were detected.
                have_avx2().then(|| unsafe { avx2::dot_q5_1_q8_1(w, &q) }),
            );
            [r, r]
        }
        _ => unreachable!(),
    }
}

/// The f64 dot product of `w` and `x`, and the f64 sum of the products' magnitudes (the scale of its rounding).
fn exact_and_norm(w: &[f32], x: &[f32]) -> (f64, f64) {
    let products = w.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64);
    (products.clone().sum(), products.map(f64::abs).sum())
}

#[test]
fn new_quant_dots_match_scalar_bitwise_and_f64() {
    let n = 1024;
    for t in [GgmlType::Q5K, GgmlType::Q5_1, GgmlType::Q3K, GgmlType::Q2K] {
        for seed in 0..4 {
            let x = data(n, 3 + seed);
            let w = random_blocks(t, n, 5 + seed);
            let mut wf = vec![0.0; n];
            quant::dequantize(t, &w, &mut wf).unwrap();
            let (exact, norm) = exact_and_norm(&wf, &x);
            for (order, (scalar, simd)) in dots(t, &w, &x).into_iter().enumerate() {
                // Activation quantization error: |Δx| ≤ amax/254 per element, ~1% of Σ|w·x| at most here.
                assert!(
                    (scalar as f64 - exact).abs() <= 0.01 * norm,
                    "{t} order {order}: scalar {scalar} vs f64 {exact} (norm {norm})"
                );
                if let Some(simd) = simd {
                    assert_eq!(
                        simd.to_bits(),
                        scalar.to_bits(),
                        "{t} order {order}: avx2 {simd} vs scalar {scalar}"
                    );
                }
            }
        }
    }
}

#[test]
fn bf16_dots_match_scalar_bitwise_and_f64() {
    for n in [256, 64 + 8, 1000] {
        let x: Vec<u16> = data(n, 11).iter().map(|&v| quant::f32_to_bf16(v)).collect();
        let y: Vec<u16> = data(n, 12).iter().map(|&v| quant::f32_to_bf16(v)).collect();
        let exact: f64 = x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| quant::bf16_to_f32(a) as f64 * quant::bf16_to_f32(b) as f64)
            .sum();
        let (xb, yb): (&[[u8; 2]], &[[u8; 2]]) =
            (bytemuck::cast_slice(&x), bytemuck::cast_slice(&y));
        let scalar = quant::dot_bf16(xb, yb);
        assert!(
            (scalar as f64 - exact).abs() < 1e-3,
            "{n}: {scalar} vs {exact}"
        );
        if have_avx2() {
            // SAFETY: AVX2, FMA and F16C were detected.
            let simd = unsafe { avx2::dot_bf16(xb, yb) };
            assert_eq!(simd.to_bits(), scalar.to_bits(), "{n}: {simd} vs {scalar}");
            // A row at an odd address (a GGUF file with `general.alignment` 1) is read in place all the same.
            let mut odd = vec![0u8];
            odd.extend_from_slice(bytemuck::cast_slice(&x));
            // SAFETY: as above.
            let shifted = unsafe { avx2::dot_bf16(quant::cast(&odd[1..]), yb) };
            assert_eq!(shifted.to_bits(), scalar.to_bits(), "{n}: odd address");
        }
    }
}

#[test]
fn bf16_conversion_rounds_to_nearest_even() {
    assert_eq!(quant::f32_to_bf16(1.0), 0x3f80);
    // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
    assert_eq!(quant::f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
    assert_eq!(quant::f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
    assert!(quant::bf16_to_f32(quant::f32_to_bf16(f32::NAN)).is_nan());
    assert_eq!(quant::bf16_to_f32(0xc040), -3.0);
}

/// The layouts' element orders, against ggml's reference dequantizers written out for one block each.
#[test]
fn dequantizers_follow_ggml_reference_order() {
    // Q2_K: element 128h + 32k + l is bits 2k of qs[32h + l], sub-block (16 elements) scale/min nibbles.
    let mut b = BlockQ2K::zeroed();
    b.qs[33] = 0b10_01_11_00;
    b.scales[8 + 2 + 1] = 0x21; // sub-block of element 128 + 32 + 1 + 16 = 177
    b.scales[8 + 4] = 0x02;
    b.d = quant::f32_to_f16(1.0);
    b.dmin = quant::f32_to_f16(0.5);
    let mut o = vec![0.0; QK_K];
    quant::dequantize(GgmlType::Q2K, bytemuck::bytes_of(&b), &mut o).unwrap();
    // Element 128 + 32·1 + 1 = 161 (k = 1: bits 2-3 = 0b11 = 3) is in sub-block 10 (scales[10] = 0).
    assert_eq!(o[161], 0.0);
    // Element 128 + 64 + 1 = 193 (k = 2: bits 4-5 = 0b01) is in sub-block 12: 2·1 - 0.
    assert_eq!(o[193], 2.0);
    // Sub-block 11 (elements 176..192): scale 1, min 2 → q - 1.
    assert_eq!(o[177], -1.0);

    // Q3_K: scale i = low nibble i/8 of byte i%8 | bits 2(i/4) of byte 8 + i%4, minus 32.
    let mut s = [0u8; 12];
    s[5] = 0x30; // scale 13: low nibble 3
    s[8 + 1] = 0b10 << 6; // scale 13: top bits 2 → 32 + 3 - 32 = 3
    assert_eq!(quant::q3_k_scales(&s)[13], 3);
    assert_eq!(quant::q3_k_scales(&s)[0], -32);
}

/// Q5_1 through the 32-element formats' tiles (decode rows and prefill tiles) equals the single-row dot product bit
/// for bit, for every shape of rows and tokens the tiles split.
#[test]
fn q5_1_tiles_equal_row_dots_bitwise() {
    if !have_avx2() {
        return;
    }
    let (cols, nb) = (128, 4);
    for rows in [1usize, 2, 3, 5, 8, 9] {
        for batch in [1usize, 2, 3, 4, 5, 9] {
            let x = data(cols * batch, 11 + batch as u64);
            let mut q = vec![BlockQ8_1::zeroed(); nb * batch];
            quant::quantize_q8_1(&x, &mut q);
            let (mut d, mut s) = (vec![0.0; nb * batch], vec![0.0; nb * batch]);
            for t in 0..batch {
                for k in 0..nb {
                    d[k * batch + t] = f16_to_f32(q[t * nb + k].d);
                    s[k * batch + t] = f16_to_f32(q[t * nb + k].s);
                }
            }
            let y = super::ActTile {
                qs: &q[..],
                d: &d,
                s: &s,
                batch,
                col0: 0,
            };
            let wb = random_blocks(GgmlType::Q5_1, cols * rows, 5 + rows as u64);
            let w: &[BlockQ5_1] = quant::cast(&wb);
            let mut got = vec![0.0f32; rows * batch];
            let mut work = vec![0.0; super::batch_work_len(cols)];
            super::mat_q5_1(w, nb, &y, batch, &mut got, rows, &mut work);
            for r in 0..rows {
                for c in 0..batch {
                    let (wr, yc) = (&w[r * nb..(r + 1) * nb], &q[c * nb..(c + 1) * nb]);
                    let want = quant::dot_q5_1_q8_1(wr, yc);
                    assert_eq!(
                        got[c * rows + r].to_bits(),
                        want.to_bits(),
                        "rows {rows} batch {batch}: row {r} token {c}"
                    );
                }
            }
        }
    }
}

/// The portable kernels' models of llama.cpp's SSE4.2 build (`crate::sse`, generic orders) compute the same sums as
/// the AVX2 twins in another order: equal to the f64 dot product up to the activation quantization error, and to the
/// AVX2 order up to f32 rounding. BF16's is the f64 sum of exact products in element order, rounded once.
#[test]
fn sse_models_of_the_new_types_agree_with_avx2_order_and_f64() {
    let n = 1024;
    for t in [GgmlType::Q5K, GgmlType::Q5_1, GgmlType::Q3K, GgmlType::Q2K] {
        for seed in 0..4 {
            let x = data(n, 3 + seed);
            let w = random_blocks(t, n, 5 + seed);
            let mut wf = vec![0.0; n];
            quant::dequantize(t, &w, &mut wf).unwrap();
            let (exact, norm) = exact_and_norm(&wf, &x);
            let y = q8k(&x);
            let mut y1 = vec![BlockQ8_1::zeroed(); n / QK];
            crate::sse::quantize_q8_1(&x, &mut y1);
            let (sse, avx2_order) = match t {
                GgmlType::Q5K => (
                    crate::sse::dot_q5_k_q8_k(quant::cast(&w), &y),
                    quant::dot_q5_k_q8_k(quant::cast(&w), &y),
                ),
                GgmlType::Q5_1 => (
                    crate::sse::dot_q5_1_q8_1(quant::cast(&w), &y1),
                    quant::dot_q5_1_q8_1(quant::cast(&w), &y1),
                ),
                GgmlType::Q3K => (
                    crate::sse::dot_q3_k_q8_k(quant::cast(&w), &y),
                    quant::dot_q3_k_q8_k(quant::cast(&w), &y),
                ),
                GgmlType::Q2K => (
                    crate::sse::dot_q2_k_q8_k(quant::cast(&w), &y),
                    quant::dot_q2_k_q8_k(quant::cast(&w), &y),
                ),
                _ => unreachable!(),
            };
            assert!(
                (sse as f64 - exact).abs() <= 0.01 * norm,
                "{t}: sse {sse} vs f64 {exact} (norm {norm})"
            );
            assert!(
                (sse as f64 - avx2_order as f64).abs() <= 1e-5 * norm,
                "{t}: sse {sse} vs avx2 order {avx2_order} (norm {norm})"
            );
        }
    }
    for n in [256, 64 + 8, 1000] {
        let x: Vec<u16> = data(n, 11).iter().map(|&v| quant::f32_to_bf16(v)).collect();
        let y: Vec<u16> = data(n, 12).iter().map(|&v| quant::f32_to_bf16(v)).collect();
        let mut exact = 0.0f64;
        for (&a, &b) in x.iter().zip(&y) {
            exact += quant::bf16_to_f32(a) as f64 * quant::bf16_to_f32(b) as f64;
        }
        let sse = crate::sse::dot_bf16(bytemuck::cast_slice(&x), bytemuck::cast_slice(&y));
        assert_eq!(
            sse.to_bits(),
            (exact as f32).to_bits(),
            "{n}: {sse} vs {exact}"
        );
    }
}
