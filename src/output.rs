//! The CLI contract every command keeps: what goes to stdout and how the process ends.
//!
//! - stdout is written through [`out!`](crate::out) and [`outln!`](crate::outln), which
//!   never panic: when the reader goes away (`mesobake cache ls | head -1`) the rest of
//!   the output is dropped and the command finishes as it would have (Rust's `println!`
//!   panics on `EPIPE`; SIGPIPE stays ignored, so a closed socket or a child's closed
//!   stdin never kills a build half-way).
//! - Exit statuses are distinct ([`exit`]): 0 success, 1 a check failed (including an
//!   input that fails validation), 2 a usage error, 3 a runtime error, 130 interrupted.
//! - Errors under `--json` are one object on stdout ([`crate::failure::error_json`]).
//! - Tables size every column to its content ([`Table`]).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The process exit statuses, documented in the README and in `mesobake --help`.
pub mod exit {
    /// Success.
    pub const SUCCESS: i32 = 0;
    /// A check failed: `verify` or `check` found a failing item, `validate` found
    /// problems, or a command refused a profile or cluster.toml that fails validation.
    pub const CHECK_FAILED: i32 = 1;
    /// A usage error: an unknown option or subcommand, a missing or malformed argument.
    pub const USAGE: i32 = 2;
    /// A runtime error: the work itself failed (download, missing tool, not root, I/O...).
    pub const RUNTIME: i32 = 3;
    /// Interrupted by Ctrl-C, SIGTERM or SIGHUP (after cleaning up).
    pub const INTERRUPTED: i32 = 130;
}

/// The text `mesobake --help` ends with.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0    success
  1    a check failed: verify or check found a failing item, validate found problems,
       or a profile or cluster.toml failed validation (build, seed, lab)
  2    usage error (unknown option, missing or malformed argument)
  3    runtime error (download, missing host tool, not root, I/O, a failing command)
  130  interrupted (Ctrl-C, SIGTERM, SIGHUP)

With --json, every command prints one JSON value on stdout, errors included:
  {\"error\": {\"message\": ..., \"kind\": ..., \"file\": ..., \"line\": ...}}";

/// Set once stdout's reader has gone away: later output is dropped.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
/// A write error other than a closed pipe (a full disk behind a redirection).
static WRITE_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Writes to stdout without panicking; see the module docs. Used by [`out!`](crate::out).
pub fn write_stdout(args: std::fmt::Arguments) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args) {
        note_write_error(e);
    }
}

fn note_write_error(e: std::io::Error) {
    STDOUT_CLOSED.store(true, Ordering::Relaxed);
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        if let Ok(mut w) = WRITE_ERROR.lock() {
            w.get_or_insert_with(|| format!("writing to stdout: {e}"));
        }
    }
}

/// Flushes stdout at the end of a command. Returns the first write error that was not
/// a closed pipe (a closed pipe is the reader's choice, not a failure).
pub fn finish() -> Option<String> {
    if !STDOUT_CLOSED.load(Ordering::Relaxed) {
        if let Err(e) = std::io::stdout().lock().flush() {
            note_write_error(e);
        }
    }
    WRITE_ERROR.lock().ok().and_then(|w| w.clone())
}

/// `print!` that never panics (see [`crate::output`]).
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::output::write_stdout(format_args!($($t)*)) };
}

/// `println!` that never panics (see [`crate::output`]).
#[macro_export]
macro_rules! outln {
    () => { $crate::output::write_stdout(format_args!("\n")) };
    ($($t:tt)*) => { $crate::output::write_stdout(format_args!("{}\n", format_args!($($t)*))) };
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    crate::outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A text table whose columns are as wide as their widest cell (header included), two
/// spaces apart; the last column is not padded, and no line ends in spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers (left-aligned columns).
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            right: vec![false; header.len()],
            rows: Vec::new(),
        }
    }

    /// Right-aligns column `i` (numbers).
    pub fn right(mut self, i: usize) -> Table {
        self.right[i] = true;
        self
    }

    /// Adds a row (missing cells are empty, extra ones dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, one line per row after the header.
    pub fn render(&self) -> String {
        let n = self.header.len();
        let width = |s: &str| s.chars().count();
        let widths: Vec<usize> = (0..n)
            .map(|i| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .map(|r| width(&r[i]))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut s = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                if i > 0 {
                    line += "  ";
                }
                let pad = widths[i] - width(cell);
                if self.right[i] {
                    line += &" ".repeat(pad);
                    line += cell;
                } else {
                    line += cell;
                    if i + 1 < n {
                        line += &" ".repeat(pad);
                    }
                }
            }
            s += line.trim_end();
            s += "\n";
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell() {
        let mut t = Table::new(&["name", "size", "note"]).right(1);
        t.row(vec!["a-much-longer-name".into(), "5".into(), "x".into()]);
        t.row(vec!["b".into(), "12345".into(), String::new()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("name{}size  note", " ".repeat(17)));
        assert_eq!(lines[1], format!("a-much-longer-name{}5  x", " ".repeat(6)));
        assert_eq!(lines[2], format!("b{}12345", " ".repeat(19)));
        // Every column starts where its header does.
        assert_eq!(lines[0].find("note"), lines[1].find('x'));
    }

    #[test]
    fn the_header_is_never_wider_than_its_column() {
        let mut t = Table::new(&["check", "result"]);
        t.row(vec!["ab".into(), "PASS".into()]);
        assert_eq!(t.render(), "check  result\nab     PASS\n");
    }
}
