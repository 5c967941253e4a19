//! The kernel's hardware-independent logic, kept in a library so the host can test it.
//!
//! Nothing here touches hardware: boot data arrives as bytes through [`start_info::PhysRead`], page
//! tables are built in memory handed over through [`paging::TableMemory`]. The freestanding binary
//! (`main.rs`) supplies those traits over real physical memory. The generation pool ([`generations`]) runs
//! the engine on whatever model it is given, so the host tests it with a generated tiny model.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod appliance;
pub mod boot_log;
pub mod boot_tpm;
pub mod entropy;
pub mod generations;
pub mod memory_map;
pub mod paging;
pub mod start_info;

#[cfg(test)]
mod tests;
