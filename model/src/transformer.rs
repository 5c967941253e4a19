//! The llama and gemma3 decoder: configuration from GGUF metadata, weights viewed in place, run state (KV cache
//! included) allocated once, and the batched forward pass.
//!
//! Graph and numerics follow llama.cpp (`src/models/llama.cpp`, `src/models/gemma3.cpp` and ggml's CPU ops): f16 KV
//! cache; attention scores from f16 queries · f16 keys; softmax probabilities rounded to f16 before weighting the
//! f16 values; llama uses adjacent-pair RoPE (the GGUF converter permutes Q/K), gemma3 NEOX RoPE with base 1e4 on
//! sliding-window layers and the file's base on every 6th (global) layer, QK-norm, post-norms, embeddings scaled by
//! √dim and queries by 1/√head_dim.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::gguf::{Gguf, GgufError, TensorInfo};
use crate::math::{self, GeluTable, RopeStyle};
use crate::matmul::{matmul, Acts, QTensor};
use crate::parallel::ParallelFor;
use crate::quant::{self, GgmlType};
use crate::simd;

/// Supported decoder families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Gemma3,
    /// Qwen2 / Qwen2.5: biases on the Q, K and V projections, NeoX RoPE.
    Qwen2,
    /// Qwen3: per-head RMSNorm on Q and K before RoPE, no projection biases, NeoX RoPE.
    Qwen3,
}

impl Arch {
    /// The name llama.cpp's GGUF metadata gives the family (`general.architecture`, and the key prefix).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Gemma3 => "gemma3",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    /// RoPE rotates pairs (i, i + head_dim/2) (NeoX) rather than adjacent pairs (llama.cpp's
    /// `LLAMA_ROPE_TYPE_NEOX` for gemma3, qwen2 and qwen3).
    fn neox_rope(self) -> bool {
        !matches!(self, Arch::Llama)
    }
}

/// Why a model could not be loaded or run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelError {
    Gguf(GgufError),
    /// `general.architecture` is missing or names a family this engine does not run.
    UnsupportedArchitecture,
    /// A required metadata key is missing or has the wrong type or an out-of-range value.
    BadMetadata(&'static str),
    /// The file needs a feature of its architecture that the engine does not implement (named).
    UnsupportedFeature(&'static str),
    /// A required tensor is missing (`layer` is `None` for model-wide tensors).
    MissingTensor {
        role: &'static str,
        layer: Option<u32>,
    },
    /// A tensor has the wrong shape for the architecture or a type this engine cannot multiply.
    BadTensor {
        role: &'static str,
        layer: Option<u32>,
        ggml_type: GgmlType,
    },
    /// The prompt plus the tokens to generate do not fit in the context.
    ContextOverflow {
        needed: usize,
        context: usize,
    },
    /// A token id outside the vocabulary.
    BadTokenId(u32),
    /// More tokens than the run state's batch holds were given to [`Model::start_batch`].
    BatchTooLarge {
        tokens: usize,
        max_batch: usize,
    },
}

impl From<GgufError> for ModelError {
    fn from(e: GgufError) -> Self {
        ModelError::Gguf(e)
    }
}

impl core::fmt::Display for ModelError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ModelError::Gguf(e) => write!(f, "{e}"),
            ModelError::UnsupportedArchitecture => {
                write!(
                    f,
                    "unsupported model architecture (llama, gemma3, qwen2 and qwen3 are)"
                )
            }
            ModelError::BadMetadata(k) => write!(f, "metadata key {k} is missing or invalid"),
            ModelError::UnsupportedFeature(what) => {
                write!(
                    f,
                    "this model needs {what}, which the engine does not run yet"
                )
            }
            ModelError::MissingTensor {
                role,
                layer: Some(l),
            } => write!(f, "tensor blk.{l}.{role} is missing"),
            ModelError::MissingTensor { role, layer: None } => {
                write!(f, "tensor {role} is missing")
            }
            ModelError::BadTensor {
                role,
                layer,
                ggml_type,
            } => {
                match layer {
                    Some(l) => write!(f, "tensor blk.{l}.{role}")?,
                    None => write!(f, "tensor {role}")?,
                }
                if ggml_type.is_computable() {
                    write!(
                        f,
                        " (type {ggml_type}) does not have the shape this model's metadata implies: the file is \
                         damaged or its metadata is wrong"
                    )
                } else {
                    write!(
                        f,
                        " has type {ggml_type}, which this engine cannot multiply: use a model quantized to F32, \
                         F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K or Q6_K"
                    )
                }
            }
            ModelError::ContextOverflow { needed, context } => {
                write!(f, "{needed} tokens do not fit in the context of {context}")
            }
            ModelError::BadTokenId(t) => write!(f, "token id {t} is outside the vocabulary"),
            ModelError::BatchTooLarge { tokens, max_batch } => write!(
                f,
                "{tokens} tokens were given to one batch, which holds at most {max_batch}"
            ),
        }
    }
}

/// Hyper-parameters read from the GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub arch: Arch,
    pub n_layers: usize,
    /// Model width (`embedding_length`).
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Training context length from the file.
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// RoPE base of gemma3's sliding-window layers.
    pub rope_base_local: f32,
    /// gemma3's sliding window (keys at distance ≥ window are masked on local layers).
    pub sliding_window: Option<usize>,
}

impl Config {
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Config, ModelError> {
        let arch = match g.get("general.architecture").and_then(|v| v.as_str()) {
            Some("llama") => Arch::Llama,
            Some("gemma3") => Arch::Gemma3,
            Some("qwen2") => Arch::Qwen2,
            Some("qwen3") => Arch::Qwen3,
            _ => return Err(ModelError::UnsupportedArchitecture),
        };
        let p = arch.gguf_name();
        // Llama 3.1+ files scale RoPE frequencies with a `rope_freqs` tensor (the converter computes Llama 3's
        // scaling into it), which `Model::load` reads. Other scaling (linear, YaRN: `rope.scaling.type`) and
        // `rope_freqs` in other architectures are not implemented; running such a file without them would give
        // wrong answers silently, so it is refused.
        let scaling = g
            .get(&format!("{p}.rope.scaling.type"))
            .map(|v| v.as_str().unwrap_or("?"));
        if scaling.is_some_and(|kind| kind != "none") {
            return Err(ModelError::UnsupportedFeature(
                "RoPE frequency scaling other than Llama 3's rope_freqs (linear or YaRN)",
            ));
        }
        if g.tensor("rope_freqs.weight").is_some() && arch != Arch::Llama {
            return Err(ModelError::UnsupportedFeature(
                "RoPE frequency factors outside the llama architecture",
            ));
        }
        let int = |suffix: &str, name: &'static str| -> Result<usize, ModelError> {
            g.get(&format!("{p}.{suffix}"))
                .and_then(|v| v.as_u64())
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0 && v <= 1 << 24)
                .ok_or(ModelError::BadMetadata(name))
        };
        let float = |suffix: &str| g.get(&format!("{p}.{suffix}")).and_then(|v| v.as_f32());
        let dim = int("embedding_length", "embedding_length")?;
        let n_heads = int("attention.head_count", "attention.head_count")?;
        let n_kv_heads =
            int("attention.head_count_kv", "attention.head_count_kv").unwrap_or(n_heads);
        let head_dim = match int("attention.key_length", "attention.key_length") {
            Ok(k) => k,
            Err(_) => dim / n_heads,
        };
        if n_heads % n_kv_heads != 0 || head_dim % 2 != 0 || head_dim == 0 {
            return Err(ModelError::BadMetadata("attention.head_count_kv"));
        }
        let vocab_size = g
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len())
            .filter(|&n| n > 0)
            .ok_or(ModelError::BadMetadata("tokenizer.ggml.tokens"))?;
        let (rope_default, eps_default) = match arch {
            Arch::Llama => (10_000.0, 1e-5),
            Arch::Gemma3 | Arch::Qwen2 | Arch::Qwen3 => (1_000_000.0, 1e-6),
        };
        let rms_eps = float("attention.layer_norm_rms_epsilon").unwrap_or(eps_default);
        let rope_base = float("rope.freq_base").unwrap_or(rope_default);
        let sliding_window = match arch {
            Arch::Gemma3 => Some(int("attention.sliding_window", "attention.sliding_window")?),
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => None,
        };
        Ok(Config {
            arch,
            n_layers: int("block_count", "block_count")?,
            dim,
            ffn_dim: int("feed_forward_length", "feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length: int("context_length", "context_length")?,
            rms_eps,
            rope_base,
            rope_base_local: 10_000.0,
            sliding_window,
        })
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// gemma3: every 6th layer (5, 11, 17, ...) attends globally, the rest use the sliding window.
    pub fn is_local_layer(&self, l: usize) -> bool {
        self.arch == Arch::Gemma3 && !(l + 1).is_multiple_of(6)
    }
}

/// One decoder block's weights (shapes as `[rows × cols]`).
pub struct Layer<'a> {
    /// `[dim]`
    pub attn_norm: Vec<f32>,
    /// `[q_dim × dim]`
    pub wq: QTensor<'a>,
    /// `[kv_dim × dim]`
    pub wk: QTensor<'a>,
    /// `[kv_dim × dim]`
    pub wv: QTensor<'a>,
    /// `[dim × q_dim]`
    pub wo: QTensor<'a>,
    /// qwen2: `[q_dim]`, `[kv_dim]`, `[kv_dim]`, added to the projections.
    pub q_bias: Option<Vec<f32>>,
    pub k_bias: Option<Vec<f32>>,
    pub v_bias: Option<Vec<f32>>,
    /// gemma3 and qwen3: `[head_dim]` each, per-head RMSNorm before RoPE.
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// gemma3: `[dim]`, applied to the attention output before the residual add.
    pub post_attn_norm: Option<Vec<f32>>,
    /// `[dim]`
    pub ffn_norm: Vec<f32>,
    /// `[ffn_dim × dim]`
    pub w_gate: QTensor<'a>,
    /// `[ffn_dim × dim]`
    pub w_up: QTensor<'a>,
    /// `[dim × ffn_dim]`
    pub w_down: QTensor<'a>,
    /// gemma3: `[dim]`, applied to the FFN output before the residual add.
    pub post_ffn_norm: Option<Vec<f32>>,
}

/// All weights. Matrices borrow the blob; the small f32 norm vectors are decoded once (they are < 0.1% of a model).
pub struct Weights<'a> {
    /// `[vocab × dim]`
    pub token_embd: QTensor<'a>,
    pub layers: Vec<Layer<'a>>,
    /// `[dim]`
    pub output_norm: Vec<f32>,
    /// `[vocab × dim]`; the embedding matrix when the file ties them.
    pub output: QTensor<'a>,
    /// `[head_dim / 2]`: Llama 3's RoPE frequency factors (`rope_freqs`), each dividing one pair's angle.
    pub rope_freqs: Option<Vec<f32>>,
}

/// A loaded model: configuration plus weights (and gemma3's GELU table).
pub struct Model<'a> {
    pub config: Config,
    pub weights: Weights<'a>,
    gelu: Option<GeluTable>,
}

fn find<'a, 'g>(
    g: &'g Gguf<'a>,
    role: &'static str,
    layer: Option<u32>,
) -> Result<&'g TensorInfo<'a>, ModelError> {
    let name: String = match layer {
        Some(l) => format!("blk.{l}.{role}"),
        None => String::from(role),
    };
    g.tensor(&name)
        .ok_or(ModelError::MissingTensor { role, layer })
}

fn matrix<'a>(
    g: &Gguf<'a>,
    role: &'static str,
    layer: Option<u32>,
    rows: usize,
    cols: usize,
) -> Result<QTensor<'a>, ModelError> {
    let info = find(g, role, layer)?;
    let bad = ModelError::BadTensor {
        role,
        layer,
        ggml_type: info.ggml_type,
    };
    let t = QTensor::new(info).ok_or(bad)?;
    if t.rows != rows || t.cols != cols {
        return Err(bad);
    }
    Ok(t)
}

fn vector(
    g: &Gguf<'_>,
    role: &'static str,
    layer: Option<u32>,
    len: usize,
) -> Result<Vec<f32>, ModelError> {
    let info = find(g, role, layer)?;
    let bad = ModelError::BadTensor {
        role,
        layer,
        ggml_type: info.ggml_type,
    };
    if info.n_dims != 1 || info.dims[0] != len as u64 {
        return Err(bad);
    }
    let mut out = vec![0.0; len];
    quant::dequantize(info.ggml_type, info.data, &mut out).map_err(|_| bad)?;
    Ok(out)
}

impl<'a> Model<'a> {
    /// Checks the architecture, every tensor's presence, shape and type, and views the weights in place.
    pub fn load(g: &Gguf<'a>) -> Result<Model<'a>, ModelError> {
        let c = Config::from_gguf(g)?;
        let (dim, q_dim, kv_dim, ffn) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let gemma = c.arch == Arch::Gemma3;
        let qk_norm = matches!(c.arch, Arch::Gemma3 | Arch::Qwen3);
        let biases = c.arch == Arch::Qwen2;
        let mut layers = Vec::with_capacity(c.n_layers.min(g.tensors.len()));
        for l in 0..c.n_layers {
            let l32 = Some(l as u32);
            let when = |present: bool,
                        role: &'static str,
                        len: usize|
             -> Result<Option<Vec<f32>>, ModelError> {
                if present {
                    vector(g, role, l32, len).map(Some)
                } else {
                    Ok(None)
                }
            };
            let opt = |role: &'static str, len: usize| when(gemma, role, len);
            layers.push(Layer {
                attn_norm: vector(g, "attn_norm.weight", l32, dim)?,
                wq: matrix(g, "attn_q.weight", l32, q_dim, dim)?,
                wk: matrix(g, "attn_k.weight", l32, kv_dim, dim)?,
                wv: matrix(g, "attn_v.weight", l32, kv_dim, dim)?,
                wo: matrix(g, "attn_output.weight", l32, dim, q_dim)?,
                q_bias: when(biases, "attn_q.bias", q_dim)?,
                k_bias: when(biases, "attn_k.bias", kv_dim)?,
                v_bias: when(biases, "attn_v.bias", kv_dim)?,
                q_norm: when(qk_norm, "attn_q_norm.weight", c.head_dim)?,
                k_norm: when(qk_norm, "attn_k_norm.weight", c.head_dim)?,
                post_attn_norm: opt("post_attention_norm.weight", dim)?,
                ffn_norm: vector(g, "ffn_norm.weight", l32, dim)?,
                w_gate: matrix(g, "ffn_gate.weight", l32, ffn, dim)?,
                w_up: matrix(g, "ffn_up.weight", l32, ffn, dim)?,
                w_down: matrix(g, "ffn_down.weight", l32, dim, ffn)?,
                post_ffn_norm: opt("post_ffw_norm.weight", dim)?,
            });
        }
        let token_embd = matrix(g, "token_embd.weight", None, c.vocab_size, dim)?;
        let output = match g.tensor("output.weight") {
            Some(_) => matrix(g, "output.weight", None, c.vocab_size, dim)?,
            None => token_embd,
        };
        let weights = Weights {
            token_embd,
            layers,
            output_norm: vector(g, "output_norm.weight", None, dim)?,
            output,
            rope_freqs: match g.tensor("rope_freqs.weight") {
                Some(_) => Some(vector(g, "rope_freqs.weight", None, c.head_dim / 2)?),
                None => None,
            },
        };
        let gelu = if gemma { Some(GeluTable::new()) } else { None };
        Ok(Model {
            config: c,
            weights,
            gelu,
        })
    }
}

/// Everything the forward pass writes, allocated once: activations for up to `max_batch` tokens, the f16 KV
/// cache for `context` positions, and the logits.
pub struct State {
    pub context: usize,
    pub max_batch: usize,
    /// Next position to fill (= tokens already in the cache).
    pub pos: usize,
    x: Vec<f32>,
    xb: Vec<f32>,
    xb2: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att_out: Vec<f32>,
    hb: Vec<f32>,
    hb2: Vec<f32>,
    rope: Vec<f32>,
    /// `[layer][position][kv_dim]`, f16 bits.
    key_cache: Vec<u16>,
    /// `[layer][kv_dim][ctx_pad]` (transposed, as llama.cpp's non-flash V cache), f16 bits.
    value_cache: Vec<u16>,
    /// `context` rounded up to 64 positions (the V rows' stride, room for [`Attention::len`]; padding stays zero).
    ctx_pad: usize,
    acts: Acts,
    /// Attention's per-task working buffers: one [`Attention::slot_len`] slot per head (one token) or per token (a
    /// batch), each the task's output followed by its [`HeadScratch`].
    attn_scratch: Vec<f32>,
    /// `[vocab]`, for the last token of the latest `forward`.
    pub logits: Vec<f32>,
    /// The batch whose forward pass is under way, between [`Model::start_batch`] and its last
    /// [`Model::run_piece`].
    batch: Option<Batch>,
    /// Positions `start..start + len` that llama.cpp evaluates as one batch and that the forward passes now running
    /// belong to ([`State::declare_batch`]).
    span: (usize, usize),
}

impl State {
    /// Run state for `context` positions (capped at the model's training context) and batches of `max_batch`.
    pub fn new(c: &Config, context: usize, max_batch: usize) -> State {
        let context = context.clamp(1, c.context_length);
        let b = max_batch.max(1);
        let max_cols = c.dim.max(c.q_dim()).max(c.ffn_dim);
        let max_rows = max_cols.max(c.kv_dim());
        let kv = c.n_layers * context * c.kv_dim();
        let ctx_pad = context.div_ceil(64) * 64;
        State {
            context,
            max_batch: b,
            pos: 0,
            x: vec![0.0; b * c.dim],
            xb: vec![0.0; b * c.dim],
            xb2: vec![0.0; b * c.dim],
            q: vec![0.0; b * c.q_dim()],
            k: vec![0.0; b * c.kv_dim()],
            v: vec![0.0; b * c.kv_dim()],
            att_out: vec![0.0; b * c.q_dim()],
            hb: vec![0.0; b * c.ffn_dim],
            hb2: vec![0.0; b * c.ffn_dim],
            rope: vec![0.0; b * c.head_dim],
            key_cache: vec![0; kv],
            value_cache: vec![0; c.n_layers * c.kv_dim() * ctx_pad],
            ctx_pad,
            acts: Acts::new(b, max_cols, max_rows),
            attn_scratch: vec![
                0.0;
                (c.n_heads * Attention::slot_len(c.head_dim, c.head_dim, ctx_pad))
                    .max(b * Attention::slot_len(c.q_dim(), c.head_dim, ctx_pad))
            ],
            logits: vec![0.0; c.vocab_size],
            batch: None,
            span: (0, 0),
        }
    }

    /// Forgets the cached context (the buffers stay allocated).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.batch = None;
        self.span = (0, 0);
    }

    /// Declares that the next `len` tokens (from the current position) are one batch to llama.cpp, however many
    /// forward passes feed them: a prompt the appliance prefills in 32-token chunks, which llama.cpp evaluates in
    /// one batch. Every chunk then takes the orders llama.cpp's kernels take for a batch of `len` tokens
    /// (attention's tinyBLAS order from 2 tokens, the tiled K-quant order from 8, BF16's batched order), so a
    /// chunked prefill computes the bits of the one-batch prefill. (Repacked Q4_K, Q2_K and Q4_0 split a batch
    /// into gemm groups of 4 tokens and a gemv remainder; chunks of a multiple of 4 tokens, as 32, keep that split.)
    /// A forward pass outside the declared span is a batch of its own.
    pub fn declare_batch(&mut self, len: usize) {
        self.span = (self.pos, len);
    }

    /// The size of the llama.cpp batch that `n` tokens from the current position belong to: the declared span's
    /// when they lie inside it, else their own (which becomes the span).
    fn logical_batch(&mut self, n: usize) -> usize {
        let (start, len) = self.span;
        if self.pos >= start && self.pos + n <= start + len {
            len
        } else {
            self.span = (self.pos, n);
            n
        }
    }

    /// Whether a batch's forward pass is under way ([`Model::start_batch`]).
    pub fn batch_in_flight(&self) -> bool {
        self.batch.is_some()
    }

    /// Bytes of the KV cache (f16 keys and values of every layer and position), allocated by [`State::new`].
    pub fn kv_cache_bytes(&self) -> usize {
        (self.key_cache.len() + self.value_cache.len()) * core::mem::size_of::<u16>()
    }
}

fn to_f16(x: f32) -> u16 {
    u16::from_le_bytes(quant::f32_to_f16(x))
}

/// One layer's attention over the f16 KV cache, as llama.cpp's non-flash path computes it: KQ = f16(q)·k (the
/// tinyBLAS chain order for a batch, `ggml_vec_dot_f16`'s for one token), softmax with ggml's vector expf over
/// blocks of 8 positions, probabilities rounded to f16, then each output dimension a dot product of the transposed
/// f16 V row with those probabilities.
struct Attention<'a> {
    /// This layer's keys, `[position][kv_dim]`.
    keys: &'a [u16],
    /// This layer's transposed values, `[kv_dim][ctx_pad]`.
    values: &'a [u16],
    kv_dim: usize,
    ctx_pad: usize,
    hd: usize,
    /// Query heads per KV head.
    group: usize,
    kq_scale: f32,
    /// Whether the forward pass has several tokens (llama.cpp then takes the batched kernels' orders).
    batched: bool,
    /// Sliding window of a local layer.
    window: Option<usize>,
}

/// One head's working buffers: the f16 query, the scores and the f16 probabilities.
struct HeadScratch<'s> {
    q16: &'s mut [u16],
    scores: &'s mut [f32],
    p16: &'s mut [u16],
}

impl Attention<'_> {
    /// Length of one task's slot of [`State`]'s attention scratch: `out_len` outputs, then the scratch of a head
    /// with `hd` dimensions over up to `ctx_pad` positions (the f16 halves packed two to an f32).
    fn slot_len(out_len: usize, hd: usize, ctx_pad: usize) -> usize {
        out_len + ctx_pad + hd / 2 + ctx_pad / 2
    }

    /// Splits one task's slot into its `out_len` outputs and the scratch for heads at position `p`.
    fn split<'s>(
        &self,
        slot: &'s mut [f32],
        out_len: usize,
        p: usize,
    ) -> (&'s mut [f32], HeadScratch<'s>) {
        let len = self.len(p);
        let (out, rest) = slot.split_at_mut(out_len);
        let (scores, rest) = rest.split_at_mut(self.ctx_pad);
        let (q16, p16) = rest.split_at_mut(self.hd / 2);
        let scratch = HeadScratch {
            q16: bytemuck::cast_slice_mut(q16),
            scores: &mut scores[..len],
            p16: &mut bytemuck::cast_slice_mut(&mut p16[..self.ctx_pad / 2])[..len],
        };
        (out, scratch)
    }

    /// Positions the score and probability rows span for a query at `p`. llama.cpp's KQ rows are 256-padded (its
    /// `get_n_kv`), so every position is inside its kernels' vector steps; the zeros past `p` add nothing, and
    /// padding to one step (tinyBLAS's lanes for a batch, `ggml_vec_dot_f16`'s step for one token) keeps the
    /// engine's rows inside them too.
    fn len(&self, p: usize) -> usize {
        let step = if self.batched {
            simd::f16_chain_lanes()
        } else {
            simd::f16_ggml_step()
        };
        (p + 1).div_ceil(step) * step
    }

    /// All heads of the token at position `p` with queries `q` (`n_heads × hd`), into the start of `slot` (same
    /// shape; the rest of the slot is scratch).
    fn token(&self, q: &[f32], p: usize, slot: &mut [f32]) {
        let (out, mut scratch) = self.split(slot, q.len(), p);
        for (h, (qh, out)) in q
            .chunks_exact(self.hd)
            .zip(out.chunks_exact_mut(self.hd))
            .enumerate()
        {
            self.head(qh, p, h, out, &mut scratch);
        }
    }

    /// Head `h` of the token at position `p` with query `qh` (`hd`), into `out` (`hd`).
    fn head(&self, qh: &[f32], p: usize, h: usize, out: &mut [f32], s: &mut HeadScratch) {
        let hd = self.hd;
        let kvh = h / self.group;
        let first = self.window.map_or(0, |win| (p + 1).saturating_sub(win));
        simd::scale_to_f16(qh, 1.0, &mut s.q16[..qh.len()]);
        let scores = &mut *s.scores;
        scores.fill(f32::NEG_INFINITY);
        let live = &mut scores[first..=p];
        let k0 = first * self.kv_dim + kvh * hd;
        // tinyBLAS takes a batch's KQ only when the head size is a multiple of its lanes; ggml's dot otherwise.
        if self.batched && hd.is_multiple_of(simd::f16_chain_lanes()) {
            simd::dots_f16(&self.keys[k0..], self.kv_dim, s.q16, live);
        } else {
            simd::dots_f16_ggml(&self.keys[k0..], self.kv_dim, s.q16, live);
        }
        let mut max = f32::NEG_INFINITY;
        for sc in live.iter_mut() {
            *sc *= self.kq_scale;
            max = max.max(*sc);
        }
        // Past the query's position every score is -inf and its exponential 0, which adds nothing to any group's
        // sum: only the groups up to the position are computed.
        let live = (p + 1).div_ceil(simd::softmax_lanes()) * simd::softmax_lanes();
        let live = live.min(scores.len());
        let sum = simd::softmax_exp(&mut scores[..live], max);
        let inv = (1.0 / sum) as f32;
        simd::scale_to_f16(&scores[..live], inv, &mut s.p16[..live]);
        s.p16[live..].fill(0);
        let v0 = kvh * hd * self.ctx_pad;
        if self.batched {
            // tinyBLAS's chain only as far as a probability can be nonzero: the same bits (see
            // `simd::dot_f16_ggml_live`), and the work of the positions written, not of the whole context.
            let len = simd::live_steps(live, simd::f16_chain_lanes(), s.p16.len());
            simd::dots_f16(&self.values[v0..], self.ctx_pad, &s.p16[..len], out);
        } else {
            simd::dots_f16_ggml_live(&self.values[v0..], self.ctx_pad, s.p16, live, out);
        }
    }
}

/// `x += norm(o)` per token of `dim` values, `norm` the post-norm `weight` if there is one (applied to `o` in
/// place, which is scratch afterwards).
fn residual_add(
    x: &mut [f32],
    o: &mut [f32],
    weight: Option<&[f32]>,
    dim: usize,
    eps: f32,
    par: &dyn ParallelFor,
) {
    if let Some(w) = weight {
        par.for_each_chunk(o, dim, &|_, o| math::rmsnorm_inplace(o, w, eps));
    }
    let o = &*o;
    par.for_each_chunk(x, dim, &|i, x| {
        for (x, &v) in x.iter_mut().zip(&o[i * dim..(i + 1) * dim]) {
            *x += v;
        }
    });
}

/// A batch whose forward pass is under way: its tokens are embedded in `State::x`, and `next` is the piece
/// [`Model::run_piece`] runs next (see [`Model::pieces`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Batch {
    /// Tokens in the batch.
    n: usize,
    /// Tokens in the llama.cpp batch it belongs to ([`State::declare_batch`]; `n` unless declared).
    logical: usize,
    /// Position of its first token.
    pos0: usize,
    /// The next piece.
    next: usize,
}

/// One layer's pieces of a forward pass run a piece at a time ([`Model::run_piece`]), in this order: each holds at
/// most one or two matrix products (or the attention over the cache), so that under TCG, where a 32-token SmolLM2
/// chunk takes tens of seconds, no piece takes more than about a second.
const LAYER_PIECES: [LayerPiece; 5] = [
    LayerPiece::Projections,
    LayerPiece::Attention,
    LayerPiece::Gate,
    LayerPiece::Up,
    LayerPiece::Down,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LayerPiece {
    /// Q, K and V of the normed input, RoPE, the KV cache written.
    Projections,
    /// Attention over the cache, its output projection and residual.
    Attention,
    /// The feed-forward norm and gate projection.
    Gate,
    /// The up projection and the gated activation.
    Up,
    /// The down projection and residual.
    Down,
}

/// Where a piece of a layer runs: the layer, the batch, and the rows its second half keeps.
#[derive(Clone, Copy)]
struct PieceAt<'m, 'a> {
    l: usize,
    layer: &'m Layer<'a>,
    /// Tokens in the batch.
    n: usize,
    /// Tokens in the llama.cpp batch it belongs to ([`Batch::logical`]).
    logical: usize,
    /// Position of the batch's first token.
    pos0: usize,
    /// The first row the layer keeps after its attention ([`Model::rows_from`]), and the rows from there.
    t0: usize,
    m: usize,
}

/// What one layer's pieces share: the scales and RoPE style of the architecture.
struct LayerShape {
    style: RopeStyle,
    /// Scale of the attention scores (1/√head_dim, or 1 where the query carries it).
    kq_scale: f32,
    /// Scale applied to each query head after RoPE (Gemma 3's query_pre_attn_scalar form).
    q_scale: f32,
    /// Query heads per KV head.
    group: usize,
}

impl Model<'_> {
    /// Runs `tokens` at positions `state.pos..` and leaves the last token's logits in `state.logits`.
    pub fn forward(
        &self,
        state: &mut State,
        tokens: &[u32],
        par: &dyn ParallelFor,
    ) -> Result<(), ModelError> {
        self.check_tokens(state, tokens)?;
        // The call's tokens are one llama.cpp batch, unless they lie in a span declared before.
        let _ = state.logical_batch(tokens.len());
        par.run(&mut || {
            for chunk in tokens.chunks(state.max_batch) {
                self.embed(state, chunk);
                while !self.run_piece(state, par) {}
            }
        });
        Ok(())
    }

    /// Starts a forward pass over `tokens` (at most `state.max_batch` of them) that [`Model::run_piece`] then runs
    /// a piece at a time, so a caller that must stay responsive (the appliance's main loop, issue 12 item 1;
    /// docs/ARCHITECTURE.md §5) can do other work between pieces. The pieces run exactly the arithmetic
    /// [`Model::forward`] runs, in the same order: the logits are the same bits. A batch already under way is
    /// dropped.
    pub fn start_batch(&self, state: &mut State, tokens: &[u32]) -> Result<(), ModelError> {
        if tokens.len() > state.max_batch {
            return Err(ModelError::BatchTooLarge {
                tokens: tokens.len(),
                max_batch: state.max_batch,
            });
        }
        self.check_tokens(state, tokens)?;
        self.embed(state, tokens);
        Ok(())
    }

    /// Pieces of one batch's forward pass: each layer's [`LAYER_PIECES`], then the output (the final norm and
    /// the logits).
    pub fn pieces(&self) -> usize {
        LAYER_PIECES.len() * self.weights.layers.len() + 1
    }

    /// What piece `piece` (counted from 0 to [`Model::pieces`]) of a batch computes, for diagnostics:
    /// "projections", "attention", "gate", "up", "down" or "output".
    pub fn piece_name(&self, piece: usize) -> &'static str {
        if piece >= LAYER_PIECES.len() * self.weights.layers.len() {
            return "output";
        }
        match LAYER_PIECES[piece % LAYER_PIECES.len()] {
            LayerPiece::Projections => "projections",
            LayerPiece::Attention => "attention",
            LayerPiece::Gate => "gate",
            LayerPiece::Up => "up",
            LayerPiece::Down => "down",
        }
    }

    /// Runs the next piece of the batch [`Model::start_batch`] started; true when that was the last piece (the
    /// logits are ready and `state.pos` has moved past the batch). Does nothing, and says true, when no batch is
    /// under way.
    pub fn run_piece(&self, state: &mut State, par: &dyn ParallelFor) -> bool {
        let Some(batch) = state.batch else {
            return true;
        };
        let layers = self.weights.layers.len();
        let piece = batch.next;
        if piece == LAYER_PIECES.len() * layers {
            self.output(state, batch, par);
            state.pos += batch.n;
            state.batch = None;
            return true;
        }
        let l = piece / LAYER_PIECES.len();
        let t0 = self.rows_from(l, batch.n);
        let at = PieceAt {
            l,
            layer: &self.weights.layers[l],
            n: batch.n,
            logical: batch.logical,
            pos0: batch.pos0,
            t0,
            m: batch.n - t0,
        };
        match LAYER_PIECES[piece % LAYER_PIECES.len()] {
            LayerPiece::Projections => self.projections(state, &at, par),
            LayerPiece::Attention => self.attention(state, &at, par),
            LayerPiece::Gate => self.ffn_gate(state, &at, par),
            LayerPiece::Up => self.ffn_up(state, &at, par),
            LayerPiece::Down => self.ffn_down(state, &at, par),
        }
        state.batch = Some(Batch {
            next: piece + 1,
            ..batch
        });
        false
    }

    /// Whether `state` has room for `tokens` and each is a token id of the vocabulary.
    fn check_tokens(&self, state: &State, tokens: &[u32]) -> Result<(), ModelError> {
        let c = &self.config;
        let needed = state.pos + tokens.len();
        if needed > state.context {
            return Err(ModelError::ContextOverflow {
                needed,
                context: state.context,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ModelError::BadTokenId(bad));
        }
        Ok(())
    }

    /// Writes `tokens`' embeddings (checked by [`Model::check_tokens`], at most `max_batch`) into `x` and starts
    /// their batch at piece 0.
    fn embed(&self, s: &mut State, tokens: &[u32]) {
        let c = &self.config;
        let w = &self.weights;
        let dim = c.dim;
        for (t, &tok) in tokens.iter().enumerate() {
            let x = &mut s.x[t * dim..(t + 1) * dim];
            // Token ids were range-checked in `check_tokens`.
            let _ = w.token_embd.dequantize_row(tok as usize, x);
            if c.arch == Arch::Gemma3 {
                let scale = libm::sqrtf(dim as f32);
                x.iter_mut().for_each(|v| *v *= scale);
            }
        }
        let logical = s.logical_batch(tokens.len());
        s.batch = Some(Batch {
            n: tokens.len(),
            logical,
            pos0: s.pos,
            next: 0,
        });
    }

    fn layer_shape(&self) -> LayerShape {
        let c = &self.config;
        let gemma = c.arch == Arch::Gemma3;
        let hd = c.head_dim;
        LayerShape {
            style: if c.arch.neox_rope() {
                RopeStyle::Neox
            } else {
                RopeStyle::Normal
            },
            kq_scale: if gemma {
                1.0
            } else {
                1.0 / libm::sqrtf(hd as f32)
            },
            q_scale: if gemma {
                1.0 / libm::sqrtf(hd as f32)
            } else {
                1.0
            },
            group: c.n_heads / c.n_kv_heads,
        }
    }

    /// The batch of the feed-forward products of `at`'s layer, and the size of the llama.cpp batch they belong to:
    /// in the last layer only the output row goes on, a batch of its own as llama.cpp's (`inp_out_ids`); before
    /// it, every token of the batch ([`Batch::logical`]).
    fn ffn_batch(&self, at: &PieceAt<'_, '_>) -> (usize, usize) {
        if at.l + 1 == self.weights.layers.len() {
            (at.m, at.m)
        } else {
            (at.m, at.logical)
        }
    }

    /// The first row whose values layer `l`'s second half still needs: after the last layer's attention only
    /// the token whose logits are read goes on, as llama.cpp's graph selects its output rows there
    /// (`inp_out_ids`): its FFN products then run as single-token products, which for repacked Q4_K weights is
    /// another kernel with another summation order than the batch's.
    fn rows_from(&self, l: usize, n: usize) -> usize {
        if l + 1 == self.weights.layers.len() {
            n - 1
        } else {
            0
        }
    }

    /// Layer `l`'s attention projections: `q`, `k`, `v` of `attn_norm(x)` (biases, Q/K norms, RoPE), the batch's
    /// keys and values written to the KV cache. Per-token element-wise steps run one token per parallel task (a
    /// single task, inline, for one token).
    fn projections(&self, s: &mut State, at: &PieceAt<'_, '_>, par: &dyn ParallelFor) {
        let c = &self.config;
        let PieceAt {
            l, layer, n, pos0, ..
        } = *at;
        let (dim, q_dim, kv_dim, hd) = (c.dim, c.q_dim(), c.kv_dim(), c.head_dim);
        let shape = self.layer_shape();
        let (style, q_scale) = (shape.style, shape.q_scale);

        let x = &s.x[..n * dim];
        par.for_each_chunk(&mut s.xb[..n * dim], dim, &|t, xb| {
            math::rmsnorm(xb, &x[t * dim..(t + 1) * dim], &layer.attn_norm, c.rms_eps);
        });
        let xb = &s.xb[..n * dim];
        let batch = (n, at.logical);
        matmul(
            &layer.wq,
            xb,
            batch,
            &mut s.q[..n * q_dim],
            &mut s.acts,
            par,
        );
        matmul(
            &layer.wk,
            xb,
            batch,
            &mut s.k[..n * kv_dim],
            &mut s.acts,
            par,
        );
        matmul(
            &layer.wv,
            xb,
            batch,
            &mut s.v[..n * kv_dim],
            &mut s.acts,
            par,
        );
        for (out, width, bias) in [
            (&mut s.q[..n * q_dim], q_dim, &layer.q_bias),
            (&mut s.k[..n * kv_dim], kv_dim, &layer.k_bias),
            (&mut s.v[..n * kv_dim], kv_dim, &layer.v_bias),
        ] {
            if let Some(bias) = bias {
                par.for_each_chunk(out, width, &|_, row| {
                    row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                });
            }
        }

        let local = c.is_local_layer(l);
        let base = if local {
            c.rope_base_local
        } else {
            c.rope_base
        };
        let factors = self.weights.rope_freqs.as_deref();
        par.for_each_chunk(&mut s.rope[..n * hd], hd, &|t, cache| {
            math::rope_cache(cache, pos0 + t, base, factors);
        });
        let rope = &s.rope[..n * hd];
        par.for_each_chunk(&mut s.q[..n * q_dim], q_dim, &|t, q| {
            for h in q.chunks_exact_mut(hd) {
                if let Some(qn) = &layer.q_norm {
                    math::rmsnorm_inplace(h, qn, c.rms_eps);
                }
                math::rope_apply(h, &rope[t * hd..(t + 1) * hd], style);
                if q_scale != 1.0 {
                    h.iter_mut().for_each(|v| *v *= q_scale);
                }
            }
        });
        par.for_each_chunk(&mut s.k[..n * kv_dim], kv_dim, &|t, k| {
            for h in k.chunks_exact_mut(hd) {
                if let Some(kn) = &layer.k_norm {
                    math::rmsnorm_inplace(h, kn, c.rms_eps);
                }
                math::rope_apply(h, &rope[t * hd..(t + 1) * hd], style);
            }
        });
        let layer_kv = l * s.context * kv_dim;
        let layer_vt = l * kv_dim * s.ctx_pad;
        for t in 0..n {
            let p = pos0 + t;
            let at = layer_kv + p * kv_dim;
            simd::scale_to_f16(
                &s.k[t * kv_dim..(t + 1) * kv_dim],
                1.0,
                &mut s.key_cache[at..at + kv_dim],
            );
            for (ch, &v) in s.v[t * kv_dim..(t + 1) * kv_dim].iter().enumerate() {
                s.value_cache[layer_vt + ch * s.ctx_pad + p] = to_f16(v);
            }
        }
    }

    /// Layer `l`'s attention over the KV cache and its output: `x += post_attn_norm(wo · attention)`.
    fn attention(&self, s: &mut State, at: &PieceAt<'_, '_>, par: &dyn ParallelFor) {
        let c = &self.config;
        let PieceAt {
            l,
            layer,
            n,
            pos0,
            t0,
            ..
        } = *at;
        let (dim, q_dim, kv_dim, hd) = (c.dim, c.q_dim(), c.kv_dim(), c.head_dim);
        let shape = self.layer_shape();
        let local = c.is_local_layer(l);
        let layer_kv = l * s.context * kv_dim;
        let layer_vt = l * kv_dim * s.ctx_pad;
        // Each task with its own slot of the run state's scratch: its outputs, then its buffers.
        let attn = Attention {
            keys: &s.key_cache[layer_kv..],
            values: &s.value_cache[layer_vt..],
            kv_dim,
            ctx_pad: s.ctx_pad,
            hd,
            group: shape.group,
            kq_scale: shape.kq_scale,
            // llama.cpp's SSE build has no tinyBLAS: every KQ and KQV takes `ggml_vec_dot_f16`'s order.
            batched: at.logical >= 2 && !simd::sse_orders(),
            window: if local { c.sliding_window } else { None },
        };
        let q = &s.q[..n * q_dim];
        let (tasks, out_len) = if n == 1 { (c.n_heads, hd) } else { (n, q_dim) };
        let slot_len = Attention::slot_len(out_len, hd, s.ctx_pad);
        let slots = &mut s.attn_scratch[..tasks * slot_len];
        if n == 1 {
            // One token: one head per task.
            par.for_each_chunk(slots, slot_len, &|h, slot| {
                let (out, mut scratch) = attn.split(slot, hd, pos0);
                attn.head(&q[h * hd..(h + 1) * hd], pos0, h, out, &mut scratch);
            });
        } else {
            par.for_each_chunk(slots, slot_len, &|t, slot| {
                attn.token(&q[t * q_dim..(t + 1) * q_dim], pos0 + t, slot);
            });
        }
        for (out, slot) in s.att_out[..n * q_dim]
            .chunks_exact_mut(out_len)
            .zip(slots.chunks_exact(slot_len))
        {
            out.copy_from_slice(&slot[..out_len]);
        }

        matmul(
            &layer.wo,
            &s.att_out[..n * q_dim],
            (n, at.logical),
            &mut s.xb2[..n * dim],
            &mut s.acts,
            par,
        );
        // x += post_attn_norm(attention output).
        residual_add(
            &mut s.x[t0 * dim..n * dim],
            &mut s.xb2[t0 * dim..n * dim],
            layer.post_attn_norm.as_deref(),
            dim,
            c.rms_eps,
            par,
        );
    }

    /// Layer `l`'s feed-forward gate: `xb = ffn_norm(x)`, `hb = gate(xb)`, over the rows [`Model::rows_from`]
    /// keeps (as are the up and down pieces).
    fn ffn_gate(&self, s: &mut State, at: &PieceAt<'_, '_>, par: &dyn ParallelFor) {
        let c = &self.config;
        let PieceAt {
            layer, n, t0, m, ..
        } = *at;
        let (dim, ffn) = (c.dim, c.ffn_dim);
        let x = &s.x[t0 * dim..n * dim];
        par.for_each_chunk(&mut s.xb[t0 * dim..n * dim], dim, &|i, xb| {
            math::rmsnorm(xb, &x[i * dim..(i + 1) * dim], &layer.ffn_norm, c.rms_eps);
        });
        let xb = &s.xb[t0 * dim..n * dim];
        matmul(
            &layer.w_gate,
            xb,
            self.ffn_batch(at),
            &mut s.hb[..m * ffn],
            &mut s.acts,
            par,
        );
    }

    /// Layer `l`'s feed-forward up projection and the gated activation: `hb = act(hb) * up(xb)`.
    fn ffn_up(&self, s: &mut State, at: &PieceAt<'_, '_>, par: &dyn ParallelFor) {
        let c = &self.config;
        let PieceAt {
            layer, n, t0, m, ..
        } = *at;
        let (dim, ffn) = (c.dim, c.ffn_dim);
        let xb = &s.xb[t0 * dim..n * dim];
        matmul(
            &layer.w_up,
            xb,
            self.ffn_batch(at),
            &mut s.hb2[..m * ffn],
            &mut s.acts,
            par,
        );
        // The gated activation, one token per parallel task.
        let up = &s.hb2[..m * ffn];
        par.for_each_chunk(&mut s.hb[..m * ffn], ffn, &|t, gate| {
            let up = &up[t * ffn..(t + 1) * ffn];
            match &self.gelu {
                Some(table) => table.geglu(gate, up),
                None => simd::swiglu(gate, up),
            }
        });
    }

    /// Layer `l`'s feed-forward down projection: `x += post_ffn_norm(down(hb))`.
    fn ffn_down(&self, s: &mut State, at: &PieceAt<'_, '_>, par: &dyn ParallelFor) {
        let c = &self.config;
        let PieceAt {
            layer, n, t0, m, ..
        } = *at;
        let (dim, ffn) = (c.dim, c.ffn_dim);
        matmul(
            &layer.w_down,
            &s.hb[..m * ffn],
            self.ffn_batch(at),
            &mut s.xb2[..m * dim],
            &mut s.acts,
            par,
        );
        // x += post_ffn_norm(FFN output).
        residual_add(
            &mut s.x[t0 * dim..n * dim],
            &mut s.xb2[..m * dim],
            layer.post_ffn_norm.as_deref(),
            dim,
            c.rms_eps,
            par,
        );
    }

    /// The last token's logits: `output · output_norm(x)`.
    fn output(&self, s: &mut State, batch: Batch, par: &dyn ParallelFor) {
        let c = &self.config;
        let w = &self.weights;
        let dim = c.dim;
        let last = (batch.n - 1) * dim;
        math::rmsnorm(
            &mut s.xb[..dim],
            &s.x[last..last + dim],
            &w.output_norm,
            c.rms_eps,
        );
        matmul(
            &w.output,
            &s.xb[..dim],
            (1, 1),
            &mut s.logits,
            &mut s.acts,
            par,
        );
    }
}
