//! Link arguments for the EFI entry stub: a static position-independent executable (no dynamic
//! linker, no RELRO, page-aligned segments) that the runner turns into a relocatable PE32+ file
//! (docs/ARCHITECTURE.md, "UEFI boot"). They apply to the bin only, so the host-tested lib is
//! unaffected; only the runner's image build (which passes -Clinker=rust-lld) links the bin.

fn main() {
    for arg in [
        "-nostdlib",
        "-pie",
        "--no-dynamic-linker",
        "-znorelro",
        "-zseparate-loadable-segments",
        "--gc-sections",
        "--build-id=none",
        "-eefi_main",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
