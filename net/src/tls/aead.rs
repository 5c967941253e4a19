//! TLS 1.3 record protection with AES-128-GCM and ChaCha20-Poly1305 from RustCrypto (RFC 8446 §5.2-§5.3,
//! RFC 5116, RFC 8439).
//!
//! A record's inner plaintext is the content, then its one-byte content type (RFC 8446 §5.2); the
//! additional data is the 5-byte record header of the ciphertext; the per-record nonce is the write IV
//! XORed with the 64-bit sequence number (§5.3). Both AEADs have a 16-byte tag.

use alloc::boxed::Box;

use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes128Gcm;
use chacha20poly1305::ChaCha20Poly1305;
use rustls::crypto::cipher::{
    make_tls13_aad, AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter,
    MessageEncrypter, Nonce, OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload,
    Tls13AeadAlgorithm, UnsupportedOperationError,
};
use rustls::{ConnectionTrafficSecrets, ContentType, Error, ProtocolVersion};

/// Bytes of the authentication tag of both AEADs.
const TAG_LEN: usize = 16;

/// AEAD_AES_128_GCM (RFC 5116 §5.1) for TLS_AES_128_GCM_SHA256.
pub(crate) struct Aes128GcmAlgorithm;

/// AEAD_CHACHA20_POLY1305 (RFC 8439 §2.8) for TLS_CHACHA20_POLY1305_SHA256.
pub(crate) struct ChaCha20Poly1305Algorithm;

pub(crate) static AES_128_GCM: Aes128GcmAlgorithm = Aes128GcmAlgorithm;
pub(crate) static CHACHA20_POLY1305: ChaCha20Poly1305Algorithm = ChaCha20Poly1305Algorithm;

impl Tls13AeadAlgorithm for Aes128GcmAlgorithm {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(RecordCipher::<Aes128Gcm>::new(&key, iv))
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(RecordCipher::<Aes128Gcm>::new(&key, iv))
    }

    fn key_len(&self) -> usize {
        16
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok(ConnectionTrafficSecrets::Aes128Gcm { key, iv })
    }
}

impl Tls13AeadAlgorithm for ChaCha20Poly1305Algorithm {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(RecordCipher::<ChaCha20Poly1305>::new(&key, iv))
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(RecordCipher::<ChaCha20Poly1305>::new(&key, iv))
    }

    fn key_len(&self) -> usize {
        32
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok(ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv })
    }
}

/// One direction's record protection: the AEAD keyed with the traffic key, and the write IV.
struct RecordCipher<C> {
    /// `None` when rustls handed a key of the wrong length; every record then fails (typed error, no panic).
    cipher: Option<C>,
    iv: Iv,
}

impl<C: KeyInit> RecordCipher<C> {
    fn new(key: &AeadKey, iv: Iv) -> Self {
        Self {
            cipher: C::new_from_slice(key.as_ref()).ok(),
            iv,
        }
    }
}

impl<C> MessageEncrypter for RecordCipher<C>
where
    C: AeadInPlace<NonceSize = U12, TagSize = U16> + Send + Sync,
{
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let cipher = self.cipher.as_ref().ok_or(Error::EncryptError)?;
        let total_len = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&[u8::from(msg.typ)]);
        let nonce = Nonce::new(&self.iv, seq).0;
        let tag = cipher
            .encrypt_in_place_detached(
                (&nonce).into(),
                &make_tls13_aad(total_len),
                payload.as_mut(),
            )
            .map_err(|_| Error::EncryptError)?;
        payload.extend_from_slice(&tag);
        // RFC 8446 §5.2: protected records carry type application_data and legacy version 0x0303.
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + TAG_LEN
    }
}

impl<C> MessageDecrypter for RecordCipher<C>
where
    C: AeadInPlace<NonceSize = U12, TagSize = U16> + Send + Sync,
{
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let cipher = self.cipher.as_ref().ok_or(Error::DecryptError)?;
        let payload = &mut msg.payload;
        let len = payload.len();
        let Some(body_len) = len.checked_sub(TAG_LEN) else {
            return Err(Error::DecryptError);
        };
        let aad = make_tls13_aad(len);
        let nonce = Nonce::new(&self.iv, seq).0;
        let (body, tag) = payload.split_at_mut(body_len);
        let tag = <&[u8; TAG_LEN]>::try_from(&*tag).map_err(|_| Error::DecryptError)?;
        cipher
            .decrypt_in_place_detached((&nonce).into(), &aad, body, tag.into())
            .map_err(|_| Error::DecryptError)?;
        payload.truncate(body_len);
        // Strips the zero padding and the inner content type (RFC 8446 §5.4).
        msg.into_tls13_unpadded_message()
    }
}
