//! The QEMU launcher.
//!
//! Guests get user-mode networking with `restrict=on`: they reach nothing outside, and
//! the host reaches their ports only through `hostfwd` on 127.0.0.1. The boot disk is
//! opened with `snapshot=on`, so verifying an image never changes it. QEMU is killed
//! through its child handle on every path, including panics, by [`Vm`]'s `Drop`, unless
//! the VM was detached for the lab, which then tracks it by PID.
//!
//! QEMU is the one external command that does not go through [`crate::run::Cmd`]: it
//! keeps running beside the caller (and, for the lab, after mesobake exits), while the
//! runner runs commands to completion.

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use crate::settings::{Accel, AccelChoice};

impl Accel {
    fn args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            // Nested KVM on these machines hangs guests; TCG with the "max" model works.
            Accel::Tcg => &["-accel", "tcg", "-cpu", "max"],
        }
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The boot disk.
    pub disk: PathBuf,
    /// The disk's format (qcow2, raw, vmdk, ...).
    pub disk_format: String,
    /// A NoCloud seed ISO, attached as a virtio disk (Debian's cloud kernel has no AHCI,
    /// so a SATA CD-ROM would be invisible).
    pub seed: Option<PathBuf>,
    /// Memory in MiB.
    pub memory_mb: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Guest TCP ports to forward, as (host port on 127.0.0.1, guest port).
    pub forwards: Vec<(u16, u16)>,
    /// Where the serial console goes.
    pub serial_log: PathBuf,
    /// Extra network devices (lab: a private socket network between VMs).
    pub extra_args: Vec<String>,
    /// The guest address `forwards` go to (None: QEMU's default, the DHCP address
    /// 10.0.2.15). The lab forwards to a node's cluster address, where Mesos binds.
    pub forward_to: Option<String>,
    /// The MAC of the user-networking NIC (None: QEMU's default).
    pub nic0_mac: Option<String>,
    /// Where QEMU's stderr goes; None keeps it in a pipe for [`Vm::check_running`]. A VM
    /// that outlives mesobake (the lab) needs a file: a closed pipe would kill it.
    pub stderr_log: Option<PathBuf>,
    /// A unix socket QEMU listens on for the serial console (None: the console only goes
    /// to `serial_log`). With it, the console's output still goes to `serial_log` too
    /// (the chardev's `logfile=`), whether a client is connected or not.
    pub console_socket: Option<PathBuf>,
    /// A unix socket QEMU listens on for QMP ([`crate::vm::qmp`]).
    pub qmp_socket: Option<PathBuf>,
    /// A file QEMU writes its PID into (and removes when it exits cleanly).
    pub pidfile: Option<PathBuf>,
    /// A raw data disk attached writable (the lab's per-node state disk): unlike the
    /// boot disk it is not a snapshot, so what the guest writes there outlives the VM.
    pub data_disk: Option<PathBuf>,
}

/// QEMU exited because a host port of a `hostfwd` rule was taken: another process bound
/// it between [`free_ports`] releasing it and QEMU binding it. Picking new ports and
/// starting again is the fix.
#[derive(Debug, thiserror::Error)]
#[error("a forwarded host port was taken before QEMU could bind it: {stderr}")]
pub struct PortTaken {
    /// QEMU's stderr.
    pub stderr: String,
}

/// Whether QEMU's stderr says it could not bind a host port for a forwarding rule
/// (slirp reports "Could not set up host forwarding rule 'tcp:127.0.0.1:PORT-...'";
/// some builds add the errno text, "Address already in use").
pub fn host_port_taken(stderr: &str) -> bool {
    stderr.lines().any(|l| {
        l.contains("Could not set up host forwarding rule")
            || (l.contains("Address already in use") && l.contains("hostfwd"))
    })
}

/// A path as a value inside a QEMU `-opt key=value,...` list, where a comma must be
/// doubled.
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// A running QEMU process.
pub struct Vm {
    child: Option<Child>,
    /// The serial log.
    pub serial_log: PathBuf,
    /// The acceleration it runs with.
    pub accel: Accel,
    /// Where its stderr goes when not to a pipe.
    stderr_log: Option<PathBuf>,
}

/// `n` distinct free ports on 127.0.0.1. All are held open until all are known: a port
/// released before the next is asked for can come back, and QEMU refuses two forwarding
/// rules on one host port.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1"))
        .collect::<Result<Vec<_>>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// The QEMU system emulator mesobake boots guests with.
const QEMU: &str = "qemu-system-x86_64";

fn qemu_command(spec: &VmSpec, accel: Accel) -> Command {
    let mut c = Command::new(QEMU);
    c.args(accel.args());
    c.args([
        "-m",
        &spec.memory_mb.to_string(),
        "-smp",
        &spec.cpus.to_string(),
    ]);
    c.args(["-display", "none", "-monitor", "none", "-no-reboot"]);
    match &spec.console_socket {
        // `wait=off`: QEMU runs without waiting for a client, and what the guest prints
        // while nobody is connected still reaches the log file.
        Some(sock) => {
            c.arg("-chardev").arg(format!(
                "socket,id=serial0,path={},server=on,wait=off,logfile={}",
                opt_path(sock),
                opt_path(&spec.serial_log)
            ));
            c.args(["-serial", "chardev:serial0"]);
        }
        None => {
            c.arg("-serial")
                .arg(format!("file:{}", spec.serial_log.display()));
        }
    }
    if let Some(q) = &spec.qmp_socket {
        c.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", opt_path(q)));
    }
    if let Some(p) = &spec.pidfile {
        c.arg("-pidfile").arg(p);
    }
    c.arg("-drive").arg(format!(
        "file={},if=virtio,format={},snapshot=on",
        spec.disk.display(),
        spec.disk_format
    ));
    if let Some(seed) = &spec.seed {
        c.arg("-drive").arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            seed.display()
        ));
    }
    if let Some(data) = &spec.data_disk {
        // cache=unsafe: QEMU ignores the guest's flushes. ZooKeeper fsyncs every
        // transaction, and each flush became an fdatasync on the host file that the lab's
        // other VMs wait behind. A lab disk only has to survive its VM (a killed QEMU's
        // writes are already in the host's page cache), not a host crash.
        c.arg("-drive").arg(format!(
            "file={},if=virtio,format=raw,cache=unsafe",
            opt_path(data)
        ));
    }
    let mut netdev = String::from("user,id=n0,restrict=on");
    let to = spec.forward_to.as_deref().unwrap_or("");
    for (h, g) in &spec.forwards {
        netdev += &format!(",hostfwd=tcp:127.0.0.1:{h}-{to}:{g}");
    }
    let mut dev = String::from("virtio-net-pci,netdev=n0");
    if let Some(m) = &spec.nic0_mac {
        dev += &format!(",mac={m}");
    }
    c.args(["-netdev", &netdev, "-device", &dev]);
    c.args(&spec.extra_args);
    c.stdin(Stdio::null()).stdout(Stdio::null());
    match spec.stderr_log.as_ref().and_then(|p| File::create(p).ok()) {
        Some(f) => c.stderr(Stdio::from(f)),
        None => c.stderr(Stdio::piped()),
    };
    // Its own process group: a terminal's Ctrl-C goes to mesobake, which decides what
    // stops (verify's guard kills its VM; a lab's VMs keep running until `lab down`).
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    c
}

impl Vm {
    /// Starts QEMU with `accel`.
    pub fn start(spec: &VmSpec, accel: Accel) -> Result<Vm> {
        File::create(&spec.serial_log)
            .with_context(|| format!("creating {}", spec.serial_log.display()))?;
        let cmd = qemu_command(spec, accel);
        if crate::run::verbose() {
            let argv: Vec<String> = std::iter::once(cmd.get_program())
                .chain(cmd.get_args())
                .map(|a| crate::run::quote(&a.to_string_lossy()))
                .collect();
            eprintln!("+ {}", argv.join(" "));
        }
        let mut cmd = cmd;
        let child = cmd
            .spawn()
            .context("starting qemu-system-x86_64 (package qemu-system-x86)")?;
        Ok(Vm {
            child: Some(child),
            serial_log: spec.serial_log.clone(),
            accel,
            stderr_log: spec.stderr_log.clone(),
        })
    }

    /// The QEMU process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether QEMU is still running; if it exited, the error says how, with its stderr
    /// (a [`PortTaken`] when a forwarded host port was taken).
    pub fn check_running(&mut self) -> Result<()> {
        let Some(c) = self.child.as_mut() else {
            bail!("QEMU was stopped")
        };
        if let Some(st) = c.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = c.stderr.take() {
                e.read_to_string(&mut err).ok();
            } else if let Some(p) = &self.stderr_log {
                err = std::fs::read_to_string(p).unwrap_or_default();
            }
            let err = err.trim().to_string();
            if host_port_taken(&err) {
                bail!(PortTaken { stderr: err });
            }
            bail!("QEMU exited ({st}): {err}");
        }
        Ok(())
    }

    /// The serial output so far.
    pub fn serial(&self) -> String {
        std::fs::read(&self.serial_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until a serial line contains one of `needles`; returns that line.
    pub fn wait_for_line(&mut self, needles: &[&str], timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            crate::run::check_interrupted()?;
            let text = self.serial();
            if let Some(l) = text.lines().find(|l| needles.iter().any(|n| l.contains(n))) {
                return Ok(l.trim_end_matches('\r').to_string());
            }
            self.check_running()?;
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {} s waiting for {:?} on the serial console",
                    timeout.as_secs(),
                    needles
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Lets QEMU run on after this guard is gone (the lab tracks it by PID from here on);
    /// returns its PID.
    pub fn detach(mut self) -> Option<u32> {
        self.child.take().map(|c| c.id())
    }

    /// Kills QEMU through its child handle (SIGKILL) and reaps it. A VM that was
    /// [`detach`](Self::detach)ed has no handle here any more; the lab stops those by PID.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the VM with KVM if a short probe shows guests actually run under it here, else
/// with TCG. `/dev/kvm` existing is not enough: nested KVM can hang a guest right after
/// the kernel is decompressed, so the probe waits for the kernel's first line. A failed
/// probe is remembered for this boot of the host and this QEMU binary (see
/// [`KvmMemory`]), so later boots do not each spend the probe's 20 s.
pub fn start_auto(spec: &VmSpec, forced: Option<Accel>) -> Result<Vm> {
    if let Some(a) = forced {
        return Vm::start(spec, a);
    }
    let memory = KvmMemory::here();
    if File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
    {
        if memory.as_ref().is_some_and(|m| m.failed_before()) {
            eprintln!(
                "mesobake: KVM failed its probe earlier in this host boot ({}); using TCG \
                 (--accel kvm forces a try)",
                memory.as_ref().unwrap().path.display()
            );
            return Vm::start(spec, Accel::Tcg);
        }
        let mut vm = Vm::start(spec, Accel::Kvm)?;
        match vm.wait_for_line(&["Linux version"], Duration::from_secs(20)) {
            Ok(_) => return Ok(vm),
            // A taken port is no fault of KVM's: the caller picks new ports.
            Err(e) if e.is::<PortTaken>() => return Err(e),
            Err(e) => {
                vm.stop();
                eprintln!("mesobake: KVM probe failed ({e:#}); falling back to TCG");
                if let Some(m) = &memory {
                    m.record_failure();
                }
            }
        }
    }
    Vm::start(spec, Accel::Tcg)
}

/// A failed KVM probe, remembered in a runtime directory (tmpfs, emptied when the host
/// reboots) under a key of the host's boot ID and the QEMU binary's size and mtime: a
/// reboot, a kernel module change that needs one, or another QEMU probes again.
struct KvmMemory {
    path: PathBuf,
    key: String,
}

impl KvmMemory {
    fn here() -> Option<KvmMemory> {
        let dir = if rustix::process::geteuid().is_root() {
            PathBuf::from("/run/mesobake")
        } else {
            crate::xdg::runtime_dir()?.join("mesobake")
        };
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let qemu = which_qemu()?;
        let meta = std::fs::metadata(&qemu).ok()?;
        let mtime = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        Some(KvmMemory {
            path: dir.join("kvm-probe-failed"),
            key: format!(
                "{} {} {} {}",
                boot.trim(),
                qemu.display(),
                meta.len(),
                mtime.as_secs()
            ),
        })
    }

    fn failed_before(&self) -> bool {
        std::fs::read_to_string(&self.path).is_ok_and(|s| s.trim() == self.key)
    }

    /// Best effort: without the record, the next boot just probes again.
    fn record_failure(&self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(&self.path, format!("{}\n", self.key));
    }
}

/// The QEMU binary that [`qemu_command`] runs, found on PATH.
fn which_qemu() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(QEMU))
        .find(|p| p.is_file())
}

/// Keeps a failed run's serial log: copies it next to `dest_dir` and returns the path.
pub fn keep_log(log: &Path, dest: &Path) -> Result<PathBuf> {
    std::fs::copy(log, dest)
        .with_context(|| format!("keeping the serial log at {}", dest.display()))?;
    Ok(dest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_host_port_is_told_from_other_failures() {
        // QEMU 7.2 (Debian 12), the slirp message.
        assert!(host_port_taken(
            "qemu-system-x86_64: -netdev user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40001-10.77.0.11:2181: \
             Could not set up host forwarding rule 'tcp:127.0.0.1:40001-10.77.0.11:2181'"
        ));
        assert!(host_port_taken(
            "qemu-system-x86_64: -netdev user,id=n0,hostfwd=tcp:127.0.0.1:40001-:22: Address already in use"
        ));
        for other in [
            "",
            "qemu-system-x86_64: -drive file=/x.qcow2: Could not open '/x.qcow2': No such file or directory",
            "qemu-system-x86_64: -chardev socket,id=serial0,path=/r/m1.console: Failed to bind socket: Address already in use",
            "qemu-system-x86_64: terminating on signal 15 from pid 1",
        ] {
            assert!(!host_port_taken(other), "{other}");
        }
    }

    #[test]
    fn sockets_pidfile_and_console_log_are_on_the_command_line() {
        let spec = VmSpec {
            disk: "/r/m1.qcow2".into(),
            disk_format: "qcow2".into(),
            seed: None,
            memory_mb: 512,
            cpus: 1,
            forwards: vec![(40022, 22)],
            serial_log: "/r/m1.serial.log".into(),
            extra_args: Vec::new(),
            forward_to: Some("10.0.0.11".into()),
            nic0_mac: None,
            stderr_log: None,
            console_socket: Some("/r/m1,x.console".into()),
            qmp_socket: Some("/r/m1.qmp".into()),
            pidfile: Some("/r/m1.pid".into()),
            data_disk: None,
        };
        let c = qemu_command(&spec, Accel::Tcg);
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let after = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| args[i + 1].clone())
                .unwrap_or_else(|| panic!("no {flag} in {args:?}"))
        };
        assert_eq!(
            after("-chardev"),
            "socket,id=serial0,path=/r/m1,,x.console,server=on,wait=off,logfile=/r/m1.serial.log"
        );
        assert_eq!(after("-serial"), "chardev:serial0");
        assert_eq!(after("-qmp"), "unix:/r/m1.qmp,server=on,wait=off");
        assert_eq!(after("-pidfile"), "/r/m1.pid");
        assert!(after("-netdev").contains("hostfwd=tcp:127.0.0.1:40022-10.0.0.11:22"));
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(64).unwrap();
        let mut unique = ports.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
    }

    #[test]
    fn a_failed_kvm_probe_is_remembered_only_under_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let m = KvmMemory {
            path: dir.path().join("run/kvm-probe-failed"),
            key: "boot-a /usr/bin/qemu 1 2".into(),
        };
        assert!(!m.failed_before(), "nothing recorded yet");
        m.record_failure();
        assert!(m.failed_before());
        let other_boot = KvmMemory {
            path: m.path.clone(),
            key: "boot-b /usr/bin/qemu 1 2".into(),
        };
        assert!(!other_boot.failed_before(), "a host reboot probes again");
        let other_qemu = KvmMemory {
            path: m.path.clone(),
            key: "boot-a /usr/bin/qemu 1 3".into(),
        };
        assert!(
            !other_qemu.failed_before(),
            "another QEMU binary probes again"
        );
    }
}
