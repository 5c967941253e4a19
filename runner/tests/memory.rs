//! Peak memory of `cloister generate` on the real models (issue 4: no more than the model file plus the KV cache plus
//! 32 MiB). The peak is the kernel's own account of the child process (`ru_maxrss` of `getrusage(RUSAGE_CHILDREN)`,
//! getrusage(2)), not a figure the runner reports about itself; the KV cache size comes from `--json`.
//!
//! This file holds one test on purpose: `RUSAGE_CHILDREN` covers every child the test process has waited for, so
//! another test spawning processes here would blur the figure. The models come through the runner's cache (fetched
//! by `.ci/run` with `cloister fetch-model`, or on first use).

use std::process::Command;

use nix::sys::resource::{getrusage, UsageWho};

const RUNNER: &str = env!("CARGO_BIN_EXE_cloister");
const ALLOWANCE: u64 = 32 << 20;

/// The largest resident set (bytes) of any waited-for child so far.
fn children_peak_rss() -> u64 {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage(RUSAGE_CHILDREN)");
    // Linux reports ru_maxrss in KiB.
    u64::try_from(usage.max_rss()).unwrap() * 1024
}

fn json_u64(json: &str, key: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("generate --json printed no JSON ({e}): {json}"));
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {json}"))
}

/// Runs `generate` on `name` and returns (peak RSS, model file bytes, KV cache bytes).
fn generate_peak(name: &str) -> (u64, u64, u64) {
    let path = runner::models::resolve(name).expect("model name");
    let output = Command::new(RUNNER)
        .args([
            "generate",
            "--model",
            name,
            "--threads",
            "2",
            "--max-tokens",
            "16",
            "--json",
            "The capital of France is",
        ])
        .output()
        .expect("run the runner binary");
    assert!(
        output.status.success(),
        "cloister generate --model {name} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let kv = json_u64(&stdout, "kv_cache_bytes");
    let file = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len();
    (children_peak_rss(), file, kv)
}

#[test]
fn generate_peak_memory_is_the_file_plus_the_kv_cache_plus_32_mib() {
    let mut seen = 0;
    // Smaller model first: ru_maxrss is a running maximum over children, so each figure belongs to its model only
    // while the models grow in this order.
    for name in ["smollm2", "gemma3"] {
        let (peak, file, kv) = generate_peak(name);
        assert!(
            peak > seen,
            "{name}: the peak ({peak} B) did not grow past the smaller model's ({seen} B); the figure is not its own"
        );
        seen = peak;
        let budget = file + kv + ALLOWANCE;
        eprintln!(
            "{name}: peak RSS {:.1} MiB = file {:.1} MiB + KV {:.2} MiB + {:.1} MiB (allowed {:.1} MiB)",
            mib(peak),
            mib(file),
            mib(kv),
            mib(peak.saturating_sub(file + kv)),
            mib(budget)
        );
        assert!(
            peak <= budget,
            "{name}: peak RSS {peak} B exceeds file {file} B + KV cache {kv} B + 32 MiB"
        );
        // The whole weight file is resident (read once, used in place): a peak below it would mean the figure
        // measured something else.
        assert!(
            peak >= file,
            "{name}: peak {peak} B below the file size {file} B"
        );
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
