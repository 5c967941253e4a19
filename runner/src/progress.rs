//! Progress on the runner's long steps (model download and assembly, hashing, the kernel build, the boot wait),
//! drawn on stderr with `indicatif`.
//!
//! Bars and spinners appear only when stderr is a terminal and `--quiet` was not given. Otherwise each step prints
//! the plain line it always printed (none with `--quiet`), so a log or a script reading stderr sees whole lines and
//! no cursor movement; stdout is never written here.

use std::io::{BufRead as _, BufReader, IsTerminal as _};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::process;

/// Set by `--quiet`: no progress at all, not even the plain lines.
static QUIET: AtomicBool = AtomicBool::new(false);

/// How often a spinner redraws itself.
const TICK: Duration = Duration::from_millis(120);

/// `--quiet`: from now on, steps print no progress.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `--quiet` was given.
pub fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Whether bars may be drawn: stderr is a terminal and `--quiet` was not given.
pub fn interactive() -> bool {
    !is_quiet() && std::io::stderr().is_terminal()
}

/// A progress line on stderr: the plain `eprintln!` of a step that has nothing to count.
pub fn line(text: &str) {
    if !is_quiet() {
        eprintln!("{text}");
    }
}

/// One long step's progress: a bar or spinner on a terminal, else nothing after its first plain line.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A step over `total` bytes: bytes done, rate, time left and a bar filling the rest of the line. `message` is
    /// printed as a plain line when no bar is drawn; `label` (short: the bar shares its line) heads the bar.
    pub fn bytes(message: &str, label: &str, total: u64) -> Self {
        Self::start(message, label, || {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} {bytes}/{total_bytes} {binary_bytes_per_sec} {eta} [{wide_bar}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        })
    }

    /// A step with nothing to count: a spinner with the time elapsed.
    pub fn spinner(message: &str) -> Self {
        Self::start(message, message.trim_end_matches("..."), || {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(TICK);
            bar
        })
    }

    /// A step shown only by its plain line, for when something else writes to stderr meanwhile (the serial echo).
    pub fn plain(message: &str) -> Self {
        Self::start_if(false, message, message, ProgressBar::hidden)
    }

    fn start(message: &str, label: &str, make: impl FnOnce() -> ProgressBar) -> Self {
        Self::start_if(interactive(), message, label, make)
    }

    /// A bar from `make` headed by `label` when `draw`, else the plain line `message`.
    fn start_if(
        draw: bool,
        message: &str,
        label: &str,
        make: impl FnOnce() -> ProgressBar,
    ) -> Self {
        if draw {
            let bar = make();
            bar.set_message(label.to_string());
            Self { bar: Some(bar) }
        } else {
            line(message);
            Self { bar: None }
        }
    }

    /// Counts `bytes` more done.
    pub fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    /// Changes what the bar says it is doing (a terminal only: plain output keeps its first line).
    pub fn set_message(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_string());
        }
    }

    /// Prints `text` above the bar (or as a plain line), so it does not tear the bar.
    pub fn println(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => line(text),
        }
    }

    /// Removes the bar; the step's own result lines follow.
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // A step that failed leaves no half-drawn bar above its error message.
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.finish_and_clear();
            }
        }
    }
}

/// Runs a `cargo build` (the kernel's, the EFI stub's) and returns its exit status. On a terminal a spinner shows
/// the crate being compiled, and cargo's output is kept to be printed only if the build fails (so too with
/// `--quiet`, without the spinner); otherwise cargo's output goes to stderr as it comes (its stdout too, which
/// carries nothing a script of ours reads).
pub fn run_build(mut command: Command, message: &str) -> Result<ExitStatus> {
    if !interactive() && !is_quiet() {
        line(message);
        command.stdout(process::stderr_stdio()?);
        return command.status().context("cannot run cargo");
    }
    let progress = Progress::spinner(message);
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run cargo")?;
    let mut output = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for cargo_line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // "Compiling NAME VERSION (PATH)": the crate's name and version fit the spinner's line.
            let mut words = cargo_line.split_whitespace();
            if words.next() == Some("Compiling") {
                let krate: Vec<&str> = words.take(2).collect();
                progress.set_message(&format!(
                    "{}: compiling {}",
                    message.trim_end_matches("..."),
                    krate.join(" ")
                ));
            }
            output.push(cargo_line);
        }
    }
    let status = child.wait().context("cannot wait for cargo")?;
    progress.finish();
    if !status.success() {
        for cargo_line in &output {
            eprintln!("{cargo_line}");
        }
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_terminal_no_bar_is_drawn() {
        let progress = Progress::start_if(false, "copying...", "copying", || {
            unreachable!("no bar without a terminal")
        });
        assert!(progress.bar.is_none());
        progress.advance(5);
        progress.set_message("still copying");
        progress.finish();
    }

    #[test]
    fn a_bar_counts_what_is_done() {
        let progress = Progress::start_if(true, "copying...", "copying", || {
            ProgressBar::with_draw_target(Some(10), ProgressDrawTarget::hidden())
        });
        progress.advance(4);
        progress.advance(3);
        let bar = progress.bar.clone().unwrap();
        assert_eq!((bar.position(), bar.message()), (7, "copying".to_string()));
        progress.finish();
        assert!(bar.is_finished());
    }

    #[test]
    fn quiet_draws_nothing() {
        set_quiet(true);
        assert!(!interactive());
        assert!(Progress::spinner("waiting...").bar.is_none());
        set_quiet(false);
    }
}
