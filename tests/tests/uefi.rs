//! The UEFI boot path end to end (docs/ARCHITECTURE.md, "UEFI boot"): the boot application's
//! Authenticode digest as an independent tool computes it, byte-identical disk images from two
//! clean checkouts, and the disk image booting under OVMF + swtpm into an appliance that passes
//! verification against the manifest `runner build --boot uefi` writes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use client::manifest::{self, BootMode, Manifest};
use client::verify::VerifyOptions;
use client::verify_appliance;
use runner::appliance::{Appliance, BootOptions};
use runner::image::{self, cargo_home, KernelFlavor};
use runner::qemu::AccelChoice;
use runner::uefi;

const CMDLINE: &str = image::DEFAULT_CMDLINE;

/// The workspace this test crate lives in.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn tiny_llama(dir: &Path) -> PathBuf {
    let path = dir.join("tiny-llama.gguf");
    let bytes = model::tiny::generate(&model::tiny::TinySpec::llama(), runner::engine::TINY_SEED);
    std::fs::write(&path, bytes).expect("write the tiny model");
    path
}

fn pesign_hash(file: &Path) -> String {
    let output = Command::new("pesign")
        .arg("-h")
        .arg("-i")
        .arg(file)
        .output()
        .expect("pesign runs (Debian package pesign)");
    assert!(output.status.success(), "pesign failed: {output:?}");
    let text = String::from_utf8(output.stdout).expect("pesign prints text");
    text.trim()
        .strip_prefix("hash: ")
        .unwrap_or_else(|| panic!("unexpected pesign output {text:?}"))
        .to_string()
}

#[test]
fn authenticode_digest_equals_pesign() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stub = uefi::build_stub().expect("the EFI stub builds");
    let kernel = image::build_kernel(KernelFlavor::default()).expect("the release kernel builds");
    let model = tiny_llama(dir.path());
    let built = uefi::write_image(&stub, &kernel, &model, CMDLINE, dir.path()).expect("UEFI image");
    assert_eq!(
        runner::models::hex(&built.authenticode),
        pesign_hash(&built.application)
    );
    // sbverify (sbsigntool) reads the same file as a valid, unsigned PE image.
    let output = Command::new("sbverify")
        .arg("--list")
        .arg(&built.application)
        .output()
        .expect("sbverify runs (Debian package sbsigntool)");
    let listing = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(listing.contains("No signature table present"), "{listing}");
    // One changed byte in the model changes the digest the firmware will measure.
    let mut tampered = std::fs::read(&model).expect("model");
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let tampered_model = dir.path().join("tampered.gguf");
    std::fs::write(&tampered_model, tampered).expect("write");
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let rebuilt =
        uefi::write_image(&stub, &kernel, &tampered_model, CMDLINE, &other).expect("UEFI image");
    assert_ne!(rebuilt.authenticode, built.authenticode);
    assert_eq!(
        runner::models::hex(&rebuilt.authenticode),
        pesign_hash(&rebuilt.application)
    );
}

/// A clean clone of the workspace's committed HEAD at `destination`.
fn clone_into(destination: &Path) {
    let status = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(workspace())
        .arg(destination)
        .status()
        .expect("git runs");
    assert!(status.success(), "git clone failed");
}

/// The stub from two clean checkouts at different paths, with the same kernel (whose own
/// reproducibility `reproducible.rs` checks), model and command line, gives byte-identical boot
/// applications, disk images and manifests.
#[test]
fn disk_images_are_byte_identical_across_checkouts() {
    let root = tempfile::tempdir().expect("temp dir");
    let kernel = image::build_kernel(KernelFlavor::default()).expect("the release kernel builds");
    let model = tiny_llama(root.path());
    let mut images = Vec::new();
    // Different path lengths, so an unremapped path would move bytes as well as change them.
    for name in ["a", "a/much/longer/path"] {
        let checkout = root.path().join(name).join("cloister");
        std::fs::create_dir_all(checkout.parent().expect("parent")).expect("mkdir");
        clone_into(&checkout);
        let status = uefi::stub_build_command(&checkout, &cargo_home())
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "stub build in {} failed",
            checkout.display()
        );
        let stub = uefi::stub_target_dir(&checkout)
            .join(image::KERNEL_TARGET)
            .join("release")
            .join("uefi-stub");
        let out = root.path().join(format!("out{}", images.len()));
        std::fs::create_dir(&out).expect("mkdir");
        let built = uefi::write_image(&stub, &kernel, &model, CMDLINE, &out).expect("UEFI image");
        let application = std::fs::read(&built.application).expect("application");
        let manifest = Manifest::for_image(&kernel, &model, CMDLINE)
            .expect("manifest")
            .with_uefi_boot(built.authenticode, application.len() as u64);
        images.push((
            application,
            std::fs::read(&built.disk).expect("disk"),
            manifest.to_json(),
        ));
    }
    assert!(images[0].0 == images[1].0, "boot applications differ");
    assert!(images[0].1 == images[1].1, "disk images differ");
    assert_eq!(
        String::from_utf8_lossy(&images[0].2),
        String::from_utf8_lossy(&images[1].2),
        "manifests differ"
    );
}

#[test]
fn uefi_image_boots_under_ovmf_and_verifies() {
    runner::tools::require(&runner::tools::BOOT_TOOLS).expect("QEMU and swtpm are needed");
    let dir = tempfile::tempdir().expect("temp dir");
    let model = tiny_llama(dir.path());
    let options = image::BuildOptions {
        model: model.display().to_string(),
        out: dir.path().join("image"),
        flavor: KernelFlavor::default(),
        cmdline: CMDLINE.into(),
        boot: BootMode::Uefi,
    };
    let built = image::build(&options).expect("runner build --boot uefi");
    let uefi_files = built.uefi.clone().expect("a UEFI image has its files");
    assert!(uefi_files.disk.is_file() && uefi_files.application.is_file());
    let manifest =
        Manifest::read(&built.dir.join(manifest::MANIFEST_FILE)).expect("the build's manifest");
    assert_eq!(manifest.boot, BootMode::Uefi);
    let application = manifest.boot_application.clone().expect("boot application");
    assert_eq!(application.authenticode_sha256.0, uefi_files.authenticode);

    let mut boot = BootOptions::new(built);
    boot.accel = AccelChoice::Tcg;
    boot.mem_mib = 512;
    boot.ready_timeout = Some(Duration::from_secs(300));
    let appliance = Appliance::boot(&boot).expect("the UEFI image boots under OVMF and answers");
    eprintln!(
        "[uefi] QEMU start to first TLS answer {:.2} s (OVMF, TCG)",
        appliance.boot_duration().as_secs_f64()
    );
    let trust = appliance
        .certificate_authority()
        .trust_anchors()
        .expect("the CA's certificates load");
    let report = verify_appliance(
        appliance.endpoint(),
        &manifest,
        &trust,
        &VerifyOptions {
            timeout: Duration::from_secs(120),
            ..VerifyOptions::default()
        },
    )
    .unwrap_or_else(|error| panic!("the UEFI-booted appliance failed verification: {error:#}"));
    assert!(report.verified);
    appliance.shutdown().expect("QEMU and swtpm stop");
}

/// The firmware log the debug console shows in hex (`firmware event log: <hex>` lines).
fn firmware_log_from_serial(serial: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(serial);
    let mut log = Vec::new();
    for line in text.lines() {
        let Some(hex) = line.trim_end().strip_prefix("firmware event log: ") else {
            continue;
        };
        if hex.ends_with("bytes") {
            continue;
        }
        for pair in hex.as_bytes().chunks(2) {
            let digits = std::str::from_utf8(pair).expect("ASCII");
            log.push(u8::from_str_radix(digits, 16).expect("hex digits"));
        }
    }
    log
}

#[test]
fn the_kernel_receives_the_whole_firmware_event_log() {
    runner::tools::require(&runner::tools::BOOT_TOOLS).expect("QEMU and swtpm are needed");
    let dir = tempfile::tempdir().expect("temp dir");
    let model = tiny_llama(dir.path());
    let options = image::BuildOptions {
        model: model.display().to_string(),
        out: dir.path().join("image"),
        flavor: KernelFlavor {
            debug_console: true,
        },
        cmdline: CMDLINE.into(),
        boot: BootMode::Uefi,
    };
    let built = image::build(&options).expect("runner build --boot uefi --debug-console");
    let authenticode = built.uefi.as_ref().expect("UEFI files").authenticode;
    let mut boot = BootOptions::new(built);
    boot.accel = AccelChoice::Tcg;
    boot.mem_mib = 512;
    boot.echo_serial = false;
    boot.ready_timeout = Some(Duration::from_secs(300));
    let appliance = Appliance::boot(&boot).expect("the UEFI image boots under OVMF and answers");
    let log = firmware_log_from_serial(&appliance.serial_output().expect("serial log"));
    appliance.shutdown().expect("QEMU and swtpm stop");
    assert!(!log.is_empty(), "the kernel showed no firmware event log");
    let path = dir.path().join("eventlog.bin");
    std::fs::write(&path, &log).expect("write the log");
    let output = Command::new("tpm2_eventlog")
        .arg(&path)
        .output()
        .expect("tpm2_eventlog runs (Debian package tpm2-tools)");
    let parsed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tpm2_eventlog refused the log: {output:?}"
    );
    // The firmware measured exactly this boot application into PCR 4.
    let application = parsed
        .split("- EventNum:")
        .find(|event| event.contains("EV_EFI_BOOT_SERVICES_APPLICATION"))
        .expect("an EV_EFI_BOOT_SERVICES_APPLICATION event");
    assert!(application.contains("PCRIndex: 4"), "{application}");
    assert!(
        application.contains(&runner::models::hex(&authenticode)),
        "{application}"
    );
    // The events measured during ExitBootServices came from the final-events table.
    for action in [
        "Exit Boot Services Invocation",
        "Exit Boot Services Returned with Success",
    ] {
        assert!(parsed.contains(action), "{action} missing from:\n{parsed}");
    }
}
