//! The processors the firmware describes: ACPI's RSDP, its RSDT or XSDT, and the MADT's local APIC entries.
//!
//! Follows the ACPI Specification 6.5: §5.2.5.3 (RSDP structure and its two checksums), §5.2.6 (system
//! description table header), §5.2.7/§5.2.8 (RSDT, XSDT), §5.2.12 (MADT) with §5.2.12.2 (Processor Local APIC),
//! §5.2.12.8 (Local APIC Address Override) and §5.2.12.12 (Processor Local x2APIC). The RSDP comes from the PVH
//! start info on the direct path and from the UEFI configuration table (passed on in the same field by the EFI
//! stub) on the UEFI path (docs/ARCHITECTURE.md §3). Every table is firmware input: lengths and counts are bounded
//! and checksums checked before anything is believed, and reads go through [`PhysRead`], so the host tests run the
//! parser over byte fixtures.

use heapless::Vec;

use crate::start_info::PhysRead;

/// Most processors kept; the kernel's per-CPU stacks and tables are sized for this many.
pub const MAX_CPUS: usize = 16;
/// Longest table read. QEMU's and OVMF's MADTs are a few hundred bytes; this bounds a corrupt length.
pub const MAX_TABLE_LEN: u32 = 64 * 1024;

/// Size of the system description table header (§5.2.6).
const HEADER_LEN: u32 = 36;
/// Size of an ACPI 1.0 RSDP, the part the first checksum covers.
const RSDP_V1_LEN: usize = 20;
/// Size of an ACPI 2.0+ RSDP, the part the extended checksum covers.
const RSDP_V2_LEN: usize = 36;

/// Why the processor list could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// The boot information carried no RSDP address.
    NoRsdp,
    /// A structure lies outside readable memory.
    Unreadable { addr: u64 },
    /// The RSDP's signature is not "RSD PTR ".
    BadRsdpSignature,
    /// A checksum did not sum to zero (the table's signature, or "RSDP").
    BadChecksum([u8; 4]),
    /// A table's length is shorter than its header or longer than [`MAX_TABLE_LEN`].
    BadLength([u8; 4]),
    /// A table pointer led to a table with another signature.
    WrongSignature([u8; 4]),
    /// The RSDT/XSDT lists no MADT ("APIC").
    NoMadt,
    /// A MADT entry's length is too short for its type or runs past the table.
    BadEntry { offset: u32 },
}

/// One processor the MADT lists as enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    /// Its local APIC (or x2APIC) ID, the destination of the INIT and start-up IPIs.
    pub apic_id: u32,
    /// The ACPI processor UID.
    pub uid: u32,
}

/// What the kernel keeps from the MADT.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Madt {
    /// Physical address of the local APIC registers (the override entry's, when present).
    pub local_apic_address: u64,
    /// Enabled processors in table order, the bootstrap processor among them; at most [`MAX_CPUS`].
    pub cpus: Vec<Cpu, MAX_CPUS>,
    /// Enabled processors beyond [`MAX_CPUS`], left out.
    pub left_out: u32,
}

fn read<const N: usize>(memory: &impl PhysRead, addr: u64) -> Result<[u8; N], AcpiError> {
    let mut bytes = [0u8; N];
    memory
        .read(addr, &mut bytes)
        .map_err(|_| AcpiError::Unreadable { addr })?;
    Ok(bytes)
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

fn sum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |total, byte| total.wrapping_add(*byte))
}

/// A table's header, after its length and checksum were checked.
struct Table {
    addr: u64,
    signature: [u8; 4],
    len: u32,
}

/// Reads the header at `addr`, bounds its length and checks the checksum over the whole table.
fn table(memory: &impl PhysRead, addr: u64) -> Result<Table, AcpiError> {
    let header: [u8; HEADER_LEN as usize] = read(memory, addr)?;
    let mut signature = [0u8; 4];
    signature.copy_from_slice(&header[..4]);
    let len = u32_at(&header, 4);
    if !(HEADER_LEN..=MAX_TABLE_LEN).contains(&len) {
        return Err(AcpiError::BadLength(signature));
    }
    let mut total = 0u8;
    let mut offset = 0;
    while offset < len {
        let chunk: [u8; 64] = match len - offset {
            rest if rest >= 64 => read(memory, addr + u64::from(offset))?,
            rest => {
                let mut chunk = [0u8; 64];
                memory
                    .read(addr + u64::from(offset), &mut chunk[..rest as usize])
                    .map_err(|_| AcpiError::Unreadable {
                        addr: addr + u64::from(offset),
                    })?;
                chunk
            }
        };
        total = total.wrapping_add(sum(&chunk));
        offset += 64;
    }
    if total != 0 {
        return Err(AcpiError::BadChecksum(signature));
    }
    Ok(Table {
        addr,
        signature,
        len,
    })
}

/// The RSDT's or XSDT's address from the RSDP at `rsdp`, and the width of its entries.
fn root_table(memory: &impl PhysRead, rsdp: u64) -> Result<(u64, u64), AcpiError> {
    let v1: [u8; RSDP_V1_LEN] = read(memory, rsdp)?;
    if &v1[..8] != b"RSD PTR " {
        return Err(AcpiError::BadRsdpSignature);
    }
    if sum(&v1) != 0 {
        return Err(AcpiError::BadChecksum(*b"RSDP"));
    }
    // Revision 2 and later add the XSDT, which supersedes the RSDT when present (§5.2.5.3).
    if v1[15] >= 2 {
        let v2: [u8; RSDP_V2_LEN] = read(memory, rsdp)?;
        if sum(&v2) != 0 {
            return Err(AcpiError::BadChecksum(*b"RSDP"));
        }
        let xsdt = u64_at(&v2, 24);
        if xsdt != 0 {
            return Ok((xsdt, 8));
        }
    }
    Ok((u64::from(u32_at(&v1, 16)), 4))
}

/// Finds the MADT through the RSDP at `rsdp` (0 when the boot information had none) and lists its enabled
/// processors.
pub fn find_cpus(memory: &impl PhysRead, rsdp: u64) -> Result<Madt, AcpiError> {
    if rsdp == 0 {
        return Err(AcpiError::NoRsdp);
    }
    let (root, width) = root_table(memory, rsdp)?;
    let root = table(memory, root)?;
    let expected = if width == 8 { *b"XSDT" } else { *b"RSDT" };
    if root.signature != expected {
        return Err(AcpiError::WrongSignature(root.signature));
    }
    let entries = u64::from(root.len - HEADER_LEN) / width;
    for index in 0..entries {
        let at = root.addr + u64::from(HEADER_LEN) + index * width;
        let pointer = if width == 8 {
            u64::from_le_bytes(read(memory, at)?)
        } else {
            u64::from(u32::from_le_bytes(read(memory, at)?))
        };
        let signature: [u8; 4] = read(memory, pointer)?;
        if &signature == b"APIC" {
            return madt(memory, &table(memory, pointer)?);
        }
    }
    Err(AcpiError::NoMadt)
}

/// The MADT's interrupt controller structures (§5.2.12): the local APIC address, then typed entries.
fn madt(memory: &impl PhysRead, table: &Table) -> Result<Madt, AcpiError> {
    let fixed: [u8; 8] = read(memory, table.addr + u64::from(HEADER_LEN))?;
    let mut madt = Madt {
        local_apic_address: u64::from(u32_at(&fixed, 0)),
        ..Madt::default()
    };
    let mut offset = HEADER_LEN + 8;
    while offset + 2 <= table.len {
        let [kind, len]: [u8; 2] = read(memory, table.addr + u64::from(offset))?;
        let len = u32::from(len);
        if len < 2 || offset + len > table.len {
            return Err(AcpiError::BadEntry { offset });
        }
        let entry_addr = table.addr + u64::from(offset);
        let enabled = |flags: u32| flags & 1 != 0;
        let cpu = match kind {
            // Processor Local APIC: UID (1 byte), APIC ID (1 byte), flags (4 bytes).
            0 => {
                if len < 8 {
                    return Err(AcpiError::BadEntry { offset });
                }
                let entry: [u8; 8] = read(memory, entry_addr)?;
                enabled(u32_at(&entry, 4)).then_some(Cpu {
                    apic_id: u32::from(entry[3]),
                    uid: u32::from(entry[2]),
                })
            }
            // Local APIC Address Override: a 64-bit address that replaces the 32-bit one.
            5 => {
                if len < 12 {
                    return Err(AcpiError::BadEntry { offset });
                }
                let entry: [u8; 12] = read(memory, entry_addr)?;
                madt.local_apic_address = u64_at(&entry, 4);
                None
            }
            // Processor Local x2APIC: reserved (2 bytes), x2APIC ID, flags, UID (4 bytes each).
            9 => {
                if len < 16 {
                    return Err(AcpiError::BadEntry { offset });
                }
                let entry: [u8; 16] = read(memory, entry_addr)?;
                enabled(u32_at(&entry, 8)).then_some(Cpu {
                    apic_id: u32_at(&entry, 4),
                    uid: u32_at(&entry, 12),
                })
            }
            _ => None,
        };
        // A processor listed twice (as local APIC and as x2APIC) is one processor.
        if let Some(cpu) = cpu {
            let known = madt.cpus.iter().any(|known| known.apic_id == cpu.apic_id);
            if !known && madt.cpus.push(cpu).is_err() {
                madt.left_out += 1;
            }
        }
        offset += len;
    }
    Ok(madt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::start_info::tests::FakeMemory;

    /// Sets byte `at` so that `bytes` sums to zero.
    fn fix_checksum(bytes: &mut [u8], at: usize) {
        bytes[at] = 0;
        bytes[at] = 0u8.wrapping_sub(sum(bytes));
    }

    /// A system description table with `signature` and `body`, checksummed.
    fn sdt(signature: &[u8; 4], body: &[u8]) -> std::vec::Vec<u8> {
        let mut table = std::vec::Vec::new();
        table.extend_from_slice(signature);
        table.extend_from_slice(&(HEADER_LEN + body.len() as u32).to_le_bytes());
        table.push(1); // revision
        table.push(0); // checksum
        table.extend_from_slice(b"BOCHS ");
        table.extend_from_slice(b"BXPC    ");
        table.extend_from_slice(&1u32.to_le_bytes());
        table.extend_from_slice(b"BXPC");
        table.extend_from_slice(&1u32.to_le_bytes());
        table.extend_from_slice(body);
        fix_checksum(&mut table, 9);
        table
    }

    fn local_apic(uid: u8, apic_id: u8, flags: u32) -> std::vec::Vec<u8> {
        let mut entry = vec![0, 8, uid, apic_id];
        entry.extend_from_slice(&flags.to_le_bytes());
        entry
    }

    fn x2apic(apic_id: u32, flags: u32, uid: u32) -> std::vec::Vec<u8> {
        let mut entry = vec![9, 16, 0, 0];
        entry.extend_from_slice(&apic_id.to_le_bytes());
        entry.extend_from_slice(&flags.to_le_bytes());
        entry.extend_from_slice(&uid.to_le_bytes());
        entry
    }

    fn madt_body(entries: &[std::vec::Vec<u8>]) -> std::vec::Vec<u8> {
        let mut body = std::vec::Vec::new();
        body.extend_from_slice(&0xFEE0_0000u32.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
        for entry in entries {
            body.extend_from_slice(entry);
        }
        body
    }

    /// An ACPI 1.0 RSDP at 0xf5000 (as SeaBIOS places it) with an RSDT at 0x3ffe0000 listing a FACP and the
    /// MADT, laid out as QEMU's q35 tables for `-smp 2`, with an I/O APIC and an interrupt override entry.
    fn seabios_tables(madt: &[u8]) -> FakeMemory {
        let mut rsdp = std::vec::Vec::new();
        rsdp.extend_from_slice(b"RSD PTR ");
        rsdp.push(0);
        rsdp.extend_from_slice(b"BOCHS ");
        rsdp.push(0); // revision 0: ACPI 1.0
        rsdp.extend_from_slice(&0x3ffe_0000u32.to_le_bytes());
        fix_checksum(&mut rsdp, 8);
        let mut rsdt_body = std::vec::Vec::new();
        rsdt_body.extend_from_slice(&0x3ffe_1000u32.to_le_bytes());
        rsdt_body.extend_from_slice(&0x3ffe_2000u32.to_le_bytes());
        FakeMemory(vec![
            (0xf5000, rsdp),
            (0x3ffe_0000, sdt(b"RSDT", &rsdt_body)),
            (0x3ffe_1000, sdt(b"FACP", &[0u8; 80])),
            (0x3ffe_2000, madt.to_vec()),
        ])
    }

    fn qemu_two_cpus() -> std::vec::Vec<u8> {
        let io_apic = vec![1, 12, 0, 0, 0, 0, 0xC0, 0xFE, 0, 0, 0, 0];
        let source_override = vec![2, 10, 0, 0, 2, 0, 0, 0, 0, 0];
        sdt(
            b"APIC",
            &madt_body(&[
                local_apic(0, 0, 1),
                local_apic(1, 1, 1),
                io_apic,
                source_override,
            ]),
        )
    }

    #[test]
    fn finds_both_processors_of_a_seabios_rsdt() {
        let madt = find_cpus(&seabios_tables(&qemu_two_cpus()), 0xf5000).unwrap();
        assert_eq!(madt.local_apic_address, 0xFEE0_0000);
        assert_eq!(
            madt.cpus.as_slice(),
            &[Cpu { apic_id: 0, uid: 0 }, Cpu { apic_id: 1, uid: 1 }]
        );
        assert_eq!(madt.left_out, 0);
    }

    #[test]
    fn follows_the_xsdt_of_an_acpi_2_rsdp() {
        let mut rsdp = std::vec::Vec::new();
        rsdp.extend_from_slice(b"RSD PTR ");
        rsdp.push(0);
        rsdp.extend_from_slice(b"OVMF  ");
        rsdp.push(2);
        rsdp.extend_from_slice(&0x7000_0000u32.to_le_bytes()); // an RSDT that is not there
        rsdp.extend_from_slice(&36u32.to_le_bytes());
        rsdp.extend_from_slice(&0x1_0000_0000u64.to_le_bytes());
        rsdp.extend_from_slice(&[0, 0, 0, 0]);
        rsdp[8] = 0;
        rsdp[8] = 0u8.wrapping_sub(sum(&rsdp[..20]));
        fix_checksum(&mut rsdp, 32);
        // Four processors, one disabled (a hot-plug slot), one only as an x2APIC entry, and a local APIC address
        // override.
        let mut override_entry = vec![5, 12, 0, 0];
        override_entry.extend_from_slice(&0xFEE0_1000u64.to_le_bytes());
        let madt = sdt(
            b"APIC",
            &madt_body(&[
                local_apic(0, 0, 1),
                local_apic(1, 2, 0),
                local_apic(2, 4, 1),
                x2apic(4, 1, 2),
                x2apic(300, 1, 3),
                override_entry,
            ]),
        );
        let memory = FakeMemory(vec![
            (0x7fb7_e014, rsdp),
            (0x1_0000_0000, sdt(b"XSDT", &0x1_0000_2000u64.to_le_bytes())),
            (0x1_0000_2000, madt),
        ]);
        let madt = find_cpus(&memory, 0x7fb7_e014).unwrap();
        assert_eq!(madt.local_apic_address, 0xFEE0_1000);
        let ids: std::vec::Vec<u32> = madt.cpus.iter().map(|cpu| cpu.apic_id).collect();
        assert_eq!(ids, [0, 4, 300]);
    }

    #[test]
    fn keeps_at_most_max_cpus() {
        let entries: std::vec::Vec<_> = (0..MAX_CPUS as u8 + 3)
            .map(|id| local_apic(id, id, 1))
            .collect();
        let madt = find_cpus(
            &seabios_tables(&sdt(b"APIC", &madt_body(&entries))),
            0xf5000,
        )
        .unwrap();
        assert_eq!(madt.cpus.len(), MAX_CPUS);
        assert_eq!(madt.left_out, 3);
    }

    #[test]
    fn refuses_bad_signatures_checksums_and_lengths() {
        assert_eq!(
            find_cpus(&seabios_tables(&qemu_two_cpus()), 0),
            Err(AcpiError::NoRsdp)
        );
        assert_eq!(
            find_cpus(&seabios_tables(&qemu_two_cpus()), 0x1234),
            Err(AcpiError::Unreadable { addr: 0x1234 })
        );

        let mut memory = seabios_tables(&qemu_two_cpus());
        memory.0[0].1[0] = b'X';
        assert_eq!(
            find_cpus(&memory, 0xf5000),
            Err(AcpiError::BadRsdpSignature)
        );

        let mut memory = seabios_tables(&qemu_two_cpus());
        memory.0[0].1[16] ^= 1;
        assert_eq!(
            find_cpus(&memory, 0xf5000),
            Err(AcpiError::BadChecksum(*b"RSDP"))
        );

        let mut corrupt = qemu_two_cpus();
        corrupt[45] ^= 0x40;
        assert_eq!(
            find_cpus(&seabios_tables(&corrupt), 0xf5000),
            Err(AcpiError::BadChecksum(*b"APIC"))
        );

        // A length past MAX_TABLE_LEN is refused before anything past the header is read.
        let mut huge = qemu_two_cpus();
        huge[4..8].copy_from_slice(&(MAX_TABLE_LEN + 1).to_le_bytes());
        assert_eq!(
            find_cpus(&seabios_tables(&huge), 0xf5000),
            Err(AcpiError::BadLength(*b"APIC"))
        );
        // A length past the end of readable memory is unreadable, not believed.
        let mut long = qemu_two_cpus();
        long[4..8].copy_from_slice(&4096u32.to_le_bytes());
        assert!(matches!(
            find_cpus(&seabios_tables(&long), 0xf5000),
            Err(AcpiError::Unreadable { .. })
        ));
    }

    #[test]
    fn refuses_entries_that_overrun_the_table() {
        // An entry of length 0 would loop forever; one of length 4 is too short for a local APIC.
        for bad in [vec![0u8, 0], vec![0u8, 4, 0, 0], vec![0u8, 200, 1, 1]] {
            let madt = sdt(b"APIC", &madt_body(&[local_apic(0, 0, 1), bad]));
            assert_eq!(
                find_cpus(&seabios_tables(&madt), 0xf5000),
                Err(AcpiError::BadEntry { offset: 52 })
            );
        }
    }

    #[test]
    fn a_table_without_madt_says_so() {
        let mut memory = seabios_tables(&qemu_two_cpus());
        memory.0[3].1[..4].copy_from_slice(b"SSDT");
        assert_eq!(find_cpus(&memory, 0xf5000), Err(AcpiError::NoMadt));
    }
}
