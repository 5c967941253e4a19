//! The firmware's memory map turned into the E820 map the kernel's PVH start info carries.
//!
//! UEFI 2.10 §7.2 (`EFI_MEMORY_DESCRIPTOR`, `EFI_MEMORY_TYPE`) to ACPI 6.5 §15 address range types,
//! as the table "UEFI Memory Types and mapping to ACPI address range types" of ACPI 6.5 §15.4
//! gives it. After ExitBootServices the loader's and boot services' memory is free RAM; the kernel
//! keeps what it still needs (its own image, the model, the start info, the event log) out of its
//! allocators itself. Adjacent ranges of one type are merged so the map fits the kernel's table.

use crate::{u32_at, u64_at};

/// E820 type 1: usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type 2: reserved.
pub const E820_RESERVED: u32 = 2;
/// E820 type 3: ACPI reclaimable.
pub const E820_ACPI: u32 = 3;
/// E820 type 4: ACPI NVS.
pub const E820_NVS: u32 = 4;
/// E820 type 5: unusable.
pub const E820_UNUSABLE: u32 = 5;
/// E820 type 7: persistent memory.
pub const E820_PMEM: u32 = 7;

/// Bytes of an `EFI_MEMORY_DESCRIPTOR` up to and including `NumberOfPages`.
const DESCRIPTOR_MIN: usize = 32;
const PAGE: u64 = 4096;

/// One E820 range (the `hvm_memmap_table_entry` layout without its padding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Why the memory map could not be converted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The descriptor size is smaller than the UEFI structure.
    BadDescriptorSize,
    /// More merged ranges than the output holds.
    TooMany,
}

/// The E820 type for an `EFI_MEMORY_TYPE`.
pub fn e820_kind(efi_type: u32) -> u32 {
    match efi_type {
        // EfiLoaderCode, EfiLoaderData, EfiBootServicesCode, EfiBootServicesData,
        // EfiConventionalMemory.
        1..=4 | 7 => E820_RAM,
        8 => E820_UNUSABLE,
        9 => E820_ACPI,
        10 => E820_NVS,
        14 => E820_PMEM,
        // EfiReservedMemoryType, runtime services, MMIO, PAL code, unaccepted and unknown types.
        _ => E820_RESERVED,
    }
}

/// Converts the descriptors in `map` (each `descriptor_size` bytes) into sorted, merged E820
/// ranges in `out`; returns how many were written.
pub fn to_e820(
    map: &[u8],
    descriptor_size: usize,
    out: &mut [E820Entry],
) -> Result<usize, MapError> {
    if descriptor_size < DESCRIPTOR_MIN {
        return Err(MapError::BadDescriptorSize);
    }
    let mut count = 0;
    for descriptor in map.chunks_exact(descriptor_size) {
        let (Some(kind), Some(addr), Some(pages)) = (
            u32_at(descriptor, 0),
            u64_at(descriptor, 8),
            u64_at(descriptor, 24),
        ) else {
            continue;
        };
        let Some(size) = pages.checked_mul(PAGE) else {
            continue;
        };
        if size == 0 || addr.checked_add(size).is_none() {
            continue;
        }
        let entry = E820Entry {
            addr,
            size,
            kind: e820_kind(kind),
        };
        // Insert sorted by address (firmware maps are usually sorted already).
        let mut at = count;
        while at > 0 && out[at - 1].addr > entry.addr {
            at -= 1;
        }
        // Merge with the neighbour below when contiguous and of the same type.
        if at > 0 {
            let below = &mut out[at - 1];
            if below.kind == entry.kind && below.addr + below.size == entry.addr {
                below.size += entry.size;
                merge_above(out, &mut count, at - 1);
                continue;
            }
        }
        if count == out.len() {
            return Err(MapError::TooMany);
        }
        out.copy_within(at..count, at + 1);
        out[at] = entry;
        count += 1;
        merge_above(out, &mut count, at);
    }
    Ok(count)
}

/// Merges `out[at + 1]` into `out[at]` when they touch and share a type.
fn merge_above(out: &mut [E820Entry], count: &mut usize, at: usize) {
    if at + 1 < *count {
        let next = out[at + 1];
        if next.kind == out[at].kind && out[at].addr + out[at].size == next.addr {
            out[at].size += next.size;
            out.copy_within(at + 2..*count, at + 1);
            *count -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptors(list: &[(u32, u64, u64)], size: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &(kind, addr, pages) in list {
            let mut descriptor = vec![0u8; size];
            descriptor[..4].copy_from_slice(&kind.to_le_bytes());
            descriptor[8..16].copy_from_slice(&addr.to_le_bytes());
            descriptor[16..24].copy_from_slice(&0xdead_beefu64.to_le_bytes());
            descriptor[24..32].copy_from_slice(&pages.to_le_bytes());
            bytes.extend_from_slice(&descriptor);
        }
        bytes
    }

    #[test]
    fn types_map_and_neighbours_merge() {
        // OVMF-like: conventional, boot services data, loader code adjacent; ACPI NVS; a runtime
        // range; MMIO flash; out of order.
        let map = descriptors(
            &[
                (7, 0, 0xa0),
                (4, 0x10_0000, 0x100),
                (7, 0x20_0000, 0x200),
                (1, 0x40_0000, 0x10),
                (10, 0x80_0000, 8),
                (6, 0x3f00_0000, 0x10),
                (11, 0xffc0_0000, 0x400),
                (2, 0x41_0000, 0x10),
            ],
            48,
        );
        let mut out = [E820Entry::default(); 8];
        let count = to_e820(&map, 48, &mut out).unwrap();
        assert_eq!(
            &out[..count],
            &[
                E820Entry {
                    addr: 0,
                    size: 0xa_0000,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: 0x32_0000,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x80_0000,
                    size: 0x8000,
                    kind: E820_NVS
                },
                E820Entry {
                    addr: 0x3f00_0000,
                    size: 0x1_0000,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0xffc0_0000,
                    size: 0x40_0000,
                    kind: E820_RESERVED
                },
            ]
        );
    }

    #[test]
    fn an_out_of_order_range_closes_a_gap() {
        let map = descriptors(&[(7, 0x0, 1), (7, 0x2000, 1), (7, 0x1000, 1)], 40);
        let mut out = [E820Entry::default(); 4];
        let count = to_e820(&map, 40, &mut out).unwrap();
        assert_eq!(
            &out[..count],
            &[E820Entry {
                addr: 0,
                size: 0x3000,
                kind: E820_RAM
            }]
        );
    }

    #[test]
    fn limits_are_errors() {
        let map = descriptors(&[(7, 0, 1), (9, 0x1000, 1), (7, 0x2000, 1)], 48);
        let mut out = [E820Entry::default(); 2];
        assert_eq!(to_e820(&map, 48, &mut out), Err(MapError::TooMany));
        assert_eq!(
            to_e820(&map, 16, &mut out),
            Err(MapError::BadDescriptorSize)
        );
        // Empty and wrapping ranges are dropped.
        let map = descriptors(&[(7, 0, 0), (7, u64::MAX - 0xfff, 2)], 48);
        assert_eq!(to_e820(&map, 48, &mut out), Ok(0));
    }
}
