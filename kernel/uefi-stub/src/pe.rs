//! Finding a named section in the stub's own loaded PE32+ image (Microsoft PE/COFF specification,
//! "Section Table"): the runner stores the kernel, the command line and the model as sections of
//! the one file the firmware measures.

use crate::{u16_at, u32_at};

/// Offset of `e_lfanew` in the MS-DOS header.
const LFANEW_OFFSET: usize = 0x3c;
/// Size of the COFF file header after the "PE\0\0" signature.
const COFF_HEADER_LEN: usize = 20;
/// Size of one section header.
const SECTION_HEADER_LEN: usize = 40;

/// Why a section could not be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeError {
    /// The headers are not a PE image or are truncated.
    Malformed,
    /// No section has this name.
    Missing,
}

/// A section as loaded: its offset from the image base and its length in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    /// Relative virtual address.
    pub rva: u32,
    /// `VirtualSize`: the payload's exact length.
    pub len: u32,
}

/// Finds the section called `name` (at most 8 bytes) in the image `headers`, which start at the
/// image base and cover at least `SizeOfHeaders`.
pub fn find_section(headers: &[u8], name: &[u8]) -> Result<Section, PeError> {
    if headers.get(..2) != Some(b"MZ") || name.len() > 8 {
        return Err(PeError::Malformed);
    }
    let pe = u32_at(headers, LFANEW_OFFSET).ok_or(PeError::Malformed)? as usize;
    if headers.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(PeError::Malformed);
    }
    let coff = pe + 4;
    let sections = u16_at(headers, coff + 2).ok_or(PeError::Malformed)? as usize;
    let optional_len = u16_at(headers, coff + 16).ok_or(PeError::Malformed)? as usize;
    let table = coff + COFF_HEADER_LEN + optional_len;
    let mut wanted = [0u8; 8];
    wanted[..name.len()].copy_from_slice(name);
    for index in 0..sections {
        let header = table + index * SECTION_HEADER_LEN;
        let entry = headers
            .get(header..header + SECTION_HEADER_LEN)
            .ok_or(PeError::Malformed)?;
        if entry[..8] == wanted {
            return Ok(Section {
                len: u32_at(entry, 8).ok_or(PeError::Malformed)?,
                rva: u32_at(entry, 12).ok_or(PeError::Malformed)?,
            });
        }
    }
    Err(PeError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE header with two sections, as the runner writes them.
    fn image() -> Vec<u8> {
        let mut bytes = vec![0u8; 0x200];
        bytes[..2].copy_from_slice(b"MZ");
        bytes[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        bytes[0x40..0x44].copy_from_slice(b"PE\0\0");
        bytes[0x46..0x48].copy_from_slice(&2u16.to_le_bytes());
        bytes[0x54..0x56].copy_from_slice(&240u16.to_le_bytes());
        let table = 0x44 + 20 + 240;
        for (index, (name, len, rva)) in
            [(&b".text"[..], 10u32, 0x1000u32), (b".model", 77, 0x5000)]
                .into_iter()
                .enumerate()
        {
            let at = table + index * 40;
            bytes[at..at + name.len()].copy_from_slice(name);
            bytes[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
            bytes[at + 12..at + 16].copy_from_slice(&rva.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn finds_sections_by_name() {
        let image = image();
        assert_eq!(
            find_section(&image, b".model"),
            Ok(Section {
                rva: 0x5000,
                len: 77
            })
        );
        assert_eq!(find_section(&image, b".text").unwrap().rva, 0x1000);
        assert_eq!(find_section(&image, b".mode"), Err(PeError::Missing));
    }

    #[test]
    fn rejects_truncated_or_foreign_headers() {
        let image = image();
        assert_eq!(
            find_section(&image[..0x150], b".model"),
            Err(PeError::Malformed)
        );
        assert_eq!(find_section(b"MZ", b".model"), Err(PeError::Malformed));
        let mut elf = image.clone();
        elf[..2].copy_from_slice(b"\x7fE");
        assert_eq!(find_section(&elf, b".model"), Err(PeError::Malformed));
    }
}
