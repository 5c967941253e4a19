//! The two event logs an appliance sends (docs/ARCHITECTURE.md §4): the kernel's own log (`tpm::eventlog`) and
//! the whole boot's crypto-agile TCG log (`tpm::tcg_log`; TCG PC Client Platform Firmware Profile §10), with the
//! verifier's replays and firmware checks run on whatever parses.

use client::verify::checks;
use tpm::tcg_log::{self, TcgLog};

/// Parses the input as both logs and, where it parses, replays it and runs the firmware checks against the
/// PCR values its own replay gives (the checks must then agree with the replay).
pub fn event_logs(data: &[u8]) {
    if let Ok(log) = checks::parse_event_log(data) {
        let pcrs = log.replay();
        for pcr in 0..24u8 {
            assert_eq!(log.replay_pcr(pcr), pcrs[usize::from(pcr)]);
        }
    }
    if let Ok(log) = TcgLog::parse(data) {
        let pcrs = log.replay_sha256();
        let quoted: Vec<(u8, [u8; 32])> =
            (0..24u8).map(|pcr| (pcr, pcrs[usize::from(pcr)])).collect();
        assert_eq!(
            tcg_log::check_replay(&log, &quoted),
            Ok(()),
            "a log replays to the values its own replay computed"
        );
        let _ = tcg_log::check_boot_application(&log, &[0xa5; 32]);
        let _ = tcg_log::secure_boot(&log);
        let _ = log.events().count();
    }
}
