//! Round-to-nearest encoders for Q5_K, Q5_1, BF16, Q3_K and Q2_K (simple, not llama.cpp's optimising
//! quantizers: the tiny models only need valid blocks whose values resemble the weights).

use alloc::vec::Vec;

use crate::quant::{f16_to_f32, f32_to_bf16, f32_to_f16, GgmlType, QK, QK_K};

/// Round to nearest, clamped to `lo..=hi`; 0 where the step is 0.
fn q(v: f32, step: f32, lo: i32, hi: i32) -> i32 {
    if step == 0.0 {
        return 0.clamp(lo, hi);
    }
    (libm::roundf(v / step) as i32).clamp(lo, hi)
}

/// Super-block scale for sub-block scales `s` (all ≥ 0) stored as integers up to `levels`, rounded through f16.
fn super_scale(s: &[f32], levels: f32) -> f32 {
    f16_to_f32(f32_to_f16(s.iter().copied().fold(0.0, f32::max) / levels))
}

/// Per sub-block of `len`: (scale ≥ 0, min offset ≥ 0) so that `x ≈ scale·q - min` with q in `0..=top`.
fn scale_min(b: &[f32], len: usize, top: f32) -> (Vec<f32>, Vec<f32>) {
    b.chunks_exact(len)
        .map(|s| {
            let lo = s.iter().copied().fold(0.0f32, f32::min);
            let hi = s.iter().copied().fold(lo, f32::max);
            ((hi - lo) / top, -lo)
        })
        .unzip()
}

/// Encodes `w` (length a multiple of the block size) as `t`; returns `None` for the other types.
pub(super) fn encode(t: GgmlType, w: &[f32]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match t {
        GgmlType::BF16 => w
            .iter()
            .for_each(|&v| out.extend_from_slice(&f32_to_bf16(v).to_le_bytes())),
        GgmlType::Q5_1 => {
            for b in w.chunks_exact(QK) {
                let min = b.iter().copied().fold(f32::INFINITY, f32::min);
                let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let (d, m) = (f32_to_f16((max - min) / 31.0), f32_to_f16(min));
                let qs: Vec<u32> = b
                    .iter()
                    .map(|&v| q(v - f16_to_f32(m), f16_to_f32(d), 0, 31) as u32)
                    .collect();
                let qh = qs
                    .iter()
                    .enumerate()
                    .fold(0u32, |h, (j, &v)| h | (((v >> 4) & 1) << j));
                out.extend_from_slice(&d);
                out.extend_from_slice(&m);
                out.extend_from_slice(&qh.to_le_bytes());
                out.extend(
                    (0..QK / 2).map(|j| (qs[j] & 0xF) as u8 | (((qs[j + 16] & 0xF) as u8) << 4)),
                );
            }
        }
        GgmlType::Q5K => {
            for b in w.chunks_exact(QK_K) {
                let (sc, mn) = scale_min(b, 32, 31.0);
                let (d, dmin) = (super_scale(&sc, 63.0), super_scale(&mn, 63.0));
                let isc: Vec<u8> = sc.iter().map(|&s| q(s, d, 0, 63) as u8).collect();
                let imn: Vec<u8> = mn.iter().map(|&m| q(m, dmin, 0, 63) as u8).collect();
                let mut scales = [0u8; 12];
                for j in 0..4 {
                    scales[j] = isc[j] | ((isc[j + 4] >> 4) << 6);
                    scales[j + 4] = imn[j] | ((imn[j + 4] >> 4) << 6);
                    scales[j + 8] = (isc[j + 4] & 0xF) | ((imn[j + 4] & 0xF) << 4);
                }
                let v: Vec<u8> = b
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| {
                        let (s, m) = (d * isc[i / 32] as f32, dmin * imn[i / 32] as f32);
                        q(x + m, s, 0, 31) as u8
                    })
                    .collect();
                let (mut qh, mut qs) = ([0u8; 32], [0u8; 128]);
                for j in 0..4 {
                    for l in 0..32 {
                        let (a, c) = (v[64 * j + l], v[64 * j + 32 + l]);
                        qs[32 * j + l] = (a & 0xF) | ((c & 0xF) << 4);
                        qh[l] |= ((a >> 4) << (2 * j)) | ((c >> 4) << (2 * j + 1));
                    }
                }
                out.extend_from_slice(&f32_to_f16(d));
                out.extend_from_slice(&f32_to_f16(dmin));
                out.extend_from_slice(&scales);
                out.extend_from_slice(&qh);
                out.extend_from_slice(&qs);
            }
        }
        GgmlType::Q3K => {
            for b in w.chunks_exact(QK_K) {
                // Signed sub-block scales that put the largest magnitude on level -4.
                let s: Vec<f32> = b
                    .chunks_exact(16)
                    .map(|g| {
                        let max =
                            g.iter()
                                .copied()
                                .fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
                        max / -4.0
                    })
                    .collect();
                let abs: Vec<f32> = s.iter().map(|v| v.abs()).collect();
                let d = super_scale(&abs, 31.0);
                let isc: Vec<i32> = s.iter().map(|&v| q(v, d, -32, 31)).collect();
                let mut scales = [0u8; 12];
                for (i, &sc) in isc.iter().enumerate() {
                    let l = (sc + 32) as u8;
                    scales[i % 8] |= (l & 0xF) << (4 * (i / 8));
                    scales[8 + i % 4] |= (l >> 4) << (2 * (i / 4));
                }
                let (mut hmask, mut qs) = ([0u8; 32], [0u8; 64]);
                for (i, &x) in b.iter().enumerate() {
                    let v = (q(x, d * isc[i / 16] as f32, -4, 3) + 4) as u8;
                    let (h, k, l) = (i / 128, (i % 128) / 32, i % 32);
                    qs[32 * h + l] |= (v & 3) << (2 * k);
                    hmask[l] |= (v >> 2) << (4 * h + k);
                }
                out.extend_from_slice(&hmask);
                out.extend_from_slice(&qs);
                out.extend_from_slice(&scales);
                out.extend_from_slice(&f32_to_f16(d));
            }
        }
        GgmlType::Q2K => {
            for b in w.chunks_exact(QK_K) {
                let (sc, mn) = scale_min(b, 16, 3.0);
                let (d, dmin) = (super_scale(&sc, 15.0), super_scale(&mn, 15.0));
                let isc: Vec<u8> = sc.iter().map(|&s| q(s, d, 0, 15) as u8).collect();
                let imn: Vec<u8> = mn.iter().map(|&m| q(m, dmin, 0, 15) as u8).collect();
                let mut qs = [0u8; 64];
                for (i, &x) in b.iter().enumerate() {
                    let (s, m) = (d * isc[i / 16] as f32, dmin * imn[i / 16] as f32);
                    let v = q(x + m, s, 0, 3) as u8;
                    let (h, k, l) = (i / 128, (i % 128) / 32, i % 32);
                    qs[32 * h + l] |= v << (2 * k);
                }
                out.extend((0..16).map(|g| isc[g] | (imn[g] << 4)));
                out.extend_from_slice(&qs);
                out.extend_from_slice(&f32_to_f16(d));
                out.extend_from_slice(&f32_to_f16(dmin));
            }
        }
        _ => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each encoder's blocks dequantize to within a few steps of the weights they encode.
    #[test]
    fn encoders_round_trip_through_the_dequantizers() {
        let w: Vec<f32> = (0..1024)
            .map(|i| libm::sinf(i as f32 * 0.37) * 0.2 + (i % 7) as f32 * 0.01)
            .collect();
        for (t, bound) in [
            (GgmlType::BF16, 0.002),
            (GgmlType::Q5_1, 0.01),
            (GgmlType::Q5K, 0.02),
            (GgmlType::Q3K, 0.06),
            (GgmlType::Q2K, 0.12),
        ] {
            let bytes = encode(t, &w).unwrap();
            let mut back = alloc::vec![0.0; w.len()];
            crate::quant::dequantize(t, &bytes, &mut back).unwrap();
            let worst = w
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= bound, "{t}: worst error {worst}");
        }
    }
}
