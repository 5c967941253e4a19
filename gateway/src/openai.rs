//! The OpenAI API's JSON as the gateway speaks it: the chat and text completion requests it accepts, the
//! objects and Server-Sent-Event chunks it answers with, and the error body (OpenAI API reference, "Chat",
//! "Completions", "Models", "Error codes"; docs/ARCHITECTURE.md, "The OpenAI-compatible gateway").
//!
//! Requests are parsed the way OpenAI parses them: fields the gateway does not know are ignored, a known field of
//! the wrong type is a 400. The mapping onto the appliance's [`GenerateRequest`] is here too, so the chat turns go
//! to the appliance as [`Prompt::Chat`] and the appliance applies its model's chat template (the same path as
//! `cloister chat`; the template itself is the model crate's, `model::chat`).

use net::proto::{ChatMessage, Done, FinishReason, GenerateRequest, Prompt, Role, Sampling};
use serde::{Deserialize, Serialize};

/// Tokens generated when a request names no limit (OpenAI's own default for `/v1/completions` is 16, which is
/// too short to be useful; README, "Using the OpenAI API").
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// Most stop sequences a request may carry (OpenAI's limit).
pub const MAX_STOP_SEQUENCES: usize = 4;

/// A request the gateway refuses before anything is sent upstream, with the parameter at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRequest {
    /// What is wrong, for a person.
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<&'static str>,
}

impl InvalidRequest {
    fn new(message: impl Into<String>, param: &'static str) -> Self {
        Self {
            message: message.into(),
            param: Some(param),
        }
    }
}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Stop {
    /// One sequence.
    One(String),
    /// Up to [`MAX_STOP_SEQUENCES`].
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct StreamOptions {
    /// Send one more chunk before `[DONE]` carrying `usage` (and no choices).
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The sampling fields chat and text completions share.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct SamplingFields {
    /// Deprecated name of `max_completion_tokens`; either is accepted.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Tokens to generate at most.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// 0 (greedy) to 2; OpenAI's default is 1.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling, (0, 1].
    #[serde(default)]
    pub top_p: Option<f32>,
    /// The appliance sampler's seed; random when absent.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Stop sequences.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Completions per prompt: only 1 is served.
    #[serde(default)]
    pub n: Option<u32>,
    /// Answer as Server-Sent Events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Options of the event stream.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

impl SamplingFields {
    /// The appliance request for `prompt`; `random_seed` is used when the request names no seed.
    fn generate_request(
        &self,
        prompt: Prompt,
        random_seed: u64,
    ) -> Result<GenerateRequest, InvalidRequest> {
        let max_tokens = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS);
        if max_tokens == 0 {
            return Err(InvalidRequest::new(
                "max_tokens must be at least 1",
                "max_tokens",
            ));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(InvalidRequest::new(
                "temperature must be between 0 and 2",
                "temperature",
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(InvalidRequest::new(
                "top_p must be greater than 0 and at most 1",
                "top_p",
            ));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(InvalidRequest::new(
                "only n = 1 is supported: the appliance generates one completion per request",
                "n",
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(stop)) => vec![stop.clone()],
            Some(Stop::Many(stops)) => stops.clone(),
        };
        if stop.len() > MAX_STOP_SEQUENCES || stop.iter().any(String::is_empty) {
            return Err(InvalidRequest::new(
                format!("stop takes at most {MAX_STOP_SEQUENCES} non-empty sequences"),
                "stop",
            ));
        }
        Ok(GenerateRequest {
            prompt,
            max_tokens,
            sampling: Sampling {
                temperature,
                top_k: 0,
                top_p,
                seed: self.seed.unwrap_or(random_seed),
            },
            stop,
        })
    }

    /// True for `stream: true`.
    pub fn streams(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// True when the stream ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|options| options.include_usage)
            .unwrap_or(false)
    }
}

/// One part of a message's content given as a list (only text parts are served).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ContentPart {
    /// `text` (anything else is refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// A message's content: a string or a list of parts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Parts, concatenated.
    Parts(Vec<ContentPart>),
}

/// One message of a chat request.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Message {
    /// `system`, `developer` (served as system), `user` or `assistant`.
    pub role: String,
    /// The text; `null` counts as empty (an assistant message may carry none).
    #[serde(default)]
    pub content: Option<Content>,
}

/// The body of `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ChatCompletionRequest {
    /// The model asked for (the appliance serves one; any name is answered by it).
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Sampling and streaming.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

impl ChatCompletionRequest {
    /// The appliance request: the messages as chat turns, which the appliance formats with its model's template.
    pub fn generate_request(&self, random_seed: u64) -> Result<GenerateRequest, InvalidRequest> {
        if self.messages.is_empty() {
            return Err(InvalidRequest::new(
                "messages must hold at least one message",
                "messages",
            ));
        }
        let messages = self
            .messages
            .iter()
            .map(chat_message)
            .collect::<Result<Vec<_>, _>>()?;
        self.sampling
            .generate_request(Prompt::Chat(messages), random_seed)
    }
}

fn chat_message(message: &Message) -> Result<ChatMessage, InvalidRequest> {
    let role = match message.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => {
            return Err(InvalidRequest::new(
                format!("role {other:?} is not served: use system, user or assistant"),
                "messages",
            ))
        }
    };
    let content = match &message.content {
        None => String::new(),
        Some(Content::Text(text)) => text.clone(),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(part)) => text.push_str(part),
                    _ => {
                        return Err(InvalidRequest::new(
                            format!(
                                "content parts of type {:?} are not served: only text",
                                part.kind
                            ),
                            "messages",
                        ))
                    }
                }
            }
            text
        }
    };
    Ok(ChatMessage { role, content })
}

/// `prompt` of a text completion: one string, or a list holding exactly one.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum CompletionPrompt {
    /// One prompt.
    One(String),
    /// A batch (only one prompt is served).
    Many(Vec<String>),
}

/// The body of `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CompletionRequest {
    /// The model asked for.
    #[serde(default)]
    pub model: Option<String>,
    /// The raw prompt, sent without a chat template.
    pub prompt: CompletionPrompt,
    /// Sampling and streaming.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

impl CompletionRequest {
    /// The appliance request: the prompt as raw text.
    pub fn generate_request(&self, random_seed: u64) -> Result<GenerateRequest, InvalidRequest> {
        let prompt = match &self.prompt {
            CompletionPrompt::One(prompt) => prompt.clone(),
            CompletionPrompt::Many(prompts) if prompts.len() == 1 => prompts[0].clone(),
            CompletionPrompt::Many(_) => {
                return Err(InvalidRequest::new(
                    "prompt must be one string: the appliance serves one prompt per request",
                    "prompt",
                ))
            }
        };
        self.sampling
            .generate_request(Prompt::Text(prompt), random_seed)
    }
}

/// Parses a request body; unknown fields are ignored, wrong types and malformed JSON are an [`InvalidRequest`].
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, InvalidRequest> {
    serde_json::from_slice(body).map_err(|error| InvalidRequest {
        message: format!("the request body is not a valid request: {error}"),
        param: None,
    })
}

/// OpenAI's `finish_reason` for how the appliance ended a generation.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::EndOfText | FinishReason::Stop => "stop",
    }
}

/// `usage`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the prompt as the appliance tokenized it (chat template included).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Their sum.
    pub total_tokens: u32,
}

impl Usage {
    /// The usage the appliance reported in its `Done`.
    pub fn from_done(done: &Done) -> Self {
        Self {
            prompt_tokens: done.prompt_tokens,
            completion_tokens: done.generated_tokens,
            total_tokens: done.prompt_tokens.saturating_add(done.generated_tokens),
        }
    }
}

/// The assistant's message in a `chat.completion`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The generated text.
    pub content: String,
}

/// One choice of a `chat.completion`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatChoice {
    /// Always 0.
    pub index: u32,
    /// The answer.
    pub message: AssistantMessage,
    /// Always null (not computed).
    pub logprobs: Option<()>,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
}

/// The `chat.completion` object.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatCompletion {
    /// `chatcmpl-...`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model's id ([`crate::pool::Upstream::model_id`]).
    pub model: String,
    /// One choice.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// What a chunk's `delta` carries.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Delta {
    /// `assistant` in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// Text, in the content chunks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a `chat.completion.chunk`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChunkChoice {
    /// Always 0.
    pub index: u32,
    /// The increment.
    pub delta: Delta,
    /// Always null.
    pub logprobs: Option<()>,
    /// Null until the last chunk with choices.
    pub finish_reason: Option<&'static str>,
}

/// The `chat.completion.chunk` object, one per Server-Sent Event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatCompletionChunk {
    /// The same id in every chunk of one stream.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds, the same in every chunk.
    pub created: u64,
    /// The model's id.
    pub model: String,
    /// One choice, or none in the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Only in the usage chunk (`stream_options.include_usage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice of a `text_completion` (whole or chunk).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TextChoice {
    /// The text (all of it, or the chunk's increment).
    pub text: String,
    /// Always 0.
    pub index: u32,
    /// Always null.
    pub logprobs: Option<()>,
    /// `stop` or `length`; null in chunks before the last.
    pub finish_reason: Option<&'static str>,
}

/// The `text_completion` object; streamed chunks have the same shape.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TextCompletion {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model's id.
    pub model: String,
    /// One choice, or none in the usage chunk.
    pub choices: Vec<TextChoice>,
    /// Token counts (in a stream: only in the usage chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One entry of `GET /v1/models`, with the measured model's digest and size beside OpenAI's fields.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Model {
    /// The id requests may name.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// Unix seconds; 0 (the manifest records no date).
    pub created: u64,
    /// `cloister`.
    pub owned_by: &'static str,
    /// SHA-256 of the model file, hex: the digest the appliance must have measured into PCR 13.
    pub sha256: String,
    /// Its length in bytes.
    pub size: u64,
}

/// The body of `GET /v1/models`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    /// The one model.
    pub data: Vec<Model>,
}

/// The `error` member of an error body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    /// What went wrong, for a person.
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, ...; `verification_error` for a refused appliance).
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault.
    pub param: Option<String>,
    /// A short machine-readable code; for a verification failure the name of the check.
    pub code: Option<String>,
}

/// OpenAI's error body: `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<GenerateRequest, InvalidRequest> {
        parse::<ChatCompletionRequest>(body.as_bytes())?.generate_request(7)
    }

    #[test]
    fn a_chat_request_becomes_chat_turns_with_its_sampling() {
        let request = chat(
            r#"{"model":"x","messages":[{"role":"system","content":"Be brief."},
                {"role":"user","content":[{"type":"text","text":"Hi"},{"type":"text","text":" there"}]},
                {"role":"assistant","content":null},{"role":"developer","content":"d"}],
                "max_completion_tokens":9,"max_tokens":3,"temperature":0,"top_p":0.5,"seed":42,
                "stop":"\n","stream":true,"logit_bias":{},"user":"u"}"#,
        )
        .unwrap();
        assert_eq!(
            request.prompt,
            Prompt::Chat(vec![
                ChatMessage {
                    role: Role::System,
                    content: "Be brief.".into()
                },
                ChatMessage {
                    role: Role::User,
                    content: "Hi there".into()
                },
                ChatMessage {
                    role: Role::Assistant,
                    content: String::new()
                },
                ChatMessage {
                    role: Role::System,
                    content: "d".into()
                },
            ])
        );
        // max_completion_tokens wins over its deprecated twin.
        assert_eq!(request.max_tokens, 9);
        assert_eq!(
            request.sampling,
            Sampling {
                temperature: 0.0,
                top_k: 0,
                top_p: 0.5,
                seed: 42
            }
        );
        assert_eq!(request.stop, ["\n"]);
    }

    #[test]
    fn defaults_follow_openai_and_the_seed_is_random_when_absent() {
        let request = chat(r#"{"messages":[{"role":"user","content":"Hi"}]}"#).unwrap();
        assert_eq!(request.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(request.sampling.temperature, 1.0);
        assert_eq!(request.sampling.top_p, 1.0);
        assert_eq!(request.sampling.seed, 7);
        assert!(request.stop.is_empty());
        let request = chat(
            r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":5,"stop":["a","b"]}"#,
        )
        .unwrap();
        assert_eq!(request.max_tokens, 5);
        assert_eq!(request.stop, ["a", "b"]);
    }

    #[test]
    fn wrong_types_and_values_are_refused_naming_the_field() {
        for (body, param) in [
            (
                r#"{"messages":[{"role":"tool","content":"x"}]}"#,
                Some("messages"),
            ),
            (r#"{"messages":[]}"#, Some("messages")),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                Some("messages"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                Some("temperature"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"top_p":0}"#,
                Some("top_p"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#,
                Some("n"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#,
                Some("stop"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                None,
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
                None,
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                None,
            ),
            (r#"{"messages":"hello"}"#, None),
            (r#"{"model":"x"}"#, None),
            (r#"not json"#, None),
        ] {
            let error = chat(body).unwrap_err();
            assert_eq!(error.param, param, "{body}: {}", error.message);
        }
    }

    #[test]
    fn a_text_completion_is_a_raw_prompt() {
        let request =
            parse::<CompletionRequest>(br#"{"model":"m","prompt":["Once"],"max_tokens":4}"#)
                .unwrap()
                .generate_request(1)
                .unwrap();
        assert_eq!(request.prompt, Prompt::Text("Once".into()));
        assert_eq!(request.max_tokens, 4);
        let error = parse::<CompletionRequest>(br#"{"prompt":["a","b"]}"#)
            .unwrap()
            .generate_request(1)
            .unwrap_err();
        assert_eq!(error.param, Some("prompt"));
    }

    #[test]
    fn objects_serialize_as_openai_documents_them() {
        let chunk = ChatCompletionChunk {
            id: "chatcmpl-1".into(),
            object: "chat.completion.chunk",
            created: 5,
            model: "m".into(),
            choices: vec![ChunkChoice {
                index: 0,
                delta: Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                },
                logprobs: None,
                finish_reason: None,
            }],
            usage: None,
        };
        assert_eq!(
            serde_json::to_string(&chunk).unwrap(),
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":5,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#
        );
        let error = ErrorBody {
            error: ErrorDetail {
                message: "m".into(),
                kind: "invalid_request_error".into(),
                param: None,
                code: None,
            },
        };
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"error":{"message":"m","type":"invalid_request_error","param":null,"code":null}}"#
        );
        assert_eq!(finish_reason(FinishReason::EndOfText), "stop");
        assert_eq!(finish_reason(FinishReason::Stop), "stop");
        assert_eq!(finish_reason(FinishReason::Length), "length");
    }
}
