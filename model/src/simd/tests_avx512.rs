//! The AVX-512 kernels against their scalar twins in [`crate::wide`], bit for bit, and the twins against f64
//! references; skipped on CPUs without AVX-512 (F, DQ, BW, VL).

use alloc::vec::Vec;

use super::avx512;
use super::tests::data;
use crate::wide;

pub(super) fn have_avx512() -> bool {
    super::detect_avx2() && super::detect_avx512()
}

fn f16s(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&x| half::f16::from_f32(x).to_bits())
        .collect()
}

fn f64_dot(x: &[u16], y: &[u16]) -> f64 {
    let h = |v: u16| half::f16::from_bits(v).to_f32() as f64;
    x.iter().zip(y).map(|(&a, &b)| h(a) * h(b)).sum()
}

/// tinyBLAS's 16-lane chain and `ggml_vec_dot_f16`'s AVX-512 form (every tail length, below and above one step
/// of 64) equal their twins bit for bit and an f64 dot product within rounding.
#[test]
fn f16_dots_match_twins_bitwise() {
    for n in [
        0usize, 1, 15, 16, 17, 48, 63, 64, 65, 100, 128, 255, 256, 640,
    ] {
        let (a, b) = (f16s(&data(n, 21 + n as u64)), f16s(&data(n, 23)));
        let exact = f64_dot(&a, &b);
        let ggml = wide::dot_f16_ggml16(&a, &b);
        assert!(
            (ggml as f64 - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
            "{n}"
        );
        if have_avx512() {
            // SAFETY: AVX-512 F/DQ/BW/VL, AVX2, FMA and F16C were detected.
            let v = unsafe { avx512::dot_f16_ggml(&a, &b) };
            assert_eq!(v.to_bits(), ggml.to_bits(), "ggml form, n = {n}");
        }
        let n16 = n / 16 * 16;
        let chain = wide::dot_f16_chain16(&a[..n16], &b[..n16]);
        let exact16 = f64_dot(&a[..n16], &b[..n16]);
        assert!(
            (chain as f64 - exact16).abs() <= 1e-4 * (1.0 + exact16.abs()),
            "{n}"
        );
        if have_avx512() {
            // SAFETY: as above.
            let v = unsafe { avx512::dot_f16(&a[..n16], &b[..n16]) };
            assert_eq!(v.to_bits(), chain.to_bits(), "chain, n = {n}");
        }
    }
}

/// Four horizontal sums side by side equal four one at a time bit for bit. The lanes span 2^-24 to 2^24 in
/// both signs, so pairing any two lanes differently from `hsum16` changes the rounding and the bits.
#[test]
fn four_horizontal_sums_equal_one_at_a_time_bitwise() {
    if !have_avx512() {
        return;
    }
    use core::arch::x86_64::{__m512, _mm512_loadu_ps};
    let mut differ_from_left_to_right = 0;
    for seed in 0..200u64 {
        let lanes: Vec<f32> = data(64, 300 + seed)
            .iter()
            .zip(data(64, 700 + seed))
            .map(|(&m, e)| m * ((e * 24.0).round()).exp2())
            .collect();
        // SAFETY: AVX-512 F was detected above; each load reads 16 of the 64 floats.
        let v: [__m512; 4] =
            core::array::from_fn(|r| unsafe { _mm512_loadu_ps(lanes[16 * r..].as_ptr()) });
        // SAFETY: as above.
        let (got, want) = unsafe { (avx512::hsum16x4(v), v.map(|x| avx512::hsum16(x))) };
        for r in 0..4 {
            assert_eq!(
                got[r].to_bits(),
                want[r].to_bits(),
                "seed {seed}, vector {r}"
            );
            let plain: f32 = lanes[16 * r..16 * r + 16].iter().sum();
            differ_from_left_to_right += usize::from(plain.to_bits() != want[r].to_bits());
        }
    }
    // The data can tell orders apart: a left-to-right sum differs from the tree on about half the vectors.
    assert!(
        differ_from_left_to_right > 200,
        "{differ_from_left_to_right}"
    );
}

/// Several rows at once (`dots_f16`, batched attention) give each row's own 16-lane chain bit for bit, for row
/// counts around the kernel's group of 8.
#[test]
fn strided_f16_dots16_equal_single_dots_bitwise() {
    if !have_avx512() {
        return;
    }
    for rows in [1usize, 7, 8, 9, 17] {
        let (n, stride) = (64, 80);
        let x = f16s(&data(rows * stride + n, 31 + rows as u64));
        let y = f16s(&data(n, 37));
        let mut got = alloc::vec![0.0f32; rows];
        // SAFETY: as above.
        unsafe { avx512::dots_f16(&x, stride, &y, &mut got) };
        for (r, g) in got.iter().enumerate() {
            let want = wide::dot_f16_chain16(&x[r * stride..r * stride + n], &y);
            assert_eq!(g.to_bits(), want.to_bits(), "rows {rows}, row {r}");
        }
    }
}

/// The 16-lane softmax numerator and SwiGLU equal their twins bit for bit, over ordinary values, large negative
/// scores (underflow, including subnormal results), -∞ (masked positions) and tails shorter than 16.
#[test]
fn softmax_and_swiglu_match_twins_bitwise() {
    if !have_avx512() {
        return;
    }
    let mut x: Vec<f32> = (0..4000).map(|i| (i as f32 - 3000.0) * 0.06).collect();
    x.extend([
        f32::NEG_INFINITY,
        0.0,
        -150.0,
        -87.5,
        -103.0,
        -104.5,
        88.0,
        -200.0,
        1e-8,
    ]);
    for len in [x.len(), x.len() - 5, 16, 9] {
        let (mut a, mut b) = (x[..len].to_vec(), x[..len].to_vec());
        let sa = wide::softmax_exp16(&mut a, 3.0);
        // SAFETY: as above.
        let sb = unsafe { avx512::softmax_exp(&mut b, 3.0) };
        assert_eq!(sa.to_bits(), sb.to_bits(), "sum, len {len}");
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert_eq!(p.to_bits(), q.to_bits(), "len {len}, element {i}: {}", x[i]);
        }
    }
    for n in [1003usize, 1536, 7] {
        let up = data(n, 5);
        let mut a: Vec<f32> = data(n, 31).iter().map(|v| v * 8.0).collect();
        a.extend([-100.0, 100.0, -88.0, 0.0].iter().take(n.min(4)));
        let up = [up.as_slice(), &[1.0, 2.0, 3.0, 4.0][..n.min(4)]].concat();
        let mut b = a.clone();
        wide::swiglu16(&mut a, &up);
        // SAFETY: as above.
        unsafe { avx512::swiglu(&mut b, &up) };
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert_eq!(p.to_bits(), q.to_bits(), "n {n}, element {i}");
        }
    }
}
