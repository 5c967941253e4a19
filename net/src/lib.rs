//! cloister's network layer: the wire protocol shared by appliance and client, and the appliance's
//! smoltcp-based server (docs/ARCHITECTURE.md §1, §5).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;
mod connection;
pub mod frame;
pub mod proto;
pub mod server;
pub mod serving;
pub mod tls;

pub use config::{ConfigError, Ipv4Setup, NetConfig};
pub use server::{Counters, Handler, Limits, PollOutcome, Reply, Server, ServerError, Step};
