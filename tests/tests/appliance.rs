//! End-to-end: boot the image under QEMU TCG with swtpm and the tiny llama model, as `cloister up` does, and
//! talk to it over TLS 1.3 on the forwarded port as a client would (issues 2 and 5): model information, a
//! static address, and no log text in the release image. Issue 12: the release ELF holds no dependency's log text,
//! no source path and no unmeasured writable bytes, and a panic resets the machine, which the runner reports.

mod support;

use std::time::Duration;

use client::manifest;
use runner::appliance::{Appliance, BootOptions};
use runner::image::{self, KernelFlavor};
use runner::qemu::AccelChoice;
use sha2::{Digest, Sha256};
use support::*;

/// The readiness probe and these checks speak TLS 1.3 (`client::model_info` opens an unverified
/// session: model information needs no trust). Bad clients are tests/tests/bad_input.rs's business.
fn model_info(endpoint: std::net::SocketAddr) -> net::proto::ModelInfo {
    client::model_info(endpoint, PATIENCE).expect("model info over TLS")
}

#[test]
fn serves_model_info_over_tls_and_writes_nothing_to_the_console() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = tiny_llama(dir.path());
    let bytes = std::fs::read(&model).expect("read model");
    let expected_digest: [u8; 32] = Sha256::digest(&bytes).into();
    let (_image, appliance) = boot(dir.path(), RELEASE, &model, "ip=dhcp port=7000");
    let endpoint = appliance.endpoint();
    eprintln!("booted in {:?}", appliance.boot_duration());

    let (info, took) = timed(|| model_info(endpoint));
    eprintln!("TLS handshake and model info in {took:?}");
    assert_eq!(info.length, bytes.len() as u64);
    assert_eq!(info.sha256, expected_digest);
    assert_eq!(
        appliance.model_info(),
        info,
        "the readiness probe saw another model"
    );

    // A release image writes nothing to the serial port, ever.
    let serial = appliance.serial_output().expect("serial log");
    assert!(
        serial.is_empty(),
        "release image wrote {} bytes to the serial port",
        serial.len()
    );
    appliance.shutdown().expect("clean shutdown");
}

#[test]
fn static_address_from_the_command_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = tiny_llama(dir.path());
    let length = std::fs::metadata(&model).expect("model").len();
    let (_image, appliance) = boot(
        dir.path(),
        RELEASE,
        &model,
        "ip=10.0.2.15/24 gw=10.0.2.2 port=7000",
    );
    let info = model_info(appliance.endpoint());
    assert_eq!(info.length, length);
    appliance.shutdown().expect("clean shutdown");
}

/// Program header flags of every PT_LOAD segment (ELF-64, little endian; System V gABI ch. 5).
fn load_segment_flags(elf: &[u8]) -> Vec<u32> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF-64");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&header| u32_at(header) == 1)
        .map(|header| u32_at(header + 4))
        .collect()
}

/// The literal start of a log line: up to the first character a format argument could produce.
fn literal_prefix(line: &str) -> &str {
    let end = line
        .find(|c: char| c.is_ascii_digit() || "\"({[".contains(c))
        .unwrap_or(line.len());
    line[..end].trim_end()
}

#[test]
fn debug_console_logs_never_reach_the_release_image() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = tiny_llama(dir.path());
    let length = std::fs::metadata(&model).expect("model").len();
    let (image, appliance) = boot(dir.path(), DEBUG, &model, "ip=dhcp port=7000");
    let info = model_info(appliance.endpoint());
    assert_eq!(info.length, length);
    let serial =
        String::from_utf8_lossy(&appliance.serial_output().expect("serial log")).into_owned();
    appliance.shutdown().expect("clean shutdown");
    assert!(
        serial.contains("listening on"),
        "debug console output: {serial}"
    );
    if let Some(line) = serial
        .lines()
        .find(|line| line.contains("after kernel entry"))
    {
        eprintln!("guest: {line}");
    }

    let debug_elf = std::fs::read(&image.kernel).expect("debug kernel");
    let release_elf = std::fs::read(kernel(RELEASE)).expect("release kernel");
    let mut checked = 0;
    let contains = |haystack: &[u8], needle: &str| {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    for line in serial.lines().map(str::trim) {
        // The literal text of the format string ends where the first argument's text begins, which a
        // `{:?}` of an enum can make look like a word: take the longest word-bounded prefix that the
        // debug kernel holds.
        let prefix = literal_prefix(line);
        let fragment = prefix
            .char_indices()
            .filter(|&(_, c)| c == ' ')
            .map(|(at, _)| &prefix[..at])
            .chain([prefix])
            .rev()
            .find(|candidate| candidate.len() >= 10 && contains(&debug_elf, candidate));
        let Some(fragment) = fragment else {
            continue;
        };
        assert!(
            !contains(&release_elf, fragment),
            "log text {fragment:?} is in the release kernel"
        );
        checked += 1;
    }
    assert!(
        checked >= 4,
        "too few log lines checked ({checked}): {serial}"
    );

    for (name, elf) in [("release", &release_elf), ("debug", &debug_elf)] {
        let flags = load_segment_flags(elf);
        assert!(
            flags.len() >= 3,
            "{name} kernel has {} loadable segments",
            flags.len()
        );
        for flag in flags {
            assert!(
                flag & 0b011 != 0b011,
                "{name} kernel has a writable and executable segment"
            );
        }
    }
}

/// Log messages of the kernel's dependencies (virtio-drivers through `log`, smoltcp's `net_debug!`, rustls'
/// `debug!`): none may ship, whichever logging feature a dependency turns on.
const DEPENDENCY_LOG_TEXT: [&str; 9] = [
    "Device features: ",
    "negotiated_features",
    "Invalid next capability offset",
    "found a block device of size",
    "DHCP ignoring ACK because",
    "DHCP lease expired",
    "Sending warning alert",
    "ECDHE curve is",
    "Client unwilling to resume",
];

/// Source paths (registry, toolchain, workspace) and the standard library's panic messages, which a panic
/// location or a formatted panic would carry.
const SOURCE_PATHS_AND_PANIC_TEXT: [&str; 13] = [
    ".cargo/registry",
    "/cargo/registry",
    "index.crates.io",
    "/rustc/",
    "library/core/src",
    "kernel/src/",
    "net/src/",
    "model/src/",
    "tpm/src/",
    "index out of bounds",
    "called `Option::unwrap()`",
    "attempt to",
    "panic-test",
];

/// (p_flags, p_offset, p_filesz) of every PT_LOAD segment that holds file bytes (System V gABI ch. 5).
fn loaded_file_bytes(elf: &[u8]) -> Vec<(u32, u64, u64)> {
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&header| u32_at(header) == 1 && u64_at(header + 32) != 0)
        .map(|header| (u32_at(header + 4), u64_at(header + 8), u64_at(header + 32)))
        .collect()
}

#[test]
fn the_release_kernel_holds_no_log_text_no_source_paths_and_no_unmeasured_bytes() {
    let elf = std::fs::read(kernel(RELEASE)).expect("release kernel");
    let contains = |needle: &str| elf.windows(needle.len()).any(|w| w == needle.as_bytes());
    for text in DEPENDENCY_LOG_TEXT
        .iter()
        .chain(&SOURCE_PATHS_AND_PANIC_TEXT)
    {
        assert!(!contains(text), "{text:?} is in the release kernel");
    }

    // Every loadable byte the file holds is measured into PCR 12, the writable segment's initial bytes included
    // (the kernel copies them before its first write to them), and the manifest lists each segment.
    let loaded = loaded_file_bytes(&elf);
    let measured: Vec<(u32, u64, u64)> = manifest::measured_segments(&elf)
        .expect("the release kernel is measurable")
        .iter()
        .map(|segment| (segment.flags, segment.offset, segment.file_size))
        .collect();
    assert_eq!(
        measured, loaded,
        "segments with file bytes that PCR 12 does not cover"
    );
    let writable: u64 = loaded
        .iter()
        .filter(|(flags, _, _)| flags & 0b010 != 0)
        .map(|(_, _, size)| size)
        .sum();
    eprintln!("release kernel: {writable} initial writable bytes, measured");
    assert!(writable <= tpm::measurement::MAX_DATA_FILE_BYTES as u64);
}

/// Boots `flavor` (a panic-test kernel) and returns the runner's error and how long it took to come.
fn boot_until_the_reset(flavor: KernelFlavor) -> (String, Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = tiny_llama(dir.path());
    let image = image::assemble(
        &kernel(flavor),
        &model,
        "ip=dhcp port=7000",
        &dir.path().join("image"),
        flavor,
    )
    .expect("assemble image");
    let mut options = BootOptions::new(image);
    options.accel = AccelChoice::Tcg;
    options.mem_mib = 256;
    options.echo_serial = false;
    options.ready_timeout = Some(Duration::from_secs(240));
    let (outcome, took) = timed(|| Appliance::boot(&options));
    match outcome {
        Ok(_) => panic!("the {flavor:?} kernel answered instead of resetting"),
        Err(error) => (format!("{error:#}"), took),
    }
}

#[test]
fn a_panic_resets_the_machine_and_the_runner_says_so() {
    // The panic-test kernel panics once its tables are live; the panic handler resets the machine, and under
    // -no-reboot QEMU exits, which the runner must report as a reset rather than wait for an answer. The release
    // flavour is the one that matters; the debug console's copy prints the panic first, which shows that the
    // reset the runner reports is that panic's.
    for flavor in [PANIC_TEST, DEBUG_PANIC_TEST] {
        let (error, took) = boot_until_the_reset(flavor);
        eprintln!("{flavor:?}: the runner saw the reset after {took:.1?}");
        assert!(
            error.contains(runner::appliance::RESET_REPORT),
            "the runner did not report a reset: {error}"
        );
        assert!(
            took < Duration::from_secs(200),
            "the reset came only after {took:?}"
        );
        if flavor.debug_console {
            assert!(
                error.contains("kernel panic: panicked at")
                    || error.contains("panic-test: panicking on purpose"),
                "the serial output does not show the panic: {error}"
            );
        }
    }
}
