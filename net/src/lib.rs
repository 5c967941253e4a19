//! cloister's network layer: the wire protocol shared by appliance and client.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod frame;
pub mod proto;
