//! The gateway against a simulated appliance on a real swtpm (`runner/tests/support/sim_appliance.rs`) behind net's
//! TLS server (`client::loopback`): every session is really verified (quote, EK chain, credential activation); the
//! generations are scripted frames, so the HTTP side can be checked byte for byte. Clients: ureq, `curl -N` and the
//! official `openai` Python package. The booted-appliance end-to-end test is `tests/tests/gateway.rs`.
//!
//! Needs swtpm, swtpm-tools, curl and python3 (with venv); a missing tool fails the test.

#[path = "support/openai_python.rs"]
mod openai_python;
#[path = "../../runner/tests/support/sim_appliance.rs"]
mod sim_appliance;

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::loopback::{Loopback, Reply};
use client::verify::VerifyOptions;
use gateway::{Running, UpstreamConfig, ATTESTATION_HEADER};
use net::proto::{
    ChatMessage, Done, ErrorCode, FinishReason, GenerateRequest, Prompt, Request, Response, Role,
    Sampling, Token,
};
use sim_appliance::{home, SimAppliance, TestImage};

/// The scripted answer of a generation: its token texts, then `Done`.
const TOKENS: [&str; 5] = ["Hel", "lo", "", ",", " world"];

fn done(generated: u32) -> Response {
    Response::Done(Done {
        reason: FinishReason::EndOfText,
        prompt_tokens: 5,
        generated_tokens: generated,
        prefill_us: 10,
        decode_us: 20,
    })
}

fn frames(tokens: &[&str]) -> Vec<Response> {
    tokens
        .iter()
        .enumerate()
        .map(|(id, text)| {
            Response::Token(Token {
                id: id as u32,
                text: (*text).to_string(),
            })
        })
        .chain([done(tokens.len() as u32)])
        .collect()
}

/// The text of a prompt, for choosing the scripted answer.
fn prompt_text(request: &GenerateRequest) -> String {
    match &request.prompt {
        Prompt::Text(text) => text.clone(),
        Prompt::Chat(messages) => messages.iter().map(|m| m.content.as_str()).collect(),
        Prompt::Tokens(_) => String::new(),
    }
}

/// The simulated appliance's answer to a generation: prompts name their behaviour.
fn script(request: &GenerateRequest) -> Reply {
    let prompt = prompt_text(request);
    if prompt.contains("busy") {
        Reply::Respond(Response::Error(ErrorCode::Busy))
    } else if prompt.contains("long") {
        Reply::Stream {
            frames: frames(&["x"; 100]),
            interval: Duration::from_millis(50),
        }
    } else if prompt.contains("slow") {
        Reply::Stream {
            frames: frames(&["x"; 20]),
            interval: Duration::from_millis(300),
        }
    } else if prompt.contains("stall") {
        Reply::Stream {
            frames: frames(&TOKENS),
            interval: Duration::from_secs(8),
        }
    } else {
        Reply::Stream {
            frames: frames(&TOKENS),
            interval: Duration::ZERO,
        }
    }
}

/// A simulated appliance booted with `booted`'s files, a gateway verifying it against `expected`'s manifest, and
/// every request the appliance received.
struct Setup {
    gateway: Running,
    /// Serves `connections` connections; its thread ends after the last.
    upstream: Loopback,
    requests: Arc<Mutex<Vec<Request>>>,
    images: (TestImage, TestImage),
}

impl Setup {
    fn new(booted: TestImage, expected: TestImage, timeout: Duration, connections: usize) -> Self {
        let mut appliance = SimAppliance::boot(home(), &booted, true);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let upstream = Loopback::start(connections, move |request, binding| {
            seen.lock().unwrap().push(request.clone());
            match request {
                Request::Generate(generate) => script(generate),
                request => {
                    appliance.binding = *binding;
                    Reply::Respond(appliance.answer(request))
                }
            }
        })
        .unwrap();
        let config = UpstreamConfig {
            endpoint: upstream.address(),
            manifest: expected.manifest(),
            trust: home().trust(),
            options: VerifyOptions {
                timeout,
                // The simulated appliance boots directly: nothing measured its kernel.
                trust_host: true,
                ..VerifyOptions::default()
            },
        };
        let gateway = Running::start("127.0.0.1:0".parse().unwrap(), config).unwrap();
        Self {
            gateway,
            upstream,
            requests,
            images: (booted, expected),
        }
    }

    fn honest(cmdline: &str) -> Self {
        let model = b"GGUF tiny test model";
        Self::new(
            TestImage::new(0, model, cmdline),
            TestImage::new(0, model, cmdline),
            Duration::from_secs(30),
            64,
        )
    }

    /// Stops the gateway (closing its sessions) and returns what the appliance's TLS server saw, `Cancel`s
    /// included (the scripted streams consume those without the request handler).
    fn finish(self) -> client::loopback::Served {
        drop(self.gateway);
        self.upstream.join().unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.address())
    }

    fn generate_requests(&self) -> Vec<GenerateRequest> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter_map(|request| match request {
                Request::Generate(generate) => Some(generate.clone()),
                _ => None,
            })
            .collect()
    }

    fn post(&self, path: &str, body: &str) -> (u16, String, Option<String>) {
        let result = ureq::post(&self.url(path))
            .set("content-type", "application/json")
            .send_string(body);
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("POST {path}: {error}"),
        };
        let status = response.status();
        let header = response.header(ATTESTATION_HEADER).map(str::to_string);
        (status, response.into_string().unwrap(), header)
    }

    fn get(&self, path: &str) -> (u16, String, Option<String>) {
        let response = match ureq::get(&self.url(path)).call() {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("GET {path}: {error}"),
        };
        let status = response.status();
        let header = response.header(ATTESTATION_HEADER).map(str::to_string);
        (status, response.into_string().unwrap(), header)
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

fn chat_body(prompt: &str, extra: &str) -> String {
    format!(r#"{{"model":"any","messages":[{{"role":"user","content":"{prompt}"}}]{extra}}}"#)
}

#[test]
fn chat_completions_whole_and_streamed_byte_for_byte() {
    let setup = Setup::honest("ip=dhcp port=7000");
    let manifest = setup.images.1.manifest();

    // Whole: one chat.completion with usage and the header of the verification it used.
    let body = r#"{"model":"any","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],
        "max_tokens":9,"temperature":0,"seed":3,"stop":["\n\n"],"some_future_field":{"x":1}}"#;
    let started = Instant::now();
    let (status, text, header) = setup.post("/v1/chat/completions", body);
    let first_request = started.elapsed();
    assert_eq!(status, 200, "{text}");
    let answer = json(&text);
    assert_eq!(answer["object"], "chat.completion");
    assert!(answer["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    assert_eq!(answer["choices"][0]["message"]["content"], "Hello, world");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        answer["usage"],
        serde_json::json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10})
    );
    let header = header.expect("the attestation header");
    assert!(
        header.starts_with(&format!(
            "kernel={}; model={}; verified-at=20",
            manifest.kernel.measured_sha256, manifest.model.sha256
        )),
        "{header}"
    );
    // What went upstream: the turns as chat messages (the appliance applies its template), the sampling as asked.
    assert_eq!(
        setup.generate_requests()[0],
        GenerateRequest {
            prompt: Prompt::Chat(vec![
                ChatMessage {
                    role: Role::System,
                    content: "Be brief.".into()
                },
                ChatMessage {
                    role: Role::User,
                    content: "Hi".into()
                },
            ]),
            max_tokens: 9,
            sampling: Sampling {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                seed: 3
            },
            stop: vec!["\n\n".into()],
        }
    );

    // A second request reuses the verified session (no second Attest), so it costs no verification.
    let started = Instant::now();
    let (status, _, _) = setup.post("/v1/chat/completions", &chat_body("Hi", ""));
    let reused = started.elapsed();
    assert_eq!(status, 200);
    let attests = |setup: &Setup| {
        setup
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|request| matches!(request, Request::Attest { .. }))
            .count()
    };
    assert_eq!(attests(&setup), 1);
    eprintln!(
        "first request (verifies a session): {:.1} ms; second (reuses it): {:.1} ms",
        first_request.as_secs_f64() * 1000.0,
        reused.as_secs_f64() * 1000.0
    );

    // Streamed, as `curl -N` sees it: a role chunk, one chunk per non-empty token, the finish chunk, the usage
    // chunk, [DONE].
    let output = Command::new("curl")
        .args([
            "-sN",
            "-D",
            "-",
            "-H",
            "content-type: application/json",
            "-d",
        ])
        .arg(chat_body(
            "Hi",
            r#","stream":true,"stream_options":{"include_usage":true}"#,
        ))
        .arg(setup.url("/v1/chat/completions"))
        .output()
        .expect("curl is needed for this test (apt-get install curl)");
    let text = String::from_utf8(output.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("cloister-attestation: kernel="), "{head}");
    let first: serde_json::Value =
        json(body.lines().next().unwrap().strip_prefix("data: ").unwrap());
    let (id, created) = (first["id"].as_str().unwrap(), &first["created"]);
    let model = setup_model_id(&setup);
    let chunk = |choices: &str| {
        format!(
            r#"data: {{"id":"{id}","object":"chat.completion.chunk","created":{created},"model":"{model}","choices":{choices}}}"#
        )
    };
    let mut expected = vec![chunk(
        r#"[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]"#,
    )];
    for token in TOKENS.iter().filter(|token| !token.is_empty()) {
        expected.push(chunk(&format!(
            r#"[{{"index":0,"delta":{{"content":"{token}"}},"logprobs":null,"finish_reason":null}}]"#
        )));
    }
    expected.push(chunk(
        r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]"#,
    ));
    expected.push(
        chunk("[]").trim_end_matches('}').to_string()
            + r#","usage":{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10}}"#,
    );
    expected.push("data: [DONE]".to_string());
    let expected: String = expected
        .iter()
        .map(|event| format!("{event}\n\n"))
        .collect();
    assert_eq!(body, expected);
}

fn setup_model_id(setup: &Setup) -> String {
    let (_, text, _) = setup.get("/v1/models");
    json(&text)["data"][0]["id"].as_str().unwrap().to_string()
}

#[test]
fn completions_models_and_attestation() {
    let setup = Setup::honest("ip=dhcp port=7000");
    let manifest = setup.images.1.manifest();

    // Before any request: the models come from the manifest; the header says nothing was verified yet.
    let (status, text, header) = setup.get("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(header.as_deref(), Some("none"));
    let models = json(&text);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(
        models["data"][0]["sha256"],
        manifest.model.sha256.to_string()
    );
    assert_eq!(models["data"][0]["size"], manifest.model.length);
    assert!(models["data"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("cloister-"));

    // The attestation endpoint verifies a session when none was, and returns its report.
    let (status, text, header) = setup.get("/v1/attestation");
    assert_eq!(status, 200, "{text}");
    let report = json(&text);
    assert_eq!(report["verified"], true);
    assert!(report["checks"]
        .as_array()
        .unwrap()
        .contains(&"credential activation".into()));
    assert!(header.unwrap().contains(&manifest.model.sha256.to_string()));

    // A raw prompt: one text_completion, sent as Prompt::Text.
    let (status, text, _) = setup.post(
        "/v1/completions",
        r#"{"model":"m","prompt":"Once upon","max_tokens":5,"temperature":0}"#,
    );
    assert_eq!(status, 200, "{text}");
    let answer = json(&text);
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(answer["choices"][0]["text"], "Hello, world");
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    assert_eq!(
        setup.generate_requests().last().unwrap().prompt,
        Prompt::Text("Once upon".into())
    );

    // Streamed: text_completion chunks, then [DONE].
    let response = ureq::post(&setup.url("/v1/completions"))
        .send_string(r#"{"prompt":"Once","stream":true}"#)
        .unwrap();
    let events: Vec<String> = BufReader::new(response.into_reader())
        .lines()
        .map(Result::unwrap)
        .filter(|line| !line.is_empty())
        .collect();
    assert_eq!(events.last().unwrap(), "data: [DONE]");
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|event| json(event.strip_prefix("data: ").unwrap()))
        .collect();
    assert!(chunks
        .iter()
        .all(|chunk| chunk["object"] == "text_completion"));
    let text: String = chunks
        .iter()
        .map(|chunk| chunk["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello, world");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );

    // An unknown route is OpenAI's 404 body.
    let (status, text, _) = setup.get("/v1/embeddings");
    assert_eq!(status, 404);
    assert_eq!(json(&text)["error"]["code"], "unknown_url");
}

#[test]
fn bad_requests_are_400_and_forward_nothing() {
    let setup = Setup::honest("ip=dhcp port=7000");
    for (body, param) in [
        (
            chat_body("Hi", r#","temperature":"hot""#),
            serde_json::Value::Null,
        ),
        (
            chat_body("Hi", r#","max_tokens":-3"#),
            serde_json::Value::Null,
        ),
        (chat_body("Hi", r#","top_p":0"#), "top_p".into()),
        (
            r#"{"messages":[{"role":"tool","content":"x"}]}"#.to_string(),
            "messages".into(),
        ),
        ("{not json".to_string(), serde_json::Value::Null),
    ] {
        let (status, text, header) = setup.post("/v1/chat/completions", &body);
        assert_eq!(status, 400, "{body}: {text}");
        let error = json(&text);
        assert_eq!(error["error"]["type"], "invalid_request_error", "{text}");
        assert_eq!(error["error"]["param"], param, "{text}");
        assert!(header.is_some());
    }
    assert!(setup.generate_requests().is_empty());
    // The appliance's own refusals: Busy is a 429.
    let (status, text, _) = setup.post("/v1/chat/completions", &chat_body("busy", ""));
    assert_eq!(status, 429, "{text}");
    assert_eq!(json(&text)["error"]["code"], "appliance_busy");
}

#[test]
fn four_concurrent_streams_complete_and_a_fifth_gets_429() {
    // The default command line reserves four generation sessions.
    let setup = Arc::new(Setup::honest("ip=dhcp port=7000"));
    assert_eq!(setup.gateway.pool().sessions(), 4);
    let (started, first_chunks) = std::sync::mpsc::channel();
    let streams: Vec<_> = (0..4)
        .map(|_| {
            let setup = Arc::clone(&setup);
            let started = started.clone();
            std::thread::spawn(move || {
                let response = ureq::post(&setup.url("/v1/chat/completions"))
                    .send_string(&chat_body("slow", r#","stream":true"#))
                    .unwrap();
                let mut lines = BufReader::new(response.into_reader()).lines();
                let first = lines.next().unwrap().unwrap();
                started.send(()).unwrap();
                let rest: Vec<String> = lines.map(Result::unwrap).collect();
                (first, rest)
            })
        })
        .collect();
    for _ in 0..4 {
        first_chunks
            .recv_timeout(Duration::from_secs(60))
            .expect("all four streams start");
    }
    let (status, text, _) = setup.post("/v1/chat/completions", &chat_body("Hi", ""));
    assert_eq!(status, 429, "{text}");
    let error = json(&text);
    assert_eq!(error["error"]["type"], "rate_limit_error");
    for stream in streams {
        let (first, rest) = stream.join().unwrap();
        assert!(first.contains(r#""role":"assistant""#), "{first}");
        assert_eq!(
            rest.iter().rev().find(|line| !line.is_empty()).unwrap(),
            "data: [DONE]"
        );
    }
    // Only the four streams went upstream.
    assert_eq!(setup.generate_requests().len(), 4);
}

#[test]
fn another_model_gets_502_naming_the_check_and_no_prompt_leaves() {
    // The appliance booted another model than the manifest's.
    let setup = Setup::new(
        TestImage::new(0, b"GGUF another model", "ip=dhcp port=7000"),
        TestImage::new(0, b"GGUF tiny test model", "ip=dhcp port=7000"),
        Duration::from_secs(30),
        64,
    );
    for (method, path, body) in [
        (
            "POST",
            "/v1/chat/completions",
            chat_body("secret prompt", ""),
        ),
        (
            "POST",
            "/v1/chat/completions",
            chat_body("secret prompt", r#","stream":true"#),
        ),
        (
            "POST",
            "/v1/completions",
            r#"{"prompt":"secret prompt"}"#.to_string(),
        ),
        ("GET", "/v1/attestation", String::new()),
    ] {
        let (status, text, _) = if method == "GET" {
            setup.get(path)
        } else {
            setup.post(path, &body)
        };
        assert_eq!(status, 502, "{path}: {text}");
        let error = json(&text);
        assert_eq!(error["error"]["type"], "verification_error", "{text}");
        let check = error["error"]["code"].as_str().unwrap();
        assert!(
            error["error"]["message"].as_str().unwrap().contains(check),
            "{text}"
        );
        eprintln!("{path}: {check}: {}", error["error"]["message"]);
    }
    // The appliance saw attestation requests and nothing else: no Generate, no prompt text.
    let requests = setup.requests.lock().unwrap();
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .all(|request| matches!(request, Request::Attest { .. })),
        "{requests:?}"
    );
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_the_session_at_once() {
    // One generation session, one connection: the next request can only succeed once the first one's session is
    // back, and the scripted stream would run 5 s unless cancelled.
    let model = b"GGUF tiny test model";
    let cmdline = "ip=dhcp port=7000 sessions=1";
    let setup = Setup::new(
        TestImage::new(0, model, cmdline),
        TestImage::new(0, model, cmdline),
        Duration::from_secs(30),
        1,
    );
    assert_eq!(setup.gateway.pool().sessions(), 1);
    let response = ureq::post(&setup.url("/v1/chat/completions"))
        .send_string(&chat_body("long", r#","stream":true"#))
        .unwrap();
    let mut reader = response.into_reader();
    let mut start = [0u8; 64];
    reader.read_exact(&mut start).unwrap();
    drop(reader);
    let disconnected = Instant::now();
    let next = loop {
        let (status, text, _) = setup.post("/v1/chat/completions", &chat_body("Hi", ""));
        if status == 200 {
            break disconnected.elapsed();
        }
        assert_eq!(status, 429, "{text}");
        assert!(
            disconnected.elapsed() < Duration::from_secs(1),
            "the session was not freed within 1 s of the disconnect"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!(
        "the next request succeeded {:.0} ms after the disconnect",
        next.as_secs_f64() * 1000.0
    );
    // The same verified session served both, and the gateway sent Cancel for the abandoned stream.
    let served = setup.finish();
    let kinds: Vec<&str> = served
        .requests
        .iter()
        .map(|request| match request {
            Request::Attest { .. } => "attest",
            Request::ActivateCredential { .. } => "activate",
            Request::Generate(_) => "generate",
            Request::Cancel => "cancel",
            Request::ModelInfo => "model info",
        })
        .collect();
    assert_eq!(
        kinds,
        ["attest", "activate", "generate", "cancel", "generate"]
    );
    assert!(served.failures.is_empty(), "{:?}", served.failures);
}

#[test]
fn an_appliance_that_stops_answering_gets_504() {
    let model = b"GGUF tiny test model";
    let setup = Setup::new(
        TestImage::new(0, model, "ip=dhcp port=7000"),
        TestImage::new(0, model, "ip=dhcp port=7000"),
        Duration::from_secs(3),
        64,
    );
    let (status, text, _) = setup.post("/v1/chat/completions", &chat_body("stall", ""));
    assert_eq!(status, 504, "{text}");
    assert_eq!(json(&text)["error"]["type"], "timeout_error");
}

#[test]
fn the_openai_python_package_streams_and_completes() {
    let setup = Setup::honest("ip=dhcp port=7000");
    let result = openai_python::run_client(&setup.url("/v1"), "Hi", 8);
    assert_eq!(result["streamed"], "Hello, world", "{result}");
    assert_eq!(result["whole"], "Hello, world", "{result}");
    assert_eq!(result["stream_finish"], "stop");
    assert_eq!(result["whole_finish"], "stop");
    assert_eq!(result["whole_object"], "chat.completion");
    assert_eq!(
        result["chunk_objects"],
        serde_json::json!(["chat.completion.chunk"])
    );
    assert_eq!(result["stream_usage"], serde_json::json!([5, 5]));
    assert_eq!(result["whole_usage"], serde_json::json!([5, 5, 10]));
    assert!(result["attestation"]
        .as_str()
        .unwrap()
        .starts_with("kernel="));
    assert_eq!(result["bad_request"][0], 400);
    // Both chat requests went upstream greedy with the limit asked for; the bad one went nowhere.
    let sent = setup.generate_requests();
    assert_eq!(sent.len(), 2);
    assert!(sent
        .iter()
        .all(|request| request.max_tokens == 8 && request.sampling.temperature == 0.0));
}
