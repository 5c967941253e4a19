//! The measurement event log: what was extended into which PCR, its byte format, and its replay.
//!
//! Extend semantics follow TCG TPM 2.0 Library Part 1 ("PCR Extend") and Part 3 §22.2 (TPM2_PCR_Extend) for
//! the SHA-256 bank: a PCR starts at 32 zero bytes and `extend(d)` sets it to SHA-256(old ‖ d). The log
//! covers only cloister's own measurements (docs/ARCHITECTURE.md §4: PCR 12 kernel, 13 model and serving parameters,
//! 14 configuration), so replaying it reproduces those PCRs, not the firmware's PCRs 0-9.
//!
//! # Byte format (version 1; all integers big-endian)
//!
//! ```text
//! log   := magic "CLEV" (4) | version u16 = 1 | count u16 (<= MAX_EVENTS) | event * count
//! event := pcr u8 (0..=23) | kind u8 (EventKind) | digest [32] | description_len u8 (<= 64)
//!          | description (printable ASCII 0x20..=0x7E, description_len bytes)
//! ```
//!
//! Parsing rejects anything else: wrong magic or version, a count above [`MAX_EVENTS`], a PCR above 23, an
//! unknown kind, a long or non-printable description (the client prints it), missing or trailing bytes.

use crate::commands::{self, Error as CommandError};
use crate::transport::Transport;
use sha2::{Digest as _, Sha256};

/// Most events one log holds.
pub const MAX_EVENTS: usize = 32;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION: usize = 64;
/// Highest PCR index (PC Client platforms have 24 PCRs).
pub const MAX_PCR: u8 = 23;
/// Magic at the start of a serialised log.
pub const MAGIC: [u8; 4] = *b"CLEV";
/// The only format version so far.
pub const VERSION: u16 = 1;

const LOG_HEADER_LEN: usize = 8;
const EVENT_FIXED_LEN: usize = 1 + 1 + 32 + 1;

/// What a measurement is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EventKind {
    /// The kernel image's loadable read-only segments (PCR 12).
    KernelImage = 1,
    /// The model file, SHA-256 of the GGUF blob (PCR 13).
    Model = 2,
    /// Serving parameters that change model behaviour (PCR 13).
    ServingParameters = 3,
    /// Appliance configuration: port, limits (PCR 14).
    Configuration = 4,
    /// The kernel command line (PCR 14).
    CommandLine = 5,
    /// Anything else cloister measures; the description says what.
    Other = 6,
}

impl EventKind {
    /// The kind for a wire byte.
    #[must_use]
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::KernelImage,
            2 => Self::Model,
            3 => Self::ServingParameters,
            4 => Self::Configuration,
            5 => Self::CommandLine,
            6 => Self::Other,
            _ => return None,
        })
    }
}

/// Why an event or a log was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventLogError {
    /// PCR index above [`MAX_PCR`].
    BadPcr(u8),
    /// Unknown kind byte.
    BadKind(u8),
    /// Description longer than [`MAX_DESCRIPTION`].
    DescriptionTooLong,
    /// Description holds a byte outside printable ASCII.
    DescriptionNotPrintable,
    /// The log already holds [`MAX_EVENTS`] events.
    Full,
    /// Wrong magic.
    BadMagic,
    /// Unknown version.
    BadVersion(u16),
    /// Count above [`MAX_EVENTS`].
    TooManyEvents(u16),
    /// The bytes end before the structure does.
    Truncated,
    /// Bytes follow the last event.
    TrailingBytes,
    /// The output buffer is too small for [`EventLog::emit`].
    BufferTooSmall,
}

/// One measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pcr: u8,
    kind: EventKind,
    digest: [u8; 32],
    description: [u8; MAX_DESCRIPTION],
    description_len: u8,
}

impl Event {
    /// Builds an event, checking the PCR index and the description.
    ///
    /// # Errors
    ///
    /// [`EventLogError::BadPcr`], [`EventLogError::DescriptionTooLong`],
    /// [`EventLogError::DescriptionNotPrintable`].
    pub fn new(
        pcr: u8,
        kind: EventKind,
        digest: [u8; 32],
        description: &str,
    ) -> Result<Self, EventLogError> {
        Self::from_parts(pcr, kind, digest, description.as_bytes())
    }

    fn from_parts(
        pcr: u8,
        kind: EventKind,
        digest: [u8; 32],
        text: &[u8],
    ) -> Result<Self, EventLogError> {
        if pcr > MAX_PCR {
            return Err(EventLogError::BadPcr(pcr));
        }
        if text.len() > MAX_DESCRIPTION {
            return Err(EventLogError::DescriptionTooLong);
        }
        if !text.iter().all(|byte| (0x20..=0x7e).contains(byte)) {
            return Err(EventLogError::DescriptionNotPrintable);
        }
        let mut description = [0u8; MAX_DESCRIPTION];
        description[..text.len()].copy_from_slice(text);
        Ok(Self {
            pcr,
            kind,
            digest,
            description,
            description_len: text.len() as u8,
        })
    }

    /// The PCR index.
    #[must_use]
    pub const fn pcr(&self) -> u8 {
        self.pcr
    }

    /// What was measured.
    #[must_use]
    pub const fn kind(&self) -> EventKind {
        self.kind
    }

    /// The SHA-256 digest that was extended.
    #[must_use]
    pub const fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The description (printable ASCII, so always valid UTF-8).
    #[must_use]
    pub fn description(&self) -> &str {
        // Printable ASCII was checked on construction.
        core::str::from_utf8(&self.description[..usize::from(self.description_len)]).unwrap_or("")
    }

    /// Serialised length of this event.
    #[must_use]
    pub const fn buffer_len(&self) -> usize {
        EVENT_FIXED_LEN + self.description_len as usize
    }
}

/// An ordered list of measurements, fixed capacity, no allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLog {
    events: [Option<Event>; MAX_EVENTS],
    len: usize,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

/// SHA-256 of `bytes`, the digest format every event uses.
#[must_use]
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// One SHA-256 PCR extend: SHA-256(old ‖ digest).
#[must_use]
pub fn extend(old: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(old);
    hasher.update(digest);
    hasher.finalize().into()
}

impl EventLog {
    /// An empty log.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            events: [None; MAX_EVENTS],
            len: 0,
        }
    }

    /// Appends an event.
    ///
    /// # Errors
    ///
    /// [`EventLogError::Full`].
    pub fn push(&mut self, event: Event) -> Result<(), EventLogError> {
        let slot = self.events.get_mut(self.len).ok_or(EventLogError::Full)?;
        *slot = Some(event);
        self.len += 1;
        Ok(())
    }

    /// Number of events.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// True when no event is logged.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The events in order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events[..self.len].iter().flatten()
    }

    /// Serialised length.
    #[must_use]
    pub fn buffer_len(&self) -> usize {
        LOG_HEADER_LEN + self.events().map(Event::buffer_len).sum::<usize>()
    }

    /// Writes the log into `out` in the format of the module docs; returns the bytes written.
    ///
    /// # Errors
    ///
    /// [`EventLogError::BufferTooSmall`].
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, EventLogError> {
        let total = self.buffer_len();
        let out = out.get_mut(..total).ok_or(EventLogError::BufferTooSmall)?;
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&VERSION.to_be_bytes());
        out[6..8].copy_from_slice(&(self.len as u16).to_be_bytes());
        let mut at = LOG_HEADER_LEN;
        for event in self.events() {
            let length = usize::from(event.description_len);
            out[at] = event.pcr;
            out[at + 1] = event.kind as u8;
            out[at + 2..at + 34].copy_from_slice(&event.digest);
            out[at + 34] = event.description_len;
            out[at + 35..at + 35 + length].copy_from_slice(&event.description[..length]);
            at += event.buffer_len();
        }
        Ok(total)
    }

    /// Parses a serialised log. Untrusted input: every length is checked before use.
    ///
    /// # Errors
    ///
    /// Any [`EventLogError`] except `Full` and `BufferTooSmall`.
    pub fn parse(bytes: &[u8]) -> Result<Self, EventLogError> {
        let header = bytes
            .get(..LOG_HEADER_LEN)
            .ok_or(EventLogError::Truncated)?;
        if header[..4] != MAGIC {
            return Err(EventLogError::BadMagic);
        }
        let version = u16::from_be_bytes([header[4], header[5]]);
        if version != VERSION {
            return Err(EventLogError::BadVersion(version));
        }
        let count = u16::from_be_bytes([header[6], header[7]]);
        if usize::from(count) > MAX_EVENTS {
            return Err(EventLogError::TooManyEvents(count));
        }
        let mut log = Self::new();
        let mut rest = &bytes[LOG_HEADER_LEN..];
        for _ in 0..count {
            let fixed = rest
                .get(..EVENT_FIXED_LEN)
                .ok_or(EventLogError::Truncated)?;
            let kind = EventKind::from_u8(fixed[1]).ok_or(EventLogError::BadKind(fixed[1]))?;
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&fixed[2..34]);
            let length = usize::from(fixed[34]);
            let text = rest
                .get(EVENT_FIXED_LEN..EVENT_FIXED_LEN + length)
                .ok_or(EventLogError::Truncated)?;
            log.push(Event::from_parts(fixed[0], kind, digest, text)?)?;
            rest = &rest[EVENT_FIXED_LEN + length..];
        }
        if !rest.is_empty() {
            return Err(EventLogError::TrailingBytes);
        }
        Ok(log)
    }

    /// Replays the log from all-zero PCRs; entry `i` is PCR `i`'s value after every logged extend.
    #[must_use]
    pub fn replay(&self) -> [[u8; 32]; 24] {
        let mut pcrs = [[0u8; 32]; 24];
        for event in self.events() {
            let pcr = &mut pcrs[usize::from(event.pcr)];
            *pcr = extend(pcr, &event.digest);
        }
        pcrs
    }

    /// Replays one PCR (see [`EventLog::replay`]); a PCR above 23 replays to zeros.
    #[must_use]
    pub fn replay_pcr(&self, pcr: u8) -> [u8; 32] {
        self.replay()
            .get(usize::from(pcr))
            .copied()
            .unwrap_or([0; 32])
    }
}

/// Why [`measure`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeasureError {
    /// The event was refused before anything was extended.
    Log(EventLogError),
    /// TPM2_PCR_Extend failed; nothing was logged.
    Extend(CommandError),
}

/// Extends `digest` into `pcr` (TPM2_PCR_Extend, SHA-256 bank) and logs it. The event is checked and the log's
/// room reserved first, so the TPM and the log cannot disagree: either both change or neither does.
///
/// # Errors
///
/// [`MeasureError`].
pub fn measure<T: Transport + ?Sized>(
    transport: &mut T,
    log: &mut EventLog,
    pcr: u8,
    kind: EventKind,
    digest: [u8; 32],
    description: &str,
) -> Result<(), MeasureError> {
    let event = Event::new(pcr, kind, digest, description).map_err(MeasureError::Log)?;
    if log.len() >= MAX_EVENTS {
        return Err(MeasureError::Log(EventLogError::Full));
    }
    commands::pcr_extend(transport, u32::from(pcr), &digest).map_err(MeasureError::Extend)?;
    log.push(event).map_err(MeasureError::Log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EventLog {
        let mut log = EventLog::new();
        log.push(
            Event::new(
                12,
                EventKind::KernelImage,
                sha256(b"kernel"),
                "kernel text+rodata",
            )
            .unwrap(),
        )
        .unwrap();
        log.push(Event::new(13, EventKind::Model, sha256(b"model"), "SmolLM2-135M Q4_1").unwrap())
            .unwrap();
        log.push(Event::new(13, EventKind::ServingParameters, sha256(b"params"), "").unwrap())
            .unwrap();
        log.push(Event::new(14, EventKind::Configuration, sha256(b"config"), "port=8443").unwrap())
            .unwrap();
        log
    }

    #[test]
    fn fixed_bytes_fixture() {
        let mut log = EventLog::new();
        log.push(Event::new(12, EventKind::KernelImage, [0x11; 32], "k").unwrap())
            .unwrap();
        let mut out = [0u8; 64];
        let written = log.emit(&mut out).unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(b"CLEV");
        expected.extend_from_slice(&[0, 1, 0, 1, 12, 1]);
        expected.extend_from_slice(&[0x11; 32]);
        expected.extend_from_slice(&[1, b'k']);
        assert_eq!(&out[..written], expected.as_slice());
        assert_eq!(written, log.buffer_len());
        assert_eq!(EventLog::parse(&expected).unwrap(), log);
    }

    #[test]
    fn round_trip() {
        let log = sample();
        let mut out = vec![0u8; log.buffer_len()];
        assert_eq!(log.emit(&mut out).unwrap(), out.len());
        let parsed = EventLog::parse(&out).unwrap();
        assert_eq!(parsed, log);
        let descriptions: Vec<_> = parsed.events().map(Event::description).collect();
        assert_eq!(
            descriptions,
            ["kernel text+rodata", "SmolLM2-135M Q4_1", "", "port=8443"]
        );
    }

    #[test]
    fn empty_log_round_trip() {
        let log = EventLog::new();
        let mut out = [0u8; 8];
        assert_eq!(log.emit(&mut out).unwrap(), 8);
        assert_eq!(EventLog::parse(&out).unwrap(), log);
    }

    #[test]
    fn replay_matches_hand_computed_extends() {
        let log = sample();
        let pcrs = log.replay();
        let pcr12 = extend(&[0; 32], &sha256(b"kernel"));
        let pcr13 = extend(&extend(&[0; 32], &sha256(b"model")), &sha256(b"params"));
        let pcr14 = extend(&[0; 32], &sha256(b"config"));
        assert_eq!(pcrs[12], pcr12);
        assert_eq!(pcrs[13], pcr13);
        assert_eq!(pcrs[14], pcr14);
        assert_eq!(pcrs[0], [0; 32]);
        assert_eq!(log.replay_pcr(13), pcr13);
        // Independent check of the extend primitive: SHA-256 of 64 zero bytes.
        let mut zeros = [0u8; 64];
        zeros[..32].copy_from_slice(&[0; 32]);
        assert_eq!(extend(&[0; 32], &[0; 32]), sha256(&zeros));
    }

    #[test]
    fn event_validation() {
        assert_eq!(
            Event::new(24, EventKind::Other, [0; 32], "x"),
            Err(EventLogError::BadPcr(24))
        );
        assert_eq!(
            Event::new(12, EventKind::Other, [0; 32], &"a".repeat(65)),
            Err(EventLogError::DescriptionTooLong)
        );
        assert!(Event::new(12, EventKind::Other, [0; 32], &"a".repeat(64)).is_ok());
        assert_eq!(
            Event::new(12, EventKind::Other, [0; 32], "bell\x07"),
            Err(EventLogError::DescriptionNotPrintable)
        );
        assert_eq!(
            Event::new(12, EventKind::Other, [0; 32], "caf\u{e9}"),
            Err(EventLogError::DescriptionNotPrintable)
        );
    }

    #[test]
    fn full_log_refuses() {
        let mut log = EventLog::new();
        for _ in 0..MAX_EVENTS {
            log.push(Event::new(12, EventKind::Other, [1; 32], "e").unwrap())
                .unwrap();
        }
        assert_eq!(
            log.push(Event::new(12, EventKind::Other, [1; 32], "e").unwrap()),
            Err(EventLogError::Full)
        );
        let mut out = vec![0u8; log.buffer_len()];
        log.emit(&mut out).unwrap();
        assert_eq!(EventLog::parse(&out).unwrap().len(), MAX_EVENTS);
        assert_eq!(log.emit(&mut out[..10]), Err(EventLogError::BufferTooSmall));
    }

    #[test]
    fn hostile_inputs_are_rejected() {
        let log = sample();
        let mut good = vec![0u8; log.buffer_len()];
        log.emit(&mut good).unwrap();

        for cut in 0..good.len() {
            assert!(
                EventLog::parse(&good[..cut]).is_err(),
                "prefix of {cut} bytes"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            EventLog::parse(&trailing),
            Err(EventLogError::TrailingBytes)
        );

        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(EventLog::parse(&bad), Err(EventLogError::BadMagic));
        let mut bad = good.clone();
        bad[5] = 2;
        assert_eq!(EventLog::parse(&bad), Err(EventLogError::BadVersion(2)));
        let mut bad = good.clone();
        bad[6..8].copy_from_slice(&33u16.to_be_bytes());
        assert_eq!(EventLog::parse(&bad), Err(EventLogError::TooManyEvents(33)));
        let mut bad = good.clone();
        bad[8] = 24;
        assert_eq!(EventLog::parse(&bad), Err(EventLogError::BadPcr(24)));
        let mut bad = good.clone();
        bad[9] = 0;
        assert_eq!(EventLog::parse(&bad), Err(EventLogError::BadKind(0)));
        let mut bad = good.clone();
        bad[8 + 34] = 200;
        assert!(EventLog::parse(&bad).is_err());
        let mut bad = good.clone();
        bad[8 + 35] = 0x1b;
        assert_eq!(
            EventLog::parse(&bad),
            Err(EventLogError::DescriptionNotPrintable)
        );
    }

    /// A transport that counts commands and answers each with `response`.
    struct Canned {
        response: Vec<u8>,
        commands: usize,
    }

    impl Transport for Canned {
        fn transact(
            &mut self,
            _command: &[u8],
            response: &mut [u8],
        ) -> Result<usize, crate::transport::TransportError> {
            self.commands += 1;
            response[..self.response.len()].copy_from_slice(&self.response);
            Ok(self.response.len())
        }
    }

    /// A successful PCR_Extend response: TPM_ST_SESSIONS, parameterSize 0, one empty password-session reply.
    const EXTEND_OK: [u8; 19] = [
        0x80, 0x02, 0, 0, 0, 19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0, 0,
    ];

    #[test]
    fn measure_extends_then_logs() {
        let mut tpm = Canned {
            response: EXTEND_OK.to_vec(),
            commands: 0,
        };
        let mut log = EventLog::new();
        measure(
            &mut tpm,
            &mut log,
            12,
            EventKind::KernelImage,
            [7; 32],
            "kernel",
        )
        .unwrap();
        assert_eq!(tpm.commands, 1);
        assert_eq!(log.len(), 1);
        assert_eq!(log.events().next().unwrap().digest(), &[7; 32]);
    }

    #[test]
    fn failed_extend_is_not_logged() {
        // TPM_RC_LOCALITY (0x907).
        let mut tpm = Canned {
            response: vec![0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x09, 0x07],
            commands: 0,
        };
        let mut log = EventLog::new();
        let error = measure(
            &mut tpm,
            &mut log,
            12,
            EventKind::KernelImage,
            [7; 32],
            "kernel",
        )
        .unwrap_err();
        assert!(matches!(
            error,
            MeasureError::Extend(CommandError::Tpm { .. })
        ));
        assert!(log.is_empty());
    }

    #[test]
    fn refused_event_is_not_extended() {
        let mut tpm = Canned {
            response: EXTEND_OK.to_vec(),
            commands: 0,
        };
        let mut log = EventLog::new();
        assert_eq!(
            measure(&mut tpm, &mut log, 12, EventKind::Other, [0; 32], "ok"),
            Ok(())
        );
        assert_eq!(
            measure(&mut tpm, &mut log, 12, EventKind::Other, [0; 32], "tab\t"),
            Err(MeasureError::Log(EventLogError::DescriptionNotPrintable))
        );
        assert_eq!(
            measure(&mut tpm, &mut log, 30, EventKind::Other, [0; 32], "x"),
            Err(MeasureError::Log(EventLogError::BadPcr(30)))
        );
        for _ in 1..MAX_EVENTS {
            measure(
                &mut tpm,
                &mut log,
                14,
                EventKind::Configuration,
                [1; 32],
                "c",
            )
            .unwrap();
        }
        let sent = tpm.commands;
        assert_eq!(
            measure(
                &mut tpm,
                &mut log,
                14,
                EventKind::Configuration,
                [1; 32],
                "c"
            ),
            Err(MeasureError::Log(EventLogError::Full))
        );
        assert_eq!(tpm.commands, sent, "nothing extended once the log is full");
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let log = sample();
        let mut good = vec![0u8; log.buffer_len()];
        log.emit(&mut good).unwrap();
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            let flips = (next() % 4) + 1;
            for _ in 0..flips {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            let cut = (next() as usize) % (bytes.len() + 1);
            if let Ok(parsed) = EventLog::parse(&bytes[..cut]) {
                // Whatever parses re-emits to the same bytes.
                let mut again = vec![0u8; parsed.buffer_len()];
                parsed.emit(&mut again).unwrap();
                assert_eq!(again, &bytes[..cut]);
            }
            let random: Vec<u8> = (0..(next() % 300)).map(|_| next() as u8).collect();
            let _ = EventLog::parse(&random);
        }
    }
}
