//! Host tools the runner starts, and what to install when one is missing.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// A program the runner needs, and the Debian package that provides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tool {
    /// The executable name looked up on `PATH`.
    pub program: &'static str,
    /// The Debian package to install when it is missing.
    pub debian_package: &'static str,
}

pub const QEMU: Tool = Tool {
    program: "qemu-system-x86_64",
    debian_package: "qemu-system-x86",
};
pub const SWTPM: Tool = Tool {
    program: "swtpm",
    debian_package: "swtpm",
};
pub const SWTPM_SETUP: Tool = Tool {
    program: "swtpm_setup",
    debian_package: "swtpm-tools",
};
pub const SWTPM_LOCALCA: Tool = Tool {
    program: "swtpm_localca",
    debian_package: "swtpm-tools",
};

/// Everything `up` needs before it can boot the appliance.
pub const BOOT_TOOLS: [Tool; 4] = [QEMU, SWTPM, SWTPM_SETUP, SWTPM_LOCALCA];

/// The first executable file named `program` in the directories of `path` (a `PATH`-style list).
pub fn find_in(program: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The full path of `program` on this process's `PATH`.
pub fn find(program: &str) -> Option<PathBuf> {
    find_in(program, &std::env::var_os("PATH").unwrap_or_default())
}

/// Checks that every tool is on `PATH`; the error names each missing one and its package.
pub fn require(tools: &[Tool]) -> Result<()> {
    let missing: Vec<&Tool> = tools
        .iter()
        .filter(|tool| find(tool.program).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|tool| tool.debian_package).collect();
    packages.sort_unstable();
    packages.dedup();
    let names: Vec<String> = missing
        .iter()
        .map(|tool| {
            format!(
                "`{}` (Debian package {})",
                tool.program, tool.debian_package
            )
        })
        .collect();
    bail!(
        "missing on PATH: {}. Install with: apt-get install {}",
        names.join(", "),
        packages.join(" ")
    )
}

/// The path of `swtpm_localca`, which the private swtpm_setup.conf names explicitly.
pub fn swtpm_localca() -> Result<PathBuf> {
    require(&[SWTPM_LOCALCA])?;
    Ok(find(SWTPM_LOCALCA.program).unwrap_or_else(|| Path::new("/usr/bin/swtpm_localca").into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_executables_only() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(find_in("tool", &path), Some(exe));
        assert_eq!(find_in("plain", &path), None);
        assert_eq!(find_in("absent", &path), None);
    }

    #[test]
    fn missing_tool_names_its_package() {
        let tool = Tool {
            program: "cloister-no-such-tool",
            debian_package: "no-such-package",
        };
        let error = require(&[tool]).unwrap_err().to_string();
        assert!(error.contains("cloister-no-such-tool"), "{error}");
        assert!(error.contains("apt-get install no-such-package"), "{error}");
    }
}
