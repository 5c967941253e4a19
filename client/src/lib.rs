//! The verifying client a user trusts (docs/ARCHITECTURE.md §1, §4): a TLS 1.3 session with the appliance that can
//! send a prompt only once every attestation check passed, the checks themselves, the image manifest they compare
//! against, evidence export for tpm2-tools and the store of TPM clock counters seen. It needs no QEMU, swtpm or
//! model cache; the runner builds its command-line tools on top of it.

#![forbid(unsafe_code)]

pub mod digest;
#[cfg(feature = "test-support")]
pub mod loopback;
pub mod manifest;
pub mod probe;
pub mod session;
pub mod verify;

pub use digest::hex;
pub use manifest::Manifest;
pub use probe::{model_info, resolve_endpoint};
pub use session::{verify_appliance, UnverifiedSession, VerifiedSession};
