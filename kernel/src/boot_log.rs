//! The whole boot's event log in one crypto-agile TCG_PCR_EVENT2 log (docs/ARCHITECTURE.md §4, "What is measured,
//! and by whom"): the firmware's log as the EFI stub handed it over, followed by the kernel's own PCR 12-14 events,
//! so a verifier (and `tpm2_eventlog`) replays every PCR from one file. On the direct path there is no firmware
//! log, and the kernel's events follow a SHA-256-only header.

use alloc::vec::Vec;

use tpm::eventlog::EventLog;
use tpm::tcg_log::{self, TcgLogError, EV_EVENT_TAG, SHA256_HEADER_LEN};

/// The firmware's log (empty on the direct path) followed by the kernel's events (`tpm::measurement`'s boot events
/// as the kernel extended them), each as an EV_EVENT_TAG event with its SHA-256 digest and its description as the
/// event data.
///
/// The kernel's events carry only a SHA-256 digest: the firmware's header may list more banks, but the verifier
/// replays the SHA-256 bank only, and a TCG_PCR_EVENT2 may carry fewer digests than the header lists.
///
/// # Errors
///
/// [`TcgLogError`] when an event does not fit the format (a PCR above 23).
pub fn whole_boot(firmware: &[u8], events: &EventLog) -> Result<Vec<u8>, TcgLogError> {
    let header = if firmware.is_empty() {
        SHA256_HEADER_LEN
    } else {
        firmware.len()
    };
    let body: usize = events
        .events()
        .map(|event| tcg_log::event_len(event.description().len()))
        .sum();
    let mut log = alloc::vec![0u8; header + body];
    let mut at = if firmware.is_empty() {
        tcg_log::emit_sha256_header(&mut log)?
    } else {
        log[..firmware.len()].copy_from_slice(firmware);
        firmware.len()
    };
    for event in events.events() {
        at += tcg_log::emit_event(
            &mut log[at..],
            u32::from(event.pcr()),
            EV_EVENT_TAG,
            event.digest(),
            event.description().as_bytes(),
        )?;
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tpm::eventlog::Event;
    use tpm::measurement::BootDigests;
    use tpm::tcg_log::TcgLog;

    /// The contract's five events, as the kernel logs them when it extends them.
    fn boot_events(digests: &BootDigests) -> EventLog {
        let mut log = EventLog::new();
        for event in digests.events() {
            log.push(Event::new(event.pcr, event.kind, event.digest, event.description).unwrap())
                .unwrap();
        }
        log
    }

    fn digests() -> BootDigests {
        BootDigests {
            kernel: [1; 32],
            model: [2; 32],
            serving: [3; 32],
            configuration: [4; 32],
            command_line: [5; 32],
        }
    }

    #[test]
    fn direct_path_log_replays_to_the_contract() {
        let digests = digests();
        let bytes = whole_boot(&[], &boot_events(&digests)).unwrap();
        let log = TcgLog::parse(&bytes).unwrap();
        assert_eq!(log.len(), 5);
        let replayed = log.replay_sha256();
        assert_eq!(replayed[12..15], digests.replay());
        assert!(replayed[..12].iter().all(|pcr| *pcr == [0; 32]));
        let first = log.events().next().unwrap();
        assert_eq!(first.event_type, EV_EVENT_TAG);
        assert_eq!(first.data, b"kernel text, rodata and data");
    }

    #[test]
    fn firmware_log_is_kept_byte_for_byte_before_the_kernel_events() {
        let digests = digests();
        // A firmware log: a header and one PCR 4 event.
        let mut firmware = alloc::vec![0u8; SHA256_HEADER_LEN + tcg_log::event_len(3)];
        let at = tcg_log::emit_sha256_header(&mut firmware).unwrap();
        tcg_log::emit_event(
            &mut firmware[at..],
            4,
            tcg_log::EV_EFI_BOOT_SERVICES_APPLICATION,
            &[9; 32],
            b"app",
        )
        .unwrap();
        let bytes = whole_boot(&firmware, &boot_events(&digests)).unwrap();
        assert_eq!(bytes[..firmware.len()], firmware[..]);
        let log = TcgLog::parse(&bytes).unwrap();
        assert_eq!(log.len(), 6);
        let replayed = log.replay_sha256();
        assert_eq!(replayed[12..15], digests.replay());
        assert_eq!(
            replayed[4],
            tpm::eventlog::extend(&[0; 32], &[9; 32]),
            "the firmware's event replays as before"
        );
    }
}
