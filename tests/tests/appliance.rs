//! End-to-end: boot the release image under QEMU TCG with swtpm, as `runner up` does, and talk to
//! it over the forwarded port as a client would (issue 2).

mod support;

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use net::proto::{ErrorCode, Request, Response};
use runner::image::KernelFlavor;
use sha2::{Digest, Sha256};
use support::*;

const RELEASE: KernelFlavor = KernelFlavor {
    debug_console: false,
};
const DEBUG: KernelFlavor = KernelFlavor {
    debug_console: true,
};

fn request_frame() -> Vec<u8> {
    let mut frame = Vec::new();
    Request::ModelInfo.emit(&mut frame).expect("encode");
    frame
}

/// Sends `bytes`, then expects an error frame with `code` (when given) and a closed connection.
fn expect_rejected(endpoint: std::net::SocketAddr, bytes: &[u8], code: Option<ErrorCode>) {
    let mut stream = connect(endpoint);
    stream.write_all(bytes).expect("send");
    let answer = read_response(&mut stream);
    match (code, answer) {
        (Some(expected), Some(Response::Error(actual))) => assert_eq!(actual, expected),
        (None, Some(Response::Error(_))) => {}
        (_, other) => panic!(
            "expected an error frame for {:02x?}, got {other:?}",
            &bytes[..bytes.len().min(8)]
        ),
    }
    assert!(
        closed_within(&mut stream, Duration::from_secs(20)),
        "connection left open after an error"
    );
}

#[test]
fn serves_model_info_and_survives_bad_clients() {
    let dir = tempfile::tempdir().expect("temp dir");
    // An odd length, so nothing lines up with pages or hash blocks by accident.
    let model = write_model(dir.path(), 0xC10157E5, 3 * 1024 * 1024 + 17);
    let bytes = std::fs::read(&model).expect("read model");
    let expected_digest: [u8; 32] = Sha256::digest(&bytes).into();
    let (_image, appliance) = boot(dir.path(), RELEASE, &model, "ip=dhcp port=7000");
    let endpoint = appliance.endpoint();
    eprintln!("booted in {:?}", appliance.boot_duration());

    let info = model_info(endpoint);
    assert_eq!(info.length, bytes.len() as u64);
    assert_eq!(info.sha256, expected_digest);

    // Garbage first: random bytes, lengths over the maximum, an empty frame, a bad body.
    for seed in 1..4 {
        expect_rejected(endpoint, &pseudo_random_bytes(seed, 64), None);
    }
    expect_rejected(endpoint, &u32::MAX.to_be_bytes(), Some(ErrorCode::TooLarge));
    let just_over = (net::frame::MAX_FRAME_LEN as u32 + 1).to_be_bytes();
    expect_rejected(endpoint, &just_over, Some(ErrorCode::TooLarge));
    expect_rejected(endpoint, &[0, 0, 0, 0], Some(ErrorCode::BadFrame));
    expect_rejected(
        endpoint,
        &[0, 0, 0, 2, 0x7f, 0x7f],
        Some(ErrorCode::BadFrame),
    );
    expect_rejected(endpoint, &[0, 0, 0, 2, 0, 0], Some(ErrorCode::BadFrame));

    // Every truncation of a valid frame followed by EOF: closed, no answer, nothing breaks.
    let frame = request_frame();
    for cut in 1..frame.len() {
        let mut stream = connect(endpoint);
        stream.write_all(&frame[..cut]).expect("send");
        stream.shutdown(Shutdown::Write).expect("half close");
        assert_eq!(
            read_response(&mut stream),
            None,
            "answer to a frame cut at {cut}"
        );
    }

    // A client that connects and says nothing is timed out while others are served.
    let mut silent = connect(endpoint);
    let other = model_info(endpoint);
    assert_eq!(other, info);
    let (answer, waited) = timed(|| read_response(&mut silent));
    assert_eq!(answer, Some(Response::Error(ErrorCode::Timeout)));
    assert!(
        waited < Duration::from_secs(30),
        "silent client held for {waited:?}"
    );

    // Several clients at once, requests interleaved on open connections.
    let mut clients: Vec<_> = (0..3).map(|_| connect(endpoint)).collect();
    for round in 0..3 {
        for client in &mut clients {
            client.write_all(&request_frame()).expect("send");
        }
        for client in &mut clients {
            assert_eq!(
                read_response(client),
                Some(Response::ModelInfo(info)),
                "round {round}"
            );
        }
    }
    drop(clients);

    // A storm of connections, more than there are slots, all dropped at once.
    let storm: Vec<_> = (0..32)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&endpoint, Duration::from_secs(5)).ok()
        })
        .collect();
    for mut stream in storm {
        let _ = stream.write_all(&[0, 0]);
    }
    // Slots free up as the appliance closes them; a correct client gets through afterwards.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let attempt = std::panic::catch_unwind(|| model_info(endpoint));
        match attempt {
            Ok(answer) => {
                assert_eq!(answer, info);
                break;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

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
    let model = write_model(dir.path(), 7, 4096 * 3);
    let (_image, appliance) = boot(
        dir.path(),
        RELEASE,
        &model,
        "ip=10.0.2.15/24 gw=10.0.2.2 port=7000",
    );
    let info = model_info(appliance.endpoint());
    assert_eq!(info.length, 4096 * 3);
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
    let model = write_model(dir.path(), 99, 100_000);
    let (image, appliance) = boot(dir.path(), DEBUG, &model, "ip=dhcp port=7000");
    let info = model_info(appliance.endpoint());
    assert_eq!(info.length, 100_000);
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
    for line in serial.lines().map(str::trim) {
        let fragment = literal_prefix(line);
        if fragment.len() < 10 {
            continue;
        }
        let contains = |haystack: &[u8]| {
            haystack
                .windows(fragment.len())
                .any(|w| w == fragment.as_bytes())
        };
        assert!(
            contains(&debug_elf),
            "{fragment:?} printed but not found in the debug kernel"
        );
        assert!(
            !contains(&release_elf),
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
