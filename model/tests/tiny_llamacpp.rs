//! The generated tiny models of every architecture the engine runs (llama, llama with Llama 3's vocabulary and RoPE
//! frequency factors, gemma3, qwen2, qwen3), held to llama.cpp
//! (issue 16): `fixtures/tiny_llamacpp/<arch>.json` holds llama.cpp's prompt ids, 16 greedy steps with their top-2
//! margins and step 0's full logits, written by `scripts/differential/tiny-fixtures.sh` with the pinned llama.cpp
//! build. Each case must tokenize to the same ids, give step-0 logits within 1e-3 of llama.cpp's, and choose the
//! same greedy tokens up to the first step where llama.cpp's own top-2 margin is below 0.05 (a near-tie, where the
//! summation order may decide). The portable kernels are held to `fixtures/tiny_llamacpp_sse42/`, the same answers
//! from llama.cpp built for SSE4.2 without AVX, whose orders they mirror.
//!
//! The fixtures are produced by llama.cpp on one machine; a tiny model's logits are small and move between CPU
//! kinds far less than the bound (`tiny-fixtures.sh` says more).

use model::gguf::Gguf;
use model::parallel::Serial;
use model::simd::Level;
use model::tiny::{generate, TinySpec};
use model::tokenizer::Tokenizer;
use model::transformer::{Model, State};
use serde_json::Value;
use support::Kernels;

mod support;

/// The seed `cloister` generates its tiny models with (runner's `TINY_SEED`); the fixtures are of those files.
const SEED: u64 = 1;
const NEAR_TIE: f64 = 0.05;
const STEP0_TOLERANCE: f32 = 1e-3;
/// For a kernel set that equals its build bit for bit: the fixture's six decimals (5e-7) and f32's spacing near the
/// tiny models' logits.
const EXACT_TOLERANCE: f32 = 2e-6;

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// Holds `arch`'s tiny model, run with `kernels` (the CPU's best set for `None`), to the fixture in
/// `fixtures/<dir>/`. A fixture of the AVX-512 level is skipped on a CPU without AVX-512.
fn hold_to_llama_cpp(arch: &str, spec: TinySpec, kernels: Option<Level>, dir: &str) {
    let _kernels = Kernels::force(kernels);
    if kernels == Some(Level::Avx512) && model::simd::level() != Level::Avx512 {
        eprintln!("{arch}: this CPU has no AVX-512; the AVX-512 fixture is not checked");
        return;
    }
    let path = format!(
        "{}/tests/fixtures/{dir}/{arch}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // The portable kernels compute what the SSE4.2 build computes, bit for bit: every greedy step must match, near-ties
    // included, and the logits differ only by the fixture's rounding.
    let exact = kernels == Some(Level::Scalar) && dir == "tiny_llamacpp_sse42";
    let blob = generate(&spec, SEED);
    let gguf = Gguf::parse(&blob).unwrap();
    let model = Model::load(&gguf).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    for (index, case) in fixture["cases"].as_array().unwrap().iter().enumerate() {
        let label = format!(
            "{arch} case {index} ({:?} kernels, {dir})",
            model::simd::level()
        );
        let mut prompt = Vec::new();
        tokenizer.encode(case["prompt"].as_str().unwrap(), true, true, &mut prompt);
        assert_eq!(prompt, ids(&case["prompt_ids"]), "{label}: prompt ids");

        let generated = ids(&case["generated_ids"]);
        // One batch for the whole prompt, as the probe evaluates it (`n_ubatch` = the prompt's length): a batch
        // split in two would take the K-quants' single-token order where llama.cpp takes its tiled one (8+ tokens).
        let mut state = State::new(
            &model.config,
            prompt.len() + generated.len() + 1,
            prompt.len(),
        );
        model.forward(&mut state, &prompt, &Serial).unwrap();
        let step0: Vec<f32> = case["step0_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(step0.len(), state.logits.len(), "{label}: vocabulary size");
        let worst = state
            .logits
            .iter()
            .zip(&step0)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("{label}: step-0 logits within {worst} of llama.cpp's");
        let tolerance = if exact {
            EXACT_TOLERANCE
        } else {
            STEP0_TOLERANCE
        };
        assert!(
            worst <= tolerance,
            "{label}: step-0 logits differ by up to {worst}"
        );

        let margins = case["step_top2_margin"].as_array().unwrap();
        for (step, &want) in generated.iter().enumerate() {
            if !exact && margins[step].as_f64().unwrap() < NEAR_TIE {
                break;
            }
            assert_eq!(
                argmax(&state.logits),
                want,
                "{label}: greedy token at step {step}"
            );
            model.forward(&mut state, &[want], &Serial).unwrap();
        }
    }
}

#[test]
fn tiny_models_of_every_architecture_equal_llama_cpp() {
    for (arch, spec) in [
        ("llama", TinySpec::llama()),
        ("llama3", TinySpec::llama3()),
        ("gemma3", TinySpec::gemma3()),
        ("qwen2", TinySpec::qwen2()),
        ("qwen3", TinySpec::qwen3()),
    ] {
        hold_to_llama_cpp(arch, spec, None, "tiny_llamacpp");
    }
}

/// The portable kernels (what the appliance runs under TCG) held to llama.cpp built for SSE4.2 without AVX, the
/// build whose orders they mirror (`model::sse`; fixtures in `tiny_llamacpp_sse42/`, `tiny-fixtures.sh`): its
/// generic quantized products, SSE softmax and f16 dots, no tinyBLAS, no repacking.
#[test]
fn tiny_models_on_the_portable_kernels_equal_llama_cpp() {
    for (arch, spec) in [
        ("llama", TinySpec::llama()),
        ("llama3", TinySpec::llama3()),
        ("gemma3", TinySpec::gemma3()),
        ("qwen2", TinySpec::qwen2()),
        ("qwen3", TinySpec::qwen3()),
    ] {
        hold_to_llama_cpp(arch, spec, Some(Level::Scalar), "tiny_llamacpp_sse42");
    }
}

/// The tiny llama models whose attention and feed-forward matrices all have one of the tensor types Q5_K, Q5_1, BF16,
/// Q3_K, Q2_K and Q4_0 (`TinySpec::llama_typed`; fixtures `llama-<type>.json`), on each kernel set, each held to the
/// llama.cpp build whose arithmetic it mirrors: the AVX-512 level to llama.cpp's default build on an AVX-512 CPU
/// (`tiny_llamacpp_avx512/`: Q2_K and Q4_0 repacked, BF16 through AVX512-BF16), the AVX2 kernels to llama.cpp as it
/// runs on an AVX2 CPU (`tiny_llamacpp/`: Q2_K without its AVX-512-only repacking, Q4_0 repacked as on any AVX2
/// CPU), the portable kernels to llama.cpp built for SSE4.2 without AVX (`tiny_llamacpp_sse42/`: every type through
/// its generic `ggml_vec_dot_*`, Q4_0 through its SSSE3 one, BF16 through its scalar loop, nothing repacked or
/// tiled; `tiny-fixtures.sh`).
#[test]
fn tiny_models_of_every_new_tensor_type_equal_llama_cpp() {
    use model::quant::GgmlType;
    for t in [
        GgmlType::Q5K,
        GgmlType::Q5_1,
        GgmlType::BF16,
        GgmlType::Q3K,
        GgmlType::Q2K,
        GgmlType::Q4_0,
    ] {
        let name = format!("llama-{}", t.name().to_lowercase());
        for (kernels, dir) in [
            (Level::Avx512, "tiny_llamacpp_avx512"),
            (Level::Avx2, "tiny_llamacpp"),
            (Level::Scalar, "tiny_llamacpp_sse42"),
        ] {
            hold_to_llama_cpp(&name, TinySpec::llama_typed(t), Some(kernels), dir);
        }
    }
}
