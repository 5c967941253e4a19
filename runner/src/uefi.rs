//! The UEFI boot path of `cloister build`/`up`: the EFI entry stub's own cargo invocation, the boot
//! application (stub + kernel ELF + command line + model in one PE32+ file, measured whole by the
//! firmware into PCR 4), its Authenticode digest, the GPT disk image, and OVMF's files for QEMU
//! (docs/ARCHITECTURE.md, "UEFI boot").
//!
//! The stub is a static position-independent executable (firmware loads it anywhere), so it is
//! built with `-Crelocation-model=pie` in a cargo invocation and target directory of its own; the
//! kernel stays the fixed-address ELF the direct path boots, byte for byte.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::image::{cargo_home, KERNEL_TARGET};
use crate::pe::{self, Payload, PayloadSource};
use crate::{disk, workspace};

/// Names of the UEFI files in an image directory.
pub const APPLICATION_FILE: &str = "BOOTX64.EFI";
pub const DISK_FILE: &str = "disk.img";

/// OVMF from the Debian package `ovmf`: firmware code (read-only) and the variable store template.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

pub use client::manifest::BootMode;

/// The UEFI files of an image directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UefiImage {
    /// `<dir>/BOOTX64.EFI`: the boot application.
    pub application: PathBuf,
    /// `<dir>/disk.img`: the GPT disk holding it.
    pub disk: PathBuf,
    /// The application's Authenticode SHA-256: what the firmware extends into PCR 4.
    pub authenticode: [u8; 32],
}

/// The stub's target directory.
pub fn stub_target_dir(workspace: &Path) -> PathBuf {
    workspace.join("target").join("uefi-stub")
}

/// The rustc flags of the stub build: the kernel's reproducibility flags, position independent.
pub fn stub_rustflags(workspace: &Path, cargo_home: &Path) -> Vec<String> {
    vec![
        "-Clinker=rust-lld".into(),
        "-Clinker-flavor=ld.lld".into(),
        "-Crelocation-model=pie".into(),
        // UEFI firmware may take interrupts on the application's stack (UEFI 2.10 §2.3.4.2).
        "-Cno-redzone=yes".into(),
        "-Ctarget-cpu=x86-64".into(),
        format!("--remap-path-prefix={}=/cloister", workspace.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
    ]
}

/// The `cargo build` command for the stub, run from `workspace`.
pub fn stub_build_command(workspace: &Path, cargo_home: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args([
            "build",
            "-p",
            "uefi-stub",
            "--release",
            "--target",
            KERNEL_TARGET,
            "--target-dir",
        ])
        .arg(stub_target_dir(workspace));
    crate::image::set_freestanding_env(&mut command, &stub_rustflags(workspace, cargo_home));
    command
}

/// Builds the stub and returns its ELF's path.
pub fn build_stub() -> Result<PathBuf> {
    let workspace = workspace::root();
    let command = stub_build_command(&workspace, &cargo_home());
    let status = crate::progress::run_build(command, "building the EFI entry stub...")
        .context("cannot build the EFI stub")?;
    if !status.success() {
        bail!("building the EFI stub failed ({status}); cargo's errors are above");
    }
    let elf = stub_target_dir(&workspace)
        .join(KERNEL_TARGET)
        .join("release")
        .join("uefi-stub");
    if !elf.is_file() {
        bail!(
            "cargo reported success but {} does not exist",
            elf.display()
        );
    }
    Ok(elf)
}

/// Writes the boot application and the disk image into `dir` from the stub, the kernel ELF, the
/// model and the command line.
pub fn write_image(
    stub: &Path,
    kernel: &Path,
    model: &Path,
    cmdline: &str,
    dir: &Path,
) -> Result<UefiImage> {
    let stub_elf =
        std::fs::read(stub).with_context(|| format!("cannot read {}", stub.display()))?;
    let kernel_elf =
        std::fs::read(kernel).with_context(|| format!("cannot read {}", kernel.display()))?;
    let application = dir.join(APPLICATION_FILE);
    let temporary = dir.join(format!(".{APPLICATION_FILE}.{}.tmp", std::process::id()));
    {
        let file = std::fs::File::create(&temporary)
            .with_context(|| format!("cannot create {}", temporary.display()))?;
        let mut out = std::io::BufWriter::new(file);
        // The order the stub does not care about, fixed so the bytes are.
        pe::write_efi_application(
            &stub_elf,
            &[
                Payload {
                    name: ".kernel",
                    source: PayloadSource::Bytes(&kernel_elf),
                },
                Payload {
                    name: ".cmdline",
                    source: PayloadSource::Bytes(cmdline.as_bytes()),
                },
                Payload {
                    name: ".model",
                    source: PayloadSource::File(model),
                },
            ],
            &mut out,
        )?;
        std::io::Write::flush(&mut out)?;
    }
    std::fs::rename(&temporary, &application)
        .with_context(|| format!("cannot write {}", application.display()))?;
    let authenticode = pe::authenticode_sha256(&application)?;
    let disk = dir.join(DISK_FILE);
    disk::write_disk_image(&application, &disk)?;
    Ok(UefiImage {
        application,
        disk,
        authenticode,
    })
}

/// The firmware files QEMU needs for one run: OVMF's code, and a private copy of its variable
/// store in `state` (the firmware writes to it).
pub fn firmware_for_run(state: &Path) -> Result<(PathBuf, PathBuf)> {
    let code = PathBuf::from(OVMF_CODE);
    if !code.is_file() || !Path::new(OVMF_VARS).is_file() {
        bail!("{OVMF_CODE} or {OVMF_VARS} is missing. Install with: apt-get install ovmf");
    }
    let vars = state.join("OVMF_VARS.fd");
    std::fs::copy(OVMF_VARS, &vars).with_context(|| format!("cannot copy {OVMF_VARS}"))?;
    Ok((code, vars))
}
