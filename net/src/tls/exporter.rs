//! The TLS 1.3 exporter computed on the server side (RFC 8446 §7.5, §7.1 HKDF-Expand-Label; RFC 5869 §2.3),
//! from the exporter master secret that rustls hands to a per-connection `KeyLog` (docs/ARCHITECTURE.md §4).
//!
//! rustls' unbuffered no-std server has no `export_keying_material`, but it reports every secret it derives
//! to the configured key log under NSS key-log labels; [`ExporterCapture`] keeps only `EXPORTER_SECRET`
//! and drops everything else unseen (`will_log` declines the other labels).

use once_cell::race::OnceBox;
use rustls::KeyLog;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use alloc::boxed::Box;
use hmac::Mac;

use super::provider::hmac_sha256;

/// The exporter label the attestation binding uses (RFC 8446 §7.5; the "EXPORTER-" prefix follows the
/// RFC 5705 §4 convention for labels not registered with IANA).
pub const ATTESTATION_EXPORTER_LABEL: &[u8] = b"EXPORTER-cloister-attestation";

/// Bytes of the attestation exporter value (docs/ARCHITECTURE.md §4).
pub const ATTESTATION_EXPORTER_LEN: usize = 32;

/// The NSS key-log label of the exporter master secret (rustls' name for it).
const EXPORTER_SECRET_LABEL: &str = "EXPORTER_SECRET";

/// SHA-256 output length: the size of every secret in our SHA-256-only suites.
const HASH_LEN: usize = 32;

/// Why an exporter value could not be computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExporterError {
    /// The handshake has not derived the exporter master secret yet.
    NotReady,
    /// The label is longer than 249 bytes, or the output longer than 255 * 32 bytes (RFC 8446 §7.1 limits).
    BadRequest,
}

/// A per-connection `KeyLog` that keeps the exporter master secret (wiped on drop).
#[derive(Debug, Default)]
pub(crate) struct ExporterCapture {
    secret: OnceBox<Zeroizing<[u8; HASH_LEN]>>,
}

impl KeyLog for ExporterCapture {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label != EXPORTER_SECRET_LABEL {
            return;
        }
        if let Ok(secret) = <[u8; HASH_LEN]>::try_from(secret) {
            // A connection derives its exporter secret once; a second report (none is expected) is ignored.
            let _ = self.secret.set(Box::new(Zeroizing::new(secret)));
        }
    }

    fn will_log(&self, label: &str) -> bool {
        label == EXPORTER_SECRET_LABEL
    }
}

impl ExporterCapture {
    /// TLS-Exporter(label, context, out.len()) for this connection (RFC 8446 §7.5).
    pub(crate) fn export(
        &self,
        label: &[u8],
        context: &[u8],
        out: &mut [u8],
    ) -> Result<(), ExporterError> {
        let secret = self.secret.get().ok_or(ExporterError::NotReady)?;
        tls13_exporter(secret, label, context, out)
    }
}

/// RFC 8446 §7.5:
/// `TLS-Exporter(label, context, length) = HKDF-Expand-Label(Derive-Secret(Secret, label, ""), "exporter",
/// Hash(context), length)`, where `Derive-Secret(Secret, label, "")` is
/// `HKDF-Expand-Label(Secret, label, Hash(""), Hash.length)`.
pub(crate) fn tls13_exporter(
    exporter_master_secret: &[u8; HASH_LEN],
    label: &[u8],
    context: &[u8],
    out: &mut [u8],
) -> Result<(), ExporterError> {
    let mut derived = Zeroizing::new([0u8; HASH_LEN]);
    hkdf_expand_label(
        exporter_master_secret,
        label,
        &Sha256::digest(b""),
        &mut derived[..],
    )?;
    hkdf_expand_label(&derived[..], b"exporter", &Sha256::digest(context), out)
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with SHA-256: HKDF-Expand (RFC 5869 §2.3) of `secret` with the info
/// `HkdfLabel { uint16 length; opaque label<7..255> = "tls13 " + label; opaque context<0..255>; }`.
fn hkdf_expand_label(
    secret: &[u8],
    label: &[u8],
    context: &[u8],
    out: &mut [u8],
) -> Result<(), ExporterError> {
    const PREFIX: &[u8] = b"tls13 ";
    let full_label_len =
        u8::try_from(PREFIX.len() + label.len()).map_err(|_| ExporterError::BadRequest)?;
    let context_len = u8::try_from(context.len()).map_err(|_| ExporterError::BadRequest)?;
    let length = u16::try_from(out.len()).map_err(|_| ExporterError::BadRequest)?;
    if out.len() > 255 * HASH_LEN {
        return Err(ExporterError::BadRequest);
    }
    let length = length.to_be_bytes();

    // T(0) = empty; T(i) = HMAC(PRK, T(i-1) | info | i); output = T(1) | T(2) | ... (RFC 5869 §2.3).
    let prk = hmac_sha256(secret);
    let mut previous = Zeroizing::new([0u8; HASH_LEN]);
    for (index, chunk) in out.chunks_mut(HASH_LEN).enumerate() {
        let mut mac = prk.clone();
        if index > 0 {
            mac.update(&previous[..]);
        }
        mac.update(&length);
        mac.update(&[full_label_len]);
        mac.update(PREFIX);
        mac.update(label);
        mac.update(&[context_len]);
        mac.update(context);
        // At most 255 blocks (checked above), so the counter fits in a byte.
        mac.update(&[(index + 1) as u8]);
        previous.copy_from_slice(&mac.finalize().into_bytes());
        chunk.copy_from_slice(&previous[..chunk.len()]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8448 §3 (simple 1-RTT handshake): the client_handshake_traffic_secret comes from the handshake
    /// secret by Derive-Secret, i.e. HKDF-Expand-Label(secret, "c hs traffic", transcript hash, 32). That
    /// pins our HKDF-Expand-Label to published bytes.
    #[test]
    fn hkdf_expand_label_matches_rfc8448() {
        let handshake_secret =
            hex("1dc826e93606aa6fdc0aadc12f741b01046aa6b99f691ed221a9f0ca043fbeac");
        let transcript = hex("860c06edc07858ee8e78f0e7428c58edd6b43f2ca3e6e95f02ed063cf0e1cad8");
        let expected = hex("b3eddb126e067f35a780b3abf45e2d8f3b1a950738f52e9600746a0e27a55a21");
        let mut out = [0u8; 32];
        hkdf_expand_label(&handshake_secret, b"c hs traffic", &transcript, &mut out).unwrap();
        assert_eq!(out[..], expected[..]);
    }

    #[test]
    fn exporter_rejects_oversized_requests() {
        let secret = [7u8; 32];
        let mut out = [0u8; 32];
        assert_eq!(
            tls13_exporter(&secret, &[b'a'; 250], b"", &mut out),
            Err(ExporterError::BadRequest)
        );
        assert!(tls13_exporter(&secret, &[b'a'; 249], b"", &mut out).is_ok());
        let mut long = alloc::vec![0u8; 255 * 32 + 1];
        assert_eq!(
            tls13_exporter(&secret, b"label", b"", &mut long),
            Err(ExporterError::BadRequest)
        );
    }

    #[test]
    fn capture_keeps_only_the_exporter_secret() {
        let capture = ExporterCapture::default();
        let mut out = [0u8; 32];
        assert_eq!(
            capture.export(b"x", b"", &mut out),
            Err(ExporterError::NotReady)
        );
        assert!(!capture.will_log("CLIENT_TRAFFIC_SECRET_0"));
        assert!(capture.will_log(EXPORTER_SECRET_LABEL));
        capture.log("CLIENT_TRAFFIC_SECRET_0", &[0; 32], &[1; 32]);
        assert_eq!(
            capture.export(b"x", b"", &mut out),
            Err(ExporterError::NotReady)
        );
        capture.log(EXPORTER_SECRET_LABEL, &[0; 32], &[2; 32]);
        capture.export(b"x", b"", &mut out).unwrap();
        let mut direct = [0u8; 32];
        tls13_exporter(&[2; 32], b"x", b"", &mut direct).unwrap();
        assert_eq!(out, direct);
    }

    fn hex(text: &str) -> alloc::vec::Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
