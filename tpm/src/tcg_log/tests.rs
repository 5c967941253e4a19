//! Tests of the crypto-agile log: round trips over logs built here, replay, each firmware check with the one
//! thing it checks tampered, every truncation, and `tpm2_eventlog` reading what the emitter writes.

use super::*;

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A UEFI_VARIABLE_DATA for an EFI_GLOBAL_VARIABLE.
fn variable_data(name: &str, value: &[u8]) -> Vec<u8> {
    let mut data = EFI_GLOBAL_VARIABLE.to_vec();
    data.extend_from_slice(&(name.len() as u64).to_le_bytes());
    data.extend_from_slice(&(value.len() as u64).to_le_bytes());
    for byte in name.bytes() {
        data.extend_from_slice(&[byte, 0]);
    }
    data.extend_from_slice(value);
    data
}

struct Builder(Vec<u8>);

impl Builder {
    fn new() -> Self {
        let mut bytes = vec![0u8; SHA256_HEADER_LEN];
        assert_eq!(emit_sha256_header(&mut bytes), Ok(SHA256_HEADER_LEN));
        Self(bytes)
    }

    fn event(mut self, pcr: u32, event_type: u32, digest: [u8; 32], data: &[u8]) -> Self {
        let mut record = vec![0u8; event_len(data.len())];
        assert_eq!(
            emit_event(&mut record, pcr, event_type, &digest, data),
            Ok(record.len())
        );
        self.0.extend_from_slice(&record);
        self
    }

    /// An event whose digest is the SHA-256 of its data (as firmware does for actions and variables).
    fn hashed(self, pcr: u32, event_type: u32, data: &[u8]) -> Self {
        self.event(pcr, event_type, sha(data), data)
    }
}

const APPLICATION: [u8; 32] = [0xa5; 32];

/// A UEFI_IMAGE_LOAD_EVENT (PFP §10.2.3): location, length and link-time address of the image, and an empty
/// device path.
fn image_load_event() -> Vec<u8> {
    let mut data = Vec::new();
    for value in [0x7e00_0000u64, 0x10_0000, 0, 0] {
        data.extend_from_slice(&value.to_le_bytes());
    }
    data
}

/// A log shaped like OVMF's: CRTM version, separators for PCRs 0-7, Secure Boot variables in PCR 7, the boot
/// option's action, a separator and the application in PCR 4.
fn firmware_log(secure_boot: &[u8]) -> Vec<u8> {
    let separator = [0u8; 4];
    let mut builder = Builder::new()
        .hashed(0, 0x0000_0008, b"\0\0")
        .hashed(
            7,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            &variable_data("SecureBoot", secure_boot),
        )
        .hashed(7, EV_EFI_VARIABLE_DRIVER_CONFIG, &variable_data("PK", b""))
        .hashed(
            1,
            EV_EFI_VARIABLE_BOOT,
            &variable_data("BootOrder", &[0, 0]),
        );
    for pcr in 0..8 {
        if pcr != 4 {
            builder = builder.hashed(pcr, EV_SEPARATOR, &separator);
        }
    }
    builder
        .hashed(
            4,
            EV_EFI_ACTION,
            b"Calling EFI Application from Boot Option",
        )
        .hashed(4, EV_SEPARATOR, &separator)
        .event(
            4,
            EV_EFI_BOOT_SERVICES_APPLICATION,
            APPLICATION,
            &image_load_event(),
        )
        .hashed(5, EV_EFI_ACTION, b"Exit Boot Services Invocation")
        .0
}

fn quoted(log: &TcgLog) -> Vec<(u8, [u8; 32])> {
    let replayed = log.replay_sha256();
    (0u8..8)
        .map(|pcr| (pcr, replayed[usize::from(pcr)]))
        .collect()
}

#[test]
fn a_built_log_parses_back_event_for_event() {
    let bytes = firmware_log(&[0]);
    let log = TcgLog::parse(&bytes).unwrap();
    assert_eq!(log.algorithms().as_slice(), &[(TPM_ALG_SHA256, 32)]);
    assert_eq!(log.len(), 15);
    let events: Vec<TcgEvent> = log.events().collect();
    assert_eq!(events.len(), 15);
    let application = events[13];
    assert_eq!(application.pcr, 4);
    assert_eq!(application.event_type, EV_EFI_BOOT_SERVICES_APPLICATION);
    assert_eq!(application.sha256, APPLICATION);
    assert_eq!(application.data, image_load_event());
    assert_eq!(events[14].data, b"Exit Boot Services Invocation");
}

#[test]
fn replay_extends_sha256_in_log_order() {
    let bytes = Builder::new()
        .event(4, EV_EFI_ACTION, [1; 32], b"a")
        .event(4, EV_SEPARATOR, [2; 32], b"b")
        .event(12, EV_EVENT_TAG, [3; 32], b"c")
        .0;
    let log = TcgLog::parse(&bytes).unwrap();
    let pcrs = log.replay_sha256();
    let step = |old: [u8; 32], digest: [u8; 32]| -> [u8; 32] {
        let mut joined = old.to_vec();
        joined.extend_from_slice(&digest);
        sha(&joined)
    };
    assert_eq!(pcrs[4], step(step([0; 32], [1; 32]), [2; 32]));
    assert_eq!(pcrs[12], step([0; 32], [3; 32]));
    assert_eq!(pcrs[0], [0; 32]);
}

#[test]
fn startup_locality_sets_pcr_0s_start_and_no_action_events_are_not_extended() {
    let mut locality = STARTUP_LOCALITY_SIGNATURE.to_vec();
    locality.push(3);
    let bytes = Builder::new()
        .event(0, EV_NO_ACTION, [0; 32], &locality)
        .event(2, EV_NO_ACTION, [9; 32], b"ignored")
        .event(0, EV_SEPARATOR, [7; 32], b"")
        .0;
    let log = TcgLog::parse(&bytes).unwrap();
    let pcrs = log.replay_sha256();
    let mut start = [0u8; 32];
    start[31] = 3;
    let mut joined = start.to_vec();
    joined.extend_from_slice(&[7; 32]);
    assert_eq!(pcrs[0], sha(&joined));
    assert_eq!(pcrs[2], [0; 32]);
}

#[test]
fn replay_check_names_the_pcr_that_differs() {
    let bytes = firmware_log(&[0]);
    let log = TcgLog::parse(&bytes).unwrap();
    let good = quoted(&log);
    assert_eq!(check_replay(&log, &good), Ok(()));
    for pcr in 0..8 {
        let mut bad = good.clone();
        bad[pcr].1[0] ^= 1;
        assert_eq!(
            check_replay(&log, &bad),
            Err(FirmwareError::ReplayMismatch(pcr as u8))
        );
    }
    // A log edited to hide an event no longer replays to the quoted values.
    let hidden = Builder::new().0;
    let hidden = TcgLog::parse(&hidden).unwrap();
    assert!(matches!(
        check_replay(&hidden, &good),
        Err(FirmwareError::ReplayMismatch(_))
    ));
}

#[test]
fn boot_application_must_be_the_expected_one_and_alone() {
    let bytes = firmware_log(&[0]);
    let log = TcgLog::parse(&bytes).unwrap();
    assert_eq!(check_boot_application(&log, &APPLICATION), Ok(()));
    assert_eq!(
        check_boot_application(&log, &[0x5a; 32]),
        Err(FirmwareError::WrongBootApplication)
    );
    let none = Builder::new()
        .hashed(
            4,
            EV_EFI_ACTION,
            b"Calling EFI Application from Boot Option",
        )
        .0;
    assert_eq!(
        check_boot_application(&TcgLog::parse(&none).unwrap(), &APPLICATION),
        Err(FirmwareError::NoBootApplication)
    );
    let mut two = Builder(firmware_log(&[0]));
    two = two.event(
        4,
        EV_EFI_BOOT_SERVICES_APPLICATION,
        [0x11; 32],
        &image_load_event(),
    );
    assert_eq!(
        check_boot_application(&TcgLog::parse(&two.0).unwrap(), &APPLICATION),
        Err(FirmwareError::ExtraBootApplication)
    );
    // An application event in another PCR is not a boot application of PCR 4.
    let elsewhere = Builder::new()
        .event(
            5,
            EV_EFI_BOOT_SERVICES_APPLICATION,
            APPLICATION,
            &image_load_event(),
        )
        .0;
    assert_eq!(
        check_boot_application(&TcgLog::parse(&elsewhere).unwrap(), &APPLICATION),
        Err(FirmwareError::NoBootApplication)
    );
}

#[test]
fn secure_boot_state_is_read_from_pcr_7() {
    let state = |value: &[u8]| secure_boot(&TcgLog::parse(&firmware_log(value)).unwrap());
    assert_eq!(state(&[0]), SecureBoot::Disabled);
    assert_eq!(state(&[1]), SecureBoot::Enabled);
    let absent = Builder::new()
        .hashed(7, EV_EFI_VARIABLE_DRIVER_CONFIG, &variable_data("PK", b""))
        .0;
    assert_eq!(
        secure_boot(&TcgLog::parse(&absent).unwrap()),
        SecureBoot::Absent
    );
    // The same variable measured into another PCR does not count.
    let wrong_pcr = Builder::new()
        .hashed(
            1,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            &variable_data("SecureBoot", &[1]),
        )
        .0;
    assert_eq!(
        secure_boot(&TcgLog::parse(&wrong_pcr).unwrap()),
        SecureBoot::Absent
    );
}

#[test]
fn every_truncation_is_refused_or_is_a_shorter_whole_log() {
    let bytes = firmware_log(&[1]);
    let full = TcgLog::parse(&bytes).unwrap();
    let mut boundaries = vec![SHA256_HEADER_LEN];
    let mut at = SHA256_HEADER_LEN;
    for event in full.events() {
        at += event_len(event.data.len());
        boundaries.push(at);
    }
    assert_eq!(at, bytes.len());
    for len in 0..bytes.len() {
        match TcgLog::parse(&bytes[..len]) {
            Ok(log) => {
                let index = boundaries
                    .iter()
                    .position(|&b| b == len)
                    .expect("ends on a record");
                assert_eq!(log.len(), index);
            }
            Err(error) => assert!(!boundaries.contains(&len), "{len}: {error:?}"),
        }
    }
}

#[test]
fn malformed_logs_get_typed_errors() {
    let good = firmware_log(&[0]);
    // Not crypto-agile: a wrong signature.
    let mut bad = good.clone();
    bad[LEGACY_FIXED + 4] = b'X';
    assert_eq!(
        TcgLog::parse(&bad).unwrap_err(),
        TcgLogError::NotCryptoAgile
    );
    // A header without the SHA-256 bank.
    let mut bad = good.clone();
    let alg_at = LEGACY_FIXED + 4 + SPEC_ID_FIXED;
    bad[alg_at..alg_at + 2].copy_from_slice(&TPM_ALG_SHA1.to_le_bytes());
    assert_eq!(TcgLog::parse(&bad).unwrap_err(), TcgLogError::BadAlgorithms);
    // An event with a PCR index above 23.
    let mut bad = good.clone();
    bad[SHA256_HEADER_LEN..SHA256_HEADER_LEN + 4].copy_from_slice(&24u32.to_le_bytes());
    assert_eq!(TcgLog::parse(&bad).unwrap_err(), TcgLogError::BadPcr(24));
    // An event whose digest names an algorithm the header did not list.
    let mut bad = good.clone();
    bad[SHA256_HEADER_LEN + 12..SHA256_HEADER_LEN + 14]
        .copy_from_slice(&TPM_ALG_SHA1.to_le_bytes());
    assert_eq!(
        TcgLog::parse(&bad).unwrap_err(),
        TcgLogError::UnknownAlgorithm(TPM_ALG_SHA1)
    );
    // An event with no digest at all.
    let mut bad = good[..SHA256_HEADER_LEN].to_vec();
    bad.extend_from_slice(&4u32.to_le_bytes());
    bad.extend_from_slice(&EV_SEPARATOR.to_le_bytes());
    bad.extend_from_slice(&0u32.to_le_bytes());
    bad.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(TcgLog::parse(&bad).unwrap_err(), TcgLogError::MissingSha256);
    // An event size that runs far past the end.
    let mut bad = good.clone();
    let size_at = SHA256_HEADER_LEN + 46;
    bad[size_at..size_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(TcgLog::parse(&bad).unwrap_err(), TcgLogError::Truncated);
    // Emitting into too small a buffer.
    assert_eq!(
        emit_sha256_header(&mut [0u8; 10]),
        Err(TcgLogError::BufferTooSmall)
    );
    assert_eq!(
        emit_event(&mut [0u8; 10], 4, EV_SEPARATOR, &[0; 32], b""),
        Err(TcgLogError::BufferTooSmall)
    );
    assert_eq!(
        emit_event(&mut [0u8; 64], 24, EV_SEPARATOR, &[0; 32], b""),
        Err(TcgLogError::BadPcr(24))
    );
}

#[test]
fn too_many_events_are_refused() {
    let mut builder = Builder::new();
    for _ in 0..=MAX_EVENTS {
        builder = builder.event(4, EV_SEPARATOR, [0; 32], b"");
    }
    assert_eq!(
        TcgLog::parse(&builder.0).unwrap_err(),
        TcgLogError::TooLarge
    );
}

/// tpm2-tools' parser, written by others, reads what the emitter writes (installed by .ci/run).
#[test]
fn tpm2_eventlog_reads_the_emitted_log() {
    let bytes = Builder(firmware_log(&[1]))
        .hashed(12, EV_EVENT_TAG, b"kernel text and rodata")
        .0;
    let dir = std::env::temp_dir().join(format!("cloister-tcg-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("eventlog.bin");
    std::fs::write(&path, &bytes).unwrap();
    let output = std::process::Command::new("tpm2_eventlog")
        .arg(&path)
        .output()
        .expect("tpm2_eventlog (package tpm2-tools) must be installed");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tpm2_eventlog failed: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("EV_EFI_BOOT_SERVICES_APPLICATION"), "{text}");
    let application_hex: String = APPLICATION.iter().map(|b| format!("{b:02x}")).collect();
    assert!(text.contains(&application_hex), "{text}");
    // Its own replay agrees with ours for PCR 4.
    let log = TcgLog::parse(&bytes).unwrap();
    let pcr4: String = log.replay_sha256()[4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        text.contains(&pcr4),
        "tpm2_eventlog's PCR 4 differs from ours:\n{text}"
    );
}
