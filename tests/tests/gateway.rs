//! The OpenAI-compatible gateway against the real appliance (issue 14, "Tests"; docs/ARCHITECTURE.md, "The
//! OpenAI-compatible gateway"): the release image under QEMU TCG + swtpm with the tiny generated model. The official
//! `openai` Python package streams a chat completion and gets a non-streamed one through the gateway, and both texts
//! equal the host's greedy generation (`cloister generate --chat`'s code path) token for token; `curl -N` sees the SSE
//! framing; a manifest for another model gets 502 naming the check, and a recording proxy between gateway and
//! appliance shows that nothing but the `Attest` request left the gateway; four concurrent streams complete while a
//! fifth request gets 429; a client closing mid-stream frees its session at once. It also measures what the gateway adds
//! against the client library `cloister chat` uses, and how long verifying a new upstream session takes.
//!
//! The request, stream-format, concurrency, disconnect and error checks run on the host against a simulated
//! appliance on swtpm (`gateway/tests/gateway.rs`). Needs qemu-system-x86, swtpm, swtpm-tools, curl and python3 with
//! venv (or `CLOISTER_OPENAI_PYTHON`); a missing tool fails the test, nothing is skipped.

mod attest_support;
#[path = "../../gateway/tests/support/openai_python.rs"]
mod openai_python;

use std::process::Command;
use std::time::Duration;

use attest_support::*;
use client::manifest::Manifest;
use client::session::{Ending, UnverifiedSession};
use gateway::{Running, UpstreamConfig};
use net::proto::Request;

/// Tokens each generation makes at most (TCG is slow; the tiny model is quick).
const MAX_TOKENS: u32 = 12;

/// Tokens of the concurrent streams: long enough that four of them are still running when the fifth request comes.
const LONG_TOKENS: u32 = 300;

/// Runs of each path for the latency medians.
const RUNS: usize = 5;

const PROMPT: &str = "What is the capital of France?";

fn upstream(booted: &Booted, endpoint: std::net::SocketAddr, manifest: Manifest) -> UpstreamConfig {
    UpstreamConfig {
        endpoint,
        manifest,
        trust: booted.trust.clone(),
        options: verify_options(),
    }
}

fn curl(args: &[&str]) -> (String, String) {
    let output = Command::new("curl")
        .args(["-sN", "-D", "-", "-H", "content-type: application/json"])
        .args(args)
        .output()
        .expect("curl is needed for this test (apt-get install curl)");
    let text = String::from_utf8(output.stdout).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers, then a body");
    (head.to_string(), body.to_string())
}

/// A non-streamed greedy chat request of PROMPT.
fn whole_body() -> String {
    format!(
        r#"{{"messages":[{{"role":"user","content":"{PROMPT}"}}],"max_tokens":{MAX_TOKENS},"temperature":0}}"#
    )
}

/// POSTs `body` to the chat route; the status and body.
fn post_status(base: &str, body: &str) -> (u16, String) {
    let (head, body) = curl(&["-d", body, &format!("{base}/chat/completions")]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    (status, body)
}

/// A streamed chat request in a `curl -N` child, started once its first chunk arrived.
struct Stream {
    child: std::process::Child,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl Stream {
    fn start(base: &str, body: &str) -> Self {
        use std::io::BufRead as _;
        let mut child = Command::new("curl")
            .args(["-sN", "-H", "content-type: application/json", "-d", body])
            .arg(format!("{base}/chat/completions"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("curl is needed for this test");
        let mut output = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        output.read_line(&mut first).unwrap();
        assert!(first.contains(r#""role":"assistant""#), "{first}");
        Self { child, output }
    }

    /// Reads the stream to its end.
    fn rest(&mut self) -> String {
        use std::io::Read as _;
        let mut rest = String::new();
        self.output.read_to_string(&mut rest).unwrap();
        let _ = self.child.wait();
        rest
    }

    /// Closes the connection mid-stream (ends curl).
    fn close(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn openai_clients_through_the_gateway_get_the_appliance_answer_and_a_wrong_manifest_gets_502() {
    let booted = boot_tiny("gateway");
    let reference = host_generate(
        tiny_model(),
        &TestPrompt::Chat(PROMPT.to_string()),
        MAX_TOKENS as usize,
    );

    let gateway = Running::start(
        "127.0.0.1:0".parse().unwrap(),
        upstream(&booted, booted.endpoint(), booted.manifest.clone()),
    )
    .expect("the gateway starts");
    let verification = gateway.pool().verify_one().expect("the appliance verifies");
    let verify_ms = verification.duration.as_secs_f64() * 1000.0;
    let base = format!("http://{}/v1", gateway.address());

    // The official openai package: streamed and whole, greedy; both equal the host's greedy tokens.
    let result = openai_python::run_client(&base, PROMPT, MAX_TOKENS);
    eprintln!("openai client: {result}");
    assert_eq!(result["streamed"], reference.text.as_str(), "{result}");
    assert_eq!(result["whole"], reference.text.as_str(), "{result}");
    let generated = reference.generated_ids.len() as u64;
    assert_eq!(result["whole_usage"][1], generated);
    assert_eq!(result["stream_usage"][1], generated);
    assert_eq!(result["bad_request"][0], 400);
    assert!(result["attestation"]
        .as_str()
        .unwrap()
        .contains(&format!("model={}", booted.manifest.model.sha256)));

    // curl -N: the SSE framing as README documents it.
    let body = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{PROMPT}"}}],"max_tokens":{MAX_TOKENS},"temperature":0,"stream":true}}"#
    );
    let (head, events) = curl(&["-d", &body, &format!("{base}/chat/completions")]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("cloister-attestation: kernel="), "{head}");
    assert!(events.ends_with("data: [DONE]\n\n"), "{events}");
    let chunks: Vec<serde_json::Value> = events
        .split("\n\n")
        .filter(|event| !event.is_empty() && *event != "data: [DONE]")
        .map(|event| serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, reference.text);
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());

    // What the gateway adds: the same greedy request through the client library on a warm verified session
    // (`cloister chat`'s path) and streamed through the gateway on its warm pooled session, alternately, medians of
    // RUNS. Through the gateway the first byte of the answer is the first token's chunk (the status waits for it).
    let mut direct = UnverifiedSession::connect(booted.endpoint(), CLIENT_TIMEOUT)
        .unwrap()
        .verify(&booted.manifest, &booted.trust, &verify_options())
        .unwrap()
        .0;
    let (mut library, mut gateway_runs) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let request = TestPrompt::Chat(PROMPT.to_string()).request(MAX_TOKENS);
        let completion = direct.complete(request, None, |_| {}).unwrap();
        assert!(matches!(completion.ending, Ending::Done(_)));
        let tokens = completion.tokens.len();
        let first = completion.first_token.unwrap().as_secs_f64();
        let total = completion.elapsed.as_secs_f64();
        library.push((first, total, (total - first) / (tokens - 1).max(1) as f64));

        let output = Command::new("curl")
            .args([
                "-sN",
                "-o",
                "/dev/null",
                "-w",
                "%{time_starttransfer} %{time_total}",
            ])
            .args(["-H", "content-type: application/json", "-d", &body])
            .arg(format!("{base}/chat/completions"))
            .output()
            .unwrap();
        let times: Vec<f64> = String::from_utf8(output.stdout)
            .unwrap()
            .split(' ')
            .map(|time| time.parse().unwrap())
            .collect();
        gateway_runs.push((
            times[0],
            times[1],
            (times[1] - times[0]) / (tokens - 1).max(1) as f64,
        ));
    }
    drop(direct);
    let median = |runs: &[(f64, f64, f64)], pick: fn(&(f64, f64, f64)) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2] * 1000.0
    };
    eprintln!(
        "gateway latency (medians of {RUNS}, {MAX_TOKENS} tokens, greedy): first token {:.1} ms direct vs {:.1} ms \
         through the gateway; whole request {:.1} vs {:.1} ms; per token {:.2} vs {:.2} ms; verifying a new \
         upstream session {verify_ms:.1} ms",
        median(&library, |run| run.0),
        median(&gateway_runs, |run| run.0),
        median(&library, |run| run.1),
        median(&gateway_runs, |run| run.1),
        median(&library, |run| run.2),
        median(&gateway_runs, |run| run.2),
    );
    // Four concurrent streams (the appliance's four sessions) all complete; a fifth request meanwhile gets 429.
    let long = format!(
        r#"{{"messages":[{{"role":"user","content":"{PROMPT}"}}],"max_tokens":{LONG_TOKENS},"temperature":0,"stream":true}}"#
    );
    let mut streams: Vec<Stream> = (0..4).map(|_| Stream::start(&base, &long)).collect();
    let (status, text) = post_status(&base, &whole_body());
    assert_eq!(status, 429, "{text}");
    for stream in &mut streams {
        let rest = stream.rest();
        assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    }

    // A client that closes its connection mid-stream frees its session at once: with three streams still running,
    // a new request succeeds as soon as the gateway has sent Cancel and the appliance confirmed it.
    let mut streams: Vec<Stream> = (0..4).map(|_| Stream::start(&base, &long)).collect();
    streams.remove(0).close();
    let closed = std::time::Instant::now();
    loop {
        let (status, text) = post_status(&base, &whole_body());
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{text}");
        assert!(
            closed.elapsed() < Duration::from_secs(5),
            "the closed stream's session did not come back within 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "after a client closed mid-stream, a new request got its session within {:.0} ms (the others still streaming)",
        closed.elapsed().as_secs_f64() * 1000.0
    );
    for stream in &mut streams {
        let rest = stream.rest();
        assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    }
    drop(gateway);

    // A manifest for another model: 502 naming the check, and the proxy saw only the Attest request.
    let other_model = scratch().join("tiny-llama-other-seed.gguf");
    std::fs::write(
        &other_model,
        model::tiny::generate(
            &model::tiny::TinySpec::llama(),
            runner::engine::TINY_SEED + 1,
        ),
    )
    .unwrap();
    let wrong = Manifest::for_image(&booted.image.kernel, &other_model, &booted.image.cmdline)
        .expect("manifest for another model");
    let proxy = RecordingProxy::start(booted.endpoint());
    let refusing = Running::start(
        "127.0.0.1:0".parse().unwrap(),
        upstream(&booted, proxy.address(), wrong.clone()),
    )
    .unwrap();
    let (head, body) = curl(&[
        "-d",
        r#"{"messages":[{"role":"user","content":"a secret prompt"}],"stream":true}"#,
        &format!("http://{}/v1/chat/completions", refusing.address()),
    ]);
    assert!(head.starts_with("HTTP/1.1 502"), "{head}\n{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["type"], "verification_error", "{body}");
    assert_eq!(error["error"]["code"], "manifest", "{body}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model"),
        "{body}"
    );
    let traffic = proxy.finish(Duration::from_secs(10));
    traffic.assert_well_formed();
    let attest = record_len_of(&Request::Attest {
        nonce: [0; 32],
        pcr_mask: wrong.pcr_mask(),
    });
    let records = traffic.records_after_handshake();
    assert_eq!(records.first(), Some(&attest), "{records:?}");
    assert!(
        records[1..].iter().all(|&len| len == ENCRYPTED_ALERT_LEN),
        "after the Attest the gateway sent more than a close_notify: {records:?}"
    );
    drop(refusing);
}
