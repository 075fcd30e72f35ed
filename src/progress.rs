//! Progress for long steps: indicatif spinners on a TTY, plain lines otherwise.
//!
//! [`Progress`] shows the build's stages and steps, with a [`PercentBar`] for
//! conversions; [`ByteMeter`] shows a byte transfer (a base download) on its own.

use std::io::{self, IsTerminal};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::run::verbose;

/// Reports stages and long-running steps.
pub struct Progress {
    tty: bool,
    current: Option<ProgressBar>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Spinners when stderr is a terminal and `-v` is off (command echo would garble them).
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal() && !crate::run::verbose(),
            current: None,
        }
    }

    /// Announces a stage; the previous one is marked done.
    pub fn stage(&mut self, name: &str, what: &str) {
        self.finish();
        if self.tty {
            let pb = ProgressBar::new_spinner();
            pb.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed:>4}] {prefix:<10} {msg}")
                    .expect("valid template"),
            );
            pb.set_prefix(name.to_string());
            pb.set_message(what.to_string());
            pb.enable_steady_tick(Duration::from_millis(120));
            self.current = Some(pb);
        } else {
            eprintln!("mesobake: {name}: {what}");
        }
    }

    /// A step inside the current stage.
    pub fn step(&self, what: &str) {
        match &self.current {
            Some(pb) => pb.set_message(what.to_string()),
            None => eprintln!("mesobake:   {what}"),
        }
    }

    /// A percentage bar for one long step (a disk conversion). On a terminal it takes over
    /// the stage's spinner line until dropped; otherwise it prints the step and stays quiet.
    pub fn percent(&self, what: &str) -> PercentBar {
        match &self.current {
            Some(pb) => {
                pb.set_style(
                    ProgressStyle::with_template(
                        "{spinner} [{elapsed:>4}] {prefix:<10} {msg} [{bar:30}] {pos:>3}%",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                pb.set_length(100);
                pb.set_position(0);
                pb.set_message(what.to_string());
                PercentBar(Some(pb.clone()))
            }
            None => {
                eprintln!("mesobake:   {what}");
                PercentBar(None)
            }
        }
    }

    /// Runs `f` with the spinner hidden, for steps that draw their own progress bar.
    pub fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.current {
            Some(pb) => pb.suspend(f),
            None => f(),
        }
    }

    /// Marks the current stage done.
    pub fn finish(&mut self) {
        if let Some(pb) = self.current.take() {
            pb.finish();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A percentage bar from [`Progress::percent`]; cloneable so a reader thread can move it.
#[derive(Clone)]
pub struct PercentBar(Option<ProgressBar>);

impl PercentBar {
    /// A bar that shows nothing (tests, library callers without a terminal).
    pub fn hidden() -> PercentBar {
        PercentBar(None)
    }

    /// Sets the percentage (0-100).
    pub fn set(&self, pct: f64) {
        if let Some(pb) = &self.0 {
            pb.set_position(pct.clamp(0.0, 100.0) as u64);
        }
    }

    /// Puts the spinner style back on the stage's line.
    pub fn done(self) {
        if let Some(pb) = self.0 {
            pb.unset_length();
            pb.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed:>4}] {prefix:<10} {msg}")
                    .expect("valid template"),
            );
        }
    }
}

/// How download progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A progress bar when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Always a progress bar (hidden by indicatif if stderr is not a terminal).
    Bar,
    /// A plain line every 10% (or every 64 MiB when the size is unknown), for logs and CI.
    Lines,
    /// Nothing.
    Quiet,
}

/// Reports a byte transfer (a download, or hashing a file) as a bar on a terminal or as
/// occasional lines in logs.
pub struct ByteMeter {
    label: String,
    want_bar: bool,
    lines: bool,
    /// Created by [`ByteMeter::begin`], so nothing is drawn before the size is known.
    bar: Option<ProgressBar>,
    total: Option<u64>,
    started: Instant,
    start_pos: u64,
    pos: u64,
    next_report: u64,
}

/// Without a known size, plain-line mode reports this often.
const LINE_STEP_UNKNOWN: u64 = 64 << 20;

impl ByteMeter {
    /// A meter in `mode` labelled `label` (the file name); it draws nothing until [`ByteMeter::begin`].
    pub fn new(mode: ProgressMode, label: String) -> ByteMeter {
        use std::io::IsTerminal;
        let (want_bar, lines) = match mode {
            ProgressMode::Quiet => (false, false),
            ProgressMode::Lines => (false, true),
            ProgressMode::Bar => (true, false),
            ProgressMode::Auto if io::stderr().is_terminal() => (true, false),
            ProgressMode::Auto => (false, true),
        };
        ByteMeter {
            label,
            want_bar,
            lines,
            bar: None,
            total: None,
            started: Instant::now(),
            start_pos: 0,
            pos: 0,
            next_report: 0,
        }
    }

    /// Starts (or restarts, after a retry) reporting at `pos` of `total` bytes.
    pub fn begin(&mut self, pos: u64, total: Option<u64>) {
        self.total = total;
        self.started = Instant::now();
        self.start_pos = pos;
        self.pos = pos;
        self.next_report = self.next_mark(pos);
        if self.want_bar {
            let bar = self.bar.get_or_insert_with(|| {
                ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
            });
            let style = match total {
                Some(len) => {
                    bar.set_length(len);
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}, ETA {eta}",
                    )
                }
                None => {
                    ProgressStyle::with_template("{spinner} {msg} {bytes} {binary_bytes_per_sec}")
                }
            };
            if let Ok(style) = style {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(self.label.clone());
            bar.set_position(pos);
            // The rate and ETA should describe this transfer, not count resumed bytes.
            bar.reset_eta();
        } else if self.lines {
            let of = match total {
                Some(t) => format!("of {}", HumanBytes(t)),
                None => "of an unknown size".to_string(),
            };
            if pos > 0 {
                eprintln!(
                    "mesobake: {}: resuming at {} {of}",
                    self.label,
                    HumanBytes(pos)
                );
            } else {
                eprintln!("mesobake: {}: 0% {of}", self.label);
            }
        }
    }

    fn next_mark(&self, pos: u64) -> u64 {
        match self.total {
            Some(t) if t > 0 => {
                // The first byte count at or past the next whole tenth of the total.
                let next_tenth = (pos.saturating_mul(10) / t).saturating_add(1);
                next_tenth.saturating_mul(t).div_ceil(10)
            }
            _ => (pos / LINE_STEP_UNKNOWN + 1) * LINE_STEP_UNKNOWN,
        }
    }

    /// Reports that `pos` bytes are done.
    pub fn update(&mut self, pos: u64) {
        self.pos = pos;
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        } else if self.lines && pos >= self.next_report {
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            let rate = ((pos - self.start_pos) as f64 / secs) as u64;
            let done = match self.total {
                Some(t) if t > 0 => format!(
                    "{}% ({} of {})",
                    pos * 100 / t,
                    HumanBytes(pos),
                    HumanBytes(t)
                ),
                _ => format!("{}", HumanBytes(pos)),
            };
            eprintln!("mesobake: {}: {done}, {}/s", self.label, HumanBytes(rate));
            self.next_report = self.next_mark(pos);
        }
    }

    /// What is being reported on.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Renames what is being reported on, for a phase such as re-hashing a partial file.
    pub fn set_label(&mut self, label: String) {
        self.label = label;
    }

    /// Prints a message without tearing the bar.
    pub fn note(&self, msg: &str) {
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(msg),
            _ if self.want_bar || self.lines || verbose() => eprintln!("{msg}"),
            _ => {}
        }
    }

    /// Removes the bar of a finished phase without the closing line.
    pub fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// Ends the transfer with a closing line (size and time).
    pub fn finish(&mut self) {
        self.clear();
        if self.want_bar || self.lines {
            eprintln!(
                "mesobake: {}: done, {} in {:.1}s",
                self.label,
                HumanBytes(self.pos),
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    /// Leaves the bar where it stopped, for a failed transfer.
    pub fn abandon(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_marks_step_by_tenths() {
        let mut m = ByteMeter::new(ProgressMode::Quiet, "x".into());
        m.total = Some(1000);
        assert_eq!(m.next_mark(0), 100);
        assert_eq!(m.next_mark(150), 200);
        m.total = Some(7);
        assert_eq!(m.next_mark(0), 1);
        m.total = None;
        assert_eq!(m.next_mark(1), LINE_STEP_UNKNOWN);
    }
}
