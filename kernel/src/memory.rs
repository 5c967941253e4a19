//! Physical memory at boot: copy the start info, reserve what is in use, build and switch to the
//! W^X page tables, check them, and hand the rest of RAM to the heap.
//!
//! Everything is identity mapped (virtual = physical), which keeps DMA addresses for virtio
//! trivial. Permissions follow docs/ARCHITECTURE.md §1 / issue 2: text RX; rodata and the model R+NX;
//! data, bss, heap and stacks RW+NX; MMIO uncached+NX; page 0 and one guard page under every
//! stack unmapped. The early boot tables (all RWX) are abandoned once the new tables are live.

use kernel::acpi::{AcpiError, Madt};
use kernel::memory_map::{usable_ranges, FrameAllocator, FRAME_SIZE};
use kernel::paging::{check_write_xor_execute, AddressSpace, MapError, Permissions, TableMemory};
use kernel::start_info::{self, BootInfo, PhysRead, StartInfoError};
use linked_list_allocator::LockedHeap;

use crate::arch::boot::{BOOT_STACK_SIZE, GUARD_SIZE, INTERRUPT_STACKS, INTERRUPT_STACK_SIZE};
use crate::arch::cpu;
use crate::arch::interrupts::LOCAL_APIC_BASE;

/// The TPM's TIS registers (PC Client PTP §5.4.1: locality 0 at 0xFED40000, five localities).
pub const TPM_MMIO_BASE: u64 = 0xFED4_0000;
const TPM_MMIO_LEN: u64 = 0x5000;
/// Frames kept back from the heap for page tables mapped after boot (PCI BARs).
const TABLE_RESERVE: u64 = 4 << 20;
/// The early tables identity-map this much; start-info reads must stay below it.
const EARLY_MAPPED_LIMIT: u64 = 4 << 30;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

unsafe extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __stacks_start: u8;
    static __stacks_end: u8;
    static boot_stack_guard: u8;
    static interrupt_stacks: u8;
}

fn symbol(address: *const u8) -> u64 {
    address as u64
}

/// Reads the loader's structures through the early identity map.
struct EarlyPhysical;

impl PhysRead for EarlyPhysical {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), StartInfoError> {
        let end = addr
            .checked_add(buf.len() as u64)
            .ok_or(StartInfoError::Unreadable { addr })?;
        // QEMU's PVH loader puts some of these structures in page 0, so only address 0 itself
        // (a null pointer in the start info) is refused.
        if addr == 0 || end > EARLY_MAPPED_LIMIT {
            return Err(StartInfoError::Unreadable { addr });
        }
        // SAFETY: the early tables identity-map [0, 4 GiB) and the range was checked to lie in
        // it; the loader's structures are plain RAM that nothing else writes.
        unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
}

/// Page-table frames from the frame allocator, written through the identity map.
pub struct KernelTables {
    frames: FrameAllocator,
}

impl TableMemory for KernelTables {
    fn allocate_table(&mut self) -> Option<u64> {
        let frame = self.frames.allocate_frame()?;
        // SAFETY: the frame is free RAM handed out once by the allocator and identity mapped
        // (early tables, then the RAM mapping of the final tables).
        unsafe { core::ptr::write_bytes(frame as *mut u8, 0, FRAME_SIZE as usize) };
        Some(frame)
    }

    fn entries(&mut self, table: u64) -> &mut [u64; 512] {
        // SAFETY: `table` is a frame this type allocated (or the live root read from CR3, which
        // is one); it is 4 KiB aligned, identity mapped, and only reached through `&mut self`.
        unsafe { &mut *(table as *mut [u64; 512]) }
    }
}

/// Why memory setup failed; the kernel cannot continue.
#[derive(Clone, Copy, Debug)]
#[allow(dead_code, reason = "the details are shown only on the debug console")]
pub enum MemoryError {
    /// The start info was unusable.
    StartInfo(StartInfoError),
    /// No module was passed: the appliance needs its model as the initrd.
    NoModel,
    /// Building the tables failed.
    Map(MapError),
    /// Not enough free RAM for the heap.
    NoHeap,
    /// The live tables failed the self-check at this address.
    SelfCheck { virt: u64 },
}

/// What the rest of the kernel gets from memory setup.
pub struct Memory {
    /// The live page tables, for mapping device registers later.
    pub space: AddressSpace<KernelTables>,
    /// A copy of the loader's boot information.
    pub boot: BootInfo,
    /// Physical range of the model blob.
    pub model: (u64, u64),
    /// Physical range of the firmware's TCG2 event log (the second module; UEFI boot only).
    pub firmware_log: Option<(u64, u64)>,
    /// Heap size in bytes.
    #[allow(dead_code, reason = "reported only on the debug console")]
    pub heap_bytes: u64,
    /// The processors the ACPI MADT lists, read while the early tables still map the firmware's tables.
    pub madt: Result<Madt, AcpiError>,
}

fn map_kernel(space: &mut AddressSpace<KernelTables>) -> Result<(), MapError> {
    let text = (
        symbol(&raw const __text_start),
        symbol(&raw const __text_end),
    );
    let rodata = (
        symbol(&raw const __rodata_start),
        symbol(&raw const __rodata_end),
    );
    let data = (
        symbol(&raw const __data_start),
        symbol(&raw const __stacks_start),
    );
    space.map(text.0, text.0, text.1 - text.0, Permissions::ReadExecute)?;
    space.map(
        rodata.0,
        rodata.0,
        rodata.1 - rodata.0,
        Permissions::ReadOnly,
    )?;
    space.map(data.0, data.0, data.1 - data.0, Permissions::ReadWrite)?;
    // Stacks: skip the guard page at the bottom of each.
    for (guard, size) in stacks() {
        let bottom = guard + GUARD_SIZE;
        space.map(bottom, bottom, size, Permissions::ReadWrite)?;
    }
    Ok(())
}

/// Every stack as (its guard page, its size): the boot stack, then the interrupt stacks, laid out
/// by `arch::boot` as [guard page][stack] blocks, then the application processors' (`crate::smp`).
fn stacks() -> impl Iterator<Item = (u64, u64)> {
    let first_interrupt = symbol(&raw const interrupt_stacks);
    let interrupt = (0..INTERRUPT_STACKS).map(move |index| {
        let guard = first_interrupt + index * (GUARD_SIZE + INTERRUPT_STACK_SIZE);
        (guard, INTERRUPT_STACK_SIZE)
    });
    core::iter::once((symbol(&raw const boot_stack_guard), BOOT_STACK_SIZE))
        .chain(interrupt)
        .chain(crate::smp::stacks())
}

/// Sets up memory from the PVH start info at `start_info_address`.
pub fn init(start_info_address: u64) -> Result<Memory, MemoryError> {
    let boot =
        start_info::parse(&EarlyPhysical, start_info_address).map_err(MemoryError::StartInfo)?;
    let madt = kernel::acpi::find_cpus(&EarlyPhysical, boot.rsdp);
    let module = *boot.modules.first().ok_or(MemoryError::NoModel)?;
    let model = (module.start, module.start + module.len);
    let firmware_log = boot
        .modules
        .get(1)
        .filter(|log| log.len <= crate::firmware_log::MAX_LOG_BYTES)
        .map(|log| (log.start, log.start + log.len));
    let kernel = (
        symbol(&raw const __text_start),
        symbol(&raw const __stacks_end),
    );

    let mut reserved: heapless::Vec<(u64, u64), 8> = heapless::Vec::new();
    // The first MiB holds firmware data (BDA, EBDA, option ROMs); never hand it out.
    let _ = reserved.push((0, 0x10_0000));
    let _ = reserved.push(kernel);
    let _ = reserved.push(model);
    for range in &boot.loader_ranges {
        let _ = reserved.push((range.start, range.end()));
    }
    // The log stays where the stub left it, in usable RAM that the RAM mapping below covers.
    if let Some(log) = firmware_log {
        let _ = reserved.push(log);
    }
    let mut frames = FrameAllocator::new(&boot.memory_map, &reserved);

    // The heap takes the largest free range except TABLE_RESERVE kept for page tables.
    let (free_start, free_end) = frames.largest_free().ok_or(MemoryError::NoHeap)?;
    let heap_start = free_start + TABLE_RESERVE;
    if heap_start + (16 << 20) > free_end {
        return Err(MemoryError::NoHeap);
    }
    frames.claim(heap_start, free_end);

    let mut space = AddressSpace::new(KernelTables { frames }).map_err(MemoryError::Map)?;
    map_kernel(&mut space).map_err(MemoryError::Map)?;
    // All other RAM read-write, never executable: page 0, the kernel and the model excluded.
    for (start, end) in usable_ranges(&boot.memory_map, &[(0, FRAME_SIZE), kernel, model]) {
        space
            .map(start, start, end - start, Permissions::ReadWrite)
            .map_err(MemoryError::Map)?;
    }
    let model_pages = (
        model.0 & !(FRAME_SIZE - 1),
        kernel::memory_map::align_up(model.1, FRAME_SIZE),
    );
    space
        .map(
            model_pages.0,
            model_pages.0,
            model_pages.1 - model_pages.0,
            Permissions::ReadOnly,
        )
        .map_err(MemoryError::Map)?;
    space
        .map(
            TPM_MMIO_BASE,
            TPM_MMIO_BASE,
            TPM_MMIO_LEN,
            Permissions::Mmio,
        )
        .map_err(MemoryError::Map)?;
    space
        .map(
            LOCAL_APIC_BASE,
            LOCAL_APIC_BASE,
            FRAME_SIZE,
            Permissions::Mmio,
        )
        .map_err(MemoryError::Map)?;

    // SAFETY: the new tables map the kernel's text, data, stacks (the running stack included)
    // and all RAM the kernel uses, each with the rights it is used with (checked below).
    unsafe { cpu::write_cr3(space.root()) };
    enable_protection_features();
    self_check()?;

    // SAFETY: [heap_start, free_end) was claimed from the frame allocator, so nothing else uses
    // it, and it is mapped read-write; the heap is initialised exactly once, here.
    unsafe {
        HEAP.lock()
            .init(heap_start as *mut u8, (free_end - heap_start) as usize)
    };
    Ok(Memory {
        space,
        boot,
        model,
        firmware_log,
        heap_bytes: free_end - heap_start,
        madt,
    })
}

/// CR0.WP is set in the boot assembly; SMEP, SMAP and UMIP when CPUID has them (SDM Vol. 3A §4.6).
pub fn enable_protection_features() {
    if cpu::max_leaf() < 7 {
        return;
    }
    let features = cpu::cpuid(7, 0);
    let mut bits = 0;
    if features.ebx & (1 << 7) != 0 {
        bits |= 1 << 20; // SMEP
    }
    if features.ebx & (1 << 20) != 0 {
        bits |= 1 << 21; // SMAP
    }
    if features.ecx & (1 << 2) != 0 {
        bits |= 1 << 11; // UMIP
    }
    // SAFETY: each bit is set only when CPUID reports the feature; no page is a user page, so
    // SMEP/SMAP restrict nothing the kernel does.
    unsafe { cpu::set_cr4_bits(bits) };
}

/// Walks the live tables (from CR3, not from the builder's memory of them) and refuses W+X
/// leaves, a mapped page 0, mapped guard pages, and missing NXE/WP.
fn self_check() -> Result<(), MemoryError> {
    if cpu::read_efer() & (1 << 11) == 0 || cpu::read_cr0() & (1 << 16) == 0 {
        return Err(MemoryError::SelfCheck { virt: 0 });
    }
    let root = cpu::read_cr3() & kernel::paging::ADDRESS_MASK;
    let mut live = AddressSpace::from_root(root, KernelTablesView);
    check_write_xor_execute(&mut live).map_err(|v| MemoryError::SelfCheck { virt: v.virt })?;
    if live.translate(0).is_some() {
        return Err(MemoryError::SelfCheck { virt: 0 });
    }
    for (guard, _) in stacks() {
        if live.translate(guard).is_some() {
            return Err(MemoryError::SelfCheck { virt: guard });
        }
    }
    Ok(())
}

/// Read access to live tables for the self-check; it never allocates.
struct KernelTablesView;

impl TableMemory for KernelTablesView {
    fn allocate_table(&mut self) -> Option<u64> {
        None
    }

    fn entries(&mut self, table: u64) -> &mut [u64; 512] {
        // SAFETY: `table` comes from CR3 or from a present non-leaf entry of the live tables;
        // all table frames are identity mapped read-write, and the walk only reads.
        unsafe { &mut *(table as *mut [u64; 512]) }
    }
}

/// Bytes of the heap in use now (what the engine's reservations are measured with).
pub fn heap_used() -> usize {
    HEAP.lock().used()
}

impl Memory {
    /// The model blob, in place: mapped read-only and never handed to the allocators.
    pub fn model_bytes(&self) -> &'static [u8] {
        let (start, end) = self.model;
        // SAFETY: [start, end) is the initrd module, mapped read-only for the kernel's lifetime,
        // reserved from the frame allocator and the heap, and nothing writes it.
        unsafe { core::slice::from_raw_parts(start as *const u8, (end - start) as usize) }
    }

    /// The firmware's TCG2 event log the EFI stub handed over, in place; empty on the direct path.
    pub fn firmware_event_log(&self) -> &'static [u8] {
        let Some((start, end)) = self.firmware_log else {
            return &[];
        };
        // SAFETY: [start, end) is the second boot module, at most MAX_LOG_BYTES, in usable RAM
        // that is mapped read-write and reserved from the frame allocator and the heap; nothing
        // writes it after boot.
        unsafe { core::slice::from_raw_parts(start as *const u8, (end - start) as usize) }
    }

    /// Maps a device register range uncached and non-executable (page-rounded).
    pub fn map_mmio(&mut self, start: u64, len: u64) -> Result<(), MapError> {
        let first = start & !(FRAME_SIZE - 1);
        let last = kernel::memory_map::align_up(start + len, FRAME_SIZE);
        let mut page = first;
        while page < last {
            // A BAR may share a page with one mapped earlier; that page is already right.
            if self.space.translate(page).is_none() {
                self.space.map(page, page, FRAME_SIZE, Permissions::Mmio)?;
            }
            page += FRAME_SIZE;
        }
        Ok(())
    }
}
