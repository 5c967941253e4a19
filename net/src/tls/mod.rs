//! TLS 1.3 inside the appliance: a rustls server session over plain byte buffers, its crypto provider
//! built from RustCrypto crates, the boot-time key pair and self-signed certificate, and the exporter
//! value the attestation binds (RFC 8446; docs/ARCHITECTURE.md §2 TLS, §4 channel binding, §5).
//!
//! `no_std` + alloc, no `unsafe`, no OS randomness: every random byte comes from the caller's
//! [`SecureRandom`] (the kernel's DRBG, e.g. through [`RandomFn`]).

mod aead;
mod cert;
mod exporter;
mod kx;
mod provider;
mod session;
mod sign;

pub use cert::{IdentityError, ServerIdentity, CERTIFICATE_COMMON_NAME};
pub use exporter::{ExporterError, ATTESTATION_EXPORTER_LABEL, ATTESTATION_EXPORTER_LEN};
pub use provider::{
    crypto_provider, NoClock, RandomFn, SUPPORTED_SIGNATURE_ALGORITHMS, TLS13_AES_128_GCM_SHA256,
    TLS13_CHACHA20_POLY1305_SHA256,
};
pub use rustls::crypto::{GetRandomFailed, SecureRandom};
pub use session::{TlsError, TlsServer, TlsSession, MAX_INCOMING, PLAINTEXT_HIGH_WATER};
pub use sign::{EcdsaP256Sha256Verify, ECDSA_P256_SHA256};
