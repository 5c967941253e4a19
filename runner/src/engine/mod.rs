//! Host-native `runner generate` and `runner bench`: the `model` crate's engine on a GGUF file, with a std thread
//! pool, streaming detokenised text or printing JSON, and measuring prefill/decode throughput.
//!
//! Prompt handling follows issue 4: raw prompts are tokenized with special tokens parsed and BOS as the vocabulary
//! says; `--chat` wraps the prompt in the model family's turn format (ChatML with SmolLM2's default system prompt
//! for llama, Gemma's `<start_of_turn>` format for gemma3).

use std::io::Write;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use model::gguf::Gguf;
use model::parallel::ThreadPool;
use model::sampler::{Sampler, SamplerConfig};
use model::tokenizer::{Tokenizer, Utf8Stream};
use model::transformer::{Arch, Model, State};

/// Largest prompt chunk run as one batch (llama.cpp's default `n_batch`).
const MAX_BATCH: usize = 512;

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// A .gguf path or a model name: smollm2, gemma3, tiny-llama, tiny-gemma3.
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
    /// Print one JSON object (prompt_ids, generated_ids, text, prefill_tok_s, decode_tok_s) instead of text.
    #[arg(long)]
    pub json: bool,
    /// The prompt (raw text with special tokens parsed, unless --chat).
    pub prompt: String,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// A .gguf path or a model name: smollm2, gemma3, tiny-llama, tiny-gemma3.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Worker threads.
    #[arg(long, default_value_t = default_threads())]
    pub threads: usize,
}

struct Loaded {
    blob: Vec<u8>,
}

/// Seed of the tiny models the engine generates for `tiny-llama` and `tiny-gemma3`.
pub const TINY_SEED: u64 = 1;

/// Writes the generated tiny model `name` into the model cache if it is not there yet.
fn ensure_generated(name: &str) -> Result<()> {
    let (spec, file) = match name {
        "tiny-llama" => (model::tiny::TinySpec::llama(), "tiny-llama.gguf"),
        "tiny-gemma3" => (model::tiny::TinySpec::gemma3(), "tiny-gemma3.gguf"),
        _ => return Ok(()),
    };
    let dir = crate::models::models_dir(&crate::workspace::cache_dir());
    let path = dir.join(file);
    if path.is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!("{file}.tmp"));
    std::fs::write(&tmp, model::tiny::generate(&spec, TINY_SEED))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("moving the tiny model to {}", path.display()))?;
    eprintln!("generated {name} (seed {TINY_SEED}) at {}", path.display());
    Ok(())
}

impl Loaded {
    fn open(name: &str) -> Result<Loaded> {
        ensure_generated(name)?;
        let path = crate::models::resolve(name)?;
        let blob = std::fs::read(&path)
            .with_context(|| format!("reading model file {}", path.display()))?;
        Ok(Loaded { blob })
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

/// The chat turn format of each family.
fn chat_prompt(arch: Arch, user: &str) -> String {
    match arch {
        Arch::Llama => format!(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        ),
        Arch::Gemma3 => format!("<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n"),
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_ids(ids: &[u32]) -> String {
    let parts: Vec<String> = ids.iter().map(u32::to_string).collect();
    format!("[{}]", parts.join(","))
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let loaded = Loaded::open(&args.model)?;
    let (model, tok) = load(&loaded.blob)?;
    let pool = ThreadPool::new(args.threads).context("starting worker threads")?;
    let text = if args.chat {
        chat_prompt(model.config.arch, &args.prompt)
    } else {
        args.prompt.clone()
    };
    let mut prompt = Vec::new();
    tok.encode(&text, true, true, &mut prompt);
    if prompt.is_empty() {
        bail!("the prompt tokenizes to nothing; give some text");
    }
    let needed = prompt.len() + args.max_tokens;
    if needed > model.config.context_length {
        bail!(
            "prompt ({} tokens) plus --max-tokens {} exceeds the model's context of {} tokens",
            prompt.len(),
            args.max_tokens,
            model.config.context_length
        );
    }
    let mut state = State::new(&model.config, needed, MAX_BATCH);
    let config = SamplerConfig {
        temperature: args.temperature,
        seed: args.seed,
        ..SamplerConfig::default()
    };
    let mut sampler = Sampler::new(config, model.config.vocab_size);
    let mut stops = Vec::new();
    stops.extend(tok.eos);
    for s in ["<|im_end|>", "<end_of_turn>"] {
        stops.extend(tok.id(s));
    }

    let t0 = Instant::now();
    model
        .forward(&mut state, &prompt, &pool)
        .map_err(|e| anyhow!("prefill failed: {e}"))?;
    let prefill_s = t0.elapsed().as_secs_f64();

    let mut generated = Vec::new();
    let mut stream = Utf8Stream::default();
    let mut text_out = String::new();
    let stdout = std::io::stdout();
    let t1 = Instant::now();
    for _ in 0..args.max_tokens {
        let next = sampler.sample(&state.logits);
        generated.push(next);
        if stops.contains(&next) {
            break;
        }
        let mut bytes = Vec::new();
        tok.decode_piece(next, &mut bytes);
        let piece = stream.push(&bytes);
        text_out.push_str(&piece);
        if !args.json {
            let mut lock = stdout.lock();
            write!(lock, "{piece}")?;
            lock.flush()?;
        }
        if generated.len() == args.max_tokens {
            break;
        }
        model
            .forward(&mut state, &[next], &pool)
            .map_err(|e| anyhow!("decode failed: {e}"))?;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    text_out.push_str(&stream.finish());
    let prefill_tok_s = prompt.len() as f64 / prefill_s.max(1e-9);
    let decode_tok_s = generated.len() as f64 / decode_s.max(1e-9);
    if args.json {
        println!(
            "{{\"prompt_ids\":{},\"generated_ids\":{},\"text\":{},\"prefill_tok_s\":{prefill_tok_s:.2},\"decode_tok_s\":{decode_tok_s:.2}}}",
            json_ids(&prompt),
            json_ids(&generated),
            json_string(&text_out)
        );
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens, {prefill_tok_s:.1} tok/s prefill; {} generated, {decode_tok_s:.1} tok/s decode; {} threads]",
            prompt.len(),
            generated.len(),
            args.threads
        );
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn bench(args: BenchArgs) -> Result<()> {
    const PREFILL: usize = 128;
    const DECODE: usize = 128;
    const RUNS: usize = 5;
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
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        state.reset();
        let t0 = Instant::now();
        model
            .forward(&mut state, &prompt, &pool)
            .map_err(|e| anyhow!("prefill failed: {e}"))?;
        prefill.push(PREFILL as f64 / t0.elapsed().as_secs_f64());
        let t1 = Instant::now();
        for _ in 0..DECODE {
            let next = model::sampler::argmax(&state.logits);
            model
                .forward(&mut state, &[next], &pool)
                .map_err(|e| anyhow!("decode failed: {e}"))?;
        }
        decode.push(DECODE as f64 / t1.elapsed().as_secs_f64());
    }
    println!(
        "model {} threads {} kernels {:?}: prefill {:.1} tok/s, decode {:.1} tok/s (median of {RUNS}; {PREFILL} prefill, {DECODE} decode tokens)",
        args.model,
        args.threads,
        model::simd::level(),
        median(&mut prefill),
        median(&mut decode)
    );
    Ok(())
}
