//! cloister's inference engine: GGUF models (llama, gemma3) run token for token as llama.cpp runs them.
//!
//! `no_std` + `alloc` so the same code runs inside the appliance image and on the host; `unsafe` lives only in
//! [`simd`] and in the work pool ([`parallel::work`]). The layout follows llama2.c: configuration and weights ([`transformer`]), run state and forward pass,
//! tokenizers ([`tokenizer`]), sampler ([`sampler`]).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod chat;
pub mod fma;
pub mod gguf;
#[cfg(any(test, feature = "testkit"))]
pub mod gguf_write;
pub mod interleave;
pub mod math;
pub mod matmul;
pub mod parallel;
pub mod quant;
pub mod sampler;
pub mod session;
#[allow(
    unsafe_code,
    reason = "the one module where `unsafe` is allowed (CPUID, intrinsics); each block has a SAFETY note"
)]
pub mod simd;
pub mod sse;
#[cfg(any(test, feature = "testkit"))]
pub mod tiny;
pub mod tokenizer;
pub mod transformer;
pub mod trig;
pub mod wide;
