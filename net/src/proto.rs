//! The appliance protocol's messages: what a client may ask and what the appliance answers (DESIGN §5).
//!
//! Each message is one postcard-encoded enum in one frame (see [`crate::frame`]). Postcard writes an
//! enum as its variant index (varint) followed by the fields in order, so the variant order below is
//! part of the wire format: append new variants, never reorder. README.md pins example bytes.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::frame::{self, FrameError};

/// The TCP port the appliance listens on inside the guest.
pub const APPLIANCE_PORT: u16 = 7000;

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// What the appliance returns for an attestation request (DESIGN §4). Every byte string is
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
}

/// Domain-separation label for quote qualifying data.
pub const QUALIFYING_DATA_LABEL: &[u8] = b"cloister attest v1\0";

/// The quote's extraData for a client nonce: SHA-256(label || nonce). The TLS issue extends this
/// with the server key and the session's exporter value (channel binding, DESIGN §4).
pub fn qualifying_data(nonce: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(QUALIFYING_DATA_LABEL);
    hasher.update(nonce);
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
        // SHA-256("cloister attest v1\0" || 32 bytes of 7), computed independently.
        let digest = qualifying_data(&[7; 32]);
        assert_eq!(digest[..4], [0x6c, 0x59, 0xd2, 0x84]);
        assert_eq!(digest[28..], [0x40, 0x21, 0x35, 0xd4]);
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
