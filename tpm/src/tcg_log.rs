//! The firmware's crypto-agile event log: a checked parser, an emitter for the kernel's own events, SHA-256
//! replay, and the firmware checks a verifier makes on it (docs/ARCHITECTURE.md §4).
//!
//! Format: TCG PC Client Platform Firmware Profile (PFP) 1.05, §10.2.1 `TCG_PCR_EVENT` (the first record, in the
//! SHA-1 format, whose event is the `TCG_EfiSpecIDEventStruct` "Spec ID Event03" of §10.4.5.1 listing each bank's
//! algorithm and digest size), then `TCG_PCR_EVENT2` records (§10.2.2):
//!
//! ```text
//! TCG_PCR_EVENT   := pcrIndex u32 | eventType u32 (EV_NO_ACTION) | digest [20] | eventSize u32 | event
//! SpecIdEvent     := signature "Spec ID Event03\0" | platformClass u32 | versionMinor u8 | versionMajor u8
//!                    | errata u8 | uintnSize u8 | numberOfAlgorithms u32 | (algorithmId u16 | digestSize u16) * n
//!                    | vendorInfoSize u8 | vendorInfo
//! TCG_PCR_EVENT2  := pcrIndex u32 | eventType u32 | count u32 | (hashAlg u16 | digest [size of hashAlg]) * count
//!                    | eventSize u32 | event
//! ```
//!
//! All integers are little-endian. Every length is checked against the bytes present before it is used; the
//! parser walks the whole log once and refuses anything inconsistent, so iteration afterwards cannot fail.
//! EV_NO_ACTION records are never extended (PFP §10.4.5); the "StartupLocality" one sets PCR 0's starting
//! value to the locality in its last byte (PFP §10.4.5.3).

use sha2::{Digest as _, Sha256};

/// TPM_ALG_SHA1 (TCG Algorithm Registry).
pub const TPM_ALG_SHA1: u16 = 0x0004;
/// TPM_ALG_SHA256.
pub const TPM_ALG_SHA256: u16 = 0x000B;

/// PFP §10.4.1 event types used here.
pub const EV_NO_ACTION: u32 = 0x0000_0003;
/// A separator between pre-OS and OS-present measurements.
pub const EV_SEPARATOR: u32 = 0x0000_0004;
/// A tagged event: cloister's own PCR 12-14 events use this type (PFP §10.4.1, "EV_EVENT_TAG").
pub const EV_EVENT_TAG: u32 = 0x0000_0006;
/// EFI variable measured as platform configuration (PCR 7: SecureBoot, PK, KEK, db, dbx).
pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
/// A boot variable (PCR 1).
pub const EV_EFI_VARIABLE_BOOT: u32 = 0x8000_0002;
/// A UEFI application started from a boot option (PCR 4; digest = the PE's Authenticode hash).
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
/// A UEFI boot-services driver loaded from a device (PCR 2).
pub const EV_EFI_BOOT_SERVICES_DRIVER: u32 = 0x8000_0004;
/// A UEFI runtime-services driver (PCR 2).
pub const EV_EFI_RUNTIME_SERVICES_DRIVER: u32 = 0x8000_0005;
/// An action string such as "Calling EFI Application from Boot Option".
pub const EV_EFI_ACTION: u32 = 0x8000_0007;

/// Highest PCR index on a PC Client platform.
pub const MAX_PCR: u32 = 23;
/// Most events one log may hold (OVMF logs a few dozen).
pub const MAX_EVENTS: usize = 1024;
/// Most bytes one log may hold.
pub const MAX_LOG_BYTES: usize = 1 << 20;
/// Most algorithms the Spec ID header may list.
pub const MAX_ALGORITHMS: usize = 8;
/// Largest digest of a listed algorithm (SHA-512).
pub const MAX_DIGEST: u16 = 64;

const SPEC_ID_SIGNATURE: [u8; 16] = *b"Spec ID Event03\0";
const STARTUP_LOCALITY_SIGNATURE: [u8; 16] = *b"StartupLocality\0";
/// `TCG_PCR_EVENT` up to its `eventSize` field.
const LEGACY_FIXED: usize = 4 + 4 + 20;
/// The Spec ID event's fixed part before the algorithm list.
const SPEC_ID_FIXED: usize = 16 + 4 + 4 + 4;
/// EFI_GLOBAL_VARIABLE (UEFI 2.x §3.3), as UEFI stores a GUID (first three fields little-endian).
const EFI_GLOBAL_VARIABLE: [u8; 16] = [
    0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c,
];

/// Why a log was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcgLogError {
    /// A record runs past the end of the bytes, or a length field overflows.
    Truncated,
    /// The first record is not a crypto-agile "Spec ID Event03" header.
    NotCryptoAgile,
    /// The header lists no algorithm, too many, a zero or oversized digest, or no SHA-256 bank.
    BadAlgorithms,
    /// An event carries a digest of an algorithm the header did not list, or lists one twice.
    UnknownAlgorithm(u16),
    /// An event lacks a SHA-256 digest.
    MissingSha256,
    /// A PCR index above 23.
    BadPcr(u32),
    /// More than [`MAX_EVENTS`] events or [`MAX_LOG_BYTES`] bytes.
    TooLarge,
    /// An output buffer is too small (emitting).
    BufferTooSmall,
}

impl core::fmt::Display for TcgLogError {
    fn fmt(&self, out: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated => out.write_str("a record runs past the end of the log"),
            Self::NotCryptoAgile => out.write_str("the log does not start with a crypto-agile Spec ID Event03 header"),
            Self::BadAlgorithms => out.write_str("the log header's list of digest algorithms is unusable (no SHA-256 bank)"),
            Self::UnknownAlgorithm(algorithm) => write!(
                out,
                "an event carries a digest of algorithm {algorithm:#06x}, which the header does not list once"
            ),
            Self::MissingSha256 => out.write_str("an event has no SHA-256 digest"),
            Self::BadPcr(pcr) => write!(out, "an event names PCR {pcr}; the TPM has PCRs 0 to 23"),
            Self::TooLarge => write!(
                out,
                "the log has more than {MAX_EVENTS} events or {MAX_LOG_BYTES} bytes"
            ),
            Self::BufferTooSmall => out.write_str("the buffer for the log is too small"),
        }
    }
}

/// The algorithms the header lists, each with its digest size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Algorithms {
    list: [(u16, u16); MAX_ALGORITHMS],
    count: usize,
}

impl Algorithms {
    /// The (algorithm id, digest size) pairs, in header order.
    #[must_use]
    pub fn as_slice(&self) -> &[(u16, u16)] {
        &self.list[..self.count]
    }

    fn size_of(&self, algorithm: u16) -> Option<usize> {
        self.as_slice()
            .iter()
            .find(|(id, _)| *id == algorithm)
            .map(|(_, size)| usize::from(*size))
    }
}

/// One `TCG_PCR_EVENT2` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcgEvent<'a> {
    /// The PCR index.
    pub pcr: u32,
    /// The PFP event type.
    pub event_type: u32,
    /// The SHA-256 digest extended (present on every event of a checked log).
    pub sha256: [u8; 32],
    /// The event data.
    pub data: &'a [u8],
}

/// A checked crypto-agile log: a view over its bytes.
#[derive(Clone, Copy, Debug)]
pub struct TcgLog<'a> {
    bytes: &'a [u8],
    algorithms: Algorithms,
    /// Offset of the first `TCG_PCR_EVENT2`.
    first_event: usize,
    event_count: usize,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn slice(bytes: &[u8], at: usize, len: usize) -> Result<&[u8], TcgLogError> {
    bytes
        .get(at..at.checked_add(len).ok_or(TcgLogError::Truncated)?)
        .ok_or(TcgLogError::Truncated)
}

/// Parses the Spec ID header record; returns the algorithms and the header's length.
fn parse_header(bytes: &[u8]) -> Result<(Algorithms, usize), TcgLogError> {
    let pcr = u32_at(bytes, 0).ok_or(TcgLogError::Truncated)?;
    let event_type = u32_at(bytes, 4).ok_or(TcgLogError::Truncated)?;
    let event_len = u32_at(bytes, LEGACY_FIXED).ok_or(TcgLogError::Truncated)? as usize;
    let event = slice(bytes, LEGACY_FIXED + 4, event_len)?;
    if pcr != 0 || event_type != EV_NO_ACTION || event.get(..16) != Some(&SPEC_ID_SIGNATURE[..]) {
        return Err(TcgLogError::NotCryptoAgile);
    }
    let count = u32_at(event, SPEC_ID_FIXED - 4).ok_or(TcgLogError::Truncated)? as usize;
    if count == 0 || count > MAX_ALGORITHMS {
        return Err(TcgLogError::BadAlgorithms);
    }
    let mut algorithms = Algorithms {
        list: [(0, 0); MAX_ALGORITHMS],
        count,
    };
    for index in 0..count {
        let at = SPEC_ID_FIXED + index * 4;
        let id = u16_at(event, at).ok_or(TcgLogError::Truncated)?;
        let size = u16_at(event, at + 2).ok_or(TcgLogError::Truncated)?;
        if size == 0
            || size > MAX_DIGEST
            || algorithms.as_slice()[..index]
                .iter()
                .any(|(seen, _)| *seen == id)
        {
            return Err(TcgLogError::BadAlgorithms);
        }
        algorithms.list[index] = (id, size);
    }
    if algorithms.size_of(TPM_ALG_SHA256) != Some(32) {
        return Err(TcgLogError::BadAlgorithms);
    }
    // vendorInfoSize and vendorInfo must fit inside the event.
    let vendor_at = SPEC_ID_FIXED + count * 4;
    let vendor_len = usize::from(*event.get(vendor_at).ok_or(TcgLogError::Truncated)?);
    slice(event, vendor_at + 1, vendor_len)?;
    Ok((algorithms, LEGACY_FIXED + 4 + event_len))
}

/// Parses one `TCG_PCR_EVENT2` at `at`; returns it and the offset after it.
fn parse_event<'a>(
    bytes: &'a [u8],
    at: usize,
    algorithms: &Algorithms,
) -> Result<(TcgEvent<'a>, usize), TcgLogError> {
    let pcr = u32_at(bytes, at).ok_or(TcgLogError::Truncated)?;
    let event_type = u32_at(bytes, at + 4).ok_or(TcgLogError::Truncated)?;
    if pcr > MAX_PCR {
        return Err(TcgLogError::BadPcr(pcr));
    }
    let count = u32_at(bytes, at + 8).ok_or(TcgLogError::Truncated)? as usize;
    if count > algorithms.count {
        return Err(TcgLogError::BadAlgorithms);
    }
    let mut cursor = at + 12;
    let mut sha256 = None;
    let mut seen = [0u16; MAX_ALGORITHMS];
    for index in 0..count {
        let algorithm = u16_at(bytes, cursor).ok_or(TcgLogError::Truncated)?;
        let size = algorithms
            .size_of(algorithm)
            .ok_or(TcgLogError::UnknownAlgorithm(algorithm))?;
        if seen[..index].contains(&algorithm) {
            return Err(TcgLogError::UnknownAlgorithm(algorithm));
        }
        seen[index] = algorithm;
        let digest = slice(bytes, cursor + 2, size)?;
        if algorithm == TPM_ALG_SHA256 {
            let mut value = [0u8; 32];
            value.copy_from_slice(digest);
            sha256 = Some(value);
        }
        cursor += 2 + size;
    }
    let data_len = u32_at(bytes, cursor).ok_or(TcgLogError::Truncated)? as usize;
    let data = slice(bytes, cursor + 4, data_len)?;
    let sha256 = sha256.ok_or(TcgLogError::MissingSha256)?;
    Ok((
        TcgEvent {
            pcr,
            event_type,
            sha256,
            data,
        },
        cursor + 4 + data_len,
    ))
}

impl<'a> TcgLog<'a> {
    /// Checks a whole log: the header, then every event to the last byte.
    ///
    /// # Errors
    ///
    /// [`TcgLogError`] for the first inconsistency found.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, TcgLogError> {
        if bytes.len() > MAX_LOG_BYTES {
            return Err(TcgLogError::TooLarge);
        }
        let (algorithms, first_event) = parse_header(bytes)?;
        let mut at = first_event;
        let mut event_count = 0;
        while at < bytes.len() {
            if event_count == MAX_EVENTS {
                return Err(TcgLogError::TooLarge);
            }
            let (_, next) = parse_event(bytes, at, &algorithms)?;
            at = next;
            event_count += 1;
        }
        Ok(Self {
            bytes,
            algorithms,
            first_event,
            event_count,
        })
    }

    /// The banks the header lists.
    #[must_use]
    pub const fn algorithms(&self) -> &Algorithms {
        &self.algorithms
    }

    /// Number of `TCG_PCR_EVENT2` records.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.event_count
    }

    /// Whether the log holds only its header.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.event_count == 0
    }

    /// The log's bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The events in log order.
    pub fn events(&self) -> impl Iterator<Item = TcgEvent<'a>> + '_ {
        let mut at = self.first_event;
        core::iter::from_fn(move || {
            if at >= self.bytes.len() {
                return None;
            }
            // `parse` walked the same records, so this cannot fail; stop rather than panic if it did.
            let (event, next) = parse_event(self.bytes, at, &self.algorithms).ok()?;
            at = next;
            Some(event)
        })
    }

    /// Every PCR's SHA-256 value after replaying the log from the platform's reset values: zeros, except PCR 0
    /// when a StartupLocality event says the TPM was started from another locality.
    #[must_use]
    pub fn replay_sha256(&self) -> [[u8; 32]; 24] {
        let mut pcrs = [[0u8; 32]; 24];
        for event in self.events() {
            let index = event.pcr as usize;
            if event.event_type == EV_NO_ACTION {
                if index == 0
                    && event.data.len() == 17
                    && event.data[..16] == STARTUP_LOCALITY_SIGNATURE
                {
                    pcrs[0] = [0u8; 32];
                    pcrs[0][31] = event.data[16];
                }
                continue;
            }
            let mut hasher = Sha256::new();
            hasher.update(pcrs[index]);
            hasher.update(event.sha256);
            pcrs[index] = hasher.finalize().into();
        }
        pcrs
    }
}

/// Bytes of a Spec ID header listing SHA-256 only.
pub const SHA256_HEADER_LEN: usize = LEGACY_FIXED + 4 + SPEC_ID_FIXED + 4 + 1;

/// Writes a crypto-agile header that lists only the SHA-256 bank (PFP §10.4.5.1: platform class 0 client,
/// spec version 2.0 errata 0, UINTN size 2 = 64-bit). Returns the bytes written.
///
/// # Errors
///
/// [`TcgLogError::BufferTooSmall`].
pub fn emit_sha256_header(out: &mut [u8]) -> Result<usize, TcgLogError> {
    let out = out
        .get_mut(..SHA256_HEADER_LEN)
        .ok_or(TcgLogError::BufferTooSmall)?;
    out.fill(0);
    out[4..8].copy_from_slice(&EV_NO_ACTION.to_le_bytes());
    let event_len = (SPEC_ID_FIXED + 4 + 1) as u32;
    out[LEGACY_FIXED..LEGACY_FIXED + 4].copy_from_slice(&event_len.to_le_bytes());
    let event = &mut out[LEGACY_FIXED + 4..];
    event[..16].copy_from_slice(&SPEC_ID_SIGNATURE);
    // platformClass 0 (client), versionMinor 0, versionMajor 2, errata 0, uintnSize 2.
    event[21] = 2;
    event[23] = 2;
    event[24..28].copy_from_slice(&1u32.to_le_bytes());
    event[28..30].copy_from_slice(&TPM_ALG_SHA256.to_le_bytes());
    event[30..32].copy_from_slice(&32u16.to_le_bytes());
    // vendorInfoSize 0 (already zero).
    Ok(SHA256_HEADER_LEN)
}

/// Bytes [`emit_event`] writes for `data_len` bytes of event data.
#[must_use]
pub const fn event_len(data_len: usize) -> usize {
    4 + 4 + 4 + 2 + 32 + 4 + data_len
}

/// Writes one `TCG_PCR_EVENT2` with a single SHA-256 digest. The log it is appended to must list SHA-256 as its
/// only bank (as [`emit_sha256_header`] writes, and as the appliance's TPM is provisioned); a log with more banks
/// would need a digest per bank. Returns the bytes written.
///
/// # Errors
///
/// [`TcgLogError::BadPcr`], [`TcgLogError::BufferTooSmall`], [`TcgLogError::TooLarge`] for data over 4 GiB.
pub fn emit_event(
    out: &mut [u8],
    pcr: u32,
    event_type: u32,
    sha256: &[u8; 32],
    data: &[u8],
) -> Result<usize, TcgLogError> {
    if pcr > MAX_PCR {
        return Err(TcgLogError::BadPcr(pcr));
    }
    let data_len = u32::try_from(data.len()).map_err(|_| TcgLogError::TooLarge)?;
    let len = event_len(data.len());
    let out = out.get_mut(..len).ok_or(TcgLogError::BufferTooSmall)?;
    out[0..4].copy_from_slice(&pcr.to_le_bytes());
    out[4..8].copy_from_slice(&event_type.to_le_bytes());
    out[8..12].copy_from_slice(&1u32.to_le_bytes());
    out[12..14].copy_from_slice(&TPM_ALG_SHA256.to_le_bytes());
    out[14..46].copy_from_slice(sha256);
    out[46..50].copy_from_slice(&data_len.to_le_bytes());
    out[50..].copy_from_slice(data);
    Ok(len)
}

/// Why the firmware part of a log does not support the claim that exactly the expected image was booted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirmwareError {
    /// Replaying the log does not give the quoted value of this PCR.
    ReplayMismatch(u8),
    /// PCR 4 records no boot application.
    NoBootApplication,
    /// PCR 4 records more than one boot application (another loader, a shell).
    ExtraBootApplication,
    /// The boot application's digest is not the expected Authenticode hash.
    WrongBootApplication,
}

/// The Secure Boot state PCR 7 records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecureBoot {
    /// The `SecureBoot` variable is measured as 1.
    Enabled,
    /// The `SecureBoot` variable is measured as 0 (or empty).
    Disabled,
    /// No `SecureBoot` variable event in PCR 7.
    Absent,
}

/// Replays the log and compares each of `quoted` (PCR index, SHA-256 value) with the replayed value.
///
/// # Errors
///
/// [`FirmwareError::ReplayMismatch`] naming the first PCR that differs.
pub fn check_replay(log: &TcgLog, quoted: &[(u8, [u8; 32])]) -> Result<(), FirmwareError> {
    let replayed = log.replay_sha256();
    for (pcr, value) in quoted {
        let matches = replayed
            .get(usize::from(*pcr))
            .is_some_and(|replayed| replayed == value);
        if !matches {
            return Err(FirmwareError::ReplayMismatch(*pcr));
        }
    }
    Ok(())
}

/// PCR 4 must record exactly one EV_EFI_BOOT_SERVICES_APPLICATION, and its digest must be `expected` (the PE's
/// Authenticode SHA-256, PFP §10.4.4: the firmware measures the image it starts).
///
/// # Errors
///
/// [`FirmwareError::NoBootApplication`], [`FirmwareError::ExtraBootApplication`],
/// [`FirmwareError::WrongBootApplication`].
pub fn check_boot_application(log: &TcgLog, expected: &[u8; 32]) -> Result<(), FirmwareError> {
    let mut applications = log
        .events()
        .filter(|event| event.pcr == 4 && event.event_type == EV_EFI_BOOT_SERVICES_APPLICATION);
    let first = applications
        .next()
        .ok_or(FirmwareError::NoBootApplication)?;
    if applications.next().is_some() {
        return Err(FirmwareError::ExtraBootApplication);
    }
    if first.sha256 != *expected {
        return Err(FirmwareError::WrongBootApplication);
    }
    Ok(())
}

/// The Secure Boot state from PCR 7's EV_EFI_VARIABLE_DRIVER_CONFIG event for EFI_GLOBAL_VARIABLE `SecureBoot`
/// (event data `UEFI_VARIABLE_DATA`: VariableName GUID, UnicodeNameLength u64 in characters,
/// VariableDataLength u64, the UTF-16LE name, the data; PFP §10.4.4 and §3.3.4.8).
#[must_use]
pub fn secure_boot(log: &TcgLog) -> SecureBoot {
    for event in log.events() {
        if event.pcr != 7 || event.event_type != EV_EFI_VARIABLE_DRIVER_CONFIG {
            continue;
        }
        let Some(variable) = variable(event.data) else {
            continue;
        };
        if variable.guid == EFI_GLOBAL_VARIABLE && utf16_equals(variable.name, "SecureBoot") {
            return if variable.value.first().is_some_and(|byte| *byte == 1) {
                SecureBoot::Enabled
            } else {
                SecureBoot::Disabled
            };
        }
    }
    SecureBoot::Absent
}

/// One measured UEFI variable: its vendor GUID, its UTF-16LE name bytes and its data.
struct Variable<'a> {
    guid: [u8; 16],
    name: &'a [u8],
    value: &'a [u8],
}

/// A UEFI_VARIABLE_DATA's parts, or `None` when inconsistent.
fn variable(data: &[u8]) -> Option<Variable<'_>> {
    let guid: [u8; 16] = data.get(..16)?.try_into().ok()?;
    let name_chars = usize::try_from(u64_at(data, 16)?).ok()?;
    let value_len = usize::try_from(u64_at(data, 24)?).ok()?;
    let name_len = name_chars.checked_mul(2)?;
    let name = data.get(32..32usize.checked_add(name_len)?)?;
    let value_start = 32 + name_len;
    let value = data.get(value_start..value_start.checked_add(value_len)?)?;
    Some(Variable { guid, name, value })
}

fn utf16_equals(bytes: &[u8], text: &str) -> bool {
    bytes.len() == text.len() * 2
        && bytes
            .chunks_exact(2)
            .zip(text.bytes())
            .all(|(unit, byte)| unit[0] == byte && unit[1] == 0)
}

#[cfg(test)]
mod tests;
