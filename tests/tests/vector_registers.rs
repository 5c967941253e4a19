//! The kernel's vector-register clearing (`kernel/src/smp/vector_registers.rs`, included by path: the kernel
//! binary cannot be built for the host) on the host's CPU: after a job has filled every vector and opmask register
//! the CPU has, [`vector_registers::clear`] leaves each one zero. Linux enables the same XCR0 state components the
//! kernel's boot code does, so the host exercises the level the appliance would use on this CPU.

#[allow(
    dead_code,
    reason = "the kernel binary uses the module as a whole; this test reads what it needs"
)]
#[path = "../../kernel/src/smp/vector_registers.rs"]
mod vector_registers;

use std::arch::asm;

use vector_registers::VectorState;

/// Calls [`vector_registers::clear`] for `state` (a plain function pointer, so the asm below can call it).
extern "C" fn clear_for_state(state: u8) {
    vector_registers::clear(match state {
        3 => VectorState::Avx512,
        2 => VectorState::Avx,
        _ => VectorState::Sse,
    });
}

#[test]
fn every_sse_register_is_zero_after_a_clear() {
    // Fill XMM0-15 with ones, clear, then OR them all together: one asm block, so nothing the compiler does
    // between the steps can touch the registers.
    let mut or_of_all = [0u8; 16];
    // SAFETY: the block writes only declared registers (everything the C ABI clobbers, for the call; the pointer
    // sits in callee-saved r12) and the
    // 16 bytes `or_of_all` points at.
    unsafe {
        asm!(
            "pcmpeqd xmm0, xmm0",
            "movdqa xmm1, xmm0", "movdqa xmm2, xmm0", "movdqa xmm3, xmm0", "movdqa xmm4, xmm0",
            "movdqa xmm5, xmm0", "movdqa xmm6, xmm0", "movdqa xmm7, xmm0", "movdqa xmm8, xmm0",
            "movdqa xmm9, xmm0", "movdqa xmm10, xmm0", "movdqa xmm11, xmm0", "movdqa xmm12, xmm0",
            "movdqa xmm13, xmm0", "movdqa xmm14, xmm0", "movdqa xmm15, xmm0",
            "mov edi, 1",
            "call {clear}",
            "por xmm0, xmm1", "por xmm0, xmm2", "por xmm0, xmm3", "por xmm0, xmm4", "por xmm0, xmm5",
            "por xmm0, xmm6", "por xmm0, xmm7", "por xmm0, xmm8", "por xmm0, xmm9", "por xmm0, xmm10",
            "por xmm0, xmm11", "por xmm0, xmm12", "por xmm0, xmm13", "por xmm0, xmm14", "por xmm0, xmm15",
            "movdqu [r12], xmm0",
            clear = sym clear_for_state,
            in("r12") or_of_all.as_mut_ptr(),
            clobber_abi("C"),
        )
    };
    assert_eq!(
        or_of_all, [0; 16],
        "an XMM register kept data across the clear"
    );
}

#[test]
fn every_avx512_register_is_zero_after_a_clear() {
    if VectorState::of_this_processor() != VectorState::Avx512 {
        // The AVX-512 registers do not exist on this CPU (or the OS left them off): nothing can leak there, and
        // the AVX and SSE cases are what `clear` does here.
        eprintln!("this CPU has no enabled AVX-512 state; checked the SSE registers only");
        return;
    }
    // SAFETY: AVX-512 F is enabled (checked above).
    let (zmm_or, masks_or) = unsafe { fill_clear_and_read_avx512() };
    assert_eq!(zmm_or, [0; 8], "a ZMM register kept data across the clear");
    assert_eq!(masks_or, 0, "an opmask register kept data across the clear");
}

/// Sets every bit of ZMM0-31 and k0-k7, calls the clear, and returns the OR of all ZMM registers and of all opmask
/// registers.
///
/// # Safety
/// XCR0 must enable the AVX-512 state.
#[target_feature(enable = "avx512f")]
unsafe fn fill_clear_and_read_avx512() -> ([u64; 8], u64) {
    let mut zmm_or = [0u64; 8];
    let masks_or: u64;
    // SAFETY: the block writes only declared registers (everything the C ABI clobbers, which covers every
    // vector and opmask register, and k0, which no operand can name and which the ABI also leaves to the callee)
    // and the 64 bytes `zmm_or` points at; the caller guarantees AVX-512.
    unsafe {
        asm!(
            "vpternlogd zmm0, zmm0, zmm0, 0xff",
            "vmovdqa64 zmm1, zmm0", "vmovdqa64 zmm2, zmm0", "vmovdqa64 zmm3, zmm0", "vmovdqa64 zmm4, zmm0",
            "vmovdqa64 zmm5, zmm0", "vmovdqa64 zmm6, zmm0", "vmovdqa64 zmm7, zmm0", "vmovdqa64 zmm8, zmm0",
            "vmovdqa64 zmm9, zmm0", "vmovdqa64 zmm10, zmm0", "vmovdqa64 zmm11, zmm0", "vmovdqa64 zmm12, zmm0",
            "vmovdqa64 zmm13, zmm0", "vmovdqa64 zmm14, zmm0", "vmovdqa64 zmm15, zmm0", "vmovdqa64 zmm16, zmm0",
            "vmovdqa64 zmm17, zmm0", "vmovdqa64 zmm18, zmm0", "vmovdqa64 zmm19, zmm0", "vmovdqa64 zmm20, zmm0",
            "vmovdqa64 zmm21, zmm0", "vmovdqa64 zmm22, zmm0", "vmovdqa64 zmm23, zmm0", "vmovdqa64 zmm24, zmm0",
            "vmovdqa64 zmm25, zmm0", "vmovdqa64 zmm26, zmm0", "vmovdqa64 zmm27, zmm0", "vmovdqa64 zmm28, zmm0",
            "vmovdqa64 zmm29, zmm0", "vmovdqa64 zmm30, zmm0", "vmovdqa64 zmm31, zmm0",
            "kxnorw k0, k0, k0", "kxnorw k1, k1, k1", "kxnorw k2, k2, k2", "kxnorw k3, k3, k3",
            "kxnorw k4, k4, k4", "kxnorw k5, k5, k5", "kxnorw k6, k6, k6", "kxnorw k7, k7, k7",
            "mov edi, 3",
            "call {clear}",
            "vporq zmm0, zmm0, zmm1", "vporq zmm0, zmm0, zmm2", "vporq zmm0, zmm0, zmm3",
            "vporq zmm0, zmm0, zmm4", "vporq zmm0, zmm0, zmm5", "vporq zmm0, zmm0, zmm6",
            "vporq zmm0, zmm0, zmm7", "vporq zmm0, zmm0, zmm8", "vporq zmm0, zmm0, zmm9",
            "vporq zmm0, zmm0, zmm10", "vporq zmm0, zmm0, zmm11", "vporq zmm0, zmm0, zmm12",
            "vporq zmm0, zmm0, zmm13", "vporq zmm0, zmm0, zmm14", "vporq zmm0, zmm0, zmm15",
            "vporq zmm0, zmm0, zmm16", "vporq zmm0, zmm0, zmm17", "vporq zmm0, zmm0, zmm18",
            "vporq zmm0, zmm0, zmm19", "vporq zmm0, zmm0, zmm20", "vporq zmm0, zmm0, zmm21",
            "vporq zmm0, zmm0, zmm22", "vporq zmm0, zmm0, zmm23", "vporq zmm0, zmm0, zmm24",
            "vporq zmm0, zmm0, zmm25", "vporq zmm0, zmm0, zmm26", "vporq zmm0, zmm0, zmm27",
            "vporq zmm0, zmm0, zmm28", "vporq zmm0, zmm0, zmm29", "vporq zmm0, zmm0, zmm30",
            "vporq zmm0, zmm0, zmm31",
            "vmovdqu64 [r12], zmm0",
            "korw k1, k1, k0", "korw k1, k1, k2", "korw k1, k1, k3", "korw k1, k1, k4",
            "korw k1, k1, k5", "korw k1, k1, k6", "korw k1, k1, k7",
            "kmovw r13d, k1",
            clear = sym clear_for_state,
            in("r12") zmm_or.as_mut_ptr(),
            out("r13") masks_or,
            clobber_abi("C"),
        )
    };
    (zmm_or, masks_or)
}
