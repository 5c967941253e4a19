//! `--export-evidence DIR`: the evidence as files that tpm2-tools' `tpm2_checkquote` (5.4) reads, so a tool
//! nobody here wrote can check the same quote (STYLE 8).
//!
//! Forms: `quote.msg` is the TPMS_ATTEST bytes as signed (`-m`), `quote.sig` the TPMT_SIGNATURE bytes (`-s`),
//! `ak.pem` the AK as a PEM SubjectPublicKeyInfo (`-u`), the qualifying data as hex (`-q`), and `pcrs.bin` the
//! reported PCR values (`-f`) in the form `tpm2_quote -o` writes by default: the C structures TPML_PCR_SELECTION,
//! a UINT32 count of TPML_DIGEST lists, then the lists, little-endian with x86-64 alignment (see
//! [`tpm2_tools_pcrs`]). The alternative, raw values with `-l sha256:...`, is broken in tpm2-tools 5.4 for more
//! than seven PCRs (its reader drops the eighth digest when it starts a new TPML_DIGEST), so it is not used; the
//! raw values are still written as `pcrs.values` for other tools. Also written: the AK and EK TPMT_PUBLIC
//! (`ak.pub`, `ek.pub`), the EK certificate (`ek.der`, for `openssl verify`), the whole boot's crypto-agile TCG log
//! (`eventlog.bin`, the firmware's events then the kernel's, for `tpm2_eventlog`), the kernel's own event log in
//! `tpm::eventlog` form (`cloister-eventlog.bin`),
//! the nonce and TLS channel binding the qualifying data covers (`binding.txt`) and the whole command line
//! (`checkquote.txt`).
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result};
use net::proto::{ChannelBinding, Evidence};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use tpm::attest::QuoteInfo;
use tpm::commands::PcrSelection;
use tpm::public::{PublicArea, PublicKey};

use crate::digest::hex;

/// A `tpm2_checkquote` invocation over exported files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckquoteCommand {
    /// The directory holding the files (the command's working directory).
    pub dir: PathBuf,
    /// The arguments after `tpm2_checkquote`, naming files relative to `dir`.
    pub args: Vec<String>,
}

impl CheckquoteCommand {
    /// The one argument list for the files [`export_evidence`] writes into `dir`: the AK as PEM, the signed
    /// TPMS_ATTEST, its signature, the SHA-256 bank, the PCRs in `tpm2_quote -o` form and the qualifying data
    /// `qualification` (hex) the quote must carry.
    pub fn for_exported(dir: &Path, qualification: &str) -> Self {
        let args = [
            "-u",
            "ak.pem",
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-g",
            "sha256",
            "-f",
            "pcrs.bin",
            "-q",
            qualification,
        ]
        .map(String::from)
        .to_vec();
        Self {
            dir: dir.to_path_buf(),
            args,
        }
    }

    /// The command as one shell line, to run inside `dir`.
    pub fn command_line(&self) -> String {
        format!("tpm2_checkquote {}", self.args.join(" "))
    }

    /// The process to start: tpm2_checkquote with these arguments in `dir` (for callers that bound its run time
    /// or collect its output themselves).
    pub fn command(&self) -> Command {
        let mut command = Command::new("tpm2_checkquote");
        command.current_dir(&self.dir).args(&self.args);
        command
    }

    /// Runs tpm2_checkquote in `dir`.
    pub fn run(&self) -> std::io::Result<Output> {
        self.command().output()
    }
}

/// TPM2_NUM_PCR_BANKS in the TSS headers: the length of TPML_PCR_SELECTION's array.
const TSS_PCR_BANKS: usize = 16;
/// sizeof(TPMU_HA): the buffer of a TPM2B_DIGEST.
const TSS_DIGEST_BUFFER: usize = 64;
/// Digests per TPML_DIGEST.
const TSS_DIGESTS_PER_LIST: usize = 8;

/// The PCR file `tpm2_quote -o` writes and `tpm2_checkquote -f` reads without `-l` (tpm2-tools 5.4): the TSS
/// C structures as x86-64 lays them out, little-endian.
///
/// ```text
/// TPML_PCR_SELECTION  count u32 | 16 x TPMS_PCR_SELECTION (hash u16, sizeofSelect u8, pcrSelect [4], pad 1)
/// lists u32           number of TPML_DIGEST that follow
/// TPML_DIGEST         count u32 | 8 x TPM2B_DIGEST (size u16, buffer [64])
/// ```
pub fn tpm2_tools_pcrs(selection: PcrSelection, values: &[[u8; 32]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&1u32.to_le_bytes());
    for bank in 0..TSS_PCR_BANKS {
        let mut entry = [0u8; 8];
        if bank == 0 {
            entry[..2].copy_from_slice(&tpm::public::TPM_ALG_SHA256.to_le_bytes());
            entry[2] = 3;
            entry[3..7].copy_from_slice(&selection.mask().to_le_bytes());
        }
        out.extend_from_slice(&entry);
    }
    let lists = values.chunks(TSS_DIGESTS_PER_LIST);
    out.extend_from_slice(&(lists.len() as u32).to_le_bytes());
    for list in lists {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for slot in 0..TSS_DIGESTS_PER_LIST {
            let mut digest = [0u8; 2 + TSS_DIGEST_BUFFER];
            if let Some(value) = list.get(slot) {
                digest[..2].copy_from_slice(&32u16.to_le_bytes());
                digest[2..34].copy_from_slice(value);
            }
            out.extend_from_slice(&digest);
        }
    }
    out
}

/// The AK public key as PEM, when the AK is a P-256 key.
fn ak_pem(ak_public: &[u8]) -> Option<String> {
    let info = PublicArea::from_bytes(ak_public).ok()?.info().ok()?;
    let PublicKey::Ecc { x, y, .. } = info.key else {
        return None;
    };
    let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    let key = p256::PublicKey::from_sec1_bytes(point.as_bytes()).ok()?;
    key.to_public_key_pem(LineEnding::LF).ok()
}

/// Writes `evidence` (as received for `nonce` on the TLS session `binding`, quoting `requested_mask`) into
/// `dir`; returns the checkquote command. The PCR selection in `pcrs.bin` is the quote's own when the quote parses, else the requested one. Works on
/// evidence that fails verification too (that is when one wants to look at it); only `ak.pem` is left out when
/// the AK is not a P-256 key.
pub fn export_evidence(
    dir: &Path,
    evidence: &Evidence,
    nonce: &[u8; 32],
    binding: &ChannelBinding,
    requested_mask: u32,
) -> Result<CheckquoteCommand> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    let qualification = hex(&net::proto::qualifying_data(nonce, binding));
    let selection = QuoteInfo::parse(&evidence.attest)
        .map(|quote| quote.selection)
        .ok()
        .or_else(|| PcrSelection::from_mask(requested_mask))
        .unwrap_or_default();
    write("quote.msg", &evidence.attest)?;
    write("quote.sig", &evidence.signature)?;
    write("ak.pub", &evidence.ak_public)?;
    write("ek.pub", &evidence.ek_public)?;
    write("ek.der", &evidence.ek_certificate)?;
    write("eventlog.bin", &evidence.firmware_log)?;
    write("cloister-eventlog.bin", &evidence.event_log)?;
    write("pcrs.values", &evidence.pcr_values.concat())?;
    write(
        "pcrs.bin",
        &tpm2_tools_pcrs(selection, &evidence.pcr_values),
    )?;
    write("qualification.hex", format!("{qualification}\n").as_bytes())?;
    write(
        "binding.txt",
        format!(
            "qualification = SHA-256({:?} || nonce || spki_sha256 || exporter)\nnonce {}\nspki_sha256 {}\n\
             exporter {}\n",
            String::from_utf8_lossy(net::proto::QUALIFYING_DATA_LABEL),
            hex(nonce),
            hex(&binding.spki_sha256),
            hex(&binding.exporter)
        )
        .as_bytes(),
    )?;
    let _ = std::fs::remove_file(dir.join("ak.pem"));
    if let Some(pem) = ak_pem(&evidence.ak_public) {
        write("ak.pem", pem.as_bytes())?;
    }
    let command = CheckquoteCommand::for_exported(dir, &qualification);
    write(
        "checkquote.txt",
        format!("{}\n", command.command_line()).as_bytes(),
    )?;
    Ok(command)
}
