//! The C memory functions the precompiled `core`/`alloc` call (`memcpy`, `memmove`, `memset`, `memcmp`,
//! `bcmp`), for every freestanding binary of the project: the kernel and the EFI entry stub both include this
//! file (docs/ARCHITECTURE.md §2).
//!
//! The copies use `rep movsb`/`rep stosb` in inline assembly and the comparison reads through volatile loads,
//! so the compiler cannot turn their bodies back into calls to themselves. ERMSB makes these fast on every CPU
//! we target.

use core::arch::asm;

/// # Safety
/// `dest` and `src` must be valid for `len` bytes and must not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, len: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and disjoint; DF is clear (SysV ABI).
    unsafe {
        asm!("rep movsb", inout("rcx") len => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// `dest` and `src` must be valid for `len` bytes; they may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, len: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize).wrapping_add(len) {
        // SAFETY: copying forwards is correct when dest is below src or the ranges are disjoint.
        unsafe { memcpy(dest, src, len) };
    } else {
        // SAFETY: dest overlaps the tail of src: copy backwards from the last byte, with DF set
        // only for this instruction and cleared again before returning (SysV ABI requires DF=0).
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") len => _,
                 inout("rdi") dest.add(len - 1) => _,
                 inout("rsi") src.add(len - 1) => _,
                 options(nostack));
        }
    }
    dest
}

/// # Safety
/// `dest` must be valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, len: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid; DF is clear.
    unsafe {
        asm!("rep stosb", inout("rcx") len => _, inout("rdi") dest => _, in("al") value as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// `a` and `b` must be valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, len: usize) -> i32 {
    let mut index = 0;
    while index < len {
        // SAFETY: index < len and the caller guarantees both ranges are readable.
        let (x, y) = unsafe { (a.add(index).read_volatile(), b.add(index).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        index += 1;
    }
    0
}

/// # Safety
/// `a` and `b` must be valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, len: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, len) }
}
