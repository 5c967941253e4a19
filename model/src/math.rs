//! Element-wise operations of the forward pass, written to reproduce ggml's CPU arithmetic: RMSNorm (f64 sum of
//! squares), softmax (f64 sum), rotary embeddings (ggml's incremental `theta *= theta_scale` cache, normal and NEOX
//! pairings), SiLU, and GELU through ggml's f16 lookup table.
//!
//! Source of the formulas: ggml `ggml-cpu/ops.cpp` (`rms_norm_f32`, `soft_max_f32`, `rope_f32`,
//! `rope_cache_init`) and `vec.h` (`ggml_silu_f32`, `ggml_gelu_f32`, `ggml_vec_geglu_f32` with `GGML_GELU_FP16`).

use alloc::vec::Vec;

use crate::quant::{f16_to_f32, f32_to_f16};

/// `out = (x / rms(x)) * w` over one vector, with ggml's order of operations (scale first, then the weight).
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / libm::sqrtf(mean + eps);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * g;
    }
}

/// In-place RMSNorm.
pub fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / libm::sqrtf(mean + eps);
    for (v, &g) in x.iter_mut().zip(w) {
        *v = (*v * scale) * g;
    }
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// How rotary pairs are formed: adjacent elements (llama's GGUF layout) or halves (NEOX, used by gemma3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    Normal,
    Neox,
}

/// Fills `cache` with (cos, sin) pairs for position `pos` and `cache.len()` rotated dimensions. `factors`, when the
/// model has them (Llama 3's `rope_freqs`, one per pair), divide each pair's angle, as ggml's `rope_cache_init`
/// divides by its `freq_factors` (1 for every pair without them, which leaves the angle's bits unchanged).
pub fn rope_cache(cache: &mut [f32], pos: usize, base: f32, factors: Option<&[f32]>) {
    let n_dims = cache.len();
    let theta_scale = libm::powf(base, -2.0 / n_dims as f32);
    let mut theta = pos as f32;
    for (i, pair) in cache.chunks_exact_mut(2).enumerate() {
        let factor = factors.map_or(1.0, |f| f[i]);
        // The C library's sincosf, as llama.cpp's `rope_yarn` gets it (GCC merges its cosf and sinf calls).
        let (sin, cos) = crate::trig::sincosf(theta / factor);
        pair[0] = cos;
        pair[1] = sin;
        theta *= theta_scale;
    }
}

/// Rotates one head vector `x` (length = `cache.len()`) in place with a cache from [`rope_cache`].
pub fn rope_apply(x: &mut [f32], cache: &[f32], style: RopeStyle) {
    let n = cache.len();
    let fused = !crate::simd::sse_orders();
    for i in 0..n / 2 {
        let (c, s) = (cache[2 * i], cache[2 * i + 1]);
        let (a, b) = match style {
            RopeStyle::Normal => (2 * i, 2 * i + 1),
            RopeStyle::Neox => (i, i + n / 2),
        };
        let (x0, x1) = (x[a], x[b]);
        if fused {
            // ggml's `rotate_pairs`, as GCC contracts it with FMA available: the first product is fused.
            x[a] = libm::fmaf(x0, c, -(x1 * s));
            x[b] = libm::fmaf(x0, s, x1 * c);
        } else {
            // As llama.cpp's SSE build computes it (no FMA to contract into).
            x[a] = x0 * c - x1 * s;
            x[b] = x0 * s + x1 * c;
        }
    }
}

/// `gate = silu(gate) * up`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = x / (1.0 + libm::expf(-x)) * u;
    }
}

const GELU_COEF_A: f32 = 0.044715;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// ggml's tanh-approximated GELU in f32, given its inner factor `1 + GELU_COEF_A·x·x`.
fn gelu_with(x: f32, inner: f32) -> f32 {
    0.5 * x * (1.0 + libm::tanhf(SQRT_2_OVER_PI * x * inner))
}

/// The inner factor as a build with FMA computes it: ggml's C source writes `1.0f + GELU_COEF_A*x*x`, and GCC
/// contracts it into one FMA (-ffp-contract=fast), which moves one table entry (x = -1.9990234) to the
/// neighbouring f16.
fn gelu_inner_fused(x: f32) -> f32 {
    libm::fmaf(GELU_COEF_A * x, x, 1.0)
}

/// The inner factor as llama.cpp's SSE build computes it: a multiply, a multiply, an add.
fn gelu_inner_unfused(x: f32) -> f32 {
    GELU_COEF_A * x * x + 1.0
}

/// ggml's GELU lookup table: GELU of every f16 input, stored as f16 (65,536 entries), in two versions: as builds
/// with FMA compute it, and as llama.cpp's SSE build does (the portable kernels' orders, [`crate::sse`]). They
/// differ in a few entries: the second is computed again only where the inner factors differ.
pub struct GeluTable {
    fused: Vec<u16>,
    unfused: Vec<u16>,
}

impl GeluTable {
    pub fn new() -> GeluTable {
        let mut fused = Vec::with_capacity(1 << 16);
        // (index, entry) where the unfused table differs.
        let mut unfused = Vec::new();
        for bits in 0..=u16::MAX {
            let x = f16_to_f32(bits.to_le_bytes());
            let to_f16 = |v: f32| u16::from_le_bytes(f32_to_f16(v));
            let (a, b) = (gelu_inner_fused(x), gelu_inner_unfused(x));
            let entry = to_f16(gelu_with(x, a));
            fused.push(entry);
            if a != b {
                let other = to_f16(gelu_with(x, b));
                if other != entry {
                    unfused.extend([bits, other]);
                }
            }
        }
        let mut table = fused.clone();
        for pair in unfused.chunks_exact(2) {
            table[pair[0] as usize] = pair[1];
        }
        GeluTable {
            fused,
            unfused: table,
        }
    }

    /// The table for the orders in use.
    fn table(&self) -> &[u16] {
        if crate::simd::sse_orders() {
            &self.unfused
        } else {
            &self.fused
        }
    }

    /// `gate = gelu(gate) * up`, with GELU looked up through f16 as ggml does on the CPU.
    pub fn geglu(&self, gate: &mut [f32], up: &[f32]) {
        crate::simd::geglu_lookup(self.table(), gate, up);
    }

    /// [`GeluTable::geglu`] through the scalar code alone (the reference its SIMD path is tested against).
    pub fn geglu_scalar(&self, gate: &mut [f32], up: &[f32]) {
        geglu_lookup(self.table(), gate, up);
    }
}

/// `gate = gelu(gate) * up` through a 65,536-entry f16 GELU table indexed by x's f16 bits: 0 for x ≤ -10, x·up
/// for x ≥ 10 (ggml's `ggml_vec_geglu_f32` with `GGML_GELU_FP16`).
pub fn geglu_lookup(table: &[u16], gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            let idx = u16::from_le_bytes(f32_to_f16(x));
            f16_to_f32(table[idx as usize].to_le_bytes()) * u
        };
    }
}

impl Default for GeluTable {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_unit_rms() {
        let x = [3.0f32, -4.0, 0.0, 0.0];
        let mut o = [0.0; 4];
        rmsnorm(&mut o, &x, &[1.0; 4], 0.0);
        // rms = sqrt(25/4) = 2.5
        assert!((o[0] - 1.2).abs() < 1e-6 && (o[1] + 1.6).abs() < 1e-6);
    }

    #[test]
    fn softmax_sums_to_one_and_orders() {
        let mut x = [1.0f32, 2.0, 3.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[0] < x[1] && x[1] < x[2]);
    }

    #[test]
    fn rope_position_zero_is_identity_and_rotation_preserves_norm() {
        let mut cache = [0.0f32; 8];
        rope_cache(&mut cache, 0, 10000.0, None);
        let mut x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let before = x;
        rope_apply(&mut x, &cache, RopeStyle::Normal);
        assert_eq!(x, before);
        rope_cache(&mut cache, 7, 10000.0, None);
        rope_apply(&mut x, &cache, RopeStyle::Neox);
        let n0: f32 = before.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-3);
        assert_ne!(x, before);
    }

    #[test]
    fn gelu_tables_differ_where_the_inner_factor_is_fused() {
        let t = GeluTable::new();
        let differing: Vec<usize> = (0..t.fused.len())
            .filter(|&i| t.fused[i] != t.unfused[i])
            .collect();
        // The entry the fused inner factor moves (f16 bits of -1.9990234), and each differing entry is the
        // unfused formula's value.
        assert!(
            differing.contains(&(u16::from_le_bytes(f32_to_f16(-1.999_023_4)) as usize)),
            "{differing:?}"
        );
        for &i in &differing {
            let x = f16_to_f32((i as u16).to_le_bytes());
            let unfused = u16::from_le_bytes(f32_to_f16(gelu_with(x, gelu_inner_unfused(x))));
            assert_eq!(t.unfused[i], unfused, "entry {i}");
        }
    }

    #[test]
    fn gelu_table_close_to_exact() {
        let t = GeluTable::new();
        for &v in &[-3.0f32, -0.5, 0.0, 0.3, 1.0, 2.5, 12.0, -11.0] {
            let mut g = [v];
            t.geglu(&mut g, &[1.0]);
            let exact = if v <= -10.0 {
                0.0
            } else if v >= 10.0 {
                v
            } else {
                gelu_with(v, gelu_inner_fused(v))
            };
            assert!(
                (g[0] - exact).abs() <= 2e-3 * exact.abs().max(1.0),
                "{v}: {} vs {exact}",
                g[0]
            );
        }
    }
}
