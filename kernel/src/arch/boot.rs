//! The first instructions: PVH entry in 32-bit protected mode, long mode, SSE/AVX, then Rust.
//!
//! PVH boot protocol (Xen `docs/misc/pvh.pandoc`): the loader finds our entry in an ELF note
//! `XEN_ELFNOTE_PHYS32_ENTRY` (type 18, name "Xen") and jumps there in 32-bit protected mode with
//! paging off, flat segments, and EBX holding the physical address of `hvm_start_info`.
//! Long mode per Intel SDM Vol. 3A §9.8.5 ("Initializing IA-32e Mode"): PAE, CR3, EFER.LME,
//! then CR0.PG. The early page tables identity-map the first 4 GiB with 2 MiB pages; Rust
//! replaces them with W^X tables (`memory::paging`) as soon as it runs.
//! SSE is enabled here because the precompiled `core` uses it (docs/ARCHITECTURE.md §2); XSAVE and AVX state
//! (XCR0, SDM Vol. 1 §13.3) are enabled when CPUID reports them, since the engine and the crypto
//! crates pick AVX2 at run time.

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a"
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 8                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32           /* QEMU reads a 64-bit value here */
    .long 0

    .section .boot.text, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi              /* keep the start_info address */

    /* Zero .bss (the early tables live there); no stack is used yet. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    mov $boot_stack_top, %esp

    /* PML4[0] -> PDPT; PDPT[0..4] -> four page directories of 2 MiB pages. */
    mov $early_pdpt, %eax
    or $0x3, %eax
    mov %eax, early_pml4
    mov $early_pd, %eax
    or $0x3, %eax
    xor %ecx, %ecx
1:  mov %eax, early_pdpt(,%ecx,8)
    add $0x1000, %eax
    inc %ecx
    cmp $4, %ecx
    jb 1b
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax              /* present, writable, 2 MiB */
    mov %eax, early_pd(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 2b

    mov $early_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $(1 << 5), %eax          /* PAE */
    mov %eax, %cr4
    mov $0xC0000080, %ecx       /* IA32_EFER */
    rdmsr
    or $((1 << 8) | (1 << 11)), %eax    /* LME, NXE */
    wrmsr
    mov %cr0, %eax
    or $((1 << 31) | (1 << 16) | 1), %eax   /* PG, WP, PE */
    mov %eax, %cr0
    lgdt early_gdt_pointer
    ljmp $0x08, $long_mode_entry

    .code64
long_mode_entry:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs

    /* SSE: CR0.EM off, CR0.MP on; CR4.OSFXSR and CR4.OSXMMEXCPT on. */
    mov %cr0, %rax
    and $~(1 << 2), %rax
    or $(1 << 1), %rax
    mov %rax, %cr0
    mov %cr4, %rax
    or $((1 << 9) | (1 << 10)), %rax
    mov %rax, %cr4

    /* XSAVE present (CPUID.1:ECX[26])? Then CR4.OSXSAVE and every x87/SSE/AVX/AVX-512 state
       component the CPU supports (CPUID.(EAX=0DH,ECX=0):EAX). */
    mov $1, %eax
    cpuid
    bt $26, %ecx
    jnc 3f
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
3:
    mov %esi, %edi              /* zero-extends: first argument = start_info address */
    xor %ebp, %ebp
    call kernel_main
4:  cli
    hlt
    jmp 4b

    .section .rodata
    .balign 8
    /* The accessed bits are preset: otherwise the CPU sets them on the first segment load,
       writing into .rodata, and the measured rodata would no longer equal the ELF file's. */
early_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF    /* 0x08: 64-bit code, accessed */
    .quad 0x00CF93000000FFFF    /* 0x10: data, accessed */
early_gdt_end:
early_gdt_pointer:
    .word early_gdt_end - early_gdt - 1
    .long early_gdt

    .section .bss
    .balign 4096
early_pml4: .skip 4096
early_pdpt: .skip 4096
early_pd:   .skip 4096 * 4

    /* Stacks, each with an unmapped guard page below it (see memory::map_kernel). */
    .section .stacks, "aw", @nobits
    .balign 4096
    .global boot_stack_guard
boot_stack_guard: .skip 4096
    .skip 256 * 1024
    .global boot_stack_top
boot_stack_top:
    .global interrupt_stacks
interrupt_stacks:
    .skip (4096 + 16 * 1024) * 4
    "#,
    options(att_syntax)
);

/// Size of the boot (main) stack.
pub const BOOT_STACK_SIZE: u64 = 256 * 1024;
/// Size of each interrupt stack (IST), not counting its guard page.
pub const INTERRUPT_STACK_SIZE: u64 = 16 * 1024;
/// How many interrupt stacks follow the boot stack.
pub const INTERRUPT_STACKS: u64 = 4;
/// Guard page size.
pub const GUARD_SIZE: u64 = 4096;
