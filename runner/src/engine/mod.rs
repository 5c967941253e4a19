//! Host-native `cloister generate` and `cloister bench`: the `model` crate's engine on a GGUF file, with a std thread
//! pool, streaming detokenised text or printing JSON, and measuring prefill/decode throughput.
//!
//! Prompt handling follows issue 4: raw prompts are tokenized with special tokens parsed and BOS as the vocabulary
//! says; `--chat` wraps the prompt in the model family's turn format (`model::chat`: ChatML with SmolLM2's default
//! system prompt for llama, Gemma's `<start_of_turn>` format for gemma3). Generation runs through
//! `model::session` with the appliance's prefill chunk, the code path the appliance serves with, so
//! `generate --json` and the appliance give the same ids for the same request.

mod blob;

use std::io::Write;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use model::chat::{Message, Role};
use model::gguf::Gguf;
use model::parallel::ThreadPool;
use model::sampler::SamplerConfig;
use model::session::{Engine, Event, Session, SessionConfig, StartError};
use model::tokenizer::Tokenizer;
use model::transformer::{Model, State};
use net::serving::PREFILL_CHUNK;

use crate::json_output::BenchResult;

/// Largest prompt chunk run as one batch (llama.cpp's default `n_batch`).
const MAX_BATCH: usize = 512;

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// A .gguf path or a model name: smollm2, gemma3, tiny-llama, tiny-llama3, tiny-gemma3, tiny-qwen2, tiny-qwen3.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Worker threads.
    #[arg(long, default_value_t = default_threads())]
    pub threads: usize,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Seed of the sampler's random generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Wrap PROMPT in the model's chat format.
    #[arg(long)]
    pub chat: bool,
    /// Print one JSON object (prompt_ids, generated_ids, text, finish, prefill_tok_s, decode_tok_s, kv_cache_bytes)
    /// instead of text.
    #[arg(long)]
    pub json: bool,
    /// Use the engine's portable (scalar) kernels instead of the CPU's best set (AVX2 or AVX-512), as the appliance
    /// does under QEMU's TCG (whose CPU cloister gives no AVX). Each set sums in the order llama.cpp does when built
    /// for that CPU, so the two can differ in the last bits of a logit, and now and then in a near-tied token.
    #[arg(long)]
    pub portable_kernels: bool,
    /// The prompt (raw text with special tokens parsed, unless --chat).
    pub prompt: String,
}

/// What one `generate` produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// The prompt as the engine tokenized it.
    pub prompt_ids: Vec<u32>,
    /// The generated ids, in order (an end-of-text id is the last one when generation ended on it).
    pub generated_ids: Vec<u32>,
    /// The generated text.
    pub text: String,
    /// Why generation ended.
    pub finish: model::session::FinishReason,
    /// Prompt tokens per second (time until the first token).
    pub prefill_tok_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tok_s: f64,
    /// Bytes of the session's KV cache (sized for the prompt plus `--max-tokens`).
    pub kv_cache_bytes: usize,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// A .gguf path or a model name: smollm2, gemma3, tiny-llama, tiny-llama3, tiny-gemma3, tiny-qwen2, tiny-qwen3.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Worker threads.
    #[arg(long, default_value_t = default_threads())]
    pub threads: usize,
    /// Timed runs of each phase, after one warm-up run; the rates printed are their medians (as `llama-bench -r`).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub runs: u16,
    /// Print the result as one JSON object on one line (model, threads, kernels, layout, prefill_tokens,
    /// decode_tokens, runs, prefill_tok_s, decode_tok_s).
    #[arg(long)]
    pub json: bool,
}

struct Loaded {
    blob: blob::Blob,
    /// Whether Q4_1/Q5_0 matrices were rearranged into the interleaved layout (`model::interleave`).
    interleaved: bool,
}

pub use crate::models::TINY_SEED;

impl Loaded {
    fn open(name: &str) -> Result<Loaded> {
        let path = crate::models::resolve(name)?;
        let mut blob = blob::Blob::read(&path)
            .with_context(|| format!("reading model file {}", path.display()))?;
        // Where the kernels read it faster (AVX-512 with VNNI), the Q4_1 and Q5_0 matrices are rearranged in memory
        // into the interleaved layout; every product stays bit for bit what the file's layout gives
        // (`model::interleave`). A blob that does not parse is left as it is, for `load` to report.
        let mut interleaved = false;
        if model::simd::interleaved_kernels() {
            interleaved =
                model::interleave::interleave(&mut blob).is_ok_and(|done| done.tensors > 0);
        }
        Ok(Loaded { blob, interleaved })
    }
}

fn load(blob: &[u8]) -> Result<(Model<'_>, Tokenizer<'_>)> {
    let gguf =
        Gguf::parse(blob).map_err(|e| anyhow!("the model file is not a usable GGUF: {e}"))?;
    let model = Model::load(&gguf).map_err(|e| anyhow!("cannot run this model: {e}"))?;
    let tok =
        Tokenizer::from_gguf(&gguf).map_err(|e| anyhow!("cannot build the tokenizer: {e}"))?;
    Ok((model, tok))
}

/// The line `cloister generate --json` prints, fields in this order; rates rounded to two decimals.
#[derive(serde::Serialize)]
struct GeneratedJson<'a> {
    prompt_ids: &'a [u32],
    generated_ids: &'a [u32],
    text: &'a str,
    finish: String,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    kv_cache_bytes: usize,
}

impl Generated {
    /// What `cloister generate --json` prints: one JSON object on one line.
    pub fn to_json(&self) -> String {
        let two_decimals = |rate: f64| (rate * 100.0).round() / 100.0;
        let line = GeneratedJson {
            prompt_ids: &self.prompt_ids,
            generated_ids: &self.generated_ids,
            text: &self.text,
            finish: finish_name(self.finish).into(),
            prefill_tok_s: two_decimals(self.prefill_tok_s),
            decode_tok_s: two_decimals(self.decode_tok_s),
            kv_cache_bytes: self.kv_cache_bytes,
        };
        // Plain numbers, strings and lists: serialising cannot fail.
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// `cloister generate`: runs [`run_generation`], streaming text to stdout, or printing JSON at the end.
pub fn generate(args: GenerateArgs) -> Result<()> {
    let stdout = std::io::stdout();
    let mut print = |text: &str| -> Result<()> {
        if !args.json {
            let mut lock = stdout.lock();
            write!(lock, "{text}")?;
            lock.flush()?;
        }
        Ok(())
    };
    let out = run_generation(&args, &mut print)?;
    if args.json {
        println!("{}", out.to_json());
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens, {:.1} tok/s prefill; {} generated ({}), {:.1} tok/s decode; {} threads]",
            out.prompt_ids.len(),
            out.prefill_tok_s,
            out.generated_ids.len(),
            finish_words(out.finish),
            out.decode_tok_s,
            args.threads
        );
    }
    Ok(())
}

/// Why a generation ended, for `--json`: the names `chat --json` uses (`length`, `end_of_text`, `stop`).
fn finish_name(finish: model::session::FinishReason) -> &'static str {
    match finish {
        model::session::FinishReason::Length => "length",
        model::session::FinishReason::EndOfText => "end_of_text",
        model::session::FinishReason::Stop => "stop",
    }
}

/// Why a generation ended, for the human-readable summary.
fn finish_words(finish: model::session::FinishReason) -> &'static str {
    match finish {
        model::session::FinishReason::Length => "reached --max-tokens",
        model::session::FinishReason::EndOfText => "end of text",
        model::session::FinishReason::Stop => "stop string",
    }
}

/// The engine on the host exactly as `cloister generate` runs it; `on_text` gets each token's text as it comes.
pub fn run_generation(
    args: &GenerateArgs,
    on_text: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<Generated> {
    if args.portable_kernels {
        model::simd::force_scalar(true);
    }
    let loaded = Loaded::open(&args.model)?;
    let gguf = Gguf::parse(&loaded.blob)
        .map_err(|e| anyhow!("the model file is not a usable GGUF: {e}"))?;
    let engine = Engine::load(&gguf).map_err(|e| anyhow!("{e}"))?;
    let pool = ThreadPool::new(args.threads).context("starting worker threads")?;
    // The same path as the appliance: prompt ids from the engine, then a session in prefill chunks of the serving
    // size and decode steps, so both produce the same ids for the same request.
    let mut prompt = Vec::new();
    if args.chat {
        let turn = [Message {
            role: Role::User,
            content: &args.prompt,
        }];
        engine
            .encode_chat(&turn, &mut prompt)
            .map_err(|e| anyhow!("{e}"))?;
    } else {
        engine.encode_text(&args.prompt, &mut prompt);
    }
    let needed = prompt.len().saturating_add(args.max_tokens);
    let config = SessionConfig {
        context: needed.min(engine.model.config.context_length),
        prefill_chunk: PREFILL_CHUNK as usize,
    };
    let mut session = Session::new(&engine, config);
    let sampling = SamplerConfig {
        temperature: args.temperature,
        seed: args.seed,
        ..SamplerConfig::default()
    };
    session
        .start(&engine, &prompt, args.max_tokens, sampling, &[] as &[&str])
        .map_err(|e| match e {
            StartError::EmptyPrompt => anyhow!("the prompt tokenizes to nothing; give some text"),
            StartError::ContextExceeded { needed, context } => anyhow!(
                "prompt ({} tokens) plus --max-tokens {} needs {needed} positions; the model's context is {context}",
                prompt.len(),
                args.max_tokens
            ),
            StartError::BadSampling => {
                anyhow!("--temperature must be a finite number, 0 or more")
            }
            other => anyhow!("cannot start generating: {other}"),
        })?;

    let kv_cache_bytes = session.kv_cache_bytes();
    let mut generated = Vec::new();
    let mut text_out = String::new();
    let started = Instant::now();
    let mut first_token = None;
    let finish = loop {
        let event = session
            .step(&engine, &pool)
            .map_err(|e| anyhow!("generation failed: {e}"))?;
        match event {
            Event::Pending => {}
            Event::Token { id, text } => {
                // The prefill ends with the first token (its step runs the prompt's last chunk).
                first_token.get_or_insert_with(Instant::now);
                generated.push(id);
                text_out.push_str(&text);
                on_text(&text)?;
            }
            Event::Done(finish) => break finish,
        }
    };
    let ended = Instant::now();
    let first_token = first_token.unwrap_or(ended);
    let prefill_s = (first_token - started).as_secs_f64();
    let decode_s = (ended - first_token).as_secs_f64();
    Ok(Generated {
        prefill_tok_s: prompt.len() as f64 / prefill_s.max(1e-9),
        // The first token came with the prefill; the decode rate counts the steps after it.
        decode_tok_s: generated.len().saturating_sub(1) as f64 / decode_s.max(1e-9),
        prompt_ids: prompt,
        generated_ids: generated,
        text: text_out,
        finish: finish.reason,
        kv_cache_bytes,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn bench(args: BenchArgs) -> Result<()> {
    const PREFILL: usize = 128;
    const DECODE: usize = 128;
    let runs = usize::from(args.runs);
    let loaded = Loaded::open(&args.model)?;
    let (model, tok) = load(&loaded.blob)?;
    let pool = ThreadPool::new(args.threads).context("starting worker threads")?;
    // A fixed, ordinary prompt of exactly PREFILL tokens.
    let mut prompt = Vec::new();
    while prompt.len() < PREFILL {
        tok.encode(
            "The quick brown fox jumps over the lazy dog while the sea rolls on. ",
            true,
            false,
            &mut prompt,
        );
    }
    prompt.truncate(PREFILL);
    let mut state = State::new(&model.config, PREFILL + DECODE, MAX_BATCH);
    let prefill_once = |state: &mut State| -> Result<f64> {
        state.reset();
        let started = Instant::now();
        model
            .forward(state, &prompt, &pool)
            .map_err(|e| anyhow!("prefill failed: {e}"))?;
        Ok(PREFILL as f64 / started.elapsed().as_secs_f64())
    };
    let decode_after_prefill = |state: &mut State| -> Result<f64> {
        prefill_once(state)?;
        let started = Instant::now();
        for _ in 0..DECODE {
            let next = model::sampler::argmax(&state.logits);
            model
                .forward(state, &[next], &pool)
                .map_err(|e| anyhow!("decode failed: {e}"))?;
        }
        Ok(DECODE as f64 / started.elapsed().as_secs_f64())
    };
    // As llama-bench runs its tests: one warm-up run (first touches of the state's buffers, the workers' first
    // wake-ups), then each phase's runs back to back. Decode starts after the 128-token prompt, a longer context
    // than llama-bench's tg128 (which starts empty), so its attention does more work than llama.cpp's there.
    decode_after_prefill(&mut state)?;
    let mut prefill = (0..runs)
        .map(|_| prefill_once(&mut state))
        .collect::<Result<Vec<f64>>>()?;
    let mut decode = (0..runs)
        .map(|_| decode_after_prefill(&mut state))
        .collect::<Result<Vec<f64>>>()?;
    let result = BenchResult {
        model: args.model.clone(),
        threads: args.threads,
        kernels: match model::simd::level() {
            model::simd::Level::Avx512 => "avx512",
            model::simd::Level::Avx2 => "avx2",
            model::simd::Level::Scalar => "scalar",
        },
        layout: if loaded.interleaved {
            "interleaved"
        } else {
            "file"
        },
        prefill_tokens: PREFILL,
        decode_tokens: DECODE,
        runs,
        prefill_tok_s: median(&mut prefill),
        decode_tok_s: median(&mut decode),
    };
    if args.json {
        println!("{}", result.to_json_line());
    } else {
        println!("{result}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_json_is_one_object_with_its_fields_in_order() {
        let generated = Generated {
            prompt_ids: vec![1, 2],
            generated_ids: vec![3],
            text: "a \"quoted\"\nline\u{1}".to_string(),
            finish: model::session::FinishReason::Length,
            prefill_tok_s: 12.346,
            decode_tok_s: 3.0,
            kv_cache_bytes: 4096,
        };
        assert_eq!(
            generated.to_json(),
            r#"{"prompt_ids":[1,2],"generated_ids":[3],"text":"a \"quoted\"\nline\u0001","finish":"length","prefill_tok_s":12.35,"decode_tok_s":3.0,"kv_cache_bytes":4096}"#
        );
    }
}
