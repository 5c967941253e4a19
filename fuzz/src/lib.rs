//! The fuzz targets' bodies (issue 12, item 9): each function takes one input, drives one parser or state
//! machine of the appliance or the verifier with it, and panics only when an invariant breaks (a crash is a
//! finding). `fuzz/libfuzzer/` wraps each in a libFuzzer target (`scripts/fuzz.sh`), and
//! `tests/regressions.rs` replays the saved corpus through the same functions in CI.
//!
//! Every target here is reachable by an unauthenticated party: the frames and the TLS bytes a client sends to
//! the appliance, and the TPM responses, quotes, signatures, event logs and EK certificates an appliance (or
//! whoever runs it) sends to the verifier.

mod ek_chain;
mod event_logs;
mod frames;
mod quote;
pub mod seeds;
mod tls_server;
mod tpm_responses;

pub use ek_chain::ek_chain;
pub use event_logs::event_logs;
pub use frames::frames;
pub use quote::quote;
pub use tls_server::{client_hello, tls_server};
pub use tpm_responses::tpm_responses;

/// One target's body: takes any input, panics only on a finding.
pub type Body = fn(&[u8]);

/// The targets by name, as the corpus directories and `scripts/fuzz-appliance.sh` call them.
pub const TARGETS: [(&str, Body); 6] = [
    ("frames", frames),
    ("tls_server", tls_server),
    ("tpm_responses", tpm_responses),
    ("quote", quote),
    ("event_logs", event_logs),
    ("ek_chain", ek_chain),
];
