//! The firmware's TCG2 event log, as the EFI entry stub handed it over (docs/ARCHITECTURE.md,
//! "UEFI boot"): the crypto-agile log GetEventLog returned before ExitBootServices, followed by
//! the events the final-events table gained after that call (TCG EFI Protocol Specification
//! §6.5-§6.6), as the second PVH module. On the direct path there is none and the log is empty.
//!
//! The kernel only keeps and forwards these bytes; the verifier parses and replays them against
//! the quoted PCRs 0-7.

/// Most bytes accepted as a firmware log; a larger module is ignored rather than trusted.
pub const MAX_LOG_BYTES: u64 = 1 << 20;

/// Shows the log on the debug console, in hex, one line per 48 bytes ("firmware event log:"),
/// so a person can rebuild the binary log from the serial output and read it with
/// `tpm2_eventlog`. Compiles to nothing without `debug-console`.
pub fn show(_log: &[u8]) {
    #[cfg(feature = "debug-console")]
    {
        use core::fmt::Write;
        crate::debug!("firmware event log: {} bytes", _log.len());
        for chunk in _log.chunks(48) {
            let mut line: heapless::String<96> = heapless::String::new();
            for byte in chunk {
                let _ = write!(line, "{byte:02x}");
            }
            crate::debug!("firmware event log: {line}");
        }
    }
}
