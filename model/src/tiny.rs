//! Deterministic tiny models (llama, qwen2, qwen3 and gemma3 architectures, a few hundred KB to a few MB) written as GGUF, for
//! tests that must run the real engine where everything is slow (the appliance under QEMU/TCG).
//!
//! The weights are seeded SplitMix64 noise quantized by simple round-to-nearest encoders written here (not
//! llama.cpp's optimising quantizers); the vocabularies are byte-complete so every prompt tokenizes: a GPT-2 byte
//! vocabulary plus a few merges for `llama`, SentencePiece byte-fallback pieces plus a few words for `gemma3`.
//! The same seed always yields the same bytes.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::gguf_write::GgufWriter;
use crate::quant::{f32_to_f16, GgmlType, QK};
use crate::transformer::Arch;

mod more_types;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-scale, scale).
    fn uniform(&mut self, scale: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(scale)).collect()
    }
}

/// Encodes `w` (length a multiple of the block size) as `t` (F32, Q8_0, Q4_0, Q4_1, Q5_0, or one of [`more_types`]) by
/// rounding to nearest.
fn encode(t: GgmlType, w: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    match t {
        GgmlType::F32 => w
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::Q8_0 => {
            for b in w.chunks_exact(QK) {
                let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f32_to_f16(d));
                out.extend(b.iter().map(|v| libm::roundf(v * id) as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for b in w.chunks_exact(QK) {
                // The element of largest magnitude, with its sign, maps to -8 (as ggml's reference quantizer).
                let max = b
                    .iter()
                    .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f32_to_f16(d));
                let q = |v: f32| (libm::roundf(v * id + 8.0) as i32).clamp(0, 15) as u8;
                out.extend((0..QK / 2).map(|j| q(b[j]) | (q(b[j + QK / 2]) << 4)));
            }
        }
        GgmlType::Q4_1 => {
            for b in w.chunks_exact(QK) {
                let min = b.iter().copied().fold(f32::INFINITY, f32::min);
                let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f32_to_f16(d));
                out.extend_from_slice(&f32_to_f16(min));
                let q = |v: f32| (libm::roundf((v - min) * id) as i32).clamp(0, 15) as u8;
                out.extend((0..QK / 2).map(|j| q(b[j]) | (q(b[j + QK / 2]) << 4)));
            }
        }
        GgmlType::Q5_0 => {
            for b in w.chunks_exact(QK) {
                let (mut amax, mut max) = (0.0f32, 0.0f32);
                for &v in b {
                    if v.abs() > amax {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -16.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q: Vec<u32> = b
                    .iter()
                    .map(|v| (libm::roundf(v * id + 16.0) as i32).clamp(0, 31) as u32)
                    .collect();
                let mut qh = 0u32;
                for (j, &v) in q.iter().enumerate() {
                    qh |= ((v >> 4) & 1) << j;
                }
                out.extend_from_slice(&f32_to_f16(d));
                out.extend_from_slice(&qh.to_le_bytes());
                out.extend(
                    (0..QK / 2).map(|j| (q[j] & 0xF) as u8 | (((q[j + QK / 2] & 0xF) as u8) << 4)),
                );
            }
        }
        // Q5_K, Q5_1, BF16, Q3_K and Q2_K (with Q4_0 above, what `TinySpec::weights` may name).
        t => out = more_types::encode(t, w).unwrap_or_default(),
    }
    out
}

/// RoPE base of the tiny Llama 3 model (Llama 3's).
const LLAMA3_ROPE_BASE: f32 = 500_000.0;

/// Shape of a generated model.
#[derive(Clone, Copy, Debug)]
pub struct TinySpec {
    pub arch: Arch,
    pub n_layers: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub context_length: usize,
    /// Llama 3's conventions on a llama model: its special tokens and chat headers, the `llama-bpe`
    /// pre-tokenizer, BOS added, RoPE base 500,000 and `rope_freqs` factors ([`llama3_rope_factors`]).
    pub llama3: bool,
    /// The type of every attention and feed-forward matrix; `None` for the architecture's own mix (below).
    pub weights: Option<GgmlType>,
}

impl TinySpec {
    /// 2 layers, width 64, GQA 4/2, Q4_1 and Q8_0 weights (SmolLM2's types).
    pub fn llama() -> TinySpec {
        TinySpec {
            arch: Arch::Llama,
            n_layers: 2,
            dim: 64,
            ffn_dim: 128,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            context_length: 512,
            llama3: false,
            weights: None,
        }
    }

    /// Llama 3 shape: the tiny llama with Llama 3's vocabulary conventions and RoPE frequency factors.
    pub fn llama3() -> TinySpec {
        TinySpec {
            llama3: true,
            ..TinySpec::llama()
        }
    }

    /// The llama shape widened to 256 (a whole K-quant super-block per row: 4 heads of 64, 2 KV heads, FFN 512)
    /// with every attention and feed-forward matrix of type `t`: the tiny models that hold each tensor type to
    /// llama.cpp.
    pub fn llama_typed(t: GgmlType) -> TinySpec {
        TinySpec {
            dim: 256,
            ffn_dim: 512,
            head_dim: 64,
            weights: Some(t),
            ..TinySpec::llama()
        }
    }

    /// Qwen2 shape: 2 layers, width 64, GQA 4/2, Q/K/V biases, NeoX RoPE, Q8_0 and Q4_1 weights.
    pub fn qwen2() -> TinySpec {
        TinySpec {
            arch: Arch::Qwen2,
            ..TinySpec::llama()
        }
    }

    /// Qwen3 shape: 2 layers, width 64, 4 heads of 32 (wider than dim / heads, as Qwen3's are), 2 KV heads,
    /// per-head Q/K norms.
    pub fn qwen3() -> TinySpec {
        TinySpec {
            arch: Arch::Qwen3,
            head_dim: 32,
            ..TinySpec::llama()
        }
    }

    /// 6 layers (5 sliding-window, 1 global), width 64, 2 heads / 1 KV head of 32, Q5_0 and Q8_0 weights.
    pub fn gemma3() -> TinySpec {
        TinySpec {
            arch: Arch::Gemma3,
            n_layers: 6,
            dim: 64,
            ffn_dim: 128,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 32,
            context_length: 512,
            llama3: false,
            weights: None,
        }
    }
}

/// Llama 3.1's RoPE frequency factors for `head_dim` rotated dimensions at `base`, as llama.cpp's converter computes
/// them into `rope_freqs` (factor 8, low- and high-frequency factors 1 and 4), with an original context of 64
/// positions instead of 8,192 so that within the tiny model's 512 positions every kind of pair occurs: short
/// wavelengths kept (factor 1), long ones divided by 8, and one in between smoothly interpolated.
pub fn llama3_rope_factors(head_dim: usize, base: f32) -> Vec<f32> {
    let (factor, low, high, original) = (8.0f32, 1.0f32, 4.0f32, 64.0f32);
    let (low_wavelength, high_wavelength) = (original / low, original / high);
    (0..head_dim / 2)
        .map(|i| {
            let frequency = 1.0 / libm::powf(base, (2 * i) as f32 / head_dim as f32);
            let wavelength = 2.0 * core::f32::consts::PI / frequency;
            if wavelength < high_wavelength {
                1.0
            } else if wavelength > low_wavelength {
                factor
            } else {
                let smooth = (original / wavelength - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// GPT-2 byte→char mapping (printable bytes map to themselves, the rest to U+0100 onwards).
fn gpt2_byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap_or('?')
}

/// Generates a complete GGUF model for `spec`, deterministic in `seed`.
pub fn generate(spec: &TinySpec, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut w = GgufWriter::new();
    let arch = spec.arch;
    let p = arch.gguf_name();
    w.string("general.architecture", p)
        .string("general.name", &format!("cloister tiny {p} seed {seed}"));
    w.u32(&format!("{p}.block_count"), spec.n_layers as u32)
        .u32(&format!("{p}.context_length"), spec.context_length as u32)
        .u32(&format!("{p}.embedding_length"), spec.dim as u32)
        .u32(&format!("{p}.feed_forward_length"), spec.ffn_dim as u32)
        .u32(&format!("{p}.attention.head_count"), spec.n_heads as u32)
        .u32(
            &format!("{p}.attention.head_count_kv"),
            spec.n_kv_heads as u32,
        )
        .u32(&format!("{p}.attention.key_length"), spec.head_dim as u32)
        .u32(&format!("{p}.attention.value_length"), spec.head_dim as u32);

    // Vocabulary.
    let mut tokens: Vec<String> = Vec::new();
    let mut types: Vec<i32> = Vec::new();
    let mut scores: Vec<f32> = Vec::new();
    let mut merges: Vec<String> = Vec::new();
    match arch {
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => {
            if spec.llama3 {
                w.f32(&format!("{p}.rope.freq_base"), LLAMA3_ROPE_BASE)
                    .f32(&format!("{p}.attention.layer_norm_rms_epsilon"), 1e-5);
            } else if arch == Arch::Llama {
                w.f32(&format!("{p}.rope.freq_base"), 10_000.0)
                    .f32(&format!("{p}.attention.layer_norm_rms_epsilon"), 1e-5);
            } else {
                w.f32(&format!("{p}.rope.freq_base"), 1_000_000.0)
                    .f32(&format!("{p}.attention.layer_norm_rms_epsilon"), 1e-6);
            }
            let specials: &[&str] = if spec.llama3 {
                &[
                    "<|begin_of_text|>",
                    "<|end_of_text|>",
                    "<|start_header_id|>",
                    "<|end_header_id|>",
                    "<|eot_id|>",
                ]
            } else {
                &["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
            };
            for s in specials {
                tokens.push(String::from(*s));
                types.push(3);
            }
            for b in 0..=255u8 {
                tokens.push(String::from(gpt2_byte_char(b)));
                types.push(1);
            }
            let sp = gpt2_byte_char(b' ');
            for c in b'a'..=b'z' {
                merges.push(format!("{sp} {}", c as char));
                tokens.push(format!("{sp}{}", c as char));
                types.push(1);
            }
            for m in ["t h", "th e", "Ġ th", "Ġth e"] {
                let m = m.replace('Ġ', &String::from(sp));
                let joined = m.replace(' ', "");
                merges.push(m);
                tokens.push(joined);
                types.push(1);
            }
        }
        Arch::Gemma3 => {
            w.f32(&format!("{p}.rope.freq_base"), 1_000_000.0)
                .f32(&format!("{p}.attention.layer_norm_rms_epsilon"), 1e-6)
                .u32(&format!("{p}.attention.sliding_window"), 4);
            for s in [
                "<pad>",
                "<eos>",
                "<bos>",
                "<unk>",
                "<start_of_turn>",
                "<end_of_turn>",
            ] {
                tokens.push(String::from(s));
                types.push(if s == "<unk>" { 2 } else { 3 });
                scores.push(0.0);
            }
            for b in 0..=255u8 {
                tokens.push(format!("<0x{b:02X}>"));
                types.push(6);
                scores.push(0.0);
            }
            let mut pieces: Vec<String> = vec![String::from("\u{2581}"), String::from("\n")];
            pieces.extend((b'a'..=b'z').map(|c| String::from(c as char)));
            pieces.extend((b'a'..=b'z').map(|c| format!("\u{2581}{}", c as char)));
            pieces.extend(
                ["th", "the", "\u{2581}the", "\u{2581}sea"]
                    .iter()
                    .map(|s| String::from(*s)),
            );
            for (i, s) in pieces.into_iter().enumerate() {
                tokens.push(s);
                types.push(1);
                scores.push(-(i as f32));
            }
        }
    }
    let vocab = tokens.len();
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    w.strings("tokenizer.ggml.tokens", &token_refs)
        .i32s("tokenizer.ggml.token_type", &types);
    match arch {
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => {
            let merge_refs: Vec<&str> = merges.iter().map(String::as_str).collect();
            let pre = if spec.llama3 {
                "llama-bpe"
            } else if arch == Arch::Llama {
                "smollm"
            } else {
                "qwen2"
            };
            // Llama 3: BOS `<|begin_of_text|>` added, EOS `<|eot_id|>` (as its instruct files set it).
            let (bos, eos, add_bos) = if spec.llama3 {
                (0, 4, true)
            } else {
                (1, 2, false)
            };
            w.string("tokenizer.ggml.model", "gpt2")
                .string("tokenizer.ggml.pre", pre)
                .strings("tokenizer.ggml.merges", &merge_refs)
                .u32("tokenizer.ggml.bos_token_id", bos)
                .u32("tokenizer.ggml.eos_token_id", eos)
                .bool("tokenizer.ggml.add_bos_token", add_bos);
        }
        Arch::Gemma3 => {
            w.string("tokenizer.ggml.model", "llama")
                .f32s("tokenizer.ggml.scores", &scores)
                .u32("tokenizer.ggml.bos_token_id", 2)
                .u32("tokenizer.ggml.eos_token_id", 1)
                .u32("tokenizer.ggml.unknown_token_id", 3)
                .bool("tokenizer.ggml.add_bos_token", true)
                .bool("tokenizer.ggml.add_space_prefix", false);
        }
    }

    // Weights: matrices are [rows × cols] with dims [cols, rows].
    let (dim, ffn, q_dim, kv_dim) = (
        spec.dim,
        spec.ffn_dim,
        spec.n_heads * spec.head_dim,
        spec.n_kv_heads * spec.head_dim,
    );
    let (proj, vt, ffn_t) = match arch {
        Arch::Llama | Arch::Qwen3 => (GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_1),
        Arch::Qwen2 => (GgmlType::Q8_0, GgmlType::Q8_0, GgmlType::Q4_1),
        Arch::Gemma3 => (GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q5_0),
    };
    let (proj, vt, ffn_t) = match spec.weights {
        Some(t) => (t, t, t),
        None => (proj, vt, ffn_t),
    };
    let mat =
        |w: &mut GgufWriter, rng: &mut Rng, name: &str, rows: usize, cols: usize, t: GgmlType| {
            let scale = 1.0 / libm::sqrtf(cols as f32) * 1.7;
            w.tensor(
                name,
                &[cols as u64, rows as u64],
                t,
                encode(t, &rng.vec(rows * cols, scale)),
            );
        };
    let norm = |w: &mut GgufWriter, rng: &mut Rng, name: &str, n: usize| {
        let v: Vec<f32> = (0..n).map(|_| 1.0 + rng.uniform(0.1)).collect();
        w.tensor(name, &[n as u64], GgmlType::F32, encode(GgmlType::F32, &v));
    };
    mat(
        &mut w,
        &mut rng,
        "token_embd.weight",
        vocab,
        dim,
        GgmlType::Q8_0,
    );
    norm(&mut w, &mut rng, "output_norm.weight", dim);
    if spec.llama3 {
        let factors = llama3_rope_factors(spec.head_dim, LLAMA3_ROPE_BASE);
        w.tensor(
            "rope_freqs.weight",
            &[factors.len() as u64],
            GgmlType::F32,
            encode(GgmlType::F32, &factors),
        );
    }
    for l in 0..spec.n_layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        norm(&mut w, &mut rng, &n("attn_norm.weight"), dim);
        mat(&mut w, &mut rng, &n("attn_q.weight"), q_dim, dim, proj);
        mat(&mut w, &mut rng, &n("attn_k.weight"), kv_dim, dim, proj);
        mat(&mut w, &mut rng, &n("attn_v.weight"), kv_dim, dim, vt);
        mat(&mut w, &mut rng, &n("attn_output.weight"), dim, q_dim, proj);
        norm(&mut w, &mut rng, &n("ffn_norm.weight"), dim);
        mat(&mut w, &mut rng, &n("ffn_gate.weight"), ffn, dim, ffn_t);
        mat(&mut w, &mut rng, &n("ffn_up.weight"), ffn, dim, ffn_t);
        mat(&mut w, &mut rng, &n("ffn_down.weight"), dim, ffn, ffn_t);
        if arch == Arch::Qwen2 {
            for (name, len) in [
                ("attn_q.bias", q_dim),
                ("attn_k.bias", kv_dim),
                ("attn_v.bias", kv_dim),
            ] {
                let bias = rng.vec(len, 0.5);
                w.tensor(
                    &n(name),
                    &[len as u64],
                    GgmlType::F32,
                    encode(GgmlType::F32, &bias),
                );
            }
        }
        if arch == Arch::Qwen3 {
            norm(&mut w, &mut rng, &n("attn_q_norm.weight"), spec.head_dim);
            norm(&mut w, &mut rng, &n("attn_k_norm.weight"), spec.head_dim);
        }
        if arch == Arch::Gemma3 {
            norm(&mut w, &mut rng, &n("attn_q_norm.weight"), spec.head_dim);
            norm(&mut w, &mut rng, &n("attn_k_norm.weight"), spec.head_dim);
            norm(&mut w, &mut rng, &n("post_attention_norm.weight"), dim);
            norm(&mut w, &mut rng, &n("post_ffw_norm.weight"), dim);
        }
    }
    w.finish()
}
