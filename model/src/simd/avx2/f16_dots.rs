//! f16 dot products: ggml's `ggml_vec_dot_f16` orders, and many rows against one vector.

use super::*;

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(x: &[u16], y: &[u16]) -> f32 {
    let n = x.len().min(y.len());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n ≤ both lengths, so 8 u16 (16 bytes) are in bounds of each slice.
        let (a, b) = unsafe {
            (
                _mm_loadu_si128(x.as_ptr().add(i).cast()),
                _mm_loadu_si128(y.as_ptr().add(i).cast()),
            )
        };
        acc = _mm256_fmadd_ps(_mm256_cvtph_ps(a), _mm256_cvtph_ps(b), acc);
        i += 8;
    }
    let mut sum = hsum_ps(acc);
    for j in i..n {
        sum += f16(x[j].to_le_bytes()) * f16(y[j].to_le_bytes());
    }
    sum
}

/// Rows per pass of [`dots_f16`]: enough independent FMA chains to cover the FMA latency.
const DOTS_ROWS: usize = 8;

/// `out[i] = dot_f16(x[i * stride..][..y.len()], y)` for every `i < out.len()`, bit for bit: each row keeps its own
/// 8-lane chain, [`DOTS_ROWS`] rows advance together and share each converted block of `y`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dots_f16(x: &[u16], stride: usize, y: &[u16], out: &mut [f32]) {
    let n = y.len();
    let rows = out.len();
    assert!(rows == 0 || x.len() >= (rows - 1) * stride + n);
    let n8 = n / 8 * 8;
    let full = rows / DOTS_ROWS * DOTS_ROWS;
    for r in (0..full).step_by(DOTS_ROWS) {
        let mut acc = [_mm256_setzero_ps(); DOTS_ROWS];
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 ≤ n = y.len().
            let b = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(y.as_ptr().add(i).cast()) });
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: (r + j) * stride + i + 8 ≤ (rows - 1) * stride + n ≤ x.len() (asserted above).
                let xa = unsafe { _mm_loadu_si128(x.as_ptr().add((r + j) * stride + i).cast()) };
                *a = _mm256_fmadd_ps(_mm256_cvtph_ps(xa), b, *a);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            let row = &x[(r + j) * stride..(r + j) * stride + n];
            let mut sum = hsum_ps(*a);
            for k in n8..n {
                sum += f16(row[k].to_le_bytes()) * f16(y[k].to_le_bytes());
            }
            out[r + j] = sum;
        }
    }
    for (i, o) in out.iter_mut().enumerate().skip(full) {
        // SAFETY: the caller guarantees AVX2, FMA and F16C.
        *o = unsafe { dot_f16(&x[i * stride..i * stride + n], y) };
    }
}

/// f16 · f16 as AVX2 `ggml_vec_dot_f16`: four 8-lane chains over steps of 32, an f64 tail.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16_ggml(x: &[u16], y: &[u16]) -> f32 {
    let n = x.len().min(y.len());
    let np = n / 32 * 32;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i < np {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8j + 8 ≤ np ≤ both lengths.
            let (p, q) = unsafe {
                (
                    _mm_loadu_si128(x.as_ptr().add(i + 8 * j).cast()),
                    _mm_loadu_si128(y.as_ptr().add(i + 8 * j).cast()),
                )
            };
            *a = _mm256_fmadd_ps(_mm256_cvtph_ps(p), _mm256_cvtph_ps(q), *a);
        }
        i += 32;
    }
    f16_ggml_finish(acc, &x[..n], &y[..n], np)
}

/// [`dot_f16_ggml`]'s end: the four chains summed as ggml sums them, then the f64 tail of `x`, `y` from `np`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_ggml_finish(acc: [__m256; 4], x: &[u16], y: &[u16], np: usize) -> f32 {
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
    let t0 = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    let t1 = _mm_hadd_ps(t0, t0);
    let mut sum = _mm_cvtss_f32(_mm_hadd_ps(t1, t1)) as f64;
    for (&a, &b) in x[np..].iter().zip(&y[np..]) {
        sum += (f16(a.to_le_bytes()) * f16(b.to_le_bytes())) as f64;
    }
    sum as f32
}

/// `out[r] = dot_f16_ggml(x[r * stride..][..y.len()], y)` for every row, bit for bit: rows four at a time, each
/// step's 32 elements of `y` converted once for the four (every row's chains take the same FMAs in the same order).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dots_f16_ggml(x: &[u16], stride: usize, y: &[u16], out: &mut [f32]) {
    let n = y.len();
    let rows = out.len();
    // Every row read below lies in `x`: row r spans r * stride .. r * stride + n.
    assert!(rows == 0 || (rows - 1) * stride + n <= x.len());
    let np = n / 32 * 32;
    let mut r = 0;
    while r + 4 <= rows {
        let mut acc = [[_mm256_setzero_ps(); 4]; 4];
        let mut i = 0;
        while i < np {
            for j in 0..4 {
                // SAFETY: i + 8j + 8 ≤ np ≤ n = y.len().
                let q =
                    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(y.as_ptr().add(i + 8 * j).cast()) });
                for (k, a) in acc.iter_mut().enumerate() {
                    // SAFETY: (r + k) stride + i + 8j + 8 ≤ (r + k) stride + n ≤ x.len() (asserted above).
                    let p = unsafe {
                        _mm_loadu_si128(x.as_ptr().add((r + k) * stride + i + 8 * j).cast())
                    };
                    a[j] = _mm256_fmadd_ps(_mm256_cvtph_ps(p), q, a[j]);
                }
            }
            i += 32;
        }
        for (k, a) in acc.into_iter().enumerate() {
            let row = &x[(r + k) * stride..(r + k) * stride + n];
            out[r + k] = f16_ggml_finish(a, row, y, np);
        }
        r += 4;
    }
    for (k, o) in out[r..].iter_mut().enumerate() {
        // SAFETY: the caller's guarantee of the CPU features holds.
        *o = unsafe { dot_f16_ggml(&x[(r + k) * stride..(r + k) * stride + n], y) };
    }
}
