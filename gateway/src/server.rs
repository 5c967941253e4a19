//! The gateway's HTTP server (axum on tokio and hyper): the OpenAI routes, Server-Sent Events in OpenAI's chunk
//! format, OpenAI's error body with fitting status codes, and the attestation header on every response
//! (docs/ARCHITECTURE.md, "The OpenAI-compatible gateway"; SSE framing per the WHATWG HTML standard, §9.2
//! "Server-sent events": `data: <json>` lines, each event ended by a blank line).
//!
//! A generation's HTTP status is decided only after the verification and the appliance's first frame: a refused
//! verification is a 502, `Busy` a 429, both before any byte of a 200 went out. Once a stream has started, a
//! failure ends it with one `data: {"error": ...}` event and no `[DONE]`. A client that goes away drops the
//! response body, which closes the channel from the generation thread, which then sends `Cancel`
//! ([`crate::pool::Pool::generate`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use net::proto::{Done, ErrorCode, GenerateRequest};
use rand::distributions::{Alphanumeric, DistString as _};
use rand::RngCore as _;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::openai::{
    self, AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
    ChunkChoice, CompletionRequest, Delta, ErrorBody, ErrorDetail, InvalidRequest, Model,
    ModelList, TextChoice, TextCompletion, Usage,
};
use crate::pool::{
    spawn_generation, Pool, Upstream, UpstreamError, Verification, ATTESTATION_HEADER,
};

/// What every handler shares.
#[derive(Clone)]
struct Gateway {
    pool: Arc<Pool>,
    model: Model,
}

/// The routes, over `pool`.
pub fn router(pool: Arc<Pool>) -> Router {
    let manifest = pool.manifest();
    let sha256 = manifest.model.sha256.to_string();
    let model = Model {
        id: model_id(&sha256),
        object: "model",
        created: 0,
        owned_by: "cloister",
        sha256,
        size: manifest.model.length,
    };
    let gateway = Gateway { pool, model };
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/attestation", get(attestation))
        .fallback(not_found)
        .layer(axum::middleware::map_response_with_state(
            gateway.clone(),
            attestation_header,
        ))
        .with_state(gateway)
}

/// The id `GET /v1/models` lists for the manifest's model: `cloister-` and the first 12 hex digits of its SHA-256.
/// Requests may name any model: the appliance serves the one it measured.
pub fn model_id(sha256_hex: &str) -> String {
    format!("cloister-{}", &sha256_hex[..12.min(sha256_hex.len())])
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pool: Arc<Pool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(pool))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Adds the header of the most recent verification to a response that has none of its own (a generation sets the
/// header of the session it used); `none` before any verification passed.
async fn attestation_header(State(gateway): State<Gateway>, mut response: Response) -> Response {
    if !response.headers().contains_key(ATTESTATION_HEADER) {
        let value = gateway.pool.last_verification().map_or_else(
            || "none".to_string(),
            |verification| verification.header_value(),
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(ATTESTATION_HEADER, value);
        }
    }
    response
}

fn set_attestation(response: &mut Response, verification: Option<&Verification>) {
    if let Some(value) = verification.and_then(|v| HeaderValue::from_str(&v.header_value()).ok()) {
        response.headers_mut().insert(ATTESTATION_HEADER, value);
    }
}

/// OpenAI's error body with `status`.
fn error_response(
    status: StatusCode,
    kind: &str,
    message: String,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            message,
            kind: kind.to_string(),
            param: param.map(str::to_string),
            code: code.map(str::to_string),
        },
    };
    (status, axum::Json(body)).into_response()
}

fn invalid(error: InvalidRequest) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        error.message,
        error.param,
        None,
    )
}

/// The status, OpenAI error type and code for an upstream failure.
fn upstream_status(error: &UpstreamError) -> (StatusCode, &'static str, Option<&'static str>) {
    match error {
        UpstreamError::PoolFull | UpstreamError::Appliance(ErrorCode::Busy) => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("appliance_busy"),
        ),
        UpstreamError::Appliance(ErrorCode::ContextExceeded) => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("context_length_exceeded"),
        ),
        UpstreamError::Appliance(
            ErrorCode::TooLarge | ErrorCode::BadRequest | ErrorCode::InvalidToken,
        ) => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
        UpstreamError::Appliance(ErrorCode::Timeout) | UpstreamError::Timeout(_) => {
            (StatusCode::GATEWAY_TIMEOUT, "timeout_error", None)
        }
        UpstreamError::Verification { check, .. } => {
            (StatusCode::BAD_GATEWAY, "verification_error", Some(check))
        }
        UpstreamError::Appliance(_) | UpstreamError::Failed(_) => {
            (StatusCode::BAD_GATEWAY, "upstream_error", None)
        }
    }
}

fn upstream_error(error: &UpstreamError) -> Response {
    let (status, kind, code) = upstream_status(error);
    error_response(status, kind, error.to_string(), None, code)
}

/// The same error as an SSE event, for a stream that already started.
fn upstream_error_event(error: &UpstreamError) -> Bytes {
    let (_, kind, code) = upstream_status(error);
    event(&ErrorBody {
        error: ErrorDetail {
            message: error.to_string(),
            kind: kind.to_string(),
            param: None,
            code: code.map(str::to_string),
        },
    })
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such route: the gateway serves POST /v1/chat/completions, POST /v1/completions, GET /v1/models and \
         GET /v1/attestation"
            .to_string(),
        None,
        Some("unknown_url"),
    )
}

async fn models(State(gateway): State<Gateway>) -> Response {
    axum::Json(ModelList {
        object: "list",
        data: vec![gateway.model.clone()],
    })
    .into_response()
}

/// The last verification's report, as `cloister verify --json` prints it; verifies a session first when none
/// passed yet.
async fn attestation(State(gateway): State<Gateway>) -> Response {
    let verification = match gateway.pool.last_verification() {
        Some(verification) => verification,
        None => {
            let pool = Arc::clone(&gateway.pool);
            match tokio::task::spawn_blocking(move || pool.verify_one()).await {
                Ok(Ok(verification)) => verification,
                Ok(Err(error)) => return upstream_error(&error),
                Err(_) => {
                    return upstream_error(&UpstreamError::Failed(
                        "the verification thread failed".to_string(),
                    ))
                }
            }
        }
    };
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        verification.report.to_json(),
    )
        .into_response();
    set_attestation(&mut response, Some(&verification));
    response
}

/// Which API a generation answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Chat,
    Text,
}

async fn chat_completions(State(gateway): State<Gateway>, body: Bytes) -> Response {
    let request = match openai::parse::<ChatCompletionRequest>(&body) {
        Ok(request) => request,
        Err(error) => return invalid(error),
    };
    match request.generate_request(rand::rngs::OsRng.next_u64()) {
        Ok(generate) => generation(&gateway, Api::Chat, generate, &request.sampling).await,
        Err(error) => invalid(error),
    }
}

async fn completions(State(gateway): State<Gateway>, body: Bytes) -> Response {
    let request = match openai::parse::<CompletionRequest>(&body) {
        Ok(request) => request,
        Err(error) => return invalid(error),
    };
    match request.generate_request(rand::rngs::OsRng.next_u64()) {
        Ok(generate) => generation(&gateway, Api::Text, generate, &request.sampling).await,
        Err(error) => invalid(error),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// One generation: wait for the verification and the first frame, then answer whole or as a stream.
async fn generation(
    gateway: &Gateway,
    api: Api,
    request: GenerateRequest,
    sampling: &openai::SamplingFields,
) -> Response {
    let permit = match gateway.pool.try_reserve() {
        Ok(permit) => permit,
        Err(error) => return upstream_error(&error),
    };
    let mut events = spawn_generation(&gateway.pool, permit, request);
    let mut verification = None;
    let first = loop {
        match events.recv().await {
            Some(Upstream::Verified(used)) => verification = Some(used),
            Some(event) => break event,
            None => {
                break Upstream::Failed(UpstreamError::Failed(
                    "the generation thread ended without an answer".to_string(),
                ))
            }
        }
    };
    let mut response = match first {
        Upstream::Failed(error) => upstream_error(&error),
        first => {
            let answer = Answer {
                api,
                id: completion_id(api),
                created: unix_now(),
                model: gateway.model.id.clone(),
            };
            if sampling.streams() {
                answer.stream(first, events, sampling.include_usage())
            } else {
                answer.whole(first, events).await
            }
        }
    };
    set_attestation(&mut response, verification.as_deref());
    response
}

fn completion_id(api: Api) -> String {
    let prefix = match api {
        Api::Chat => "chatcmpl",
        Api::Text => "cmpl",
    };
    format!(
        "{prefix}-{}",
        Alphanumeric.sample_string(&mut rand::rngs::OsRng, 24)
    )
}

/// One SSE event carrying `value` as JSON.
fn event(value: &impl Serialize) -> Bytes {
    // Plain data with string keys always serialises.
    let json = serde_json::to_string(value).unwrap_or_default();
    Bytes::from(format!("data: {json}\n\n"))
}

/// The event that ends every complete stream.
const DONE_EVENT: &str = "data: [DONE]\n\n";

/// The fixed fields of one answer.
struct Answer {
    api: Api,
    id: String,
    created: u64,
    model: String,
}

impl Answer {
    /// Collects the whole generation into one `chat.completion` or `text_completion`.
    async fn whole(
        self,
        first: Upstream,
        mut events: mpsc::UnboundedReceiver<Upstream>,
    ) -> Response {
        let mut text = String::new();
        let mut event = Some(first);
        let done = loop {
            let next = match event.take() {
                Some(first) => Some(first),
                None => events.recv().await,
            };
            match next {
                Some(Upstream::Token(token)) => text.push_str(&token),
                Some(Upstream::Done(done)) => break done,
                Some(Upstream::Verified(_)) => {}
                Some(Upstream::Failed(error)) => return upstream_error(&error),
                Some(Upstream::Cancelled) | None => {
                    return upstream_error(&UpstreamError::Failed(
                        "the generation ended without its Done".to_string(),
                    ))
                }
            }
        };
        let usage = Usage::from_done(&done);
        let finish_reason = openai::finish_reason(done.reason);
        match self.api {
            Api::Chat => axum::Json(ChatCompletion {
                id: self.id,
                object: "chat.completion",
                created: self.created,
                model: self.model,
                choices: vec![ChatChoice {
                    index: 0,
                    message: AssistantMessage {
                        role: "assistant",
                        content: text,
                    },
                    logprobs: None,
                    finish_reason,
                }],
                usage,
            })
            .into_response(),
            Api::Text => axum::Json(TextCompletion {
                id: self.id,
                object: "text_completion",
                created: self.created,
                model: self.model,
                choices: vec![TextChoice {
                    text,
                    index: 0,
                    logprobs: None,
                    finish_reason: Some(finish_reason),
                }],
                usage: Some(usage),
            })
            .into_response(),
        }
    }

    fn chat_chunk(&self, delta: Delta, finish_reason: Option<&'static str>) -> Bytes {
        event(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: None,
        })
    }

    fn text_chunk(&self, text: String, finish_reason: Option<&'static str>) -> Bytes {
        event(&TextCompletion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices: vec![TextChoice {
                text,
                index: 0,
                logprobs: None,
                finish_reason,
            }],
            usage: None,
        })
    }

    /// The chunk carrying one token's text.
    fn token_chunk(&self, text: String) -> Bytes {
        match self.api {
            Api::Chat => self.chat_chunk(
                Delta {
                    role: None,
                    content: Some(text),
                },
                None,
            ),
            Api::Text => self.text_chunk(text, None),
        }
    }

    /// The chunks after the last token: the finish reason, the usage when asked for, `[DONE]`.
    fn final_chunks(&self, done: &Done, include_usage: bool) -> Vec<Bytes> {
        let reason = Some(openai::finish_reason(done.reason));
        let mut chunks = vec![match self.api {
            Api::Chat => self.chat_chunk(Delta::default(), reason),
            Api::Text => self.text_chunk(String::new(), reason),
        }];
        if include_usage {
            let usage = Some(Usage::from_done(done));
            chunks.push(match self.api {
                Api::Chat => event(&ChatCompletionChunk {
                    id: self.id.clone(),
                    object: "chat.completion.chunk",
                    created: self.created,
                    model: self.model.clone(),
                    choices: Vec::new(),
                    usage,
                }),
                Api::Text => event(&TextCompletion {
                    id: self.id.clone(),
                    object: "text_completion",
                    created: self.created,
                    model: self.model.clone(),
                    choices: Vec::new(),
                    usage,
                }),
            });
        }
        chunks.push(Bytes::from_static(DONE_EVENT.as_bytes()));
        chunks
    }

    /// Streams the generation as Server-Sent Events. The events are made on a task of their own that also watches
    /// the body: when the client disconnects, the body and its channel are dropped, the task drops `events`, and
    /// the generation thread sends `Cancel`.
    fn stream(
        self,
        first: Upstream,
        mut events: mpsc::UnboundedReceiver<Upstream>,
        include_usage: bool,
    ) -> Response {
        let (body, chunks) = mpsc::unbounded_channel::<Bytes>();
        tokio::spawn(async move {
            if self.api == Api::Chat {
                let role = self.chat_chunk(
                    Delta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                    },
                    None,
                );
                if body.send(role).is_err() {
                    return;
                }
            }
            let mut event = Some(first);
            loop {
                let next = match event.take() {
                    Some(next) => Some(next),
                    None => tokio::select! {
                        next = events.recv() => next,
                        () = body.closed() => return,
                    },
                };
                let (chunks, last) = match next {
                    Some(Upstream::Token(text)) => (vec![self.token_chunk(text)], false),
                    Some(Upstream::Verified(_)) => continue,
                    Some(Upstream::Done(done)) => (self.final_chunks(&done, include_usage), true),
                    Some(Upstream::Failed(error)) => (vec![upstream_error_event(&error)], true),
                    Some(Upstream::Cancelled) | None => (
                        vec![upstream_error_event(&UpstreamError::Failed(
                            "the generation ended without its Done".to_string(),
                        ))],
                        true,
                    ),
                };
                for chunk in chunks {
                    if body.send(chunk).is_err() {
                        return;
                    }
                }
                if last {
                    return;
                }
            }
        });
        let stream = futures_util::stream::unfold(chunks, |mut chunks| async move {
            chunks
                .recv()
                .await
                .map(|chunk| (Ok::<_, Infallible>(chunk), chunks))
        });
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}
