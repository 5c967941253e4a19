//! The physical memory map (ACPI/E820 address range types) and a frame allocator over it.
//!
//! The allocator hands out 4 KiB frames from usable RAM, never from a reserved range (the kernel
//! image, the loader's start info, the initrd module, the first MiB). Frames are never freed: the
//! appliance allocates its page tables and heap once at boot.

use heapless::Vec;

/// Size of a small page and of an allocator frame.
pub const FRAME_SIZE: u64 = 4096;

/// E820 address range types (ACPI 6.5 §15, "System Address Map Interfaces").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Type 1: RAM the OS may use.
    Usable,
    /// Type 2 and anything unknown: never touched.
    Reserved,
    /// Type 3: ACPI tables, reclaimable after they are read.
    AcpiReclaimable,
    /// Type 4: ACPI non-volatile storage.
    AcpiNvs,
    /// Type 5: bad memory.
    Unusable,
}

impl MemoryKind {
    /// Maps an E820 type number to a kind; unknown types count as reserved.
    pub fn from_e820(kind: u32) -> Self {
        match kind {
            1 => Self::Usable,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Unusable,
            _ => Self::Reserved,
        }
    }
}

/// A physical address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the firmware says the range is.
    pub kind: MemoryKind,
}

impl Region {
    /// One past the last byte, saturating at the top of the address space.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// Most free ranges tracked after subtracting reservations.
pub const MAX_FREE_RANGES: usize = 128;

/// Half-open ranges `[start, end)` of usable RAM, page-aligned inward, minus `reserved`
/// (each reserved range widened outward to whole pages). Ranges that do not fit are dropped.
pub fn usable_ranges(map: &[Region], reserved: &[(u64, u64)]) -> Vec<(u64, u64), MAX_FREE_RANGES> {
    let mut free: Vec<(u64, u64), MAX_FREE_RANGES> = Vec::new();
    for region in map
        .iter()
        .filter(|region| region.kind == MemoryKind::Usable)
    {
        let start = align_up(region.start, FRAME_SIZE);
        let end = region.end() & !(FRAME_SIZE - 1);
        if start < end {
            let _ = free.push((start, end));
        }
    }
    for &(reserved_start, reserved_end) in reserved {
        let cut_start = reserved_start & !(FRAME_SIZE - 1);
        let cut_end = align_up(reserved_end, FRAME_SIZE);
        let mut next: Vec<(u64, u64), MAX_FREE_RANGES> = Vec::new();
        for &(start, end) in &free {
            if cut_end <= start || cut_start >= end {
                let _ = next.push((start, end));
                continue;
            }
            if start < cut_start {
                let _ = next.push((start, cut_start));
            }
            if cut_end < end {
                let _ = next.push((cut_end, end));
            }
        }
        free = next;
    }
    free
}

/// Rounds `value` up to a multiple of `align` (a power of two), saturating near the top.
pub fn align_up(value: u64, align: u64) -> u64 {
    value
        .checked_add(align - 1)
        .map_or(!(align - 1), |v| v & !(align - 1))
}

/// Hands out physical frames from the free ranges, lowest address first within each range.
#[derive(Clone, Debug)]
pub struct FrameAllocator {
    free: Vec<(u64, u64), MAX_FREE_RANGES>,
}

impl FrameAllocator {
    /// An allocator over `map`'s usable RAM minus `reserved` ranges (`[start, end)` pairs).
    pub fn new(map: &[Region], reserved: &[(u64, u64)]) -> Self {
        Self {
            free: usable_ranges(map, reserved),
        }
    }

    /// One zero-based 4 KiB frame address, or `None` when memory is exhausted.
    pub fn allocate_frame(&mut self) -> Option<u64> {
        self.allocate(FRAME_SIZE, FRAME_SIZE)
    }

    /// `len` bytes (rounded up to frames) aligned to `align` (a power of two, at least 4 KiB).
    pub fn allocate(&mut self, len: u64, align: u64) -> Option<u64> {
        let align = align.max(FRAME_SIZE);
        let len = align_up(len, FRAME_SIZE);
        for range in self.free.iter_mut() {
            let start = align_up(range.0, align);
            if start < range.1 && range.1 - start >= len {
                // Whatever lies between the old start and the aligned start is given up.
                range.0 = start + len;
                return Some(start);
            }
        }
        None
    }

    /// The largest contiguous free range, as `[start, end)`.
    pub fn largest_free(&self) -> Option<(u64, u64)> {
        self.free
            .iter()
            .copied()
            .filter(|r| r.1 > r.0)
            .max_by_key(|r| r.1 - r.0)
    }

    /// Removes `[start, end)` from the free ranges (to claim it for something else).
    pub fn claim(&mut self, start: u64, end: u64) {
        let remaining = usable_ranges(
            &self
                .free
                .iter()
                .map(|&(s, e)| Region {
                    start: s,
                    len: e - s,
                    kind: MemoryKind::Usable,
                })
                .collect::<Vec<Region, MAX_FREE_RANGES>>(),
            &[(start, end)],
        );
        self.free = remaining;
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|r| r.1.saturating_sub(r.0)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_map() -> [Region; 3] {
        [
            Region {
                start: 0,
                len: 0x9fc00,
                kind: MemoryKind::Usable,
            },
            Region {
                start: 0xf0000,
                len: 0x10000,
                kind: MemoryKind::Reserved,
            },
            Region {
                start: 0x100000,
                len: 0x1fee0000,
                kind: MemoryKind::Usable,
            },
        ]
    }

    #[test]
    fn reservations_are_never_handed_out() {
        let kernel = (0x100000, 0x180123);
        let initrd = (0x1f000000, 0x1f800000);
        let mut frames = FrameAllocator::new(&qemu_map(), &[(0, 0x100000), kernel, initrd]);
        let mut count = 0;
        while let Some(frame) = frames.allocate_frame() {
            assert_eq!(frame % FRAME_SIZE, 0);
            assert!(
                frame >= 0x181000,
                "{frame:#x} is in the first MiB or the kernel"
            );
            assert!(
                frame + FRAME_SIZE <= initrd.0 || frame >= initrd.1,
                "{frame:#x} in initrd"
            );
            assert!(frame + FRAME_SIZE <= 0x1ffe0000);
            count += 1;
        }
        let expected =
            (0x1f000000 - 0x181000) / FRAME_SIZE + (0x1ffe0000 - 0x1f800000) / FRAME_SIZE;
        assert_eq!(count, expected);
    }

    #[test]
    fn aligned_allocations_and_exhaustion() {
        let mut frames = FrameAllocator::new(&qemu_map(), &[(0, 0x100000)]);
        let big = frames.allocate(3 << 20, 2 << 20).unwrap();
        assert_eq!(big % (2 << 20), 0);
        assert!(frames.allocate(1 << 40, FRAME_SIZE).is_none());
        let free = frames.free_bytes();
        assert!(free < 0x1fee0000 - (3 << 20));
    }

    #[test]
    fn unusable_kinds_and_unaligned_edges() {
        let map = [
            Region {
                start: 0x1234,
                len: 0x3000,
                kind: MemoryKind::Usable,
            },
            Region {
                start: 0x10000,
                len: 0x10000,
                kind: MemoryKind::from_e820(4),
            },
            Region {
                start: 0x20000,
                len: 0x1000,
                kind: MemoryKind::from_e820(99),
            },
        ];
        assert_eq!(usable_ranges(&map, &[]).as_slice(), &[(0x2000, 0x4000)]);
        assert_eq!(MemoryKind::from_e820(99), MemoryKind::Reserved);
    }

    #[test]
    fn claim_removes_a_range() {
        let mut frames = FrameAllocator::new(&qemu_map(), &[(0, 0x100000)]);
        let (start, end) = frames.largest_free().unwrap();
        frames.claim(start, end);
        assert!(frames
            .largest_free()
            .is_none_or(|r| r.1 - r.0 < end - start));
        assert!(frames.allocate_frame().is_none());
    }

    #[test]
    fn huge_regions_do_not_overflow() {
        let map = [Region {
            start: u64::MAX - 0x1000,
            len: 0x5000,
            kind: MemoryKind::Usable,
        }];
        let ranges = usable_ranges(&map, &[]);
        assert!(ranges.iter().all(|r| r.0 <= r.1));
    }
}
