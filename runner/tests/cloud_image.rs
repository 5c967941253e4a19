//! `cloister build --format qcow2|gce`: the cloud forms of the UEFI disk, read back with the tools a cloud
//! uses (qemu-img, GNU tar, gzip), and the GCE archive byte-identical across two builds.

use std::path::Path;
use std::process::Command;

const CLOISTER: &str = env!("CARGO_BIN_EXE_cloister");

fn build(out: &Path, cache: &Path, format: &str) {
    let output = Command::new(CLOISTER)
        .args([
            "build",
            "--model",
            "tiny-llama",
            "--format",
            format,
            "--out",
        ])
        .arg(out)
        .env("CLOISTER_CACHE", cache)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "build --format {format}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn gce_archive_holds_exactly_disk_raw_and_is_reproducible() {
    let cache = tempfile::tempdir().unwrap();
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    build(first.path(), cache.path(), "gce");
    build(second.path(), cache.path(), "gce");
    let archive = first.path().join("disk.tar.gz");
    assert_eq!(
        std::fs::read(&archive).unwrap(),
        std::fs::read(second.path().join("disk.tar.gz")).unwrap(),
        "two builds give different GCE archives"
    );
    // gzip header (RFC 1952 §2.3): no file name flag, modification time zero.
    let bytes = std::fs::read(&archive).unwrap();
    assert_eq!(&bytes[..3], &[0x1f, 0x8b, 8]);
    assert_eq!(bytes[3] & 0x08, 0, "gzip stores a file name");
    assert_eq!(&bytes[4..8], &[0, 0, 0, 0], "gzip stores a time stamp");
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(&archive)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listing.stdout), "disk.raw\n");
    let unpacked = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read(unpacked.path().join("disk.raw")).unwrap(),
        std::fs::read(first.path().join("disk.img")).unwrap()
    );
}

#[test]
fn qcow2_converts_back_to_the_raw_disk() {
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    build(out.path(), cache.path(), "qcow2");
    let qcow2 = out.path().join("disk.qcow2");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&qcow2)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    let raw = std::fs::read(out.path().join("disk.img")).unwrap();
    assert_eq!(info["virtual-size"].as_u64(), Some(raw.len() as u64));
    let back = out.path().join("back.raw");
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&qcow2)
        .arg(&back)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read(&back).unwrap(), raw);
}

#[test]
fn a_cloud_format_needs_a_uefi_image() {
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(CLOISTER)
        .args([
            "build",
            "--model",
            "tiny-llama",
            "--boot",
            "direct",
            "--format",
            "gce",
            "--out",
        ])
        .arg(out.path())
        .env("CLOISTER_CACHE", cache.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--format gce needs a UEFI image"),
        "{stderr}"
    );
}
