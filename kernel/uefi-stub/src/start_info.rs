//! The PVH `hvm_start_info` the stub builds for the kernel (Xen `arch-x86/hvm/start_info.h`,
//! version 1), laid out in one 4 KiB page: the kernel parses it exactly as it parses QEMU's on the
//! direct path (docs/ARCHITECTURE.md, "UEFI boot").

use crate::memory_map::E820Entry;

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Most memory-map entries (the kernel keeps this many).
pub const MAX_MEMMAP: usize = 64;
/// Longest command line (the kernel keeps this many bytes).
pub const MAX_CMDLINE: usize = 1024;
/// Most modules: the model, then the firmware's event log.
pub const MAX_MODULES: usize = 2;

const MODLIST_OFFSET: usize = 64;
const MEMMAP_OFFSET: usize = MODLIST_OFFSET + MAX_MODULES * 32;
const CMDLINE_OFFSET: usize = MEMMAP_OFFSET + MAX_MEMMAP * 24;
/// Bytes of the page the layout uses; the rest is free for the stub.
pub const LAYOUT_LEN: usize = CMDLINE_OFFSET + MAX_CMDLINE + 1;

/// Why the start info could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartInfoError {
    TooManyModules,
    TooManyRanges,
    CommandLineTooLong,
    PageTooSmall,
}

/// What goes into the start info; addresses are physical.
pub struct Contents<'a> {
    /// (start, length) of each module, the model first.
    pub modules: &'a [(u64, u64)],
    pub memory_map: &'a [E820Entry],
    pub cmdline: &'a [u8],
    /// The ACPI RSDP, or 0.
    pub rsdp: u64,
}

fn put(page: &mut [u8], offset: usize, bytes: &[u8]) {
    page[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// Writes the start info and everything it points to into `page`, which lies at physical address
/// `base`; the start info itself is at `base`.
pub fn write(page: &mut [u8], base: u64, contents: &Contents) -> Result<(), StartInfoError> {
    if page.len() < LAYOUT_LEN {
        return Err(StartInfoError::PageTooSmall);
    }
    if contents.modules.len() > MAX_MODULES {
        return Err(StartInfoError::TooManyModules);
    }
    if contents.memory_map.len() > MAX_MEMMAP {
        return Err(StartInfoError::TooManyRanges);
    }
    if contents.cmdline.len() > MAX_CMDLINE {
        return Err(StartInfoError::CommandLineTooLong);
    }
    page[..LAYOUT_LEN].fill(0);
    put(page, 0, &START_INFO_MAGIC.to_le_bytes());
    put(page, 4, &1u32.to_le_bytes()); // version
    put(page, 12, &(contents.modules.len() as u32).to_le_bytes());
    put(page, 16, &(base + MODLIST_OFFSET as u64).to_le_bytes());
    put(page, 24, &(base + CMDLINE_OFFSET as u64).to_le_bytes());
    put(page, 32, &contents.rsdp.to_le_bytes());
    put(page, 40, &(base + MEMMAP_OFFSET as u64).to_le_bytes());
    put(page, 48, &(contents.memory_map.len() as u32).to_le_bytes());
    for (index, (start, len)) in contents.modules.iter().enumerate() {
        let at = MODLIST_OFFSET + index * 32;
        put(page, at, &start.to_le_bytes());
        put(page, at + 8, &len.to_le_bytes());
    }
    for (index, entry) in contents.memory_map.iter().enumerate() {
        let at = MEMMAP_OFFSET + index * 24;
        put(page, at, &entry.addr.to_le_bytes());
        put(page, at + 8, &entry.size.to_le_bytes());
        put(page, at + 16, &entry.kind.to_le_bytes());
    }
    // NUL-terminated: the zero fill above leaves the terminator.
    put(page, CMDLINE_OFFSET, contents.cmdline);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{u32_at, u64_at};

    #[test]
    fn layout_matches_the_pvh_structures() {
        let mut page = vec![0xffu8; 4096];
        let map = [E820Entry {
            addr: 0x10_0000,
            size: 0x1000,
            kind: 1,
        }];
        write(
            &mut page,
            0x7000,
            &Contents {
                modules: &[(0x4000_0000, 1234), (0x5000_0000, 99)],
                memory_map: &map,
                cmdline: b"ip=dhcp port=7000",
                rsdp: 0xe0000,
            },
        )
        .unwrap();
        assert_eq!(u32_at(&page, 0), Some(START_INFO_MAGIC));
        assert_eq!(u32_at(&page, 12), Some(2));
        let modlist = u64_at(&page, 16).unwrap() as usize - 0x7000;
        assert_eq!(u64_at(&page, modlist + 32), Some(0x5000_0000));
        assert_eq!(u64_at(&page, modlist + 40), Some(99));
        let memmap = u64_at(&page, 40).unwrap() as usize - 0x7000;
        assert_eq!(u32_at(&page, 48), Some(1));
        assert_eq!(u64_at(&page, memmap), Some(0x10_0000));
        assert_eq!(u32_at(&page, memmap + 16), Some(1));
        let cmdline = u64_at(&page, 24).unwrap() as usize - 0x7000;
        assert_eq!(&page[cmdline..cmdline + 18], b"ip=dhcp port=7000\0");
        assert_eq!(u64_at(&page, 32), Some(0xe0000));
    }

    #[test]
    fn limits_are_errors() {
        let mut page = vec![0u8; 4096];
        let long = [b'a'; MAX_CMDLINE + 1];
        let contents = Contents {
            modules: &[],
            memory_map: &[],
            cmdline: &long,
            rsdp: 0,
        };
        assert_eq!(
            write(&mut page, 0, &contents),
            Err(StartInfoError::CommandLineTooLong)
        );
        let contents = Contents {
            modules: &[(0, 0); 3],
            memory_map: &[],
            cmdline: b"",
            rsdp: 0,
        };
        assert_eq!(
            write(&mut page, 0, &contents),
            Err(StartInfoError::TooManyModules)
        );
        assert_eq!(
            write(&mut page[..100], 0, &contents),
            Err(StartInfoError::PageTooSmall)
        );
    }
}
