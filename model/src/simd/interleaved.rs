//! Products of Q4_1 and Q5_0 matrices in the interleaved layout (`quant::interleaved`), bit for bit those of the
//! same matrices in the file's layout at every kernel level. At the AVX-512 level with VNNI they run on the slabs
//! (`avx512_quant/interleaved.rs`); elsewhere each group of 4 rows is given back in the file's layout and multiplied
//! by [`super::mat_q4_1`] or [`super::mat_q5_0`], which is slower but only a forced level or another CPU takes it
//! (the host interleaves a model only where [`interleaved_kernels`] says so).

use alloc::vec;

use super::{level, mat_q4_1, mat_q5_0, ActTile, Level};
use crate::quant::interleaved::{unpack_group, Interleave, GROUP};
use crate::quant::{BlockQ4_1, BlockQ5_0, BlockQ8_0, BlockQ8_1};

/// Whether the interleaved layout's kernels run at the kernel level in use (AVX-512 with VNNI), so that
/// rearranging a model (`crate::interleave`) speeds up its one-token products.
pub fn interleaved_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        level() == Level::Avx512 && super::avx512_quant::vnni()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A file-layout product ([`super::mat_q4_1`], [`super::mat_q5_0`]).
type FileMat<W, A> = fn(&[W], usize, &ActTile<'_, A>, usize, &mut [f32], usize, &mut [f32]);

/// The file-layout fallback: group by group, the 4 rows' blocks given back, then `file` on them.
#[allow(
    clippy::too_many_arguments,
    reason = "the product's operands, shape, output layout and work buffer, with the file-layout kernel"
)]
fn by_groups<W: Interleave, A>(
    slabs: &[u8],
    rows: usize,
    nb: usize,
    y: &ActTile<'_, A>,
    cols: usize,
    out: &mut [f32],
    ld: usize,
    work: &mut [f32],
    file: FileMat<W, A>,
) {
    let mut blocks = vec![<W as bytemuck::Zeroable>::zeroed(); GROUP * nb];
    let group_bytes = GROUP * nb * W::BYTES;
    for g in 0..rows / GROUP {
        unpack_group::<W>(
            &slabs[g * group_bytes..(g + 1) * group_bytes],
            nb,
            &mut blocks,
        );
        file(&blocks, nb, y, cols, &mut out[g * GROUP..], ld, work);
    }
}

macro_rules! mat_interleaved {
    ($(#[$m:meta])* $name:ident, $w:ty, $a:ty, $file:ident) => {
        $(#[$m])*
        ///
        /// `out[c * ld + r] = W[r] · y[col0 + c]` for the `rows` rows (a multiple of 4) of `nb` blocks whose slabs
        /// are `slabs`, and the `cols` columns of `y`, as the file-layout product computes them; panics if a slice
        /// is shorter than stated. `work` as the file-layout product's.
        #[allow(
            clippy::too_many_arguments,
            reason = "the file-layout product's arguments, with the row count the slabs do not carry"
        )]
        pub fn $name(
            slabs: &[u8],
            rows: usize,
            nb: usize,
            y: &ActTile<'_, $a>,
            cols: usize,
            out: &mut [f32],
            ld: usize,
            work: &mut [f32],
        ) {
            assert!(rows % GROUP == 0 && slabs.len() >= rows * nb * <$w as Interleave>::BYTES);
            #[cfg(target_arch = "x86_64")]
            if interleaved_kernels() {
                // SAFETY: `interleaved_kernels()` holds only at the Avx512 level, which `level()` returns only
                // after CPUID/XGETBV confirmed AVX-512 F, DQ, BW and VL, AVX2, FMA and F16C with OS support for ZMM
                // state, and where CPUID reported AVX512_VNNI; the kernel checks the slices' lengths.
                return unsafe {
                    super::avx512_quant::interleaved::mat::<$w>(slabs, rows, nb, y, cols, out, ld, work)
                };
            }
            by_groups::<$w, $a>(slabs, rows, nb, y, cols, out, ld, work, $file);
        }
    };
}

mat_interleaved!(
    /// Q4_1 weights in the interleaved layout × Q8_1 activations.
    mat_q4_1_interleaved, BlockQ4_1, BlockQ8_1, mat_q4_1);
mat_interleaved!(
    /// Q5_0 weights in the interleaved layout × Q8_0 activations.
    mat_q5_0_interleaved, BlockQ5_0, BlockQ8_0, mat_q5_0);
