//! The `cloister` binary as a person uses it: `up` prints the endpoint, attests the appliance and prints the
//! `chat` command line; `info` prints the model's length and SHA-256 as JSON; that `chat` command verifies
//! and streams an answer; and SIGTERM stops QEMU and swtpm without leaving a process behind.
//!
//! Needs qemu-system-x86, swtpm and swtpm-tools; a missing tool fails the test (it is not skipped).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use runner::{models, tools};

const RUNNER: &str = env!("CARGO_BIN_EXE_cloister");

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
    // A model the kernel's engine loads: the generated tiny llama.
    let model = scratch.path().join("tiny-llama.gguf");
    std::fs::write(
        &model,
        model::tiny::generate(&model::tiny::TinySpec::llama(), 3),
    )
    .unwrap();
    let (length, digest) = models::sha256_file(&model).unwrap();

    let mut up = Command::new(RUNNER)
        .args([
            "up",
            "--port",
            "0",
            "--accel",
            "tcg",
            "--mem",
            "256",
            "--demo-max-tokens",
            "4",
            "--model",
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
    let mut printed = Vec::new();
    let endpoint = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = receiver
            .recv_timeout(left)
            .expect("`up` printed no endpoint in time");
        printed.push(line.clone());
        if let Some(rest) = line.strip_prefix("cloister is up at ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // `up` attests the appliance it booted, runs its demo prompt, then prints the chat command to use.
    let chat_line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = receiver
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("`up` printed no chat command in time: {printed:#?}"));
        printed.push(line.clone());
        if line.trim_start().starts_with("cloister chat ") {
            break line;
        }
    };
    let stdout_so_far = printed.join("\n");
    assert!(
        stdout_so_far.contains(&format!("VERIFIED {endpoint}")),
        "{stdout_so_far}"
    );
    assert!(
        stdout_so_far.contains("bound to this TLS session"),
        "{stdout_so_far}"
    );
    assert!(
        chat_line.contains(&format!("--endpoint {endpoint}")),
        "{chat_line}"
    );
    let manifest = chat_line
        .split_whitespace()
        .skip_while(|word| *word != "--manifest")
        .nth(1)
        .expect("the chat command names the manifest")
        .to_string();
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

    // The printed chat command works from another process: it verifies, then streams an answer.
    let chat = Command::new(RUNNER)
        .args([
            "chat",
            "--endpoint",
            &endpoint,
            "--manifest",
            &manifest,
            "--max-tokens",
            "3",
            "--raw",
            "hello",
        ])
        .env("CLOISTER_CACHE", scratch.path().join("cache"))
        .output()
        .unwrap();
    let chat_stderr = String::from_utf8_lossy(&chat.stderr);
    assert!(chat.status.success(), "{chat_stderr}");
    assert!(
        chat_stderr.contains(&format!("Verified {endpoint}")),
        "{chat_stderr}"
    );
    assert!(
        chat_stderr.contains("bound to this TLS session"),
        "{chat_stderr}"
    );
    assert!(chat_stderr.contains(" generated ("), "{chat_stderr}");
    assert!(chat_stderr.contains("tokens/s"), "{chat_stderr}");

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
    assert!(stderr.contains("is `cloister up` running?"), "{stderr}");
    assert!(!stderr.contains("Stack backtrace"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn chat_without_an_appliance_says_what_to_do() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    drop(listener);
    let scratch = tempfile::tempdir().unwrap();
    let manifest = scratch.path().join("manifest.json");
    std::fs::write(&manifest, b"{}").unwrap();
    let output = Command::new(RUNNER)
        .args(["chat", "--endpoint", &endpoint, "--manifest"])
        .arg(&manifest)
        .arg("hello")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The manifest is read first and this one is not a manifest: the error names the file.
    assert!(stderr.contains("manifest.json"), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "nothing may reach stdout: {stderr}"
    );
}
