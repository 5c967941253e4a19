//! Two builds of the kernel from clean checkouts at different paths give byte-identical images and
//! manifests
//! (docs/ARCHITECTURE.md §2: remapped source paths, no build id, no timestamps, no host-dependent CPU target).
//! The manifest a verifier trusts names the kernel by its digest, so this must hold.

use std::path::{Path, PathBuf};
use std::process::Command;

use client::manifest::Manifest;
use runner::image::{cargo_home, kernel_build_command, KernelFlavor, Sabotage};

/// The workspace this test crate lives in.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A clean clone of the workspace's committed HEAD at `destination`.
fn clone_into(destination: &Path) {
    let status = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(workspace())
        .arg(destination)
        .status()
        .expect("git runs");
    assert!(status.success(), "git clone failed");
}

/// Builds the release kernel in `checkout`; returns its bytes and the manifest of an image made of
/// it, a fixed model file and a fixed command line.
fn build_release_kernel(checkout: &Path, model: &Path) -> (Vec<u8>, Vec<u8>) {
    let flavor = KernelFlavor {
        debug_console: false,
        sabotage: Sabotage::None,
    };
    let status = kernel_build_command(checkout, &cargo_home(), flavor)
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "kernel build in {} failed",
        checkout.display()
    );
    let elf = flavor.elf_path(checkout);
    let manifest = Manifest::for_image(&elf, model, "ip=dhcp port=7000").expect("manifest");
    (std::fs::read(&elf).expect("kernel ELF"), manifest.to_json())
}

/// True when the workspace has no uncommitted changes to tracked files (as in CI's fresh clone).
fn workspace_is_clean() -> bool {
    let output = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(workspace())
        .output()
        .expect("git runs");
    output.status.success() && output.stdout.is_empty()
}

#[test]
fn kernel_builds_are_byte_identical_across_checkouts() {
    let first_root = tempfile::tempdir().expect("temp dir");
    // A different path length, so an unremapped path would change offsets as well as bytes.
    let first = first_root
        .path()
        .join("a")
        .join("longer")
        .join("path")
        .join("cloister");
    std::fs::create_dir_all(first.parent().expect("parent")).expect("mkdir");
    clone_into(&first);
    let model = first_root.path().join("model.bin");
    std::fs::write(
        &model,
        b"not a real model, but the same bytes for both builds",
    )
    .expect("model");
    let (first_image, first_manifest) = build_release_kernel(&first, &model);

    // The second checkout is the workspace itself when it is clean (its kernel is usually built
    // already by the end-to-end tests), else another fresh clone.
    let second_root = tempfile::tempdir().expect("temp dir");
    let second = if workspace_is_clean() {
        workspace()
    } else {
        let clone = second_root.path().join("cloister");
        clone_into(&clone);
        clone
    };
    let (second_image, second_manifest) = build_release_kernel(&second, &model);
    assert!(first_image.len() > 64 * 1024, "suspiciously small kernel");
    if first_image != second_image {
        // Keep both for inspection (e.g. `cmp -l` and `readelf -S`), and say where they start to differ.
        let keep = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::write(keep.join("reproducible-first.elf"), &first_image).expect("keep image");
        std::fs::write(keep.join("reproducible-second.elf"), &second_image).expect("keep image");
        let first_difference = first_image
            .iter()
            .zip(&second_image)
            .position(|(a, b)| a != b);
        let differing = first_image
            .iter()
            .zip(&second_image)
            .filter(|(a, b)| a != b)
            .count();
        panic!(
            "kernel images differ between checkouts: {} and {} bytes, first difference at {first_difference:?}, \
             {differing} bytes differ; both kept in {}",
            first_image.len(),
            second_image.len(),
            keep.display()
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&first_manifest),
        String::from_utf8_lossy(&second_manifest),
        "manifests differ between checkouts"
    );
    for path in [&first, &second] {
        let text = path.to_string_lossy();
        let needle = text.as_bytes();
        assert!(
            !first_image
                .windows(needle.len())
                .any(|window| window == needle),
            "the image embeds the checkout path {text}"
        );
    }
}
