//! The two digest helpers the client and the runner share: SHA-256 of a file read in streaming fashion, and
//! lower-case hex as reports, manifests and exported evidence write digests.

use std::fs::File;
use std::io::Read as _;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

/// The length and SHA-256 of a file, read in streaming fashion.
pub fn sha256_file(path: &Path) -> Result<(u64, [u8; 32])> {
    sha256_file_reporting(path, |_| {})
}

/// [`sha256_file`], calling `on_read` with the byte count of each piece read (for a progress bar).
pub fn sha256_file_reporting(path: &Path, mut on_read: impl FnMut(u64)) -> Result<(u64, [u8; 32])> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut length = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        length += n as u64;
        on_read(n as u64);
    }
    Ok((length, hasher.finalize().into()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
