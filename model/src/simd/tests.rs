//! SIMD kernels against their scalar twins, and both against an f32 reference.

use alloc::vec;
use alloc::vec::Vec;

use crate::quant::{self, *};

use bytemuck::Zeroable;

use super::avx2;

/// Deterministic pseudo-random floats with a few large outliers (as real activations have).
pub(super) fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            if i % 97 == 0 {
                v * 40.0
            } else {
                v
            }
        })
        .collect()
}

pub(super) fn have_avx2() -> bool {
    super::detect_avx2()
}

/// Quantizes `w` to weight type `t` by a simple round-to-nearest encoder written for these tests.
fn encode_weights(t: GgmlType, w: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    match t {
        GgmlType::Q8_0 => {
            let mut b = vec![
                BlockQ8_0 {
                    d: [0; 2],
                    qs: [0; 32]
                };
                w.len() / 32
            ];
            quant::quantize_q8_0(w, &mut b);
            out.extend_from_slice(bytemuck::cast_slice(&b));
        }
        _ => {
            // Random bit patterns are valid blocks for every format; keep f16 scales small and finite.
            let n = w.len() / t.block_len() * t.block_bytes();
            let bytes: Vec<u8> = data(n, 7)
                .iter()
                .map(|v| (v.to_bits() >> 3) as u8)
                .collect();
            out.extend_from_slice(&bytes);
            let bs = t.block_bytes();
            for blk in out.chunks_exact_mut(bs) {
                let scale = quant::f32_to_f16(0.01);
                let (a, b) = match t {
                    GgmlType::Q6K => (bs - 2, bs),
                    _ => (0, 2),
                };
                blk[a..b].copy_from_slice(&scale);
                if matches!(t, GgmlType::Q4_1 | GgmlType::Q4K) {
                    blk[2..4].copy_from_slice(&quant::f32_to_f16(0.003));
                }
            }
        }
    }
    out
}

#[test]
fn quantizers_match_scalar_bitwise() {
    if !have_avx2() {
        return;
    }
    let x = data(1024, 1);
    let mut a = vec![
        BlockQ8_0 {
            d: [0; 2],
            qs: [0; 32]
        };
        32
    ];
    let mut b = a.clone();
    quant::quantize_q8_0(&x, &mut a);
    // SAFETY: AVX2, FMA and F16C were detected above.
    unsafe { avx2::quantize_q8_0(&x, &mut b) };
    assert_eq!(
        bytemuck::cast_slice::<_, u8>(&a),
        bytemuck::cast_slice::<_, u8>(&b)
    );
    let mut a = vec![
        BlockQ8_1 {
            d: [0; 2],
            s: [0; 2],
            qs: [0; 32]
        };
        32
    ];
    let mut b = a.clone();
    quant::quantize_q8_1(&x, &mut a);
    // SAFETY: as above.
    unsafe { avx2::quantize_q8_1(&x, &mut b) };
    assert_eq!(
        bytemuck::cast_slice::<_, u8>(&a),
        bytemuck::cast_slice::<_, u8>(&b)
    );
}

fn check(t: GgmlType) {
    let n = 1024;
    let x = data(n, 3);
    let wbytes = encode_weights(t, &data(n, 5));
    let mut wf = vec![0.0; n];
    quant::dequantize(t, &wbytes, &mut wf).unwrap();
    let exact: f64 = wf.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
    let norm: f64 = wf
        .iter()
        .zip(&x)
        .map(|(&a, &b)| (a as f64 * b as f64).abs())
        .sum();
    let mut q80 = vec![
        BlockQ8_0 {
            d: [0; 2],
            qs: [0; 32]
        };
        n / 32
    ];
    let mut q81 = vec![
        BlockQ8_1 {
            d: [0; 2],
            s: [0; 2],
            qs: [0; 32]
        };
        n / 32
    ];
    let mut q8k = vec![
        BlockQ8K {
            d: 0.0,
            qs: [0; 256],
            bsums: [0; 16]
        };
        n / 256
    ];
    quant::quantize_q8_0(&x, &mut q80);
    quant::quantize_q8_1(&x, &mut q81);
    quant::quantize_q8_k(&x, &mut q8k);
    // SAFETY (every avx2 call below): only reached when AVX2, FMA and F16C were detected.
    let (scalar, simd) = match t {
        GgmlType::Q4_0 => {
            let w = quant::cast(&wbytes);
            (
                quant::dot_q4_0_q8_0(w, &q80),
                // SAFETY: only called when AVX2, FMA and F16C were detected.
                have_avx2().then(|| unsafe { avx2::dot_q4_0_q8_0(w, &q80) }),
            )
        }
        GgmlType::Q4_1 => {
            let w = quant::cast(&wbytes);
            (
                quant::dot_q4_1_q8_1(w, &q81),
                // SAFETY: only called when AVX2, FMA and F16C were detected.
                have_avx2().then(|| unsafe { avx2::dot_q4_1_q8_1(w, &q81) }),
            )
        }
        GgmlType::Q5_0 => {
            let w = quant::cast(&wbytes);
            (
                quant::dot_q5_0_q8_0(w, &q80),
                // SAFETY: only called when AVX2, FMA and F16C were detected.
                have_avx2().then(|| unsafe { avx2::dot_q5_0_q8_0(w, &q80) }),
            )
        }
        GgmlType::Q8_0 => {
            let w = quant::cast(&wbytes);
            (
                quant::dot_q8_0_q8_0(w, &q80),
                // SAFETY: only called when AVX2, FMA and F16C were detected.
                have_avx2().then(|| unsafe { avx2::dot_q8_0_q8_0(w, &q80) }),
            )
        }
        GgmlType::Q4K => {
            let w = quant::cast(&wbytes);
            (
                quant::dot_q4_k_q8_k(w, &q8k),
                // SAFETY: only called when AVX2, FMA and F16C were detected.
                have_avx2().then(|| unsafe { avx2::dot_q4_k_q8_k(w, &q8k) }),
            )
        }
        GgmlType::Q6K => {
            let w = quant::cast(&wbytes);
            (
                quant::dot_q6_k_q8_k(w, &q8k),
                // SAFETY: only called when AVX2, FMA and F16C were detected.
                have_avx2().then(|| unsafe { avx2::dot_q6_k_q8_k(w, &q8k) }),
            )
        }
        _ => unreachable!(),
    };
    // Activation quantization error: |Δx| ≤ amax/254 per element, so the dot moves by at most ~1% of Σ|w·x| here.
    assert!(
        (scalar as f64 - exact).abs() <= 0.01 * norm,
        "{t:?}: scalar {scalar} vs f32 {exact} (norm {norm})"
    );
    if let Some(simd) = simd {
        // Same integer sums; the 32-element formats' and Q6_K's twins also keep the AVX2 summation order.
        assert!(
            (simd - scalar).abs() <= 1e-5 * norm as f32,
            "{t:?}: simd {simd} vs scalar {scalar}"
        );
        if matches!(
            t,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q6K
        ) {
            assert_eq!(simd.to_bits(), scalar.to_bits(), "{t:?}: simd vs scalar");
        }
    }
}

#[test]
fn dots_match_scalar_and_f32() {
    for t in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ] {
        check(t);
    }
}

#[test]
fn f16_dot_matches_scalar() {
    let a: Vec<u16> = data(67, 9)
        .iter()
        .map(|&v| u16::from_le_bytes(quant::f32_to_f16(v)))
        .collect();
    let b: Vec<u16> = data(67, 11)
        .iter()
        .map(|&v| u16::from_le_bytes(quant::f32_to_f16(v)))
        .collect();
    let s = quant::dot_f16(&a, &b);
    if have_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected.
        let v = unsafe { avx2::dot_f16(&a, &b) };
        assert!((s - v).abs() < 1e-3, "{s} vs {v}");
    }
    // The same row as file bytes at an odd offset (a GGUF file with `general.alignment` 1): the same bits.
    let mut bytes = vec![0u8];
    bytes.extend(a.iter().flat_map(|v| v.to_le_bytes()));
    assert_eq!(quant::dot_f16_bytes(&bytes[1..], &b).to_bits(), s.to_bits());
}

fn f16s(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&x| u16::from_le_bytes(quant::f32_to_f16(x)))
        .collect()
}

#[test]
fn f16_dots_match_scalar_bitwise() {
    if !have_avx2() {
        return;
    }
    for n in [64usize, 96, 200, 256] {
        let (a, b) = (f16s(&data(n, 21)), f16s(&data(n, 23)));
        let n8 = n / 8 * 8;
        // SAFETY: AVX2, FMA and F16C were detected.
        let v = unsafe { avx2::dot_f16(&a[..n8], &b[..n8]) };
        assert_eq!(
            v.to_bits(),
            quant::dot_f16_chain(&a[..n8], &b[..n8]).to_bits(),
            "chain n={n}"
        );
        // SAFETY: as above.
        let v = unsafe { avx2::dot_f16_ggml(&a, &b) };
        assert_eq!(
            v.to_bits(),
            quant::dot_f16_ggml(&a, &b).to_bits(),
            "ggml n={n}"
        );
        let exact: f64 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| {
                let h = |v: u16| half::f16::from_bits(v).to_f32() as f64;
                h(x) * h(y)
            })
            .sum();
        assert!((v as f64 - exact).abs() < 1e-3 * exact.abs().max(1.0));
    }
}

/// Several rows at once (`dots_f16`, used by batched attention) give each row's single dot product bit for bit,
/// for strided rows, every row-count remainder and lengths with and without a tail.
#[test]
fn strided_f16_dots_equal_single_dots_bitwise() {
    if !have_avx2() {
        return;
    }
    for (rows, n, stride) in [
        (1usize, 64usize, 64usize),
        (7, 256, 256),
        (8, 128, 640),
        (19, 40, 41),
        (9, 13, 16),
    ] {
        let x = f16s(&data(rows * stride + n, 31 + rows as u64));
        let y = f16s(&data(n, 37));
        let mut got = vec![0.0f32; rows];
        // SAFETY: AVX2, FMA and F16C were detected.
        unsafe { avx2::dots_f16(&x, stride, &y, &mut got) };
        for (i, g) in got.iter().enumerate() {
            let row = &x[i * stride..i * stride + n];
            // SAFETY: as above.
            let want = unsafe { avx2::dot_f16(row, &y) };
            assert_eq!(g.to_bits(), want.to_bits(), "rows {rows} n {n} row {i}");
            if n % 8 == 0 {
                assert_eq!(
                    g.to_bits(),
                    quant::dot_f16_chain(row, &y).to_bits(),
                    "scalar, row {i}"
                );
            }
        }
    }
}

/// The GELU table lookup (F16C conversion, lanes of 8) equals the scalar lookup bit for bit, across the table's
/// range and both cut-offs.
#[test]
fn geglu_lookup_matches_scalar_bitwise() {
    if !have_avx2() {
        return;
    }
    let table = crate::math::GeluTable::new();
    let mut g: Vec<f32> = data(1003, 41).iter().map(|v| v * 12.0).collect();
    g.extend([-10.0, 10.0, -9.999, 9.999, 65504.0, 1e-8, -0.0, 0.0]);
    let up = data(g.len(), 43);
    let mut want = g.clone();
    table.geglu_scalar(&mut want, &up);
    let mut got = g.clone();
    table.geglu(&mut got, &up);
    assert!(got
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn expf_and_swiglu_match_scalar_bitwise_and_libm() {
    let x: Vec<f32> = (0..4000)
        .map(|i| (i as f32 - 2000.0) * 0.06)
        .chain([-f32::INFINITY, 0.0, -150.0])
        .collect();
    for &v in &x {
        let e = quant::expf_ggml(v);
        let r = libm::expf(v);
        assert!(
            e == r || (e - r).abs() <= 4.0 * f32::EPSILON * r.abs() + f32::MIN_POSITIVE,
            "{v}: {e} vs {r}"
        );
    }
    if !have_avx2() {
        return;
    }
    let n = x.len() / 8 * 8;
    let (mut a, mut b) = (x[..n].to_vec(), x[..n].to_vec());
    let sa = quant::softmax_exp(&mut a, 3.0);
    // SAFETY: AVX2, FMA and F16C were detected.
    let sb = unsafe { avx2::softmax_exp(&mut b, 3.0) };
    assert_eq!(sa.to_bits(), sb.to_bits());
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    let g: Vec<f32> = data(n, 5);
    let (mut a, mut b) = (
        data(n, 31).iter().map(|v| v * 8.0).collect::<Vec<_>>(),
        Vec::new(),
    );
    b.extend_from_slice(&a);
    quant::swiglu(&mut a, &g);
    // SAFETY: as above.
    unsafe { avx2::swiglu(&mut b, &g) };
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
}

/// The tiled matrix kernels give bit for bit what the single-row AVX2 dot products give, for every tile shape
/// and remainder (rows and batch sizes that are not multiples of the tile).
#[test]
fn matrix_tiles_equal_row_dots_bitwise() {
    if !have_avx2() {
        return;
    }
    let (cols, nb) = (128, 4);
    for rows in [1usize, 2, 3, 5, 8, 9] {
        for batch in [1usize, 2, 3, 4, 5, 9] {
            let x = data(cols * batch, 11 + batch as u64);
            let mut q80 = vec![BlockQ8_0::zeroed(); nb * batch];
            let mut q81 = vec![BlockQ8_1::zeroed(); nb * batch];
            quant::quantize_q8_0(&x, &mut q80);
            quant::quantize_q8_1(&x, &mut q81);
            // Block-major f32 scales, as `matmul::Acts` lays them out.
            let (mut d0, mut d1, mut s1) = (
                vec![0.0; nb * batch],
                vec![0.0; nb * batch],
                vec![0.0; nb * batch],
            );
            for t in 0..batch {
                for k in 0..nb {
                    d0[k * batch + t] = f16_to_f32(q80[t * nb + k].d);
                    d1[k * batch + t] = f16_to_f32(q81[t * nb + k].d);
                    s1[k * batch + t] = f16_to_f32(q81[t * nb + k].s);
                }
            }
            let y0 = super::ActTile {
                qs: &q80[..],
                d: &d0,
                s: &[],
                batch,
                col0: 0,
            };
            let y1 = super::ActTile {
                qs: &q81[..],
                d: &d1,
                s: &s1,
                batch,
                col0: 0,
            };
            for t in [
                GgmlType::Q4_0,
                GgmlType::Q4_1,
                GgmlType::Q5_0,
                GgmlType::Q8_0,
            ] {
                let wb = encode_weights(t, &data(cols * rows, 5 + rows as u64));
                let mut got = vec![0.0f32; rows * batch];
                let mut want = vec![0.0f32; rows * batch];
                for r in 0..rows {
                    for c in 0..batch {
                        let (wr, q0, q1) = (
                            &wb[r * nb * t.block_bytes()..(r + 1) * nb * t.block_bytes()],
                            &q80[c * nb..(c + 1) * nb],
                            &q81[c * nb..(c + 1) * nb],
                        );
                        // SAFETY: AVX2, FMA and F16C were detected above.
                        want[c * rows + r] = unsafe {
                            match t {
                                GgmlType::Q4_0 => avx2::dot_q4_0_q8_0(quant::cast(wr), q0),
                                GgmlType::Q4_1 => avx2::dot_q4_1_q8_1(quant::cast(wr), q1),
                                GgmlType::Q5_0 => avx2::dot_q5_0_q8_0(quant::cast(wr), q0),
                                _ => avx2::dot_q8_0_q8_0(quant::cast(wr), q0),
                            }
                        };
                    }
                }
                // All columns into a token-major block, then columns c0.. alone into a block with a wider
                // stride, as a chunk of a product split by tokens or by rows sees them.
                let run = |y0: &super::ActTile<'_, BlockQ8_0>,
                           y1: &super::ActTile<'_, BlockQ8_1>,
                           cols: usize,
                           out: &mut [f32],
                           ld: usize| match t {
                    GgmlType::Q4_0 => super::mat_q4_0(
                        quant::cast(&wb),
                        nb,
                        y0,
                        cols,
                        out,
                        ld,
                        &mut vec![0.0; super::batch_work_len(nb * QK)],
                    ),
                    GgmlType::Q4_1 => super::mat_q4_1(
                        quant::cast(&wb),
                        nb,
                        y1,
                        cols,
                        out,
                        ld,
                        &mut vec![0.0; super::batch_work_len(nb * QK)],
                    ),
                    GgmlType::Q5_0 => super::mat_q5_0(
                        quant::cast(&wb),
                        nb,
                        y0,
                        cols,
                        out,
                        ld,
                        &mut vec![0.0; super::batch_work_len(nb * QK)],
                    ),
                    _ => super::mat_q8_0(
                        quant::cast(&wb),
                        nb,
                        y0,
                        cols,
                        out,
                        ld,
                        &mut vec![0.0; super::batch_work_len(nb * QK)],
                    ),
                };
                run(&y0, &y1, batch, &mut got, rows);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{t:?} rows {rows} batch {batch}");
                if batch > 1 {
                    let c0 = batch / 2;
                    let ld = rows + 3;
                    let mut part = vec![f32::NAN; (batch - c0) * ld];
                    let sub0 = super::ActTile {
                        qs: &q80[c0 * nb..],
                        col0: c0,
                        ..y0
                    };
                    let sub1 = super::ActTile {
                        qs: &q81[c0 * nb..],
                        col0: c0,
                        ..y1
                    };
                    run(&sub0, &sub1, batch - c0, &mut part, ld);
                    for c in c0..batch {
                        let got = &part[(c - c0) * ld..(c - c0) * ld + rows];
                        let want = &want[c * rows..(c + 1) * rows];
                        assert_eq!(
                            bits(got),
                            bits(want),
                            "{t:?} rows {rows} batch {batch} column {c}"
                        );
                    }
                }
            }
        }
    }
}

/// llama.cpp's batched K-quant orders (repacked Q4_K gemv and gemm, tiled Q6_K): the AVX2 kernels equal their
/// scalar twins bit for bit, each output equals the one-row scalar model, and all stay within the activation
/// quantization error of the f64 product of the dequantized weights with the unquantized activations:
/// |Δx_i| ≤ amax/254 of x_i's 256-block, so |Δ| ≤ Σ|w_i|·amax/254, plus 1e-5·Σ|w·x| for f32 rounding.
#[test]
fn k_quant_batched_kernels_match_scalar_bitwise_and_f32() {
    let (nb, rows, tokens) = (4usize, 16usize, 4usize);
    let cols = nb * QK_K;
    let x = data(cols * tokens, 21);
    let mut q8k = vec![BlockQ8K::zeroed(); nb * tokens];
    quant::quantize_q8_k(&x, &mut q8k);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for t in [GgmlType::Q4K, GgmlType::Q6K] {
        let wb = encode_weights(t, &data(cols * rows, 23));
        let mut wf = vec![0.0; cols * rows];
        quant::dequantize(t, &wb, &mut wf).unwrap();
        let reference = |r: usize, c: usize| -> (f64, f64) {
            let (w, xs) = (&wf[r * cols..(r + 1) * cols], &x[c * cols..(c + 1) * cols]);
            let exact = w.iter().zip(xs).map(|(&a, &b)| a as f64 * b as f64).sum();
            let norm: f64 = w
                .iter()
                .zip(xs)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            let quant: f64 = w
                .chunks_exact(QK_K)
                .zip(xs.chunks_exact(QK_K))
                .map(|(wb, xb)| {
                    let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
                    wb.iter().map(|&a| (a as f64).abs()).sum::<f64>() * amax / 254.0
                })
                .sum();
            (exact, quant + 1e-5 * norm)
        };
        // [variant][token][row]: Q4_K gemm, Q4_K gemv, Q6_K tiled.
        let mut scalar = vec![vec![vec![0.0f32; rows]; tokens]; 2];
        let mut simd = scalar.clone();
        let mut model = scalar.clone();
        if t == GgmlType::Q4K {
            let w: &[BlockQ4K] = quant::cast(&wb);
            // All four tokens through the gemm order, then all four through the gemv order; `out[t * 8 + r]`.
            for (v, gemm) in [(0usize, tokens), (1, 0)] {
                let mut o = vec![0.0f32; tokens * rows];
                super::scalar_q4_k_repacked(w, nb, &q8k, tokens, gemm, &mut o, rows, &mut []);
                scalar[v] = o.chunks(rows).map(|c| c.to_vec()).collect();
                if have_avx2() {
                    // SAFETY: AVX2, FMA and F16C were detected.
                    unsafe {
                        avx2::mat_q4_k_repacked(
                            w,
                            nb,
                            &q8k,
                            tokens,
                            gemm,
                            &mut o,
                            rows,
                            &mut vec![0.0; super::batch_work_len(cols)],
                        )
                    };
                    simd[v] = o.chunks(rows).map(|c| c.to_vec()).collect();
                }
            }
            for c in 0..tokens {
                let y = &q8k[c * nb..(c + 1) * nb];
                for r in 0..rows {
                    let wr = &w[r * nb..(r + 1) * nb];
                    model[0][c][r] = quant::dot_q4_k_q8_k_gemm(wr, y);
                    model[1][c][r] = quant::dot_q4_k_q8_k_gemv(wr, y);
                }
            }
        } else {
            let w: &[BlockQ6K] = quant::cast(&wb);
            for r in 0..rows {
                let wr = &w[r * nb..(r + 1) * nb];
                let mut o = vec![0.0f32; tokens];
                super::scalar_q6_k_tiled(wr, nb, &q8k, &mut o);
                let mut v = vec![0.0f32; tokens];
                if have_avx2() {
                    // SAFETY: as above.
                    unsafe { avx2::mat_q6_k_tiled(wr, nb, &q8k, &mut v) };
                }
                for c in 0..tokens {
                    scalar[0][c][r] = o[c];
                    simd[0][c][r] = v[c];
                    model[0][c][r] = quant::dot_q6_k_q8_k_tiled(wr, &q8k[c * nb..(c + 1) * nb]);
                }
            }
            scalar.truncate(1);
            simd.truncate(1);
            model.truncate(1);
        }
        for (v, (sv, (mv, dv))) in scalar.iter().zip(model.iter().zip(simd.iter())).enumerate() {
            for c in 0..tokens {
                assert_eq!(
                    bits(&sv[c]),
                    bits(&mv[c]),
                    "{t:?} variant {v} token {c}: scalar tile vs model"
                );
                if have_avx2() {
                    assert_eq!(
                        bits(&dv[c]),
                        bits(&sv[c]),
                        "{t:?} variant {v} token {c}: simd vs scalar"
                    );
                }
                for (r, &got) in sv[c].iter().enumerate() {
                    let (exact, bound) = reference(r, c);
                    assert!(
                        (got as f64 - exact).abs() <= bound,
                        "{t:?} variant {v} token {c} row {r}: {got} vs f32 {exact} (bound {bound})",
                    );
                }
            }
        }
    }
}

/// f32 → f16 with a scale (attention's query and probabilities): F16C against the software conversion, bit for
/// bit, over every f16 boundary region (each exponent from far below the subnormals to past the overflow, many
/// mantissas, both signs, ties included), zeros, infinities and random values, scaled by 1 and by a probability
/// sum's reciprocal.
#[test]
fn f16_conversion_matches_scalar_bitwise() {
    if !have_avx2() {
        return;
    }
    let mut x = Vec::new();
    for exp in 90u32..150 {
        for m in (0u32..(1 << 23))
            .step_by(4093)
            .chain([0, 1, 0x1000, 0x1FFF, 0x2000, 0x3FFF, 0x7F_FFFF])
        {
            for sign in [0u32, 1 << 31] {
                x.push(f32::from_bits(sign | exp << 23 | m));
            }
        }
    }
    x.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        65504.0,
        65520.0,
        65519.99,
        6.1e-5,
        5.96e-8,
        2.98e-8,
    ]);
    x.extend(data(10_007, 11));
    for scale in [1.0f32, 1.0 / 3.7, 0.0173] {
        let mut want = vec![0u16; x.len()];
        quant::scale_to_f16(&x, scale, &mut want);
        let mut got = vec![0u16; x.len()];
        // SAFETY: AVX2, FMA and F16C were detected above.
        unsafe { avx2::scale_to_f16(&x, scale, &mut got) };
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(
            first,
            None,
            "scale {scale}: {:?}",
            first.map(|i| (x[i], got[i], want[i]))
        );
    }
}

/// Several rows' `ggml_vec_dot_f16` at once (attention's keys and transposed values against one query or one
/// row of probabilities) against one row at a time, bit for bit, at the AVX2 level and at the CPU's own; lengths
/// with and without a tail, row counts with and without a remainder of the tiles of four.
#[test]
fn f16_ggml_rows_match_one_row_at_a_time_bitwise() {
    if !have_avx2() {
        return;
    }
    for (rows, n, stride) in [
        (9usize, 64usize, 70usize),
        (4, 96, 96),
        (7, 200, 256),
        (1, 256, 300),
        (0, 64, 64),
    ] {
        let x = f16s(&data(rows.max(1) * stride, rows as u64 + 3));
        let y = f16s(&data(n, 99));
        let mut want = vec![0.0f32; rows];
        let mut got = vec![f32::NAN; rows];
        for (r, w) in want.iter_mut().enumerate() {
            // SAFETY: AVX2, FMA and F16C were detected above.
            *w = unsafe { avx2::dot_f16_ggml(&x[r * stride..r * stride + n], &y) };
        }
        // SAFETY: as above.
        unsafe { avx2::dots_f16_ggml(&x, stride, &y, &mut got) };
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "AVX2, {rows} rows of {n}");
        for (r, w) in want.iter_mut().enumerate() {
            *w = super::dot_f16_ggml(&x[r * stride..r * stride + n], &y);
        }
        super::dots_f16_ggml(&x, stride, &y, &mut got);
        assert_eq!(
            bits(&got),
            bits(&want),
            "{:?}, {rows} rows of {n}",
            super::level()
        );
    }
}

/// Attention's products against a row of probabilities that is zero past the query's position, computed only as
/// far as a probability can be nonzero (`dot_f16_ggml_live`, `dots_f16_ggml_live`, and tinyBLAS's chain over
/// `live_steps`), give the whole length's bits at the CPU's level: zero products leave every lane as it was.
#[test]
fn attention_products_stop_at_the_live_positions_with_the_same_bits() {
    let (rows, len) = (6usize, 512usize);
    // Values include negative ones (their zero products are -0) and a row that sums to exactly zero.
    let mut x = f16s(&data(rows * len, 21));
    for v in &mut x[len..2 * len] {
        *v = 0;
    }
    for live in [1usize, 7, 31, 32, 33, 63, 64, 65, 200, 511, 512] {
        let mut p = f16s(&data(len, live as u64 + 5));
        for v in &mut p[live..] {
            *v = 0;
        }
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let whole: Vec<f32> = (0..rows)
            .map(|r| super::dot_f16_ggml(&x[r * len..(r + 1) * len], &p))
            .collect();
        let one: Vec<f32> = (0..rows)
            .map(|r| super::dot_f16_ggml_live(&x[r * len..(r + 1) * len], &p, live))
            .collect();
        assert_eq!(bits(&one), bits(&whole), "dot_f16_ggml_live, live {live}");
        let mut got = vec![f32::NAN; rows];
        super::dots_f16_ggml_live(&x, len, &p, live, &mut got);
        assert_eq!(bits(&got), bits(&whole), "dots_f16_ggml_live, live {live}");
        let mut chain = vec![0.0f32; rows];
        super::dots_f16(&x, len, &p, &mut chain);
        let n = super::live_steps(live, super::f16_chain_lanes(), len);
        super::dots_f16(&x, len, &p[..n], &mut got);
        assert_eq!(bits(&got), bits(&chain), "dots_f16 over {n}, live {live}");
    }
}
