//! Guard objects for loop devices and mounts.
//!
//! Each guard has a fallible `close()` for the normal path, so errors are reported, and a
//! best-effort `Drop` for the error path (and for Ctrl-C, which unwinds as an error).
//! A [`Mounts`] stack tears down in reverse order.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::run::Cmd;

/// A loop device attached to (a slice of) a disk image file.
///
/// It is attached with autoclear and held open (`_hold`), so the kernel detaches it once
/// its last mount and last open file are gone, even when mesobake is killed outright:
/// the build's mounts vanish with its mount namespace ([`crate::isolate`]) and mesobake's
/// open files with mesobake.
#[derive(Debug)]
pub struct LoopDevice {
    dev: Option<PathBuf>,
    _hold: Option<std::fs::File>,
}

impl LoopDevice {
    /// Attaches `file` from `offset` for `size` bytes (the whole file when `size` is None).
    pub fn attach(
        file: &Path,
        offset: u64,
        size: Option<u64>,
        read_only: bool,
    ) -> Result<LoopDevice> {
        let mut cmd = Cmd::new("losetup")
            .args(["--find", "--show", "--offset"])
            .arg(offset.to_string());
        if let Some(s) = size {
            cmd = cmd.arg("--sizelimit").arg(s.to_string());
        }
        if read_only {
            cmd = cmd.arg("--read-only");
        }
        let out = cmd
            .arg(file)
            .read()
            .with_context(|| format!("attaching {} to a loop device", file.display()))?;
        let dev = PathBuf::from(out.trim());
        // Guarded from here: a failure below still detaches it.
        let mut guard = LoopDevice {
            dev: Some(dev),
            _hold: None,
        };
        guard._hold = Some(crate::isolate::loop_autoclear(guard.path())?);
        Ok(guard)
    }

    /// The device node, e.g. /dev/loop3.
    pub fn path(&self) -> &Path {
        self.dev.as_deref().expect("loop device used after close")
    }

    /// Detaches the device, reporting failure.
    pub fn close(mut self) -> Result<()> {
        let hold = self._hold.take();
        match self.dev.take() {
            Some(d) => {
                // With our file open, `losetup -d` only marks the device for clearing;
                // closing the file clears it.
                let r = detach(&d);
                drop(hold);
                wait_detached(&d);
                r
            }
            None => Ok(()),
        }
    }
}

/// Waits (briefly) until the kernel has finished clearing `dev`, which it may do after
/// the last close returns: callers check right after that nothing is attached.
fn wait_detached(dev: &Path) {
    let Some(name) = dev.file_name() else { return };
    let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
    for _ in 0..40 {
        if !backing.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn detach(dev: &Path) -> Result<()> {
    let mut last = None;
    for attempt in 0..5 {
        match Cmd::new("losetup").arg("-d").arg(dev).run() {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(200 * (attempt + 1)));
    }
    Err(last.expect("at least one attempt")).with_context(|| format!("detaching {}", dev.display()))
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let hold = self._hold.take();
        if let Some(d) = self.dev.take() {
            if let Err(e) = detach_ignoring_interrupt(&d) {
                eprintln!("mesobake: warning: {e:#}");
            }
            drop(hold);
            wait_detached(&d);
        }
    }
}

/// A mounted filesystem.
#[derive(Debug)]
pub struct Mount {
    target: Option<PathBuf>,
}

impl Mount {
    /// Mounts `source` on `target` with `mount` arguments `opts` (e.g. `["-t", "proc"]`).
    pub fn new(source: &Path, target: &Path, opts: &[&str]) -> Result<Mount> {
        Cmd::new("mount")
            .args(opts)
            .arg(source)
            .arg(target)
            .run()
            .with_context(|| format!("mounting {} on {}", source.display(), target.display()))?;
        Ok(Mount {
            target: Some(target.to_owned()),
        })
    }

    /// Where it is mounted.
    pub fn target(&self) -> &Path {
        self.target.as_deref().expect("mount used after close")
    }

    /// Unmounts, reporting failure.
    pub fn close(mut self) -> Result<()> {
        match self.target.take() {
            Some(t) => unmount(&t),
            None => Ok(()),
        }
    }
}

fn unmount(target: &Path) -> Result<()> {
    let mut last = None;
    // A process that just exited (apt's helpers, gpg-agent) can hold the mount busy for a
    // moment; retry before giving up.
    for attempt in 0..10 {
        match Cmd::new("umount").arg(target).run() {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(250 * (attempt + 1)));
    }
    Err(last.expect("at least one attempt"))
        .with_context(|| format!("unmounting {}", target.display()))
}

/// Teardown after Ctrl-C must still run its commands, which the runner would otherwise
/// refuse once the interrupt flag is up.
fn detach_ignoring_interrupt(dev: &Path) -> Result<()> {
    crate::run::with_interrupt_suspended(|| detach(dev))
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(t) = self.target.take() {
            if let Err(e) = crate::run::with_interrupt_suspended(|| unmount(&t)) {
                eprintln!("mesobake: warning: {e:#}");
            }
        }
    }
}

/// One torn-down-in-reverse stack of mounts and loop devices.
#[derive(Debug, Default)]
pub struct Mounts {
    items: Vec<Item>,
}

#[derive(Debug)]
enum Item {
    Loop(LoopDevice),
    Mount(Mount),
}

impl Mounts {
    /// Pushes a loop device; returns its device path.
    pub fn push_loop(&mut self, l: LoopDevice) -> PathBuf {
        let p = l.path().to_owned();
        self.items.push(Item::Loop(l));
        p
    }

    /// Pushes a mount.
    pub fn push_mount(&mut self, m: Mount) {
        self.items.push(Item::Mount(m));
    }

    /// Unmounts and detaches everything pushed after the first `keep` items, newest first.
    pub fn unwind_to(&mut self, keep: usize) -> Result<()> {
        let mut first_err = None;
        while self.items.len() > keep {
            // Teardown must run even after Ctrl-C, when the runner refuses new commands.
            let r = crate::run::with_interrupt_suspended(|| {
                match self.items.pop().expect("len > keep") {
                    Item::Loop(l) => l.close(),
                    Item::Mount(m) => m.close(),
                }
            });
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The mount points on the stack, oldest first.
    pub fn mount_targets(&self) -> Vec<PathBuf> {
        self.items
            .iter()
            .filter_map(|i| match i {
                Item::Mount(m) => Some(m.target().to_owned()),
                Item::Loop(_) => None,
            })
            .collect()
    }

    /// How many items are on the stack.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the stack is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Tears everything down, newest first, reporting the first failure.
    pub fn close(mut self) -> Result<()> {
        crate::run::with_interrupt_suspended(|| self.unwind_to(0))
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        // Items drop in reverse push order through their own Drop impls.
        while let Some(i) = self.items.pop() {
            drop(i);
        }
    }
}

/// Mount points at or under `dir`, from /proc/self/mountinfo (deepest first).
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(out)
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or(""), 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts everything mounted at or under `dir`, deepest first. For mounts that a tool
/// made inside our private work directory and left behind when it was stopped
/// (mmdebstrap's /proc, /sys and /dev in its chroot).
pub fn unmount_all_under(dir: &Path) -> Result<()> {
    crate::run::with_interrupt_suspended(|| {
        for m in mounts_under(dir)? {
            unmount(&m)?;
        }
        Ok(())
    })
}

/// Removes a work directory, but never through a mount: if anything is still mounted
/// under it, it refuses rather than delete files in a mounted image or a bind-mounted
/// host directory.
pub fn remove_work_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let live = mounts_under(dir)?;
    if !live.is_empty() {
        anyhow::bail!(
            "not removing {}: still mounted under it: {}",
            dir.display(),
            live.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Loop devices whose backing file is at or under `dir` (from `losetup --json`).
pub fn loops_under(dir: &Path) -> Result<Vec<String>> {
    let out = Cmd::new("losetup")
        .args(["--json", "--list", "-O", "NAME,BACK-FILE"])
        .read()?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing losetup --json")?;
    let dir = dir.to_string_lossy().into_owned();
    Ok(v["loopdevices"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|d| d["back-file"].as_str().is_some_and(|b| b.starts_with(&dir)))
                .filter_map(|d| d["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loop_info64_has_the_kernels_size() {
        // linux/loop.h: 5 u64, 4 u32, 64 + 64 + 32 bytes, 2 u64.
        assert_eq!(std::mem::size_of::<crate::isolate::LoopInfo64>(), 232);
    }

    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\"), r"/end\");
    }

    #[test]
    fn proc_is_found_as_a_mount() {
        assert!(mounts_under(Path::new("/proc"))
            .unwrap()
            .contains(&PathBuf::from("/proc")));
    }
}
