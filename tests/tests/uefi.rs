//! The UEFI boot path end to end (docs/ARCHITECTURE.md, "UEFI boot"): the boot application's
//! Authenticode digest as an independent tool computes it, byte-identical disk images from two
//! clean checkouts, and the disk image booting under OVMF + swtpm into an appliance that passes
//! verification against the manifest `cloister build --boot uefi` writes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use client::manifest::{self, BootMode, Manifest};
use client::session::{AttestationRequest, UnverifiedSession};
use client::verify::{verify_evidence, Expectation, VerifyError, VerifyOptions};
use client::verify_appliance;
use net::proto::{ChannelBinding, Evidence, Response};
use runner::appliance::{Appliance, BootOptions};
use runner::image::{self, cargo_home, KernelFlavor, Sabotage};
use runner::qemu::AccelChoice;
use runner::uefi;
use tpm::tcg_log::{self, FirmwareError, TcgLog, EV_EFI_BOOT_SERVICES_APPLICATION};

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

/// Attests on a plain (unverified) session: the evidence and the session's binding, for offline checks.
fn fresh_evidence(
    endpoint: std::net::SocketAddr,
    nonce: [u8; 32],
    pcr_mask: u32,
) -> (Evidence, ChannelBinding) {
    let mut session =
        UnverifiedSession::connect(endpoint, Duration::from_secs(120)).expect("TLS handshake");
    let binding = session.binding();
    match session
        .exchange(AttestationRequest::Attest { nonce, pcr_mask })
        .expect("an answer to Attest")
    {
        Response::Evidence(evidence) => (evidence, binding),
        other => panic!("the appliance answered Attest with {other:?}"),
    }
}

/// The log rebuilt from `events` (pcr, type, SHA-256, data) with a SHA-256-only header: what an attacker who
/// edits the firmware's log would send (the replayed SHA-256 bank is all the verifier reads).
fn rebuilt_log(events: &[(u32, u32, [u8; 32], Vec<u8>)]) -> Vec<u8> {
    let mut bytes = vec![0u8; tcg_log::SHA256_HEADER_LEN];
    tcg_log::emit_sha256_header(&mut bytes).expect("header");
    for (pcr, event_type, digest, data) in events {
        let at = bytes.len();
        bytes.resize(at + tcg_log::event_len(data.len()), 0);
        tcg_log::emit_event(&mut bytes[at..], *pcr, *event_type, digest, data).expect("event");
    }
    bytes
}

/// The offline checks on genuine evidence with its `firmware_log` replaced by `log`, against `manifest`.
fn check_with_log(
    evidence: &Evidence,
    log: Vec<u8>,
    expected: &Expectation,
) -> Result<client::verify::CheckedEvidence, VerifyError> {
    let mut tampered = evidence.clone();
    tampered.firmware_log = log;
    verify_evidence(&tampered, expected)
}

/// The PCR 0-7 events of the firmware's log, one line each, for the report.
fn firmware_events(log: &TcgLog) -> Vec<String> {
    log.events()
        .filter(|event| event.pcr < 8)
        .map(|event| {
            format!(
                "PCR {} type {:#010x} sha256 {}.. ({} bytes of data)",
                event.pcr,
                event.event_type,
                &runner::models::hex(&event.sha256)[..16],
                event.data.len()
            )
        })
        .collect()
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
    let built = image::build(&options).expect("cloister build --boot uefi");
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
    let export = dir.path().join("evidence");
    // No --trust-host: the UEFI path must not need it.
    let report = verify_appliance(
        appliance.endpoint(),
        &manifest,
        &trust,
        &VerifyOptions {
            timeout: Duration::from_secs(120),
            export_evidence: Some(export.clone()),
            ..VerifyOptions::default()
        },
    )
    .unwrap_or_else(|error| panic!("the UEFI-booted appliance failed verification: {error:#}"));
    assert!(report.verified);
    assert!(!report.root_of_trust.host_trusted);
    assert_eq!(report.root_of_trust.boot, "uefi");
    let secure_boot = report
        .root_of_trust
        .secure_boot
        .expect("PCR 7's Secure Boot state");
    assert!(
        report.checks.contains(&"firmware event log"),
        "{:?}",
        report.checks
    );
    assert!(report.to_json().contains("\"secure_boot\""));
    eprintln!("[uefi] root of trust: {}", report.root_of_trust.statement);

    // tpm2_eventlog reads the whole boot's log and finds the firmware's measurement of the boot application.
    let output = Command::new("tpm2_eventlog")
        .arg(export.join("eventlog.bin"))
        .output()
        .expect("tpm2_eventlog runs (Debian package tpm2-tools)");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "tpm2_eventlog failed: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("EV_EFI_BOOT_SERVICES_APPLICATION"), "{text}");
    assert!(
        text.to_lowercase()
            .contains(&runner::models::hex(&uefi_files.authenticode)),
        "tpm2_eventlog does not show the application's Authenticode digest:\n{text}"
    );

    // Evidence captured once, checked offline against its real quote, then with the firmware's log edited.
    let nonce = [0x5e; 32];
    let (evidence, binding) = fresh_evidence(appliance.endpoint(), nonce, manifest.pcr_mask());
    let expected = Expectation {
        nonce,
        binding,
        manifest: &manifest,
        trust: &trust,
        now: SystemTime::now(),
        previous_clock: None,
        trust_host: false,
        allow_debug_image: false,
    };
    verify_evidence(&evidence, &expected).expect("the captured evidence verifies offline");
    let log = TcgLog::parse(&evidence.firmware_log).expect("the whole boot's log parses");
    eprintln!(
        "[uefi] OVMF's PCR 0-7 events ({} events in the whole log, Secure Boot {secure_boot}):\n  {}",
        log.len(),
        firmware_events(&log).join("\n  ")
    );
    let events: Vec<(u32, u32, [u8; 32], Vec<u8>)> = log
        .events()
        .map(|event| {
            (
                event.pcr,
                event.event_type,
                event.sha256,
                event.data.to_vec(),
            )
        })
        .collect();
    let is_application = |event: &(u32, u32, [u8; 32], Vec<u8>)| {
        event.0 == 4 && event.1 == EV_EFI_BOOT_SERVICES_APPLICATION
    };
    assert_eq!(
        events.iter().filter(|event| is_application(event)).count(),
        1
    );
    // Control: the same events re-emitted (SHA-256 bank only) still verify.
    check_with_log(&evidence, rebuilt_log(&events), &expected).expect("the rebuilt log verifies");
    let firmware_failure = |result: Result<_, VerifyError>, what: &str| {
        let error = result.err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(error.check(), "firmware event log", "{what}: {error}");
        error
    };
    // Log/quote mismatch: one firmware event's digest changed.
    let mut edited = events.clone();
    edited[0].2[0] ^= 1;
    let error = firmware_failure(
        check_with_log(&evidence, rebuilt_log(&edited), &expected),
        "edited digest",
    );
    assert_eq!(
        error,
        VerifyError::FirmwareLog(FirmwareError::ReplayMismatch(edited[0].0 as u8))
    );
    // The boot application's event hidden.
    let hidden: Vec<_> = events
        .iter()
        .filter(|event| !is_application(event))
        .cloned()
        .collect();
    let error = firmware_failure(
        check_with_log(&evidence, rebuilt_log(&hidden), &expected),
        "hidden application",
    );
    assert_eq!(
        error,
        VerifyError::FirmwareLog(FirmwareError::ReplayMismatch(4))
    );
    // A second application (a shell) added before it.
    let mut two = events.clone();
    let at = two.iter().position(is_application).expect("application");
    let mut shell = two[at].clone();
    shell.2 = [0x11; 32];
    two.insert(at, shell);
    let error = firmware_failure(
        check_with_log(&evidence, rebuilt_log(&two), &expected),
        "two applications",
    );
    assert_eq!(
        error,
        VerifyError::FirmwareLog(FirmwareError::ReplayMismatch(4))
    );
    // The application's digest rewritten to another image's.
    let mut other = events.clone();
    other[at].2 = [0x22; 32];
    firmware_failure(
        check_with_log(&evidence, rebuilt_log(&other), &expected),
        "another application digest",
    );
    // The kernel's PCR 12-14 events dropped from the log.
    let firmware_only: Vec<_> = events.iter().filter(|event| event.0 < 8).cloned().collect();
    let error = firmware_failure(
        check_with_log(&evidence, rebuilt_log(&firmware_only), &expected),
        "no kernel events",
    );
    assert_eq!(
        error,
        VerifyError::FirmwareLog(FirmwareError::ReplayMismatch(12))
    );
    // No log at all.
    firmware_failure(
        check_with_log(&evidence, Vec::new(), &expected),
        "empty log",
    );
    // A manifest whose Authenticode digest differs (a PE one byte off) fails the same way on the real log.
    let mut digest = application.authenticode_sha256.0;
    digest[31] ^= 1;
    let wrong_manifest = manifest.clone().with_uefi_boot(digest, application.length);
    let error = firmware_failure(
        verify_evidence(
            &evidence,
            &Expectation {
                manifest: &wrong_manifest,
                ..expected
            },
        ),
        "another Authenticode digest",
    );
    assert_eq!(
        error,
        VerifyError::FirmwareLog(FirmwareError::WrongBootApplication)
    );
    appliance.shutdown().expect("QEMU and swtpm stop");

    // THE ATTACK: the same kernel and model booted directly (nothing measures it first) extends identical PCRs
    // 12-14; checked against the UEFI manifest it fails, naming the firmware check.
    let direct_options = image::BuildOptions {
        out: dir.path().join("direct"),
        boot: BootMode::Direct,
        ..options
    };
    let direct = image::build(&direct_options).expect("cloister build --boot direct");
    let direct_manifest =
        Manifest::read(&direct.dir.join(manifest::MANIFEST_FILE)).expect("manifest");
    assert_eq!(direct_manifest.boot, BootMode::Direct);
    assert_eq!(
        direct_manifest.pcrs, manifest.pcrs,
        "both paths measure the same PCRs 12-14"
    );
    let mut boot = BootOptions::new(direct);
    boot.accel = AccelChoice::Tcg;
    boot.mem_mib = 512;
    boot.ready_timeout = Some(Duration::from_secs(300));
    let appliance = Appliance::boot(&boot).expect("the direct image boots");
    eprintln!(
        "[direct] QEMU start to first TLS answer {:.2} s (TCG)",
        appliance.boot_duration().as_secs_f64()
    );
    let trust = appliance
        .certificate_authority()
        .trust_anchors()
        .expect("CA");
    let verify = |manifest: &Manifest, trust_host: bool| {
        verify_appliance(
            appliance.endpoint(),
            manifest,
            &trust,
            &VerifyOptions {
                timeout: Duration::from_secs(120),
                trust_host,
                ..VerifyOptions::default()
            },
        )
    };
    for trust_host in [false, true] {
        let error = verify(&manifest, trust_host)
            .expect_err("the directly booted kernel passed as the UEFI image");
        let error = error.downcast_ref::<VerifyError>().expect("a check failed");
        assert_eq!(error.check(), "firmware event log", "{error}");
        eprintln!("[attack] {error}");
    }
    // Its own direct manifest is refused without --trust-host, and accepted with it, saying so.
    let error =
        verify(&direct_manifest, false).expect_err("a direct manifest without --trust-host");
    assert_eq!(
        error.downcast_ref::<VerifyError>(),
        Some(&VerifyError::HostNotTrusted)
    );
    let report = verify(&direct_manifest, true).expect("a direct manifest with --trust-host");
    assert!(report.root_of_trust.host_trusted);
    assert!(
        report.to_string().contains("HOST OPERATOR TRUSTED"),
        "{report}"
    );
    assert!(report.short().contains("HOST OPERATOR TRUSTED"));
    assert!(report.summary().contains("HOST OPERATOR TRUSTED"));
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
            sabotage: Sabotage::None,
        },
        cmdline: CMDLINE.into(),
        boot: BootMode::Uefi,
    };
    let built = image::build(&options).expect("cloister build --boot uefi --debug-console");
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
