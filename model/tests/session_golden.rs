//! Generation sessions on the real SmolLM2 against llama.cpp's greedy ids (the fixtures `golden.rs` checks the
//! engine with): with the serving prefill chunk of 32 the session produces the same ids up to the first end-of-text
//! token, where it stops; and a prompt of several chunks gives the same ids whatever the chunk size.
//!
//! The shared reference's ids are those of llama.cpp's AVX2 path, so the engine is forced to its AVX2 kernels for
//! them; where the CPU has AVX-512, the AVX-512 kernels are also held to llama.cpp's AVX-512 build
//! (`fixtures/local_llamacpp_avx512/`, which leaves the shared path at step 13 of the chat prompt; see `golden.rs`).
//!
//! Models come from `$CLOISTER_MODEL_DIR` or `<workspace>/.cache/models/`. Use `--release` for speed.

use model::gguf::Gguf;
use model::parallel::Serial;
use model::sampler::SamplerConfig;
use model::session::{Engine, Event, FinishReason, Session, SessionConfig};
use model::simd::Level;
use serde_json::Value;
use support::Kernels;

mod support;

/// The appliance's prefill chunk (`net::serving::PREFILL_CHUNK`).
const SERVING_CHUNK: usize = 32;

fn model_bytes(file: &str) -> Vec<u8> {
    let dir = std::env::var_os("CLOISTER_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/models")
        });
    let path = dir.join(file);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}. Fetch it first: `cargo run -p runner -- generate --model smollm2 hi`",
            path.display()
        )
    })
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn greedy() -> SamplerConfig {
    SamplerConfig {
        temperature: 0.0,
        ..SamplerConfig::default()
    }
}

/// Runs a greedy generation to its end: (ids, text, reason).
fn generate(
    engine: &Engine<'_>,
    chunk: usize,
    prompt: &[u32],
    max_tokens: usize,
) -> (Vec<u32>, String, FinishReason) {
    let config = SessionConfig {
        context: 512,
        prefill_chunk: chunk,
    };
    let mut session = Session::new(engine, config);
    session
        .start(engine, prompt, max_tokens, greedy(), &[] as &[&str])
        .unwrap();
    let (mut out, mut text) = (Vec::new(), String::new());
    loop {
        match session.step(engine, &Serial).unwrap() {
            Event::Pending => {}
            Event::Token { id, text: piece } => {
                out.push(id);
                text.push_str(&piece);
            }
            Event::Done(finish) => {
                assert_eq!(finish.generated_tokens, out.len());
                assert_eq!(finish.prompt_tokens, prompt.len());
                return (out, text, finish.reason);
            }
        }
    }
}

#[test]
fn smollm2_session_ids_equal_llamacpp() {
    let blob = model_bytes("smollm2-135m-instruct-q4_1.gguf");
    let gguf = Gguf::parse(&blob).unwrap();
    let engine = Engine::load(&gguf).unwrap();
    for (kernels, dir) in [(Level::Avx2, ""), (Level::Avx512, "local_llamacpp_avx512/")] {
        let _kernels = Kernels::force(Some(kernels));
        if kernels == Level::Avx512 && model::simd::level() != Level::Avx512 {
            eprintln!("this CPU has no AVX-512; the AVX-512 fixtures are not checked");
            continue;
        }
        hold_sessions_to(&engine, dir);
    }
}

/// Generates each SmolLM2 reference prompt in a session and compares with the fixtures in `dir`.
fn hold_sessions_to(engine: &Engine<'_>, dir: &str) {
    for name in ["smol_raw_france", "smol_chat_sea"] {
        let shared = fixture(name);
        let reference = fixture(&format!("{dir}{name}"));
        let mut prompt = Vec::new();
        engine.encode_text(shared["prompt_text"].as_str().unwrap(), &mut prompt);
        assert_eq!(prompt, ids(&reference["prompt_ids"]), "{name}: prompt ids");
        let want = ids(&reference["generated_ids"]);
        let (got, text, reason) = generate(engine, SERVING_CHUNK, &prompt, want.len());
        // The session stops at the first end-of-text token (llama.cpp's probe ran on past it).
        let end = want
            .iter()
            .position(|id| engine.end_of_text().contains(id))
            .map_or(want.len(), |at| at + 1);
        assert_eq!(got, want[..end], "{dir}{name}");
        let expected = if end < want.len() {
            FinishReason::EndOfText
        } else {
            FinishReason::Length
        };
        assert_eq!(reason, expected, "{name}");
        if let Some(want_text) = reference["generated_text"].as_str() {
            assert!(want_text.starts_with(&text), "{name}: {text:?}");
        }
        eprintln!("{name}: {} ids identical, {reason:?}: {text:?}", got.len());
    }
}

#[test]
fn smollm2_chunk_size_does_not_change_the_ids() {
    let _kernels = Kernels::force(None);
    let blob = model_bytes("smollm2-135m-instruct-q4_1.gguf");
    let gguf = Gguf::parse(&blob).unwrap();
    let engine = Engine::load(&gguf).unwrap();
    let mut prompt = Vec::new();
    engine.encode_text(
        "The lighthouse keeper wrote in his log every night. He noted the wind, the waves, the ships that passed \
         and the birds that rested on the rail. One winter the log filled up, and he began a second book, in which \
         he wrote not about the weather but about the people of the village below: the baker who rose at three, the \
         schoolteacher who walked the cliff path in every season, and the two brothers who had not spoken for twenty \
         years. By spring the second book was fuller than the first, and the keeper understood that",
        &mut prompt,
    );
    assert!(prompt.len() > 2 * SERVING_CHUNK, "{} tokens", prompt.len());
    let (want, _, _) = generate(&engine, 512, &prompt, 16);
    for chunk in [SERVING_CHUNK, 7] {
        let (got, _, _) = generate(&engine, chunk, &prompt, 16);
        assert_eq!(got, want, "chunk {chunk}");
    }
}
