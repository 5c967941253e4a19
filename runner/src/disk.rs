//! The UEFI disk image: a GPT disk whose one partition, the EFI system partition, holds the boot
//! application as `EFI/BOOT/BOOTX64.EFI`, the removable-media path firmware boots without any boot
//! variable (UEFI 2.10 §3.5.1.1, "Removable Media Boot Behavior"; §13.3, "File System Format").
//!
//! The standard tools build it: `mkfs.vfat` (dosfstools) makes the FAT file system in a file,
//! `mmd`/`mcopy` (mtools) fill it, `sgdisk` (gdisk) writes the GPT. Every value those tools would
//! take from the clock or from randomness is fixed (`--invariant`, `SOURCE_DATE_EPOCH`, the disk
//! and partition GUIDs below), so the same boot application always gives the same disk bytes
//! (docs/ARCHITECTURE.md, "UEFI boot").

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::tools::Tool;

pub const MKFS_VFAT: Tool = Tool {
    program: "mkfs.vfat",
    debian_package: "dosfstools",
};
pub const MMD: Tool = Tool {
    program: "mmd",
    debian_package: "mtools",
};
pub const MCOPY: Tool = Tool {
    program: "mcopy",
    debian_package: "mtools",
};
pub const SGDISK: Tool = Tool {
    program: "sgdisk",
    debian_package: "gdisk",
};
/// What `build --boot uefi` needs.
pub const DISK_TOOLS: [Tool; 4] = [MKFS_VFAT, MMD, MCOPY, SGDISK];

/// The partition starts at 1 MiB (LBA 2048), the usual alignment.
const PARTITION_START: u64 = 1 << 20;
/// Room after the partition for the backup GPT (33 sectors), rounded to 1 MiB.
const BACKUP_GPT_ROOM: u64 = 1 << 20;
const SECTOR: u64 = 512;
/// Fixed GUIDs, so the GPT is reproducible: any values work, these name the project.
const DISK_GUID: &str = "C1015735-0000-4000-8000-000000000001";
const PARTITION_GUID: &str = "C1015735-0000-4000-8000-000000000002";
/// The FAT file system's time stamps (2020-01-01T00:00:00Z).
const FAT_TIMESTAMP: &str = "1577836800";
/// The boot application's path inside the EFI system partition.
pub const BOOT_PATH: &str = "::/EFI/BOOT/BOOTX64.EFI";

/// The EFI system partition's size for a boot application of `application` bytes: the file plus
/// 1/32 and 2 MiB for FAT tables and directories, at least 34 MiB (mkfs.vfat's FAT32 minimum, so
/// the file system type does not change with the model), in whole MiB.
pub fn partition_size(application: u64) -> u64 {
    let wanted = application + application / 32 + (2 << 20);
    wanted.max(34 << 20).div_ceil(1 << 20) << 20
}

/// Runs a tool to completion; its stderr becomes the error when it fails.
pub(crate) fn run(command: &mut Command, what: &str) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Writes a GPT disk image at `disk` whose EFI system partition holds `application`.
pub fn write_disk_image(application: &Path, disk: &Path) -> Result<()> {
    crate::tools::require(&DISK_TOOLS)?;
    let application_len = std::fs::metadata(application)
        .with_context(|| format!("cannot read {}", application.display()))?
        .len();
    let partition_len = partition_size(application_len);
    let scratch = tempfile::tempdir()?;
    let fat = scratch.path().join("esp.img");
    run(
        Command::new(MKFS_VFAT.program)
            .args(["-C", "--invariant", "-F", "32", "-n", "CLOISTER"])
            .arg(&fat)
            .arg((partition_len / 1024).to_string()),
        "mkfs.vfat",
    )?;
    run(
        Command::new(MMD.program)
            .env("SOURCE_DATE_EPOCH", FAT_TIMESTAMP)
            .arg("-i")
            .arg(&fat)
            .args(["::/EFI", "::/EFI/BOOT"]),
        "mmd",
    )?;
    run(
        Command::new(MCOPY.program)
            .env("SOURCE_DATE_EPOCH", FAT_TIMESTAMP)
            .arg("-i")
            .arg(&fat)
            .arg(application)
            .arg(BOOT_PATH),
        "mcopy",
    )?;

    let disk_len = PARTITION_START + partition_len + BACKUP_GPT_ROOM;
    let temporary = disk.with_extension("img.tmp");
    {
        let file = std::fs::File::create(&temporary)
            .with_context(|| format!("cannot create {}", temporary.display()))?;
        file.set_len(disk_len)?;
    }
    let first = PARTITION_START / SECTOR;
    let last = first + partition_len / SECTOR - 1;
    run(
        Command::new(SGDISK.program)
            .arg(format!("--disk-guid={DISK_GUID}"))
            .arg(format!("--new=1:{first}:{last}"))
            .arg("--typecode=1:EF00")
            .arg(format!("--partition-guid=1:{PARTITION_GUID}"))
            .arg("--change-name=1:EFI system partition")
            .arg(&temporary),
        "sgdisk",
    )?;
    let mut file = std::fs::OpenOptions::new().write(true).open(&temporary)?;
    file.seek(SeekFrom::Start(PARTITION_START))?;
    std::io::copy(&mut std::fs::File::open(&fat)?, &mut file)?;
    file.flush()?;
    drop(file);
    std::fs::rename(&temporary, disk)
        .with_context(|| format!("cannot write {}", disk.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_size_covers_the_file_in_whole_mebibytes() {
        assert_eq!(partition_size(100_000), 34 << 20);
        let big = 300 << 20;
        let size = partition_size(big);
        assert!(size >= big + big / 32 + (2 << 20) && size.is_multiple_of(1 << 20));
    }

    #[test]
    fn disk_holds_the_application_on_an_efi_system_partition() {
        if crate::tools::require(&DISK_TOOLS).is_err() {
            panic!("install dosfstools, mtools and gdisk for this test");
        }
        let dir = tempfile::tempdir().unwrap();
        let application = dir.path().join("app.efi");
        std::fs::write(&application, b"MZ not really a PE file").unwrap();
        let disk = dir.path().join("disk.img");
        write_disk_image(&application, &disk).unwrap();
        let first = std::fs::read(&disk).unwrap();
        // Protective MBR, then "EFI PART" at LBA 1.
        assert_eq!(&first[510..512], &[0x55, 0xaa]);
        assert_eq!(&first[512..520], b"EFI PART");
        let listing = Command::new("sgdisk")
            .arg("--print")
            .arg(&disk)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(listing.contains("EF00"), "{listing}");
        // The same input gives the same bytes.
        let again = dir.path().join("again.img");
        write_disk_image(&application, &again).unwrap();
        assert!(
            first == std::fs::read(&again).unwrap(),
            "disk images differ"
        );
        // The file can be read back from the partition.
        let fat = dir.path().join("esp.img");
        std::fs::write(
            &fat,
            &first[PARTITION_START as usize..first.len() - BACKUP_GPT_ROOM as usize],
        )
        .unwrap();
        let copied = dir.path().join("copied.efi");
        let status = Command::new("mcopy")
            .arg("-i")
            .arg(&fat)
            .arg(BOOT_PATH)
            .arg(&copied)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read(copied).unwrap(), b"MZ not really a PE file");
    }
}
