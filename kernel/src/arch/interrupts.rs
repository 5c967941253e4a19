//! Descriptor tables and the few interrupts the kernel takes (Intel SDM Vol. 3A §6, §7.7, §10).
//!
//! Every IDT gate runs on an IST stack with a guard page below it, so even a stack overflow in the
//! kernel lands on a good stack. Exceptions are fatal: the handler reports (debug console only) and
//! resets the machine (`cpu::reset`). The only interrupt enabled is the local APIC timer, used to wake the main loop from HLT;
//! it is taken only inside `cpu::wait_for_interrupt` and its handler touches nothing but RAX and
//! the APIC, so no SIMD state needs saving (docs/ARCHITECTURE.md §2). Application processors share the IDT and
//! take the same vector as the IPI that wakes them (`crate::smp`). The legacy PIC is remapped and masked.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;

use super::boot::{GUARD_SIZE, INTERRUPT_STACKS, INTERRUPT_STACK_SIZE};
use super::cpu;

/// Vector of the local APIC timer.
pub const TIMER_VECTOR: u8 = 0x40;
/// The local APIC's registers; the timer stub writes its EOI register at a fixed address.
pub const LOCAL_APIC_BASE: u64 = 0xFEE0_0000;

const KERNEL_CODE: u16 = 0x08;
const KERNEL_DATA: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

/// A boot-time global: written once by the bootstrap processor in `init`, before interrupts, application
/// processors or other users exist; afterwards only read (by the processor, through the loaded tables).
struct BootCell<T>(UnsafeCell<T>);
// SAFETY: these cells are written only during `init`, on the bootstrap processor alone.
unsafe impl<T> Sync for BootCell<T> {}

#[repr(C, packed(4))]
struct TaskStateSegment {
    reserved0: u32,
    privilege_stacks: [u64; 3],
    reserved1: u64,
    interrupt_stacks: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    io_map_base: u16,
}

#[repr(C, align(16))]
struct Gdt([u64; 5]);

#[repr(C, align(16))]
struct Idt([[u64; 2]; 256]);

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

unsafe extern "C" {
    static isr_stubs: u8;
    static interrupt_stacks: u8;
}

// 256 stubs of 16 bytes each. Exceptions without an error code push a zero so the common path
// sees one layout. PIC vectors (0x20-0x2F, masked) and the APIC spurious vector only return.
global_asm!(
    r#"
    .section .text
    .balign 16
    .global isr_stubs
isr_stubs:
    .set vector, 0
    .rept 256
    .balign 16
    .if vector == 0x40
    jmp timer_interrupt
    .elseif (vector >= 0x20 && vector <= 0x2F) || vector == 0xFF
    iretq
    .elseif vector == 8 || vector == 10 || vector == 11 || vector == 12 || vector == 13 || vector == 14 || vector == 17 || vector == 21 || vector == 29 || vector == 30
    pushq $vector
    jmp fatal_interrupt_entry
    .else
    pushq $0
    pushq $vector
    jmp fatal_interrupt_entry
    .endif
    .set vector, vector + 1
    .endr

timer_interrupt:
    push %rax
    movabs $0xFEE000B0, %rax    /* local APIC EOI */
    movl $0, (%rax)
    pop %rax
    iretq

fatal_interrupt_entry:
    mov (%rsp), %rdi            /* vector */
    mov 8(%rsp), %rsi           /* error code */
    mov 16(%rsp), %rdx          /* faulting RIP */
    mov %cr2, %rcx              /* faulting address for #PF */
    and $-16, %rsp
    call fatal_interrupt
    ud2
    "#,
    options(att_syntax)
);

#[unsafe(no_mangle)]
extern "C" fn fatal_interrupt(vector: u64, error: u64, rip: u64, cr2: u64) -> ! {
    crate::debug!("fatal interrupt: vector {vector} error {error:#x} rip {rip:#x} cr2 {cr2:#x}");
    let _ = (vector, error, rip, cr2);
    cpu::reset()
}

fn gate(handler: u64, ist: u8) -> [u64; 2] {
    let low = (handler & 0xFFFF)
        | (u64::from(KERNEL_CODE) << 16)
        | (u64::from(ist) << 32)
        | (0x8E << 40) // present, DPL 0, 64-bit interrupt gate
        | (((handler >> 16) & 0xFFFF) << 48);
    [low, handler >> 32]
}

fn ist_for(vector: usize) -> u8 {
    match vector {
        2 => 2,  // NMI
        8 => 3,  // double fault
        18 => 4, // machine check
        _ => 1,
    }
}

/// One processor's GDT and TSS. Every processor needs its own TSS (the IST stack pointers and the descriptor's
/// busy bit are per processor); the IDT is shared.
pub struct CpuTables {
    gdt: Gdt,
    tss: TaskStateSegment,
}

impl CpuTables {
    /// Empty tables, filled by [`load`].
    pub const fn new() -> Self {
        Self {
            gdt: Gdt([0; 5]),
            tss: TaskStateSegment {
                reserved0: 0,
                privilege_stacks: [0; 3],
                reserved1: 0,
                interrupt_stacks: [0; 7],
                reserved2: 0,
                reserved3: 0,
                io_map_base: 104, // no I/O permission bitmap
            },
        }
    }
}

static BOOT_TABLES: BootCell<CpuTables> = BootCell(UnsafeCell::new(CpuTables::new()));
static IDT: BootCell<Idt> = BootCell(UnsafeCell::new(Idt([[0; 2]; 256])));

/// Fills the IDT, loads the bootstrap processor's GDT (with its TSS) and the IDT, and masks the legacy PIC.
pub fn init() {
    let stacks = core::ptr::addr_of!(interrupt_stacks) as u64;
    let mut tops = [0u64; INTERRUPT_STACKS as usize];
    for (index, top) in tops.iter_mut().enumerate() {
        *top = stacks + (index as u64 + 1) * (GUARD_SIZE + INTERRUPT_STACK_SIZE);
    }
    let stubs = core::ptr::addr_of!(isr_stubs) as u64;
    // SAFETY: single CPU, boot time: nothing else references the IDT yet.
    let idt = unsafe { &mut *IDT.0.get() };
    for (vector, entry) in idt.0.iter_mut().enumerate() {
        *entry = gate(stubs + vector as u64 * 16, ist_for(vector));
    }
    // SAFETY: as above; the boot tables are taken once, here.
    load(unsafe { &mut *BOOT_TABLES.0.get() }, tops);
    mask_legacy_pic();
}

/// Loads `tables`, with the TSS pointing at the interrupt stacks whose tops are `ist_tops` (IST 1 to 4), and
/// the shared IDT on the calling processor. The IDT must be filled ([`init`] ran on the bootstrap processor).
pub fn load(tables: &'static mut CpuTables, ist_tops: [u64; INTERRUPT_STACKS as usize]) {
    for (index, top) in ist_tops.into_iter().enumerate() {
        tables.tss.interrupt_stacks[index] = top;
    }
    let tss_address = core::ptr::addr_of!(tables.tss) as u64;
    let gdt = &mut tables.gdt;
    gdt.0[1] = 0x00AF_9A00_0000_FFFF; // 64-bit code
    gdt.0[2] = 0x00CF_9200_0000_FFFF; // data
    let limit = (core::mem::size_of::<TaskStateSegment>() - 1) as u64;
    gdt.0[3] = (limit & 0xFFFF)
        | ((tss_address & 0xFF_FFFF) << 16)
        | (0x89 << 40) // present, 64-bit TSS (available)
        | (((limit >> 16) & 0xF) << 48)
        | (((tss_address >> 24) & 0xFF) << 56);
    gdt.0[4] = tss_address >> 32;
    let gdt_pointer = DescriptorPointer {
        limit: (5 * 8 - 1) as u16,
        base: core::ptr::addr_of!(tables.gdt) as u64,
    };
    let idt_pointer = DescriptorPointer {
        limit: (256 * 16 - 1) as u16,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the tables are static and complete; reloading CS with a far return and the data
    // segments with the same flat descriptors keeps the running code valid.
    unsafe {
        asm!(
            "lgdt [{gdt}]",
            "push {code}",
            "lea {scratch}, [rip + 2f]",
            "push {scratch}",
            "retfq",
            "2:",
            "mov ds, {data:x}",
            "mov es, {data:x}",
            "mov ss, {data:x}",
            "ltr {tss:x}",
            "lidt [{idt}]",
            gdt = in(reg) &gdt_pointer,
            idt = in(reg) &idt_pointer,
            code = const KERNEL_CODE as u64,
            data = in(reg) u64::from(KERNEL_DATA),
            tss = in(reg) u64::from(TSS_SELECTOR),
            scratch = out(reg) _,
        );
    }
}

/// Remaps the 8259 PICs to vectors 0x20-0x2F (away from the exception vectors) and masks them.
fn mask_legacy_pic() {
    for (command, data, offset, cascade) in [(0x20, 0x21, 0x20, 4), (0xA0, 0xA1, 0x28, 2)] {
        // SAFETY: ports 0x20/0x21 and 0xA0/0xA1 are the legacy PICs, which no other code
        // drives; the initialization sequence only masks them and starts no DMA.
        unsafe {
            cpu::outb(command, 0x11); // ICW1: init, ICW4 follows
            cpu::outb(data, offset); // ICW2: vector offset
            cpu::outb(data, cascade); // ICW3: cascade wiring
            cpu::outb(data, 0x01); // ICW4: 8086 mode
            cpu::outb(data, 0xFF); // OCW1: mask everything
        }
    }
}

fn apic_write(offset: u64, value: u32) {
    // SAFETY: the local APIC page is mapped uncached by `memory::init`; offsets are registers
    // from SDM Vol. 3A Table 10-1.
    unsafe { ((LOCAL_APIC_BASE + offset) as *mut u32).write_volatile(value) }
}

fn apic_read(offset: u64) -> u32 {
    // SAFETY: as for `apic_write`.
    unsafe { ((LOCAL_APIC_BASE + offset) as *const u32).read_volatile() }
}

/// Why the wake-up timer could not be started.
#[derive(Clone, Copy, Debug)]
#[allow(dead_code, reason = "the value is shown only on the debug console")]
pub enum TimerError {
    /// The local APIC is not at the architectural default address the timer stub uses.
    ApicRelocated(u64),
}

/// Starts the local APIC timer in periodic mode with the given period, calibrated against the TSC.
pub fn start_wakeup_timer(clock: &crate::clock::Clock, period_us: u64) -> Result<(), TimerError> {
    // SAFETY: IA32_APIC_BASE (0x1B) exists on every CPU with a local APIC (all x86_64 ones);
    // reading it has no side effects.
    let base = unsafe { cpu::rdmsr(0x1B) } & !0xFFF;
    if base != LOCAL_APIC_BASE {
        return Err(TimerError::ApicRelocated(base));
    }
    apic_write(0xF0, 0x1FF); // spurious vector 0xFF, APIC software-enabled
    apic_write(0x3E0, 0b0011); // divide by 16
    apic_write(0x320, 1 << 16); // timer masked while calibrating
    apic_write(0x380, u32::MAX);
    let start = clock.now_us();
    while clock.now_us() - start < 10_000 {
        core::hint::spin_loop();
    }
    let elapsed_ticks = u64::from(u32::MAX - apic_read(0x390));
    let ticks = (elapsed_ticks * period_us / 10_000).clamp(1, u64::from(u32::MAX));
    apic_write(0x320, u32::from(TIMER_VECTOR) | (1 << 17)); // periodic
    apic_write(0x380, ticks as u32);
    Ok(())
}
