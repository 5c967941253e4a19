//! Where the runner finds the workspace and keeps its cache (models, the swtpm CA).

use std::path::PathBuf;

/// The environment variable that moves the cache away from `<workspace>/.cache`.
pub const CACHE_ENV: &str = "CLOISTER_CACHE";

/// The workspace root: the directory holding the root `Cargo.toml` (the parent of `runner/`).
pub fn root() -> PathBuf {
    let runner = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = runner.parent().map(PathBuf::from).unwrap_or(runner);
    root.canonicalize().unwrap_or(root)
}

/// The cache directory: `$CLOISTER_CACHE` when set and non-empty, else `<workspace>/.cache` (git-ignored).
pub fn cache_dir() -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => root().join(".cache"),
    }
}

/// Where `cloister build` writes its output unless told otherwise.
pub fn default_out_dir() -> PathBuf {
    root().join("target").join("cloister")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
        assert!(root().join("runner").is_dir());
    }
}
