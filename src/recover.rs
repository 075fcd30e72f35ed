//! Work left by a build that did not finish: found, stopped, detached, unmounted, and
//! only then deleted.
//!
//! Two kinds of work entries exist: a build's `.mesobake-work-*` directory in its output
//! directory, and directories under the cache's `tmp/`.
//!
//! - A work directory records its owner in [`OWNER_FILE`] (host PID, start time, boot
//!   ID) and holds an exclusive lock on that file for its whole life. The lock, not the
//!   PID, decides: the kernel drops it when the owner dies, however it dies, and a reused
//!   PID cannot fake it. A directory without an owner file counts as stale once it is
//!   older than [`UNCLAIMED_GRACE`] (a build killed between creating and claiming it).
//! - Every build holds a shared lock on the cache's [`TMP_LOCK`] while it runs. Whoever
//!   gets it exclusively knows that no build uses the cache, so every directory in
//!   `tmp/` is stale. Files there are kept: a `.partial` download is a resume point.
//!
//! Since builds run in their own namespaces ([`crate::isolate`]), a stale entry normally
//! has no mount and no process left. Work from a build that ran without them (an older
//! mesobake, or a kernel that refused namespaces) can still have both, so cleaning stops
//! processes whose root or working directory is inside, unmounts deepest first, detaches
//! loop devices backed by files inside, and then deletes with
//! [`guard::remove_work_dir`], which refuses to delete through a mount.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::base::cache::Cache;
use crate::base::gc::disk_usage;
use crate::image::guard;
use crate::run::Cmd;

/// The owner record inside a work directory.
pub const OWNER_FILE: &str = ".mesobake-owner";
/// The prefix of a build's work directory in its output directory.
pub const WORK_PREFIX: &str = ".mesobake-work-";
/// The lock file in the cache root that running builds hold shared.
pub const TMP_LOCK: &str = "tmp.lock";
/// How old an unclaimed work directory must be before it counts as stale.
pub const UNCLAIMED_GRACE: Duration = Duration::from_secs(600);

/// A claimed work directory; the claim ends when this is dropped or the process dies.
#[derive(Debug)]
pub struct Claim {
    _file: File,
}

/// Claims `dir` for this process (see the module docs).
pub fn claim(dir: &Path) -> Result<Claim> {
    let path = dir.join(OWNER_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.try_lock()
        .with_context(|| format!("locking {}", path.display()))?;
    writeln!(file, "{}", owner_line()).with_context(|| format!("writing {}", path.display()))?;
    Ok(Claim { _file: file })
}

/// "pid=<host pid> start=<clock ticks after boot> boot=<boot id>", read from the host's
/// /proc: inside the build's PID namespace `getpid()` would say 1.
fn owner_line() -> String {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces; fields after its ')' are plain.
    let pid = stat.split(' ').next().unwrap_or("?").to_string();
    let start = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .unwrap_or("?")
        .to_string();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!("pid={pid} start={start} boot={}", boot.trim())
}

/// Holds the cache's tmp lock shared for a build's life.
#[derive(Debug)]
pub struct CacheUse {
    _file: File,
}

/// Takes the cache's tmp lock. If no other build holds it, first cleans the stale
/// entries in the cache's `tmp/` and reports each on stderr.
pub fn use_cache(cache: &Cache) -> Result<CacheUse> {
    let file = open_tmp_lock(cache)?;
    if file.try_lock().is_ok() {
        for s in stale_in_cache_tmp(cache)? {
            match clean(&s) {
                Ok(c) => eprintln!("mesobake: removed {}", c.describe()),
                Err(e) => eprintln!("mesobake: warning: {e:#}"),
            }
        }
    }
    // Downgrading is not atomic, but an exclusive taker in between finds nothing of ours.
    file.lock_shared()
        .context("locking the cache's tmp directory")?;
    Ok(CacheUse { _file: file })
}

fn open_tmp_lock(cache: &Cache) -> Result<File> {
    let path = cache.root().join(TMP_LOCK);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

/// A work entry whose owner is gone.
#[derive(Debug, Clone, Serialize)]
pub struct Stale {
    /// The directory.
    pub path: PathBuf,
    /// What its owner record says, if it has one.
    pub owner: Option<String>,
    /// Bytes allocated under it.
    pub bytes: u64,
}

/// What [`clean`] did to one entry.
#[derive(Debug, Clone, Serialize)]
pub struct Cleaned {
    /// The entry.
    #[serde(flatten)]
    pub stale: Stale,
    /// Processes stopped (PIDs).
    pub killed: Vec<u32>,
    /// Mount points unmounted.
    pub unmounted: Vec<PathBuf>,
    /// Loop devices detached.
    pub detached: Vec<String>,
}

impl Cleaned {
    /// One line for people.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "stale work {} ({} MiB",
            self.stale.path.display(),
            self.stale.bytes >> 20
        );
        if let Some(o) = &self.stale.owner {
            s += &format!(", owner {o}");
        }
        s += ")";
        if !self.killed.is_empty() {
            s += &format!("; stopped processes {:?}", self.killed);
        }
        if !self.unmounted.is_empty() {
            s += &format!("; unmounted {}", self.unmounted.len());
        }
        if !self.detached.is_empty() {
            s += &format!("; detached {}", self.detached.join(", "));
        }
        s
    }
}

/// The stale work directories directly under `out_dir`.
pub fn stale_in_output_dir(out_dir: &Path) -> Result<Vec<Stale>> {
    let mut v = Vec::new();
    for d in work_dirs_in(out_dir)? {
        if let Some(s) = stale_owned(&d)? {
            v.push(s);
        }
    }
    Ok(v)
}

/// Every build work directory directly under `out_dir`, live or not.
pub fn work_dirs_in(out_dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(out_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", out_dir.display())),
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(WORK_PREFIX))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    v.sort();
    Ok(v)
}

/// `Some` if `dir`'s owner is gone (its lock is free, or it never claimed the directory
/// and is older than the grace period).
fn stale_owned(dir: &Path) -> Result<Option<Stale>> {
    let owner_path = dir.join(OWNER_FILE);
    let owner = match File::open(&owner_path) {
        Ok(f) => {
            if f.try_lock().is_err() {
                return Ok(None);
            }
            Some(
                std::fs::read_to_string(&owner_path)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let age = std::fs::metadata(dir)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            if age < UNCLAIMED_GRACE {
                return Ok(None);
            }
            None
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", owner_path.display())),
    };
    Ok(Some(Stale {
        path: dir.to_path_buf(),
        owner,
        bytes: disk_usage(dir),
    }))
}

/// The directories in the cache's `tmp/`, if no build uses the cache (this process must
/// hold the tmp lock exclusively, or know that nobody holds it).
fn stale_in_cache_tmp(cache: &Cache) -> Result<Vec<Stale>> {
    let tmp = cache.tmp_dir();
    let rd = match std::fs::read_dir(&tmp) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", tmp.display())),
    };
    let mut v: Vec<Stale> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| Stale {
            bytes: disk_usage(&e.path()),
            path: e.path(),
            owner: None,
        })
        .collect();
    v.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(v)
}

/// Everything `mesobake clean` would remove: stale work in each output directory, and
/// the cache's temporary directories if no build is using the cache. The second value
/// says whether the cache's `tmp/` was looked at (false: a build is running).
pub fn find(cache: &Cache, out_dirs: &[PathBuf]) -> Result<(Vec<Stale>, Option<File>)> {
    let mut all = Vec::new();
    for d in out_dirs {
        all.extend(stale_in_output_dir(d)?);
    }
    let lock = open_tmp_lock(cache)?;
    if lock.try_lock().is_ok() {
        all.extend(stale_in_cache_tmp(cache)?);
        Ok((all, Some(lock)))
    } else {
        Ok((all, None))
    }
}

/// Cleans one stale entry: stops processes inside, unmounts, detaches loops, deletes.
pub fn clean(s: &Stale) -> Result<Cleaned> {
    let dir = s.path.canonicalize().unwrap_or_else(|_| s.path.clone());
    let killed = kill_processes_in(&dir);
    let unmounted = guard::mounts_under(&dir)?;
    guard::unmount_all_under(&dir)
        .with_context(|| format!("unmounting what is left under {}", dir.display()))?;
    let detached = guard::loops_under(&dir)?;
    for dev in &detached {
        crate::run::with_interrupt_suspended(|| Cmd::new("losetup").arg("-d").arg(dev).run())
            .with_context(|| format!("detaching {dev}"))?;
    }
    guard::remove_work_dir(&dir)?;
    Ok(Cleaned {
        stale: s.clone(),
        killed,
        unmounted,
        detached,
    })
}

/// SIGKILLs every process whose root or working directory is at or under `dir` (a chroot
/// left running by a build that was not isolated), and waits briefly for them to go.
fn kill_processes_in(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            ["root", "cwd"].iter().any(|l| {
                std::fs::read_link(format!("/proc/{pid}/{l}")).is_ok_and(|t| t.starts_with(dir))
            })
        })
        .collect();
    for &pid in &pids {
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
    for _ in 0..50 {
        if pids
            .iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    pids
}

/// The temporary entries in the cache's `tmp/` (live or stale), with their bytes, for
/// `cache ls`.
pub fn cache_tmp_usage(cache: &Cache) -> (usize, u64) {
    let tmp = cache.tmp_dir();
    let entries: Vec<PathBuf> = std::fs::read_dir(&tmp)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    let bytes = entries.iter().map(|p| disk_usage(p)).sum();
    (entries.len(), bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_dir_is_live_until_its_owner_lets_go() {
        let out = tempfile::tempdir().unwrap();
        let work = out.path().join(format!("{WORK_PREFIX}abc"));
        std::fs::create_dir(&work).unwrap();
        let c = claim(&work).unwrap();
        // flock is per open file: this process opening the record again is a stranger.
        assert!(stale_in_output_dir(out.path()).unwrap().is_empty());
        let owner = std::fs::read_to_string(work.join(OWNER_FILE)).unwrap();
        assert!(
            owner.starts_with(&format!("pid={} start=", std::process::id())),
            "{owner}"
        );
        drop(c);
        let stale = stale_in_output_dir(out.path()).unwrap();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].path, work);
        let done = clean(&stale[0]).unwrap();
        assert!(done.killed.is_empty() && done.unmounted.is_empty());
        assert!(!work.exists());
    }

    #[test]
    fn an_unclaimed_dir_gets_a_grace_period() {
        let out = tempfile::tempdir().unwrap();
        let work = out.path().join(format!("{WORK_PREFIX}new"));
        std::fs::create_dir(&work).unwrap();
        assert!(stale_in_output_dir(out.path()).unwrap().is_empty());
        let old = SystemTime::now() - UNCLAIMED_GRACE - Duration::from_secs(5);
        File::open(&work).unwrap().set_modified(old).unwrap();
        assert_eq!(stale_in_output_dir(out.path()).unwrap().len(), 1);
        // Other entries of an output directory are never work.
        std::fs::create_dir(out.path().join("not-work")).unwrap();
        assert_eq!(work_dirs_in(out.path()).unwrap(), vec![work]);
    }

    #[test]
    fn cache_tmp_dirs_are_stale_only_while_no_build_uses_the_cache() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(root.path().to_path_buf())).unwrap();
        let t = cache.new_tmp_dir("layer-").unwrap().keep();
        std::fs::write(cache.tmp_dir().join("x.partial"), b"resume me").unwrap();
        let using = use_cache(&cache).unwrap();
        // use_cache found nobody else and cleaned the leftover directory, not the file.
        assert!(!t.exists());
        assert!(cache.tmp_dir().join("x.partial").exists());
        let t2 = cache.new_tmp_dir("layer-").unwrap().keep();
        let (found, lock) = find(&cache, &[]).unwrap();
        assert!(found.is_empty() && lock.is_none(), "a build uses the cache");
        drop(using);
        // A process another test forks in this instant holds a copy of the lock's file
        // description until it execs (flock follows the description, not the process),
        // so the lock can outlive the drop by a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let (found, lock) = loop {
            let (found, lock) = find(&cache, &[]).unwrap();
            if lock.is_some() || std::time::Instant::now() > deadline {
                break (found, lock);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(lock.is_some());
        assert_eq!(found.iter().map(|s| &s.path).collect::<Vec<_>>(), [&t2]);
    }
}
