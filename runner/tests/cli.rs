//! The `runner` binary as a person uses it: `up` prints the endpoint, `info` prints the model's
//! length and SHA-256 as JSON, and SIGTERM stops QEMU and swtpm without leaving a process behind.
//!
//! Needs qemu-system-x86, swtpm and swtpm-tools; a missing tool fails the test (it is not skipped).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use runner::{models, tools};

const RUNNER: &str = env!("CARGO_BIN_EXE_runner");

/// Child processes of `parent`, from /proc/<pid>/stat (field 4 is the parent's id, proc(5)).
fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name is in parentheses and may contain spaces; fields follow the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|field| field.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    children
}

#[test]
fn up_then_info_then_sigterm_leaves_nothing_running() {
    tools::require(&tools::BOOT_TOOLS).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let model = scratch.path().join("model.bin");
    std::fs::write(
        &model,
        (0..70_001u32)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let (length, digest) = models::sha256_file(&model).unwrap();

    let mut up = Command::new(RUNNER)
        .args([
            "up", "--port", "0", "--accel", "tcg", "--mem", "256", "--model",
        ])
        .arg(&model)
        .env("CLOISTER_CACHE", scratch.path().join("cache"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, receiver) = mpsc::channel();
    let stdout = up.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    // The kernel build may run first; give it and the TCG boot a generous deadline.
    let deadline = Instant::now() + Duration::from_secs(600);
    let endpoint = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = receiver
            .recv_timeout(left)
            .expect("`up` printed no endpoint in time");
        if let Some(rest) = line.strip_prefix("cloister is up at ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let children = children_of(up.id());
    assert_eq!(
        children.len(),
        2,
        "expected QEMU and swtpm under the runner: {children:?}"
    );

    let info = Command::new(RUNNER)
        .args(["info", "--endpoint", &endpoint])
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let expected = format!(
        "{{\"length\":{length},\"sha256\":\"{}\"}}\n",
        models::hex(&digest)
    );
    assert_eq!(String::from_utf8_lossy(&info.stdout), expected);

    let kill = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = up.wait().unwrap();
    assert!(
        status.success(),
        "`up` did not stop cleanly on SIGTERM: {status}"
    );
    for pid in children {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} outlived `up`"
        );
    }
}

#[test]
fn info_without_an_appliance_says_what_to_do() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    drop(listener);
    let output = Command::new(RUNNER)
        .args(["info", "--endpoint", &endpoint])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is `cargo run --release -- up` running?"),
        "{stderr}"
    );
    assert!(!stderr.contains("Stack backtrace"), "{stderr}");
    assert!(output.stdout.is_empty());
}
