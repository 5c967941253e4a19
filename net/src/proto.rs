//! The appliance protocol's messages: what a client may ask and what the appliance answers (docs/ARCHITECTURE.md §5).
//!
//! Each message is one postcard-encoded enum in one frame (see [`crate::frame`]). Postcard writes an
//! enum as its variant index (varint) followed by the fields in order, so the variant order below is
//! part of the wire format: append new variants, never reorder. README.md pins example bytes.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::frame::{self, FrameError};

/// The TCP port the appliance listens on inside the guest.
pub const APPLIANCE_PORT: u16 = 7000;

/// A client's request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Ask for the length and SHA-256 of the model blob, as the appliance computed them at boot.
    ModelInfo,
    /// Ask for a fresh TPM quote over the PCRs in `pcr_mask` (bit n = PCR n), qualified by
    /// [`qualifying_data`] of `nonce`, with everything needed to check it ([`Evidence`]).
    Attest {
        /// The client's fresh random nonce.
        nonce: [u8; 32],
        /// PCRs to quote, one bit each (PCRs 0-23).
        pcr_mask: u32,
    },
    /// TPM2_ActivateCredential with the appliance's EK and AK: proves the AK lives in the TPM
    /// that holds the certified EK. Fields are TPM2B payloads as MakeCredential produced them.
    ActivateCredential {
        /// TPM2B_ID_OBJECT contents (integrity HMAC and encrypted credential).
        credential_blob: Vec<u8>,
        /// TPM2B_ENCRYPTED_SECRET contents (the seed, RSA-OAEP encrypted to the EK).
        secret: Vec<u8>,
    },
    /// Run the model: answered by a stream of [`Response::Token`] frames ended by one [`Response::Done`], or
    /// by one [`Response::Error`] (the stream ends there too). One generation at a time per connection.
    Generate(GenerateRequest),
    /// Stop this connection's running generation: the stream ends with `Error(Cancelled)`. Ignored (no
    /// answer) when nothing is running, so a cancel racing the last token is harmless.
    Cancel,
}

/// What to generate from and how (docs/ARCHITECTURE.md §5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// Tokens to generate at most (the stream may end earlier: end of text or a stop string).
    pub max_tokens: u32,
    /// How the next token is chosen.
    pub sampling: Sampling,
    /// Generation ends, with reason [`FinishReason::Stop`], once the text ends with one of these.
    pub stop: Vec<String>,
}

/// The three ways to give a prompt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Prompt {
    /// Raw text, tokenized with special tokens parsed and BOS as the model's vocabulary says.
    Text(String),
    /// Chat turns, formatted in the model family's own turn format (ChatML for SmolLM2, with its default
    /// system prompt when none is given; Gemma's turn format), ending with the assistant's turn opened.
    Chat(Vec<ChatMessage>),
    /// Token ids, used as they are (no BOS added).
    Tokens(Vec<u32>),
}

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: Role,
    /// What they say.
    pub content: String,
}

/// The speaker of a chat turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Instructions for the assistant (Gemma has no system turn: its text is put before the first user turn).
    System,
    /// The user.
    User,
    /// The model's earlier answers.
    Assistant,
}

/// Sampling parameters (the engine's sampler; `temperature` 0 is greedy).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: no limit).
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0: no limit).
    pub top_p: f32,
    /// Seed of the sampler's random generator: same seed, same request, same output.
    pub seed: u64,
}

impl Sampling {
    /// Greedy decoding.
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    };
}

/// The appliance's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::ModelInfo`].
    ModelInfo(ModelInfo),
    /// The request could not be served; the connection may be closed after this frame.
    Error(ErrorCode),
    /// Answer to [`Request::Attest`].
    Evidence(Evidence),
    /// Answer to [`Request::ActivateCredential`]: the recovered credential.
    Credential(Vec<u8>),
    /// One generated token of a [`Request::Generate`] stream.
    Token(Token),
    /// The end of a [`Request::Generate`] stream.
    Done(Done),
}

impl Response {
    /// What kind of answer this is, in plain words, for messages about an answer that was not expected.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ModelInfo(_) => "model information",
            Self::Error(_) => "an error",
            Self::Evidence(_) => "attestation evidence",
            Self::Credential(_) => "an activated credential",
            Self::Token(_) => "a generated token",
            Self::Done(_) => "the end of a generation",
        }
    }
}

/// One generated token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The token id.
    pub id: u32,
    /// The text this token completes: valid UTF-8, possibly empty while a multi-byte character is still
    /// incomplete (its bytes come with a later token). Concatenating every frame's text gives the output.
    pub text: String,
}

/// Why a generation ended normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// `max_tokens` were generated.
    Length,
    /// The model produced an end-of-text or end-of-turn token (sent as the last token frame).
    EndOfText,
    /// The text reached one of the request's stop strings.
    Stop,
}

/// The final frame of a generation: usage and timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Why it ended.
    pub reason: FinishReason,
    /// Tokens in the prompt as the appliance tokenized it.
    pub prompt_tokens: u32,
    /// Tokens generated (token frames sent).
    pub generated_tokens: u32,
    /// Time spent on the prompt, in microseconds (appliance clock).
    pub prefill_us: u64,
    /// Time spent generating, in microseconds, from the first to the last token.
    pub decode_us: u64,
}

/// What the appliance returns for an attestation request (docs/ARCHITECTURE.md §4). Every byte string is
/// exactly what the TPM produced, so a verifier (or `tpm2_checkquote`) can check it unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// TPMS_ATTEST, as signed.
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE over `attest` by the AK.
    pub signature: Vec<u8>,
    /// TPMT_PUBLIC of the attestation key.
    pub ak_public: Vec<u8>,
    /// TPMT_PUBLIC of the endorsement key (RSA-2048, TCG default template).
    pub ek_public: Vec<u8>,
    /// The EK certificate (DER) read from NV index 0x01C00002.
    pub ek_certificate: Vec<u8>,
    /// Values of the quoted PCRs (SHA-256 bank), ascending PCR order.
    pub pcr_values: Vec<[u8; 32]>,
    /// The measurement event log (`tpm::eventlog` format).
    pub event_log: Vec<u8>,
    /// The whole boot's log in the crypto-agile TCG_PCR_EVENT2 format (`tpm::tcg_log`): the firmware's events as
    /// the EFI stub handed them over, then the kernel's own PCR 12-14 events; on the direct path a SHA-256-only
    /// header and the kernel's events (docs/ARCHITECTURE.md §4).
    pub firmware_log: Vec<u8>,
}

/// Domain-separation label for quote qualifying data.
pub const QUALIFYING_DATA_LABEL: &[u8] = b"cloister attest v2\0";

/// The TLS session an attest request arrived on (docs/ARCHITECTURE.md §4): what ties a quote to one session of one
/// appliance instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelBinding {
    /// SHA-256 of the server certificate's DER SubjectPublicKeyInfo (the key generated at this boot).
    pub spki_sha256: [u8; 32],
    /// The session's 32-byte exporter value (RFC 8446 §7.5, label `tls::ATTESTATION_EXPORTER_LABEL`).
    pub exporter: [u8; 32],
}

/// The quote's extraData: SHA-256(label || nonce || spki_sha256 || exporter). A quote made for another
/// nonce, another appliance key or another TLS session has different qualifying data.
pub fn qualifying_data(nonce: &[u8; 32], binding: &ChannelBinding) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(QUALIFYING_DATA_LABEL);
    hasher.update(nonce);
    hasher.update(binding.spki_sha256);
    hasher.update(binding.exporter);
    hasher.finalize().into()
}

/// What the appliance knows about the model it booted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Length of the model blob in bytes.
    pub length: u64,
    /// SHA-256 of the model blob.
    pub sha256: [u8; 32],
}

/// Typed errors the appliance reports in an [`Response::Error`] frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame body was not a valid request (bad tag, truncated fields or trailing bytes).
    BadFrame,
    /// The frame header announced a body over [`frame::MAX_FRAME_LEN`].
    TooLarge,
    /// Every session slot is in use; try again later.
    Busy,
    /// The client was idle for too long.
    Timeout,
    /// The request's arguments were refused (for example an empty or out-of-range PCR mask).
    BadRequest,
    /// The TPM failed to carry out the request.
    TpmFailure,
    /// The prompt plus `max_tokens` does not fit the serving context (or the prompt alone does not).
    ContextExceeded,
    /// A prompt token id is outside the model's vocabulary.
    InvalidToken,
    /// The generation was stopped by [`Request::Cancel`].
    Cancelled,
    /// The request needs a channel binding (TLS) that this connection does not have.
    Unbound,
}

impl ErrorCode {
    /// The code in plain words, as error messages and `cloister chat --json` name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::BadFrame => "bad frame",
            Self::TooLarge => "too large",
            Self::Busy => "busy",
            Self::Timeout => "timeout",
            Self::BadRequest => "bad request",
            Self::TpmFailure => "TPM failure",
            Self::ContextExceeded => "context exceeded",
            Self::InvalidToken => "invalid token",
            Self::Cancelled => "cancelled",
            Self::Unbound => "unbound",
        }
    }
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, out: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        out.write_str(self.name())
    }
}

/// Why bytes could not be turned into a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Postcard could not decode the body.
    Malformed,
    /// The body decoded but bytes were left over.
    TrailingBytes,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, out: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        out.write_str(match self {
            Self::Malformed => "the message does not decode",
            Self::TrailingBytes => "the message has bytes after its end",
        })
    }
}

fn decode_exact<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(body).map_err(|_| DecodeError::Malformed)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(DecodeError::TrailingBytes)
    }
}

fn emit_message<T: Serialize>(message: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    // Encoding our own message types into a Vec cannot fail except by running out of memory.
    let body = postcard::to_allocvec(message).map_err(|_| FrameError::Empty)?;
    frame::emit(&body, out)
}

impl Request {
    /// Decodes a frame body; the whole body must be exactly one request.
    pub fn parse(body: &[u8]) -> Result<Self, DecodeError> {
        decode_exact(body)
    }

    /// Appends this request as one frame to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        emit_message(self, out)
    }
}

impl Response {
    /// Decodes a frame body; the whole body must be exactly one response.
    pub fn parse(body: &[u8]) -> Result<Self, DecodeError> {
        decode_exact(body)
    }

    /// Appends this response as one frame to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        emit_message(self, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes README.md shows: a model-info request and its answer.
    #[test]
    fn pinned_bytes() {
        let mut out = Vec::new();
        Request::ModelInfo.emit(&mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 1, 0]);

        let info = Response::ModelInfo(ModelInfo {
            length: 300,
            sha256: [0xab; 32],
        });
        let mut out = Vec::new();
        info.emit(&mut out).unwrap();
        let mut expected = vec![0, 0, 0, 35, 0, 0xac, 0x02];
        expected.extend_from_slice(&[0xab; 32]);
        assert_eq!(out, expected);
        assert_eq!(Response::parse(&out[4..]), Ok(info));

        let mut out = Vec::new();
        Response::Error(ErrorCode::TooLarge).emit(&mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 2, 1, 1]);
    }

    #[test]
    fn attest_request_bytes_and_qualifying_data() {
        let mut out = Vec::new();
        Request::Attest {
            nonce: [7; 32],
            pcr_mask: 0x7000,
        }
        .emit(&mut out)
        .unwrap();
        let mut expected = vec![0, 0, 0, 36, 1];
        expected.extend_from_slice(&[7; 32]);
        expected.extend_from_slice(&[0x80, 0xe0, 0x01]);
        assert_eq!(out, expected);
        // SHA-256("cloister attest v2\0" || 32 bytes of 7 || 32 of 1 || 32 of 2), computed independently.
        let binding = ChannelBinding {
            spki_sha256: [1; 32],
            exporter: [2; 32],
        };
        let digest = qualifying_data(&[7; 32], &binding);
        assert_eq!(digest[..4], [0x80, 0xb0, 0xf4, 0x49]);
        assert_eq!(digest[28..], [0x68, 0x88, 0xc6, 0x50]);
    }

    /// The generation bytes README.md shows: a greedy raw-text request, one token frame, the final frame.
    #[test]
    fn generation_pinned_bytes() {
        let mut out = Vec::new();
        let request = Request::Generate(GenerateRequest {
            prompt: Prompt::Text("Hi".into()),
            max_tokens: 8,
            sampling: Sampling::GREEDY,
            stop: Vec::new(),
        });
        request.emit(&mut out).unwrap();
        assert_eq!(
            out,
            [0, 0, 0, 17, 3, 0, 2, b'H', b'i', 8, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x3f, 0, 0]
        );
        assert_eq!(Request::parse(&out[4..]).unwrap(), request);

        let mut out = Vec::new();
        Request::Cancel.emit(&mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 1, 4]);

        let mut out = Vec::new();
        Response::Token(Token {
            id: 28,
            text: "Hi".into(),
        })
        .emit(&mut out)
        .unwrap();
        assert_eq!(out, [0, 0, 0, 5, 4, 28, 2, b'H', b'i']);

        let mut out = Vec::new();
        Response::Done(Done {
            reason: FinishReason::Length,
            prompt_tokens: 3,
            generated_tokens: 8,
            prefill_us: 1000,
            decode_us: 300,
        })
        .emit(&mut out)
        .unwrap();
        assert_eq!(out, [0, 0, 0, 8, 5, 0, 3, 8, 0xe8, 0x07, 0xac, 0x02]);

        let mut out = Vec::new();
        Response::Error(ErrorCode::Busy).emit(&mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 2, 1, 2]);
        let mut out = Vec::new();
        Response::Error(ErrorCode::Cancelled)
            .emit(&mut out)
            .unwrap();
        assert_eq!(out, [0, 0, 0, 2, 1, 8]);
    }

    #[test]
    fn bad_bodies_are_typed_errors() {
        assert_eq!(Request::parse(&[9]), Err(DecodeError::Malformed));
        assert_eq!(Request::parse(&[]), Err(DecodeError::Malformed));
        assert_eq!(Request::parse(&[0, 0]), Err(DecodeError::TrailingBytes));
        assert_eq!(Response::parse(&[0, 0xac]), Err(DecodeError::Malformed));
    }

    #[test]
    fn random_bodies_never_panic() {
        // A small xorshift keeps this deterministic without a dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 48) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (state >> (i % 8 * 8)) as u8 ^ i as u8)
                .collect();
            let _ = Request::parse(&bytes);
            let _ = Response::parse(&bytes);
        }
    }
}
