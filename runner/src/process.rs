//! Child processes that die with their owner, and waiting for a condition until a deadline.
//!
//! Every process the runner starts (swtpm, QEMU) lives in a [`ChildGuard`], which kills and reaps it
//! on drop, so an error path or a panic leaves nothing running. Nothing here sleeps for a fixed time
//! hoping a condition will hold: [`wait_until`] polls the condition itself and gives up at a deadline.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often [`wait_until`] re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A running child process that is killed and reaped when the guard is dropped.
#[derive(Debug)]
pub struct ChildGuard {
    name: &'static str,
    child: Child,
    /// Where the child's stderr (and stdout, unless inherited) goes; quoted in error messages.
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    /// Starts `command` with stdin closed and stdout and stderr appended to `log`.
    ///
    /// The child gets its own process group, so a Ctrl-C typed at the terminal reaches only the
    /// runner, which then stops its children in order.
    pub fn spawn(name: &'static str, mut command: Command, log: &Path) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = command.spawn().with_context(|| {
            format!(
                "cannot start {name} ({})",
                Path::new(command.get_program()).display()
            )
        })?;
        Ok(Self {
            name,
            child,
            log: log.to_path_buf(),
            exited: None,
        })
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The file holding the child's output.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("cannot query {}", self.name))?;
        }
        Ok(self.exited)
    }

    /// Fails with the child's output if it has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_wait()? {
            bail!(
                "{} exited early ({status}); its output:\n{}",
                self.name,
                tail_of_file(&self.log, 4096)
            );
        }
        Ok(())
    }

    /// Kills the child (if it still runs) and waits for it, returning its exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        // Killing a child that exited but was not reaped yet is harmless: the wait below reaps it.
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .with_context(|| format!("cannot wait for {}", self.name))?;
        self.exited = Some(status);
        Ok(status)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Calls `condition` until it returns `Ok(Some(value))`, an error, or `deadline` passes.
///
/// `what` names the awaited condition in the timeout error. The condition is polled every
/// [`POLL_INTERVAL`]; it should itself fail fast when what it waits for can no longer happen
/// (for example when the process that would create a socket has exited).
pub fn wait_until<T>(
    what: &str,
    deadline: Instant,
    mut condition: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    loop {
        if let Some(value) = condition()? {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// The last `max_bytes` of a text file, for error messages; a note instead when it cannot be read.
pub fn tail_of_file(path: &Path, max_bytes: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) if text.trim().is_empty() => format!("({} is empty)", path.display()),
        Ok(text) => text,
        Err(error) => format!("({} could not be read: {error})", path.display()),
    }
}

/// Stdio that writes to the runner's own stderr, for tools whose progress output a person should see
/// but which must stay off stdout (stdout carries results such as the endpoint or JSON).
pub fn stderr_stdio() -> Result<Stdio> {
    use std::os::fd::AsFd;
    let fd = std::io::stderr().as_fd().try_clone_to_owned()?;
    Ok(Stdio::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_kills_and_reaps_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sleep");
        command.arg("600");
        let guard = ChildGuard::spawn("sleep", command, &dir.path().join("log")).unwrap();
        let proc_entry = PathBuf::from(format!("/proc/{}", guard.id()));
        assert!(proc_entry.exists());
        drop(guard);
        assert!(!proc_entry.exists(), "child still present after drop");
    }

    #[test]
    fn early_exit_is_reported_with_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "echo something broke >&2; exit 3"]);
        let mut guard = ChildGuard::spawn("sh", command, &dir.path().join("log")).unwrap();
        let status = wait_until("exit", Instant::now() + Duration::from_secs(10), || {
            guard.try_wait()
        })
        .unwrap();
        assert_eq!(status.code(), Some(3));
        let error = guard.ensure_running().unwrap_err().to_string();
        assert!(error.contains("something broke"), "{error}");
    }

    #[test]
    fn wait_until_times_out() {
        let start = Instant::now();
        let result: Result<()> =
            wait_until("nothing", start + Duration::from_millis(100), || Ok(None));
        assert!(result
            .unwrap_err()
            .to_string()
            .contains("timed out waiting for nothing"));
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn tail_keeps_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "0123456789").unwrap();
        assert_eq!(tail_of_file(&path, 4), "6789");
        assert!(tail_of_file(&dir.path().join("missing"), 4).contains("could not be read"));
    }
}
