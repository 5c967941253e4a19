//! The appliance protocol's messages: what a client may ask and what the appliance answers (DESIGN §5).
//!
//! Each message is one postcard-encoded enum in one frame (see [`crate::frame`]). Postcard writes an
//! enum as its variant index (varint) followed by the fields in order, so the variant order below is
//! part of the wire format: append new variants, never reorder. README.md pins example bytes.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::frame::{self, FrameError};

/// The TCP port the appliance listens on inside the guest.
pub const APPLIANCE_PORT: u16 = 7000;

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Ask for the length and SHA-256 of the model blob, as the appliance computed them at boot.
    ModelInfo,
}

/// The appliance's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::ModelInfo`].
    ModelInfo(ModelInfo),
    /// The request could not be served; the connection may be closed after this frame.
    Error(ErrorCode),
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
}

/// Why bytes could not be turned into a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Postcard could not decode the body.
    Malformed,
    /// The body decoded but bytes were left over.
    TrailingBytes,
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
