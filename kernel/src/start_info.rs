//! Parsing of the PVH boot protocol's `hvm_start_info` (Xen `arch-x86/hvm/start_info.h`, version 1).
//!
//! QEMU's `-kernel` PVH loader leaves these structures in low RAM that E820 reports as usable, so the
//! kernel copies everything it needs into a [`BootInfo`] before it reuses any memory (docs/ARCHITECTURE.md §3).
//! Every address and count comes from outside the kernel and is bounded before use.

use heapless::{String, Vec};

use crate::memory_map::{MemoryKind, Region};

/// `hvm_start_info.magic`: "xEn3" with the high bit set.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Size of `hvm_start_info` version 1 in bytes.
pub const START_INFO_LEN: usize = 56;
/// Size of one `hvm_modlist_entry`.
pub const MODLIST_ENTRY_LEN: usize = 32;
/// Size of one `hvm_memmap_table_entry`.
pub const MEMMAP_ENTRY_LEN: usize = 24;

/// Most memory-map entries kept; firmware maps have a few dozen at most.
pub const MAX_REGIONS: usize = 64;
/// Most boot modules kept (the model is the first).
pub const MAX_MODULES: usize = 4;
/// Longest kernel command line kept.
pub const MAX_CMDLINE: usize = 1024;

/// Reads bytes of guest-physical memory.
pub trait PhysRead {
    /// Fills `buf` from physical address `addr`, or reports that the range is not readable.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), StartInfoError>;
}

/// Why the start info could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartInfoError {
    /// The magic field did not match [`START_INFO_MAGIC`].
    BadMagic(u32),
    /// Version 0 has no memory map, which this kernel needs.
    UnsupportedVersion(u32),
    /// A structure lies outside readable memory.
    Unreadable { addr: u64 },
    /// More entries than this kernel keeps.
    TooMany { what: &'static str, count: u32 },
    /// The command line is longer than [`MAX_CMDLINE`] or is not UTF-8.
    BadCommandLine,
    /// The memory map is empty.
    NoMemoryMap,
}

/// A module passed by the loader (for cloister, the model blob given with `-initrd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module {
    /// Physical address of the first byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Everything the kernel keeps from the start info, copied out of loader memory.
#[derive(Clone, Debug, Default)]
pub struct BootInfo {
    /// The firmware memory map (E820 types).
    pub memory_map: Vec<Region, MAX_REGIONS>,
    /// Boot modules in loader order.
    pub modules: Vec<Module, MAX_MODULES>,
    /// The kernel command line (empty when none was given).
    pub cmdline: String<MAX_CMDLINE>,
    /// Where the loader's structures lay, so they can be kept out of the frame allocator.
    pub loader_ranges: Vec<Region, 4>,
    /// Physical address of the ACPI RSDP (`rsdp_paddr`), 0 when the loader gave none.
    pub rsdp: u64,
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(raw)
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(raw)
}

fn loader_region(start: u64, len: u64) -> Region {
    Region {
        start,
        len,
        kind: MemoryKind::Reserved,
    }
}

/// Parses the start info at `addr` and copies what it points to.
pub fn parse(memory: &impl PhysRead, addr: u64) -> Result<BootInfo, StartInfoError> {
    let mut header = [0u8; START_INFO_LEN];
    memory.read(addr, &mut header)?;
    let magic = u32_at(&header, 0);
    if magic != START_INFO_MAGIC {
        return Err(StartInfoError::BadMagic(magic));
    }
    let version = u32_at(&header, 4);
    if version < 1 {
        return Err(StartInfoError::UnsupportedVersion(version));
    }
    let nr_modules = u32_at(&header, 12);
    let modlist_paddr = u64_at(&header, 16);
    let cmdline_paddr = u64_at(&header, 24);
    let rsdp_paddr = u64_at(&header, 32);
    let memmap_paddr = u64_at(&header, 40);
    let memmap_entries = u32_at(&header, 48);

    let mut info = BootInfo {
        rsdp: rsdp_paddr,
        ..BootInfo::default()
    };
    // Four ranges at most: the header, the module list, the memory map and the command line.
    let _ = info
        .loader_ranges
        .push(loader_region(addr, START_INFO_LEN as u64));

    if memmap_entries == 0 {
        return Err(StartInfoError::NoMemoryMap);
    }
    if memmap_entries as usize > MAX_REGIONS {
        return Err(StartInfoError::TooMany {
            what: "memory map entries",
            count: memmap_entries,
        });
    }
    for index in 0..memmap_entries as u64 {
        let mut entry = [0u8; MEMMAP_ENTRY_LEN];
        memory.read(memmap_paddr + index * MEMMAP_ENTRY_LEN as u64, &mut entry)?;
        let region = Region {
            start: u64_at(&entry, 0),
            len: u64_at(&entry, 8),
            kind: MemoryKind::from_e820(u32_at(&entry, 16)),
        };
        // Capacity was checked against the count above.
        let _ = info.memory_map.push(region);
    }
    let _ = info.loader_ranges.push(loader_region(
        memmap_paddr,
        memmap_entries as u64 * MEMMAP_ENTRY_LEN as u64,
    ));

    if nr_modules as usize > MAX_MODULES {
        return Err(StartInfoError::TooMany {
            what: "modules",
            count: nr_modules,
        });
    }
    for index in 0..nr_modules as u64 {
        let mut entry = [0u8; MODLIST_ENTRY_LEN];
        memory.read(modlist_paddr + index * MODLIST_ENTRY_LEN as u64, &mut entry)?;
        let _ = info.modules.push(Module {
            start: u64_at(&entry, 0),
            len: u64_at(&entry, 8),
        });
    }
    if nr_modules > 0 {
        let _ = info.loader_ranges.push(loader_region(
            modlist_paddr,
            nr_modules as u64 * MODLIST_ENTRY_LEN as u64,
        ));
    }

    if cmdline_paddr != 0 {
        let mut bytes = [0u8; MAX_CMDLINE];
        let mut len = 0;
        // Read byte by byte up to the NUL: the line may end right before unreadable memory.
        loop {
            if len == MAX_CMDLINE {
                return Err(StartInfoError::BadCommandLine);
            }
            let mut byte = [0u8; 1];
            memory.read(cmdline_paddr + len as u64, &mut byte)?;
            if byte[0] == 0 {
                break;
            }
            bytes[len] = byte[0];
            len += 1;
        }
        let text =
            core::str::from_utf8(&bytes[..len]).map_err(|_| StartInfoError::BadCommandLine)?;
        info.cmdline
            .push_str(text)
            .map_err(|_| StartInfoError::BadCommandLine)?;
        let _ = info
            .loader_ranges
            .push(loader_region(cmdline_paddr, len as u64 + 1));
    }
    Ok(info)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Guest memory as a sparse list of byte runs (also the ACPI parser's test memory).
    pub(crate) struct FakeMemory(pub(crate) std::vec::Vec<(u64, std::vec::Vec<u8>)>);

    impl PhysRead for FakeMemory {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), StartInfoError> {
            for (start, bytes) in &self.0 {
                let end = start + bytes.len() as u64;
                if addr >= *start && addr + buf.len() as u64 <= end {
                    let offset = (addr - start) as usize;
                    buf.copy_from_slice(&bytes[offset..offset + buf.len()]);
                    return Ok(());
                }
            }
            Err(StartInfoError::Unreadable { addr })
        }
    }

    /// A start info as QEMU 7.2 lays it out for `-m 512 -initrd model -append "ip=dhcp"`.
    fn fixture() -> FakeMemory {
        let mut header = std::vec::Vec::new();
        header.extend_from_slice(&START_INFO_MAGIC.to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes()); // version
        header.extend_from_slice(&0u32.to_le_bytes()); // flags
        header.extend_from_slice(&1u32.to_le_bytes()); // nr_modules
        header.extend_from_slice(&0x6000u64.to_le_bytes()); // modlist_paddr
        header.extend_from_slice(&0x7000u64.to_le_bytes()); // cmdline_paddr
        header.extend_from_slice(&0xf5000u64.to_le_bytes()); // rsdp_paddr
        header.extend_from_slice(&0x8000u64.to_le_bytes()); // memmap_paddr
        header.extend_from_slice(&3u32.to_le_bytes()); // memmap_entries
        header.extend_from_slice(&0u32.to_le_bytes()); // reserved
        let mut modlist = std::vec::Vec::new();
        modlist.extend_from_slice(&0x1f00_0000u64.to_le_bytes());
        modlist.extend_from_slice(&12345u64.to_le_bytes());
        modlist.extend_from_slice(&[0u8; 16]);
        let mut memmap = std::vec::Vec::new();
        for (start, len, kind) in [
            (0u64, 0x9fc00u64, 1u32),
            (0xf0000, 0x10000, 2),
            (0x100000, 0x1fee0000, 1),
        ] {
            memmap.extend_from_slice(&start.to_le_bytes());
            memmap.extend_from_slice(&len.to_le_bytes());
            memmap.extend_from_slice(&kind.to_le_bytes());
            memmap.extend_from_slice(&0u32.to_le_bytes());
        }
        FakeMemory(vec![
            (0x5000, header),
            (0x6000, modlist),
            (0x7000, b"ip=dhcp port=7000\0".to_vec()),
            (0x8000, memmap),
        ])
    }

    #[test]
    fn parses_qemu_layout() {
        let info = parse(&fixture(), 0x5000).unwrap();
        assert_eq!(info.cmdline.as_str(), "ip=dhcp port=7000");
        assert_eq!(info.rsdp, 0xf5000);
        assert_eq!(
            info.modules.as_slice(),
            &[Module {
                start: 0x1f00_0000,
                len: 12345
            }]
        );
        assert_eq!(info.memory_map.len(), 3);
        assert_eq!(info.memory_map[2].kind, MemoryKind::Usable);
        assert_eq!(info.memory_map[1].kind, MemoryKind::Reserved);
        assert_eq!(info.memory_map[2].start, 0x100000);
        assert_eq!(info.loader_ranges.len(), 4);
        assert_eq!(info.loader_ranges[3].start, 0x7000);
        assert_eq!(info.loader_ranges[3].len, 18);
    }

    #[test]
    fn refuses_bad_magic_and_version() {
        let mut memory = fixture();
        memory.0[0].1[0] ^= 1;
        assert!(matches!(
            parse(&memory, 0x5000),
            Err(StartInfoError::BadMagic(_))
        ));
        let mut memory = fixture();
        memory.0[0].1[4] = 0;
        assert_eq!(
            parse(&memory, 0x5000).unwrap_err(),
            StartInfoError::UnsupportedVersion(0)
        );
    }

    #[test]
    fn refuses_absurd_counts_and_unreadable_pointers() {
        let mut memory = fixture();
        memory.0[0].1[48..52].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse(&memory, 0x5000),
            Err(StartInfoError::TooMany { .. })
        ));
        let mut memory = fixture();
        memory.0[0].1[12..16].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            parse(&memory, 0x5000),
            Err(StartInfoError::Unreadable { .. })
        ));
        let mut memory = fixture();
        memory.0[0].1[24..32].copy_from_slice(&0x9000u64.to_le_bytes());
        assert!(matches!(
            parse(&memory, 0x5000),
            Err(StartInfoError::Unreadable { .. })
        ));
        assert!(matches!(
            parse(&memory, 0x1234),
            Err(StartInfoError::Unreadable { .. })
        ));
    }

    #[test]
    fn unterminated_command_line_is_refused() {
        let mut memory = fixture();
        memory.0[2].1 = vec![b'a'; MAX_CMDLINE + 10];
        assert!(matches!(
            parse(&memory, 0x5000),
            Err(StartInfoError::BadCommandLine)
        ));
    }
}
