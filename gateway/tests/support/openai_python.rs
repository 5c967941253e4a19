//! The official `openai` Python package for the gateway's tests: a Python that imports it, installed into a venv
//! under the workspace's `.cache/openai-venv` when none is there yet (`.ci/run` installs it first), and the
//! client script `openai_client.py` beside this file. Included with `#[path]` by `gateway/tests/gateway.rs` and
//! `tests/tests/gateway.rs`. A missing package fails the test; it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The venv `.ci/run` and these tests install the package into.
pub fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".cache/openai-venv")
}

fn imports_openai(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// A Python that imports `openai`: `$CLOISTER_OPENAI_PYTHON`, or the venv's, installed on first use.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        if let Some(python) = std::env::var_os("CLOISTER_OPENAI_PYTHON") {
            return PathBuf::from(python);
        }
        let python = venv().join("bin/python");
        if !imports_openai(&python) {
            for (program, args) in [
                ("python3", vec!["-m".into(), "venv".into(), venv().into_os_string()]),
                (
                    python.to_str().expect("a UTF-8 path"),
                    vec!["-m".into(), "pip".into(), "install".into(), "--quiet".into(), "openai".into()],
                ),
            ] {
                let status = Command::new(program)
                    .args(&args)
                    .status()
                    .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
                assert!(
                    status.success(),
                    "{program} {args:?} failed: the gateway tests need the `openai` Python package (python3-venv \
                     and network access to PyPI, or set CLOISTER_OPENAI_PYTHON to a Python that has it)"
                );
            }
        }
        assert!(imports_openai(&python), "{} cannot import openai", python.display());
        python
    })
}

/// Runs `openai_client.py` against `base_url` and returns its JSON.
pub fn run_client(base_url: &str, prompt: &str, max_tokens: u32) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("gateway/tests/support/openai_client.py");
    let output = Command::new(python())
        .arg(script)
        .arg(base_url)
        .arg(prompt)
        .arg(max_tokens.to_string())
        .output()
        .expect("run the openai client script");
    assert!(
        output.status.success(),
        "the openai client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the client prints JSON")
}
