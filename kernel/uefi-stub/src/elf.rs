//! The kernel's loadable segments (System V gABI, "Program Header"): the stub copies each `PT_LOAD`
//! segment of the kernel ELF stored in its image to the physical address it was linked for, exactly
//! as QEMU's PVH loader does on the direct path, so the kernel measures the same bytes either way.

use crate::{u16_at, u32_at, u64_at};

const PT_LOAD: u32 = 1;
/// Most loadable segments accepted (the kernel has three).
pub const MAX_SEGMENTS: usize = 8;

/// Why the kernel ELF is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Not a little-endian ELF64 executable, or a header lies outside the file.
    Malformed,
    /// More loadable segments than [`MAX_SEGMENTS`].
    TooManySegments,
    /// A segment is larger in the file than in memory, or wraps around.
    BadSegment,
}

/// One `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Offset of its bytes in the file.
    pub offset: u64,
    /// Physical address it is loaded at.
    pub paddr: u64,
    /// Bytes copied from the file.
    pub file_len: u64,
    /// Bytes in memory; the rest after `file_len` is zero.
    pub memory_len: u64,
}

/// The kernel's entry point and segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// `e_entry`: the 32-bit PVH entry.
    pub entry: u64,
    pub segments: [Segment; MAX_SEGMENTS],
    pub count: usize,
}

impl Kernel {
    /// Parses the ELF header and program headers of `file`; every segment's bytes lie in `file`.
    pub fn parse(file: &[u8]) -> Result<Self, ElfError> {
        // ELFCLASS64, ELFDATA2LSB, ET_EXEC, EM_X86_64.
        if file.get(..6) != Some(b"\x7fELF\x02\x01")
            || u16_at(file, 16) != Some(2)
            || u16_at(file, 18) != Some(62)
        {
            return Err(ElfError::Malformed);
        }
        let entry = u64_at(file, 24).ok_or(ElfError::Malformed)?;
        let table = u64_at(file, 32).ok_or(ElfError::Malformed)? as usize;
        let entry_len = u16_at(file, 54).ok_or(ElfError::Malformed)? as usize;
        let entries = u16_at(file, 56).ok_or(ElfError::Malformed)? as usize;
        if entry_len < 56 {
            return Err(ElfError::Malformed);
        }
        let mut kernel = Kernel {
            entry,
            segments: [Segment::default(); MAX_SEGMENTS],
            count: 0,
        };
        for index in 0..entries {
            let header = table
                .checked_add(index * entry_len)
                .ok_or(ElfError::Malformed)?;
            let field = |offset| u64_at(file, header + offset).ok_or(ElfError::Malformed);
            if u32_at(file, header).ok_or(ElfError::Malformed)? != PT_LOAD {
                continue;
            }
            let segment = Segment {
                offset: field(8)?,
                paddr: field(24)?,
                file_len: field(32)?,
                memory_len: field(40)?,
            };
            let file_end = segment.offset.checked_add(segment.file_len);
            if segment.file_len > segment.memory_len
                || file_end.is_none_or(|end| end > file.len() as u64)
                || segment.paddr.checked_add(segment.memory_len).is_none()
            {
                return Err(ElfError::BadSegment);
            }
            if kernel.count == MAX_SEGMENTS {
                return Err(ElfError::TooManySegments);
            }
            kernel.segments[kernel.count] = segment;
            kernel.count += 1;
        }
        if kernel.count == 0 {
            return Err(ElfError::Malformed);
        }
        Ok(kernel)
    }

    /// The loaded segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }

    /// The physical range all segments occupy, widened to whole 4 KiB pages.
    pub fn span(&self) -> (u64, u64) {
        let start = self.segments().iter().map(|s| s.paddr).min().unwrap_or(0);
        let end = self
            .segments()
            .iter()
            .map(|s| s.paddr + s.memory_len)
            .max()
            .unwrap_or(0);
        (start & !0xfff, (end + 0xfff) & !0xfff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(segments: &[(u32, u64, u64, u64, u64)]) -> Vec<u8> {
        let mut file = vec![0u8; 64 + 56 * segments.len() + 0x100];
        file[..6].copy_from_slice(b"\x7fELF\x02\x01");
        file[16..18].copy_from_slice(&2u16.to_le_bytes());
        file[18..20].copy_from_slice(&62u16.to_le_bytes());
        file[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        file[32..40].copy_from_slice(&64u64.to_le_bytes());
        file[54..56].copy_from_slice(&56u16.to_le_bytes());
        file[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (index, &(kind, offset, paddr, filesz, memsz)) in segments.iter().enumerate() {
            let at = 64 + index * 56;
            file[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            for (field, value) in [
                (8, offset),
                (16, paddr),
                (24, paddr),
                (32, filesz),
                (40, memsz),
            ] {
                file[at + field..at + field + 8].copy_from_slice(&value.to_le_bytes());
            }
        }
        file
    }

    #[test]
    fn loadable_segments_and_span() {
        let file = elf(&[
            (1, 0x80, 0x10_0000, 0x40, 0x40),
            (4, 0, 0, 0, 0),
            (1, 0xc0, 0x10_2000, 0x10, 0x3000),
        ]);
        let kernel = Kernel::parse(&file).unwrap();
        assert_eq!(kernel.entry, 0x10_0000);
        assert_eq!(kernel.segments().len(), 2);
        assert_eq!(kernel.segments()[1].memory_len, 0x3000);
        assert_eq!(kernel.span(), (0x10_0000, 0x10_5000));
    }

    #[test]
    fn segments_outside_the_file_are_refused() {
        let file = elf(&[(1, 0x80, 0x10_0000, 0x10_0000, 0x10_0000)]);
        assert_eq!(Kernel::parse(&file), Err(ElfError::BadSegment));
        let file = elf(&[(1, 0x80, 0x10_0000, 0x20, 0x10)]);
        assert_eq!(Kernel::parse(&file), Err(ElfError::BadSegment));
        assert_eq!(Kernel::parse(b"\x7fELF"), Err(ElfError::Malformed));
        let none = elf(&[]);
        assert_eq!(Kernel::parse(&none), Err(ElfError::Malformed));
    }
}
