//! TPM 2.0 commands cloister uses, one function per command, named as TCG TPM 2.0 Library Part 3 names them.
//!
//! Commands are marshalled and responses unmarshalled with the `tpm2-protocol` crate. Every response is treated
//! as untrusted: its header size must equal the bytes received, its response code is decoded before the body is
//! looked at (`tpm2-protocol` reads a nonzero-code response as a success with an empty body), its tag must match
//! the sessions sent, and every value copied out is length-checked. Authorization uses password sessions with
//! empty auth (TPM_RS_PW, Part 1 "Password Authorizations") except where the EK's policy needs a policy session.
//!
//! Stack: each call uses two 4 KiB frames plus the unmarshalled response; no allocation.

use crate::public::{pad32, KeyTemplate, Name, PublicArea};
use crate::rc::{ResponseCode, TPM_RC_INITIALIZE, TPM_RC_RETRY, TPM_RC_TESTING, TPM_RC_YIELDED};
use crate::transport::{Transport, TransportError, HEADER_LEN};
use tpm2_protocol::basic::{TpmBuffer, TpmHandle, TpmInt32, TpmList, TpmUint16};
use tpm2_protocol::data::{
    Tpm2bAuth, Tpm2bData, Tpm2bDigest, Tpm2bEncryptedSecret, Tpm2bIdObject, Tpm2bNonce,
    Tpm2bPublic, Tpm2bSensitiveCreate, TpmAlgId, TpmSe, TpmSt, TpmSu, TpmaSession,
    TpmlPcrSelection, TpmsAuthCommand, TpmsPcrSelect, TpmsPcrSelection, TpmsSchemeHash, TpmtHa,
    TpmtSigScheme, TpmtSymDef, TpmuHa, TpmuSigScheme, TpmuSignature,
};
use tpm2_protocol::frame::{
    tpm_marshal_command, TpmActivateCredentialCommand, TpmActivateCredentialResponse,
    TpmCreatePrimaryCommand, TpmCreatePrimaryResponse, TpmFlushContextCommand,
    TpmFlushContextResponse, TpmFrame, TpmGetRandomCommand, TpmGetRandomResponse, TpmHeader,
    TpmNvReadCommand, TpmNvReadPublicCommand, TpmNvReadPublicResponse, TpmNvReadResponse,
    TpmPcrExtendCommand, TpmPcrExtendResponse, TpmPcrReadCommand, TpmPcrReadResponse,
    TpmPolicySecretCommand, TpmPolicySecretResponse, TpmQuoteCommand, TpmQuoteResponse,
    TpmReadPublicCommand, TpmReadPublicResponse, TpmResponse, TpmStartAuthSessionCommand,
    TpmStartAuthSessionResponse, TpmStartupCommand, TpmStartupResponse, TpmUnmarshalBody,
};
use tpm2_protocol::TpmWriter;

/// Size of the command and response frames (TPM_MAX_COMMAND_SIZE of common TPMs and swtpm).
pub const BUFFER_SIZE: usize = 4096;
/// How often a command answered with TPM_RC_RETRY, TPM_RC_YIELDED or TPM_RC_TESTING is sent again.
pub const COMMAND_RETRIES: u32 = 16;
/// TPM_RH_ENDORSEMENT.
pub const TPM_RH_ENDORSEMENT: u32 = 0x4000_000B;
/// TPM_RH_OWNER.
pub const TPM_RH_OWNER: u32 = 0x4000_0001;
/// TPM_RH_NULL.
pub const TPM_RH_NULL: u32 = 0x4000_0007;
/// TPM_RS_PW: the password session handle.
pub const TPM_RS_PW: u32 = 0x4000_0009;
/// NV index of the RSA-2048 EK certificate (EK Credential Profile §2.2.1.4).
pub const EK_CERT_RSA2048_NV_INDEX: u32 = 0x01C0_0002;
/// TPMA_NV_AUTHREAD (Part 2 §13.4): the index's own auth value authorizes reads.
pub const TPMA_NV_AUTHREAD: u32 = 1 << 18;
/// TPMA_NV_OWNERREAD: the owner hierarchy authorizes reads.
pub const TPMA_NV_OWNERREAD: u32 = 1 << 17;
/// Bytes read per TPM2_NV_Read (below every TPM's TPM_PT_NV_BUFFER_MAX seen: swtpm 1024, hardware 768+).
pub const NV_CHUNK: u16 = 512;
/// Largest TPMS_ATTEST kept from a quote.
pub const MAX_ATTEST: usize = 1024;
/// Largest TPMT_SIGNATURE kept from a quote.
pub const MAX_SIGNATURE: usize = 160;
/// Number of PCRs in the SHA-256 bank of a PC Client TPM.
pub const PCR_COUNT: usize = 24;

/// The commands of this module (Part 2 §6.5.2 TPM_CC values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandCode {
    /// TPM2_Startup.
    Startup,
    /// TPM2_GetRandom.
    GetRandom,
    /// TPM2_PCR_Extend.
    PcrExtend,
    /// TPM2_PCR_Read.
    PcrRead,
    /// TPM2_CreatePrimary.
    CreatePrimary,
    /// TPM2_ReadPublic.
    ReadPublic,
    /// TPM2_NV_ReadPublic.
    NvReadPublic,
    /// TPM2_NV_Read.
    NvRead,
    /// TPM2_StartAuthSession.
    StartAuthSession,
    /// TPM2_PolicySecret.
    PolicySecret,
    /// TPM2_ActivateCredential.
    ActivateCredential,
    /// TPM2_Quote.
    Quote,
    /// TPM2_FlushContext.
    FlushContext,
}

impl CommandCode {
    /// The TPM_CC value.
    #[must_use]
    pub const fn code(self) -> u32 {
        match self {
            Self::Startup => 0x144,
            Self::GetRandom => 0x17B,
            Self::PcrExtend => 0x182,
            Self::PcrRead => 0x17E,
            Self::CreatePrimary => 0x131,
            Self::ReadPublic => 0x173,
            Self::NvReadPublic => 0x169,
            Self::NvRead => 0x14E,
            Self::StartAuthSession => 0x176,
            Self::PolicySecret => 0x151,
            Self::ActivateCredential => 0x147,
            Self::Quote => 0x158,
            Self::FlushContext => 0x165,
        }
    }

    /// The command's name as Part 3 writes it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Startup => "TPM2_Startup",
            Self::GetRandom => "TPM2_GetRandom",
            Self::PcrExtend => "TPM2_PCR_Extend",
            Self::PcrRead => "TPM2_PCR_Read",
            Self::CreatePrimary => "TPM2_CreatePrimary",
            Self::ReadPublic => "TPM2_ReadPublic",
            Self::NvReadPublic => "TPM2_NV_ReadPublic",
            Self::NvRead => "TPM2_NV_Read",
            Self::StartAuthSession => "TPM2_StartAuthSession",
            Self::PolicySecret => "TPM2_PolicySecret",
            Self::ActivateCredential => "TPM2_ActivateCredential",
            Self::Quote => "TPM2_Quote",
            Self::FlushContext => "TPM2_FlushContext",
        }
    }
}

/// What was wrong with a response that came back with TPM_RC_SUCCESS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// The header's size field disagrees with the bytes received.
    Size,
    /// TPM_ST_SESSIONS / TPM_ST_NO_SESSIONS does not match the command.
    Tag,
    /// The body does not unmarshal as the command's response structure.
    Body,
    /// A value is out of range for what was asked: wrong length, algorithm, selection or handle type.
    Content,
    /// PCRs changed between the TPM2_PCR_Read calls needed for one selection, every time it was tried.
    PcrsChanging,
}

/// A failed command: which one, and whether our side or the TPM said no.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The transport (driver or channel) failed.
    Transport {
        /// The command.
        command: CommandCode,
        /// What failed.
        error: TransportError,
    },
    /// The TPM answered with a nonzero response code.
    Tpm {
        /// The command.
        command: CommandCode,
        /// The decoded response code.
        code: ResponseCode,
    },
    /// The TPM answered TPM_RC_SUCCESS with a response we cannot accept.
    Malformed {
        /// The command.
        command: CommandCode,
        /// What was wrong.
        reason: Malformed,
    },
    /// An argument is out of range (PCR index, data too long, output buffer too small); nothing was sent.
    BadArgument {
        /// The command.
        command: CommandCode,
    },
}

impl Error {
    /// The command that failed.
    #[must_use]
    pub const fn command(&self) -> CommandCode {
        match *self {
            Self::Transport { command, .. }
            | Self::Tpm { command, .. }
            | Self::Malformed { command, .. }
            | Self::BadArgument { command } => command,
        }
    }
}

fn malformed(command: CommandCode, reason: Malformed) -> Error {
    Error::Malformed { command, reason }
}

fn password_session() -> TpmsAuthCommand {
    TpmsAuthCommand {
        session_handle: TpmHandle::new(TPM_RS_PW),
        nonce: Tpm2bNonce::default(),
        session_attributes: TpmaSession::empty(),
        hmac: Tpm2bAuth::default(),
    }
}

/// A policy session used once: continueSession clear, so the TPM flushes it after a successful command.
fn policy_session(handle: u32) -> TpmsAuthCommand {
    TpmsAuthCommand {
        session_handle: TpmHandle::new(handle),
        nonce: Tpm2bNonce::default(),
        session_attributes: TpmaSession::empty(),
        hmac: Tpm2bAuth::default(),
    }
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// A TPM 2.0 command as `tpm2-protocol` marshals it, tied to its code and the response it expects.
trait Command: TpmFrame {
    /// The command code, for errors.
    const CODE: CommandCode;
    /// The response body this command is answered with.
    type Response: TpmUnmarshalBody;
}

/// Ties each command structure this module sends to its code and response structure.
macro_rules! commands {
    ($($command:ty => $code:ident, $response:ty;)*) => {
        $(impl Command for $command {
            const CODE: CommandCode = CommandCode::$code;
            type Response = $response;
        })*
    };
}

commands! {
    TpmStartupCommand => Startup, TpmStartupResponse;
    TpmGetRandomCommand => GetRandom, TpmGetRandomResponse;
    TpmPcrExtendCommand => PcrExtend, TpmPcrExtendResponse;
    TpmPcrReadCommand => PcrRead, TpmPcrReadResponse;
    TpmCreatePrimaryCommand => CreatePrimary, TpmCreatePrimaryResponse;
    TpmReadPublicCommand => ReadPublic, TpmReadPublicResponse;
    TpmNvReadPublicCommand => NvReadPublic, TpmNvReadPublicResponse;
    TpmNvReadCommand => NvRead, TpmNvReadResponse;
    TpmStartAuthSessionCommand => StartAuthSession, TpmStartAuthSessionResponse;
    TpmPolicySecretCommand => PolicySecret, TpmPolicySecretResponse;
    TpmActivateCredentialCommand => ActivateCredential, TpmActivateCredentialResponse;
    TpmQuoteCommand => Quote, TpmQuoteResponse;
    TpmFlushContextCommand => FlushContext, TpmFlushContextResponse;
}

/// A successful answer: the unmarshalled body, and the raw response for the parameter bytes that the body type
/// does not keep as they were sent (public areas, attestation structures).
struct Answer<R> {
    body: R,
    code: CommandCode,
    response: [u8; BUFFER_SIZE],
    length: usize,
}

impl<R> Answer<R> {
    /// The first TPM2B of the parameter area and what follows it, for a response with `handles` response
    /// handles and, when `sessions`, a parameterSize field (Part 1 §18, "Response Structure").
    fn first_parameter(&self, handles: usize, sessions: bool) -> Result<(&[u8], &[u8]), Error> {
        parameter_area(&self.response[..self.length], handles, sessions)
            .and_then(split_tpm2b)
            .ok_or(malformed(self.code, Malformed::Body))
    }
}

/// Marshals `command`, sends it, checks the header and response code, and unmarshals the body as the command's
/// response structure.
fn execute<T, C>(
    transport: &mut T,
    command: &C,
    sessions: &[TpmsAuthCommand],
) -> Result<Answer<C::Response>, Error>
where
    T: Transport + ?Sized,
    C: Command,
{
    let code = C::CODE;
    let mut response = [0u8; BUFFER_SIZE];
    let mut frame = [0u8; BUFFER_SIZE];
    let mut writer = TpmWriter::new(&mut frame);
    let tag = if sessions.is_empty() {
        TpmSt::NoSessions
    } else {
        TpmSt::Sessions
    };
    tpm_marshal_command(command, tag, sessions, &mut writer)
        .map_err(|_| Error::BadArgument { command: code })?;
    let length = writer.len();
    let mut attempts = 0;
    let received = loop {
        let received = transport
            .transact(&frame[..length], &mut response)
            .map_err(|error| Error::Transport {
                command: code,
                error,
            })?;
        let bytes = response
            .get(..received)
            .ok_or(malformed(code, Malformed::Size))?;
        if bytes.len() < HEADER_LEN || read_u32(bytes, 2) != Some(received as u32) {
            return Err(malformed(code, Malformed::Size));
        }
        let rc = read_u32(bytes, 6).unwrap_or(u32::MAX);
        // TPM_RC_RETRY, TPM_RC_YIELDED and TPM_RC_TESTING mean the command did not run and may simply be sent
        // again (Part 2 §6.6.3); swtpm answers TPM_RC_RETRY now and then. The count is bounded.
        if matches!(rc, TPM_RC_RETRY | TPM_RC_YIELDED | TPM_RC_TESTING)
            && attempts < COMMAND_RETRIES
        {
            attempts += 1;
            continue;
        }
        if let Some(code_received) = ResponseCode::decode(rc) {
            // An error response is a bare header (Part 1 §18, "Response Structure").
            if received != HEADER_LEN {
                return Err(malformed(code, Malformed::Size));
            }
            return Err(Error::Tpm {
                command: code,
                code: code_received,
            });
        }
        break received;
    };
    let bytes = &response[..received];
    if read_u16(bytes, 0) != Some(tag.value()) {
        return Err(malformed(code, Malformed::Tag));
    }
    let view = TpmResponse::cast(bytes).map_err(|_| malformed(code, Malformed::Body))?;
    let body = view
        .unmarshal::<C::Response>()
        .map_err(|_| malformed(code, Malformed::Body))?;
    if !sessions.is_empty()
        && !auth_area_matches(bytes, <C::Response as TpmHeader>::HANDLES, sessions.len())
    {
        return Err(malformed(code, Malformed::Body));
    }
    Ok(Answer {
        body,
        code,
        response,
        length: received,
    })
}

/// The parameter area of a successful response with `handles` response handles.
fn parameter_area(response: &[u8], handles: usize, sessions: bool) -> Option<&[u8]> {
    let start = HEADER_LEN + 4 * handles;
    if sessions {
        let size = read_u32(response, start)? as usize;
        response.get(start + 4..(start + 4).checked_add(size)?)
    } else {
        response.get(start..)
    }
}

/// Whether the response's authorization area holds exactly `sessions` TPMS_AUTH_RESPONSE entries (nonce, one
/// attribute byte, hmac) and nothing after them (Part 1 §18: one entry per session of the command).
fn auth_area_matches(response: &[u8], handles: usize, sessions: usize) -> bool {
    let start = HEADER_LEN + 4 * handles;
    let Some(parameter_size) = read_u32(response, start) else {
        return false;
    };
    let Some(mut rest) = (start + 4)
        .checked_add(parameter_size as usize)
        .and_then(|end| response.get(end..))
    else {
        return false;
    };
    for _ in 0..sessions {
        let Some((_nonce, after_nonce)) = split_tpm2b(rest) else {
            return false;
        };
        let Some((_hmac, after_hmac)) = after_nonce.get(1..).and_then(split_tpm2b) else {
            return false;
        };
        rest = after_hmac;
    }
    rest.is_empty()
}

/// Splits a TPM2B off the front of `bytes`: (contents, rest).
fn split_tpm2b(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let size = usize::from(read_u16(bytes, 0)?);
    let contents = bytes.get(2..2 + size)?;
    Some((contents, &bytes[2 + size..]))
}

/// How TPM2_Startup ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartupOutcome {
    /// The TPM started now.
    Started,
    /// Firmware had already sent TPM2_Startup (TPM_RC_INITIALIZE), which is fine.
    AlreadyStarted,
}

/// TPM2_Startup (Part 3 §9.3) with TPM_SU_CLEAR.
///
/// # Errors
///
/// [`Error`]; TPM_RC_INITIALIZE is not an error but [`StartupOutcome::AlreadyStarted`].
pub fn startup<T: Transport + ?Sized>(transport: &mut T) -> Result<StartupOutcome, Error> {
    let command = TpmStartupCommand {
        handles: [],
        startup_type: TpmSu::Clear,
    };
    match execute(transport, &command, &[]) {
        Ok(_) => Ok(StartupOutcome::Started),
        Err(Error::Tpm { code, .. }) if code.raw() == TPM_RC_INITIALIZE => {
            Ok(StartupOutcome::AlreadyStarted)
        }
        Err(error) => Err(error),
    }
}

/// TPM2_GetRandom (Part 3 §16.1), repeated until `out` is full (the TPM returns at most a digest's worth per call).
///
/// # Errors
///
/// [`Error`]; `Malformed::Content` when the TPM returns no bytes or more than asked.
pub fn get_random<T: Transport + ?Sized>(transport: &mut T, out: &mut [u8]) -> Result<(), Error> {
    let code = CommandCode::GetRandom;
    let mut filled = 0;
    while filled < out.len() {
        let want = (out.len() - filled).min(32);
        let command = TpmGetRandomCommand {
            handles: [],
            bytes_requested: TpmUint16::new(want as u16),
        };
        let answer = execute(transport, &command, &[])?;
        let body = &answer.body;
        let random: &[u8] = &body.random_bytes;
        if random.is_empty() || random.len() > want {
            return Err(malformed(code, Malformed::Content));
        }
        out[filled..filled + random.len()].copy_from_slice(random);
        filled += random.len();
    }
    Ok(())
}

/// TPM2_PCR_Extend (Part 3 §22.2) of one SHA-256 digest into PCR `pcr` (0-23), password auth.
///
/// # Errors
///
/// [`Error`]; `BadArgument` for a PCR above 23.
pub fn pcr_extend<T: Transport + ?Sized>(
    transport: &mut T,
    pcr: u32,
    digest: &[u8; 32],
) -> Result<(), Error> {
    let code = CommandCode::PcrExtend;
    if pcr as usize >= PCR_COUNT {
        return Err(Error::BadArgument { command: code });
    }
    let mut digests = TpmList::new();
    let value =
        TpmBuffer::try_from(digest.as_slice()).map_err(|_| Error::BadArgument { command: code })?;
    digests
        .try_push(TpmtHa {
            hash_alg: TpmAlgId::Sha256,
            digest: TpmuHa::Digest(value),
        })
        .map_err(|_| Error::BadArgument { command: code })?;
    let command = TpmPcrExtendCommand {
        handles: [TpmHandle::new(pcr)],
        digests,
    };
    execute(transport, &command, &[password_session()])?;
    Ok(())
}

/// A set of PCRs of the SHA-256 bank: bit `i` selects PCR `i` (0-23).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PcrSelection(u32);

impl PcrSelection {
    /// A selection from a bit mask; `None` when a bit above 23 is set.
    #[must_use]
    pub const fn from_mask(mask: u32) -> Option<Self> {
        if mask >> PCR_COUNT != 0 {
            None
        } else {
            Some(Self(mask))
        }
    }

    /// A selection of the listed PCRs; `None` when one is above 23.
    #[must_use]
    pub fn from_indices(pcrs: &[u8]) -> Option<Self> {
        let mut mask = 0u32;
        for &pcr in pcrs {
            if usize::from(pcr) >= PCR_COUNT {
                return None;
            }
            mask |= 1 << pcr;
        }
        Some(Self(mask))
    }

    /// The bit mask.
    #[must_use]
    pub const fn mask(self) -> u32 {
        self.0
    }

    /// Whether PCR `pcr` is selected.
    #[must_use]
    pub const fn contains(self, pcr: u8) -> bool {
        (pcr as usize) < PCR_COUNT && self.0 & (1 << pcr) != 0
    }

    /// Whether nothing is selected.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The selected PCRs in ascending order.
    pub fn indices(self) -> impl Iterator<Item = u8> {
        (0..PCR_COUNT as u8).filter(move |&pcr| self.contains(pcr))
    }

    /// TPML_PCR_SELECTION with one SHA-256 entry (sizeofSelect 3).
    fn to_tpml(self) -> Result<TpmlPcrSelection, ()> {
        let bytes = self.0.to_le_bytes();
        let mut list = TpmlPcrSelection::new();
        list.try_push(TpmsPcrSelection {
            hash: TpmAlgId::Sha256,
            pcr_select: TpmsPcrSelect::try_from(&bytes[..3]).map_err(|_| ())?,
        })
        .map_err(|_| ())?;
        Ok(list)
    }

    /// Reads a TPML_PCR_SELECTION back: empty, or exactly one SHA-256 entry of up to 3 bytes.
    fn from_tpml(list: &TpmlPcrSelection) -> Option<Self> {
        match &list[..] {
            [] => Some(Self(0)),
            [one] if one.hash == TpmAlgId::Sha256 && one.pcr_select.len() <= 3 => {
                let mut bytes = [0u8; 4];
                bytes[..one.pcr_select.len()].copy_from_slice(&one.pcr_select);
                Some(Self(u32::from_le_bytes(bytes)))
            }
            _ => None,
        }
    }
}

/// PCR values read by [`pcr_read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcrValues {
    /// pcrUpdateCounter, the same for every value.
    pub update_counter: u32,
    /// The PCRs that were read (equal to the selection asked for).
    pub selection: PcrSelection,
    /// `values[i]` is PCR `i` where `selection` contains `i`, zeros elsewhere.
    pub values: [[u8; 32]; PCR_COUNT],
}

impl PcrValues {
    /// PCR `pcr`'s value, if it was read.
    #[must_use]
    pub fn get(&self, pcr: u8) -> Option<&[u8; 32]> {
        self.selection
            .contains(pcr)
            .then(|| &self.values[usize::from(pcr)])
    }
}

/// TPM2_PCR_Read (Part 3 §22.4) of the SHA-256 bank. A TPM returns at most 8 digests per call, so the call is
/// repeated for what is left; if pcrUpdateCounter changes in between, the whole read starts again (up to 4 times).
///
/// # Errors
///
/// [`Error`]; `Malformed::Content` when the TPM returns PCRs not asked for, none at all, or a digest that is not
/// 32 bytes; `Malformed::PcrsChanging` when PCRs kept changing.
pub fn pcr_read<T: Transport + ?Sized>(
    transport: &mut T,
    selection: PcrSelection,
) -> Result<PcrValues, Error> {
    let code = CommandCode::PcrRead;
    'attempt: for _ in 0..4 {
        let mut result = PcrValues {
            update_counter: 0,
            selection,
            values: [[0; 32]; PCR_COUNT],
        };
        let mut remaining = selection;
        let mut first = true;
        while !remaining.is_empty() {
            let command = TpmPcrReadCommand {
                handles: [],
                pcr_selection_in: remaining
                    .to_tpml()
                    .map_err(|()| Error::BadArgument { command: code })?,
            };
            let answer = execute(transport, &command, &[])?;
            let body = &answer.body;
            let returned = PcrSelection::from_tpml(&body.pcr_selection_out)
                .ok_or(malformed(code, Malformed::Content))?;
            if returned.is_empty() || returned.0 & !remaining.0 != 0 {
                return Err(malformed(code, Malformed::Content));
            }
            if returned.0.count_ones() as usize != body.pcr_values.len() {
                return Err(malformed(code, Malformed::Content));
            }
            let counter = body.pcr_update_counter.value();
            if first {
                result.update_counter = counter;
                first = false;
            } else if counter != result.update_counter {
                continue 'attempt;
            }
            for (pcr, digest) in returned.indices().zip(body.pcr_values.iter()) {
                let digest: &[u8] = digest;
                result.values[usize::from(pcr)] = digest
                    .try_into()
                    .map_err(|_| malformed(code, Malformed::Content))?;
            }
            remaining = PcrSelection(remaining.0 & !returned.0);
        }
        return Ok(result);
    }
    Err(malformed(code, Malformed::PcrsChanging))
}

/// A primary key made by [`create_primary`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreatedPrimary {
    /// The transient handle (0x80xxxxxx); flush it with [`flush_context`] when done.
    pub handle: u32,
    /// The public area as the TPM returned it.
    pub public: PublicArea,
    /// The object's name, checked to equal SHA-256 over `public`.
    pub name: Name,
}

/// TPM2_CreatePrimary (Part 3 §24.1) under the endorsement hierarchy (empty auth), for one of cloister's
/// templates. The TPM's answer must keep the template's type, nameAlg and attributes, and its name must be the
/// hash of the public area it returned.
///
/// # Errors
///
/// [`Error`]; `Malformed::Content` when the answer disagrees with the template or its own name.
pub fn create_primary<T: Transport + ?Sized>(
    transport: &mut T,
    template: KeyTemplate,
) -> Result<CreatedPrimary, Error> {
    let code = CommandCode::CreatePrimary;
    let public = template.public();
    let command = TpmCreatePrimaryCommand {
        handles: [TpmHandle::new(TPM_RH_ENDORSEMENT)],
        in_sensitive: Tpm2bSensitiveCreate::default(),
        in_public: Tpm2bPublic {
            inner: public.clone(),
        },
        outside_info: Tpm2bData::default(),
        creation_pcr: TpmlPcrSelection::new(),
    };
    let answer = execute(transport, &command, &[password_session()])?;
    let body = &answer.body;
    let handle = body.handles[0].value();
    let (public_bytes, _) = answer.first_parameter(1, true)?;
    let area =
        PublicArea::from_bytes(public_bytes).map_err(|_| malformed(code, Malformed::Content))?;
    let name = Name::from_bytes(&body.name).ok_or(malformed(code, Malformed::Content))?;
    let created = &body.out_public.inner;
    if created.object_type != public.object_type
        || created.name_alg != public.name_alg
        || created.object_attributes != public.object_attributes
        || created.auth_policy != public.auth_policy
        || created.parameters != public.parameters
        || area.name() != name
        || handle >> 24 != 0x80
    {
        return Err(malformed(code, Malformed::Content));
    }
    Ok(CreatedPrimary {
        handle,
        public: area,
        name,
    })
}

/// What [`read_public`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPublic {
    /// The public area.
    pub public: PublicArea,
    /// The name, checked against the public area.
    pub name: Name,
    /// The qualified name.
    pub qualified_name: Name,
}

/// TPM2_ReadPublic (Part 3 §12.4) of a loaded or persistent object.
///
/// # Errors
///
/// [`Error`]; `Malformed::Content` when the name is not the hash of the public area.
pub fn read_public<T: Transport + ?Sized>(
    transport: &mut T,
    handle: u32,
) -> Result<ReadPublic, Error> {
    let code = CommandCode::ReadPublic;
    let command = TpmReadPublicCommand {
        handles: [TpmHandle::new(handle)],
    };
    let answer = execute(transport, &command, &[])?;
    let body = &answer.body;
    let (public_bytes, _) = answer.first_parameter(0, false)?;
    let public =
        PublicArea::from_bytes(public_bytes).map_err(|_| malformed(code, Malformed::Content))?;
    let name = Name::from_bytes(&body.name).ok_or(malformed(code, Malformed::Content))?;
    let qualified_name =
        Name::from_bytes(&body.qualified_name).ok_or(malformed(code, Malformed::Content))?;
    if public.name() != name {
        return Err(malformed(code, Malformed::Content));
    }
    Ok(ReadPublic {
        public,
        name,
        qualified_name,
    })
}

/// The public part of an NV index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvPublic {
    /// The index.
    pub index: u32,
    /// nameAlg.
    pub name_alg: u16,
    /// TPMA_NV bits.
    pub attributes: u32,
    /// The data size in bytes.
    pub data_size: u16,
    /// The index's name.
    pub name: Name,
}

/// TPM2_NV_ReadPublic (Part 3 §31.6).
///
/// # Errors
///
/// [`Error`]; `Malformed::Content` when the TPM describes a different index.
pub fn nv_read_public<T: Transport + ?Sized>(
    transport: &mut T,
    index: u32,
) -> Result<NvPublic, Error> {
    let code = CommandCode::NvReadPublic;
    let command = TpmNvReadPublicCommand {
        handles: [TpmHandle::new(index)],
    };
    let answer = execute(transport, &command, &[])?;
    let body = &answer.body;
    let public = body.nv_public.inner;
    if public.nv_index.value() != index {
        return Err(malformed(code, Malformed::Content));
    }
    Ok(NvPublic {
        index,
        name_alg: public.name_alg.value(),
        attributes: public.attributes.bits(),
        data_size: public.data_size.value(),
        name: Name::from_bytes(&body.nv_name).ok_or(malformed(code, Malformed::Content))?,
    })
}

/// TPM2_NV_Read (Part 3 §31.13) of `out.len()` bytes from `offset`, in chunks of [`NV_CHUNK`]. `auth_handle` is
/// the index itself (TPMA_NV_AUTHREAD) or [`TPM_RH_OWNER`] (TPMA_NV_OWNERREAD), with an empty password.
///
/// # Errors
///
/// [`Error`]; `BadArgument` when the range passes 65535; `Malformed::Content` when a chunk has the wrong length.
pub fn nv_read<T: Transport + ?Sized>(
    transport: &mut T,
    auth_handle: u32,
    index: u32,
    offset: u16,
    out: &mut [u8],
) -> Result<(), Error> {
    let code = CommandCode::NvRead;
    if usize::from(offset) + out.len() > usize::from(u16::MAX) {
        return Err(Error::BadArgument { command: code });
    }
    let mut done = 0usize;
    while done < out.len() {
        let size = (out.len() - done).min(usize::from(NV_CHUNK));
        let command = TpmNvReadCommand {
            handles: [TpmHandle::new(auth_handle), TpmHandle::new(index)],
            size: TpmUint16::new(size as u16),
            offset: TpmUint16::new(offset + done as u16),
        };
        let answer = execute(transport, &command, &[password_session()])?;
        let body = &answer.body;
        let data: &[u8] = &body.data;
        if data.len() != size {
            return Err(malformed(code, Malformed::Content));
        }
        out[done..done + size].copy_from_slice(data);
        done += size;
    }
    Ok(())
}

/// Reads the RSA-2048 EK certificate (DER) from NV index 0x01C00002 into `out`; returns its length.
/// (TPM2_NV_ReadPublic for the size, then TPM2_NV_Read in chunks.)
///
/// # Errors
///
/// [`Error`]; `BadArgument` (command NV_Read) when `out` is smaller than the certificate.
pub fn read_ek_certificate<T: Transport + ?Sized>(
    transport: &mut T,
    out: &mut [u8],
) -> Result<usize, Error> {
    let public = nv_read_public(transport, EK_CERT_RSA2048_NV_INDEX)?;
    let size = usize::from(public.data_size);
    let target = out.get_mut(..size).ok_or(Error::BadArgument {
        command: CommandCode::NvRead,
    })?;
    // swtpm's EK certificate index allows both; a vTPM may allow only owner reads.
    let auth_handle = if public.attributes & TPMA_NV_AUTHREAD != 0 {
        EK_CERT_RSA2048_NV_INDEX
    } else {
        TPM_RH_OWNER
    };
    nv_read(transport, auth_handle, EK_CERT_RSA2048_NV_INDEX, 0, target)?;
    Ok(size)
}

/// TPM2_StartAuthSession (Part 3 §11.1): an unsalted, unbound policy session with SHA-256 and no parameter
/// encryption. `nonce_caller` must be fresh (at least 16 bytes are required; 32 are sent). Returns the handle.
///
/// # Errors
///
/// [`Error`]; `Malformed::Content` when the handle is not a policy session (0x03xxxxxx).
pub fn start_auth_session<T: Transport + ?Sized>(
    transport: &mut T,
    nonce_caller: &[u8; 32],
) -> Result<u32, Error> {
    let code = CommandCode::StartAuthSession;
    let command = TpmStartAuthSessionCommand {
        handles: [TpmHandle::new(TPM_RH_NULL), TpmHandle::new(TPM_RH_NULL)],
        nonce_caller: Tpm2bNonce::try_from(nonce_caller.as_slice())
            .map_err(|_| Error::BadArgument { command: code })?,
        encrypted_salt: Tpm2bEncryptedSecret::default(),
        session_type: TpmSe::Policy,
        symmetric: TpmtSymDef::default(),
        auth_hash: TpmAlgId::Sha256,
    };
    let answer = execute(transport, &command, &[])?;
    let body = &answer.body;
    let handle = body.handles[0].value();
    if handle >> 24 != 0x03 {
        return Err(malformed(code, Malformed::Content));
    }
    Ok(handle)
}

/// TPM2_PolicySecret (Part 3 §23.4): extends `session`'s policy with the secret of `auth_handle` (for the EK:
/// [`TPM_RH_ENDORSEMENT`], empty auth). No nonce, cpHash, policyRef or expiration.
///
/// # Errors
///
/// [`Error`].
pub fn policy_secret<T: Transport + ?Sized>(
    transport: &mut T,
    auth_handle: u32,
    session: u32,
) -> Result<(), Error> {
    let command = TpmPolicySecretCommand {
        handles: [TpmHandle::new(auth_handle), TpmHandle::new(session)],
        nonce_tpm: Tpm2bNonce::default(),
        cp_hash_a: Tpm2bDigest::default(),
        policy_ref: Tpm2bNonce::default(),
        expiration: TpmInt32::new(0),
    };
    execute(transport, &command, &[password_session()])?;
    Ok(())
}

/// A recovered credential (TPM2B_DIGEST contents, up to 64 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credential {
    bytes: [u8; 64],
    len: u8,
}

impl Credential {
    /// The secret's bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// TPM2_ActivateCredential (Part 3 §12.5): `activate_handle` (the AK, password auth) and `key_handle` (the EK,
/// authorized by `policy_session`, which must already satisfy the EK's policy). `credential_blob` is the
/// TPM2B_ID_OBJECT contents (integrity HMAC ‖ encrypted credential), `secret` the TPM2B_ENCRYPTED_SECRET contents
/// (the RSA-OAEP-encrypted seed). The policy session is used once: the TPM flushes it when the command succeeds.
///
/// # Errors
///
/// [`Error`]; `BadArgument` when the blob or secret is too long for its structure.
pub fn activate_credential<T: Transport + ?Sized>(
    transport: &mut T,
    activate_handle: u32,
    key_handle: u32,
    policy_session_handle: u32,
    credential_blob: &[u8],
    secret: &[u8],
) -> Result<Credential, Error> {
    let code = CommandCode::ActivateCredential;
    let command = TpmActivateCredentialCommand {
        handles: [TpmHandle::new(activate_handle), TpmHandle::new(key_handle)],
        credential_blob: Tpm2bIdObject::try_from(credential_blob)
            .map_err(|_| Error::BadArgument { command: code })?,
        secret: Tpm2bEncryptedSecret::try_from(secret)
            .map_err(|_| Error::BadArgument { command: code })?,
    };
    let sessions = [password_session(), policy_session(policy_session_handle)];
    let answer = execute(transport, &command, &sessions)?;
    let body = &answer.body;
    let info: &[u8] = &body.cert_info;
    let mut credential = Credential {
        bytes: [0; 64],
        len: info.len() as u8,
    };
    credential
        .bytes
        .get_mut(..info.len())
        .ok_or(malformed(code, Malformed::Content))?
        .copy_from_slice(info);
    Ok(credential)
}

/// The EK's whole credential-activation sequence: TPM2_StartAuthSession, TPM2_PolicySecret(TPM_RH_ENDORSEMENT),
/// TPM2_ActivateCredential. On failure the policy session is flushed, so no session slot leaks.
///
/// # Errors
///
/// The first failing command's [`Error`].
pub fn activate_credential_with_ek<T: Transport + ?Sized>(
    transport: &mut T,
    ak_handle: u32,
    ek_handle: u32,
    nonce_caller: &[u8; 32],
    credential_blob: &[u8],
    secret: &[u8],
) -> Result<Credential, Error> {
    let session = start_auth_session(transport, nonce_caller)?;
    let result = policy_secret(transport, TPM_RH_ENDORSEMENT, session).and_then(|()| {
        activate_credential(
            transport,
            ak_handle,
            ek_handle,
            session,
            credential_blob,
            secret,
        )
    });
    if result.is_err() {
        // The session may still be loaded; its flush failing changes nothing about the error reported.
        let _ = flush_context(transport, session);
    }
    result
}

/// A quote made by [`quote`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quote {
    attest: [u8; MAX_ATTEST],
    attest_len: u16,
    signature: [u8; MAX_SIGNATURE],
    signature_len: u16,
    /// ECDSA r, big-endian, left-padded to 32 bytes.
    pub r: [u8; 32],
    /// ECDSA s, big-endian, left-padded to 32 bytes.
    pub s: [u8; 32],
}

impl Quote {
    /// The signed TPMS_ATTEST bytes, exactly as the TPM sent them (the message `tpm2_checkquote` reads).
    #[must_use]
    pub fn attest(&self) -> &[u8] {
        &self.attest[..usize::from(self.attest_len)]
    }

    /// The TPMT_SIGNATURE bytes, exactly as the TPM sent them.
    #[must_use]
    pub fn signature(&self) -> &[u8] {
        &self.signature[..usize::from(self.signature_len)]
    }
}

/// TPM2_Quote (Part 3 §18.4) over `selection` of the SHA-256 bank, signed by `sign_handle` (the AK, password
/// auth) with ECDSA-SHA256, `qualifying_data` (up to 64 bytes) as extraData.
///
/// # Errors
///
/// [`Error`]; `BadArgument` for qualifying data over 64 bytes or an empty selection; `Malformed::Content` when
/// the signature is not ECDSA-SHA256 with 32-byte r and s.
pub fn quote<T: Transport + ?Sized>(
    transport: &mut T,
    sign_handle: u32,
    qualifying_data: &[u8],
    selection: PcrSelection,
) -> Result<Quote, Error> {
    let code = CommandCode::Quote;
    if qualifying_data.len() > 64 || selection.is_empty() {
        return Err(Error::BadArgument { command: code });
    }
    let command = TpmQuoteCommand {
        handles: [TpmHandle::new(sign_handle)],
        qualifying_data: Tpm2bData::try_from(qualifying_data)
            .map_err(|_| Error::BadArgument { command: code })?,
        in_scheme: TpmtSigScheme {
            scheme: TpmAlgId::Ecdsa,
            details: TpmuSigScheme::Hash(TpmsSchemeHash {
                hash_alg: TpmAlgId::Sha256,
            }),
        },
        pcr_select: selection
            .to_tpml()
            .map_err(|()| Error::BadArgument { command: code })?,
    };
    let answer = execute(transport, &command, &[password_session()])?;
    let body = &answer.body;
    let (attest, signature) = answer.first_parameter(0, true)?;
    let (r, s) = match &body.signature.signature {
        TpmuSignature::Ecdsa(ecdsa) if ecdsa.hash == TpmAlgId::Sha256 => (
            pad32(&ecdsa.signature_r).ok_or(malformed(code, Malformed::Content))?,
            pad32(&ecdsa.signature_s).ok_or(malformed(code, Malformed::Content))?,
        ),
        _ => return Err(malformed(code, Malformed::Content)),
    };
    if attest.len() > MAX_ATTEST || signature.len() > MAX_SIGNATURE {
        return Err(malformed(code, Malformed::Content));
    }
    let mut quote = Quote {
        attest: [0; MAX_ATTEST],
        attest_len: attest.len() as u16,
        signature: [0; MAX_SIGNATURE],
        signature_len: signature.len() as u16,
        r,
        s,
    };
    quote.attest[..attest.len()].copy_from_slice(attest);
    quote.signature[..signature.len()].copy_from_slice(signature);
    Ok(quote)
}

/// TPM2_FlushContext (Part 3 §28.4): unloads a transient object or session.
///
/// # Errors
///
/// [`Error`].
pub fn flush_context<T: Transport + ?Sized>(transport: &mut T, handle: u32) -> Result<(), Error> {
    let command = TpmFlushContextCommand {
        handles: [],
        flush_handle: TpmHandle::new(handle),
    };
    execute(transport, &command, &[])?;
    Ok(())
}
