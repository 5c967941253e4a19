//! What the verifier remembers between runs: for each attestation key it has verified, the TPM clock counters of
//! the last quote it accepted (TPMS_CLOCK_INFO, TCG TPM 2.0 Part 2 §10.11.1). The next verification of the same
//! key must not see `resetCount` or `restartCount` go back, nor `clock` go back within one restart (Part 1
//! "TPM Reset", "TPM Restart", "Clock"): a TPM whose counters run backwards was rolled back, or the quote is old.
//!
//! The file is JSON, one entry per AK keyed by SHA-256 of its TPMT_PUBLIC bytes (the AK of a TPM is the same at
//! every boot: a primary key from the fixed template under the endorsement seed). Entries are written only after
//! a verification passed, through a temporary file and a rename, so an interrupted write leaves the old file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::error::ClockCounters;
use crate::digest::hex;

/// The file name under the runner's cache directory.
pub const OBSERVATIONS_FILE: &str = "observations.json";

/// One AK's last accepted counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    clock: u64,
    reset_count: u32,
    restart_count: u32,
}

/// The observation store at one path.
#[derive(Clone, Debug)]
pub struct Observations {
    path: PathBuf,
}

impl Observations {
    /// The store in `cache_dir` (the runner's cache).
    pub fn in_cache(cache_dir: &Path) -> Self {
        Self::at(cache_dir.join(OBSERVATIONS_FILE))
    }

    /// The store at `path`.
    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key of an AK: SHA-256 of its TPMT_PUBLIC bytes, in hex.
    pub fn key(ak_public: &[u8]) -> String {
        hex(&Sha256::digest(ak_public))
    }

    /// The counters last accepted for this AK, if any. A missing file is an empty store; a corrupt one is an
    /// error (refusing is safer than silently forgetting what was seen).
    pub fn previous(&self, ak_public: &[u8]) -> Result<Option<ClockCounters>> {
        Ok(self
            .read()?
            .get(&Self::key(ak_public))
            .map(|entry| ClockCounters {
                clock: entry.clock,
                reset_count: entry.reset_count,
                restart_count: entry.restart_count,
            }))
    }

    /// Records the counters of a quote that passed verification.
    pub fn record(&self, ak_public: &[u8], counters: ClockCounters) -> Result<()> {
        let mut entries = self.read()?;
        entries.insert(
            Self::key(ak_public),
            Entry {
                clock: counters.clock,
                reset_count: counters.reset_count,
                restart_count: counters.restart_count,
            },
        );
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let temporary = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        let mut bytes = serde_json::to_vec_pretty(&entries)?;
        bytes.push(b'\n');
        std::fs::write(temporary.path(), bytes)?;
        temporary
            .persist(&self.path)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(())
    }

    fn read(&self) -> Result<BTreeMap<String, Entry>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is corrupt; remove it to forget the TPM counters seen so far",
                    self.path.display()
                )
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(error) => {
                Err(error).with_context(|| format!("cannot read {}", self.path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_per_key_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Observations::in_cache(dir.path());
        assert_eq!(store.previous(b"ak one").unwrap(), None);
        let seen = ClockCounters {
            clock: 1234,
            reset_count: 3,
            restart_count: 0,
        };
        store.record(b"ak one", seen).unwrap();
        let reopened = Observations::in_cache(dir.path());
        assert_eq!(reopened.previous(b"ak one").unwrap(), Some(seen));
        assert_eq!(reopened.previous(b"ak two").unwrap(), None);
        let later = ClockCounters {
            clock: 10,
            reset_count: 4,
            restart_count: 0,
        };
        reopened.record(b"ak one", later).unwrap();
        assert_eq!(store.previous(b"ak one").unwrap(), Some(later));
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Observations::in_cache(dir.path());
        std::fs::write(store.path(), b"{ not json").unwrap();
        let error = store.previous(b"ak").unwrap_err();
        assert!(format!("{error:#}").contains("corrupt"), "{error:#}");
    }
}
