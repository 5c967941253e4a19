//! Link arguments for the freestanding kernel binary (docs/ARCHITECTURE.md §2): rust-lld, static, no libc,
//! our linker script. They apply to the `kernel` bin only, so the host-tested lib is unaffected.

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = std::path::Path::new(&manifest_dir).join("../qemu/kernel.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    // Only the image build (the runner passes -Clinker=rust-lld) links the bin; a host
    // `cargo build -p kernel` would try the system linker and these lld arguments would fail it.
    for arg in [
        "-static",
        "-nostdlib",
        "--no-pie",
        "--gc-sections",
        "--build-id=none",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
}
