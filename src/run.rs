//! The one runner every external command goes through.
//!
//! It logs the argv under `-v`, gives the child a null stdin and `LANG=C.UTF-8`, keeps the
//! tail of stderr for the error, and stops the child when the user presses Ctrl-C, so
//! that the guards up the stack get to tear down mounts and loop devices.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

static VERBOSE: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Turns on logging of every external command (`-v`).
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

/// Whether `-v` is on.
pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// How many interrupting signals arrived (SIGINT, SIGTERM or SIGHUP).
static SIGNALS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Installs the handler for Ctrl-C, SIGTERM (CI cancellation, `systemctl stop`) and
/// SIGHUP (a closed terminal), which all mean "stop". The first only raises a flag:
/// running children get SIGINT and the error unwinds through the guards. The second
/// stops children at once (SIGKILL) and still unwinds. The third exits on the spot; a
/// build's mounts and children then go with its namespaces ([`crate::isolate`]).
pub fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        match SIGNALS.fetch_add(1, Ordering::SeqCst) {
            0 => eprintln!("mesobake: interrupted, cleaning up"),
            1 => eprintln!(
                "mesobake: interrupted again: stopping running commands at once, then \
                 cleaning up (once more exits without cleanup)"
            ),
            _ => {
                eprintln!("mesobake: interrupted three times, exiting without cleanup");
                std::process::exit(130);
            }
        }
    })
    .context("installing the signal handler")
}

/// Whether a second signal asked not to wait for children to stop by themselves.
fn hurry() -> bool {
    SIGNALS.load(Ordering::SeqCst) >= 2
}

thread_local! {
    static SUSPENDED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn interrupt_pending() -> bool {
    INTERRUPTED.load(Ordering::SeqCst) && SUSPENDED.with(|s| s.get() == 0)
}

/// Runs `f` with Ctrl-C ignored by the runner on this thread. Teardown (unmount, detach)
/// uses this: after Ctrl-C it must still run its commands to completion.
pub fn with_interrupt_suspended<T>(f: impl FnOnce() -> T) -> T {
    SUSPENDED.with(|s| s.set(s.get() + 1));
    let out = f();
    SUSPENDED.with(|s| s.set(s.get() - 1));
    out
}

/// Returns an error if the user pressed Ctrl-C. Long loops call this between steps.
pub fn check_interrupted() -> Result<()> {
    if interrupt_pending() {
        bail!(Interrupted);
    }
    Ok(())
}

/// The error a build stops with after Ctrl-C.
#[derive(Debug, thiserror::Error)]
#[error("interrupted (Ctrl-C, SIGTERM or SIGHUP)")]
pub struct Interrupted;

/// A command failed: the printable command line, how it ended and the tail of stderr.
#[derive(Debug, thiserror::Error)]
#[error("command failed ({status}): {cmdline}\n{stderr_tail}")]
pub struct CommandFailed {
    /// The shell-quoted command line, ready to paste and re-run.
    pub cmdline: String,
    /// "exit status 1", "killed by signal 9", ...
    pub status: String,
    /// The last lines of the command's output (stdout's tail, then stderr's).
    pub stderr_tail: String,
}

/// One external command, described for the user and run through [`Cmd::run`].
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    dir: Option<std::path::PathBuf>,
    stdin: Option<Vec<u8>>,
    watch: Option<StdoutWatch>,
}

/// A callback that sees the child's stdout as it arrives (progress output).
type StdoutWatch = std::sync::Arc<dyn Fn(&[u8]) + Send + Sync>;

impl Cmd {
    /// A command running `program`.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            dir: None,
            stdin: None,
            watch: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// Appends several arguments.
    pub fn args<I, S>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(it.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// Sets one environment variable for the child.
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// Runs the child in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_owned());
        self
    }

    /// Feeds `data` to the child's stdin instead of /dev/null.
    pub fn stdin_bytes(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// Calls `f` with each chunk of stdout as it arrives, for tools that report progress
    /// there (`qemu-img convert -p`); the output is still collected as usual.
    pub fn watch_stdout(mut self, f: impl Fn(&[u8]) + Send + Sync + 'static) -> Self {
        self.watch = Some(std::sync::Arc::new(f));
        self
    }

    /// The command line, shell-quoted so it can be pasted and re-run.
    pub fn cmdline(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in &self.envs {
            parts.push(format!(
                "{}={}",
                k.to_string_lossy(),
                quote(&v.to_string_lossy())
            ));
        }
        parts.push(quote(&self.program.to_string_lossy()));
        parts.extend(self.args.iter().map(|a| quote(&a.to_string_lossy())));
        parts.join(" ")
    }

    /// Runs the command; fails unless it exits 0.
    pub fn run(self) -> Result<()> {
        self.output().map(|_| ())
    }

    /// Runs the command and returns its stdout as text; fails unless it exits 0.
    pub fn read(self) -> Result<String> {
        let out = self.output()?;
        String::from_utf8(out).map_err(|e| anyhow::anyhow!("command printed non-UTF-8 output: {e}"))
    }

    /// Runs the command and returns its stdout; fails unless it exits 0.
    pub fn output(self) -> Result<Vec<u8>> {
        let (status, stdout, stderr) = self.spawn_and_wait()?;
        if status.success() {
            return Ok(stdout);
        }
        let status = match status.code() {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        };
        // Some tools (dpkg under apt) report the real error on stdout; show both tails.
        let mut stderr_tail = tail(&stderr, 20);
        if !stdout.is_empty() {
            let out_tail = tail(&stdout, 12);
            stderr_tail = format!("{out_tail}\n{stderr_tail}").trim().to_string();
        }
        Err(CommandFailed {
            cmdline: self.cmdline(),
            status,
            stderr_tail,
        }
        .into())
    }

    /// Replaces mesobake with the command (`exec`), for interactive tools (`lab ssh`):
    /// they need the terminal (stdin included), Ctrl-C and window-size changes must reach
    /// them and not mesobake, and their exit status must become the caller's. So unlike
    /// [`Cmd::run`] nothing is captured, stdin stays, the caller's locale stays (it is the
    /// user's session), and the command's own exit status is the process's. `-v` still
    /// shows the command line. Returns only if the exec failed.
    pub fn exec(self) -> anyhow::Error {
        use std::os::unix::process::CommandExt;
        if verbose() {
            eprintln!("+ {}", self.cmdline());
        }
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(d) = &self.dir {
            cmd.current_dir(d);
        }
        self.start_error(cmd.exec(), "running")
    }

    /// Why the command did not start: a missing program named as such, else `verb` and
    /// the command line with the OS error.
    fn start_error(&self, e: std::io::Error, verb: &str) -> anyhow::Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!(
                "{}: command not found ({})",
                self.program.to_string_lossy(),
                self.cmdline()
            )
        } else {
            anyhow::anyhow!("{verb} {}: {e}", self.cmdline())
        }
    }

    /// Runs the command and returns whether it exited 0; only failing to start is an error.
    pub fn succeeds(self) -> Result<bool> {
        Ok(self.spawn_and_wait()?.0.success())
    }

    fn spawn_and_wait(&self) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>)> {
        check_interrupted()?;
        if verbose() {
            eprintln!("+ {}", self.cmdline());
        }
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(d) = &self.dir {
            cmd.current_dir(d);
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(|e| self.start_error(e, "starting"))?;
        if let Some(data) = &self.stdin {
            let mut sin = child.stdin.take().expect("stdin is piped");
            let data = data.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = sin.write_all(&data);
            });
        }
        // Drain both pipes on threads so a chatty child never blocks on a full pipe.
        let watch = self.watch.clone();
        let out_reader = child.stdout.take().map(|mut o| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match o.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if let Some(w) = &watch {
                                w(&chunk[..n]);
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                    }
                }
                buf
            })
        });
        let mut err_pipe = child.stderr.take().expect("stderr is piped");
        let echo = verbose();
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                match err_pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if echo {
                            use std::io::Write;
                            let _ = std::io::stderr().write_all(&chunk[..n]);
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            }
            buf
        });
        let status = loop {
            if let Some(st) = child.try_wait().context("waiting for a child process")? {
                break st;
            }
            if interrupt_pending() {
                stop_child(&mut child, &self.program);
                bail!(Interrupted);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = out_reader
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        Ok((status, stdout, stderr))
    }
}

/// Stops a child and everything it started. Each child runs in its own process group
/// (so a terminal's Ctrl-C reaches only mesobake, which decides the order of teardown);
/// the group first gets SIGINT, as from a terminal, so tools like mmdebstrap and apt
/// can clean up, then SIGKILL if the leader has not exited in 30 s or a second signal
/// came. A wait longer than a second says what it waits for.
fn stop_child(child: &mut std::process::Child, program: &OsStr) {
    let group = rustix::process::Pid::from_raw(child.id() as i32);
    if let Some(g) = group {
        let _ = rustix::process::kill_process_group(g, rustix::process::Signal::INT);
    }
    for tick in 0..300 {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if hurry() {
            break;
        }
        if tick == 10 {
            eprintln!(
                "mesobake: waiting up to 30 s for {} (pid {}) to stop; interrupt again to \
                 stop it at once",
                program.to_string_lossy(),
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(g) = group {
        let _ = rustix::process::kill_process_group(g, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Shell-quotes one word if it needs it.
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_status_and_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo oops >&2; exit 3"])
            .run()
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("exit status 3"), "{msg}");
        assert!(msg.contains("oops"), "{msg}");
        assert!(msg.contains("sh -c 'echo oops >&2; exit 3'"), "{msg}");
    }

    #[test]
    fn read_returns_stdout_and_stdin_is_fed() {
        let out = Cmd::new("cat").stdin_bytes("hello").read().unwrap();
        assert_eq!(out, "hello");
    }

    #[test]
    fn missing_program_is_named() {
        let err = Cmd::new("no-such-tool-xyz").run().unwrap_err();
        assert!(format!("{err:#}").contains("no-such-tool-xyz: command not found"));
    }

    #[test]
    fn quoting_round_trips_through_sh() {
        let word = "it's a $test";
        let out = Cmd::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote(word)))
            .read()
            .unwrap();
        assert_eq!(out, word);
    }
}
