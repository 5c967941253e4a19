//! The image manifest (`manifest.json`, written by `cloister build`): the digests a verifier expects the appliance
//! to have measured, and the PCR values they replay to.
//!
//! Contract (docs/ARCHITECTURE.md §4): at boot the kernel extends, in this order, PCR 12 with SHA-256 over its
//! loadable segments' file bytes (the ELF's PT_LOAD program headers that hold file bytes, in program-header order,
//! each segment's `[p_offset, p_offset + p_filesz)` concatenated: text, rodata, then the writable segment's initial
//! bytes, which the kernel copies before its first write to them), PCR 13 with SHA-256 of the model
//! blob and then with SHA-256 of the serving parameters' canonical text, and PCR 14 with SHA-256 of the effective
//! configuration's canonical text and then with SHA-256 of the kernel command line bytes (no NUL). Both canonical
//! texts come from `net::serving::ApplianceConfig`, the one definition the kernel uses too. Each PCR starts at 32 zero bytes and
//! an extend sets it to SHA-256(old ‖ digest) (TCG TPM 2.0 Library Part 1, "PCR Extend"). ELF layouts follow the
//! System V ABI gABI, "ELF Header" and "Program Header", for ELFCLASS64 / ELFDATA2LSB.
//!
//! The firmware PCRs (0-7) are whatever the platform's firmware made them: a manifest either records golden
//! values for one platform, or says that the verifier only checks that none of them is all zero.
//!
//! The JSON is deterministic: fixed field order, maps sorted by key, digests in lowercase hex, two-space
//! indentation and one trailing newline, so the same inputs always give the same bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use net::serving::ApplianceConfig;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use tpm::measurement::{BootDigests, BOOT_EVENT_COUNT, MAX_DATA_FILE_BYTES};

use crate::digest::{hex, sha256_file};

/// How the appliance boots, which decides what measured the kernel before it ran (docs/ARCHITECTURE.md §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// UEFI firmware boots a GPT disk whose EFI system partition holds the boot application; the firmware
    /// measures it into PCR 4 before it runs.
    Uefi,
    /// QEMU loads the kernel ELF and the model itself (`-kernel`/`-initrd`): fast, but nothing measures the
    /// kernel before it runs, so the host operator is trusted.
    #[default]
    Direct,
}

impl BootMode {
    /// The name written into the manifest and shown to people.
    pub fn name(self) -> &'static str {
        match self {
            BootMode::Uefi => "uefi",
            BootMode::Direct => "direct",
        }
    }
}

impl fmt::Display for BootMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BootMode {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        match text {
            "uefi" => Ok(BootMode::Uefi),
            "direct" => Ok(BootMode::Direct),
            other => Err(format!("unknown boot mode {other:?}: use uefi or direct")),
        }
    }
}

/// The manifest format this code writes and reads. Format 3 measures the writable segment's file bytes into PCR 12
/// and says whether the image has a debug console; format 2 manifests are refused (rebuild the image).
pub const MANIFEST_FORMAT: u32 = 3;
/// The manifest's file name in an image directory.
pub const MANIFEST_FILE: &str = "manifest.json";
// cloister's own PCRs, from the measurement contract.
pub use tpm::measurement::{CONFIGURATION_PCR as COMMAND_LINE_PCR, KERNEL_PCR, MODEL_PCR};
/// The firmware PCRs of a PC Client platform (TCG PC Client Platform Firmware Profile, "PCR Usage").
pub const FIRMWARE_PCRS: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
/// Largest kernel ELF read into memory.
pub const MAX_KERNEL_BYTES: u64 = 256 << 20;
/// Most program headers accepted in a kernel ELF.
pub const MAX_PROGRAM_HEADERS: u16 = 64;

/// A SHA-256 value, written in JSON as 64 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (index, pair) in bytes.chunks_exact(2).enumerate() {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            out[index] = (high * 16 + low) as u8;
        }
        Some(Self(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&hex(&self.0))
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("expected 64 hex digits (a SHA-256 value)"))
    }
}

/// One measured kernel segment, for a reader who wants to redo the hash by hand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasuredSegment {
    /// p_offset.
    pub offset: u64,
    /// p_filesz.
    pub file_size: u64,
    /// p_flags as `R`, `W`, `X` letters or `-` (`RW-` for the initial data, measured as loaded).
    pub flags: String,
}

/// What the kernel image contributes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelMeasurement {
    /// SHA-256 of the whole ELF file (identifies the build; not measured by the kernel itself).
    pub file_sha256: Sha256Digest,
    /// Length of the ELF file in bytes.
    pub file_length: u64,
    /// SHA-256 over the PT_LOAD segments' file bytes (text, rodata, initial data): the digest extended into PCR 12.
    pub measured_sha256: Sha256Digest,
    /// The segments that digest covers, in the order hashed.
    pub segments: Vec<MeasuredSegment>,
}

/// What the model contributes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMeasurement {
    /// SHA-256 of the model blob: the digest extended into PCR 13.
    pub sha256: Sha256Digest,
    /// Its length in bytes.
    pub length: u64,
}

/// What the kernel command line contributes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandLineMeasurement {
    /// The command line exactly as passed to the kernel.
    pub text: String,
    /// SHA-256 of its bytes: the digest extended into PCR 14.
    pub sha256: Sha256Digest,
}

/// A canonical text the kernel measures (serving parameters, configuration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextMeasurement {
    /// The text, exactly as hashed.
    pub text: String,
    /// SHA-256 of its bytes: the digest extended.
    pub sha256: Sha256Digest,
}

impl TextMeasurement {
    fn of(text: String) -> Self {
        let sha256 = Sha256Digest::of(text.as_bytes());
        Self { text, sha256 }
    }
}

/// PCRs 12-14 after the five extends, each starting from zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedPcrs {
    /// PCR 12.
    #[serde(rename = "12")]
    pub kernel: Sha256Digest,
    /// PCR 13.
    #[serde(rename = "13")]
    pub model: Sha256Digest,
    /// PCR 14.
    #[serde(rename = "14")]
    pub command_line: Sha256Digest,
}

/// What the verifier expects of the firmware PCRs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FirmwarePcrs {
    /// No golden values are known for the platform: PCRs 0-7 are quoted and each must not be all zero
    /// (an all-zero firmware PCR means no firmware measured anything, so nothing vouches for what ran first).
    NonZero,
    /// Golden values for one platform; each listed PCR must equal its value, and every other PCR 0-7 must not
    /// be all zero.
    Golden {
        /// Which platform these values were taken on (e.g. "qemu-7.2-seabios").
        platform: String,
        /// PCR index (0-11) to value.
        #[serde(deserialize_with = "pcr_map")]
        pcrs: BTreeMap<u8, Sha256Digest>,
    },
}

/// Reads a map whose keys are PCR indices written as JSON strings. (An internally tagged enum hands its
/// fields to serde as buffered content, where integer keys no longer parse from strings by themselves.)
fn pcr_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<u8, Sha256Digest>, D::Error> {
    BTreeMap::<String, Sha256Digest>::deserialize(deserializer)?
        .into_iter()
        .map(|(key, value)| {
            key.parse::<u8>()
                .map(|pcr| (pcr, value))
                .map_err(|_| serde::de::Error::custom(format!("{key:?} is not a PCR index")))
        })
        .collect()
}

/// The expected measurements of one image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// PCR 12.
    pub kernel: KernelMeasurement,
    /// PCR 13, first event.
    pub model: ModelMeasurement,
    /// PCR 13, second event: the serving parameters the command line sets.
    pub serving: TextMeasurement,
    /// PCR 14, first event: the effective configuration the command line sets.
    pub configuration: TextMeasurement,
    /// PCR 14, second event.
    pub command_line: CommandLineMeasurement,
    /// PCRs 12-14 replayed from zero.
    pub pcrs: ExpectedPcrs,
    /// The firmware PCRs.
    pub firmware: FirmwarePcrs,
    /// The root of trust: `uefi` (the firmware measured the boot application before it ran) or
    /// `direct` (nothing measured the kernel before it ran). Older manifests without it are direct.
    #[serde(default)]
    pub boot: BootMode,
    /// For `uefi`: the boot application the firmware must have measured into PCR 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_application: Option<BootApplication>,
    /// Whether the kernel was built with the debug console (`cloister build --debug-console`): it prints its boot
    /// and errors on COM1 for whoever holds the serial port. A verifier refuses such an image unless told
    /// `--allow-debug-image`, and its report names it. Required: a manifest that does not say is refused.
    pub console: bool,
}

/// The PE32+ boot application of a UEFI image (docs/ARCHITECTURE.md, "UEFI boot").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootApplication {
    /// Its Authenticode SHA-256: the digest of its EV_EFI_BOOT_SERVICES_APPLICATION event in PCR 4.
    pub authenticode_sha256: Sha256Digest,
    /// Its file length in bytes.
    pub length: u64,
}

/// One event the appliance must have logged, in order: the measurement contract's type.
pub type ExpectedEvent = tpm::measurement::Measurement;

impl Manifest {
    /// Measures an image the way the appliance will: reads the kernel ELF's program headers (untrusted input:
    /// every offset is bounds-checked), hashes its PT_LOAD segments' file bytes, the model file and the command
    /// line, and replays PCRs 12-14. Firmware PCRs are recorded as [`FirmwarePcrs::NonZero`]; the image is
    /// recorded as a release image (no console) until [`Manifest::with_console`] says otherwise.
    pub fn for_image(kernel_elf: &Path, model: &Path, cmdline: &str) -> Result<Self> {
        let length = std::fs::metadata(kernel_elf)
            .with_context(|| format!("cannot read {}", kernel_elf.display()))?
            .len();
        if length > MAX_KERNEL_BYTES {
            bail!(
                "{} is {length} bytes, more than the {MAX_KERNEL_BYTES} a kernel image may have",
                kernel_elf.display()
            );
        }
        let elf = std::fs::read(kernel_elf)
            .with_context(|| format!("cannot read {}", kernel_elf.display()))?;
        let segments = measured_segments(&elf)
            .with_context(|| format!("{} is not a usable kernel ELF", kernel_elf.display()))?;
        let mut hasher = Sha256::new();
        for segment in &segments {
            // measured_segments checked every range against the file.
            hasher.update(&elf[segment.range()]);
        }
        let kernel = KernelMeasurement {
            file_sha256: Sha256Digest::of(&elf),
            file_length: elf.len() as u64,
            measured_sha256: Sha256Digest(hasher.finalize().into()),
            segments: segments.iter().map(ElfSegment::describe).collect(),
        };
        let (model_length, model_sha256) = sha256_file(model)
            .with_context(|| format!("cannot hash the model {}", model.display()))?;
        Self::from_digests(
            kernel,
            ModelMeasurement {
                sha256: Sha256Digest(model_sha256),
                length: model_length,
            },
            cmdline,
        )
    }

    /// A manifest from already computed kernel and model measurements (serving parameters and configuration are
    /// derived from `cmdline` as the kernel derives them; PCRs replayed here). Fails when the kernel would refuse
    /// the command line.
    pub fn from_digests(
        kernel: KernelMeasurement,
        model: ModelMeasurement,
        cmdline: &str,
    ) -> Result<Self> {
        let config = ApplianceConfig::from_cmdline(cmdline).map_err(|error| {
            anyhow!("the kernel would refuse the command line {cmdline:?}: {error}")
        })?;
        let command_line = CommandLineMeasurement {
            text: cmdline.to_string(),
            sha256: Sha256Digest::of(cmdline.as_bytes()),
        };
        let mut manifest = Self {
            format: MANIFEST_FORMAT,
            kernel,
            model,
            serving: TextMeasurement::of(config.serving_text()),
            configuration: TextMeasurement::of(config.configuration_text()),
            command_line,
            pcrs: ExpectedPcrs {
                kernel: Sha256Digest([0; 32]),
                model: Sha256Digest([0; 32]),
                command_line: Sha256Digest([0; 32]),
            },
            firmware: FirmwarePcrs::NonZero,
            boot: BootMode::Direct,
            boot_application: None,
            console: false,
        };
        manifest.pcrs = manifest.replay();
        Ok(manifest)
    }

    /// The same manifest with golden firmware PCR values for `platform`.
    pub fn with_golden_firmware(
        mut self,
        platform: &str,
        pcrs: BTreeMap<u8, Sha256Digest>,
    ) -> Result<Self> {
        self.firmware = FirmwarePcrs::Golden {
            platform: platform.to_string(),
            pcrs,
        };
        self.validate()?;
        Ok(self)
    }

    /// The same manifest for a UEFI image whose boot application has this Authenticode digest.
    pub fn with_uefi_boot(mut self, authenticode_sha256: [u8; 32], length: u64) -> Self {
        self.boot = BootMode::Uefi;
        self.boot_application = Some(BootApplication {
            authenticode_sha256: Sha256Digest(authenticode_sha256),
            length,
        });
        self
    }

    /// The same manifest for a kernel built with (`true`) or without the debug console.
    pub fn with_console(mut self, console: bool) -> Self {
        self.console = console;
        self
    }

    /// The events the appliance logs, in order: kernel (PCR 12), model and serving parameters (PCR 13),
    /// configuration and command line (PCR 14).
    pub fn expected_events(&self) -> [ExpectedEvent; BOOT_EVENT_COUNT] {
        self.boot_digests().events()
    }

    /// The five digests the kernel measures, as this manifest predicts them.
    pub fn boot_digests(&self) -> BootDigests {
        BootDigests {
            kernel: self.kernel.measured_sha256.0,
            model: self.model.sha256.0,
            serving: self.serving.sha256.0,
            configuration: self.configuration.sha256.0,
            command_line: self.command_line.sha256.0,
        }
    }

    /// PCRs 12-14 replayed from zero through [`Manifest::expected_events`].
    fn replay(&self) -> ExpectedPcrs {
        let [kernel, model, command_line] = self.boot_digests().replay();
        ExpectedPcrs {
            kernel: Sha256Digest(kernel),
            model: Sha256Digest(model),
            command_line: Sha256Digest(command_line),
        }
    }

    /// The expected value of PCR 12, 13 or 14.
    pub fn expected_pcr(&self, pcr: u8) -> Option<[u8; 32]> {
        match pcr {
            KERNEL_PCR => Some(self.pcrs.kernel.0),
            MODEL_PCR => Some(self.pcrs.model.0),
            COMMAND_LINE_PCR => Some(self.pcrs.command_line.0),
            _ => None,
        }
    }

    /// Golden firmware values, if the manifest has them.
    pub fn golden_firmware(&self) -> Option<&BTreeMap<u8, Sha256Digest>> {
        match &self.firmware {
            FirmwarePcrs::NonZero => None,
            FirmwarePcrs::Golden { pcrs, .. } => Some(pcrs),
        }
    }

    /// The PCRs a verifier quotes: 0-7, any further golden firmware PCR, and 12-14 (bit n = PCR n).
    pub fn pcr_mask(&self) -> u32 {
        let mut mask = 0u32;
        for pcr in FIRMWARE_PCRS {
            mask |= 1 << pcr;
        }
        for &pcr in self.golden_firmware().into_iter().flat_map(BTreeMap::keys) {
            mask |= 1 << pcr;
        }
        mask | 1 << KERNEL_PCR | 1 << MODEL_PCR | 1 << COMMAND_LINE_PCR
    }

    /// Checks the manifest's internal consistency: format, command-line digest, replayed PCRs, firmware PCR
    /// indices (0-11: never one of cloister's own PCRs, never a resettable one).
    pub fn validate(&self) -> Result<()> {
        if self.format != MANIFEST_FORMAT {
            bail!(
                "manifest format {} is not supported (this runner reads format {MANIFEST_FORMAT}); rebuild the image",
                self.format
            );
        }
        if Sha256Digest::of(self.command_line.text.as_bytes()) != self.command_line.sha256 {
            bail!("the manifest's command-line digest does not match its command-line text");
        }
        for (name, item) in [
            ("serving-parameters", &self.serving),
            ("configuration", &self.configuration),
        ] {
            if Sha256Digest::of(item.text.as_bytes()) != item.sha256 {
                bail!("the manifest's {name} digest does not match its text");
            }
        }
        // The serving parameters and configuration must be what the kernel derives from this command line.
        let config = ApplianceConfig::from_cmdline(&self.command_line.text).map_err(|error| {
            anyhow!("the manifest's command line is one the kernel refuses: {error}")
        })?;
        if config.serving_text() != self.serving.text
            || config.configuration_text() != self.configuration.text
        {
            bail!("the manifest's serving parameters or configuration do not follow from its command line");
        }
        if self.replay() != self.pcrs {
            bail!("the manifest's PCR 12-14 values do not replay from its digests");
        }
        if let Some(pcrs) = self.golden_firmware() {
            if let Some(pcr) = pcrs.keys().find(|&&pcr| pcr > 11) {
                bail!("golden firmware PCR {pcr} is not a firmware PCR (0-11)");
            }
        }
        if (self.boot == BootMode::Uefi) != self.boot_application.is_some() {
            bail!("the manifest names a boot application exactly when it boots through UEFI");
        }
        Ok(())
    }

    /// The manifest as JSON bytes (deterministic; ends in a newline).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs with string keys into a Vec cannot fail.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Parses and validates manifest JSON; unknown fields are refused.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let manifest: Self = serde_json::from_slice(bytes).context("malformed manifest JSON")?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Writes the manifest to `path` through a temporary file and a rename.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let temporary = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        std::fs::write(temporary.path(), self.to_json())?;
        temporary
            .persist(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// Reads and validates a manifest file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&bytes)
            .with_context(|| format!("{} is not a usable manifest", path.display()))
    }
}

/// Why a kernel ELF was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than an ELF64 header.
    TooShort,
    /// No `\x7fELF` magic.
    NotElf,
    /// Not ELFCLASS64.
    Not64Bit,
    /// Not ELFDATA2LSB.
    NotLittleEndian,
    /// e_phentsize is not 56 (the ELF64 program header size).
    BadProgramHeaderSize(u16),
    /// More than [`MAX_PROGRAM_HEADERS`] program headers.
    TooManyProgramHeaders(u16),
    /// The program header table does not lie inside the file.
    ProgramHeadersOutsideFile,
    /// A PT_LOAD segment's file bytes do not lie inside the file.
    SegmentOutsideFile(u16),
    /// No PT_LOAD segment without PF_W holds any file bytes.
    NoReadOnlySegment,
    /// The writable PT_LOAD segments hold more file bytes (this many) than the kernel can copy and measure
    /// ([`tpm::measurement::MAX_DATA_FILE_BYTES`]).
    DataTooLarge(u64),
}

impl fmt::Display for ElfError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort => write!(formatter, "shorter than an ELF64 header"),
            Self::NotElf => write!(formatter, "no ELF magic"),
            Self::Not64Bit => write!(formatter, "not a 64-bit ELF"),
            Self::NotLittleEndian => write!(formatter, "not a little-endian ELF"),
            Self::BadProgramHeaderSize(size) => {
                write!(formatter, "program header entries of {size} bytes, not 56")
            }
            Self::TooManyProgramHeaders(count) => write!(
                formatter,
                "{count} program headers, more than {MAX_PROGRAM_HEADERS}"
            ),
            Self::ProgramHeadersOutsideFile => {
                write!(formatter, "the program header table lies outside the file")
            }
            Self::SegmentOutsideFile(index) => write!(
                formatter,
                "program header {index} names file bytes outside the file"
            ),
            Self::NoReadOnlySegment => write!(formatter, "no read-only loadable segment"),
            Self::DataTooLarge(bytes) => write!(
                formatter,
                "the writable segment holds {bytes} initial bytes, more than the {MAX_DATA_FILE_BYTES} the kernel \
                 measures"
            ),
        }
    }
}

impl std::error::Error for ElfError {}

/// A loadable segment of an ELF file that holds file bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElfSegment {
    /// p_offset.
    pub offset: u64,
    /// p_filesz.
    pub file_size: u64,
    /// p_flags.
    pub flags: u32,
}

/// PT_LOAD.
const PT_LOAD: u32 = 1;
/// PF_X, PF_W, PF_R.
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
/// sizeof(Elf64_Ehdr), sizeof(Elf64_Phdr).
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;

impl ElfSegment {
    /// The segment's file bytes as an index range (valid for the file it was read from).
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset as usize..(self.offset + self.file_size) as usize
    }

    fn describe(&self) -> MeasuredSegment {
        let letter = |bit: u32, letter: char| if self.flags & bit != 0 { letter } else { '-' };
        MeasuredSegment {
            offset: self.offset,
            file_size: self.file_size,
            flags: [letter(PF_R, 'R'), letter(PF_W, 'W'), letter(PF_X, 'X')]
                .iter()
                .collect(),
        }
    }
}

fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The PT_LOAD segments that hold file bytes, in program-header order: exactly what the kernel hashes into PCR 12
/// (text, rodata, then the initial data it copied before its first write). Every offset is checked against
/// `elf`'s length before use; at least one segment must be read-only, and the writable ones together may hold at
/// most [`MAX_DATA_FILE_BYTES`].
///
/// # Errors
///
/// [`ElfError`].
pub fn measured_segments(elf: &[u8]) -> Result<Vec<ElfSegment>, ElfError> {
    if elf.len() < EHDR_LEN {
        return Err(ElfError::TooShort);
    }
    if elf[..4] != *b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if elf[4] != 2 {
        return Err(ElfError::Not64Bit);
    }
    if elf[5] != 1 {
        return Err(ElfError::NotLittleEndian);
    }
    let too_short = ElfError::TooShort;
    let phoff = le_u64(elf, 0x20).ok_or(too_short)?;
    let phentsize = le_u16(elf, 0x36).ok_or(too_short)?;
    let phnum = le_u16(elf, 0x38).ok_or(too_short)?;
    if usize::from(phentsize) != PHDR_LEN {
        return Err(ElfError::BadProgramHeaderSize(phentsize));
    }
    if phnum > MAX_PROGRAM_HEADERS {
        return Err(ElfError::TooManyProgramHeaders(phnum));
    }
    let table_len = u64::from(phnum) * PHDR_LEN as u64;
    let table_end = phoff
        .checked_add(table_len)
        .filter(|&end| end <= elf.len() as u64)
        .ok_or(ElfError::ProgramHeadersOutsideFile)?;
    let table = &elf[phoff as usize..table_end as usize];
    let mut segments = Vec::new();
    for (index, header) in table.chunks_exact(PHDR_LEN).enumerate() {
        let outside = ElfError::SegmentOutsideFile(index as u16);
        let p_type = le_u32(header, 0).ok_or(outside)?;
        let p_flags = le_u32(header, 4).ok_or(outside)?;
        let p_offset = le_u64(header, 8).ok_or(outside)?;
        let p_filesz = le_u64(header, 32).ok_or(outside)?;
        if p_type != PT_LOAD || p_filesz == 0 {
            continue;
        }
        p_offset
            .checked_add(p_filesz)
            .filter(|&end| end <= elf.len() as u64)
            .ok_or(outside)?;
        segments.push(ElfSegment {
            offset: p_offset,
            file_size: p_filesz,
            flags: p_flags,
        });
    }
    if segments.iter().all(|segment| segment.flags & PF_W != 0) {
        return Err(ElfError::NoReadOnlySegment);
    }
    let data_bytes: u64 = segments
        .iter()
        .filter(|segment| segment.flags & PF_W != 0)
        .map(|segment| segment.file_size)
        .sum();
    if data_bytes > MAX_DATA_FILE_BYTES as u64 {
        return Err(ElfError::DataTooLarge(data_bytes));
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 with three PT_LOAD segments (RX, R, RW) and a PT_NOTE, laid out by hand from the gABI.
    fn fixture() -> (Vec<u8>, [u8; 32]) {
        let mut elf = vec![0u8; 0x1000];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&4u16.to_le_bytes());
        let headers: [(u32, u32, u64, u64); 4] = [
            (PT_LOAD, PF_R | PF_X, 0x400, 0x100),
            (PT_LOAD, PF_R, 0x600, 0x80),
            (PT_LOAD, PF_R | PF_W, 0x800, 0x40),
            (4, PF_R, 0x640, 0x10),
        ];
        for (index, (kind, flags, offset, size)) in headers.into_iter().enumerate() {
            let at = 64 + index * 56;
            elf[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            elf[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
            elf[at + 8..at + 16].copy_from_slice(&offset.to_le_bytes());
            elf[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
            elf[at + 40..at + 48].copy_from_slice(&size.to_le_bytes());
        }
        for (index, byte) in elf[0x400..].iter_mut().enumerate() {
            *byte = (index * 7 + 3) as u8;
        }
        let mut hasher = Sha256::new();
        hasher.update(&elf[0x400..0x500]);
        hasher.update(&elf[0x600..0x680]);
        hasher.update(&elf[0x800..0x840]);
        (elf, hasher.finalize().into())
    }

    #[test]
    fn loadable_segments_with_file_bytes_in_header_order() {
        let (elf, _) = fixture();
        let segments = measured_segments(&elf).unwrap();
        assert_eq!(
            segments,
            [
                ElfSegment {
                    offset: 0x400,
                    file_size: 0x100,
                    flags: PF_R | PF_X
                },
                ElfSegment {
                    offset: 0x600,
                    file_size: 0x80,
                    flags: PF_R
                },
                ElfSegment {
                    offset: 0x800,
                    file_size: 0x40,
                    flags: PF_R | PF_W
                },
            ]
        );
        assert_eq!(segments[0].describe().flags, "R-X");
        assert_eq!(segments[1].describe().flags, "R--");
        assert_eq!(segments[2].describe().flags, "RW-");
    }

    #[test]
    fn manifest_for_image_hashes_segments_model_and_cmdline() {
        let dir = tempfile::tempdir().unwrap();
        let (elf, measured) = fixture();
        let kernel = dir.path().join("kernel.elf");
        let model = dir.path().join("model.gguf");
        std::fs::write(&kernel, &elf).unwrap();
        std::fs::write(&model, b"GGUF model bytes").unwrap();
        let manifest = Manifest::for_image(&kernel, &model, "ip=dhcp port=7000").unwrap();
        assert_eq!(manifest.kernel.measured_sha256.0, measured);
        assert_eq!(manifest.kernel.file_sha256, Sha256Digest::of(&elf));
        assert_eq!(manifest.model.sha256, Sha256Digest::of(b"GGUF model bytes"));
        assert_eq!(manifest.model.length, 16);
        assert_eq!(
            manifest.command_line.sha256,
            Sha256Digest::of(b"ip=dhcp port=7000")
        );
        // The texts are net::serving's canonical ones for this command line.
        assert_eq!(
            manifest.serving.text,
            "cloister serving v2\ncontext=1024\nsessions=4\nprefill_chunk=32\ncpus=1\n"
        );
        assert!(manifest
            .configuration
            .text
            .starts_with("cloister configuration v1\nip=dhcp\nport=7000\n"));
        assert_eq!(
            manifest.serving.sha256,
            Sha256Digest::of(manifest.serving.text.as_bytes())
        );
        // PCR extend (TCG Part 1): new = SHA-256(old || digest), from 32 zero bytes; written out by hand here.
        let extend = |old: Sha256Digest, digest: &[u8; 32]| {
            let mut input = [0u8; 64];
            input[..32].copy_from_slice(&old.0);
            input[32..].copy_from_slice(digest);
            Sha256Digest::of(&input)
        };
        let zero = Sha256Digest([0; 32]);
        assert_eq!(manifest.pcrs.kernel, extend(zero, &measured));
        assert_eq!(
            manifest.pcrs.model,
            extend(
                extend(zero, &manifest.model.sha256.0),
                &manifest.serving.sha256.0
            )
        );
        assert_eq!(
            manifest.pcrs.command_line,
            extend(
                extend(zero, &manifest.configuration.sha256.0),
                &manifest.command_line.sha256.0
            )
        );
        assert_eq!(manifest.pcr_mask(), 0x70ff);
        assert_eq!(manifest.firmware, FirmwarePcrs::NonZero);

        // Deterministic bytes, and a round trip through the file.
        let again = Manifest::for_image(&kernel, &model, "ip=dhcp port=7000").unwrap();
        assert_eq!(again.to_json(), manifest.to_json());
        let path = dir.path().join(MANIFEST_FILE);
        manifest.write(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), manifest.to_json());
        assert_eq!(Manifest::read(&path).unwrap(), manifest);
        let text = String::from_utf8(manifest.to_json()).unwrap();
        assert!(text.ends_with("}\n"), "{text}");
        assert!(text.contains("\"policy\": \"non-zero\""), "{text}");
        assert!(text.contains(&format!("\"12\": \"{}\"", manifest.pcrs.kernel)));
    }

    #[test]
    fn the_root_of_trust_is_recorded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (elf, _) = fixture();
        let kernel = dir.path().join("kernel.elf");
        let model = dir.path().join("model.gguf");
        std::fs::write(&kernel, &elf).unwrap();
        std::fs::write(&model, b"GGUF model bytes").unwrap();
        let direct = Manifest::for_image(&kernel, &model, "ip=dhcp port=7000").unwrap();
        assert_eq!(direct.boot, BootMode::Direct);
        let text = String::from_utf8(direct.to_json()).unwrap();
        assert!(text.contains("\"boot\": \"direct\""), "{text}");
        assert!(!text.contains("boot_application"), "{text}");

        let uefi = direct.clone().with_uefi_boot([0xab; 32], 4096);
        uefi.validate().unwrap();
        let text = String::from_utf8(uefi.to_json()).unwrap();
        assert!(text.contains("\"boot\": \"uefi\""), "{text}");
        assert!(
            text.contains(&format!("\"authenticode_sha256\": \"{}\"", "ab".repeat(32))),
            "{text}"
        );
        assert_eq!(Manifest::from_json(text.as_bytes()).unwrap(), uefi);
        // A root of trust without its application, or the reverse, is refused.
        let lying = text.replace("\"boot\": \"uefi\"", "\"boot\": \"direct\"");
        assert!(Manifest::from_json(lying.as_bytes()).is_err());
        let mut missing = uefi.clone();
        missing.boot_application = None;
        assert!(missing.validate().is_err());
        // A manifest written before the field existed reads as direct.
        let old = String::from_utf8(direct.to_json())
            .unwrap()
            .replace(",\n  \"boot\": \"direct\"", "");
        assert_eq!(
            Manifest::from_json(old.as_bytes()).unwrap().boot,
            BootMode::Direct
        );
    }

    #[test]
    fn golden_firmware_values_round_trip_and_widen_the_mask() {
        let (elf, measured) = fixture();
        let _ = elf;
        let manifest = Manifest::from_digests(
            KernelMeasurement {
                file_sha256: Sha256Digest([1; 32]),
                file_length: 1,
                measured_sha256: Sha256Digest(measured),
                segments: Vec::new(),
            },
            ModelMeasurement {
                sha256: Sha256Digest([2; 32]),
                length: 2,
            },
            "x",
        )
        .unwrap();
        let golden: BTreeMap<u8, Sha256Digest> =
            [(0, Sha256Digest([9; 32])), (9, Sha256Digest([8; 32]))]
                .into_iter()
                .collect();
        let golden = manifest
            .clone()
            .with_golden_firmware("qemu-7.2-seabios", golden)
            .unwrap();
        assert_eq!(golden.pcr_mask(), 0x72ff);
        assert_eq!(Manifest::from_json(&golden.to_json()).unwrap(), golden);
        let bad: BTreeMap<u8, Sha256Digest> = [(13, Sha256Digest([9; 32]))].into_iter().collect();
        assert!(manifest.with_golden_firmware("p", bad).is_err());
    }

    #[test]
    fn inconsistent_or_unknown_manifests_are_refused() {
        let manifest = Manifest::from_digests(
            KernelMeasurement {
                file_sha256: Sha256Digest([1; 32]),
                file_length: 1,
                measured_sha256: Sha256Digest([3; 32]),
                segments: Vec::new(),
            },
            ModelMeasurement {
                sha256: Sha256Digest([2; 32]),
                length: 2,
            },
            "port=7000",
        )
        .unwrap();
        let text = String::from_utf8(manifest.to_json()).unwrap();
        assert!(Manifest::from_json(text.as_bytes()).is_ok());
        let changed_pcr = text.replace(&manifest.pcrs.model.to_string(), &"ab".repeat(32));
        assert!(Manifest::from_json(changed_pcr.as_bytes()).is_err());
        let changed_cmdline = text.replace("port=7000", "port=7001");
        assert!(Manifest::from_json(changed_cmdline.as_bytes()).is_err());
        // A serving text edited together with its digest still fails: it does not follow from the command line.
        let edited = manifest.serving.text.replace("sessions=4", "sessions=9");
        let changed_serving = text
            .replace(
                &manifest.serving.text.replace('\n', "\\n"),
                &edited.replace('\n', "\\n"),
            )
            .replace(
                &manifest.serving.sha256.to_string(),
                &Sha256Digest::of(edited.as_bytes()).to_string(),
            );
        assert_ne!(changed_serving, text);
        assert!(Manifest::from_json(changed_serving.as_bytes()).is_err());
        // A command line the kernel refuses gives no manifest.
        assert!(Manifest::from_digests(
            manifest.kernel.clone(),
            manifest.model.clone(),
            "sessions=0"
        )
        .is_err());
        let future = text.replace("\"format\": 3", "\"format\": 4");
        assert_ne!(future, text);
        assert!(Manifest::from_json(future.as_bytes()).is_err());
        let unknown = text.replacen('{', "{\n  \"extra\": 1,", 1);
        assert!(Manifest::from_json(unknown.as_bytes()).is_err());
        let short_digest = text.replace(&manifest.model.sha256.to_string(), "abcd");
        assert!(Manifest::from_json(short_digest.as_bytes()).is_err());
        assert!(Manifest::from_json(b"").is_err());
        assert!(Manifest::from_json(&text.as_bytes()[..text.len() / 2]).is_err());
    }

    #[test]
    fn hostile_elf_files_give_typed_errors() {
        let (good, _) = fixture();
        assert_eq!(measured_segments(&good[..10]), Err(ElfError::TooShort));
        let mut bad = good.clone();
        bad[0] = 0;
        assert_eq!(measured_segments(&bad), Err(ElfError::NotElf));
        let mut bad = good.clone();
        bad[4] = 1;
        assert_eq!(measured_segments(&bad), Err(ElfError::Not64Bit));
        let mut bad = good.clone();
        bad[5] = 2;
        assert_eq!(measured_segments(&bad), Err(ElfError::NotLittleEndian));
        let mut bad = good.clone();
        bad[0x36] = 55;
        assert_eq!(
            measured_segments(&bad),
            Err(ElfError::BadProgramHeaderSize(55))
        );
        let mut bad = good.clone();
        bad[0x38..0x3a].copy_from_slice(&65u16.to_le_bytes());
        assert_eq!(
            measured_segments(&bad),
            Err(ElfError::TooManyProgramHeaders(65))
        );
        let mut bad = good.clone();
        bad[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            measured_segments(&bad),
            Err(ElfError::ProgramHeadersOutsideFile)
        );
        // p_offset + p_filesz overflowing, and past the end of the file.
        let mut bad = good.clone();
        bad[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            measured_segments(&bad),
            Err(ElfError::SegmentOutsideFile(0))
        );
        let mut bad = good.clone();
        bad[64 + 56 + 32..64 + 56 + 40].copy_from_slice(&0x1000u64.to_le_bytes());
        assert_eq!(
            measured_segments(&bad),
            Err(ElfError::SegmentOutsideFile(1))
        );
        // Every segment writable: nothing to measure.
        let mut bad = good.clone();
        bad[64 + 4] |= PF_W as u8;
        bad[64 + 56 + 4] |= PF_W as u8;
        assert_eq!(measured_segments(&bad), Err(ElfError::NoReadOnlySegment));
        for cut in 0..200 {
            assert!(measured_segments(&good[..cut]).is_err(), "cut {cut}");
        }
        // Random corruption: an error or segments inside the file, never a panic.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = good.clone();
            let at = (state % 300) as usize;
            bytes[at] = (state >> 32) as u8;
            let cut = ((state >> 16) % bytes.len() as u64) as usize;
            if let Ok(segments) = measured_segments(&bytes[..cut]) {
                for segment in segments {
                    assert!(segment.range().end <= cut);
                }
            }
        }
    }

    #[test]
    fn writable_file_bytes_are_measured_up_to_the_kernels_copy() {
        let (good, measured) = fixture();
        // Changing a byte of the initial data changes the PCR 12 digest, as it changes what the kernel runs with.
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.gguf");
        std::fs::write(&model, b"GGUF").unwrap();
        let mut changed = good.clone();
        changed[0x820] ^= 1;
        let kernel = dir.path().join("kernel.elf");
        std::fs::write(&kernel, &changed).unwrap();
        let manifest = Manifest::for_image(&kernel, &model, "port=7000").unwrap();
        assert_ne!(manifest.kernel.measured_sha256.0, measured);
        // More initial data than the kernel's copy holds: no manifest, so no image that could not verify.
        let mut large = good.clone();
        large.resize(0x800 + MAX_DATA_FILE_BYTES + 1, 0);
        let size = (MAX_DATA_FILE_BYTES + 1) as u64;
        large[64 + 2 * 56 + 32..64 + 2 * 56 + 40].copy_from_slice(&size.to_le_bytes());
        assert_eq!(measured_segments(&large), Err(ElfError::DataTooLarge(size)));
        std::fs::write(&kernel, &large).unwrap();
        let error = Manifest::for_image(&kernel, &model, "port=7000").unwrap_err();
        assert!(format!("{error:#}").contains("initial bytes"), "{error:#}");
    }

    #[test]
    fn the_console_is_recorded_and_required() {
        let manifest = Manifest::from_digests(
            KernelMeasurement {
                file_sha256: Sha256Digest([1; 32]),
                file_length: 1,
                measured_sha256: Sha256Digest([3; 32]),
                segments: Vec::new(),
            },
            ModelMeasurement {
                sha256: Sha256Digest([2; 32]),
                length: 2,
            },
            "port=7000",
        )
        .unwrap();
        assert!(!manifest.console);
        let text = String::from_utf8(manifest.to_json()).unwrap();
        assert!(text.contains("\"console\": false"), "{text}");
        let debug = manifest.with_console(true);
        let text = String::from_utf8(debug.to_json()).unwrap();
        assert!(text.contains("\"console\": true"), "{text}");
        assert_eq!(Manifest::from_json(text.as_bytes()).unwrap(), debug);
        // A manifest that does not say whether the image has a console is refused, as is the older format.
        let silent = text.replace(",\n  \"console\": true", "");
        assert_ne!(silent, text);
        assert!(Manifest::from_json(silent.as_bytes()).is_err());
        let old = text.replace("\"format\": 3", "\"format\": 2");
        assert!(Manifest::from_json(old.as_bytes()).is_err());
    }

    #[test]
    fn a_missing_kernel_or_model_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.elf");
        let error = Manifest::for_image(&missing, &missing, "").unwrap_err();
        assert!(format!("{error:#}").contains("nope.elf"), "{error:#}");
        let (elf, _) = fixture();
        let kernel = dir.path().join("kernel.elf");
        std::fs::write(&kernel, &elf[..40]).unwrap();
        let error = Manifest::for_image(&kernel, &missing, "").unwrap_err();
        assert!(
            format!("{error:#}").contains("shorter than an ELF64 header"),
            "{error:#}"
        );
    }
}
