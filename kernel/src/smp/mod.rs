//! Application processors: started from the MADT's list with INIT-SIPI-SIPI, each given its own GDT, TSS and
//! guarded stacks, checked against the bootstrap processor's page tables, then put to work on the engine's
//! parallel-for and nothing else (docs/ARCHITECTURE.md §2, "Processors").
//!
//! Start-up follows the Intel SDM Vol. 3A §9.4.4 (MP initialization: INIT IPI, 10 ms, start-up IPI, 200 µs,
//! second start-up IPI) and §10.6.1 (the interrupt command register). A start-up IPI starts the processor in
//! real mode at `vector * 4096`, so a small trampoline is copied below 1 MiB: it loads a flat GDT, enters
//! protected mode and jumps straight into the kernel's text, where paging is switched on with the kernel's own
//! tables (long mode as in `arch::boot`). The trampoline therefore never runs with paging on and is never
//! mapped executable; once bring-up is over it is zeroed and unmapped, and every application processor flushes
//! its TLB. A processor that has not checked in within [`START_TIMEOUT_US`] is sent INIT again (which parks
//! it), reported on the debug console and left out; a processor whose control registers or page-table root
//! differ from the bootstrap processor's leaves itself out the same way.

mod vector_registers;

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use kernel::acpi::{Madt, MAX_CPUS};
use kernel::memory_map::MemoryKind;
use kernel::paging::AddressSpace;
use kernel::start_info::BootInfo;
use model::parallel::work::{Idle, WorkPool, MAX_WORKERS};
use model::parallel::ParallelFor;

use crate::arch::boot::{GUARD_SIZE, INTERRUPT_STACKS, INTERRUPT_STACK_SIZE};
use crate::arch::cpu;
use crate::arch::interrupts::{self, CpuTables, LOCAL_APIC_BASE, TIMER_VECTOR};
use crate::clock::Clock;
use crate::memory::KernelTables;
use vector_registers::VectorState;

/// The trampoline's page: start-up IPI vector 8.
const TRAMPOLINE: u64 = 0x8000;
/// Where in the trampoline page the bootstrap processor leaves the page-table root, stack and slot.
const PARAMS: u64 = TRAMPOLINE + 0xF00;
const PARAM_CR3: u64 = PARAMS;
const PARAM_STACK: u64 = PARAMS + 8;
const PARAM_SLOT: u64 = PARAMS + 16;
/// Each application processor's main stack (it runs engine tasks only).
const AP_STACK_SIZE: u64 = 256 * 1024;
/// One slot of the stack area: [guard][main stack] then [guard][interrupt stack] for each IST.
const SLOT_SIZE: u64 =
    GUARD_SIZE + AP_STACK_SIZE + INTERRUPT_STACKS * (GUARD_SIZE + INTERRUPT_STACK_SIZE);
/// How long a processor has to check in after its second start-up IPI.
pub const START_TIMEOUT_US: u64 = 200_000;
/// Pause rounds a worker spins after a job before it halts: long enough to bridge the gaps between one forward
/// pass's products, short enough not to burn a host core between requests.
const SPIN_ROUNDS: u32 = 50_000;

const _: () = assert!(MAX_WORKERS + 1 == MAX_CPUS);
const _: () = assert!(net::serving::MAX_CPUS as usize == MAX_CPUS);

// The real-mode trampoline, copied to TRAMPOLINE (so its addresses are TRAMPOLINE + offset), and the 32-bit
// code it jumps to, which lives in the kernel's text like `pvh_start32`.
global_asm!(
    r#"
    .section .rodata.smp_trampoline, "a"
    .balign 16
    .global smp_trampoline_start
    .code16
smp_trampoline_start:
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    .set smp_gdt_pointer_at, {base} + smp_gdt_pointer - smp_trampoline_start
    lgdtl smp_gdt_pointer_at
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $smp_ap_start32
    .balign 8
    /* The accessed bits are preset, as in arch::boot, so loading a selector writes nothing. */
smp_gdt:
    .quad 0
    .quad 0x00CF9B000000FFFF    /* 0x08: 32-bit code */
    .quad 0x00CF93000000FFFF    /* 0x10: data */
    .quad 0x00AF9B000000FFFF    /* 0x18: 64-bit code */
smp_gdt_end:
smp_gdt_pointer:
    .word smp_gdt_end - smp_gdt - 1
    .set smp_gdt_at, {base} + smp_gdt - smp_trampoline_start
    .long smp_gdt_at
    .global smp_trampoline_end
smp_trampoline_end:
    .code64

    .section .text.smp_ap_start, "ax"
    .code32
smp_ap_start32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    /* PAE, OSFXSR, OSXMMEXCPT; then the kernel's tables, LME and NXE, and paging with WP (SDM Vol. 3A
       §9.8.5), with CR0.EM off and CR0.MP on for SSE. */
    mov %cr4, %eax
    or $((1 << 5) | (1 << 9) | (1 << 10)), %eax
    mov %eax, %cr4
    mov {cr3}, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $((1 << 8) | (1 << 11)), %eax
    wrmsr
    mov %cr0, %eax
    and $~(1 << 2), %eax
    or $((1 << 31) | (1 << 16) | (1 << 1) | 1), %eax
    mov %eax, %cr0
    ljmp $0x18, $smp_ap_long_mode
    .code64
smp_ap_long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs
    /* The same XSAVE state components as the bootstrap processor (arch::boot). */
    mov $1, %eax
    cpuid
    bt $26, %ecx
    jnc 1f
    mov %cr4, %rax
    or $(1 << 18), %rax
    mov %rax, %cr4
    mov $0xD, %eax
    xor %ecx, %ecx
    cpuid
    and $0xE7, %eax
    xor %edx, %edx
    xor %ecx, %ecx
    xsetbv
1:
    mov {stack}, %rsp
    mov {slot}, %rdi
    xor %ebp, %ebp
    call smp_ap_main
2:  cli
    hlt
    jmp 2b

    /* Each slot: a guard page, the main stack, then a guard page and a stack for each IST. */
    .section .stacks, "aw", @nobits
    .balign 4096
    .global smp_stacks
smp_stacks:
    .skip {stacks_size}
    .text
    "#,
    base = const TRAMPOLINE,
    cr3 = const PARAM_CR3,
    stack = const PARAM_STACK,
    slot = const PARAM_SLOT,
    stacks_size = const SLOT_SIZE * MAX_WORKERS as u64,
    options(att_syntax)
);

unsafe extern "C" {
    static smp_trampoline_start: u8;
    static smp_trampoline_end: u8;
    static smp_stacks: u8;
}

/// Where a slot's processor is in bring-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum SlotState {
    Unused = 0,
    /// Start-up IPIs sent; the processor has not checked in.
    Starting = 1,
    /// Checked in and working.
    Online = 2,
    /// Checked in, but its view of memory differs from the bootstrap processor's: it halted itself.
    Refused = 3,
    /// Did not check in in time: parked with INIT and left out.
    Abandoned = 4,
}

#[allow(
    clippy::declare_interior_mutable_const,
    reason = "only used to initialise the arrays below"
)]
const UNUSED: AtomicU8 = AtomicU8::new(SlotState::Unused as u8);
#[allow(
    clippy::declare_interior_mutable_const,
    reason = "only used to initialise the arrays below"
)]
const NO_APIC: AtomicU32 = AtomicU32::new(u32::MAX);
#[allow(
    clippy::declare_interior_mutable_const,
    reason = "only used to initialise the arrays below"
)]
const NO_WORKER: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Each slot's [`SlotState`]; the processor and the bootstrap processor race for it with compare-exchange.
static SLOTS: [AtomicU8; MAX_WORKERS] = [UNUSED; MAX_WORKERS];
/// Each worker's local APIC ID, for its wake-up IPI.
static WORKER_APIC: [AtomicU32; MAX_WORKERS] = [NO_APIC; MAX_WORKERS];
/// Each online slot's worker index, assigned by the bootstrap processor in start-up order.
static SLOT_WORKER: [AtomicUsize; MAX_WORKERS] = [NO_WORKER; MAX_WORKERS];
/// The bootstrap processor's page-table root and CR4, which every application processor must match.
static EXPECTED_CR3: AtomicU64 = AtomicU64::new(0);
static EXPECTED_CR4: AtomicU64 = AtomicU64::new(0);
/// Set once the trampoline is gone: workers flush their TLB, then start taking jobs.
static BRING_UP_DONE: AtomicBool = AtomicBool::new(false);
/// The vector registers XCR0 enables (the same on every processor: each runs the same XSETBV at start-up),
/// which [`Halt::after_job`] zeroes: 1 SSE, 2 AVX, 3 AVX-512; 0 (taken as SSE) until bring-up reads it.
static VECTORS: AtomicU8 = AtomicU8::new(0);

/// Per-slot GDT and TSS, each written only by its own processor.
struct SlotTables(core::cell::UnsafeCell<[CpuTables; MAX_WORKERS]>);
// SAFETY: slot `i`'s tables are taken only by the processor that won slot `i` (compare-exchange in
// `smp_ap_main`), once.
unsafe impl Sync for SlotTables {}
#[allow(
    clippy::declare_interior_mutable_const,
    reason = "only used to initialise the array below"
)]
const EMPTY_TABLES: CpuTables = CpuTables::new();
static TABLES: SlotTables = SlotTables(core::cell::UnsafeCell::new([EMPTY_TABLES; MAX_WORKERS]));

/// Halting and IPIs behind the work pool.
pub struct Halt;

impl Idle for Halt {
    fn sleep(&self, _worker: usize) {
        // The wake-up IPI uses the timer's vector, whose handler only signals end-of-interrupt.
        cpu::wait_for_interrupt();
    }

    fn wake(&self, worker: usize) {
        let apic_id = WORKER_APIC[worker].load(Ordering::Acquire);
        if apic_id != u32::MAX {
            send_ipi(apic_id, u32::from(TIMER_VECTOR) | (1 << 14));
        }
    }

    fn after_job(&self) {
        vector_registers::clear(match VECTORS.load(Ordering::Relaxed) {
            2 => VectorState::Avx,
            3 => VectorState::Avx512,
            _ => VectorState::Sse,
        });
    }
}

/// The engine's parallel-for: the bootstrap processor and every online application processor.
pub static POOL: WorkPool<Halt> = WorkPool::new(Halt, SPIN_ROUNDS);

fn symbol(address: *const u8) -> u64 {
    address as u64
}

/// The lowest address of `slot`'s stack area (its main stack's guard page).
fn slot_base(slot: usize) -> u64 {
    symbol(&raw const smp_stacks) + slot as u64 * SLOT_SIZE
}

/// Every application processor slot's stacks as (guard page, size), for `memory` to map and check.
pub fn stacks() -> impl Iterator<Item = (u64, u64)> {
    (0..MAX_WORKERS).flat_map(|slot| {
        let interrupt_base = slot_base(slot) + GUARD_SIZE + AP_STACK_SIZE;
        core::iter::once((slot_base(slot), AP_STACK_SIZE)).chain((0..INTERRUPT_STACKS).map(
            move |index| {
                (
                    interrupt_base + index * (GUARD_SIZE + INTERRUPT_STACK_SIZE),
                    INTERRUPT_STACK_SIZE,
                )
            },
        ))
    })
}

fn apic_write(offset: u64, value: u32) {
    // SAFETY: the local APIC page is mapped uncached by `memory::init`; offsets are registers from SDM Vol. 3A
    // Table 10-1, and each processor reaches its own local APIC at this address.
    unsafe { ((LOCAL_APIC_BASE + offset) as *mut u32).write_volatile(value) }
}

fn apic_read(offset: u64) -> u32 {
    // SAFETY: as for `apic_write`.
    unsafe { ((LOCAL_APIC_BASE + offset) as *const u32).read_volatile() }
}

/// This processor's local APIC ID (xAPIC mode: bits 24-31 of the ID register).
fn apic_id() -> u32 {
    apic_read(0x20) >> 24
}

/// Sends an IPI through the interrupt command register (SDM Vol. 3A §10.6.1) and waits until it is delivered.
fn send_ipi(apic_id: u32, command: u32) {
    apic_write(0x310, apic_id << 24);
    apic_write(0x300, command);
    let mut spins = 0u32;
    while apic_read(0x300) & (1 << 12) != 0 && spins < 1_000_000 {
        spins += 1;
        core::hint::spin_loop();
    }
}

fn wait_us(clock: &Clock, us: u64) {
    let start = clock.now_us();
    while clock.now_us() - start < us {
        core::hint::spin_loop();
    }
}

/// Why no application processor was started at all.
#[derive(Clone, Copy, Debug)]
#[allow(dead_code, reason = "the details are shown only on the debug console")]
pub enum SmpError {
    /// The local APIC is not at the address the interrupt stubs and this module use.
    ApicRelocated(u64),
    /// The page-table root is above 4 GiB, out of reach of the 32-bit code that loads it.
    TablesTooHigh(u64),
    /// The trampoline page is not free RAM, or the loader put something there.
    TrampolineBusy,
    /// Unmapping the trampoline failed.
    Unmap(kernel::paging::MapError),
}

/// What bring-up found.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    /// Processors in the MADT, the bootstrap processor included (0 when it was unreadable and IDs were probed).
    pub listed: usize,
    /// Application processors that are online and taking jobs.
    pub online: usize,
    /// Application processors that did not check in, or refused to run.
    pub failed: usize,
}

/// Whether the trampoline page is usable RAM that no loader structure or module occupies.
fn trampoline_page_free(boot: &BootInfo) -> bool {
    let (start, end) = (TRAMPOLINE, TRAMPOLINE + 4096);
    let usable = boot
        .memory_map
        .iter()
        .any(|r| r.kind == MemoryKind::Usable && r.start <= start && r.start + r.len >= end);
    let overlaps = |s: u64, e: u64| s < end && e > start;
    let taken = boot
        .loader_ranges
        .iter()
        .any(|r| overlaps(r.start, r.start + r.len))
        || boot
            .modules
            .iter()
            .any(|m| overlaps(m.start, m.start + m.len));
    usable && !taken
}

/// Starts up to `wanted - 1` application processors from `madt` (the bootstrap processor is the first CPU), puts
/// those that check in to work in [`POOL`], then removes the trampoline.
pub fn start(
    madt: Result<&Madt, kernel::acpi::AcpiError>,
    wanted: usize,
    boot: &BootInfo,
    space: &mut AddressSpace<KernelTables>,
    clock: &Clock,
) -> Result<Report, SmpError> {
    if wanted <= 1 {
        return Ok(Report {
            listed: madt.map_or(0, |madt| madt.cpus.len()),
            ..Report::default()
        });
    }
    // SAFETY: IA32_APIC_BASE (0x1B) exists on every x86_64 processor; reading it has no side effects.
    let apic_base = unsafe { cpu::rdmsr(0x1B) } & !0xFFF;
    let me = apic_id();
    let mut targets: heapless::Vec<u32, MAX_CPUS> = heapless::Vec::new();
    let mut report = Report::default();
    match madt {
        Ok(madt) => {
            if apic_base != LOCAL_APIC_BASE || madt.local_apic_address != LOCAL_APIC_BASE {
                return Err(SmpError::ApicRelocated(madt.local_apic_address));
            }
            report.listed = madt.cpus.len();
            for cpu in madt.cpus.iter().filter(|cpu| cpu.apic_id != me) {
                let _ = targets.push(cpu.apic_id);
            }
        }
        // QEMU's direct (PVH) path with a TPM places the initrd over the top of the firmware's ACPI tables
        // (it reserves less room for them than SeaBIOS uses), so the MADT may be unreadable there. QEMU numbers
        // the processors of `-smp N` 0 to N-1: probe those. An ID with no processor behind it drops the IPIs and
        // never checks in, which the bounded wait turns into "left out".
        Err(_error) => {
            crate::debug!(
                "smp: no usable MADT ({_error:?}); probing APIC IDs 0 to {}",
                wanted - 1
            );
            if apic_base != LOCAL_APIC_BASE {
                return Err(SmpError::ApicRelocated(apic_base));
            }
            for id in (0..wanted as u32).filter(|id| *id != me) {
                let _ = targets.push(id);
            }
        }
    }
    if targets.is_empty() {
        return Ok(report);
    }
    let root = cpu::read_cr3();
    if root >= 1 << 32 {
        return Err(SmpError::TablesTooHigh(root));
    }
    if !trampoline_page_free(boot) {
        return Err(SmpError::TrampolineBusy);
    }
    EXPECTED_CR3.store(root, Ordering::Release);
    EXPECTED_CR4.store(cpu::read_cr4(), Ordering::Release);
    VECTORS.store(
        match VectorState::of_this_processor() {
            VectorState::Sse => 1,
            VectorState::Avx => 2,
            VectorState::Avx512 => 3,
        },
        Ordering::Release,
    );
    // The local APIC must be software-enabled to send IPIs (SDM Vol. 3A §10.4.3).
    apic_write(0xF0, apic_read(0xF0) | 0x1FF);

    let start = symbol(&raw const smp_trampoline_start);
    let len = symbol(&raw const smp_trampoline_end) - start;
    // SAFETY: the trampoline page is usable RAM below 1 MiB that nothing else uses (checked above; the frame
    // allocator never hands out the first MiB), mapped read-write; the blob is far shorter than PARAMS.
    unsafe {
        core::ptr::write_bytes(TRAMPOLINE as *mut u8, 0, 4096);
        core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE as *mut u8, len as usize);
        (PARAM_CR3 as *mut u64).write_volatile(root);
    }

    let mut slot = 0;
    for &target in &targets {
        if slot == MAX_WORKERS || slot + 1 >= wanted {
            break;
        }
        if target > 0xFE {
            crate::debug!("smp: CPU with APIC ID {} needs x2APIC; left out", target);
            report.failed += 1;
            continue;
        }
        let stack_top = slot_base(slot) + GUARD_SIZE + AP_STACK_SIZE;
        SLOTS[slot].store(SlotState::Starting as u8, Ordering::Release);
        // SAFETY: the parameters lie in the trampoline page (read-write, owned by bring-up); no processor reads
        // them until the start-up IPIs below.
        unsafe {
            (PARAM_STACK as *mut u64).write_volatile(stack_top);
            (PARAM_SLOT as *mut u64).write_volatile(slot as u64);
        }
        let state = start_one(target, slot, clock);
        match state {
            SlotState::Online => {
                WORKER_APIC[report.online].store(target, Ordering::Release);
                SLOT_WORKER[slot].store(report.online, Ordering::Release);
                report.online += 1;
            }
            _ => {
                crate::debug!(
                    "smp: CPU with APIC ID {} did not come up ({:?}); left out",
                    target,
                    state
                );
                report.failed += 1;
            }
        }
        slot += 1;
    }

    // SAFETY: every started processor has checked in (it runs from its own stack and the kernel's text now) or
    // was parked with INIT; the page is still mapped read-write.
    unsafe { core::ptr::write_bytes(TRAMPOLINE as *mut u8, 0, 4096) };
    space.unmap_page(TRAMPOLINE).map_err(SmpError::Unmap)?;
    // SAFETY: INVLPG only drops a translation; the page is no longer used by anything.
    unsafe { asm!("invlpg [{}]", in(reg) TRAMPOLINE, options(nostack, preserves_flags)) };
    if space.translate(TRAMPOLINE).is_some() {
        return Err(SmpError::Unmap(kernel::paging::MapError::NotMappedAlone {
            virt: TRAMPOLINE,
        }));
    }
    POOL.set_workers(report.online);
    BRING_UP_DONE.store(true, Ordering::Release);
    Ok(report)
}

/// INIT, start-up, start-up (SDM Vol. 3A §9.4.4.1); then waits a bounded time for the processor to check in.
fn start_one(apic_id: u32, slot: usize, clock: &Clock) -> SlotState {
    const INIT: u32 = (0b101 << 8) | (1 << 14);
    const STARTUP: u32 = (0b110 << 8) | (1 << 14) | (TRAMPOLINE >> 12) as u32;
    send_ipi(apic_id, INIT);
    wait_us(clock, 10_000);
    send_ipi(apic_id, STARTUP);
    wait_us(clock, 200);
    if SLOTS[slot].load(Ordering::Acquire) == SlotState::Starting as u8 {
        send_ipi(apic_id, STARTUP);
    }
    let begin = clock.now_us();
    while clock.now_us() - begin < START_TIMEOUT_US {
        let state = SLOTS[slot].load(Ordering::Acquire);
        if state != SlotState::Starting as u8 {
            return if state == SlotState::Online as u8 {
                SlotState::Online
            } else {
                SlotState::Refused
            };
        }
        core::hint::spin_loop();
    }
    // Whoever changes the state first decides: a processor that checks in after this is turned away.
    match SLOTS[slot].compare_exchange(
        SlotState::Starting as u8,
        SlotState::Abandoned as u8,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => {
            // INIT parks it in wait-for-SIPI, so it never runs the trampoline page after it is reused.
            send_ipi(apic_id, INIT);
            SlotState::Abandoned
        }
        Err(state) if state == SlotState::Online as u8 => SlotState::Online,
        Err(_) => SlotState::Refused,
    }
}

/// Whether this processor sees memory as the bootstrap processor checked it: the same page-table root, NX and
/// write protection on, and the same CR4 protections (SMEP, SMAP, UMIP).
fn same_view_as_bootstrap() -> bool {
    let protections = (1 << 20) | (1 << 21) | (1 << 11);
    cpu::read_cr3() == EXPECTED_CR3.load(Ordering::Acquire)
        && cpu::read_efer() & (1 << 11) != 0
        && cpu::read_cr0() & (1 << 16) != 0
        && cpu::read_cr4() & protections == EXPECTED_CR4.load(Ordering::Acquire) & protections
}

/// The Rust entry of an application processor, on its own stack, from `smp_ap_long_mode`.
#[unsafe(no_mangle)]
extern "C" fn smp_ap_main(slot: u64) -> ! {
    let slot = slot as usize;
    if slot >= MAX_WORKERS {
        cpu::halt_forever();
    }
    let interrupt_base = slot_base(slot) + GUARD_SIZE + AP_STACK_SIZE;
    let mut tops = [0u64; INTERRUPT_STACKS as usize];
    for (index, top) in tops.iter_mut().enumerate() {
        *top = interrupt_base + (index as u64 + 1) * (GUARD_SIZE + INTERRUPT_STACK_SIZE);
    }
    // SAFETY: this processor was started for `slot` alone (the bootstrap processor starts one processor per
    // slot and waits for it), so nothing else takes these tables.
    let tables = unsafe { &mut (*TABLES.0.get())[slot] };
    interrupts::load(tables, tops);
    crate::memory::enable_protection_features();
    if cfg!(feature = "ap-fail-test") && slot == 0 {
        // A test build's stand-in for a processor that dies during bring-up: it ran the trampoline and loaded its
        // own tables, then never checks in. The bootstrap processor must time out, park it and go on.
        cpu::halt_forever();
    }
    let refused = !same_view_as_bootstrap();
    // Software-enable the local APIC (spurious vector 0xFF) so the wake-up IPI is accepted.
    apic_write(0xF0, 0x1FF);
    let next = if refused {
        SlotState::Refused
    } else {
        SlotState::Online
    };
    let won = SLOTS[slot]
        .compare_exchange(
            SlotState::Starting as u8,
            next as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok();
    if !won || refused {
        cpu::halt_forever();
    }
    while !BRING_UP_DONE.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    // Drop any translation of the trampoline page this processor cached while it used the trampoline's GDT.
    // SAFETY: reloading CR3 with the same root keeps every mapping the kernel uses; it only flushes the TLB.
    unsafe { cpu::write_cr3(cpu::read_cr3()) };
    let worker = SLOT_WORKER[slot].load(Ordering::Acquire);
    if worker >= MAX_WORKERS {
        cpu::halt_forever();
    }
    POOL.run_worker(worker);
    cpu::halt_forever()
}

/// Starts the application processors `cpus` (the measured `cpus=` key) asks for and says on the debug console
/// what came up. A failure leaves the engine on the bootstrap processor alone; it never stops the boot.
pub fn start_and_report(
    madt: &Result<Madt, kernel::acpi::AcpiError>,
    boot: &BootInfo,
    space: &mut AddressSpace<KernelTables>,
    cpus: u32,
    clock: &Clock,
) {
    let started = clock.now_us();
    match start(
        madt.as_ref().map_err(|error| *error),
        cpus as usize,
        boot,
        space,
        clock,
    ) {
        Ok(_report) => crate::debug!(
            "smp: {} CPUs listed, {} of {} wanted online, {} failed ({} ms); engine on {} CPUs",
            _report.listed,
            _report.online + 1,
            cpus,
            _report.failed,
            (clock.now_us() - started) / 1000,
            POOL.threads()
        ),
        Err(_error) => crate::debug!("smp: application processors not started: {_error:?}"),
    }
    let _ = started;
    #[cfg(feature = "debug-console")]
    if POOL.workers() > 0 {
        // The cost of one fork/join: what each of the engine's products pays on top of its arithmetic.
        let mut scratch = [0f32; 64];
        let rounds = 2000;
        let begin = clock.now_us();
        for _ in 0..rounds {
            POOL.for_each_chunk(&mut scratch, 1, &|_, chunk| chunk[0] += 1.0);
        }
        let elapsed_ns = (clock.now_us() - begin) * 1000;
        crate::debug!("smp: fork/join {} ns per call", elapsed_ns / rounds);
    }
}
