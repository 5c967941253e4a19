//! The tiny-model generator: deterministic bytes, loadable by the reader and the engine, tokenizers complete over
//! bytes, finite logits, reproducible greedy output, and the engine's typed errors (context overflow, bad ids).

use model::gguf::Gguf;
use model::parallel::Serial;
use model::sampler::{Sampler, SamplerConfig};
use model::tiny::{generate, TinySpec};
use model::tokenizer::Tokenizer;
use model::transformer::{Arch, Model, ModelError, State};

fn run(spec: TinySpec, seed: u64, prompt: &str, n: usize) -> (Vec<u32>, Vec<u32>) {
    let blob = generate(&spec, seed);
    let g = Gguf::parse(&blob).expect("tiny model parses");
    let m = Model::load(&g).expect("tiny model loads");
    assert_eq!(m.config.arch, spec.arch);
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer");
    let mut ids = Vec::new();
    tok.encode(prompt, true, true, &mut ids);
    // Byte-complete vocabularies: decoding the prompt ids gives the prompt back (after BOS, which decodes as text).
    let text = tok.decode(&ids);
    assert!(text.ends_with(prompt), "{text:?} vs {prompt:?}");
    let mut state = State::new(&m.config, 64, 8);
    m.forward(&mut state, &ids, &Serial).expect("prefill");
    let mut sampler = Sampler::new(
        SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        },
        m.config.vocab_size,
    );
    let mut out = Vec::new();
    for _ in 0..n {
        assert!(state.logits.iter().all(|v| v.is_finite()));
        let t = sampler.sample(&state.logits);
        out.push(t);
        m.forward(&mut state, &[t], &Serial).expect("decode");
    }
    (ids, out)
}

#[test]
fn generation_is_deterministic_per_seed() {
    for spec in [TinySpec::llama(), TinySpec::gemma3()] {
        let a = generate(&spec, 7);
        assert_eq!(a, generate(&spec, 7));
        assert_ne!(a, generate(&spec, 8));
        assert!(a.len() < 4 << 20, "{} bytes", a.len());
    }
}

#[test]
fn tiny_llama_runs_and_is_reproducible() {
    let prompt = "<|im_start|>user\nthe sea, 42 é!<|im_end|>\n";
    let (ids, a) = run(TinySpec::llama(), 1, prompt, 12);
    assert_eq!(ids[0], 1, "special token parsed");
    assert_eq!(a, run(TinySpec::llama(), 1, prompt, 12).1);
}

#[test]
fn tiny_gemma3_runs_and_is_reproducible() {
    // Longer than the sliding window (4) so local layers mask old keys.
    let prompt = "<start_of_turn>user\nthe sea is wide and deep<end_of_turn>\n";
    let (ids, a) = run(TinySpec::gemma3(), 3, prompt, 12);
    assert_eq!(&ids[..2], &[2, 4], "BOS then <start_of_turn>");
    assert_eq!(a, run(TinySpec::gemma3(), 3, prompt, 12).1);
}

#[test]
fn typed_errors_for_overflow_and_bad_ids() {
    let blob = generate(&TinySpec::llama(), 1);
    let g = Gguf::parse(&blob).unwrap();
    let m = Model::load(&g).unwrap();
    let mut state = State::new(&m.config, 8, 4);
    assert_eq!(
        m.forward(&mut state, &[5; 9], &Serial).unwrap_err(),
        ModelError::ContextOverflow {
            needed: 9,
            context: 8
        }
    );
    let bad = m.config.vocab_size as u32;
    assert_eq!(
        m.forward(&mut state, &[5, bad], &Serial).unwrap_err(),
        ModelError::BadTokenId(bad)
    );
    assert_eq!(state.pos, 0, "a refused call leaves the state untouched");
    m.forward(&mut state, &[5; 8], &Serial).unwrap();
    assert_eq!(
        m.forward(&mut state, &[5], &Serial).unwrap_err(),
        ModelError::ContextOverflow {
            needed: 9,
            context: 8
        }
    );
}

#[test]
fn wrong_architecture_and_missing_tensor_are_refused() {
    let mut w = model::gguf_write::GgufWriter::new();
    w.string("general.architecture", "mamba");
    let blob = w.finish();
    assert!(matches!(
        Model::load(&Gguf::parse(&blob).unwrap()),
        Err(ModelError::UnsupportedArchitecture)
    ));
    // A tiny llama with every tensor renamed away from one layer's q projection.
    let mut blob = generate(&TinySpec::llama(), 1);
    let needle = b"blk.1.attn_q.weight";
    let at = blob
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    blob[at + 6] = b'x';
    let g = Gguf::parse(&blob).unwrap();
    assert!(matches!(
        Model::load(&g),
        Err(ModelError::MissingTensor {
            role: "attn_q.weight",
            layer: Some(1)
        })
    ));
    let _ = Arch::Llama;

    // RoPE frequency factors (a `rope_freqs` tensor) outside the llama architecture are refused, naming what
    // they need, rather than run without them: a qwen2 file's `token_embd.weight` renamed to the same-length
    // `rope_freqs.weight`. (Llama 3's own are run: `tiny_llamacpp.rs` holds tiny-llama3 to llama.cpp.)
    let mut blob = generate(&TinySpec::qwen2(), 1);
    let needle = b"token_embd.weight";
    let at = blob
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    blob[at..at + needle.len()].copy_from_slice(b"rope_freqs.weight");
    let error = Model::load(&Gguf::parse(&blob).unwrap()).err().unwrap();
    assert!(matches!(error, ModelError::UnsupportedFeature(_)));
    assert!(
        error.to_string().contains("RoPE frequency factors"),
        "{error}"
    );
}
