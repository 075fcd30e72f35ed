//! One lab, one writer: an exclusive lock on `lock` in the lab's run dir.
//!
//! `lab up`, `lab down`, `lab kill` and `lab replace` hold it while they start or stop VMs and write or
//! remove state.json, so two `lab up` on one topology at the same instant start one
//! lab: the second waits for the first, then reads its state, finds every VM running
//! and says so. Waiting (rather than failing) is the choice because the second caller
//! asked for the very state the first one is making. The lock is released before `up`
//! waits for the cluster to become ready (up to its `--timeout`, many minutes): that
//! wait only reads, and a `lab down` from another terminal must be able to stop a lab
//! whose `up` is still waiting.
//!
//! It is an OS file lock (`flock`, through std's `File::lock`): the kernel drops it when
//! its holder exits, however it exits, so a killed `lab up` never leaves the lab locked.
//! The holder writes its PID into the file, so a waiter can say whom it waits for. The
//! file lives in the run dir, private state beside cluster.toml, never in a directory
//! mesobake publishes.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

/// The lock file's name inside the run dir.
pub const LOCK_FILE: &str = "lock";

/// A held lab lock; dropping it releases the lock.
#[derive(Debug)]
pub struct LabLock {
    _file: File,
}

/// How often a waiter tries again: short enough that a waiting `up` follows the holder
/// at once, and polling (not a blocking `lock()`) keeps the waiter responsive to Ctrl-C.
const POLL: Duration = Duration::from_millis(200);

impl LabLock {
    /// Takes the lock of the run dir `dir` (which must exist), waiting for its holder;
    /// `what` names the action for the waiting message.
    pub fn acquire(dir: &Path, what: &str) -> Result<LabLock> {
        let path = dir.join(LOCK_FILE);
        // Not truncated on open: the current holder's PID stays readable until we hold it.
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the lab lock {}", path.display()))?;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    if !told {
                        let mut text = String::new();
                        let _ = file.read_to_string(&mut text);
                        let holder = text.lines().next().unwrap_or("").trim();
                        eprintln!(
                            "mesobake: lab: another mesobake{} is starting or stopping this lab; `lab {what}` waits for it ({})",
                            if holder.is_empty() {
                                String::new()
                            } else {
                                format!(" (pid {holder})")
                            },
                            path.display()
                        );
                        told = true;
                    }
                    crate::run::check_interrupted()?;
                    std::thread::sleep(POLL);
                }
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()))
                }
            }
        }
        // Best effort: the PID only serves the waiting message. Written over the old one,
        // then cut to length, so a waiter never reads an empty file: at worst, for a
        // moment, the new PID's line followed by the rest of a longer old one.
        let line = format!("{}\n", std::process::id());
        let _ = file.rewind();
        let _ = file.write_all(line.as_bytes());
        let _ = file.set_len(line.len() as u64);
        Ok(LabLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    /// Two takers at once (two threads: `flock` locks belong to each open file, so two
    /// opens in one process exclude each other as two processes do): the second waits
    /// until the first lets go, and never holds the lock at the same time.
    #[test]
    fn a_second_taker_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = LabLock::acquire(dir.path(), "up").unwrap();
        let held = Arc::new(AtomicBool::new(true));
        let (d, h) = (dir.path().to_owned(), held.clone());
        let second = std::thread::spawn(move || {
            let t = Instant::now();
            let l = LabLock::acquire(&d, "up").unwrap();
            assert!(
                !h.load(Ordering::SeqCst),
                "the second taker got the lock while the first held it"
            );
            drop(l);
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(700));
        held.store(false, Ordering::SeqCst);
        drop(first);
        let waited = second.join().unwrap();
        assert!(waited >= Duration::from_millis(600), "waited {waited:?}");
        let pid = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
    }

    /// Another process holds the lock (flock(1), as a concurrent `lab up` would): we wait
    /// until it exits, and the kernel releases its lock however it ends.
    #[test]
    fn a_lock_held_by_another_process_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join(LOCK_FILE);
        std::fs::write(&lock, "").unwrap();
        let ready = dir.path().join("ready");
        let holder = crate::run::Cmd::new("sh").arg("-c").arg(format!(
            "flock -x {} sh -c 'touch {}; sleep 1'",
            crate::run::quote(&lock.to_string_lossy()),
            crate::run::quote(&ready.to_string_lossy())
        ));
        let t = std::thread::spawn(move || holder.run());
        let start = Instant::now();
        while !ready.exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "flock never ran");
            std::thread::sleep(Duration::from_millis(20));
        }
        let before = Instant::now();
        let l = LabLock::acquire(dir.path(), "up").unwrap();
        assert!(
            before.elapsed() >= Duration::from_millis(500),
            "got the lock while flock(1) held it"
        );
        drop(l);
        t.join().unwrap().unwrap();
    }
}
