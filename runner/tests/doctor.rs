//! `cloister doctor`, the documented exit codes a script can rely on, shell completions, and names the runner
//! makes itself (a tiny model on a fresh cache), as a person or a script runs them (issue 17). CI installs every
//! tool `up` needs, so `doctor` passes there.

use std::os::unix::fs::symlink;
use std::process::Command;

const CLOISTER: &str = env!("CARGO_BIN_EXE_cloister");

#[test]
fn doctor_passes_where_everything_is_installed() {
    let output = Command::new(CLOISTER).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "doctor failed on a machine with every tool:\n{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("ok      swtpm_setup"), "{text}");
    assert!(
        text.contains("Everything `cloister up` needs is here."),
        "{text}"
    );
    // The same checks as JSON, one object per check.
    let output = Command::new(CLOISTER)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let checks: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: Vec<&str> = checks
        .as_array()
        .unwrap()
        .iter()
        .map(|check| check["name"].as_str().unwrap())
        .collect();
    for expected in [
        "qemu-system-x86_64",
        "swtpm_setup",
        "OVMF code",
        "pip",
        "kvm",
        "huge pages",
        "cache space",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[test]
fn doctor_names_a_tool_that_path_hides_and_exits_non_zero() {
    // A PATH holding every tool on this machine's PATH except swtpm_setup.
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var_os("PATH").unwrap();
    for directory in std::env::split_paths(&path) {
        let Ok(entries) = std::fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name == "swtpm_setup" || dir.path().join(&name).exists() {
                continue;
            }
            let _ = symlink(entry.path(), dir.path().join(&name));
        }
    }
    let output = Command::new(CLOISTER)
        .arg("doctor")
        .env("PATH", dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("MISSING swtpm_setup"), "{text}");
    assert!(
        text.contains("install the Debian package swtpm-tools"),
        "{text}"
    );
    assert!(
        text.contains("cannot run yet: missing swtpm_setup"),
        "{text}"
    );
}

#[test]
fn usage_errors_exit_2_and_runtime_errors_exit_1() {
    let usage = Command::new(CLOISTER)
        .args(["verify", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
    // Nothing listens on port 1: the appliance is unreachable, which is not a verification failure.
    let unreachable = Command::new(CLOISTER)
        .args(["info", "--endpoint", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("Some("), "{stderr}");
}

#[test]
fn completions_come_from_the_command_line_definition() {
    let output = Command::new(CLOISTER)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let script = String::from_utf8_lossy(&output.stdout);
    assert!(script.contains("cloister"), "{script}");
    assert!(
        script.contains("doctor") && script.contains("verify"),
        "{script}"
    );
}

#[test]
fn build_makes_a_tiny_model_on_a_fresh_cache() {
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(CLOISTER)
        .args([
            "build",
            "--model",
            "tiny-llama",
            "--boot",
            "direct",
            "--out",
        ])
        .arg(out.path())
        .env("CLOISTER_CACHE", cache.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(cache.path().join("models/tiny-llama.gguf").is_file());
    assert!(out.path().join("manifest.json").is_file());
}
