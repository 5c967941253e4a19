//! Structure-aware inputs for the `gguf_mutate` target: a [`Recipe`] (decoded from fuzzer bytes by `arbitrary`)
//! says how to build a GGUF file that is well-formed where the recipe does not say otherwise — the tokenizer
//! metadata of a `model::tiny` model, a freshly shaped set of weights of chosen types, then semantic edits
//! (replace, drop or add keys; drop, rename, reshape, retype or move tensors), byte flips and a truncation.
//!
//! Byte-level mutation of a whole model mostly lands in weight bytes and, when it hits the header, breaks the
//! layout before the loader sees anything; a recipe reaches the loader's and the forward pass's own checks
//! (consistent files with wrong shapes, types, counts and ids). Layout follows ggml's `docs/gguf.md` (v3).

use arbitrary::Arbitrary;
use model::gguf::{tensor_size, Gguf, Value, GGUF_MAGIC};
use model::quant::GgmlType;
use model::tiny::{generate, TinySpec};
use model::transformer::Arch;
use std::sync::OnceLock;

/// A scalar metadata value, any type.
#[derive(Arbitrary, Clone, Debug)]
pub enum Scalar {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    /// Encoded as this raw byte (the reader must accept any nonzero byte as true).
    Bool(u8),
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata value: a scalar, an array (element type from its first element), or a raw array whose declared type
/// and count need not match its body.
#[derive(Arbitrary, Clone, Debug)]
pub enum Val {
    One(Scalar),
    Array(Vec<Scalar>),
    RawArray {
        elem_type: u32,
        count: u64,
        body: Vec<u8>,
    },
}

/// Which key an edit targets: one already in the file (index modulo the count) or one the loaders read.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum KeyRef {
    Existing(u8),
    Known(u8),
}

/// Keys read by `Config::from_gguf`, `Tokenizer::from_gguf` and `Gguf::parse`.
const KNOWN_KEYS: &[&str] = &[
    "general.architecture",
    "general.alignment",
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_space_prefix",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.key_length",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.freq_base",
    "gemma3.block_count",
    "gemma3.context_length",
    "gemma3.embedding_length",
    "gemma3.feed_forward_length",
    "gemma3.attention.head_count",
    "gemma3.attention.head_count_kv",
    "gemma3.attention.key_length",
    "gemma3.attention.layer_norm_rms_epsilon",
    "gemma3.rope.freq_base",
    "gemma3.attention.sliding_window",
];

/// One change to the built file.
#[derive(Arbitrary, Clone, Debug)]
pub enum Edit {
    SetMeta {
        key: KeyRef,
        value: Val,
    },
    RemoveMeta {
        key: KeyRef,
    },
    RemoveTensor {
        tensor: u8,
    },
    /// Gives `tensor` the name of tensor `from` (a duplicate) or of a role in another layer.
    RenameTensor {
        tensor: u8,
        from: u8,
        layer: u8,
    },
    /// New dims (1..=4 of them; a zero count keeps one); the data is regenerated at the new size.
    Reshape {
        tensor: u8,
        dims: Vec<u32>,
    },
    /// New raw type code; the data is regenerated at the new size.
    Retype {
        tensor: u8,
        ggml_type: u32,
    },
    /// Writes this relative offset instead of the computed one.
    SetOffset {
        tensor: u8,
        offset: u64,
    },
    /// Weights of raw pattern bytes (f16 scales may be NaN or infinite).
    WildData {
        tensor: u8,
        seed: u64,
    },
    SwapTensors {
        a: u8,
        b: u8,
    },
}

/// Shape and types of the generated weights; a zero field keeps the tiny model's value.
#[derive(Arbitrary, Clone, Debug, Default)]
pub struct Shape {
    pub n_layers: u8,
    pub dim: u16,
    pub ffn_dim: u16,
    pub n_heads: u8,
    pub n_kv_heads: u8,
    pub head_dim: u16,
    /// Type choices for: embeddings, attention matrices, FFN matrices, norms (index into [`TYPE_CHOICES`]).
    pub types: [u8; 4],
    /// Writes a separate `output.weight` instead of tying it to the embeddings.
    pub untied: bool,
}

/// Type codes a shape may pick: 0 keeps the default; all known ggml types; one unknown code (5, removed Q4_2).
const TYPE_CHOICES: &[Option<u32>] = &[
    None,
    Some(0),
    Some(1),
    Some(2),
    Some(3),
    Some(6),
    Some(7),
    Some(8),
    Some(9),
    Some(10),
    Some(11),
    Some(12),
    Some(13),
    Some(14),
    Some(15),
    Some(30),
    Some(5),
];

/// A whole structure-aware input.
#[derive(Arbitrary, Clone, Debug)]
pub struct Recipe {
    pub gemma: bool,
    /// GGUF version to write (2 and 3 are valid; others are refused).
    pub version_is_2: bool,
    pub shape: Shape,
    pub edits: Vec<Edit>,
    /// XOR masks applied at these byte offsets (modulo the file length) after serialising.
    pub byte_flips: Vec<(u32, u8)>,
    /// Cut the file to this many bytes.
    pub truncate: Option<u32>,
}

struct Tensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
    offset: Option<u64>,
}

/// Largest tensor body a recipe generates (bigger shapes get an empty body and fail the reader's bounds check).
const MAX_TENSOR_BYTES: usize = 256 << 10;

fn base_metadata(gemma: bool) -> &'static [(String, Val)] {
    static LLAMA: OnceLock<Vec<(String, Val)>> = OnceLock::new();
    static GEMMA: OnceLock<Vec<(String, Val)>> = OnceLock::new();
    let (cell, spec) = if gemma {
        (&GEMMA, TinySpec::gemma3())
    } else {
        (&LLAMA, TinySpec::llama())
    };
    cell.get_or_init(|| {
        let blob = generate(&spec, 1);
        let g = Gguf::parse(&blob).expect("the tiny model parses");
        g.metadata
            .iter()
            .map(|e| (e.key.to_string(), owned(&e.value)))
            .collect()
    })
}

fn scalar(v: &Value<'_>) -> Scalar {
    match *v {
        Value::U8(x) => Scalar::U8(x),
        Value::I8(x) => Scalar::I8(x),
        Value::U16(x) => Scalar::U16(x),
        Value::I16(x) => Scalar::I16(x),
        Value::U32(x) => Scalar::U32(x),
        Value::I32(x) => Scalar::I32(x),
        Value::F32(x) => Scalar::F32(x),
        Value::Bool(x) => Scalar::Bool(x as u8),
        Value::Str(x) => Scalar::Str(x.to_string()),
        Value::U64(x) => Scalar::U64(x),
        Value::I64(x) => Scalar::I64(x),
        Value::F64(x) => Scalar::F64(x),
        // Arrays do not nest in GGUF files this reader accepts.
        Value::Array(_) => Scalar::U8(0),
    }
}

fn owned(v: &Value<'_>) -> Val {
    match v {
        Value::Array(a) => Val::Array(a.iter().map(|e| scalar(&e)).collect()),
        other => Val::One(scalar(other)),
    }
}

fn type_code(s: &Scalar) -> u32 {
    match s {
        Scalar::U8(_) => 0,
        Scalar::I8(_) => 1,
        Scalar::U16(_) => 2,
        Scalar::I16(_) => 3,
        Scalar::U32(_) => 4,
        Scalar::I32(_) => 5,
        Scalar::F32(_) => 6,
        Scalar::Bool(_) => 7,
        Scalar::Str(_) => 8,
        Scalar::U64(_) => 10,
        Scalar::I64(_) => 11,
        Scalar::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_scalar(out: &mut Vec<u8>, s: &Scalar) {
    match s {
        Scalar::U8(x) => out.push(*x),
        Scalar::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Scalar::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Scalar::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Scalar::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Scalar::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Scalar::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Scalar::Bool(x) => out.push(*x),
        Scalar::Str(x) => put_str(out, x),
        Scalar::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Scalar::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Scalar::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn put_val(out: &mut Vec<u8>, key: &str, v: &Val) {
    put_str(out, key);
    match v {
        Val::One(s) => {
            out.extend_from_slice(&type_code(s).to_le_bytes());
            put_scalar(out, s);
        }
        Val::Array(items) => {
            out.extend_from_slice(&9u32.to_le_bytes());
            let elem = items.first().map(type_code).unwrap_or(0);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for s in items {
                put_scalar(out, s);
            }
        }
        Val::RawArray {
            elem_type,
            count,
            body,
        } => {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&elem_type.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(body);
        }
    }
}

/// SplitMix64 pattern bytes.
fn pattern(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Tame weights for `dims` of type `code`: small finite floats, quant blocks with a small f16 scale (0x2000 ≈
/// 0.0078) in their first two bytes. An invalid shape or type gets a 32-byte body (the reader must refuse it).
fn tame_data(dims: &[u64], code: u32, seed: u64) -> Vec<u8> {
    let Some(t) = GgmlType::from_u32(code) else {
        return pattern(32, seed);
    };
    let Some(size) = tensor_size(dims, t) else {
        return pattern(32, seed);
    };
    if size > MAX_TENSOR_BYTES {
        return Vec::new();
    }
    let mut data = pattern(size, seed);
    match t {
        GgmlType::F32 => {
            for c in data.chunks_exact_mut(4) {
                let v = (u32::from_le_bytes([c[0], c[1], c[2], c[3]]) >> 8) as f32
                    / (1 << 24) as f32
                    - 0.5;
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 | GgmlType::BF16 => {
            for c in data.chunks_exact_mut(2) {
                // Exponent bits cleared to a small magnitude in both encodings.
                c[1] = if t == GgmlType::F16 {
                    c[1] & 0x83 | 0x20
                } else {
                    c[1] & 0x80 | 0x3c
                };
            }
        }
        _ => {
            for block in data.chunks_exact_mut(t.block_bytes()) {
                block[0] = 0;
                block[1] = 0x20;
            }
        }
    }
    data
}

fn pick_type(choice: u8, default: GgmlType) -> u32 {
    TYPE_CHOICES[choice as usize % TYPE_CHOICES.len()].unwrap_or(default as u32)
}

fn set_meta(meta: &mut Vec<(String, Val)>, key: &str, v: Val) {
    match meta.iter_mut().find(|(k, _)| k == key) {
        Some(e) => e.1 = v,
        None => meta.push((key.to_string(), v)),
    }
}

fn resolve(meta: &[(String, Val)], key: KeyRef) -> String {
    match key {
        KeyRef::Existing(i) if !meta.is_empty() => meta[i as usize % meta.len()].0.clone(),
        KeyRef::Existing(i) | KeyRef::Known(i) => {
            KNOWN_KEYS[i as usize % KNOWN_KEYS.len()].to_string()
        }
    }
}

const LAYER_ROLES: &[&str] = &[
    "attn_norm.weight",
    "attn_q.weight",
    "attn_k.weight",
    "attn_v.weight",
    "attn_output.weight",
    "ffn_norm.weight",
    "ffn_gate.weight",
    "ffn_up.weight",
    "ffn_down.weight",
    "attn_q_norm.weight",
    "attn_k_norm.weight",
    "post_attention_norm.weight",
    "post_ffw_norm.weight",
];

impl Recipe {
    /// Serialises the recipe into GGUF bytes.
    pub fn build(&self) -> Vec<u8> {
        let spec = if self.gemma {
            TinySpec::gemma3()
        } else {
            TinySpec::llama()
        };
        let arch = if spec.arch == Arch::Gemma3 {
            "gemma3"
        } else {
            "llama"
        };
        let mut meta = base_metadata(self.gemma).to_vec();
        let s = &self.shape;
        let keep = |v: usize, default: usize| if v == 0 { default } else { v };
        let n_layers = keep(s.n_layers as usize % 4, spec.n_layers);
        let dim = keep(s.dim as usize % 1025, spec.dim);
        let ffn = keep(s.ffn_dim as usize % 2049, spec.ffn_dim);
        let n_heads = keep(s.n_heads as usize % 17, spec.n_heads);
        let n_kv_heads = keep(s.n_kv_heads as usize % 17, spec.n_kv_heads);
        let head_dim = keep(s.head_dim as usize % 513, spec.head_dim);
        for (k, v) in [
            ("block_count", n_layers),
            ("embedding_length", dim),
            ("feed_forward_length", ffn),
            ("attention.head_count", n_heads),
            ("attention.head_count_kv", n_kv_heads),
            ("attention.key_length", head_dim),
        ] {
            set_meta(
                &mut meta,
                &format!("{arch}.{k}"),
                Val::One(Scalar::U32(v as u32)),
            );
        }
        let vocab = meta
            .iter()
            .find(|(k, _)| k == "tokenizer.ggml.tokens")
            .map(|(_, v)| match v {
                Val::Array(a) => a.len(),
                _ => 0,
            })
            .unwrap_or(0);
        let (embd_t, attn_t, ffn_t, norm_t) = if self.gemma {
            (
                GgmlType::Q8_0,
                GgmlType::Q5_0,
                GgmlType::Q5_0,
                GgmlType::F32,
            )
        } else {
            (
                GgmlType::Q8_0,
                GgmlType::Q4_1,
                GgmlType::Q4_1,
                GgmlType::F32,
            )
        };
        let embd_t = pick_type(s.types[0], embd_t);
        let attn_t = pick_type(s.types[1], attn_t);
        let ffn_t = pick_type(s.types[2], ffn_t);
        let norm_t = pick_type(s.types[3], norm_t);
        let (q_dim, kv_dim) = (n_heads * head_dim, n_kv_heads * head_dim);

        let mut tensors: Vec<Tensor> = Vec::new();
        let mut seed = 1u64;
        let mut add = |name: String, dims: Vec<u64>, code: u32| {
            seed += 1;
            let data = tame_data(&dims, code, seed);
            tensors.push(Tensor {
                name,
                dims,
                ggml_type: code,
                data,
                offset: None,
            });
        };
        add(
            "token_embd.weight".into(),
            vec![dim as u64, vocab as u64],
            embd_t,
        );
        if s.untied {
            add(
                "output.weight".into(),
                vec![dim as u64, vocab as u64],
                embd_t,
            );
        }
        add("output_norm.weight".into(), vec![dim as u64], norm_t);
        for l in 0..n_layers {
            let n = |r: &str| format!("blk.{l}.{r}");
            add(n("attn_norm.weight"), vec![dim as u64], norm_t);
            add(n("attn_q.weight"), vec![dim as u64, q_dim as u64], attn_t);
            add(n("attn_k.weight"), vec![dim as u64, kv_dim as u64], attn_t);
            add(n("attn_v.weight"), vec![dim as u64, kv_dim as u64], attn_t);
            add(
                n("attn_output.weight"),
                vec![q_dim as u64, dim as u64],
                attn_t,
            );
            add(n("ffn_norm.weight"), vec![dim as u64], norm_t);
            add(n("ffn_gate.weight"), vec![dim as u64, ffn as u64], ffn_t);
            add(n("ffn_up.weight"), vec![dim as u64, ffn as u64], ffn_t);
            add(n("ffn_down.weight"), vec![ffn as u64, dim as u64], ffn_t);
            if self.gemma {
                add(n("attn_q_norm.weight"), vec![head_dim as u64], norm_t);
                add(n("attn_k_norm.weight"), vec![head_dim as u64], norm_t);
                add(n("post_attention_norm.weight"), vec![dim as u64], norm_t);
                add(n("post_ffw_norm.weight"), vec![dim as u64], norm_t);
            }
        }

        for e in &self.edits {
            let pick = |i: u8, len: usize| (len > 0).then(|| i as usize % len);
            match e {
                Edit::SetMeta { key, value } => {
                    let k = resolve(&meta, *key);
                    set_meta(&mut meta, &k, value.clone());
                }
                Edit::RemoveMeta { key } => {
                    let k = resolve(&meta, *key);
                    meta.retain(|(m, _)| *m != k);
                }
                Edit::RemoveTensor { tensor } => {
                    if let Some(i) = pick(*tensor, tensors.len()) {
                        tensors.remove(i);
                    }
                }
                Edit::RenameTensor {
                    tensor,
                    from,
                    layer,
                } => {
                    if let Some(i) = pick(*tensor, tensors.len()) {
                        tensors[i].name = if layer % 2 == 0 {
                            tensors[*from as usize % tensors.len()].name.clone()
                        } else {
                            let role = LAYER_ROLES[*from as usize % LAYER_ROLES.len()];
                            format!("blk.{}.{role}", layer / 2)
                        };
                    }
                }
                Edit::Reshape { tensor, dims } => {
                    if let Some(i) = pick(*tensor, tensors.len()) {
                        let mut d: Vec<u64> = dims.iter().take(5).map(|&x| x as u64).collect();
                        if d.is_empty() {
                            d.push(1);
                        }
                        tensors[i].data = tame_data(&d, tensors[i].ggml_type, i as u64);
                        tensors[i].dims = d;
                    }
                }
                Edit::Retype { tensor, ggml_type } => {
                    if let Some(i) = pick(*tensor, tensors.len()) {
                        tensors[i].ggml_type = *ggml_type;
                        tensors[i].data = tame_data(&tensors[i].dims, *ggml_type, i as u64);
                    }
                }
                Edit::SetOffset { tensor, offset } => {
                    if let Some(i) = pick(*tensor, tensors.len()) {
                        tensors[i].offset = Some(*offset);
                    }
                }
                Edit::WildData { tensor, seed } => {
                    if let Some(i) = pick(*tensor, tensors.len()) {
                        let len = tensors[i].data.len();
                        tensors[i].data = pattern(len, *seed);
                    }
                }
                Edit::SwapTensors { a, b } => {
                    if let (Some(a), Some(b)) = (pick(*a, tensors.len()), pick(*b, tensors.len())) {
                        tensors.swap(a, b);
                    }
                }
            }
        }

        let mut out = serialize(&meta, &tensors, if self.version_is_2 { 2 } else { 3 });
        if !out.is_empty() {
            let len = out.len();
            for &(at, mask) in &self.byte_flips {
                out[at as usize % len] ^= mask;
            }
        }
        if let Some(n) = self.truncate {
            out.truncate(n as usize);
        }
        out
    }
}

/// Header, metadata, tensor infos, padding, tensor bodies at the (possibly overridden) offsets.
fn serialize(meta: &[(String, Val)], tensors: &[Tensor], version: u32) -> Vec<u8> {
    let align = match meta.iter().find(|(k, _)| k == "general.alignment") {
        Some((_, Val::One(Scalar::U32(a)))) if a.is_power_of_two() && *a <= 4096 => *a as usize,
        _ => 32,
    };
    let mut out = Vec::new();
    out.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_val(&mut out, k, v);
    }
    let mut next = 0u64;
    let mut placed = Vec::with_capacity(tensors.len());
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ggml_type.to_le_bytes());
        out.extend_from_slice(&t.offset.unwrap_or(next).to_le_bytes());
        placed.push(next);
        next += (t.data.len() as u64).div_ceil(align as u64) * align as u64;
    }
    out.resize(out.len().div_ceil(align) * align, 0);
    let data_start = out.len();
    for (t, at) in tensors.iter().zip(placed) {
        let at = data_start + at as usize;
        out.resize(at, 0);
        out.extend_from_slice(&t.data);
    }
    out.resize(out.len().div_ceil(align) * align, 0);
    out
}
