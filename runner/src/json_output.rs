//! The machine-readable output of `cloister chat --json` and `cloister bench --json`: one JSON object per line on
//! stdout, each naming what it is in its `event` field, and the exit codes a script reads beside them (README,
//! "Exit codes").
//!
//! `chat --json` prints, in order: `verification` (the report `cloister verify --json` prints, on one line), one
//! `token` per generated token, then `done` (the appliance's usage and timings and the client's) or `cancelled`.
//! A failure prints one `error` line instead of what is missing, naming its kind (and the refused check or the
//! appliance's error code), and the command exits with that kind's code.

use std::time::Duration;

use client::session::{ApplianceError, Completion, Ending};
use client::verify::{Report, VerifyError};
use net::proto::{FinishReason, Token};
use serde_json::{json, Value};

/// The exit codes as `cloister --help` lists them (README, "Exit codes").
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  success
  1  a runtime or I/O error (the appliance is unreachable, a file or tool is missing)
  2  a usage error (clap's, or arguments out of range such as --top-p 0)
  3  verification refused the appliance (the failed check is named on stderr and in --json output)
  4  the appliance refused the request (busy, context exceeded, ...)";

/// A runtime or I/O error: the appliance is unreachable, a file is missing, a tool failed.
pub const EXIT_RUNTIME: u8 = 1;
/// Usage error: clap exits with 2 on its own for bad arguments.
pub const EXIT_USAGE: u8 = 2;
/// The appliance is not what the manifest says: a verification check refused it.
pub const EXIT_VERIFICATION_REFUSED: u8 = 3;
/// The appliance refused the request (busy, context exceeded, ...).
pub const EXIT_APPLIANCE_REFUSED: u8 = 4;

/// Arguments clap accepted but the command refuses (`--top-p 0`): a usage error, exit code 2 like clap's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        out.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// What kind of failure an error is, from its chain of causes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A verification check refused the appliance; the check's name.
    VerificationRefused(&'static str),
    /// The appliance answered the request with an error.
    ApplianceRefused(ApplianceError),
    /// The arguments do not make sense together or out of range.
    Usage,
    /// Anything else: the network, a file, a tool.
    Runtime,
}

impl Failure {
    /// Classifies `error` by the first cause in its chain that is a verification or appliance error.
    pub fn of(error: &anyhow::Error) -> Self {
        for cause in error.chain() {
            if let Some(refused) = cause.downcast_ref::<VerifyError>() {
                return Self::VerificationRefused(refused.check());
            }
            if let Some(refused) = cause.downcast_ref::<ApplianceError>() {
                return Self::ApplianceRefused(*refused);
            }
            if cause.is::<UsageError>() {
                return Self::Usage;
            }
        }
        Self::Runtime
    }

    /// The exit code a script sees for this failure.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::VerificationRefused(_) => EXIT_VERIFICATION_REFUSED,
            Self::ApplianceRefused(_) => EXIT_APPLIANCE_REFUSED,
            Self::Usage => EXIT_USAGE,
            Self::Runtime => EXIT_RUNTIME,
        }
    }
}

/// The `verification` line: the report `cloister verify --json` prints, on one line.
pub fn verification_line(report: &Report) -> String {
    // The report is plain data; its pretty form reads back as the same value.
    let report: Value = serde_json::from_str(&report.to_json()).unwrap_or(Value::Null);
    json!({ "event": "verification", "report": report }).to_string()
}

/// The `token` line of one generated token.
pub fn token_line(token: &Token) -> String {
    json!({ "event": "token", "id": token.id, "text": token.text }).to_string()
}

fn milliseconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e5).round() / 100.0
}

fn finish_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::EndOfText => "end_of_text",
        FinishReason::Stop => "stop",
    }
}

/// The last line of a completion: `done` with the appliance's usage and timings (appliance clock) and the
/// client's (first token and whole generation, client clock), or `cancelled`.
pub fn ending_line(completion: &Completion) -> String {
    let client = json!({
        "first_token_ms": completion.first_token.map(milliseconds),
        "elapsed_ms": milliseconds(completion.elapsed),
        "tokens": completion.tokens.len(),
    });
    match completion.ending {
        Ending::Done(done) => json!({
            "event": "done",
            "finish": finish_name(done.reason),
            "prompt_tokens": done.prompt_tokens,
            "generated_tokens": done.generated_tokens,
            "prefill_us": done.prefill_us,
            "decode_us": done.decode_us,
            "client": client,
        })
        .to_string(),
        Ending::Cancelled => json!({ "event": "cancelled", "client": client }).to_string(),
    }
}

/// The `error` line for a failed command: its kind (`verification_refused` with the check, `appliance_refused`
/// with the appliance's error code, or `runtime`), the exit code, and the message with its causes.
pub fn error_line(error: &anyhow::Error) -> String {
    let failure = Failure::of(error);
    let mut line = json!({
        "event": "error",
        "exit_code": failure.exit_code(),
        "error": format!("{error:#}"),
    });
    match failure {
        Failure::VerificationRefused(check) => {
            line["kind"] = json!("verification_refused");
            line["check"] = json!(check);
        }
        Failure::ApplianceRefused(refused) => {
            line["kind"] = json!("appliance_refused");
            line["code"] = json!(refused.0.name());
        }
        Failure::Usage => line["kind"] = json!("usage"),
        Failure::Runtime => line["kind"] = json!("runtime"),
    }
    line.to_string()
}

/// What `cloister bench` measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BenchResult {
    /// `--model` as given.
    pub model: String,
    pub threads: usize,
    /// The engine's kernels: `avx512`, `avx2` or `scalar`.
    pub kernels: &'static str,
    /// The weights' layout in memory: `interleaved` where the host rearranged Q4_1/Q5_0 matrices for the kernels
    /// (`model::interleave`), else `file`.
    pub layout: &'static str,
    /// Prompt tokens per run.
    pub prefill_tokens: usize,
    /// Generated tokens per run.
    pub decode_tokens: usize,
    /// Timed runs of each phase (after one warm-up run); the rates are their medians.
    pub runs: usize,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

impl BenchResult {
    /// The one line `cloister bench --json` prints (`event` is `bench`).
    pub fn to_json_line(&self) -> String {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            event: &'static str,
            #[serde(flatten)]
            result: &'a BenchResult,
        }
        let line = Line {
            event: "bench",
            result: self,
        };
        // Strings and numbers only: serialising cannot fail.
        serde_json::to_string(&line).unwrap_or_default()
    }
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            out,
            "model {} threads {} kernels {} ({} layout): prefill {:.1} tok/s, decode {:.1} tok/s (median of {}; {} \
             prefill, {} decode tokens)",
            self.model,
            self.threads,
            self.kernels,
            self.layout,
            self.prefill_tok_s,
            self.decode_tok_s,
            self.runs,
            self.prefill_tokens,
            self.decode_tokens
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use net::proto::{Done, ErrorCode};

    #[test]
    fn failures_are_classified_by_their_cause() {
        let refused = anyhow::Error::new(VerifyError::BadSignature).context("verification failed");
        assert_eq!(
            Failure::of(&refused),
            Failure::VerificationRefused("quote signature")
        );
        assert_eq!(Failure::of(&refused).exit_code(), 3);
        let busy =
            anyhow::Error::new(ApplianceError(ErrorCode::Busy)).context("the request failed");
        assert_eq!(Failure::of(&busy).exit_code(), 4);
        assert_eq!(
            Failure::of(&anyhow::anyhow!("connection refused")).exit_code(),
            1
        );
        let usage = anyhow::Error::new(UsageError("--top-p must be in (0, 1]".into()));
        assert_eq!(Failure::of(&usage).exit_code(), 2);
    }

    #[test]
    fn error_lines_name_the_check_or_the_code() {
        let refused = anyhow::Error::new(VerifyError::BadSignature);
        let line: Value = serde_json::from_str(&error_line(&refused)).unwrap();
        assert_eq!(line["event"], "error");
        assert_eq!(line["kind"], "verification_refused");
        assert_eq!(line["check"], "quote signature");
        assert_eq!(line["exit_code"], 3);
        let busy = anyhow::Error::new(ApplianceError(ErrorCode::ContextExceeded));
        let line: Value = serde_json::from_str(&error_line(&busy)).unwrap();
        assert_eq!(
            (line["kind"].as_str(), line["code"].as_str()),
            (Some("appliance_refused"), Some("context exceeded"))
        );
        assert!(!error_line(&busy).contains('\n'));
    }

    #[test]
    fn token_and_done_lines() {
        let token = Token {
            id: 7,
            text: "a \"b\"\n".into(),
        };
        assert_eq!(
            token_line(&token),
            r#"{"event":"token","id":7,"text":"a \"b\"\n"}"#
        );
        let completion = Completion {
            tokens: vec![token],
            text: "a".into(),
            ending: Ending::Done(Done {
                reason: FinishReason::Length,
                prompt_tokens: 5,
                generated_tokens: 1,
                prefill_us: 1200,
                decode_us: 0,
            }),
            elapsed: Duration::from_micros(2_345_678),
            first_token: Some(Duration::from_millis(40)),
        };
        let line: Value = serde_json::from_str(&ending_line(&completion)).unwrap();
        assert_eq!(line["event"], "done");
        assert_eq!(line["finish"], "length");
        assert_eq!(line["prefill_us"], 1200);
        assert_eq!(line["client"]["elapsed_ms"], 2345.68);
        assert_eq!(line["client"]["first_token_ms"], 40.0);
    }

    #[test]
    fn bench_line_and_text() {
        let result = BenchResult {
            model: "tiny-llama".into(),
            threads: 2,
            kernels: "avx2",
            layout: "file",
            prefill_tokens: 128,
            decode_tokens: 128,
            runs: 5,
            prefill_tok_s: 812.26,
            decode_tok_s: 99.5,
        };
        assert!(result
            .to_json_line()
            .starts_with(r#"{"event":"bench","model":"tiny-llama","#));
        let line: Value = serde_json::from_str(&result.to_json_line()).unwrap();
        assert_eq!(line["prefill_tok_s"], 812.26);
        assert_eq!(line["kernels"], "avx2");
        assert_eq!(line["layout"], "file");
        assert_eq!(
            result.to_string(),
            "model tiny-llama threads 2 kernels avx2 (file layout): prefill 812.3 tok/s, decode 99.5 tok/s (median \
             of 5; 128 prefill, 128 decode tokens)"
        );
    }
}
