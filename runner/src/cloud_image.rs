//! Disk images in the forms clouds import (`cloister build --format`): the raw GPT disk as built, a qcow2 copy
//! (`qemu-img convert`), and Google Compute Engine's import format, a file named `disk.raw` inside a GNU tar
//! archive compressed with gzip (as `gcloud compute images create --source-uri` takes it; README, "Deploying").
//! Each output is reproducible: fixed tar metadata and no gzip name or time stamp.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::disk::run;
use crate::tools::{self, Tool};

/// `qemu-img`, for the qcow2 form.
pub const QEMU_IMG: Tool = Tool {
    program: "qemu-img",
    debian_package: "qemu-utils",
};
/// GNU tar and gzip, for the GCE form.
pub const TAR: Tool = Tool {
    program: "tar",
    debian_package: "tar",
};
/// gzip, which tar calls.
pub const GZIP: Tool = Tool {
    program: "gzip",
    debian_package: "gzip",
};

/// The name GCE requires for the disk inside its archive.
pub const GCE_DISK_NAME: &str = "disk.raw";
/// The GCE archive's file name.
pub const GCE_ARCHIVE: &str = "disk.tar.gz";
/// The qcow2 file's name.
pub const QCOW2_FILE: &str = "disk.qcow2";

/// The form of the disk image a build writes besides `disk.img`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DiskFormat {
    /// `disk.img` only: a raw GPT disk (QEMU, most clouds' raw import).
    #[default]
    Raw,
    /// Also `disk.qcow2` (OpenStack, libvirt).
    Qcow2,
    /// Also `disk.tar.gz` holding `disk.raw` (Google Compute Engine).
    Gce,
}

impl DiskFormat {
    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Gce => "gce",
        }
    }
}

/// Writes the `format` form of the raw disk `disk` into `dir`; returns its path (`disk` itself for raw).
///
/// # Errors
///
/// When a tool is missing or fails.
pub fn write(format: DiskFormat, disk: &Path, dir: &Path) -> Result<PathBuf> {
    match format {
        DiskFormat::Raw => Ok(disk.to_path_buf()),
        DiskFormat::Qcow2 => qcow2(disk, &dir.join(QCOW2_FILE)),
        DiskFormat::Gce => gce(disk, dir),
    }
}

fn qcow2(disk: &Path, out: &Path) -> Result<PathBuf> {
    tools::require(&[QEMU_IMG])?;
    let mut command = Command::new(QEMU_IMG.program);
    command
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(disk)
        .arg(out);
    run(&mut command, "qemu-img convert (raw to qcow2)")?;
    Ok(out.to_path_buf())
}

fn gce(disk: &Path, dir: &Path) -> Result<PathBuf> {
    tools::require(&[TAR, GZIP])?;
    // GCE wants the disk under exactly this name; a hard link or copy beside the archive gives tar that name.
    let staging = dir.join(".gce");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot clear {}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let raw = staging.join(GCE_DISK_NAME);
    std::fs::copy(disk, &raw).with_context(|| format!("cannot copy {}", disk.display()))?;
    let archive = dir.join(GCE_ARCHIVE);
    let mut command = Command::new(TAR.program);
    command
        .args([
            "--format=gnu",
            "--sparse",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "--use-compress-program=gzip -n -9",
            "-cf",
        ])
        .arg(&archive)
        .arg("-C")
        .arg(&staging)
        .arg(GCE_DISK_NAME);
    let result = run(
        &mut command,
        "tar (packing the disk for Google Compute Engine)",
    );
    let _ = std::fs::remove_dir_all(&staging);
    result?;
    if !archive.is_file() {
        bail!("tar wrote no {}", archive.display());
    }
    Ok(archive)
}
