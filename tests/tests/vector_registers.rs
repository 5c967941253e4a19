//! The kernel's vector-register clearing on the host's CPU: `kernel/src/smp/vector_registers.rs`, included by path
//! (the kernel binary cannot be built for the host), with its tests, which fill every vector and opmask register,
//! clear them and check that each one is zero.

#[allow(
    dead_code,
    reason = "the kernel binary uses the module as a whole; only its tests run here"
)]
#[path = "../../kernel/src/smp/vector_registers.rs"]
mod vector_registers;
