//! The engine's SIMD kernels and their run-time dispatch: the only module of `model` allowed to use `unsafe`.
//!
//! Each public function here picks, once per process, between an AVX-512 kernel (where it has one), an
//! AVX2+FMA+F16C kernel (when CPUID and XGETBV say the CPU and OS support it) and its scalar twin in
//! [`crate::quant`] (the AVX-512 ones' twins in [`crate::wide`]); tests assert each equals its twin. Detection
//! follows the Intel SDM vol. 2A (CPUID leaf 1 ECX bits 12 FMA, 27 OSXSAVE, 28 AVX, 29 F16C; leaf 7 EBX bits 5 AVX2,
//! 16 AVX512F, 17 AVX512DQ, 30 AVX512BW, 31 AVX512VL; XCR0 bits 1-2 for XMM/YMM state, 5-7 for opmask and ZMM state).
//!
//! The AVX-512 level exists because llama.cpp built for such a CPU sums f16 dot products, softmax and SwiGLU in
//! 16-lane orders (see [`crate::wide`]); the engine mirrors the set llama.cpp would use on the CPU at hand, and the
//! portable kernels (the scalar level) mirror llama.cpp built for SSE4.2 without AVX, the appliance's vCPU under
//! TCG ([`crate::sse`], [`sse_orders`]).

use core::sync::atomic::{AtomicU8, Ordering};

use crate::quant::{
    self, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1,
    BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1,
};
use crate::wide;

/// 0 = not yet probed, 1 = scalar, 2 = AVX2+FMA+F16C, 3 = AVX-512 (F, DQ, BW, VL) as well.
static LEVEL: AtomicU8 = AtomicU8::new(0);
/// The highest level [`force`] allows (same encoding; 0 = no limit).
static LIMIT: AtomicU8 = AtomicU8::new(0);
/// Whether the 16-lane orders are mirrored ([`wide_orders`]): 0 = not yet probed, 1 = no, 2 = yes.
static WIDE: AtomicU8 = AtomicU8::new(0);

/// Which kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Scalar,
    Avx2,
    /// AVX2 kernels, and the AVX-512 ones where llama.cpp's AVX-512 build sums in another order; with VNNI as
    /// well, the 32-element formats' matrix products of `simd/avx512_quant.rs` (the AVX2 results, faster).
    Avx512,
}

impl Level {
    fn code(self) -> u8 {
        match self {
            Level::Scalar => 1,
            Level::Avx2 => 2,
            Level::Avx512 => 3,
        }
    }
}

/// Probes the CPU (once) and returns the kernels in use.
pub fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        1 => Level::Scalar,
        2 => Level::Avx2,
        3 => Level::Avx512,
        _ => {
            let detected = if !detect_avx2() {
                Level::Scalar
            } else if detect_avx512() {
                Level::Avx512
            } else {
                Level::Avx2
            };
            let limit = LIMIT.load(Ordering::Relaxed);
            let l = match limit {
                1 => Level::Scalar,
                2 => detected.min(Level::Avx2),
                _ => detected,
            };
            let wide = l == Level::Avx512;
            WIDE.store(if wide { 2 } else { 1 }, Ordering::Relaxed);
            LEVEL.store(l.code(), Ordering::Relaxed);
            l
        }
    }
}

/// Whether the engine mirrors the summation orders of llama.cpp's AVX-512 build (16 lanes) rather than its AVX2
/// build's (8): at the AVX-512 level only. The portable kernels keep the SSE orders ([`sse_orders`]) on any CPU,
/// so that `generate --portable-kernels` on an AVX-512 host computes what the appliance computes under TCG.
pub fn wide_orders() -> bool {
    level();
    WIDE.load(Ordering::Relaxed) == 2
}

/// Whether the engine mirrors the orders of llama.cpp built for SSE4.2 without AVX ([`crate::sse`]): at the
/// scalar level (the portable kernels) only. llama.cpp has no tinyBLAS, repacked or tiled kernels there, so every
/// product takes its `ggml_vec_dot_*` order whatever the batch.
pub fn sse_orders() -> bool {
    level() == Level::Scalar
}

/// Runs the AVX-512 level as on a CPU that has AVX-512 F, DQ, BW and VL but not VNNI (`true`; Intel's Skylake-SP
/// Xeons, still common in clouds), or as the CPU is (`false`): the VNNI kernels give way to the AVX2 ones, and
/// [`interleaved_kernels`] no longer holds. The results are the same bits; this lets a CPU with VNNI test the
/// combination (the golden tests, the differential harness's `avx512-novnni` kernel set).
pub fn withhold_vnni(on: bool) {
    #[cfg(target_arch = "x86_64")]
    avx512_quant::withhold(on);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = on;
}

/// Forces the scalar kernels (for comparisons and for emulators whose AVX is slow); `false` re-probes.
pub fn force_scalar(on: bool) {
    force(on.then_some(Level::Scalar));
}

/// Caps the kernels at `max` (the CPU's best set at most), or lifts the cap (`None`); the CPU is probed again.
pub fn force(max: Option<Level>) {
    LIMIT.store(max.map_or(0, Level::code), Ordering::Relaxed);
    WIDE.store(0, Ordering::Relaxed);
    LEVEL.store(0, Ordering::Relaxed);
}

/// Whether the AVX2 kernels may run (at the AVX2 and AVX-512 levels).
fn avx2() -> bool {
    level() >= Level::Avx2
}

#[cfg(target_arch = "x86_64")]
fn detect_avx2() -> bool {
    use core::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
    // CPUID exists on every x86_64 CPU; leaf 0 reports the highest leaf, checked before leaf 7.
    let max_leaf = __cpuid(0).eax;
    if max_leaf < 7 {
        return false;
    }
    let l1 = __cpuid(1);
    let (fma, osxsave, avx, f16c) = (
        l1.ecx & (1 << 12) != 0,
        l1.ecx & (1 << 27) != 0,
        l1.ecx & (1 << 28) != 0,
        l1.ecx & (1 << 29) != 0,
    );
    if !(fma && osxsave && avx && f16c) {
        return false;
    }
    let avx2 = __cpuid_count(7, 0).ebx & (1 << 5) != 0;
    // SAFETY: OSXSAVE is set, so XGETBV is enabled and XCR0 readable.
    let xcr0 = unsafe { _xgetbv(0) };
    avx2 && (xcr0 & 0b110) == 0b110
}

/// AVX-512 F, DQ, BW and VL with the OS saving opmask and ZMM state; called only after [`detect_avx2`] said yes
/// (so CPUID leaf 7 exists and OSXSAVE is set).
#[cfg(target_arch = "x86_64")]
fn detect_avx512() -> bool {
    use core::arch::x86_64::{__cpuid_count, _xgetbv};
    let ebx = __cpuid_count(7, 0).ebx;
    let features = [16, 17, 30, 31].iter().all(|bit| ebx & (1 << bit) != 0);
    // SAFETY: `detect_avx2` returned true only with OSXSAVE set, so XGETBV is enabled and XCR0 readable.
    let xcr0 = unsafe { _xgetbv(0) };
    features && (xcr0 & 0xE6) == 0xE6
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_avx2() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_avx512() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_kquant;
#[cfg(target_arch = "x86_64")]
mod avx512_more_types;
#[cfg(target_arch = "x86_64")]
mod avx512_q4k;
#[cfg(target_arch = "x86_64")]
mod avx512_quant;
mod swar;

macro_rules! dispatch {
    ($(#[$m:meta])* $name:ident ($($arg:ident : $ty:ty),*) -> $ret:ty, $scalar:path) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if avx2() {
                // SAFETY: `level()` returned Avx2 or Avx512 only after CPUID/XGETBV confirmed AVX2, FMA and F16C
                // with OS support; the kernel checks slice lengths itself.
                return unsafe { avx2::$name($($arg),*) };
            }
            $scalar($($arg),*)
        }
    };
}

/// Like `dispatch!`, with an AVX-512 kernel first that is bit-identical to the AVX2 one (llama.cpp's AVX-512 build
/// computes these as its AVX2 build; the AVX-512 kernel only shares more work between tokens).
macro_rules! dispatch_512 {
    ($(#[$m:meta])* $name:ident ($($arg:ident : $ty:ty),*) -> $ret:ty, $scalar:path) => {
        dispatch_512!($(#[$m])* $name ($($arg : $ty),*) -> $ret, $scalar, avx512_more_types);
    };
    ($(#[$m:meta])* $name:ident ($($arg:ident : $ty:ty),*) -> $ret:ty, $scalar:path, $module:ident) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            match level() {
                // SAFETY: `level()` returned Avx512 only after CPUID/XGETBV confirmed AVX-512 F, DQ, BW and VL,
                // AVX2, FMA and F16C with OS support for ZMM state; the kernel checks slice lengths itself.
                Level::Avx512 => return unsafe { $module::$name($($arg),*) },
                // SAFETY: `level()` returned Avx2 only after CPUID/XGETBV confirmed AVX2, FMA and F16C with OS
                // support; the kernel checks slice lengths itself.
                Level::Avx2 => return unsafe { avx2::$name($($arg),*) },
                Level::Scalar => {}
            }
            $scalar($($arg),*)
        }
    };
}

dispatch!(
    /// Q4_0 weights · Q8_0 activations.
    dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32, crate::sse::dot_q4_0_q8_0);
dispatch!(
    /// Q4_1 weights · Q8_1 activations.
    dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32, quant::dot_q4_1_q8_1_generic);
dispatch!(
    /// Q5_0 weights · Q8_0 activations.
    dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32, quant::dot_q5_0_q8_0_generic);
dispatch!(
    /// Q8_0 weights · Q8_0 activations.
    dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32, quant::dot_q8_0_q8_0_generic);
dispatch!(
    /// Q4_K weights · Q8_K activations.
    dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32, crate::sse::dot_q4_k_q8_k);
dispatch!(
    /// One token against 8 Q4_K rows of `nb` blocks (`w[r * nb..]`) in the order of llama.cpp's repacked gemv:
    /// `out[r] = W[r] · y` (each equal to [`quant::dot_q4_k_q8_k_gemv`]).
    mat_q4_k_gemv8(w: &[BlockQ4K], nb: usize, y: &[BlockQ8K], out: &mut [f32; 8]) -> (), scalar_q4_k_gemv8);
/// `cols` tokens (`y[t * nb..]`) against Q4_K rows of `nb` blocks (`w[r * nb..]`, a multiple of 8 rows) in
/// llama.cpp's repacked orders, `out[t * ld + r] = W[r] · y[t]`: the first `gemm` tokens (a multiple of 4)
/// through its gemm (each equal to [`quant::dot_q4_k_q8_k_gemm`]), the rest through its gemv
/// ([`quant::dot_q4_k_q8_k_gemv`]). `work` holds [`batch_work_len`] f32s for the weights it unpacks. At the
/// AVX-512 level with VNNI the gemm part takes 16 rows at a time (`simd/avx512_q4k.rs`, the same results).
#[allow(
    clippy::too_many_arguments,
    reason = "the product's operands, shape, output layout and work buffer, as the kernel takes them"
)]
pub fn mat_q4_k_repacked(
    w: &[BlockQ4K],
    nb: usize,
    y: &[BlockQ8K],
    cols: usize,
    gemm: usize,
    out: &mut [f32],
    ld: usize,
    work: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 && avx512_quant::vnni() {
        // SAFETY: `level()` returned Avx512 only after CPUID/XGETBV confirmed AVX-512 F, DQ, BW and VL, AVX2, FMA
        // and F16C with OS support for ZMM state, and CPUID reported AVX512_VNNI; slices are indexed with bounds
        // checks.
        return unsafe { avx512_q4k::mat_q4_k_repacked(w, nb, y, cols, gemm, out, ld, work) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: `level()` returned Avx2 or Avx512 only after CPUID/XGETBV confirmed AVX2, FMA and F16C with OS
        // support; the kernel checks slice lengths itself.
        return unsafe { avx2::mat_q4_k_repacked(w, nb, y, cols, gemm, out, ld, work) };
    }
    scalar_q4_k_repacked(w, nb, y, cols, gemm, out, ld, work)
}
dispatch_512!(
    /// One Q6_K row of `nb` blocks against `out.len()` tokens (`y[t * nb..]`) in the order of llama.cpp's tiled
    /// kernel: `out[t] = W · y[t]` (each equal to [`quant::dot_q6_k_q8_k_tiled`]).
    mat_q6_k_tiled(w: &[BlockQ6K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) -> (), scalar_q6_k_tiled,
    avx512_kquant);

fn scalar_q4_k_gemv8(w: &[BlockQ4K], nb: usize, y: &[BlockQ8K], out: &mut [f32; 8]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = quant::dot_q4_k_q8_k_gemv(&w[r * nb..(r + 1) * nb], &y[..nb]);
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "the AVX2 kernel's arguments, which the dispatch passes through unchanged"
)]
fn scalar_q4_k_repacked(
    w: &[BlockQ4K],
    nb: usize,
    y: &[BlockQ8K],
    cols: usize,
    gemm: usize,
    out: &mut [f32],
    ld: usize,
    _work: &mut [f32],
) {
    let rows = w.len().checked_div(nb).unwrap_or(0);
    for t in 0..cols {
        let yt = &y[t * nb..(t + 1) * nb];
        for r in 0..rows {
            let wr = &w[r * nb..(r + 1) * nb];
            out[t * ld + r] = if t < gemm {
                quant::dot_q4_k_q8_k_gemm(wr, yt)
            } else {
                quant::dot_q4_k_q8_k_gemv(wr, yt)
            };
        }
    }
}

fn scalar_q6_k_tiled(w: &[BlockQ6K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) {
    for (t, o) in out.iter_mut().enumerate() {
        *o = quant::dot_q6_k_q8_k_tiled(&w[..nb], &y[t * nb..(t + 1) * nb]);
    }
}
dispatch_512!(
    /// Q6_K weights · Q8_K activations.
    dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32, crate::sse::dot_q6_k_q8_k, avx512_kquant);
dispatch!(
    /// Q5_K weights · Q8_K activations.
    dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32, crate::sse::dot_q5_k_q8_k);
dispatch_512!(
    /// One Q5_K row of `nb` blocks against `out.len()` tokens (`y[t * nb..]`) in the order of llama.cpp's tiled
    /// kernel (each equal to [`quant::dot_q5_k_q8_k_tiled`]).
    mat_q5_k_tiled(w: &[BlockQ5K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) -> (), scalar_q5_k_tiled);
dispatch!(
    /// Q5_1 weights · Q8_1 activations.
    dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32, crate::sse::dot_q5_1_q8_1);
dispatch!(
    /// Q3_K weights · Q8_K activations.
    dot_q3_k_q8_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32, crate::sse::dot_q3_k_q8_k);
dispatch_512!(
    /// One Q3_K row against `out.len()` tokens in llama.cpp's tiled order ([`quant::dot_q3_k_q8_k_tiled`]).
    mat_q3_k_tiled(w: &[BlockQ3K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) -> (), scalar_q3_k_tiled);
dispatch!(
    /// Q2_K weights · Q8_K activations.
    dot_q2_k_q8_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32, crate::sse::dot_q2_k_q8_k);
dispatch_512!(
    /// One Q2_K row against `out.len()` tokens in llama.cpp's tiled order ([`quant::dot_q2_k_q8_k_tiled`]).
    mat_q2_k_tiled(w: &[BlockQ2K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) -> (), scalar_q2_k_tiled);
/// bf16 · bf16 (little-endian byte pairs) for one token, as `ggml_vec_dot_bf16` orders it for the kernel set: at
/// the AVX-512 level its AVX512-BF16 form (AVX-512F where the CPU lacks BF16), at the AVX2 level the AVX2 form, on
/// the portable kernels the scalar loop of llama.cpp's SSE4.2 build ([`crate::sse::dot_bf16`]), which it takes for
/// a batch as well (no tinyBLAS there).
pub fn dot_bf16(x: &[[u8; 2]], y: &[[u8; 2]]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        // SAFETY: `level()` returned Avx512 only after CPUID/XGETBV confirmed AVX-512 F, DQ, BW and VL, AVX2, FMA
        // and F16C with OS support for ZMM state; `has_bf16` checked AVX512-BF16.
        return unsafe {
            if avx512_more_types::has_bf16() {
                avx512_more_types::dot_bf16_dp(x, y)
            } else {
                avx512_more_types::dot_bf16_f(x, y)
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: `level()` returned Avx2 or Avx512 only after CPUID/XGETBV confirmed AVX2, FMA and F16C with OS
        // support.
        return unsafe { avx2::dot_bf16(x, y) };
    }
    crate::sse::dot_bf16(x, y)
}

/// bf16 · bf16 for a batch of 2 or more tokens of a matrix with `rows` rows: at the AVX-512 level tinyBLAS's
/// 16-lane chain (AVX512-BF16 or AVX-512F, `crate::wide::dot_bf16_chain_dp` / `_f`) where llama.cpp takes it
/// (row count a multiple of 4, length a multiple of the chain's step), otherwise [`dot_bf16`].
pub fn dot_bf16_batched(x: &[[u8; 2]], y: &[[u8; 2]], rows: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 && rows.is_multiple_of(4) {
        let n = x.len().min(y.len());
        // SAFETY: as in `dot_bf16`.
        unsafe {
            if avx512_more_types::has_bf16() {
                if n.is_multiple_of(32) {
                    return avx512_more_types::dot_bf16_chain_dp(x, y);
                }
            } else if n.is_multiple_of(16) {
                return avx512_more_types::dot_bf16_chain_f(x, y);
            }
        }
    }
    dot_bf16(x, y)
}

/// `out[j] = dot_bf16_batched(x, y[j * stride..][..x.len()], rows)` for every `j < out.len()`, bit for bit; at the
/// AVX-512 level the tokens share each load of the weight row.
pub fn dots_bf16_batched(
    x: &[[u8; 2]],
    y: &[[u8; 2]],
    stride: usize,
    rows: usize,
    out: &mut [f32],
) {
    let n = x.len();
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 && rows.is_multiple_of(4) {
        // SAFETY: as in `dot_bf16`; the kernels check slice lengths themselves.
        unsafe {
            if avx512_more_types::has_bf16() {
                if n.is_multiple_of(32) {
                    return avx512_more_types::dots_bf16_chain_dp(x, y, stride, out);
                }
            } else if n.is_multiple_of(16) {
                return avx512_more_types::dots_bf16_chain_f(x, y, stride, out);
            }
        }
    }
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot_bf16_batched(x, &y[j * stride..j * stride + n], rows);
    }
}

/// Whether Q2_K matrices of 8k rows are multiplied in llama.cpp's repacked order ([`mat_q2_k_repacked`]): at the
/// AVX-512 level, where llama.cpp repacks them.
pub fn q2_k_repacks() -> bool {
    level() == Level::Avx512
}

/// `cols` tokens (`y[t * nb..]`) against Q2_K rows of `nb` blocks (a multiple of 8 rows) in llama.cpp's repacked
/// orders, `out[t * ld + r] = W[r] · y[t]`: the first `gemm` tokens through its gemm
/// ([`crate::wide::dot_q2_k_q8_k_gemm`]), the rest through its gemv ([`crate::wide::dot_q2_k_q8_k_gemv`]).
pub fn mat_q2_k_repacked(
    w: &[BlockQ2K],
    nb: usize,
    y: &[BlockQ8K],
    cols: usize,
    gemm: usize,
    out: &mut [f32],
    ld: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        // SAFETY: as in `dot_bf16`; the kernel checks slice lengths itself.
        return unsafe { avx512_more_types::mat_q2_k_repacked(w, nb, y, cols, gemm, out, ld) };
    }
    let rows = w.len().checked_div(nb).unwrap_or(0);
    for t in 0..cols {
        let yt = &y[t * nb..(t + 1) * nb];
        for r in 0..rows {
            let wr = &w[r * nb..(r + 1) * nb];
            out[t * ld + r] = if t < gemm {
                wide::dot_q2_k_q8_k_gemm(wr, yt)
            } else {
                wide::dot_q2_k_q8_k_gemv(wr, yt)
            };
        }
    }
}

fn scalar_q5_k_tiled(w: &[BlockQ5K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) {
    for (t, o) in out.iter_mut().enumerate() {
        *o = quant::dot_q5_k_q8_k_tiled(&w[..nb], &y[t * nb..(t + 1) * nb]);
    }
}

fn scalar_q3_k_tiled(w: &[BlockQ3K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) {
    for (t, o) in out.iter_mut().enumerate() {
        *o = quant::dot_q3_k_q8_k_tiled(&w[..nb], &y[t * nb..(t + 1) * nb]);
    }
}

fn scalar_q2_k_tiled(w: &[BlockQ2K], nb: usize, y: &[BlockQ8K], out: &mut [f32]) {
    for (t, o) in out.iter_mut().enumerate() {
        *o = quant::dot_q2_k_q8_k_tiled(&w[..nb], &y[t * nb..(t + 1) * nb]);
    }
}
/// Like `dispatch!`, with an AVX-512 kernel first: for the functions llama.cpp's AVX-512 build computes in another
/// order than its AVX2 one. The AVX-512 kernel equals its twin in [`crate::wide`] (which the portable kernels use
/// under [`wide_orders`]), the AVX2 one its twin in [`crate::quant`].
macro_rules! dispatch_wide {
    ($(#[$m:meta])* $name:ident ($($arg:ident : $ty:ty),*) -> $ret:ty, $scalar:path, $scalar_wide:path) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            match level() {
                // SAFETY: `level()` returned Avx512 only after CPUID/XGETBV confirmed AVX-512 F, DQ, BW and VL,
                // AVX2, FMA and F16C with OS support for ZMM state; the kernel checks slice lengths itself.
                Level::Avx512 => return unsafe { avx512::$name($($arg),*) },
                // SAFETY: `level()` returned Avx2 only after CPUID/XGETBV confirmed AVX2, FMA and F16C with OS
                // support; the kernel checks slice lengths itself.
                Level::Avx2 => return unsafe { avx2::$name($($arg),*) },
                Level::Scalar => {}
            }
            if wide_orders() {
                return $scalar_wide($($arg),*);
            }
            $scalar($($arg),*)
        }
    };
}

/// Lanes of the f16 FMA chain [`dot_f16`] and [`dots_f16`] use (tinyBLAS's `KN`): 16 under [`wide_orders`], 8
/// otherwise. Lengths given to them must be multiples of it.
pub fn f16_chain_lanes() -> usize {
    if wide_orders() {
        16
    } else {
        8
    }
}

/// Elements per step of [`dot_f16_ggml`] (`GGML_F16_STEP`): 64 under [`wide_orders`], 32 otherwise; the rest of a
/// length goes through its f64 tail.
pub fn f16_ggml_step() -> usize {
    if wide_orders() {
        64
    } else {
        32
    }
}

dispatch_wide!(
    /// f16 · f16 as tinyBLAS orders it (one FMA chain of [`f16_chain_lanes`] lanes); lengths a multiple of that.
    dot_f16(x: &[u16], y: &[u16]) -> f32, quant::dot_f16_chain, wide::dot_f16_chain16);
dispatch_wide!(
    /// `out[i] = dot_f16(x[i * stride..][..y.len()], y)` for each output: several rows' chains advance together.
    dots_f16(x: &[u16], stride: usize, y: &[u16], out: &mut [f32]) -> (), scalar_dots_f16, scalar_dots_f16_wide);

fn scalar_dots_f16(x: &[u16], stride: usize, y: &[u16], out: &mut [f32]) {
    let n = y.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = quant::dot_f16_chain(&x[i * stride..i * stride + n], y);
    }
}

fn scalar_dots_f16_wide(x: &[u16], stride: usize, y: &[u16], out: &mut [f32]) {
    let n = y.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = wide::dot_f16_chain16(&x[i * stride..i * stride + n], y);
    }
}
dispatch_wide!(
    /// f16 · f16 as `ggml_vec_dot_f16` orders it (four chains of 8 lanes, or 16 at the AVX-512 level; f64 tail).
    dot_f16_ggml(x: &[u16], y: &[u16]) -> f32, crate::sse::dot_f16_ggml, wide::dot_f16_ggml16);
dispatch_wide!(
    /// `out[r] = dot_f16_ggml(x[r * stride..][..y.len()], y)` for every row, bit for bit (`y` converted once for
    /// several rows where the kernels allow).
    dots_f16_ggml(x: &[u16], stride: usize, y: &[u16], out: &mut [f32]) -> (), scalar_dots_f16_ggml,
    scalar_dots_f16_ggml_wide);

fn scalar_dots_f16_ggml(x: &[u16], stride: usize, y: &[u16], out: &mut [f32]) {
    let n = y.len();
    for (r, o) in out.iter_mut().enumerate() {
        *o = crate::sse::dot_f16_ggml(&x[r * stride..r * stride + n], y);
    }
}

fn scalar_dots_f16_ggml_wide(x: &[u16], stride: usize, y: &[u16], out: &mut [f32]) {
    let n = y.len();
    for (r, o) in out.iter_mut().enumerate() {
        *o = wide::dot_f16_ggml16(&x[r * stride..r * stride + n], y);
    }
}

/// [`dots_f16_ggml`] where `y` is zero from `live` on: [`dot_f16_ggml_live`] for every row (the same bits).
pub fn dots_f16_ggml_live(x: &[u16], stride: usize, y: &[u16], live: usize, out: &mut [f32]) {
    if sse_orders() {
        let n = y.len();
        for (r, o) in out.iter_mut().enumerate() {
            *o = crate::sse::dot_f16_ggml_live(&x[r * stride..r * stride + n], y, live);
        }
        return;
    }
    dots_f16_ggml(
        x,
        stride,
        &y[..live_steps(live, f16_ggml_step(), y.len())],
        out,
    )
}

/// [`dot_f16_ggml`] of `x` and `y` (equal lengths, a multiple of [`f16_ggml_step`]) where `y` is zero from `live`
/// on, computed only as far as a product can be nonzero: the portable kernels to `live`
/// ([`crate::sse::dot_f16_ggml_live`]), the others to the end of the step `live` falls in. The bits are those of
/// the whole length: every accumulator lane starts at +0 and gets the same nonzero products in the same order, and
/// adding a zero product (`0 · v`, `v` finite) leaves a lane as it was (round to nearest turns +0 + -0 into +0, so
/// a lane at +0 stays +0). Attention's probability rows are zero past the query's position, where the cache holds
/// finite values (zeros, or an earlier sequence's).
pub fn dot_f16_ggml_live(x: &[u16], y: &[u16], live: usize) -> f32 {
    if sse_orders() {
        return crate::sse::dot_f16_ggml_live(x, y, live);
    }
    let n = live_steps(live, f16_ggml_step(), y.len());
    dot_f16_ggml(&x[..n], &y[..n])
}

/// `live` rounded up to whole steps of `step`, at most `len`.
pub fn live_steps(live: usize, step: usize, len: usize) -> usize {
    live.div_ceil(step).saturating_mul(step).min(len)
}

/// Elements per group of [`softmax_exp`] (16 under [`wide_orders`], 4 under [`sse_orders`], 8 otherwise): a
/// prefix of a row whose length is a multiple of it is summed in the same groups as the whole row.
pub fn softmax_lanes() -> usize {
    if wide_orders() {
        16
    } else if sse_orders() {
        4
    } else {
        8
    }
}

dispatch_wide!(
    /// `x[i] = exp(x[i] - max)` with ggml's vector expf; returns the f64 sum.
    softmax_exp(x: &mut [f32], max: f32) -> f64, crate::sse::softmax_exp, wide::softmax_exp16);
dispatch_wide!(
    /// `gate = silu(gate) * up` with ggml's vector expf.
    swiglu(gate: &mut [f32], up: &[f32]) -> (), crate::sse::swiglu, wide::swiglu16);
dispatch!(
    /// `gate = gelu(gate) * up` through ggml's f16 GELU table (see [`crate::math::GeluTable`]).
    geglu_lookup(table: &[u16], gate: &mut [f32], up: &[f32]) -> (), crate::math::geglu_lookup);
dispatch!(
    /// f32 → Q8_0 activations.
    quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) -> (), crate::sse::quantize_q8_0);
dispatch!(
    /// f32 → Q8_1 activations.
    quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) -> (), crate::sse::quantize_q8_1);
dispatch!(
    /// `out[i] = f16(x[i] · scale)` as bits: attention's query and probabilities (F16C where the CPU has it).
    scale_to_f16(x: &[f32], scale: f32, out: &mut [u16]) -> (), quant::scale_to_f16);

/// Where a matrix product reads its quantized activations: `C` columns of `nb` blocks each (`qs[c * nb + k]`) and
/// their scales as f32, stored block-major for the whole batch (`d[k * batch + col0 + c]`; `s` likewise, Q8_1's
/// `s` only, empty otherwise).
pub struct ActTile<'a, A> {
    pub qs: &'a [A],
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub batch: usize,
    pub col0: usize,
}

/// f32s of work buffer one batched product (a matrix product kernel with several tokens) needs for rows of up to
/// `max_cols` elements: room for the weight blocks it unpacks once per product.
pub fn batch_work_len(max_cols: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    return avx2::work_len(max_cols)
        .max(avx512_quant::work_len(max_cols))
        .max(avx512_q4k::work_len(max_cols));
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = max_cols;
        0
    }
}

macro_rules! mat_dispatch {
    ($(#[$m:meta])* $name:ident, $w:ty, $a:ty, $scalar:path) => {
        mat_dispatch!($(#[$m])* $name, $w, $a, $scalar, None::<ScalarMat<$w, $a>>);
    };
    // `Avx512` last: the type has a kernel in `avx512_quant`, run at the AVX-512 level when the CPU has VNNI.
    ($(#[$m:meta])* $name:ident, $w:ty, $a:ty, $scalar:path, $batched:expr $(, $wide:ident)?) => {
        $(#[$m])*
        ///
        /// `out[c * ld + r] = W[r] · y[col0 + c]` for every row of `w` (`w.len() / nb` rows of `nb` blocks) and the
        /// `cols` columns of `y` from `y.col0` (`y.qs` starting at column `col0`'s blocks; `y.batch` columns in
        /// all, which is how `y.d` and `y.s` are laid out). The AVX2 path is bit-identical to the single-row AVX2
        /// dot product of the same types; panics if a slice is shorter than stated. `work` holds
        /// [`batch_work_len`] f32s for the weights a batched product unpacks (a single token needs none).
        pub fn $name(
            w: &[$w],
            nb: usize,
            y: &ActTile<'_, $a>,
            cols: usize,
            out: &mut [f32],
            ld: usize,
            work: &mut [f32],
        ) {
            #[cfg(target_arch = "x86_64")]
            $(if level() == Level::$wide && avx512_quant::vnni() {
                // SAFETY: `level()` returned Avx512 only after CPUID/XGETBV confirmed AVX-512 F, DQ, BW and VL,
                // AVX2, FMA and F16C with OS support for ZMM state, and CPUID reported AVX512_VNNI; slices are
                // indexed with bounds checks.
                return unsafe { avx512_quant::mat_q0::<$w>(w, nb, y, cols, out, ld, work) };
            })?
            #[cfg(target_arch = "x86_64")]
            if avx2() {
                // SAFETY: `level()` returned Avx2 or Avx512 only after CPUID/XGETBV confirmed AVX2, FMA and F16C
                // with OS support; slices are indexed with bounds checks.
                return unsafe { avx2::mat_q0::<$w>(w, nb, y, cols, out, ld, work) };
            }
            let _ = work;
            if let Some(batched) = $batched {
                return batched(w, nb, y, cols, out, ld);
            }
            let rows = w.len().checked_div(nb).unwrap_or(0);
            for c in 0..cols {
                for r in 0..rows {
                    out[c * ld + r] = $scalar(&w[r * nb..(r + 1) * nb], &y.qs[c * nb..(c + 1) * nb]);
                }
            }
        }
    };
}

mat_dispatch!(
    /// Q4_0 weights × Q8_0 activations.
    mat_q4_0, BlockQ4_0, BlockQ8_0, crate::sse::dot_q4_0_q8_0, None::<ScalarMat<BlockQ4_0, BlockQ8_0>>, Avx512);
mat_dispatch!(
    /// Q4_1 weights × Q8_1 activations. Without AVX2, batches of four or more tokens go through the packed portable
    /// kernel of `simd/swar.rs`, four tokens per integer multiply (same results, faster under QEMU's TCG).
    mat_q4_1, BlockQ4_1, BlockQ8_1, quant::dot_q4_1_q8_1_generic, Some(swar::mat_q4_1 as ScalarMat<BlockQ4_1, BlockQ8_1>),
    Avx512);

/// A portable matrix product with [`mat_q4_1`]'s arguments, less the work buffer.
type ScalarMat<W, A> = fn(&[W], usize, &ActTile<'_, A>, usize, &mut [f32], usize);
mat_dispatch!(
    /// Q5_1 weights × Q8_1 activations.
    mat_q5_1, BlockQ5_1, BlockQ8_1, crate::sse::dot_q5_1_q8_1, None::<ScalarMat<BlockQ5_1, BlockQ8_1>>, Avx512);
mat_dispatch!(
    /// Q5_0 weights × Q8_0 activations.
    mat_q5_0, BlockQ5_0, BlockQ8_0, quant::dot_q5_0_q8_0_generic, None::<ScalarMat<BlockQ5_0, BlockQ8_0>>, Avx512);
mat_dispatch!(
    /// Q8_0 weights × Q8_0 activations.
    mat_q8_0, BlockQ8_0, BlockQ8_0, quant::dot_q8_0_q8_0_generic, None::<ScalarMat<BlockQ8_0, BlockQ8_0>>, Avx512);

mod q4_0_repacked;
pub use q4_0_repacked::{mat_q4_0_repacked, q4_0_repacks};

mod interleaved;
pub use interleaved::{interleaved_kernels, mat_q4_1_interleaved, mat_q5_0_interleaved};

#[cfg(all(test, target_arch = "x86_64"))]
mod tests;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests_avx512;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests_avx512_kquant;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests_avx512_more_types;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests_avx512_q4k;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests_avx512_quant;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests_more_types;
