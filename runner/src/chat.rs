//! `cloister chat`: connect over TLS, verify the appliance against a manifest (docs/ARCHITECTURE.md §4), then send one prompt on
//! that same verified session and stream the answer (docs/ARCHITECTURE.md §5; issue 5). Also the streaming printer that
//! `cloister up`'s demo prompt uses.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use net::proto::{ChatMessage, FinishReason, GenerateRequest, Prompt, Role, Sampling};
use rand::RngCore as _;

use client::manifest::Manifest;
use client::session::{Completion, Ending, UnverifiedSession, VerifiedSession};
use client::verify::VerifyOptions;

use crate::json_output::{self, UsageError};
use crate::verify::{observation_store, trust_anchors};

/// Options of `cloister chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct ChatArgs {
    /// The appliance's address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub endpoint: String,
    /// The image's manifest.json, as `cloister build` wrote it beside the image.
    #[arg(long, value_name = "PATH")]
    pub manifest: PathBuf,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// Sampling temperature; 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Seed of the appliance's sampler [default: random, printed with the usage]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep only the K most likely tokens (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probability reaches P (1: no limit).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Stop once the answer ends with this text; repeatable.
    #[arg(long = "stop", value_name = "S")]
    pub stop: Vec<String>,
    /// Send PROMPT as raw text instead of a user turn of the model's chat format.
    #[arg(long)]
    pub raw: bool,
    /// A PEM file of EK CA certificates to trust (roots and intermediates, one or more per file); repeatable, so
    /// swtpm's local CA, a TPM vendor's and a cloud's CA can be trusted side by side [default: cloister's own CA
    /// in its cache]
    #[arg(long = "ek-ca", value_name = "PEM", aliases = ["ca-root", "ca-intermediate"])]
    pub ek_ca: Vec<PathBuf>,
    /// Seconds each step may take (connecting, attesting, waiting for the next token).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Accept a manifest built with `--boot direct`, whose kernel nothing measured before it ran: the host operator
    /// is then trusted, and the report says so.
    #[arg(long)]
    pub trust_host: bool,
    /// Accept a manifest of a debug-console image (`cloister build --debug-console`, `"console": true`): its kernel
    /// prints its boot and errors on the serial port, and the report says so.
    #[arg(long)]
    pub allow_debug_image: bool,
    /// The file that remembers each accepted quote's TPM clock counters, so a rolled-back TPM or an old quote is
    /// refused next time [default: observations.json in cloister's cache]
    #[arg(long, value_name = "PATH")]
    pub observations: Option<PathBuf>,
    /// Print one JSON object per line on stdout instead of text: the verification report, each token, and the
    /// usage and timings at the end (or the error, naming the refused check or the appliance's error code).
    #[arg(long)]
    pub json: bool,
    /// The prompt.
    pub prompt: String,
}

impl ChatArgs {
    /// The generate request these options describe (a random seed where none was given).
    pub fn request(&self) -> Result<GenerateRequest> {
        let usage = |text: &str| Err(UsageError(text.to_string()).into());
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return usage("--temperature must be a number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return usage("--top-p must be in (0, 1]");
        }
        if self.max_tokens == 0 {
            return usage("--max-tokens must be at least 1");
        }
        let seed = self.seed.unwrap_or_else(|| rand::rngs::OsRng.next_u64());
        Ok(GenerateRequest {
            prompt: prompt(&self.prompt, self.raw),
            max_tokens: self.max_tokens,
            sampling: Sampling {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                seed,
            },
            stop: self.stop.clone(),
        })
    }
}

/// `text` as one user turn of the model's chat format, or as raw text.
pub fn prompt(text: &str, raw: bool) -> Prompt {
    if raw {
        Prompt::Text(text.to_string())
    } else {
        Prompt::Chat(vec![ChatMessage {
            role: Role::User,
            content: text.to_string(),
        }])
    }
}

/// Runs `cloister chat`. `cancel` is set by the Ctrl-C handler: before the prompt is sent it stops the command;
/// during generation it sends `Cancel` and prints what came back.
pub fn run(args: &ChatArgs, cancel: &AtomicBool) -> Result<()> {
    let result = verify_and_chat(args, cancel);
    if let Err(error) = &result {
        if args.json {
            println!("{}", json_output::error_line(error));
        }
    }
    result
}

fn verify_and_chat(args: &ChatArgs, cancel: &AtomicBool) -> Result<()> {
    let request = args.request()?;
    let endpoint = client::resolve_endpoint(&args.endpoint)?;
    let manifest = Manifest::read(&args.manifest)?;
    let trust = trust_anchors(&args.ek_ca)?;
    let options = VerifyOptions {
        timeout: Duration::from_secs(args.timeout),
        observations: Some(observation_store(args.observations.as_deref())),
        trust_host: args.trust_host,
        allow_debug_image: args.allow_debug_image,
        ..VerifyOptions::default()
    };
    eprintln!(
        "connecting to {endpoint} and verifying it against {}...",
        args.manifest.display()
    );
    let session = UnverifiedSession::connect(endpoint, options.timeout)
        .with_context(|| format!("no TLS session with {endpoint}; is `cloister up` running?"))?;
    let (mut session, report) = session.verify(&manifest, &trust, &options)?;
    if args.json {
        println!("{}", json_output::verification_line(&report));
    } else {
        eprintln!("{}", report.summary());
        eprintln!();
    }
    if cancel.load(std::sync::atomic::Ordering::Acquire) {
        bail!("interrupted before the prompt was sent");
    }
    if args.json {
        let completion = stream_json_lines(&mut session, request, cancel)?;
        println!("{}", json_output::ending_line(&completion));
        return Ok(());
    }
    let completion = stream_to_stdout(&mut session, request.clone(), cancel)?;
    eprintln!("{}", usage_line(&completion, request.sampling));
    Ok(())
}

/// Sends `request` and prints one `token` JSON line per token as it arrives (`cloister chat --json`).
fn stream_json_lines(
    session: &mut VerifiedSession,
    request: GenerateRequest,
    cancel: &AtomicBool,
) -> Result<Completion> {
    let mut stdout = std::io::stdout();
    session.complete(request, Some(cancel), |token| {
        // As in `stream_to_stdout`: a closed stdout must not abort the generation mid-stream.
        let _ = writeln!(stdout, "{}", json_output::token_line(token));
        let _ = stdout.flush();
    })
}

/// Sends `request` on the verified session and prints each token's text on stdout as it arrives; a cancel
/// (set `cancel`) ends it early. Returns the whole completion.
pub fn stream_to_stdout(
    session: &mut VerifiedSession,
    request: GenerateRequest,
    cancel: &AtomicBool,
) -> Result<Completion> {
    let mut stdout = std::io::stdout();
    let completion = session.complete(request, Some(cancel), |token| {
        // A closed stdout (e.g. `| head`) must not abort the generation mid-stream.
        let _ = stdout.write_all(token.text.as_bytes());
        let _ = stdout.flush();
    })?;
    let _ = writeln!(stdout);
    Ok(completion)
}

/// Usage and speed of a completion, for stderr.
pub fn usage_line(completion: &Completion, sampling: Sampling) -> String {
    let client_side = format!(
        "first token after {:.2} s, {} tokens in {:.2} s ({:.2} tokens/s end to end)",
        completion.first_token.unwrap_or_default().as_secs_f64(),
        completion.tokens.len(),
        completion.elapsed.as_secs_f64(),
        completion.tokens.len() as f64 / completion.elapsed.as_secs_f64().max(1e-9)
    );
    let sampling = if sampling.temperature == 0.0 {
        "greedy".to_string()
    } else {
        format!(
            "temperature {}, top-k {}, top-p {}, seed {}",
            sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed
        )
    };
    match completion.ending {
        Ending::Done(done) => {
            let reason = match done.reason {
                FinishReason::Length => "reached --max-tokens",
                FinishReason::EndOfText => "end of text",
                FinishReason::Stop => "stop string",
            };
            let prefill = rate(done.prompt_tokens, done.prefill_us);
            // decode_us runs from the first to the last token: one step fewer than tokens.
            let decode = rate(done.generated_tokens.saturating_sub(1), done.decode_us);
            format!(
                "[{} prompt tokens, {} generated ({reason}, {sampling}); appliance: prefill {prefill} tokens/s, \
                 decode {decode} tokens/s; client: {client_side}]",
                done.prompt_tokens, done.generated_tokens
            )
        }
        Ending::Cancelled => format!(
            "[cancelled: the {} tokens above came back before the appliance stopped; {client_side}]",
            completion.tokens.len()
        ),
    }
}

fn rate(tokens: u32, micros: u64) -> String {
    if micros == 0 || tokens == 0 {
        "-".to_string()
    } else {
        format!("{:.2}", f64::from(tokens) * 1e6 / micros as f64)
    }
}
