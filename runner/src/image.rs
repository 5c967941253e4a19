//! Building the appliance image: the kernel in its own cargo invocation, and the directory QEMU boots from.
//!
//! The kernel shares the host's target triple but must not share its cargo invocation: feature
//! unification would hand it the `std` features the runner's dependencies enable (docs/ARCHITECTURE.md §2). Its
//! flags therefore travel in `CARGO_ENCODED_RUSTFLAGS` of a separate `cargo build` with an explicit
//! `--target` (which keeps them off build scripts and proc macros) and a target directory of its own
//! (a nested cargo on the outer target directory would wait forever on the build lock). The flags
//! make the image reproducible: paths remapped, no build id, no host-dependent CPU features.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use client::manifest::{Manifest, MANIFEST_FILE};

use crate::uefi::{self, BootMode, UefiImage};
use crate::{models, progress, workspace};

/// The only Rust target installed here (docs/ARCHITECTURE.md §2); the kernel is freestanding despite the name.
pub const KERNEL_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The kernel command line unless told otherwise: DHCP, and the port the appliance listens on.
pub const DEFAULT_CMDLINE: &str = "ip=dhcp port=7000";

/// Names of the files in an image directory.
pub const KERNEL_FILE: &str = "kernel.elf";
pub const MODEL_FILE: &str = "model.gguf";
pub const CMDLINE_FILE: &str = "cmdline";

/// Which kernel to build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFlavor {
    /// Build with the `debug-console` feature (COM1 console and log output). Never for release.
    pub debug_console: bool,
    /// A fault built in on purpose, for a test to watch the appliance handle it. Only for tests; never for an
    /// image anyone serves from.
    pub sabotage: Sabotage,
}

/// A fault a test kernel carries on purpose (a kernel cargo feature each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sabotage {
    /// None: the kernel as released.
    #[default]
    None,
    /// `panic-test`: the kernel panics early in its boot, so a test sees a panic reset the machine.
    Panic,
    /// `ap-fail-test`: the first application processor started stops before it checks in, so a test sees the boot
    /// leave it out and serve on the rest.
    ApFails,
}

impl Sabotage {
    /// The kernel feature that builds it in.
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Sabotage::None => None,
            Sabotage::Panic => Some("panic-test"),
            Sabotage::ApFails => Some("ap-fail-test"),
        }
    }
}

impl KernelFlavor {
    /// The kernel's own target directory.
    pub fn target_dir(self, workspace: &Path) -> PathBuf {
        let mut name = String::from("kernel");
        for part in self.features() {
            // `debug-console` is `-debug` in the directory's name.
            name.push('-');
            name.push_str(part.strip_suffix("-console").unwrap_or(part));
        }
        workspace.join("target").join(name)
    }

    /// The kernel features this flavour is built with.
    pub fn features(self) -> Vec<&'static str> {
        self.debug_console
            .then_some("debug-console")
            .into_iter()
            .chain(self.sabotage.feature())
            .collect()
    }

    /// Where cargo leaves the kernel ELF.
    pub fn elf_path(self, workspace: &Path) -> PathBuf {
        self.target_dir(workspace)
            .join(KERNEL_TARGET)
            .join("release")
            .join("kernel")
    }
}

/// The rustc flags of the kernel build, in order.
pub fn kernel_rustflags(workspace: &Path, cargo_home: &Path) -> Vec<String> {
    vec![
        "-Clinker=rust-lld".into(),
        "-Clinker-flavor=ld.lld".into(),
        "-Crelocation-model=static".into(),
        "-Cno-redzone=yes".into(),
        "-Ctarget-cpu=x86-64".into(),
        "-Clink-arg=--build-id=none".into(),
        format!("--remap-path-prefix={}=/cloister", workspace.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
    ]
}

/// `$CARGO_HOME`, else `~/.cargo`.
pub fn cargo_home() -> PathBuf {
    match std::env::var_os("CARGO_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home),
        _ => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        }
    }
}

/// The `cargo build` command for the kernel, run from `workspace`.
pub fn kernel_build_command(workspace: &Path, cargo_home: &Path, flavor: KernelFlavor) -> Command {
    // Under `cargo run`/`cargo test`, $CARGO names the cargo that started us.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args([
            "build",
            "-p",
            "kernel",
            "--release",
            "--target",
            KERNEL_TARGET,
            "--target-dir",
        ])
        .arg(flavor.target_dir(workspace));
    let features = flavor.features();
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    set_freestanding_env(&mut command, &kernel_rustflags(workspace, cargo_home));
    // Whole-program LTO, not the workspace's thin LTO: the release panic handler never reads its argument, and only
    // across the whole program can LLVM see that no panic location, message or source path is ever read, and drop
    // them all from the image (docs/ARCHITECTURE.md §2; stable Rust has no `-Zlocation-detail=none`).
    command.env("CARGO_PROFILE_RELEASE_LTO", "fat");
    command
}

/// Gives a freestanding `cargo build` (the kernel's, the EFI stub's) exactly `rustflags`: the flags and target
/// directories a surrounding cargo or the user's environment set are removed, so they cannot reach it, and
/// nothing stamps the time.
pub fn set_freestanding_env(command: &mut Command, rustflags: &[String]) {
    for inherited in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
    ] {
        command.env_remove(inherited);
    }
    command
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        .env("SOURCE_DATE_EPOCH", "0");
}

/// Builds the kernel (cargo's output forwarded to stderr) and returns the ELF's path.
pub fn build_kernel(flavor: KernelFlavor) -> Result<PathBuf> {
    let workspace = workspace::root();
    let features = flavor.features();
    let label = if features.is_empty() {
        String::new()
    } else {
        format!(" ({})", features.join(", "))
    };
    let command = kernel_build_command(&workspace, &cargo_home(), flavor);
    let status = progress::run_build(command, &format!("building kernel image{label}..."))
        .context("cannot build the kernel")?;
    if !status.success() {
        bail!("building the kernel failed ({status}); cargo's errors are above");
    }
    let elf = flavor.elf_path(&workspace);
    if !elf.is_file() {
        bail!(
            "cargo reported success but {} does not exist",
            elf.display()
        );
    }
    Ok(elf)
}

/// What `cloister build` produces: the files QEMU needs, in one directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub dir: PathBuf,
    /// `<dir>/kernel.elf`.
    pub kernel: PathBuf,
    /// `<dir>/model.gguf` (a hard link to the model where possible, else a copy).
    pub model: PathBuf,
    /// The kernel command line, also written to `<dir>/cmdline`.
    pub cmdline: String,
    pub flavor: KernelFlavor,
    /// How the image boots; [`crate::uefi::BootMode::Direct`] unless [`build`] was asked for UEFI.
    pub boot: BootMode,
    /// The boot application and disk image, for a UEFI image.
    pub uefi: Option<UefiImage>,
}

/// `cmdline` with the serving key `cpus=N` (how many processors the kernel uses; QEMU's `-smp` follows it).
pub fn with_cpus(cmdline: &str, cpus: u32) -> String {
    format!("{cmdline} cpus={cpus}")
}

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// A model name or path, as `--model` takes it.
    pub model: String,
    /// The output directory.
    pub out: PathBuf,
    pub flavor: KernelFlavor,
    pub cmdline: String,
    pub boot: BootMode,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            model: models::DEFAULT_MODEL.into(),
            out: workspace::default_out_dir(),
            flavor: KernelFlavor::default(),
            cmdline: DEFAULT_CMDLINE.into(),
            // The firmware measures the image before it runs (docs/ARCHITECTURE.md, "UEFI boot").
            boot: BootMode::Uefi,
        }
    }
}

/// Builds the kernel, resolves the model and writes both with the command line into `options.out`,
/// with the image's `manifest.json`.
pub fn build(options: &BuildOptions) -> Result<Image> {
    let model = models::resolve(&options.model)?;
    let kernel = build_kernel(options.flavor)?;
    let mut image = assemble(
        &kernel,
        &model,
        &options.cmdline,
        &options.out,
        options.flavor,
    )?;
    if options.boot == BootMode::Uefi {
        let stub = uefi::build_stub()?;
        progress::line("writing the UEFI boot application and disk image...");
        image.uefi = Some(uefi::write_image(
            &stub,
            &image.kernel,
            &image.model,
            &image.cmdline,
            &image.dir,
        )?);
        image.boot = BootMode::Uefi;
    }
    // What a verifier expects this image to measure (PCRs 12-14), beside the image. Hashing the model again
    // takes a moment.
    let progress =
        progress::Progress::spinner("writing manifest.json (hashing the kernel and the model)...");
    write_manifest(&image)?;
    progress.finish();
    Ok(image)
}

/// Computes the manifest of an image directory and writes it as `<image.dir>/manifest.json` (what `cloister build`
/// does after assembling the image); returns its path.
pub fn write_manifest(image: &Image) -> Result<PathBuf> {
    let path = image.dir.join(MANIFEST_FILE);
    let mut manifest = Manifest::for_image(&image.kernel, &image.model, &image.cmdline)?
        .with_console(image.flavor.debug_console);
    if let Some(uefi) = &image.uefi {
        let length = std::fs::metadata(&uefi.application)
            .with_context(|| format!("cannot read {}", uefi.application.display()))?
            .len();
        manifest = manifest.with_uefi_boot(uefi.authenticode, length);
    }
    manifest.write(&path)?;
    Ok(path)
}

/// Writes an image directory from a built kernel and a model file.
///
/// Each file is written under a temporary name and renamed into place, so a run booting from the
/// same directory never sees a half-written file.
pub fn assemble(
    kernel: &Path,
    model: &Path,
    cmdline: &str,
    out: &Path,
    flavor: KernelFlavor,
) -> Result<Image> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let out = out.canonicalize()?;
    let image = Image {
        kernel: out.join(KERNEL_FILE),
        model: out.join(MODEL_FILE),
        cmdline: cmdline.to_string(),
        dir: out.clone(),
        flavor,
        boot: BootMode::Direct,
        uefi: None,
    };
    replace_with(&image.kernel, |temporary| {
        std::fs::copy(kernel, temporary)
            .map(|_| ())
            .with_context(|| format!("cannot copy {}", kernel.display()))
    })?;
    if !same_file(model, &image.model) {
        replace_with(&image.model, |temporary| {
            std::fs::hard_link(model, temporary)
                .or_else(|_| std::fs::copy(model, temporary).map(|_| ()))
                .with_context(|| format!("cannot link or copy {}", model.display()))
        })?;
    }
    replace_with(&out.join(CMDLINE_FILE), |temporary| {
        Ok(std::fs::write(temporary, cmdline)?)
    })?;
    Ok(image)
}

/// Creates `path` by letting `create` write a temporary sibling, then renaming it over `path`.
fn replace_with(path: &Path, create: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("file");
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let result = create(&temporary).and_then(|()| {
        std::fs::rename(&temporary, path)
            .with_context(|| format!("cannot write {}", path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_build_is_its_own_reproducible_invocation() {
        let flavor = KernelFlavor {
            debug_console: false,
            sabotage: Sabotage::None,
        };
        let command = kernel_build_command(Path::new("/ws"), Path::new("/home/me/.cargo"), flavor);
        let args: Vec<_> = command
            .get_args()
            .map(|arg| arg.to_str().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "build",
                "-p",
                "kernel",
                "--release",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target-dir",
                "/ws/target/kernel"
            ]
        );
        assert_eq!(command.get_current_dir(), Some(Path::new("/ws")));
        let env: std::collections::HashMap<_, _> = command.get_envs().collect();
        let flags = env[std::ffi::OsStr::new("CARGO_ENCODED_RUSTFLAGS")]
            .unwrap()
            .to_str()
            .unwrap();
        let flags: Vec<&str> = flags.split('\x1f').collect();
        assert!(flags.contains(&"-Clinker=rust-lld"));
        assert!(flags.contains(&"-Clink-arg=--build-id=none"));
        assert!(flags.contains(&"--remap-path-prefix=/ws=/cloister"));
        assert!(flags.contains(&"--remap-path-prefix=/home/me/.cargo=/cargo"));
        assert_eq!(
            env[std::ffi::OsStr::new("SOURCE_DATE_EPOCH")],
            Some(std::ffi::OsStr::new("0"))
        );
        assert_eq!(
            env[std::ffi::OsStr::new("CARGO_PROFILE_RELEASE_LTO")],
            Some(std::ffi::OsStr::new("fat"))
        );
        // Inherited flags and target directories are removed, not passed on.
        for removed in ["RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_TARGET_DIR"] {
            assert_eq!(env[std::ffi::OsStr::new(removed)], None, "{removed}");
        }
        assert_eq!(
            flavor.elf_path(Path::new("/ws")),
            Path::new("/ws/target/kernel/x86_64-unknown-linux-gnu/release/kernel")
        );
    }

    #[test]
    fn each_flavour_builds_into_its_own_target_dir() {
        // Every flavour gets a directory of its own, so a test kernel never overwrites a release kernel.
        for (debug_console, sabotage, dir, features) in [
            (true, Sabotage::None, "kernel-debug", "debug-console"),
            (false, Sabotage::Panic, "kernel-panic-test", "panic-test"),
            (
                true,
                Sabotage::ApFails,
                "kernel-debug-ap-fail-test",
                "debug-console,ap-fail-test",
            ),
        ] {
            let flavor = KernelFlavor {
                debug_console,
                sabotage,
            };
            let command = kernel_build_command(Path::new("/ws"), Path::new("/c"), flavor);
            let args: Vec<_> = command
                .get_args()
                .map(|arg| arg.to_str().unwrap())
                .collect();
            let dir = format!("/ws/target/{dir}");
            assert!(
                args.ends_with(&[dir.as_str(), "--features", features]),
                "{args:?}"
            );
        }
    }

    #[test]
    fn assemble_writes_the_image_directory() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("kernel");
        let model = dir.path().join("weights.gguf");
        std::fs::write(&kernel, b"\x7fELF").unwrap();
        std::fs::write(&model, b"GGUF").unwrap();
        let out = dir.path().join("out");
        let image = assemble(
            &kernel,
            &model,
            "ip=dhcp port=7000",
            &out,
            KernelFlavor::default(),
        )
        .unwrap();
        assert_eq!(std::fs::read(&image.kernel).unwrap(), b"\x7fELF");
        assert_eq!(std::fs::read(&image.model).unwrap(), b"GGUF");
        assert_eq!(
            std::fs::read_to_string(out.join("cmdline")).unwrap(),
            "ip=dhcp port=7000"
        );
        // Rebuilding over the same directory, even from its own model file, keeps the model intact.
        let again = assemble(
            &kernel,
            &image.model,
            "port=7000",
            &out,
            KernelFlavor::default(),
        )
        .unwrap();
        assert_eq!(std::fs::read(&again.model).unwrap(), b"GGUF");
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 3, "{leftovers:?}");
    }
}
