//! Zeroing a worker's vector registers after each engine job, so no data of one job stays in them into the next
//! (docs/ARCHITECTURE.md §2, "Processors").
//!
//! Which registers exist depends on the state components the kernel enabled in XCR0 (SDM Vol. 1 §13.3; the boot
//! code enables every one the CPU supports): SSE (XMM0-15), AVX (the upper halves, YMM0-15), AVX-512 (the opmask
//! registers k0-k7, the upper halves ZMM0-15 and the registers ZMM16-31). VZEROALL zeroes ZMM0-15 whole but leaves
//! ZMM16-31 and the opmask registers as they were (SDM Vol. 2C, VZEROALL), so the AVX-512 case clears those too.
//!
//! Kept free of other kernel code so that `tests/tests/vector_registers.rs` includes it by path and runs its tests
//! (below) on the host's CPU.

use core::arch::asm;

/// XCR0 bits 5-7: the opmask, ZMM0-15 upper halves and ZMM16-31 state components.
const XCR0_AVX512: u64 = 0b111 << 5;
/// XCR0 bit 2: the YMM upper halves.
const XCR0_AVX: u64 = 1 << 2;

/// The vector registers a processor has enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorState {
    /// XMM0-15 only.
    Sse,
    /// XMM0-15 and their YMM upper halves.
    Avx,
    /// AVX's, the opmask registers and ZMM0-31 whole.
    Avx512,
}

impl VectorState {
    /// What XCR0 enables on this processor; [`VectorState::Sse`] when XSAVE is off (CPUID.1:ECX.OSXSAVE[bit 27]
    /// mirrors CR4.OSXSAVE).
    pub fn of_this_processor() -> VectorState {
        let osxsave = core::arch::x86_64::__cpuid(1).ecx & (1 << 27) != 0;
        if !osxsave {
            return VectorState::Sse;
        }
        let (low, high): (u32, u32);
        // SAFETY: XGETBV with ECX=0 reads XCR0; CR4.OSXSAVE is set (checked above), so it does not fault.
        unsafe {
            asm!("xgetbv", in("ecx") 0, out("eax") low, out("edx") high,
                options(nomem, nostack, preserves_flags))
        };
        let xcr0 = u64::from(high) << 32 | u64::from(low);
        if xcr0 & XCR0_AVX512 == XCR0_AVX512 {
            VectorState::Avx512
        } else if xcr0 & XCR0_AVX != 0 {
            VectorState::Avx
        } else {
            VectorState::Sse
        }
    }
}

/// Zeroes every vector register `state` says exists.
pub fn clear(state: VectorState) {
    match state {
        // SAFETY: `state` was read from this processor's XCR0, which enables these registers.
        VectorState::Avx512 => unsafe { clear_avx512() },
        // SAFETY: as above.
        VectorState::Avx => unsafe { clear_avx() },
        VectorState::Sse => clear_sse(),
    }
}

fn clear_sse() {
    // SAFETY: XORPS only writes the XMM registers, which are declared clobbered; SSE is always enabled.
    unsafe {
        asm!("xorps xmm0, xmm0", "xorps xmm1, xmm1", "xorps xmm2, xmm2", "xorps xmm3, xmm3",
            "xorps xmm4, xmm4", "xorps xmm5, xmm5", "xorps xmm6, xmm6", "xorps xmm7, xmm7",
            "xorps xmm8, xmm8", "xorps xmm9, xmm9", "xorps xmm10, xmm10", "xorps xmm11, xmm11",
            "xorps xmm12, xmm12", "xorps xmm13, xmm13", "xorps xmm14, xmm14", "xorps xmm15, xmm15",
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _, out("xmm5") _,
            out("xmm6") _, out("xmm7") _, out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(nomem, nostack, preserves_flags))
    };
}

/// VZEROALL: zeroes YMM0-15.
///
/// # Safety
/// XCR0 must enable the AVX state.
#[target_feature(enable = "avx")]
unsafe fn clear_avx() {
    // SAFETY: VZEROALL only writes the vector registers, which are declared clobbered; the caller guarantees AVX.
    unsafe {
        asm!("vzeroall", out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _,
            out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _,
            out("ymm11") _, out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nomem, nostack, preserves_flags))
    };
}

/// VZEROALL for ZMM0-15, VPXORD for ZMM16-31, KXORW for k0-k7.
///
/// Never inlined: k0 cannot be named as an operand (Rust reserves it), so it is cleared in the instruction text
/// only. The opmask registers are all call-clobbered in the System V ABI, so no caller keeps a value in k0 across
/// this call, and nothing in this function does either.
///
/// # Safety
/// XCR0 must enable the AVX-512 state.
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn clear_avx512() {
    // SAFETY: these instructions only write vector and opmask registers, declared clobbered (k0 as explained
    // above); the caller guarantees AVX-512.
    unsafe {
        asm!("vzeroall",
            "vpxord zmm16, zmm16, zmm16", "vpxord zmm17, zmm17, zmm17", "vpxord zmm18, zmm18, zmm18",
            "vpxord zmm19, zmm19, zmm19", "vpxord zmm20, zmm20, zmm20", "vpxord zmm21, zmm21, zmm21",
            "vpxord zmm22, zmm22, zmm22", "vpxord zmm23, zmm23, zmm23", "vpxord zmm24, zmm24, zmm24",
            "vpxord zmm25, zmm25, zmm25", "vpxord zmm26, zmm26, zmm26", "vpxord zmm27, zmm27, zmm27",
            "vpxord zmm28, zmm28, zmm28", "vpxord zmm29, zmm29, zmm29", "vpxord zmm30, zmm30, zmm30",
            "vpxord zmm31, zmm31, zmm31",
            "kxorw k0, k0, k0", "kxorw k1, k1, k1", "kxorw k2, k2, k2", "kxorw k3, k3, k3",
            "kxorw k4, k4, k4", "kxorw k5, k5, k5", "kxorw k6, k6, k6", "kxorw k7, k7, k7",
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _,
            out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
            out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _, out("zmm16") _, out("zmm17") _,
            out("zmm18") _, out("zmm19") _, out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
            out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _, out("zmm28") _, out("zmm29") _,
            out("zmm30") _, out("zmm31") _, out("k1") _, out("k2") _, out("k3") _, out("k4") _, out("k5") _,
            out("k6") _, out("k7") _,
            options(nomem, nostack, preserves_flags))
    };
}

/// Run on the host by `tests/tests/vector_registers.rs`, which includes this file (the kernel binary cannot be built
/// for the host): after a job has filled every vector and opmask register the CPU has, [`clear`] leaves each one
/// zero. Linux enables the same XCR0 state components the kernel's boot code does, so the host exercises the level
/// the appliance would use on this CPU.
#[cfg(test)]
mod tests {
    use std::arch::asm;

    use super::VectorState;

    /// Calls [`super::clear`] for `state` (a plain function pointer, so the asm below can call it).
    extern "C" fn clear_for_state(state: u8) {
        super::clear(match state {
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
        // sits in callee-saved r12) and the 16 bytes `or_of_all` points at.
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
}
