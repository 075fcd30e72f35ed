//! Crash safety by construction: a build runs in its own mount and PID namespaces, so
//! the kernel takes its mounts and processes down with it however it ends (an error,
//! Ctrl-C, SIGTERM, SIGHUP, SIGKILL, an OOM kill).
//!
//! [`enter`] unshares both namespaces and forks. The child is the namespace's init and
//! does the real work; the parent stays outside as a small supervisor that forwards
//! SIGINT, SIGTERM and SIGHUP to it and exits with its status.
//!
//! - **Mounts.** Every mount in the new mount namespace is private, so nothing mesobake
//!   or its children mount (the image root, the chroot's /proc, /sys and /dev binds,
//!   mmdebstrap's mounts) appears in the host's mount table, and when the namespace's
//!   last process exits the kernel unmounts all of it. Loop devices are global, so
//!   [`crate::image::guard::LoopDevice`] attaches each with autoclear and holds it open
//!   ([`loop_autoclear`]): the device detaches once its last mount and open file are gone.
//! - **Processes.** apt, dpkg, mmdebstrap, qemu-img and QEMU run in the PID namespace.
//!   When its init (the working mesobake) exits, however it exits, the kernel kills every
//!   process in it. If the supervisor is killed, the worker gets SIGTERM and cleans up as
//!   after Ctrl-C. (As a namespace's init, the worker receives only the signals it has a
//!   handler for, and SIGKILL from outside: `run::install_interrupt_handler` installs
//!   them right after `enter`.)
//! - **Signals.** The worker runs in its own process group, so a terminal's Ctrl-C
//!   reaches it once, through the supervisor, and never twice.
//!
//! Why fork: after `unshare(CLONE_NEWPID)` the calling process cannot start threads (its
//! children's PID namespace differs from its own), and mesobake needs threads. Its first
//! child can. So `enter` must run while mesobake has one thread, first thing in `main`.
//!
//! This is the crate's one module with `unsafe` code: namespaces, the fork, signal masks
//! and the loop ioctls have no safe wrapper in the crates we use. Each block says why it
//! is sound.

#![allow(unsafe_code)]

use std::path::Path;

use anyhow::{Context, Result};

/// What [`enter`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// This process is the worker, init of its own PID namespace, in a private mount
    /// namespace.
    Isolated,
    /// Not root: nothing that mounts can run, so there is nothing to isolate.
    NotRoot,
}

fn os_error(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", std::io::Error::last_os_error())
}

/// Enters private mount and PID namespaces (see the module docs). Returns in the worker
/// only; the supervisor exits with the worker's status. Fails where the kernel refuses
/// namespaces (a container without CAP_SYS_ADMIN, for example), before anything changed
/// for the caller; the caller decides whether that is fatal.
pub fn enter() -> Result<Isolation> {
    if !rustix::process::geteuid().is_root() {
        return Ok(Isolation::NotRoot);
    }
    // SAFETY: system calls with constant or local arguments. mesobake has one thread here
    // (module docs), so the forked child may run any code: it simply goes on as mesobake.
    // The parent never returns: it supervises and exits.
    unsafe {
        // The mount namespace first, the PID namespace last: until the PID namespace is
        // unshared this process can still start threads, so any failure before it leaves
        // mesobake able to run as before (the caller warns and goes on).
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(os_error("unshare(mount namespace)"));
        }
        // Without this, mounts made here would propagate back to the host (systemd makes
        // "/" a shared mount).
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(os_error("making the build's mounts private"));
        }
        let mut alive = [0; 2];
        if libc::pipe2(alive.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(os_error("creating the supervisor's pipe"));
        }
        if libc::unshare(libc::CLONE_NEWPID) != 0 {
            libc::close(alive[0]);
            libc::close(alive[1]);
            return Err(os_error("unshare(PID namespace)"));
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGCHLD] {
            libc::sigaddset(&mut set, sig);
        }
        // Blocked before the fork, so no signal is lost in between: the supervisor waits
        // for them with sigtimedwait, the worker unblocks them once set up.
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        let pid = libc::fork();
        if pid < 0 {
            return Err(os_error("starting the build in its namespaces"));
        }
        if pid == 0 {
            libc::close(alive[1]);
            worker_setup(alive[0], &old);
            return Ok(Isolation::Isolated);
        }
        libc::close(alive[0]);
        supervise(pid, &set)
    }
}

/// The worker's first steps: die with the supervisor, own process group, signals back.
unsafe fn worker_setup(alive: libc::c_int, old_mask: &libc::sigset_t) {
    // SIGTERM, not SIGKILL: a killed supervisor still lets the worker unwind its guards.
    libc::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGTERM as libc::c_ulong,
        0,
        0,
        0,
    );
    libc::setpgid(0, 0);
    libc::sigprocmask(libc::SIG_SETMASK, old_mask, std::ptr::null_mut());
    // The supervisor may have died before the death signal was armed: its end of the
    // pipe is then closed. Nothing has been done yet, so just go. (A signal would not
    // do: the init of a PID namespace ignores signals it has no handler for.)
    let mut p = libc::pollfd {
        fd: alive,
        events: libc::POLLIN,
        revents: 0,
    };
    if libc::poll(&mut p, 1, 0) > 0 && p.revents & libc::POLLHUP != 0 {
        libc::_exit(143);
    }
    libc::close(alive);
}

/// The supervisor: forwards SIGINT, SIGTERM and SIGHUP to the worker, and exits with the
/// worker's status (128 + the signal if a signal ended it, like a shell).
unsafe fn supervise(worker: libc::pid_t, set: &libc::sigset_t) -> ! {
    let tick = libc::timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    loop {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let sig = libc::sigtimedwait(set, &mut info, &tick);
        if sig == libc::SIGINT || sig == libc::SIGTERM || sig == libc::SIGHUP {
            libc::kill(worker, sig);
        }
        let mut status = 0;
        if libc::waitpid(worker, &mut status, libc::WNOHANG) == worker {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            libc::_exit(code);
        }
    }
}

/// The kernel's `struct loop_info64` (linux/loop.h); not in the libc crate.
#[repr(C)]
#[doc(hidden)]
pub struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// Opens the loop device `dev` and turns on autoclear (util-linux's losetup has no option for it; `mount
/// -o loop` sets it the same way). Returns the open device, which keeps it attached.
pub fn loop_autoclear(dev: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::options()
        .read(true)
        .open(dev)
        .with_context(|| format!("opening {}", dev.display()))?;
    // SAFETY: both ioctls read or write exactly one loop_info64, which `info` is.
    unsafe {
        let mut info: LoopInfo64 = std::mem::zeroed();
        if libc::ioctl(f.as_raw_fd(), LOOP_GET_STATUS64 as _, &mut info) != 0 {
            anyhow::bail!(
                "reading the status of {}: {}",
                dev.display(),
                std::io::Error::last_os_error()
            );
        }
        info.lo_flags |= LO_FLAGS_AUTOCLEAR;
        if libc::ioctl(f.as_raw_fd(), LOOP_SET_STATUS64 as _, &info) != 0 {
            anyhow::bail!(
                "setting autoclear on {}: {}",
                dev.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(f)
}
