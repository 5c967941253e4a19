//! The engine's side of the differential harness against llama.cpp (issue 15; run by scripts/differential.sh).
//!
//!   differential prompts MODEL.gguf DIR
//!       writes the prompt library for MODEL into DIR (one NNN-kind.txt per prompt)
//!   differential compare MODEL.gguf PROMPT.txt LLAMA.bin [--scalar | --kernels SET] [--threads N] [--chunk N]
//!       prints one JSON line: the prompt's ids against llama.cpp's, then, feeding llama.cpp's chosen token at
//!       each step (so every step compares like with like), the largest logit difference per step and the first
//!       step where the engine's greedy choice differs, with llama.cpp's top-2 margin there.
//!
//! `--chunk 32` prefills in 32-token chunks as the appliance serves a prompt; `--chunk 0` runs it as one batch.
//! `--scalar` forces the portable kernels (what the appliance runs under TCG), `--kernels portable|avx2|avx512` any
//! set the CPU can run, `--kernels avx512-novnni` the AVX-512 set as on a CPU without AVX512_VNNI
//! (`model::simd::withhold_vnni`); otherwise the CPU's best set. The model is loaded as `cloister generate` loads it: with the
//! AVX-512 VNNI kernels its Q4_1 and Q5_0 matrices are interleaved first (`model::interleave`; `"interleaved"` in
//! the JSON line).

mod prompts;

use std::process::ExitCode;

use model::gguf::Gguf;
use model::parallel::{ParallelFor, Serial, ThreadPool};
use model::tokenizer::Tokenizer;
use model::transformer::{Model, State};

/// Below this top-2 margin a differing greedy choice is a near-tie, the only tolerated divergence.
const NEAR_TIE: f32 = 0.05;

/// What llama.cpp's probe (scripts/differential/probe.c) wrote.
struct Reference {
    vocab: usize,
    prompt: Vec<u32>,
    /// Per step: the chosen id, the top-2 margin, the logits.
    steps: Vec<(u32, f32, Vec<f32>)>,
}

fn read_reference(bytes: &[u8]) -> Result<Reference, String> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let piece = bytes
            .get(at..at + n)
            .ok_or("the llama.cpp output is truncated")?;
        at += n;
        Ok(piece)
    };
    if take(4)? != b"CLDF" {
        return Err("not a probe output (no CLDF magic)".into());
    }
    let mut header = [0u32; 4];
    for word in &mut header {
        *word = u32::from_le_bytes(take(4)?.try_into().unwrap());
    }
    let [version, vocab, prompt_len, steps] = header.map(|word| word as usize);
    if version != 1 {
        return Err(format!("probe output version {version}, expected 1"));
    }
    let prompt = take(4 * prompt_len)?
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let mut out = Vec::with_capacity(steps);
    for _ in 0..steps {
        let head = take(8)?;
        let id = u32::from_le_bytes(head[..4].try_into().unwrap());
        let margin = f32::from_le_bytes(head[4..].try_into().unwrap());
        let logits = take(4 * vocab)?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        out.push((id, margin, logits));
    }
    Ok(Reference {
        vocab,
        prompt,
        steps: out,
    })
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn compare(args: &[String]) -> Result<(), String> {
    let [model_path, prompt_path, reference_path, options @ ..] = args else {
        return Err("usage: differential compare MODEL.gguf PROMPT.txt LLAMA.bin [--scalar | --kernels SET] [--threads N] [--chunk N]".into());
    };
    let (mut scalar, mut threads, mut chunk) = (false, 1usize, 0usize);
    let (mut kernels, mut novnni) = (None, false);
    let mut options = options.iter();
    while let Some(option) = options.next() {
        let mut value = || -> Result<usize, String> {
            options
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{option} needs a number"))
        };
        match option.as_str() {
            "--scalar" => scalar = true,
            "--kernels" => {
                kernels = Some(match options.next().map(String::as_str) {
                    Some("portable") => model::simd::Level::Scalar,
                    Some("avx2") => model::simd::Level::Avx2,
                    Some("avx512") => model::simd::Level::Avx512,
                    Some("avx512-novnni") => {
                        novnni = true;
                        model::simd::Level::Avx512
                    }
                    _ => {
                        return Err("--kernels needs portable, avx2, avx512 or avx512-novnni".into())
                    }
                })
            }
            "--threads" => threads = value()?,
            "--chunk" => chunk = value()?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    model::simd::force_scalar(scalar);
    model::simd::withhold_vnni(novnni);
    if let Some(level) = kernels {
        model::simd::force(Some(level));
        if model::simd::level() != level {
            return Err(format!("this CPU cannot run the {level:?} kernels"));
        }
        scalar = level == model::simd::Level::Scalar;
    }
    let mut blob = std::fs::read(model_path).map_err(|e| format!("{model_path}: {e}"))?;
    // As `cloister generate` loads a model: Q4_1 and Q5_0 matrices interleaved where the kernel set reads them so.
    let interleaved = model::simd::interleaved_kernels();
    if interleaved {
        model::interleave::interleave(&mut blob).map_err(|e| format!("{model_path}: {e}"))?;
    }
    let gguf = Gguf::parse(&blob).map_err(|e| format!("{model_path}: {e}"))?;
    let model = Model::load(&gguf).map_err(|e| format!("{model_path}: {e}"))?;
    let tokenizer = Tokenizer::from_gguf(&gguf).map_err(|e| format!("{model_path}: {e}"))?;
    let text = std::fs::read_to_string(prompt_path).map_err(|e| format!("{prompt_path}: {e}"))?;
    let reference = read_reference(
        &std::fs::read(reference_path).map_err(|e| format!("{reference_path}: {e}"))?,
    )?;
    if reference.vocab != model.config.vocab_size {
        return Err(format!(
            "llama.cpp reports {} logits, the engine {}",
            reference.vocab, model.config.vocab_size
        ));
    }
    let mut ours = Vec::new();
    tokenizer.encode(&text, true, true, &mut ours);
    let first_id_difference = ours
        .iter()
        .zip(&reference.prompt)
        .position(|(a, b)| a != b)
        .or((ours.len() != reference.prompt.len()).then(|| ours.len().min(reference.prompt.len())));

    // From here on the engine runs llama.cpp's ids, so a tokenizer difference does not hide a kernel one.
    let pool;
    let par: &dyn ParallelFor = if threads > 1 {
        pool = ThreadPool::new(threads).map_err(|e| e.to_string())?;
        &pool
    } else {
        &Serial
    };
    let prompt = &reference.prompt;
    let batch = if chunk == 0 { prompt.len() } else { chunk };
    let mut state = State::new(
        &model.config,
        prompt.len() + reference.steps.len() + 1,
        batch,
    );
    // As the appliance's sessions prefill (model::session): the whole prompt is one llama.cpp batch, fed in chunks.
    state.declare_batch(prompt.len());
    for piece in prompt.chunks(batch) {
        model
            .forward(&mut state, piece, par)
            .map_err(|e| e.to_string())?;
    }
    let mut largest = Vec::with_capacity(reference.steps.len());
    let mut first_divergence = None;
    for (step, (chosen, margin, logits)) in reference.steps.iter().enumerate() {
        let difference = state
            .logits
            .iter()
            .zip(logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        largest.push(difference);
        let mine = argmax(&state.logits);
        if first_divergence.is_none() && mine != *chosen {
            first_divergence = Some((step, mine, *chosen, *margin));
        }
        model
            .forward(&mut state, &[*chosen], par)
            .map_err(|e| e.to_string())?;
    }
    let divergence = match first_divergence {
        None => serde_json::Value::Null,
        Some((step, ours, theirs, margin)) => serde_json::json!({
            "step": step, "engine": ours, "llama_cpp": theirs, "margin": margin,
            "near_tie": margin < NEAR_TIE,
        }),
    };
    let line = serde_json::json!({
        "prompt": std::path::Path::new(prompt_path).file_stem().map(|s| s.to_string_lossy()),
        "prompt_tokens": prompt.len(),
        "steps": reference.steps.len(),
        "kernels": if scalar {
            "portable".to_owned()
        } else if novnni {
            "avx512-novnni".to_owned()
        } else {
            format!("{:?}", model::simd::level()).to_lowercase()
        },
        "interleaved": interleaved,
        "threads": threads,
        "chunk": chunk,
        "ids_equal": first_id_difference.is_none(),
        "first_id_difference": first_id_difference,
        "engine_prompt_tokens": ours.len(),
        "divergence": divergence,
        "max_logit_difference": largest.iter().copied().fold(0f32, f32::max),
        "max_logit_difference_per_step": largest,
    });
    println!("{line}");
    Ok(())
}

fn write_prompts(args: &[String]) -> Result<(), String> {
    let [model_path, dir] = args else {
        return Err("usage: differential prompts MODEL.gguf DIR".into());
    };
    let blob = std::fs::read(model_path).map_err(|e| format!("{model_path}: {e}"))?;
    let gguf = Gguf::parse(&blob).map_err(|e| format!("{model_path}: {e}"))?;
    let model = Model::load(&gguf).map_err(|e| format!("{model_path}: {e}"))?;
    let tokenizer = Tokenizer::from_gguf(&gguf).map_err(|e| format!("{model_path}: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
    let library = prompts::library(model.config.arch, &tokenizer);
    for prompt in &library {
        let path = std::path::Path::new(dir).join(format!("{}.txt", prompt.name));
        std::fs::write(&path, &prompt.text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    eprintln!("{} prompts in {dir}", library.len());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("prompts") => write_prompts(&args[1..]),
        Some("compare") => compare(&args[1..]),
        _ => Err("usage: differential prompts MODEL.gguf DIR | differential compare MODEL.gguf PROMPT.txt LLAMA.bin [--scalar | --kernels SET] [--threads N] [--chunk N]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("differential: {error}");
            ExitCode::FAILURE
        }
    }
}
