//! The engine's kernels for Q4_0, Q5_K, Q5_1, Q3_K and Q2_K against one ggml matrix product, bit for bit
//! (scripts/differential/kernels.sh runs it on scripts/differential/mul_mat.c's output):
//!
//!   mul_mat_compare TYPE OUT.bin [--scalar] [--no-repack]
//!
//! TYPE is the ggml type code `mul_mat` was given. Each output is computed as the engine computes it for a product
//! of that many tokens: llama.cpp's tiled order from 8 tokens on for the K-quants, `ggml_vec_dot_*`'s below (and
//! for Q5_1 at every size), Q4_0 and Q5_1 through the engine's 32-element tiles, with the CPU's best kernels or, with
//! `--scalar`, the portable ones (which mirror llama.cpp built for SSE4.2 without AVX: `ggml_vec_dot_*`'s order at
//! every size, to be held to `mul_mat` linked against that build); where llama.cpp repacks a matrix whose rows come
//! in groups of 8 (Q2_K at the AVX-512 level, Q4_0 at the AVX2 and AVX-512 levels) in the repacked gemm/gemv order
//! (`mul_mat --repack`'s product; `--no-repack` leaves that out, for `mul_mat`'s plain product in the file's
//! layout). Prints one line with the count of bit-equal outputs; exits 1 if any differs.
use std::process::ExitCode;

use model::quant::{self, BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType};
use model::simd;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(code), Some(path)) = (args.first(), args.get(1)) else {
        eprintln!("usage: mul_mat_compare TYPE OUT.bin [--scalar] [--no-repack]");
        return ExitCode::from(2);
    };
    let Some(t) = code.parse().ok().and_then(GgmlType::from_u32) else {
        eprintln!("mul_mat_compare: {code} is not a ggml type code");
        return ExitCode::from(2);
    };
    simd::force_scalar(args.iter().any(|a| a == "--scalar"));
    let bytes = std::fs::read(path).expect("read the ggml output");
    let word = |i: usize| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()) as usize;
    let (rows, cols, tokens) = (word(0), word(1), word(2));
    let row_bytes = cols / t.block_len() * t.block_bytes();
    let floats = |from: usize, n: usize| -> Vec<f32> {
        bytes[from..from + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let weights = &bytes[12..12 + rows * row_bytes];
    let x = floats(12 + rows * row_bytes, cols * tokens);
    let want = floats(12 + rows * row_bytes + 4 * cols * tokens, rows * tokens);

    let (nk, n1) = (cols / quant::QK_K, cols / quant::QK);
    let mut q8k = vec![bytemuck::Zeroable::zeroed(); tokens * nk];
    if cols.is_multiple_of(quant::QK_K) {
        quant::quantize_q8_k(&x, &mut q8k);
    }
    let q8k: Vec<BlockQ8K> = q8k;
    let mut q81 = vec![bytemuck::Zeroable::zeroed(); tokens * n1];
    simd::quantize_q8_1(&x, &mut q81);
    let q81: Vec<BlockQ8_1> = q81;
    let mut q80 = vec![bytemuck::Zeroable::zeroed(); tokens * n1];
    simd::quantize_q8_0(&x, &mut q80);
    let q80: Vec<BlockQ8_0> = q80;
    // As `matmul`: the portable kernels take no tiled order (llama.cpp's SSE4.2 build has none).
    let tiled = tokens >= 8 && !simd::sse_orders();
    let mut equal = 0;
    // Q2_K with rows in groups of 8 at the AVX-512 level: llama.cpp's repacked gemm (groups of 4 tokens) and gemv.
    let repack = !args.iter().any(|a| a == "--no-repack");
    let repacked = rows.is_multiple_of(8)
        && match t {
            GgmlType::Q2K => simd::q2_k_repacks(),
            GgmlType::Q4_0 => simd::q4_0_repacks(),
            _ => false,
        };
    if repack && repacked {
        let mut got = vec![0.0f32; rows * tokens];
        if t == GgmlType::Q2K {
            let gemm = tokens - tokens % 4;
            simd::mat_q2_k_repacked(quant::cast(weights), nk, &q8k, tokens, gemm, &mut got, rows);
        } else {
            let mut work = vec![0.0f32; simd::batch_work_len(cols)];
            simd::mat_q4_0_repacked(
                quant::cast(weights),
                n1,
                &q80,
                tokens,
                &mut got,
                rows,
                &mut work,
            );
        }
        let equal = got
            .iter()
            .zip(&want)
            .filter(|(g, w)| g.to_bits() == w.to_bits())
            .count();
        let kernels = format!("{:?}", simd::level()).to_lowercase();
        println!(
            "{t} {rows}x{cols}, {tokens} tokens, {kernels} repacked: {equal}/{} outputs bit-equal",
            rows * tokens
        );
        return if equal == rows * tokens {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    // Q4_0's scales of the activations as the 32-element tiles read them, block-major (`[block][token]`).
    let d: Vec<f32> = (0..n1 * tokens)
        .map(|i| quant::f16_to_f32(q80[(i % tokens) * n1 + i / tokens].d))
        .collect();
    // Q5_1 through `simd::mat_q5_1` as `matmul` calls it (scales block-major), the whole matrix in one call so that
    // the tiles' row groups and pairs are exercised; `q5_1[c * rows + r]` is row r × token c.
    let mut q5_1 = Vec::new();
    if t == GgmlType::Q5_1 {
        let (d1, s1): (Vec<f32>, Vec<f32>) = (0..n1 * tokens)
            .map(|i| {
                let b = &q81[(i % tokens) * n1 + i / tokens];
                (quant::f16_to_f32(b.d), quant::f16_to_f32(b.s))
            })
            .unzip();
        let y = simd::ActTile {
            qs: &q81,
            d: &d1,
            s: &s1,
            batch: tokens,
            col0: 0,
        };
        let mut work = vec![0.0f32; simd::batch_work_len(cols)];
        q5_1 = vec![0.0f32; rows * tokens];
        simd::mat_q5_1(
            quant::cast(weights),
            n1,
            &y,
            tokens,
            &mut q5_1,
            rows,
            &mut work,
        );
    }
    for r in 0..rows {
        let w = &weights[r * row_bytes..(r + 1) * row_bytes];
        let mut got = vec![0.0f32; tokens];
        match (t, tiled) {
            (GgmlType::Q4_0, _) => {
                let y = simd::ActTile {
                    qs: &q80,
                    d: &d,
                    s: &[],
                    batch: tokens,
                    col0: 0,
                };
                let mut work = vec![0.0f32; simd::batch_work_len(cols)];
                simd::mat_q4_0(quant::cast(w), n1, &y, tokens, &mut got, 1, &mut work);
            }
            (GgmlType::Q5_1, _) => {
                for (c, g) in got.iter_mut().enumerate() {
                    *g = q5_1[c * rows + r];
                }
            }
            (GgmlType::Q5K, true) => simd::mat_q5_k_tiled(quant::cast(w), nk, &q8k, &mut got),
            (GgmlType::Q3K, true) => simd::mat_q3_k_tiled(quant::cast(w), nk, &q8k, &mut got),
            (GgmlType::Q2K, true) => simd::mat_q2_k_tiled(quant::cast(w), nk, &q8k, &mut got),
            _ => {
                for (c, g) in got.iter_mut().enumerate() {
                    let yk = &q8k[c * nk..(c + 1) * nk];
                    *g = match t {
                        GgmlType::Q5K => simd::dot_q5_k_q8_k(quant::cast(w), yk),
                        GgmlType::Q3K => simd::dot_q3_k_q8_k(quant::cast(w), yk),
                        GgmlType::Q2K => simd::dot_q2_k_q8_k(quant::cast(w), yk),
                        _ => {
                            eprintln!("mul_mat_compare: {t} is not a type this check covers");
                            return ExitCode::from(2);
                        }
                    };
                }
            }
        }
        for (c, g) in got.iter().enumerate() {
            if g.to_bits() == want[c * rows + r].to_bits() {
                equal += 1;
            }
        }
    }
    let kernels = format!("{:?}", simd::level()).to_lowercase();
    println!(
        "{t} {rows}x{cols}, {tokens} tokens, {kernels}: {equal}/{} outputs bit-equal",
        rows * tokens
    );
    if equal == rows * tokens {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
