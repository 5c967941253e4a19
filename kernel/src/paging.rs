//! A builder for x86-64 4-level page tables that enforces W^X, and a walker that checks it.
//!
//! Follows the Intel SDM Vol. 3A §4.5 ("4-Level Paging") entry formats. Mappings are identity or
//! not, 4 KiB or 2 MiB as alignment allows; a leaf is never both writable and executable because
//! [`Permissions`] cannot express it. The walker re-reads live tables and refuses any W+X leaf, so
//! the kernel can check the tables it actually runs on, not just the builder's intent.

/// Entry bit: present.
pub const PRESENT: u64 = 1 << 0;
/// Entry bit: writable.
pub const WRITABLE: u64 = 1 << 1;
/// Entry bit: page-level write-through.
pub const WRITE_THROUGH: u64 = 1 << 3;
/// Entry bit: page-level cache disable.
pub const CACHE_DISABLE: u64 = 1 << 4;
/// Entry bit (PDPTE/PDE): this entry maps a large page.
pub const HUGE: u64 = 1 << 7;
/// Entry bit: execute disable (requires EFER.NXE).
pub const NO_EXECUTE: u64 = 1 << 63;
/// Bits 12..52 hold the next table's or the page's physical address.
pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

const SMALL: u64 = 4096;
const LARGE: u64 = 2 << 20;

/// What a mapping allows. There is deliberately no writable-and-executable variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permissions {
    /// Kernel text: read and execute.
    ReadExecute,
    /// Constants and the model: read only.
    ReadOnly,
    /// Data, heap, stacks: read and write, never execute.
    ReadWrite,
    /// Device registers: read and write, uncached, never execute.
    Mmio,
}

impl Permissions {
    fn leaf_bits(self) -> u64 {
        match self {
            Self::ReadExecute => PRESENT,
            Self::ReadOnly => PRESENT | NO_EXECUTE,
            Self::ReadWrite => PRESENT | WRITABLE | NO_EXECUTE,
            Self::Mmio => PRESENT | WRITABLE | NO_EXECUTE | CACHE_DISABLE | WRITE_THROUGH,
        }
    }
}

/// Memory the builder writes tables into.
pub trait TableMemory {
    /// A zeroed, 4 KiB-aligned frame for a new table, or `None` when out of memory.
    fn allocate_table(&mut self) -> Option<u64>;
    /// The 512 entries of the table at physical address `table`.
    fn entries(&mut self, table: u64) -> &mut [u64; 512];
}

/// Why a mapping could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Address or length not 4 KiB aligned, or the range wraps.
    Misaligned,
    /// The address is not canonical for 48-bit virtual addresses.
    NonCanonical,
    /// Part of the range is already mapped.
    AlreadyMapped { virt: u64 },
    /// No memory for a table.
    OutOfMemory,
    /// The page to unmap is not mapped by a 4 KiB leaf of its own.
    NotMappedAlone { virt: u64 },
}

/// A leaf that breaks the W^X rule, found by [`check_write_xor_execute`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WxViolation {
    /// First virtual address the leaf maps.
    pub virt: u64,
}

/// A set of page tables under one root (what CR3 points at).
pub struct AddressSpace<M: TableMemory> {
    root: u64,
    memory: M,
}

fn index(virt: u64, level: u32) -> usize {
    ((virt >> (12 + 9 * level)) & 0x1ff) as usize
}

impl<M: TableMemory> AddressSpace<M> {
    /// An empty address space with a fresh root table.
    pub fn new(mut memory: M) -> Result<Self, MapError> {
        let root = memory.allocate_table().ok_or(MapError::OutOfMemory)?;
        Ok(Self { root, memory })
    }

    /// Opens existing tables rooted at `root` (for walking the live tables).
    pub fn from_root(root: u64, memory: M) -> Self {
        Self { root, memory }
    }

    /// Physical address of the root table.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Maps `[virt, virt + len)` to `[phys, phys + len)`, using 2 MiB pages where both addresses
    /// allow it. Refuses to remap anything already mapped.
    pub fn map(
        &mut self,
        virt: u64,
        phys: u64,
        len: u64,
        permissions: Permissions,
    ) -> Result<(), MapError> {
        if !virt.is_multiple_of(SMALL) || !phys.is_multiple_of(SMALL) || !len.is_multiple_of(SMALL)
        {
            return Err(MapError::Misaligned);
        }
        let end = virt.checked_add(len).ok_or(MapError::Misaligned)?;
        if end > 1 << 47 {
            return Err(MapError::NonCanonical);
        }
        let mut offset = 0;
        while offset < len {
            let (v, p) = (virt + offset, phys + offset);
            let large = v % LARGE == 0 && p % LARGE == 0 && len - offset >= LARGE;
            let (level, size) = if large { (1, LARGE) } else { (0, SMALL) };
            let huge_bit = if large { HUGE } else { 0 };
            let table = self.table_for(v, level)?;
            let entry = &mut self.memory.entries(table)[index(v, level)];
            if *entry & PRESENT != 0 {
                return Err(MapError::AlreadyMapped { virt: v });
            }
            *entry = (p & ADDRESS_MASK) | permissions.leaf_bits() | huge_bit;
            offset += size;
        }
        Ok(())
    }

    /// The table at `level` (0 = page table, 1 = page directory) covering `virt`, creating
    /// intermediate tables as needed.
    fn table_for(&mut self, virt: u64, level: u32) -> Result<u64, MapError> {
        let mut table = self.root;
        for current in (level + 1..=3).rev() {
            let slot = index(virt, current);
            let entry = self.memory.entries(table)[slot];
            if entry & PRESENT != 0 {
                if entry & HUGE != 0 {
                    return Err(MapError::AlreadyMapped { virt });
                }
                table = entry & ADDRESS_MASK;
            } else {
                let next = self.memory.allocate_table().ok_or(MapError::OutOfMemory)?;
                // Intermediate entries allow everything; the leaf decides (SDM §4.6).
                self.memory.entries(table)[slot] = next | PRESENT | WRITABLE;
                table = next;
            }
        }
        Ok(table)
    }

    /// Removes the 4 KiB page at `virt` (the caller flushes TLBs). Refuses a page that is not mapped on its own
    /// (unmapped, or part of a 2 MiB page).
    pub fn unmap_page(&mut self, virt: u64) -> Result<(), MapError> {
        if !virt.is_multiple_of(SMALL) {
            return Err(MapError::Misaligned);
        }
        let mut table = self.root;
        for level in (1..=3).rev() {
            let entry = self.memory.entries(table)[index(virt, level)];
            if entry & PRESENT == 0 || entry & HUGE != 0 {
                return Err(MapError::NotMappedAlone { virt });
            }
            table = entry & ADDRESS_MASK;
        }
        let entry = &mut self.memory.entries(table)[index(virt, 0)];
        if *entry & PRESENT == 0 {
            return Err(MapError::NotMappedAlone { virt });
        }
        *entry = 0;
        Ok(())
    }

    /// Looks up `virt`: the physical address and leaf entry bits, or `None` when unmapped.
    pub fn translate(&mut self, virt: u64) -> Option<(u64, u64)> {
        let mut table = self.root;
        for level in (0..=3).rev() {
            let entry = self.memory.entries(table)[index(virt, level)];
            if entry & PRESENT == 0 {
                return None;
            }
            let leaf = level == 0 || (level < 3 && entry & HUGE != 0);
            if leaf {
                let page_size = 1u64 << (12 + 9 * level);
                return Some((
                    (entry & ADDRESS_MASK & !(page_size - 1)) | (virt & (page_size - 1)),
                    entry,
                ));
            }
            table = entry & ADDRESS_MASK;
        }
        None
    }

    /// Walks every table and calls `visit(virt, size, entry)` for each present leaf.
    pub fn for_each_leaf(&mut self, mut visit: impl FnMut(u64, u64, u64)) {
        self.walk(self.root, 3, 0, &mut visit);
    }

    fn walk(&mut self, table: u64, level: u32, base: u64, visit: &mut impl FnMut(u64, u64, u64)) {
        for slot in 0..512u64 {
            let entry = self.memory.entries(table)[slot as usize];
            if entry & PRESENT == 0 {
                continue;
            }
            let virt = base | (slot << (12 + 9 * level));
            let leaf = level == 0 || (level < 3 && entry & HUGE != 0);
            if leaf {
                visit(virt, 1u64 << (12 + 9 * level), entry);
            } else {
                self.walk(entry & ADDRESS_MASK, level - 1, virt, visit);
            }
        }
    }
}

/// Checks that no present leaf is both writable and executable.
pub fn check_write_xor_execute<M: TableMemory>(
    space: &mut AddressSpace<M>,
) -> Result<(), WxViolation> {
    let mut violation = None;
    space.for_each_leaf(|virt, _size, entry| {
        if violation.is_none() && entry & WRITABLE != 0 && entry & NO_EXECUTE == 0 {
            violation = Some(WxViolation { virt });
        }
    });
    violation.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct HostTables {
        tables: HashMap<u64, Box<[u64; 512]>>,
        next: u64,
    }

    impl TableMemory for HostTables {
        fn allocate_table(&mut self) -> Option<u64> {
            if self.tables.len() >= 4096 {
                return None;
            }
            self.next += 0x1000;
            self.tables.insert(self.next, Box::new([0; 512]));
            Some(self.next)
        }
        fn entries(&mut self, table: u64) -> &mut [u64; 512] {
            self.tables.get_mut(&table).expect("table exists")
        }
    }

    #[test]
    fn kernel_layout_has_no_writable_executable_leaf() {
        let mut space = AddressSpace::new(HostTables::default()).unwrap();
        space
            .map(0x100000, 0x100000, 0x20000, Permissions::ReadExecute)
            .unwrap();
        space
            .map(0x120000, 0x120000, 0x10000, Permissions::ReadOnly)
            .unwrap();
        space
            .map(0x130000, 0x130000, 0x3000, Permissions::ReadWrite)
            .unwrap();
        // Leave a guard page at 0x133000 unmapped.
        space
            .map(0x134000, 0x134000, 0x40000, Permissions::ReadWrite)
            .unwrap();
        space
            .map(0x200000, 0x200000, 0x1fe00000, Permissions::ReadWrite)
            .unwrap();
        space
            .map(0xfed40000, 0xfed40000, 0x5000, Permissions::Mmio)
            .unwrap();
        assert_eq!(check_write_xor_execute(&mut space), Ok(()));

        assert_eq!(space.translate(0), None);
        assert_eq!(space.translate(0x133000), None);
        let (phys, text) = space.translate(0x100123).unwrap();
        assert_eq!(phys, 0x100123);
        assert_eq!(text & (WRITABLE | NO_EXECUTE), 0);
        let (_, rodata) = space.translate(0x120000).unwrap();
        assert_eq!(rodata & (WRITABLE | NO_EXECUTE), NO_EXECUTE);
        let (_, heap) = space.translate(0x1234_5678).unwrap();
        assert_eq!(heap & HUGE, HUGE, "aligned RAM uses 2 MiB pages");
        assert_eq!(heap & (WRITABLE | NO_EXECUTE), WRITABLE | NO_EXECUTE);
        let (_, mmio) = space.translate(0xfed40018).unwrap();
        assert_eq!(
            mmio & (CACHE_DISABLE | NO_EXECUTE),
            CACHE_DISABLE | NO_EXECUTE
        );
    }

    #[test]
    fn walker_finds_a_planted_violation() {
        let mut space = AddressSpace::new(HostTables::default()).unwrap();
        space
            .map(0x400000, 0x400000, 0x1000, Permissions::ReadWrite)
            .unwrap();
        space
            .map(0x600000, 0x600000, 0x200000, Permissions::ReadExecute)
            .unwrap();
        let root = space.root();
        // Plant W+X by hand, as a bug elsewhere might.
        let pml4 = space.memory.entries(root)[0] & ADDRESS_MASK;
        let pd = space.memory.entries(pml4)[0] & ADDRESS_MASK;
        space.memory.entries(pd)[3] |= WRITABLE;
        assert_eq!(
            check_write_xor_execute(&mut space),
            Err(WxViolation { virt: 0x600000 })
        );
    }

    #[test]
    fn refuses_overlap_misalignment_and_non_canonical() {
        let mut space = AddressSpace::new(HostTables::default()).unwrap();
        space
            .map(0x200000, 0x200000, 0x200000, Permissions::ReadWrite)
            .unwrap();
        assert_eq!(
            space.map(0x201000, 0x201000, 0x1000, Permissions::ReadOnly),
            Err(MapError::AlreadyMapped { virt: 0x201000 })
        );
        assert_eq!(
            space.map(0x1001, 0, 0x1000, Permissions::ReadOnly),
            Err(MapError::Misaligned)
        );
        assert_eq!(
            space.map(1 << 47, 0, 0x1000, Permissions::ReadOnly),
            Err(MapError::NonCanonical)
        );
        assert_eq!(
            space.map(!0xfff, 0, 0x2000, Permissions::ReadOnly),
            Err(MapError::Misaligned)
        );
    }

    #[test]
    fn unmaps_a_small_page_and_refuses_others() {
        let mut space = AddressSpace::new(HostTables::default()).unwrap();
        space
            .map(0x1000, 0x1000, 0x9f000, Permissions::ReadWrite)
            .unwrap();
        space
            .map(0x200000, 0x200000, 0x200000, Permissions::ReadWrite)
            .unwrap();
        space.unmap_page(0x8000).unwrap();
        assert_eq!(space.translate(0x8000), None);
        assert!(space.translate(0x7000).is_some());
        assert!(space.translate(0x9000).is_some());
        assert_eq!(
            space.unmap_page(0x8000),
            Err(MapError::NotMappedAlone { virt: 0x8000 })
        );
        assert_eq!(
            space.unmap_page(0x201000),
            Err(MapError::NotMappedAlone { virt: 0x201000 })
        );
        assert_eq!(
            space.unmap_page(0x4000_0000),
            Err(MapError::NotMappedAlone { virt: 0x4000_0000 })
        );
        assert_eq!(space.unmap_page(0x8001), Err(MapError::Misaligned));
    }

    #[test]
    fn out_of_table_memory_is_an_error() {
        let mut space = AddressSpace::new(HostTables::default()).unwrap();
        // 4 KiB pages spread 2 MiB apart need one page table each; the fake stops at 4096 tables.
        let mut result = Ok(());
        for i in 0..5000u64 {
            result = space.map(i * LARGE + SMALL, 0, SMALL, Permissions::ReadOnly);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(MapError::OutOfMemory));
    }
}
