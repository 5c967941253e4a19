//! x86-64 specifics: the boot path, single-instruction wrappers, descriptor tables.

pub mod boot;
pub mod cpu;
pub mod interrupts;
pub mod reset;
