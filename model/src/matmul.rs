//! Weight tensors viewed in place ([`QTensor`]), activation quantization buffers ([`Acts`]) and the parallel
//! quantized matrix × vector / matrix × matrix product used by every projection of the forward pass.
//!
//! Layout follows ggml: a 2-D weight has `dims = [cols, rows]`, each row contiguous; `y[t][r] = W[r] · x[t]`.
//! The right-hand side is quantized once per product to the weight type's activation format (see [`crate::quant`]).
//! Each output is summed in the order llama.cpp's CPU backend (AVX2) uses for that weight type and batch size:
//! `ggml_vec_dot_*` / tinyBLAS for the 32-element formats; for Q4_K with a row count that is a multiple of 8 its
//! repacked 8-row gemm (groups of 4 tokens) and gemv (the batch's last `batch % 4` tokens), the weights staying in
//! the file's layout (a batch unpacks each 8-row group into a scratch buffer per product); other K-quant products
//! its tiled kernels from 8 tokens on, `ggml_vec_dot_*` below; Q5_1 and BF16 `ggml_vec_dot_*` at every batch size
//! (Q5_1 has no tinyBLAS kernel, and the 32-element tiles reproduce its order; for BF16 see `dot_row`). One worker writes the token-major output directly;
//! several split the rows and gather. At the AVX-512 level two types take the AVX-512 build's orders instead
//! (`crate::wide`'s `more_types`): Q2_K with a row count that is a multiple of 8 its repacked gemm/gemv at every
//! batch size, BF16 `vdpbf16ps` (tinyBLAS's chain for a batch, `ggml_vec_dot_bf16` for one token). Q4_0 with a row
//! count that is a multiple of 8 takes its repacked gemm/gemv order (one FMA per block, the same for every token) at
//! the AVX2 and AVX-512 levels, where llama.cpp repacks it. The portable kernels mirror llama.cpp built for SSE4.2
//! without AVX (`crate::sse`), which neither repacks nor tiles: every product there takes `ggml_vec_dot_*`'s order
//! (`ggml_vec_dot_q4_0_q8_0`'s SSSE3 branch, the generic code for the other types) at every batch size. Q4_1 and
//! Q5_0 matrices that the host rearranged into the interleaved layout (`crate::interleave`) are multiplied in groups
//! of 4 rows by `simd`'s `*_interleaved` products, which give the file layout's results bit for bit.

use alloc::vec;
use alloc::vec::Vec;

use crate::gguf::TensorInfo;
use crate::parallel::ParallelFor;
use crate::quant::{
    self, interleaved, ActType, BlockQ4_1, BlockQ5_0, BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType, QK,
    QK_K,
};
use crate::simd;

/// A 2-D weight matrix borrowed from the model blob.
#[derive(Clone, Copy, Debug)]
pub struct QTensor<'a> {
    pub ggml_type: GgmlType,
    pub rows: usize,
    pub cols: usize,
    row_bytes: usize,
    data: &'a [u8],
    /// The bytes are in the interleaved layout (`quant::interleaved`, made by `crate::interleave`): groups of 4
    /// rows, not rows one after another.
    interleaved: bool,
}

impl<'a> QTensor<'a> {
    /// Views a GGUF tensor as a `rows × cols` matrix; `None` if it is not 2-D (or 1-D, as one row) or its type
    /// cannot be multiplied here.
    pub fn new(info: &TensorInfo<'a>) -> Option<QTensor<'a>> {
        if info.n_dims > 2 || !info.ggml_type.is_computable() {
            return None;
        }
        let cols = usize::try_from(info.dims[0]).ok()?;
        let rows = usize::try_from(info.dims[1]).ok()?;
        let t = info.ggml_type;
        let row_bytes = cols / t.block_len() * t.block_bytes();
        if row_bytes.checked_mul(rows)? != info.data.len() {
            return None;
        }
        Some(QTensor {
            ggml_type: t,
            rows,
            cols,
            row_bytes,
            data: info.data,
            interleaved: info.interleaved,
        })
    }

    /// The raw bytes of row `r` (`r < rows`) in the file's layout; for an interleaved tensor, the bytes at that
    /// row's place (use [`QTensor::dequantize_row`] to read its values).
    pub fn row(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Whether the bytes are in the interleaved layout (`quant::interleaved`).
    pub fn interleaved(&self) -> bool {
        self.interleaved
    }

    /// Dequantizes row `r` into `out` (length `cols`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), quant::QuantError> {
        if !self.interleaved {
            return quant::dequantize(self.ggml_type, self.row(r), out);
        }
        // Row r's blocks given back from its group's slabs.
        let group = r / interleaved::GROUP;
        let bytes = &self.data[group * interleaved::GROUP * self.row_bytes..]
            [..interleaved::GROUP * self.row_bytes];
        let nb = self.cols / QK;
        let mut file = vec![0u8; interleaved::GROUP * self.row_bytes];
        match self.ggml_type {
            GgmlType::Q4_1 => interleaved::unpack_group::<BlockQ4_1>(
                bytes,
                nb,
                bytemuck::cast_slice_mut(&mut file),
            ),
            GgmlType::Q5_0 => interleaved::unpack_group::<BlockQ5_0>(
                bytes,
                nb,
                bytemuck::cast_slice_mut(&mut file),
            ),
            // `Gguf::parse` marks only these two interleaved.
            _ => return Err(quant::QuantError::Unsupported(self.ggml_type)),
        }
        let at = r % interleaved::GROUP * self.row_bytes;
        quant::dequantize(self.ggml_type, &file[at..at + self.row_bytes], out)
    }
}

/// Quantized copies of the right-hand side, allocated once for `max_batch × max_cols` elements.
pub struct Acts {
    q8_0: Vec<BlockQ8_0>,
    q8_1: Vec<BlockQ8_1>,
    q8_k: Vec<BlockQ8K>,
    f16: Vec<u16>,
    /// Scales of the Q8_0/Q8_1 blocks as f32, block-major (`[block][token]`), converted once per product.
    d: Vec<f32>,
    /// Q8_1's `s` as f32, laid out as `d`.
    s: Vec<f32>,
    /// Scratch for a batched product split by rows: each chunk's `[token][row]` block, gathered into the output.
    scratch: Vec<f32>,
    /// The batched kernels' work buffer (weights unpacked once per product) when one worker runs the product.
    work: Vec<f32>,
}

impl Acts {
    /// Buffers for products with up to `max_batch` inputs of up to `max_cols` elements and `max_rows` outputs.
    pub fn new(max_batch: usize, max_cols: usize, max_rows: usize) -> Acts {
        let n = max_batch * max_cols;
        Acts {
            q8_0: vec![bytemuck::Zeroable::zeroed(); n / QK + 1],
            q8_1: vec![bytemuck::Zeroable::zeroed(); n / QK + 1],
            q8_k: vec![bytemuck::Zeroable::zeroed(); n / QK_K + 1],
            f16: vec![0; n],
            d: vec![0.0; n / QK + 1],
            s: vec![0.0; n / QK + 1],
            scratch: vec![
                0.0;
                if max_batch > 1 {
                    max_batch * max_rows
                } else {
                    0
                }
            ],
            work: vec![
                0.0;
                if max_batch > 1 {
                    simd::batch_work_len(max_cols)
                } else {
                    0
                }
            ],
        }
    }
}

/// Dot product of one weight row with token `t` of the quantized activations.
fn dot_row(w: &QTensor<'_>, r: usize, acts: &Acts, x: &[f32], t: usize) -> f32 {
    let row = w.row(r);
    let n = w.cols;
    match w.ggml_type {
        GgmlType::Q4_0 => {
            simd::dot_q4_0_q8_0(quant::cast(row), &acts.q8_0[t * n / QK..(t + 1) * n / QK])
        }
        GgmlType::Q4_1 => {
            simd::dot_q4_1_q8_1(quant::cast(row), &acts.q8_1[t * n / QK..(t + 1) * n / QK])
        }
        GgmlType::Q5_0 => {
            simd::dot_q5_0_q8_0(quant::cast(row), &acts.q8_0[t * n / QK..(t + 1) * n / QK])
        }
        GgmlType::Q8_0 => {
            simd::dot_q8_0_q8_0(quant::cast(row), &acts.q8_0[t * n / QK..(t + 1) * n / QK])
        }
        GgmlType::Q4K => simd::dot_q4_k_q8_k(
            quant::cast(row),
            &acts.q8_k[t * n / QK_K..(t + 1) * n / QK_K],
        ),
        GgmlType::Q6K => simd::dot_q6_k_q8_k(
            quant::cast(row),
            &acts.q8_k[t * n / QK_K..(t + 1) * n / QK_K],
        ),
        // As bytes: the row may start at an odd offset.
        GgmlType::F16 => quant::dot_f16_bytes(row, &acts.f16[t * n..(t + 1) * n]),
        GgmlType::BF16 => {
            // `ggml_vec_dot_bf16`'s order for every batch size: llama.cpp's prefill equals it on the tiny BF16
            // fixtures, where tinyBLAS's AVX2 order (one 8-lane FMA chain) does not (model/tests/tiny_llamacpp.rs).
            let y: &[[u8; 2]] = bytemuck::cast_slice(&acts.f16[t * n..(t + 1) * n]);
            simd::dot_bf16(quant::cast(row), y)
        }
        GgmlType::F32 => {
            let mut sum = 0.0f32;
            for (c, &v) in row.chunks_exact(4).zip(&x[t * n..(t + 1) * n]) {
                sum += f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * v;
            }
            sum
        }
        // QTensor::new admits only computable types.
        _ => 0.0,
    }
}

/// Quantizes the `batch × w.cols` input for `w`'s type into `acts`: Q8_K (a K-quant's activations, each token's
/// blocks on their own) one token per task, the other types on the calling thread.
fn quantize_input(
    w: &QTensor<'_>,
    x: &[f32],
    batch: usize,
    acts: &mut Acts,
    par: &dyn ParallelFor,
) {
    let nb = w.cols / QK;
    match w.ggml_type.act_type() {
        Some(ActType::Q8_0) => {
            let q = &mut acts.q8_0[..x.len() / QK];
            simd::quantize_q8_0(x, q);
            for (i, b) in q.iter().enumerate() {
                acts.d[(i % nb) * batch + i / nb] = quant::f16_to_f32(b.d);
            }
        }
        Some(ActType::Q8_1) => {
            let q = &mut acts.q8_1[..x.len() / QK];
            simd::quantize_q8_1(x, q);
            for (i, b) in q.iter().enumerate() {
                acts.d[(i % nb) * batch + i / nb] = quant::f16_to_f32(b.d);
                acts.s[(i % nb) * batch + i / nb] = quant::f16_to_f32(b.s);
            }
        }
        Some(ActType::Q8K) => {
            let per_token = w.cols / QK_K;
            let blocks = &mut acts.q8_k[..batch * per_token];
            if par.threads() <= 1 || batch == 1 {
                return quant::quantize_q8_k(x, blocks);
            }
            // A Q8_K block is 73 f32-sized words (f32 scale, then bytes), so a token's blocks are a chunk of the
            // f32-typed parallel-for.
            let words: &mut [f32] = bytemuck::cast_slice_mut(blocks);
            let token_words = words.len() / batch;
            par.for_each_chunk(words, token_words, &|t, chunk| {
                let blocks: &mut [BlockQ8K] = bytemuck::cast_slice_mut(chunk);
                quant::quantize_q8_k(&x[t * w.cols..(t + 1) * w.cols], blocks);
            });
        }
        Some(ActType::F16) => {
            for (o, &v) in acts.f16.iter_mut().zip(x) {
                *o = u16::from_le_bytes(quant::f32_to_f16(v));
            }
        }
        Some(ActType::BF16) => {
            // The f16 buffer holds the bf16 bits: a product has one activation type.
            for (o, &v) in acts.f16.iter_mut().zip(x) {
                *o = quant::f32_to_bf16(v);
            }
        }
        Some(ActType::F32) | None => {}
    }
}

/// Runs a batched product (`batch > 1`) into the token-major `out` (`batch × w.rows`). `kernel(r0, rows, out, ld,
/// work)` computes rows `r0..r0 + rows` against every token into `out[t * ld + r]` (`r` relative) with `work` as
/// its kernel's work buffer; `align` is the row granularity it needs.
///
/// One worker computes everything straight into `out`, with `work`. Several split the rows (as llama.cpp does), so
/// that every weight row is unpacked once: each chunk writes its rows as a `[token][row]` block of `scratch`, whose
/// per-token runs are then copied into place, one token per task. Each of those tasks allocates its own work buffer: [`ParallelFor`]
/// hands a task only its output chunk, not a worker's own buffer, and one buffer per chunk kept here would cost the
/// run state a work buffer per row chunk.
#[allow(
    clippy::too_many_arguments,
    reason = "the product's shape, its buffers and its kernel all come from the caller; a struct for this one \
              private call would only rename them"
)]
fn batched<K>(
    w: &QTensor<'_>,
    batch: usize,
    rows_per_chunk: usize,
    align: usize,
    out: &mut [f32],
    scratch: &mut [f32],
    work: &mut [f32],
    par: &dyn ParallelFor,
    kernel: &K,
) where
    K: Fn(usize, usize, &mut [f32], usize, &mut [f32]) + Sync,
{
    let rows = w.rows;
    if par.threads() <= 1 {
        kernel(0, rows, out, rows, work);
        return;
    }
    let rpc = rows_per_chunk.div_ceil(align) * align;
    let scratch = &mut scratch[..batch * rows];
    let work_len = work.len();
    par.for_each_chunk(scratch, rpc * batch, &|ci, chunk| {
        let n = chunk.len() / batch;
        kernel(ci * rpc, n, chunk, n, &mut vec![0.0; work_len]);
    });
    // The gather, one token's output row per task: row chunk ci holds token t's run at `t * n`.
    let scratch = &*scratch;
    par.for_each_chunk(&mut out[..batch * rows], rows, &|t, row| {
        for (ci, chunk) in scratch.chunks(rpc * batch).enumerate() {
            let n = chunk.len() / batch;
            row[ci * rpc..ci * rpc + n].copy_from_slice(&chunk[t * n..(t + 1) * n]);
        }
    });
}

/// Whether `t` is one of the 32-element formats that [`mat_q0`] multiplies in tiles.
fn is_q0(t: GgmlType) -> bool {
    matches!(
        t,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0
    )
}

/// Rows `r0..r0 + rows` of a Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 product against the `batch` tokens, into `out[t * ld + r]`.
/// For repacked Q4_0, `r0` and `rows` are multiples of 8; for an interleaved matrix, of 4.
fn mat_q0_part(
    w: &QTensor<'_>,
    acts: &Acts,
    batch: usize,
    (r0, rows): (usize, usize),
    out: &mut [f32],
    ld: usize,
    work: &mut [f32],
) {
    let nb = w.cols / QK;
    // Rows r0.. of an interleaved matrix are its groups r0 / 4.. (`r0` and `rows` are multiples of 4 there), whose
    // slabs take the same bytes as those rows.
    let bytes = &w.data[r0 * w.row_bytes..(r0 + rows) * w.row_bytes];
    let (d, s) = (&acts.d[..nb * batch], &acts.s[..]);
    match w.ggml_type {
        GgmlType::Q4_1 => {
            let y = simd::ActTile {
                qs: &acts.q8_1[..batch * nb],
                d,
                s,
                batch,
                col0: 0,
            };
            if w.interleaved {
                simd::mat_q4_1_interleaved(bytes, rows, nb, &y, batch, out, ld, work);
            } else {
                simd::mat_q4_1(quant::cast(bytes), nb, &y, batch, out, ld, work);
            }
        }
        GgmlType::Q5_1 => {
            let y = simd::ActTile {
                qs: &acts.q8_1[..batch * nb],
                d,
                s,
                batch,
                col0: 0,
            };
            simd::mat_q5_1(quant::cast(bytes), nb, &y, batch, out, ld, work);
        }
        t => {
            let y = simd::ActTile {
                qs: &acts.q8_0[..batch * nb],
                d,
                s,
                batch,
                col0: 0,
            };
            match t {
                GgmlType::Q4_0 if q4_0_repacked(w) => {
                    let y = &acts.q8_0[..batch * nb];
                    simd::mat_q4_0_repacked(quant::cast(bytes), nb, y, batch, out, ld, work);
                }
                GgmlType::Q4_0 => simd::mat_q4_0(quant::cast(bytes), nb, &y, batch, out, ld, work),
                GgmlType::Q5_0 if w.interleaved => {
                    simd::mat_q5_0_interleaved(bytes, rows, nb, &y, batch, out, ld, work)
                }
                GgmlType::Q5_0 => simd::mat_q5_0(quant::cast(bytes), nb, &y, batch, out, ld, work),
                GgmlType::Q8_0 => simd::mat_q8_0(quant::cast(bytes), nb, &y, batch, out, ld, work),
                // `is_q0` admits only the four formats.
                _ => {}
            }
        }
    }
}

/// Whether llama.cpp repacks this Q4_0 matrix into 8-row interleaved blocks (`q4_0_8x8_q8_0`: on CPUs with AVX2,
/// row count a multiple of 8), so that every batch takes its repacked order ([`simd::q4_0_repacks`]).
fn q4_0_repacked(w: &QTensor<'_>) -> bool {
    w.ggml_type == GgmlType::Q4_0 && w.rows.is_multiple_of(8) && simd::q4_0_repacks()
}

/// The product for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights through the tiled kernels (rows in groups of 8 for repacked
/// Q4_0).
fn mat_q0(
    w: &QTensor<'_>,
    batch: usize,
    rows_per_chunk: usize,
    out: &mut [f32],
    acts: &mut Acts,
    par: &dyn ParallelFor,
) {
    let mut scratch = core::mem::take(&mut acts.scratch);
    let mut work = core::mem::take(&mut acts.work);
    let align = if q4_0_repacked(w) {
        8
    } else if w.interleaved {
        interleaved::GROUP
    } else {
        1
    };
    {
        let acts = &*acts;
        if batch == 1 {
            let rpc = rows_per_chunk.div_ceil(align) * align;
            par.for_each_chunk(out, rpc, &|ci, chunk| {
                let n = chunk.len();
                mat_q0_part(w, acts, 1, (ci * rpc, n), chunk, n, &mut []);
            });
        } else {
            let kernel = |r0, rows, o: &mut [f32], ld, work: &mut [f32]| {
                mat_q0_part(w, acts, batch, (r0, rows), o, ld, work);
            };
            batched(
                w,
                batch,
                rows_per_chunk,
                align,
                out,
                &mut scratch,
                &mut work,
                par,
                &kernel,
            );
        }
    }
    acts.scratch = scratch;
    acts.work = work;
}

/// Batches from which llama.cpp multiplies K-quant weights it does not repack through its tiled kernels
/// (`ggml_tiled_min_batch`).
const TILED_MIN_BATCH: usize = 8;

/// Tokens per pass of llama.cpp's repacked Q4_K gemm; the batch's last `batch % 4` tokens go through its gemv.
const GEMM_TOKENS: usize = 4;

/// Whether llama.cpp (on AVX2) repacks this Q4_K matrix into 8-row interleaved blocks at load time
/// (`ggml_repack_get_optimal_repack_type`: row count a multiple of 8). This engine reads the same 8 rows in place.
fn q4_k_repacked(w: &QTensor<'_>) -> bool {
    w.ggml_type == GgmlType::Q4K && w.rows.is_multiple_of(8) && !simd::sse_orders()
}

/// Whether llama.cpp repacks this Q2_K matrix into 8-row interleaved blocks (`q2_K_8x8_q8_K`: on AVX-512 CPUs
/// only, row count a multiple of 8), so that every batch takes its gemm/gemv order ([`simd::q2_k_repacks`]).
fn q2_k_repacked(w: &QTensor<'_>) -> bool {
    w.ggml_type == GgmlType::Q2K && w.rows.is_multiple_of(8) && simd::q2_k_repacks()
}

/// Rows `r0..r0 + rows` of a K-quant product against the `batch` tokens, in llama.cpp's order for its batch (the
/// tiled order where `tiled`: a batch of at least [`TILED_MIN_BATCH`]), into `out[t * ld + r]`. For repacked Q4_K,
/// `r0` and `rows` are multiples of 8.
fn mat_k_part(
    w: &QTensor<'_>,
    q8k: &[BlockQ8K],
    (batch, tiled): (usize, bool),
    (r0, rows): (usize, usize),
    out: &mut [f32],
    ld: usize,
    work: &mut [f32],
) {
    let nb = w.cols / QK_K;
    let bytes = &w.data[r0 * w.row_bytes..(r0 + rows) * w.row_bytes];
    if q4_k_repacked(w) {
        let blocks: &[quant::BlockQ4K] = quant::cast(bytes);
        // llama.cpp's gemm takes the batch's tokens in groups of 4; the last `batch % 4` go through its gemv.
        let gemm = batch - batch % GEMM_TOKENS;
        simd::mat_q4_k_repacked(blocks, nb, &q8k[..batch * nb], batch, gemm, out, ld, work);
        return;
    }
    if q2_k_repacked(w) {
        let blocks: &[quant::BlockQ2K] = quant::cast(bytes);
        let gemm = batch - batch % GEMM_TOKENS;
        simd::mat_q2_k_repacked(blocks, nb, &q8k[..batch * nb], batch, gemm, out, ld);
        return;
    }
    // Tokens per pass of the one-row kernels below.
    const TOKENS: usize = 32;
    for i in 0..rows {
        let row = &bytes[i * w.row_bytes..(i + 1) * w.row_bytes];
        for c0 in (0..batch).step_by(TOKENS) {
            let n = TOKENS.min(batch - c0);
            let mut o = [0.0f32; TOKENS];
            let q = &q8k[c0 * nb..(c0 + n) * nb];
            match (w.ggml_type, tiled) {
                (GgmlType::Q6K, true) => simd::mat_q6_k_tiled(quant::cast(row), nb, q, &mut o[..n]),
                (GgmlType::Q5K | GgmlType::Q3K | GgmlType::Q2K, _) => {
                    low_k_row(w.ggml_type, tiled, row, nb, q, &mut o[..n]);
                }
                (GgmlType::Q4K, true) => {
                    for (t, o) in o[..n].iter_mut().enumerate() {
                        *o = quant::dot_q4_k_q8_k_tiled(quant::cast(row), &q[t * nb..(t + 1) * nb]);
                    }
                }
                (GgmlType::Q6K, false) => {
                    for (t, o) in o[..n].iter_mut().enumerate() {
                        *o = simd::dot_q6_k_q8_k(quant::cast(row), &q[t * nb..(t + 1) * nb]);
                    }
                }
                _ => {
                    for (t, o) in o[..n].iter_mut().enumerate() {
                        *o = simd::dot_q4_k_q8_k(quant::cast(row), &q[t * nb..(t + 1) * nb]);
                    }
                }
            }
            for (c, &v) in o[..n].iter().enumerate() {
                out[(c0 + c) * ld + i] = v;
            }
        }
    }
}

/// One Q5_K, Q3_K or Q2_K row of `nb` blocks against `out.len()` tokens (`q[t * nb..]`): llama.cpp's tiled order
/// when `tiled`, `ggml_vec_dot_*`'s otherwise.
fn low_k_row(t: GgmlType, tiled: bool, row: &[u8], nb: usize, q: &[BlockQ8K], out: &mut [f32]) {
    let y = |i: usize| &q[i * nb..(i + 1) * nb];
    match (t, tiled) {
        (GgmlType::Q5K, true) => simd::mat_q5_k_tiled(quant::cast(row), nb, q, out),
        (GgmlType::Q3K, true) => simd::mat_q3_k_tiled(quant::cast(row), nb, q, out),
        (GgmlType::Q2K, true) => simd::mat_q2_k_tiled(quant::cast(row), nb, q, out),
        (GgmlType::Q5K, false) => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = simd::dot_q5_k_q8_k(quant::cast(row), y(i));
            }
        }
        (GgmlType::Q3K, false) => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = simd::dot_q3_k_q8_k(quant::cast(row), y(i));
            }
        }
        (GgmlType::Q2K, false) => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = simd::dot_q2_k_q8_k(quant::cast(row), y(i));
            }
        }
        // The caller passes only the three types above.
        _ => {}
    }
}

/// The product for K-quant weights (rows in groups of 8 for repacked Q4_K).
fn mat_k(
    w: &QTensor<'_>,
    batch: usize,
    tiled: bool,
    rows_per_chunk: usize,
    out: &mut [f32],
    acts: &mut Acts,
    par: &dyn ParallelFor,
) {
    let align = if q4_k_repacked(w) || q2_k_repacked(w) {
        8
    } else {
        1
    };
    let q8k = &acts.q8_k[..batch * w.cols / QK_K];
    if batch == 1 {
        let rpc = rows_per_chunk.div_ceil(align) * align;
        par.for_each_chunk(out, rpc, &|ci, chunk| {
            let n = chunk.len();
            mat_k_part(w, q8k, (1, tiled), (ci * rpc, n), chunk, n, &mut []);
        });
        return;
    }
    let kernel = |r0, rows, o: &mut [f32], ld, work: &mut [f32]| {
        mat_k_part(w, q8k, (batch, tiled), (r0, rows), o, ld, work);
    };
    batched(
        w,
        batch,
        rows_per_chunk,
        align,
        out,
        &mut acts.scratch,
        &mut acts.work,
        par,
        &kernel,
    );
}

/// `out[t][r] = W[r] · x[t]` for `batch` inputs `x` (`batch × cols`, token-major) into `out` (`batch × rows`).
/// The caller guarantees the lengths and that `acts` was sized for them. `logical` is the size of the batch
/// llama.cpp multiplies these inputs in (at least `batch`; larger for a chunk of a prompt it evaluates at once,
/// `State::declare_batch`): the kernels whose order depends on the batch size (the tiled K-quants, BF16) take the
/// order for that size.
pub fn matmul(
    w: &QTensor<'_>,
    x: &[f32],
    (batch, logical): (usize, usize),
    out: &mut [f32],
    acts: &mut Acts,
    par: &dyn ParallelFor,
) {
    debug_assert_eq!(x.len(), batch * w.cols);
    debug_assert_eq!(out.len(), batch * w.rows);
    quantize_input(w, x, batch, acts, par);
    // Rows per task: a few tasks per worker for balance, at least 16 rows to amortise dispatch.
    let rows_per_chunk = w.rows.div_ceil(par.threads() * 4).max(16);
    if is_q0(w.ggml_type) {
        mat_q0(w, batch, rows_per_chunk, out, acts, par);
        return;
    }
    if matches!(
        w.ggml_type,
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K
    ) {
        mat_k(
            w,
            batch,
            logical >= TILED_MIN_BATCH && !simd::sse_orders(),
            rows_per_chunk,
            out,
            acts,
            par,
        );
        return;
    }
    let acts = &*acts;
    if logical == 1 {
        par.for_each_chunk(out, rows_per_chunk, &|ci, chunk| {
            let r0 = ci * rows_per_chunk;
            for (i, o) in chunk.iter_mut().enumerate() {
                *o = dot_row(w, r0 + i, acts, x, 0);
            }
        });
        return;
    }
    // Other formats (f16, bf16, f32): whole tokens per chunk, a few chunks per worker; each weight row is read once
    // per chunk, for all of its tokens.
    let rows = w.rows;
    let tokens = batch.div_ceil(par.threads() * 4);
    par.for_each_chunk(out, tokens * rows, &|ci, chunk| {
        let n = chunk.len() / rows;
        if w.ggml_type == GgmlType::BF16 {
            // tinyBLAS's order for a batch where the kernel set has one (`simd::dots_bf16_batched`), the chunk's
            // tokens sharing each weight row's loads.
            let t0 = ci * tokens;
            let y: &[[u8; 2]] = bytemuck::cast_slice(&acts.f16[t0 * w.cols..(t0 + n) * w.cols]);
            let mut o = [0.0f32; 4];
            for r in 0..rows {
                for c0 in (0..n).step_by(4) {
                    let m = 4.min(n - c0);
                    let yc = &y[c0 * w.cols..];
                    simd::dots_bf16_batched(quant::cast(w.row(r)), yc, w.cols, rows, &mut o[..m]);
                    for (c, &v) in o[..m].iter().enumerate() {
                        chunk[(c0 + c) * rows + r] = v;
                    }
                }
            }
            return;
        }
        for r in 0..rows {
            for c in 0..n {
                chunk[c * rows + r] = dot_row(w, r, acts, x, ci * tokens + c);
            }
        }
    });
}
