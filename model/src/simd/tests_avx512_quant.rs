//! The AVX-512 VNNI matrix products of `simd/avx512_quant.rs` against the AVX2 tiles and the scalar twins in
//! [`crate::quant`], bit for bit, on random blocks; skipped (with a note) on CPUs without AVX-512 F/DQ/BW/VL and
//! VNNI.

use alloc::vec;
use alloc::vec::Vec;

use bytemuck::Zeroable;

use super::tests::data;
use super::{avx2, avx512_quant, ActTile};
use crate::quant::{self, *};

fn have_avx512_vnni() -> bool {
    let yes = super::detect_avx2() && super::detect_avx512() && avx512_quant::vnni();
    if !yes {
        std::println!("skipped: this CPU lacks AVX-512 F/DQ/BW/VL or VNNI");
    }
    yes
}

/// Random bytes: every bit pattern is a valid block of these formats (Q8_0 weights include -128); each block's
/// f16 scale (and Q4_1's or Q5_1's min) is then set to a small finite value.
fn random_blocks(block_bytes: usize, blocks: usize, seed: u64, min: bool) -> Vec<u8> {
    let mut out: Vec<u8> = data(blocks * block_bytes, seed)
        .iter()
        .map(|v| (v.to_bits() >> 5) as u8)
        .collect();
    for (i, blk) in out.chunks_exact_mut(block_bytes).enumerate() {
        blk[..2].copy_from_slice(&quant::f32_to_f16(0.01 + i as f32 * 1e-4));
        if min {
            blk[2..4].copy_from_slice(&quant::f32_to_f16(-0.003 * (1 + i % 5) as f32));
        }
    }
    out
}

/// `kernel(w, nb, y, cols, out, ld, work)` for one format, through the AVX-512 or the AVX2 path.
type Mat<W, A> = unsafe fn(&[W], usize, &ActTile<'_, A>, usize, &mut [f32], usize, &mut [f32]);

/// For every row count around the tiles (groups of 4, pairs, odd rows) and batch size (one token, tiles of 4
/// columns and the rest), all columns and a sub-range of columns with a wider output stride: AVX-512 = AVX2 =
/// the scalar twin `scalar(row, column)`, bit for bit.
fn check<W: bytemuck::Pod, A: Copy>(
    name: &str,
    blocks: impl Fn(usize, u64) -> Vec<W>,
    acts: impl Fn(&[f32]) -> Vec<A>,
    scales: impl Fn(&A) -> (f32, f32),
    wide: Mat<W, A>,
    narrow: Mat<W, A>,
    scalar: fn(&[W], &[A]) -> f32,
) {
    let nb = 5;
    let cols_elems = nb * QK;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for rows in [1usize, 2, 3, 4, 5, 6, 7, 8, 9, 13] {
        let w = blocks(rows * nb, 40 + rows as u64);
        for batch in [1usize, 2, 3, 4, 5, 8, 9] {
            let q = acts(&data(cols_elems * batch, 70 + batch as u64));
            // Block-major f32 scales, as `matmul::Acts` lays them out.
            let (mut d, mut s) = (vec![0.0; nb * batch], vec![0.0; nb * batch]);
            for t in 0..batch {
                for k in 0..nb {
                    (d[k * batch + t], s[k * batch + t]) = scales(&q[t * nb + k]);
                }
            }
            let y = ActTile {
                qs: &q[..],
                d: &d,
                s: &s,
                batch,
                col0: 0,
            };
            let mut want = vec![0.0f32; rows * batch];
            for r in 0..rows {
                for c in 0..batch {
                    want[c * rows + r] = scalar(&w[r * nb..(r + 1) * nb], &q[c * nb..(c + 1) * nb]);
                }
            }
            let work_len = super::batch_work_len(cols_elems);
            let (mut got, mut got2) = (vec![f32::NAN; rows * batch], vec![f32::NAN; rows * batch]);
            // SAFETY: AVX-512 F/DQ/BW/VL, VNNI, AVX2, FMA and F16C were detected by the caller.
            unsafe {
                wide(&w, nb, &y, batch, &mut got, rows, &mut vec![0.0; work_len]);
                narrow(&w, nb, &y, batch, &mut got2, rows, &mut vec![0.0; work_len]);
            }
            assert_eq!(
                bits(&got2),
                bits(&want),
                "{name} AVX2 vs scalar, rows {rows} batch {batch}"
            );
            assert_eq!(
                bits(&got),
                bits(&want),
                "{name} AVX-512 vs scalar, rows {rows} batch {batch}"
            );
            if batch > 1 {
                let c0 = batch / 2;
                let ld = rows + 3;
                let mut part = vec![f32::NAN; (batch - c0) * ld];
                let sub = ActTile {
                    qs: &q[c0 * nb..],
                    col0: c0,
                    ..y
                };
                // SAFETY: as above.
                unsafe {
                    wide(
                        &w,
                        nb,
                        &sub,
                        batch - c0,
                        &mut part,
                        ld,
                        &mut vec![0.0; work_len],
                    )
                };
                for c in c0..batch {
                    let got = &part[(c - c0) * ld..(c - c0) * ld + rows];
                    let want = &want[c * rows..(c + 1) * rows];
                    assert_eq!(
                        bits(got),
                        bits(want),
                        "{name} rows {rows} batch {batch} column {c}"
                    );
                }
            }
        }
    }
}

fn q8_0(x: &[f32]) -> Vec<BlockQ8_0> {
    let mut q = vec![BlockQ8_0::zeroed(); x.len() / QK];
    quant::quantize_q8_0(x, &mut q);
    q
}

fn q8_1(x: &[f32]) -> Vec<BlockQ8_1> {
    let mut q = vec![BlockQ8_1::zeroed(); x.len() / QK];
    quant::quantize_q8_1(x, &mut q);
    q
}

fn q8_0_scales(b: &BlockQ8_0) -> (f32, f32) {
    (f16_to_f32(b.d), 0.0)
}

fn q8_1_scales(b: &BlockQ8_1) -> (f32, f32) {
    (f16_to_f32(b.d), f16_to_f32(b.s))
}

#[test]
fn q4_0_tiles_equal_avx2_and_scalar_bitwise() {
    if !have_avx512_vnni() {
        return;
    }
    check::<BlockQ4_0, _>(
        "Q4_0",
        |n, seed| bytemuck::cast_slice(&random_blocks(18, n, seed, false)).to_vec(),
        q8_0,
        q8_0_scales,
        avx512_quant::mat_q0::<BlockQ4_0>,
        avx2::mat_q0::<BlockQ4_0>,
        quant::dot_q4_0_q8_0,
    );
}

#[test]
fn q4_1_tiles_equal_avx2_and_scalar_bitwise() {
    if !have_avx512_vnni() {
        return;
    }
    check::<BlockQ4_1, _>(
        "Q4_1",
        |n, seed| bytemuck::cast_slice(&random_blocks(20, n, seed, true)).to_vec(),
        q8_1,
        q8_1_scales,
        avx512_quant::mat_q0::<BlockQ4_1>,
        avx2::mat_q0::<BlockQ4_1>,
        quant::dot_q4_1_q8_1,
    );
}

#[test]
fn q5_0_tiles_equal_avx2_and_scalar_bitwise() {
    if !have_avx512_vnni() {
        return;
    }
    check::<BlockQ5_0, _>(
        "Q5_0",
        |n, seed| bytemuck::cast_slice(&random_blocks(22, n, seed, false)).to_vec(),
        q8_0,
        q8_0_scales,
        avx512_quant::mat_q0::<BlockQ5_0>,
        avx2::mat_q0::<BlockQ5_0>,
        quant::dot_q5_0_q8_0,
    );
}

#[test]
fn q5_1_tiles_equal_avx2_and_scalar_bitwise() {
    if !have_avx512_vnni() {
        return;
    }
    check::<BlockQ5_1, _>(
        "Q5_1",
        |n, seed| bytemuck::cast_slice(&random_blocks(24, n, seed, true)).to_vec(),
        q8_1,
        q8_1_scales,
        avx512_quant::mat_q0::<BlockQ5_1>,
        avx2::mat_q0::<BlockQ5_1>,
        quant::dot_q5_1_q8_1,
    );
}

#[test]
fn q8_0_tiles_equal_avx2_and_scalar_bitwise() {
    if !have_avx512_vnni() {
        return;
    }
    check::<BlockQ8_0, _>(
        "Q8_0",
        |n, seed| bytemuck::cast_slice(&random_blocks(34, n, seed, false)).to_vec(),
        q8_0,
        q8_0_scales,
        avx512_quant::mat_q0::<BlockQ8_0>,
        avx2::mat_q0::<BlockQ8_0>,
        quant::dot_q8_0_q8_0,
    );
}
