//! The AVX-512 kernels for repacked Q2_K and BF16 against their scalar twins in [`crate::wide`], bit for bit, and
//! the twins against f64 references; skipped on CPUs without AVX-512 (and the `vdpbf16ps` ones without
//! AVX512-BF16).

use alloc::vec;
use alloc::vec::Vec;

use super::avx512_more_types as k;
use super::tests::data;
use super::tests_avx512::have_avx512;
use super::tests_more_types::q8k;
use crate::quant::{self, BlockQ2K, GgmlType, QK_K};
use crate::wide;

fn bf16s(v: &[f32]) -> Vec<[u8; 2]> {
    v.iter()
        .map(|&x| quant::f32_to_bf16(x).to_le_bytes())
        .collect()
}

fn f64_dot(x: &[[u8; 2]], y: &[[u8; 2]]) -> f64 {
    let h = |v: [u8; 2]| quant::bf16_to_f32(u16::from_le_bytes(v)) as f64;
    x.iter().zip(y).map(|(&a, &b)| h(a) * h(b)).sum()
}

/// The four BF16 forms (`vdpbf16ps` and AVX-512F, `ggml_vec_dot_bf16` and tinyBLAS) equal their twins bit for bit
/// at every tail length, and an f64 dot product within rounding; the operands include denormal bf16 values, which
/// `vdpbf16ps` reads as zero.
#[test]
fn bf16_dots_match_twins_bitwise() {
    for n in [
        0usize, 1, 16, 31, 32, 33, 64, 65, 127, 128, 200, 256, 576, 1024,
    ] {
        for seed in 0..4u64 {
            let mut xs = data(n, 50 + seed);
            if n > 3 && seed == 3 {
                xs[1] = 1e-39;
                xs[2] = -3e-40;
            }
            let (x, y) = (bf16s(&xs), bf16s(&data(n, 90 + seed)));
            let reference = f64_dot(&x, &y);
            let twins = [
                ("dp", wide::dot_bf16_dp(&x, &y)),
                ("f", wide::dot_bf16_f(&x, &y)),
                ("chain_dp", wide::dot_bf16_chain_dp(&x, &y)),
                ("chain_f", wide::dot_bf16_chain_f(&x, &y)),
            ];
            for (name, v) in twins {
                let counted = match name {
                    "chain_dp" => n / 32 * 32,
                    "chain_f" => n / 16 * 16,
                    _ => n,
                };
                let want = f64_dot(&x[..counted], &y[..counted]);
                assert!(
                    (v as f64 - want).abs() <= 1e-4 * (1.0 + reference.abs()) + 1e-4,
                    "{name} n={n}: {v} vs {want}"
                );
            }
            if !have_avx512() {
                continue;
            }
            // SAFETY: AVX-512 F, DQ, BW and VL (and AVX2, FMA, F16C) were detected above.
            let (f, chain_f) = unsafe { (k::dot_bf16_f(&x, &y), k::dot_bf16_chain_f(&x, &y)) };
            assert_eq!(f.to_bits(), twins[1].1.to_bits(), "f n={n}");
            assert_eq!(chain_f.to_bits(), twins[3].1.to_bits(), "chain_f n={n}");
            if k::has_bf16() {
                // SAFETY: as above, and AVX512-BF16 was detected.
                let (dp, chain_dp) =
                    unsafe { (k::dot_bf16_dp(&x, &y), k::dot_bf16_chain_dp(&x, &y)) };
                assert_eq!(dp.to_bits(), twins[0].1.to_bits(), "dp n={n}");
                assert_eq!(chain_dp.to_bits(), twins[2].1.to_bits(), "chain_dp n={n}");
            }
        }
    }
}

/// The multi-token tinyBLAS chains equal one chain per token, bit for bit (1 to 6 tokens, strided).
#[test]
fn bf16_token_chains_match_single_chains() {
    if !have_avx512() {
        return;
    }
    let n = 576;
    let x = bf16s(&data(n, 3));
    for tokens in 1..=6usize {
        let stride = n + 32;
        let y = bf16s(&data(tokens * stride, 4 + tokens as u64));
        let mut got = vec![0.0f32; tokens];
        for dp in [false, true] {
            if dp && !k::has_bf16() {
                continue;
            }
            // SAFETY: AVX-512 F, DQ, BW and VL (and AVX2, FMA, F16C) were detected above, AVX512-BF16 for `dp`.
            unsafe {
                if dp {
                    k::dots_bf16_chain_dp(&x, &y, stride, &mut got);
                } else {
                    k::dots_bf16_chain_f(&x, &y, stride, &mut got);
                }
            }
            for (j, g) in got.iter().enumerate() {
                let yj = &y[j * stride..j * stride + n];
                let want = if dp {
                    wide::dot_bf16_chain_dp(&x, yj)
                } else {
                    wide::dot_bf16_chain_f(&x, yj)
                };
                assert_eq!(
                    g.to_bits(),
                    want.to_bits(),
                    "dp {dp}, {tokens} tokens, token {j}"
                );
            }
        }
    }
}

/// `n` elements of Q2_K as random bit patterns with small, finite f16 scales.
fn random_q2_k(n: usize, seed: u64) -> Vec<BlockQ2K> {
    let t = GgmlType::Q2K;
    let mut out: Vec<u8> = data(n / t.block_len() * t.block_bytes(), seed)
        .iter()
        .map(|v| (v.to_bits() >> 3) as u8)
        .collect();
    let bs = t.block_bytes();
    for blk in out.chunks_exact_mut(bs) {
        blk[bs - 4..bs - 2].copy_from_slice(&quant::f32_to_f16(0.01));
        blk[bs - 2..].copy_from_slice(&quant::f32_to_f16(0.003));
    }
    bytemuck::cast_slice(&out).to_vec()
}

/// The repacked Q2_K kernel equals its gemm and gemv twins bit for bit for every split of a batch, and the twins
/// equal the f64 product of the dequantized weights up to the activation quantization.
#[test]
fn repacked_q2_k_matches_twins_bitwise() {
    let (rows, nb, cols) = (16usize, 3usize, 7usize);
    let w = random_q2_k(rows * nb * QK_K, 7);
    let x = data(cols * nb * QK_K, 8);
    let y = q8k(&x);
    let mut deq = vec![0.0f32; rows * nb * QK_K];
    quant::dequantize_q2_k(&w, &mut deq);
    for t in 0..cols {
        for r in 0..rows {
            let (wr, yt) = (&w[r * nb..(r + 1) * nb], &y[t * nb..(t + 1) * nb]);
            let products =
                (0..nb * QK_K).map(|e| deq[r * nb * QK_K + e] as f64 * x[t * nb * QK_K + e] as f64);
            let exact: f64 = products.clone().sum();
            let norm: f64 = products.map(f64::abs).sum();
            // The AVX2 order's scalar form has the same integer sums, folded otherwise: only rounding apart.
            let avx2_order = quant::dot_q2_k_q8_k(wr, yt) as f64;
            for v in [
                wide::dot_q2_k_q8_k_gemm(wr, yt),
                wide::dot_q2_k_q8_k_gemv(wr, yt),
            ] {
                assert!(
                    (v as f64 - avx2_order).abs() <= 1e-5 * norm,
                    "row {r} token {t}: {v} vs the AVX2 order's {avx2_order}"
                );
                // Activation quantization error: |Δx| ≤ amax/254 per element, a few % of Σ|w·x| at most here.
                assert!(
                    (v as f64 - exact).abs() <= 0.03 * norm,
                    "row {r} token {t}: {v} vs {exact} (norm {norm})"
                );
            }
        }
    }
    if !have_avx512() {
        return;
    }
    // Batches of 4 or more take the kernel's batch path, 1 to 3 tokens its per-token one.
    for (cols, gemm) in [(7, 0), (7, 4), (7, 7), (3, 0), (1, 0)] {
        let ld = rows + 3;
        let mut out = vec![0.0f32; cols * ld];
        // SAFETY: AVX-512 F, DQ, BW and VL (and AVX2, FMA, F16C) were detected above.
        unsafe { k::mat_q2_k_repacked(&w, nb, &y[..cols * nb], cols, gemm, &mut out, ld) };
        for t in 0..cols {
            for r in 0..rows {
                let (wr, yt) = (&w[r * nb..(r + 1) * nb], &y[t * nb..(t + 1) * nb]);
                let want = if t < gemm {
                    wide::dot_q2_k_q8_k_gemm(wr, yt)
                } else {
                    wide::dot_q2_k_q8_k_gemv(wr, yt)
                };
                assert_eq!(
                    out[t * ld + r].to_bits(),
                    want.to_bits(),
                    "gemm {gemm} row {r} token {t}"
                );
            }
        }
    }
}

/// The AVX-512 tiled Q5_K, Q3_K and Q2_K kernels (each block decoded once for all tokens) equal the scalar twins
/// of the tiled order, which the AVX2 kernels equal, bit for bit.
#[test]
fn tiled_k_quants_match_twins_bitwise() {
    if !have_avx512() {
        return;
    }
    let nb = 3;
    for t in [GgmlType::Q5K, GgmlType::Q3K, GgmlType::Q2K] {
        for seed in 0..3u64 {
            let w = super::tests_more_types::random_blocks(t, nb * QK_K, 20 + seed);
            for tokens in [1usize, 8, 17, 32] {
                let mut x = data(tokens * nb * QK_K, 30 + seed);
                // An outlier per token, as real activations have: some Q8_K values reach ±127.
                for (i, v) in x.iter_mut().enumerate() {
                    if i % 97 == 5 {
                        *v *= -40.0;
                    }
                }
                let y = q8k(&x);
                let mut got = vec![0.0f32; tokens];
                let want: Vec<f32> = (0..tokens)
                    .map(|c| {
                        let yc = &y[c * nb..(c + 1) * nb];
                        match t {
                            GgmlType::Q5K => quant::dot_q5_k_q8_k_tiled(quant::cast(&w), yc),
                            GgmlType::Q3K => quant::dot_q3_k_q8_k_tiled(quant::cast(&w), yc),
                            _ => quant::dot_q2_k_q8_k_tiled(quant::cast(&w), yc),
                        }
                    })
                    .collect();
                // SAFETY: AVX-512 F, DQ, BW and VL (and AVX2, FMA, F16C) were detected above.
                unsafe {
                    match t {
                        GgmlType::Q5K => k::mat_q5_k_tiled(quant::cast(&w), nb, &y, &mut got),
                        GgmlType::Q3K => k::mat_q3_k_tiled(quant::cast(&w), nb, &y, &mut got),
                        _ => k::mat_q2_k_tiled(quant::cast(&w), nb, &y, &mut got),
                    }
                }
                for (c, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "{t} seed {seed}, {tokens} tokens, token {c}"
                    );
                }
            }
        }
    }
}
