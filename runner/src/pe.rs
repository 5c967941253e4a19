//! The UEFI boot application: a PE32+ file written from the EFI entry stub's static-PIE ELF, with
//! the kernel ELF, the command line and the model as extra sections, and its Authenticode digest.
//!
//! Layout (Microsoft PE/COFF specification, "MS-DOS Stub", "COFF File Header", "Optional Header",
//! "Section Table", "The .reloc Section"): each loadable segment of the stub becomes a section at
//! RVA = vaddr + [`SEGMENT_RVA_BIAS`] with the segment's rights; each `R_X86_64_RELATIVE` entry of
//! `.rela.dyn` becomes an `IMAGE_REL_BASED_DIR64` base relocation, its stored value set to where
//! the target lies when the image sits at [`IMAGE_BASE`]; a `.reloc` section is always present
//! (with only padding entries when there is nothing to relocate) so firmware treats the image as
//! relocatable. The payload sections follow, page-aligned, in a fixed order. Nothing in the file
//! depends on time or the host, so the same inputs give the same bytes (docs/ARCHITECTURE.md,
//! "UEFI boot").
//!
//! The Authenticode digest is what the firmware measures into PCR 4 as
//! EV_EFI_BOOT_SERVICES_APPLICATION (Microsoft "Windows Authenticode Portable Executable Signature
//! Format", "Calculating the PE Image Hash"): SHA-256 over the headers without the checksum and
//! the certificate-table directory entry, the sections' raw data in file order, and any data after
//! them except a certificate table.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest as _, Sha256};

/// Where the image would like to be loaded; firmware relocates it anywhere.
pub const IMAGE_BASE: u64 = 0x1_4000_0000;
/// Section RVAs are the stub's virtual addresses plus one page, which the headers occupy.
pub const SEGMENT_RVA_BIAS: u64 = 0x1000;
const SECTION_ALIGNMENT: u64 = 0x1000;
const FILE_ALIGNMENT: u64 = 0x200;
const PE_OFFSET: usize = 0x40;
const COFF_OFFSET: usize = PE_OFFSET + 4;
const OPTIONAL_OFFSET: usize = COFF_OFFSET + 20;
const OPTIONAL_LEN: usize = 240;
const SECTION_TABLE_OFFSET: usize = OPTIONAL_OFFSET + OPTIONAL_LEN;
/// Offset of CheckSum in the PE32+ optional header.
const CHECKSUM_OFFSET: usize = 64;
/// Offset of the data directories in the PE32+ optional header.
const DIRECTORIES_OFFSET: usize = 112;
const CERTIFICATE_DIRECTORY: usize = 4;
const BASE_RELOCATION_DIRECTORY: usize = 5;
/// EFI application (PE/COFF "Windows Subsystem").
const SUBSYSTEM_EFI_APPLICATION: u16 = 10;
/// IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE | NX_COMPAT: relocatable, sections honour W^X.
const DLL_CHARACTERISTICS: u16 = 0x0040 | 0x0100;
const SCN_CODE: u32 = 0x0000_0020;
const SCN_INITIALIZED_DATA: u32 = 0x0000_0040;
const SCN_DISCARDABLE: u32 = 0x0200_0000;
const SCN_EXECUTE: u32 = 0x2000_0000;
const SCN_READ: u32 = 0x4000_0000;
const SCN_WRITE: u32 = 0x8000_0000;
const R_X86_64_RELATIVE: u32 = 8;
const IMAGE_REL_BASED_DIR64: u16 = 10;

/// A payload section: the stub finds it by name.
pub struct Payload<'a> {
    /// At most 8 bytes, e.g. `.model`.
    pub name: &'a str,
    pub source: PayloadSource<'a>,
}

/// Where a payload's bytes come from.
pub enum PayloadSource<'a> {
    Bytes(&'a [u8]),
    /// A file copied in without being read into memory whole (the model).
    File(&'a Path),
}

struct Segment {
    vaddr: u64,
    offset: u64,
    file_len: u64,
    memory_len: u64,
    flags: u32,
}

struct SectionPlan {
    name: [u8; 8],
    rva: u64,
    virtual_len: u64,
    raw_offset: u64,
    raw_len: u64,
    characteristics: u32,
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16> {
    let raw = bytes.get(at..at + 2).context("ELF truncated")?;
    Ok(u16::from_le_bytes(raw.try_into()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32> {
    let raw = bytes.get(at..at + 4).context("ELF truncated")?;
    Ok(u32::from_le_bytes(raw.try_into()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64> {
    let raw = bytes.get(at..at + 8).context("ELF truncated")?;
    Ok(u64::from_le_bytes(raw.try_into()?))
}

fn align(value: u64, alignment: u64) -> u64 {
    value.div_ceil(alignment) * alignment
}

/// The stub's PT_LOAD segments (System V gABI "Program Header").
fn segments(elf: &[u8]) -> Result<Vec<Segment>> {
    ensure!(
        elf.starts_with(b"\x7fELF\x02\x01"),
        "the EFI stub is not an ELF64 LE file"
    );
    ensure!(
        u16_at(elf, 16)? == 3,
        "the EFI stub is not a position-independent executable"
    );
    let table = u64_at(elf, 32)? as usize;
    let entry_len = u16_at(elf, 54)? as usize;
    let count = u16_at(elf, 56)? as usize;
    let mut list = Vec::new();
    for index in 0..count {
        let at = table + index * entry_len;
        if u32_at(elf, at)? != 1 {
            continue;
        }
        let segment = Segment {
            flags: u32_at(elf, at + 4)?,
            offset: u64_at(elf, at + 8)?,
            vaddr: u64_at(elf, at + 16)?,
            file_len: u64_at(elf, at + 32)?,
            memory_len: u64_at(elf, at + 40)?,
        };
        ensure!(
            segment.vaddr.is_multiple_of(SECTION_ALIGNMENT),
            "EFI stub segment at {:#x} is not page-aligned (link with -zseparate-loadable-segments)",
            segment.vaddr
        );
        ensure!(
            segment.offset + segment.file_len <= elf.len() as u64
                && segment.file_len <= segment.memory_len,
            "EFI stub segment at {:#x} lies outside the file",
            segment.vaddr
        );
        list.push(segment);
    }
    ensure!(!list.is_empty(), "the EFI stub has no loadable segment");
    Ok(list)
}

/// The stub's dynamic relocations as (target vaddr, addend); anything but RELATIVE is refused.
fn relative_relocations(elf: &[u8]) -> Result<Vec<(u64, u64)>> {
    let table = u64_at(elf, 40)? as usize;
    let entry_len = u16_at(elf, 58)? as usize;
    let count = u16_at(elf, 60)? as usize;
    let mut relocations = Vec::new();
    for index in 0..count {
        let at = table + index * entry_len;
        // SHT_RELA
        if u32_at(elf, at + 4)? != 4 {
            continue;
        }
        let offset = u64_at(elf, at + 24)? as usize;
        let size = u64_at(elf, at + 32)? as usize;
        let rela = elf
            .get(offset..offset + size)
            .context("relocations outside the file")?;
        for entry in rela.chunks_exact(24) {
            let kind = u32_at(entry, 8)?;
            ensure!(
                kind == R_X86_64_RELATIVE,
                "the EFI stub has relocation type {kind}; only R_X86_64_RELATIVE can become a PE base relocation"
            );
            relocations.push((u64_at(entry, 0)?, u64_at(entry, 16)?));
        }
    }
    relocations.sort_unstable();
    Ok(relocations)
}

/// The `.reloc` section's bytes: one block per 4 KiB page, each padded to 4 bytes.
fn base_relocation_blocks(targets: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut index = 0;
    while index < targets.len() {
        let page = targets[index] & !0xfff;
        let mut entries: Vec<u16> = Vec::new();
        while index < targets.len() && targets[index] & !0xfff == page {
            entries.push((IMAGE_REL_BASED_DIR64 << 12) | (targets[index] & 0xfff) as u16);
            index += 1;
        }
        if entries.len() % 2 == 1 {
            entries.push(0); // IMAGE_REL_BASED_ABSOLUTE: padding
        }
        out.extend_from_slice(&(page as u32).to_le_bytes());
        out.extend_from_slice(&(8 + 2 * entries.len() as u32).to_le_bytes());
        for entry in entries {
            out.extend_from_slice(&entry.to_le_bytes());
        }
    }
    if out.is_empty() {
        // Nothing to relocate: one block of padding entries still marks the image relocatable.
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&12u32.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
    }
    out
}

fn section_name(name: &str) -> Result<[u8; 8]> {
    ensure!(
        name.len() <= 8,
        "section name {name:?} is longer than 8 bytes"
    );
    let mut out = [0u8; 8];
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

fn payload_len(source: &PayloadSource) -> Result<u64> {
    Ok(match source {
        PayloadSource::Bytes(bytes) => bytes.len() as u64,
        PayloadSource::File(path) => std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len(),
    })
}

/// Writes the boot application to `out` from the stub ELF and the payloads, in order.
pub fn write_efi_application(
    stub_elf: &[u8],
    payloads: &[Payload],
    out: &mut impl Write,
) -> Result<()> {
    let segments = segments(stub_elf)?;
    let relocations = relative_relocations(stub_elf)?;
    let section_count = segments.len() + payloads.len() + 1;
    let headers_len = align(
        (SECTION_TABLE_OFFSET + 40 * section_count) as u64,
        FILE_ALIGNMENT,
    );

    // Plan every section: RVAs ascending, raw data packed at file alignment.
    let mut plans = Vec::new();
    let mut raw_offset = headers_len;
    let mut next_rva = 0;
    for segment in &segments {
        let (name, characteristics) = if segment.flags & 1 != 0 {
            (".text", SCN_CODE | SCN_EXECUTE | SCN_READ)
        } else if segment.flags & 2 != 0 {
            (".data", SCN_INITIALIZED_DATA | SCN_READ | SCN_WRITE)
        } else {
            (".rdata", SCN_INITIALIZED_DATA | SCN_READ)
        };
        let rva = segment.vaddr + SEGMENT_RVA_BIAS;
        ensure!(
            rva >= next_rva,
            "EFI stub segments overlap or are out of order"
        );
        let raw_len = align(segment.file_len, FILE_ALIGNMENT);
        plans.push(SectionPlan {
            name: section_name(name)?,
            rva,
            virtual_len: segment.memory_len,
            raw_offset,
            raw_len,
            characteristics,
        });
        raw_offset += raw_len;
        next_rva = align(rva + segment.memory_len, SECTION_ALIGNMENT);
    }
    for payload in payloads {
        let len = payload_len(&payload.source)?;
        ensure!(
            len < u32::MAX as u64 / 2,
            "payload {} is too large for a PE image",
            payload.name
        );
        let raw_len = align(len, FILE_ALIGNMENT);
        plans.push(SectionPlan {
            name: section_name(payload.name)?,
            rva: next_rva,
            virtual_len: len.max(1),
            raw_offset,
            raw_len,
            characteristics: SCN_INITIALIZED_DATA | SCN_READ,
        });
        raw_offset += raw_len;
        next_rva = align(next_rva + len.max(1), SECTION_ALIGNMENT);
    }
    let targets: Vec<u64> = relocations
        .iter()
        .map(|(target, _)| target + SEGMENT_RVA_BIAS)
        .collect();
    let reloc = base_relocation_blocks(&targets);
    let reloc_plan = SectionPlan {
        name: section_name(".reloc")?,
        rva: next_rva,
        virtual_len: reloc.len() as u64,
        raw_offset,
        raw_len: align(reloc.len() as u64, FILE_ALIGNMENT),
        characteristics: SCN_INITIALIZED_DATA | SCN_DISCARDABLE | SCN_READ,
    };
    let image_size = align(reloc_plan.rva + reloc_plan.virtual_len, SECTION_ALIGNMENT);
    ensure!(
        image_size < u32::MAX as u64,
        "the boot application exceeds 4 GiB"
    );

    // Segment bytes with the relocated values written in.
    let mut segment_bytes: Vec<Vec<u8>> = segments
        .iter()
        .map(|s| stub_elf[s.offset as usize..(s.offset + s.file_len) as usize].to_vec())
        .collect();
    for (target, addend) in &relocations {
        let (index, segment) = segments
            .iter()
            .enumerate()
            .find(|(_, s)| *target >= s.vaddr && target + 8 <= s.vaddr + s.file_len)
            .with_context(|| {
                format!("relocation target {target:#x} is not in a segment's file bytes")
            })?;
        let at = (target - segment.vaddr) as usize;
        let value = IMAGE_BASE + SEGMENT_RVA_BIAS + addend;
        segment_bytes[index][at..at + 8].copy_from_slice(&value.to_le_bytes());
    }

    let entry = u64_at(stub_elf, 24)? + SEGMENT_RVA_BIAS;
    let code: Vec<&SectionPlan> = plans
        .iter()
        .filter(|p| p.characteristics & SCN_CODE != 0)
        .collect();
    let size_of_code: u64 = code.iter().map(|p| p.raw_len).sum();
    let base_of_code = code.first().map_or(0, |p| p.rva);
    let size_of_data: u64 = plans
        .iter()
        .chain(std::iter::once(&reloc_plan))
        .filter(|p| p.characteristics & SCN_CODE == 0)
        .map(|p| p.raw_len)
        .sum();

    let mut headers = vec![0u8; headers_len as usize];
    headers[..2].copy_from_slice(b"MZ");
    headers[0x3c..0x40].copy_from_slice(&(PE_OFFSET as u32).to_le_bytes());
    headers[PE_OFFSET..PE_OFFSET + 4].copy_from_slice(b"PE\0\0");
    let mut put = |at: usize, bytes: &[u8]| headers[at..at + bytes.len()].copy_from_slice(bytes);
    // COFF file header: x86-64, sections, no time stamp or symbols, executable + large address aware.
    put(COFF_OFFSET, &0x8664u16.to_le_bytes());
    put(COFF_OFFSET + 2, &(section_count as u16).to_le_bytes());
    put(COFF_OFFSET + 16, &(OPTIONAL_LEN as u16).to_le_bytes());
    put(COFF_OFFSET + 18, &0x0022u16.to_le_bytes());
    let optional = OPTIONAL_OFFSET;
    put(optional, &0x020bu16.to_le_bytes()); // PE32+
    put(optional + 4, &(size_of_code as u32).to_le_bytes());
    put(optional + 8, &(size_of_data as u32).to_le_bytes());
    put(optional + 16, &(entry as u32).to_le_bytes());
    put(optional + 20, &(base_of_code as u32).to_le_bytes());
    put(optional + 24, &IMAGE_BASE.to_le_bytes());
    put(optional + 32, &(SECTION_ALIGNMENT as u32).to_le_bytes());
    put(optional + 36, &(FILE_ALIGNMENT as u32).to_le_bytes());
    put(optional + 56, &(image_size as u32).to_le_bytes());
    put(optional + 60, &(headers_len as u32).to_le_bytes());
    put(optional + 68, &SUBSYSTEM_EFI_APPLICATION.to_le_bytes());
    put(optional + 70, &DLL_CHARACTERISTICS.to_le_bytes());
    for (at, value) in [
        (72, 0x10_0000u64),
        (80, 0x1000),
        (88, 0x10_0000),
        (96, 0x1000),
    ] {
        put(optional + at, &value.to_le_bytes());
    }
    put(optional + 108, &16u32.to_le_bytes()); // NumberOfRvaAndSizes
    let directory = optional + DIRECTORIES_OFFSET + 8 * BASE_RELOCATION_DIRECTORY;
    put(directory, &(reloc_plan.rva as u32).to_le_bytes());
    put(
        directory + 4,
        &(reloc_plan.virtual_len as u32).to_le_bytes(),
    );
    for (index, plan) in plans.iter().chain(std::iter::once(&reloc_plan)).enumerate() {
        let at = SECTION_TABLE_OFFSET + 40 * index;
        put(at, &plan.name);
        put(at + 8, &(plan.virtual_len as u32).to_le_bytes());
        put(at + 12, &(plan.rva as u32).to_le_bytes());
        put(at + 16, &(plan.raw_len as u32).to_le_bytes());
        put(at + 20, &(plan.raw_offset as u32).to_le_bytes());
        put(at + 36, &plan.characteristics.to_le_bytes());
    }

    out.write_all(&headers)?;
    let pad = |out: &mut dyn Write, written: u64, raw_len: u64| -> Result<()> {
        out.write_all(&vec![0u8; (raw_len - written) as usize])?;
        Ok(())
    };
    for (plan, bytes) in plans.iter().zip(&segment_bytes) {
        out.write_all(bytes)?;
        pad(out, bytes.len() as u64, plan.raw_len)?;
    }
    for (plan, payload) in plans[segments.len()..].iter().zip(payloads) {
        let written = match &payload.source {
            PayloadSource::Bytes(bytes) => {
                out.write_all(bytes)?;
                bytes.len() as u64
            }
            PayloadSource::File(path) => {
                let mut file = std::fs::File::open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                std::io::copy(&mut file, out)?
            }
        };
        ensure!(
            written <= plan.raw_len,
            "payload {} changed size while the image was written",
            payload.name
        );
        pad(out, written, plan.raw_len)?;
    }
    out.write_all(&reloc)?;
    pad(out, reloc.len() as u64, reloc_plan.raw_len)?;
    Ok(())
}

/// The Authenticode SHA-256 of the PE file at `path`: the digest UEFI firmware measures for it.
pub fn authenticode_sha256(path: &Path) -> Result<[u8; 32]> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file_len = file.metadata()?.len();
    let mut head = vec![0u8; 0x1000.min(file_len as usize)];
    file.read_exact(&mut head)?;
    let pe = u32_at(&head, 0x3c)? as usize;
    ensure!(
        head.get(..2) == Some(b"MZ") && head.get(pe..pe + 4) == Some(b"PE\0\0"),
        "{} is not a PE file",
        path.display()
    );
    let coff = pe + 4;
    let sections = u16_at(&head, coff + 2)? as usize;
    let optional = coff + 20;
    let optional_len = u16_at(&head, coff + 16)? as usize;
    ensure!(
        u16_at(&head, optional)? == 0x020b,
        "{} is not PE32+",
        path.display()
    );
    let headers_len = u32_at(&head, optional + 60)? as u64;
    let certificate = optional + DIRECTORIES_OFFSET + 8 * CERTIFICATE_DIRECTORY;
    let certificate_len = u32_at(&head, certificate + 4)? as u64;
    let checksum = optional + CHECKSUM_OFFSET;
    let table = optional + optional_len;
    ensure!(
        table + 40 * sections <= head.len(),
        "{}: section table outside the first page",
        path.display()
    );
    let mut raw: Vec<(u64, u64)> = (0..sections)
        .map(|index| {
            let at = table + 40 * index;
            Ok((
                u32_at(&head, at + 20)? as u64,
                u32_at(&head, at + 16)? as u64,
            ))
        })
        .collect::<Result<_>>()?;
    raw.retain(|(_, len)| *len > 0);
    raw.sort_unstable();

    let mut hasher = Sha256::new();
    let mut hash_range = |file: &mut std::fs::File, start: u64, end: u64| -> Result<()> {
        ensure!(
            start <= end && end <= file_len,
            "{}: a hashed range lies outside the file",
            path.display()
        );
        file.seek(SeekFrom::Start(start))?;
        let mut remaining = end - start;
        let mut buffer = vec![0u8; 1 << 20];
        while remaining > 0 {
            let chunk = remaining.min(buffer.len() as u64) as usize;
            file.read_exact(&mut buffer[..chunk])?;
            hasher.update(&buffer[..chunk]);
            remaining -= chunk as u64;
        }
        Ok(())
    };
    hash_range(&mut file, 0, checksum as u64)?;
    hash_range(&mut file, checksum as u64 + 4, certificate as u64)?;
    hash_range(&mut file, certificate as u64 + 8, headers_len)?;
    let mut hashed = headers_len;
    for (offset, len) in raw {
        hash_range(&mut file, offset, offset + len)?;
        hashed += len;
    }
    let trailing_end = file_len.saturating_sub(certificate_len);
    if trailing_end > hashed {
        hash_range(&mut file, hashed, trailing_end)?;
    }
    if file_len < hashed {
        bail!("{}: sections run past the end of the file", path.display());
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_relocations_are_grouped_by_page_and_padded() {
        let blocks = base_relocation_blocks(&[0x1008, 0x1010, 0x2000]);
        assert_eq!(
            blocks,
            [
                &0x1000u32.to_le_bytes()[..],
                &12u32.to_le_bytes(),
                &0xa008u16.to_le_bytes(),
                &0xa010u16.to_le_bytes(),
                &0x2000u32.to_le_bytes(),
                &12u32.to_le_bytes(),
                &0xa000u16.to_le_bytes(),
                &0u16.to_le_bytes(),
            ]
            .concat()
        );
        assert_eq!(
            base_relocation_blocks(&[]),
            [0, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    /// A minimal static-PIE ELF: code at 0x1000, data at 0x2000 (0x10 bytes in the file, 0x100
    /// in memory) holding one pointer to 0x1010 that an R_X86_64_RELATIVE entry relocates.
    fn pie() -> Vec<u8> {
        let mut elf = vec![0u8; 0x3000];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let mut put = |at: usize, bytes: &[u8]| elf[at..at + bytes.len()].copy_from_slice(bytes);
        put(16, &3u16.to_le_bytes()); // ET_DYN
        put(24, &0x1004u64.to_le_bytes()); // e_entry
        put(32, &64u64.to_le_bytes()); // e_phoff
        put(40, &0x2900u64.to_le_bytes()); // e_shoff
        put(54, &56u16.to_le_bytes());
        put(56, &2u16.to_le_bytes());
        put(58, &64u16.to_le_bytes());
        put(60, &2u16.to_le_bytes());
        for (index, (flags, at, file_len, memory_len)) in [
            (5u32, 0x1000u64, 0x20u64, 0x20u64),
            (6, 0x2000, 0x10, 0x100),
        ]
        .into_iter()
        .enumerate()
        {
            let header = 64 + 56 * index;
            put(header, &1u32.to_le_bytes());
            put(header + 4, &flags.to_le_bytes());
            for (field, value) in [
                (8, at),
                (16, at),
                (24, at),
                (32, file_len),
                (40, memory_len),
            ] {
                put(header + field, &value.to_le_bytes());
            }
        }
        put(0x1000, &[0xcc; 0x20]);
        put(0x2000, &[0x11; 0x10]);
        // .rela.dyn: r_offset 0x2008, R_X86_64_RELATIVE, addend 0x1010.
        put(0x2800, &0x2008u64.to_le_bytes());
        put(0x2808, &8u64.to_le_bytes());
        put(0x2810, &0x1010u64.to_le_bytes());
        let rela = 0x2900 + 64;
        put(rela + 4, &4u32.to_le_bytes()); // SHT_RELA
        put(rela + 24, &0x2800u64.to_le_bytes());
        put(rela + 32, &24u64.to_le_bytes());
        elf
    }

    fn section(pe: &[u8], name: &str) -> (u32, u32, usize, usize) {
        let count = u16::from_le_bytes([pe[COFF_OFFSET + 2], pe[COFF_OFFSET + 3]]) as usize;
        (0..count)
            .map(|index| SECTION_TABLE_OFFSET + 40 * index)
            .find(|at| pe[*at..*at + 8].starts_with(name.as_bytes()) && pe[*at + name.len()] == 0)
            .map(|at| {
                let field = |offset: usize| u32_at(pe, at + offset).unwrap();
                (field(12), field(8), field(20) as usize, field(16) as usize)
            })
            .unwrap_or_else(|| panic!("no section {name}"))
    }

    #[test]
    fn segments_payloads_and_relocations_land_where_the_loader_expects() {
        let mut pe = Vec::new();
        write_efi_application(
            &pie(),
            &[Payload {
                name: ".model",
                source: PayloadSource::Bytes(b"GGUF"),
            }],
            &mut pe,
        )
        .unwrap();
        assert_eq!(&pe[..2], b"MZ");
        assert_eq!(u32_at(&pe, OPTIONAL_OFFSET + 16).unwrap(), 0x2004); // entry RVA
        let (text_rva, text_len, text_raw, _) = section(&pe, ".text");
        assert_eq!((text_rva, text_len), (0x2000, 0x20));
        assert_eq!(&pe[text_raw..text_raw + 0x20], &[0xcc; 0x20]);
        let (data_rva, data_len, data_raw, data_raw_len) = section(&pe, ".data");
        assert_eq!((data_rva, data_len, data_raw_len), (0x3000, 0x100, 0x200));
        // The pointer now holds its target's address at the preferred image base.
        let pointer = u64_at(&pe, data_raw + 8).unwrap();
        assert_eq!(pointer, IMAGE_BASE + SEGMENT_RVA_BIAS + 0x1010);
        let (model_rva, model_len, model_raw, _) = section(&pe, ".model");
        assert_eq!((model_rva, model_len), (0x4000, 4));
        assert_eq!(&pe[model_raw..model_raw + 4], b"GGUF");
        // One DIR64 entry for RVA 0x3008, padded, named by the base-relocation directory.
        let (reloc_rva, reloc_len, reloc_raw, _) = section(&pe, ".reloc");
        let directory = OPTIONAL_OFFSET + DIRECTORIES_OFFSET + 8 * BASE_RELOCATION_DIRECTORY;
        assert_eq!(u32_at(&pe, directory).unwrap(), reloc_rva);
        assert_eq!(u32_at(&pe, directory + 4).unwrap(), reloc_len);
        assert_eq!(
            &pe[reloc_raw..reloc_raw + 12],
            &[0x00, 0x30, 0, 0, 12, 0, 0, 0, 0x08, 0xa0, 0, 0]
        );
        assert_eq!(
            u32_at(&pe, OPTIONAL_OFFSET + 56).unwrap(),
            reloc_rva + 0x1000
        ); // SizeOfImage
        assert_eq!(pe.len() % FILE_ALIGNMENT as usize, 0);
    }

    #[test]
    fn authenticode_skips_the_checksum_and_covers_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pe: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, pe).unwrap();
            authenticode_sha256(&path).unwrap()
        };
        let mut pe = Vec::new();
        let payload = [Payload {
            name: ".model",
            source: PayloadSource::Bytes(b"GGUF"),
        }];
        write_efi_application(&pie(), &payload, &mut pe).unwrap();
        let digest = write("a.efi", &pe);
        let mut checksum = pe.clone();
        checksum[OPTIONAL_OFFSET + CHECKSUM_OFFSET] ^= 0xff;
        assert_eq!(write("b.efi", &checksum), digest);
        let (_, _, model_raw, _) = section(&pe, ".model");
        let mut model = pe.clone();
        model[model_raw] ^= 1;
        assert_ne!(write("c.efi", &model), digest);
        let mut header = pe.clone();
        header[COFF_OFFSET + 4] ^= 1; // TimeDateStamp
        assert_ne!(write("d.efi", &header), digest);
        // Bytes appended after the last section are hashed too.
        let mut trailing = pe.clone();
        trailing.extend_from_slice(b"appended");
        assert_ne!(write("e.efi", &trailing), digest);
    }

    #[test]
    fn long_section_names_and_non_pie_stubs_are_refused() {
        assert!(section_name(".toolongname").is_err());
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[16] = 2; // ET_EXEC
        let error = write_efi_application(&elf, &[], &mut Vec::new()).unwrap_err();
        assert!(
            error.to_string().contains("position-independent"),
            "{error}"
        );
    }
}
