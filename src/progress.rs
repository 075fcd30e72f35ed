//! Progress for long steps: indicatif spinners on a TTY, plain lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

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
