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

/// The file-layout fallback: group by group, the 4 rows' blocks given back, then `file` on them. It allocates one
/// group's blocks per call; only a level forced below the one the model was interleaved for reaches it.
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

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;
    use crate::quant::interleaved::pack_group;
    use crate::quant::interleaved::tests::bytes;

    /// `n` random blocks of `size` bytes with a finite leading f16.
    fn blocks<B: bytemuck::Pod>(n: usize, size: usize, seed: u32) -> Vec<B> {
        let mut b = bytes(n * size, seed);
        for (i, block) in b.chunks_exact_mut(size).enumerate() {
            block[..2].copy_from_slice(&[(i * 7) as u8, 0x2c + (i % 16) as u8]);
        }
        bytemuck::cast_slice(&b).to_vec()
    }

    /// A product with [`mat_q4_1_interleaved`]'s arguments.
    type SlabMat<A> =
        fn(&[u8], usize, usize, &ActTile<'_, A>, usize, &mut [f32], usize, &mut [f32]);

    /// The interleaved product (at this CPU's level, and through the group-by-group fallback) against the file
    /// layout's, bit for bit, for one token and batches.
    fn check<W: Interleave, A: bytemuck::Pod>(
        act_bytes: usize,
        file: FileMat<W, A>,
        slabs: SlabMat<A>,
    ) {
        let (rows, nb) = (24, 7);
        let w: Vec<W> = blocks(rows * nb, W::BYTES, 3);
        let mut x4: Vec<u8> = bytemuck::cast_slice(&w).to_vec();
        let mut scratch = vec![0u8; GROUP * nb * W::BYTES];
        for group in x4.chunks_exact_mut(GROUP * nb * W::BYTES) {
            pack_group::<W>(group, nb, &mut scratch);
        }
        for batch in [1usize, 3, 9] {
            let y: Vec<A> = blocks(nb * batch, act_bytes, 5);
            let d: Vec<f32> = (0..nb * batch)
                .map(|k| 0.01 + (k % 13) as f32 * 0.003)
                .collect();
            let s: Vec<f32> = (0..nb * batch)
                .map(|k| 0.5 - (k % 11) as f32 * 0.07)
                .collect();
            let tile = ActTile {
                qs: &y[..],
                d: &d,
                s: &s,
                batch,
                col0: 0,
            };
            let mut work = vec![0.0f32; super::super::batch_work_len(nb * 32)];
            let mut want = vec![0.0f32; rows * batch];
            file(&w, nb, &tile, batch, &mut want, rows, &mut work);
            let mut got = vec![f32::NAN; rows * batch];
            slabs(&x4, rows, nb, &tile, batch, &mut got, rows, &mut work);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "batch {batch}");
            let mut got = vec![f32::NAN; rows * batch];
            by_groups::<W, A>(&x4, rows, nb, &tile, batch, &mut got, rows, &mut work, file);
            assert_eq!(bits(&got), bits(&want), "fallback, batch {batch}");
        }
    }

    #[test]
    fn q4_1_interleaved_products_equal_the_file_layouts() {
        check::<BlockQ4_1, BlockQ8_1>(36, mat_q4_1, mat_q4_1_interleaved);
    }

    #[test]
    fn q5_0_interleaved_products_equal_the_file_layouts() {
        check::<BlockQ5_0, BlockQ8_0>(34, mat_q5_0, mat_q5_0_interleaved);
    }
}
