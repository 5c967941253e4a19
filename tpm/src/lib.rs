//! cloister's TPM 2.0 crate: the TIS FIFO driver, a one-method transport, the TPM2 commands the appliance uses,
//! and the measurement event log.
//!
//! Specs followed: TCG PC Client Platform TPM Profile (PTP) for TPM 2.0, "FIFO Interface" (TIS registers);
//! TCG TPM 2.0 Library Parts 1-3 (structures and commands); TCG EK Credential Profile 2.x (EK template, NV
//! indices). See docs/ARCHITECTURE.md §3-§4 for how cloister uses them.
//!
//! Layering: [`tis::Tis`] drives TIS registers that the kernel supplies through [`tis::TisRegisters`] and
//! implements [`transport::Transport`]; [`commands`] marshals one TPM2 command per function over any
//! transport; [`eventlog`] records and replays the PCR extends; [`measurement`] is the
//! one definition of which boot measurement goes into which PCR; [`attest`] parses what a quote carries for the
//! verifier. Nothing here reads a clock or a random source of its own: time comes in through [`tis::Clock`],
//! randomness as arguments.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]

pub mod attest;
pub mod commands;
#[cfg(feature = "credential")]
pub mod credential;
pub mod eventlog;
pub mod measurement;
pub mod public;
pub mod rc;
pub mod tcg_log;
pub mod tis;
pub mod transport;
