//! The EFI entry stub's hardware-independent logic, kept in a library so the host can test it.
//!
//! The stub (`main.rs`) is the boot application the firmware loads and measures: it takes what the
//! kernel needs from boot services, leaves them, and enters the unchanged fixed-address kernel
//! through its PVH entry with a synthesized start info (docs/ARCHITECTURE.md, "UEFI boot"). What it
//! reads from firmware and from its own image arrives here as bytes and is bounded before use.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod elf;
pub mod event_log;
pub mod memory_map;
pub mod pe;
pub mod start_info;

/// Reads a little-endian `u16` at `offset`, or `None` past the end.
pub fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let raw = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_le_bytes([raw[0], raw[1]]))
}

/// Reads a little-endian `u32` at `offset`, or `None` past the end.
pub fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let raw = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
}

/// Reads a little-endian `u64` at `offset`, or `None` past the end.
pub fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    let raw = bytes.get(offset..offset.checked_add(8)?)?;
    let mut value = [0u8; 8];
    value.copy_from_slice(raw);
    Some(u64::from_le_bytes(value))
}
