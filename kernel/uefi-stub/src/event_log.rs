//! Record lengths in the firmware's crypto-agile event log, so the stub can copy the log whole.
//!
//! TCG PC Client Platform Firmware Profile 1.05, §10.2 (`TCG_PCR_EVENT`, the "Spec ID Event03"
//! header of §10.4.5.1 that lists each bank's digest size) and §10.2.2 (`TCG_PCR_EVENT2`); TCG EFI
//! Protocol Specification §6.5 (`EFI_TCG2_FINAL_EVENTS_TABLE`). Only lengths are computed here: the
//! verifier parses and replays the events. Every length is checked against the bytes present.

use crate::{u16_at, u32_at, u64_at};

/// Most hash algorithms a log may declare.
pub const MAX_ALGORITHMS: usize = 8;
/// Offset of the first event in `EFI_TCG2_FINAL_EVENTS_TABLE` (Version, NumberOfEvents).
pub const FINAL_EVENTS_HEADER_LEN: usize = 16;
const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
/// Bytes of the log's first record needed to know its length.
pub const HEADER_PREFIX_LEN: usize = LEGACY_HEADER_LEN + 4;
/// `TCG_PCR_EVENT` up to its `EventSize` field: PCRIndex, EventType, a SHA-1 digest.
const LEGACY_HEADER_LEN: usize = 4 + 4 + 20;

/// Why the log is not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogError {
    /// A record runs past the bytes given.
    Truncated,
    /// The first record is not a Spec ID Event03 header.
    NotCryptoAgile,
    /// An event names an algorithm the header did not declare, or too many algorithms.
    UnknownAlgorithm,
}

/// The digest sizes the Spec ID header declares, and the header's own length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    algorithms: [(u16, u16); MAX_ALGORITHMS],
    count: usize,
    /// Bytes of the `TCG_PCR_EVENT` header record.
    pub len: usize,
}

impl Header {
    /// Parses the log's first record.
    pub fn parse(log: &[u8]) -> Result<Self, LogError> {
        let event_start = LEGACY_HEADER_LEN + 4;
        let event_len = header_record_len(log)? - event_start;
        let event = log
            .get(
                event_start
                    ..event_start
                        .checked_add(event_len)
                        .ok_or(LogError::Truncated)?,
            )
            .ok_or(LogError::Truncated)?;
        if event.get(..16) != Some(&SPEC_ID_SIGNATURE[..]) {
            return Err(LogError::NotCryptoAgile);
        }
        let count = u32_at(event, 24).ok_or(LogError::Truncated)? as usize;
        if count == 0 || count > MAX_ALGORITHMS {
            return Err(LogError::UnknownAlgorithm);
        }
        let mut header = Header {
            algorithms: [(0, 0); MAX_ALGORITHMS],
            count,
            len: event_start + event_len,
        };
        for index in 0..count {
            let at = 28 + index * 4;
            header.algorithms[index] = (
                u16_at(event, at).ok_or(LogError::Truncated)?,
                u16_at(event, at + 2).ok_or(LogError::Truncated)?,
            );
        }
        Ok(header)
    }

    fn digest_size(&self, algorithm: u16) -> Option<usize> {
        self.algorithms[..self.count]
            .iter()
            .find(|(id, _)| *id == algorithm)
            .map(|(_, size)| *size as usize)
    }

    /// The length of the `TCG_PCR_EVENT2` record at `offset` of `log`.
    pub fn event_len(&self, log: &[u8], offset: usize) -> Result<usize, LogError> {
        let len = self.event_len_by(|at, len| log.get(at..at.checked_add(len)?), offset)?;
        if offset.checked_add(len).is_none_or(|end| end > log.len()) {
            return Err(LogError::Truncated);
        }
        Ok(len)
    }

    /// The length of the record at `offset`, reading only its fixed fields through `bytes_at`
    /// (offset, length): for memory whose extent is known only record by record, so nothing past
    /// the record's own fields is read. The event data itself is not read.
    pub fn event_len_by<'a>(
        &self,
        bytes_at: impl Fn(usize, usize) -> Option<&'a [u8]>,
        offset: usize,
    ) -> Result<usize, LogError> {
        let read_u32 = |at: usize| bytes_at(at, 4).and_then(|bytes| u32_at(bytes, 0));
        let digests = read_u32(offset + 8).ok_or(LogError::Truncated)? as usize;
        if digests > MAX_ALGORITHMS {
            return Err(LogError::UnknownAlgorithm);
        }
        let mut at = offset + 12;
        for _ in 0..digests {
            let algorithm = bytes_at(at, 2)
                .and_then(|bytes| u16_at(bytes, 0))
                .ok_or(LogError::Truncated)?;
            let size = self
                .digest_size(algorithm)
                .ok_or(LogError::UnknownAlgorithm)?;
            at += 2 + size;
        }
        let event_len = read_u32(at).ok_or(LogError::Truncated)? as usize;
        (at + 4 - offset)
            .checked_add(event_len)
            .ok_or(LogError::Truncated)
    }

    /// The length of `count` consecutive records starting at `offset` of `log`.
    pub fn events_len(&self, log: &[u8], offset: usize, count: u64) -> Result<usize, LogError> {
        let mut at = offset;
        for _ in 0..count {
            at += self.event_len(log, at)?;
        }
        Ok(at - offset)
    }
}

/// The length of the log's first record (`TCG_PCR_EVENT`) from its first 32 bytes.
pub fn header_record_len(first: &[u8]) -> Result<usize, LogError> {
    let event_len = u32_at(first, LEGACY_HEADER_LEN).ok_or(LogError::Truncated)? as usize;
    (LEGACY_HEADER_LEN + 4)
        .checked_add(event_len)
        .ok_or(LogError::Truncated)
}

/// The number of events an `EFI_TCG2_FINAL_EVENTS_TABLE` holds.
pub fn final_events_count(table: &[u8]) -> Result<u64, LogError> {
    u64_at(table, 8).ok_or(LogError::Truncated)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A Spec ID header declaring SHA-1 (0x0004, 20 bytes) and SHA-256 (0x000b, 32 bytes).
    pub fn spec_id_header() -> Vec<u8> {
        let mut event = Vec::new();
        event.extend_from_slice(SPEC_ID_SIGNATURE);
        event.extend_from_slice(&0u32.to_le_bytes()); // platformClass
        event.extend_from_slice(&[0, 2, 0, 2]); // minor, major, errata, uintnSize
        event.extend_from_slice(&2u32.to_le_bytes());
        event.extend_from_slice(&[0x04, 0, 20, 0, 0x0b, 0, 32, 0]);
        event.push(0); // vendorInfoSize
        let mut record = Vec::new();
        record.extend_from_slice(&0u32.to_le_bytes());
        record.extend_from_slice(&3u32.to_le_bytes()); // EV_NO_ACTION
        record.extend_from_slice(&[0; 20]);
        record.extend_from_slice(&(event.len() as u32).to_le_bytes());
        record.extend_from_slice(&event);
        record
    }

    pub fn event2(pcr: u32, data: &[u8]) -> Vec<u8> {
        let mut record = Vec::new();
        record.extend_from_slice(&pcr.to_le_bytes());
        record.extend_from_slice(&0x8000_0003u32.to_le_bytes());
        record.extend_from_slice(&2u32.to_le_bytes());
        record.extend_from_slice(&[0x04, 0]);
        record.extend_from_slice(&[0xaa; 20]);
        record.extend_from_slice(&[0x0b, 0]);
        record.extend_from_slice(&[0xbb; 32]);
        record.extend_from_slice(&(data.len() as u32).to_le_bytes());
        record.extend_from_slice(data);
        record
    }

    #[test]
    fn lengths_follow_the_declared_digest_sizes() {
        let mut log = spec_id_header();
        let header_len = log.len();
        let first = event2(4, b"application");
        log.extend_from_slice(&first);
        log.extend_from_slice(&event2(7, b""));
        let header = Header::parse(&log).unwrap();
        assert_eq!(header.len, header_len);
        assert_eq!(header_record_len(&log[..HEADER_PREFIX_LEN]), Ok(header_len));
        // Reading field by field needs nothing past the record's fixed fields.
        let fields_only = &log[..header_len + first.len() - b"application".len()];
        assert_eq!(
            header.event_len_by(|at, len| fields_only.get(at..at + len), header_len),
            Ok(first.len())
        );
        assert_eq!(header.event_len(&log, header_len), Ok(first.len()));
        assert_eq!(
            header.events_len(&log, header_len, 2),
            Ok(log.len() - header_len)
        );
        assert_eq!(
            header.events_len(&log, header_len, 3),
            Err(LogError::Truncated)
        );
    }

    #[test]
    fn malformed_logs_are_errors() {
        let log = spec_id_header();
        assert_eq!(Header::parse(&log[..40]), Err(LogError::Truncated));
        let mut legacy = log.clone();
        legacy[32] = b'X';
        assert_eq!(Header::parse(&legacy), Err(LogError::NotCryptoAgile));
        let header = Header::parse(&log).unwrap();
        let mut unknown = event2(0, b"x");
        unknown[12] = 0x0c; // SHA-384, not declared
        assert_eq!(
            header.event_len(&unknown, 0),
            Err(LogError::UnknownAlgorithm)
        );
        let mut table = vec![1, 0, 0, 0, 0, 0, 0, 0];
        table.extend_from_slice(&2u64.to_le_bytes());
        assert_eq!(final_events_count(&table), Ok(2));
    }
}
