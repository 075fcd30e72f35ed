//! `mesobake lab`: a whole cluster from cluster.toml, booted locally under QEMU.
//!
//! Every VM gets two NICs. NIC 1 is QEMU user networking with `restrict=on`: the guest
//! reaches nothing, and the host reaches the node's service ports through `hostfwd` on
//! 127.0.0.1 (to the node's cluster address, where Mesos binds). NIC 2 joins a private
//! L2 segment shared by the cluster's VMs: a QEMU `socket` netdev on a multicast group
//! bound to 127.0.0.1, so frames travel over the host's loopback only and never leave
//! this machine. Nodes get static addresses on NIC 2 from network-config (matched by a
//! MAC derived from cluster and node name); those are the cluster addresses. The nodes'
//! firewall admits only the cluster networks to the cluster's ports, so each seed names
//! NIC 1's MAC in `MESOBAKE_TRUSTED_MACS`: the host's probes arrive through it.
//!
//! State lives in a run dir beside cluster.toml (`.mesobake-lab/<name>/`): `state.json`
//! (PIDs, ports, addresses), per-VM qcow2 overlays backed by the role images (which are
//! never written), seed ISOs (0600: they carry the lab's secrets), serial logs and
//! `secrets/` (see [`secrets_dir`]). A PID counts as ours only while
//! `/proc/PID/cmdline` is still a QEMU running that VM's overlay, so `up` twice starts no
//! duplicates, `down` stops exactly its own processes, and a crashed VM shows as down.

mod addresses;
pub use addresses::LabMember;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::probe;
use super::qemu::{self, Accel, VmSpec};
use super::verify::parse_configured;
use crate::cluster::Cluster;
use crate::profile::Service;
use crate::run::Cmd;
use crate::seed::secrets::{self, Credential, Secrets};
use crate::seed::NetIface;
use crate::service::{ServiceSpec, SERVICES};

/// Default memory per VM: four of them, plus the host, fit a 24 GiB machine many times
/// over; ZooKeeper, the Mesos daemons and cloud-init need about 400 MB together.
pub const DEFAULT_MEMORY_MB: u32 = 1536;
/// Default vCPUs per VM: on a 2-core host, four TCG VMs share the cores anyway.
pub const DEFAULT_CPUS: u32 = 1;

/// The address the user-networking NIC gets inside each guest (QEMU's DHCP default).
const MGMT_ADDR: &str = "10.0.2.15/24";

/// What `lab up` needs beyond the topology.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Directory with `<role>.qcow2` images from `mesobake build`.
    pub images: PathBuf,
    /// Memory per VM in MiB.
    pub memory_mb: u32,
    /// vCPUs per VM.
    pub cpus: u32,
    /// Forced acceleration (None: probe KVM once, fall back to TCG).
    pub accel: Option<Accel>,
    /// Wait for the cluster (ZooKeeper quorum, every node configured); None: return
    /// once the VMs are started.
    pub wait: Option<Duration>,
}

/// One VM as recorded in state.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    /// VM name.
    pub name: String,
    /// Role (profile).
    pub role: String,
    /// The role's services.
    pub services: Vec<Service>,
    /// Cluster address.
    pub ip: String,
    /// QEMU's PID while it runs.
    pub pid: Option<u32>,
    /// Guest port -> host port on 127.0.0.1.
    pub ports: BTreeMap<u16, u16>,
    /// The overlay disk (its path also identifies the QEMU process).
    pub overlay: PathBuf,
    /// The serial console log.
    pub serial: PathBuf,
    /// When QEMU was started (seconds since the epoch).
    pub started: u64,
}

/// state.json.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The cluster name.
    pub cluster: String,
    /// The private network's multicast group and port.
    pub mcast: String,
    /// The acceleration in use.
    pub accel: String,
    /// The VMs.
    pub vms: Vec<VmState>,
}

/// The run dir of a cluster: `.mesobake-lab/<name>/` beside its cluster.toml.
pub fn run_dir(c: &Cluster) -> PathBuf {
    let dir = c
        .path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    dir.join(".mesobake-lab").join(&c.name)
}

fn load_state(dir: &Path) -> Result<Option<State>> {
    let p = dir.join("state.json");
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn save_state(dir: &Path, s: &State) -> Result<()> {
    let tmp = dir.join(".state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)?;
    std::fs::rename(&tmp, dir.join("state.json")).context("saving the lab state")
}

/// Whether `pid` is still the QEMU that runs `overlay`: PIDs get reused, so the PID alone
/// proves nothing.
pub fn is_our_qemu(pid: u32, overlay: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // A zombie has exited; its cmdline is empty anyway, but say so explicitly.
    if stat
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z'))
    {
        return false;
    }
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = cmd
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let needle = format!("file={},", overlay.display());
    args.first()
        .is_some_and(|a| a.ends_with("qemu-system-x86_64"))
        && args.iter().any(|a| a.starts_with(&needle))
}

/// The private segment: a multicast group and port derived from the run dir, so two
/// labs on one machine do not share a segment.
fn mcast_for(dir: &Path) -> String {
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let h = Sha256::digest(canon.to_string_lossy().as_bytes());
    let port = 20000 + (u16::from_be_bytes([h[3], h[4]]) % 30000);
    format!("230.{}.{}.{}:{port}", h[0], h[1], h[2].max(1))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The MAC of every lab VM's management NIC, the QEMU user-networking NIC through which
/// the host's `hostfwd` probes arrive. One per cluster: each VM's user network is its own
/// (a NIC on it meets no other VM), and one MAC lets every instance of a group keep one
/// user-data, whose `MESOBAKE_TRUSTED_MACS` names it so the node's firewall admits what
/// comes through that NIC. (`/` is in no node name, so no node's derived MAC is this.)
pub(crate) fn mgmt_mac(cluster: &str) -> String {
    crate::cluster::derived_mac(cluster, "/mgmt")
}

fn start_vm(
    c: &Cluster,
    dir: &Path,
    m: &LabMember,
    opts: &UpOptions,
    mcast: &str,
    accel: Option<Accel>,
) -> Result<(VmState, Accel)> {
    let image = opts.images.join(format!("{}.qcow2", m.role));
    if !image.is_file() {
        bail!(
            "{}: no image for role {} (build it with: mesobake build profiles/{}.toml --out {})",
            image.display(),
            m.role,
            m.role,
            opts.images.display()
        );
    }
    let image = image.canonicalize()?;
    let overlay = dir.join(format!("{}.qcow2", m.name));
    if !overlay.exists() {
        // A thin overlay per VM, backed by the role image (which is never written).
        Cmd::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&image)
            .arg(&overlay)
            .run()?;
    }
    let mut seed = m.seed.clone();
    let nic0 = mgmt_mac(&c.name);
    seed.network.insert(
        0,
        NetIface {
            id: "lab0".into(),
            mac: nic0.clone(),
            address: Some(MGMT_ADDR.into()),
            gateway: None,
            dns: Vec::new(),
        },
    );
    let iso = dir.join(format!("{}-seed.iso", m.name));
    seed.write_iso(&iso)?;
    let guest: Vec<u16> = SERVICES
        .iter()
        .filter(|s| m.services.contains(&s.service))
        .map(|s| s.port)
        .collect();
    let ports: BTreeMap<u16, u16> = guest
        .iter()
        .copied()
        .zip(qemu::free_ports(guest.len())?)
        .collect();
    let serial = dir.join(format!("{}.serial.log", m.name));
    let spec = VmSpec {
        disk: overlay.clone(),
        disk_format: "qcow2".into(),
        seed: Some(iso),
        memory_mb: opts.memory_mb,
        cpus: opts.cpus,
        forwards: ports.iter().map(|(g, h)| (*h, *g)).collect(),
        serial_log: serial.clone(),
        extra_args: vec![
            "-netdev".into(),
            format!("socket,id=n1,mcast={mcast},localaddr=127.0.0.1"),
            "-device".into(),
            format!("virtio-net-pci,netdev=n1,mac={}", m.mac),
        ],
        forward_to: Some(m.ip.to_string()),
        nic0_mac: Some(nic0),
        stderr_log: Some(dir.join(format!("{}.qemu.log", m.name))),
        console_socket: None,
        qmp_socket: None,
        pidfile: None,
    };
    // The launcher opens disks with snapshot=on, so even the overlay stays as created
    // and a restarted VM boots fresh. The overlay's own path is what tells this VM's
    // QEMU apart from others booting the same role image.
    let vm = match accel {
        Some(a) => qemu::Vm::start(&spec, a)?,
        None => qemu::start_auto(&spec, None)?,
    };
    let used = vm.accel;
    let pid = vm.detach();
    Ok((
        VmState {
            name: m.name.clone(),
            role: m.role.clone(),
            services: m.services.clone(),
            ip: m.ip.to_string(),
            pid,
            ports,
            overlay,
            serial,
            started: now(),
        },
        used,
    ))
}

/// The lab's secrets: `secrets/` in its run dir, made on the first `lab up` the way
/// `mesobake seed` makes them, kept by `lab down` and reused by the next `lab up`.
pub fn secrets_dir(c: &Cluster) -> PathBuf {
    secrets::dir_in(&run_dir(c))
}

/// The operator credential of a running lab, for the probes: from its `secrets/` when
/// there are any.
pub fn operator(c: &Cluster) -> Result<Option<Credential>> {
    Secrets::load_operator(&secrets_dir(c))
}

/// `lab up`: starts every VM that is not already running, then (with `wait`) waits for
/// the ZooKeeper quorum and every node's configured line, and prints how long each took.
/// The VMs' seeds come from the same code as `mesobake seed`'s, so they carry the lab's
/// secrets (authentication on) unless the topology says `[security] auth = false`.
pub fn up(c: &Cluster, opts: &UpOptions) -> Result<State> {
    let dir = run_dir(c);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut c = c.clone();
    if c.auth {
        let (s, _) = secrets::load_or_create(&secrets_dir(&c), false)?;
        c.secrets = Some(s);
    }
    let c = &c;
    let members = c.lab_members()?;
    let mut state = load_state(&dir)?.unwrap_or_default();
    if state.mcast.is_empty() {
        state.mcast = mcast_for(&dir);
    }
    state.cluster = c.name.clone();
    let mut accel = opts.accel.or(match state.accel.as_str() {
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        _ => None,
    });
    let t0 = Instant::now();
    for m in &members {
        crate::run::check_interrupted()?;
        if let Some(v) = state.vms.iter().find(|v| v.name == m.name) {
            if v.pid.is_some_and(|p| is_our_qemu(p, &v.overlay)) {
                eprintln!(
                    "mesobake: lab: {} already running (pid {})",
                    m.name,
                    v.pid.unwrap_or(0)
                );
                continue;
            }
        }
        let (vm, used) = start_vm(c, &dir, m, opts, &state.mcast.clone(), accel)?;
        accel = Some(used);
        state.accel = used.name().into();
        eprintln!(
            "mesobake: lab: started {} ({}, {}, pid {})",
            m.name,
            m.role,
            m.ip,
            vm.pid.unwrap_or(0)
        );
        state.vms.retain(|v| v.name != m.name);
        state.vms.push(vm);
        save_state(&dir, &state)?;
    }
    // VMs of nodes no longer in the topology are left alone but reported.
    for v in &state.vms {
        if !members.iter().any(|m| m.name == v.name) {
            eprintln!(
                "mesobake: lab: {} is not in {} any more; `lab down` stops it",
                v.name,
                c.path.display()
            );
        }
    }
    save_state(&dir, &state)?;
    if let Some(timeout) = opts.wait {
        wait_ready(&state, t0, timeout)?;
    }
    Ok(state)
}

/// The configurator's status line in a serial log: Ok(Some(ip)) when configured,
/// Err when it reported a failure, Ok(None) while neither.
fn configured(serial: &Path) -> Result<Option<String>> {
    let text = std::fs::read(serial)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let mut last = Ok(None);
    for l in text.lines() {
        if let Some(c) = parse_configured(l) {
            last = Ok(Some(c.ip));
        } else if let Some(i) = l.find("mesobake: configuration FAILED") {
            last = Err(anyhow::anyhow!("{}", l[i..].trim_end_matches('\r')));
        }
    }
    last
}

fn wait_ready(state: &State, t0: Instant, timeout: Duration) -> Result<()> {
    let zk: Vec<&VmState> = state
        .vms
        .iter()
        .filter(|v| v.services.contains(&Service::Zookeeper))
        .collect();
    let mut quorum_at = None;
    let mut configured_at = None;
    loop {
        crate::run::check_interrupted()?;
        for v in &state.vms {
            if !v.pid.is_some_and(|p| is_our_qemu(p, &v.overlay)) {
                bail!(
                    "{}: QEMU is not running any more (serial log {}, QEMU log beside it)",
                    v.name,
                    v.serial.display()
                );
            }
        }
        if quorum_at.is_none() {
            let modes: Vec<String> = zk
                .iter()
                .map(|v| probe::zk_mode(v.ports[&2181]).unwrap_or_default())
                .collect();
            let leaders = modes.iter().filter(|m| *m == "leader").count();
            let followers = modes.iter().filter(|m| *m == "follower").count();
            let ok = if zk.len() == 1 {
                modes[0] == "standalone"
            } else {
                leaders == 1 && followers == zk.len() - 1
            };
            if ok {
                let s = t0.elapsed().as_secs_f64();
                eprintln!(
                    "mesobake: lab: ZooKeeper quorum ({} members: {}) after {s:.0} s",
                    zk.len(),
                    modes.join(", ")
                );
                quorum_at = Some(s);
            }
        }
        if configured_at.is_none() {
            let mut all = true;
            for v in &state.vms {
                match configured(&v.serial) {
                    Ok(Some(_)) => {}
                    Ok(None) => all = false,
                    Err(e) => bail!("{}: {e} (serial log {})", v.name, v.serial.display()),
                }
            }
            if all {
                let s = t0.elapsed().as_secs_f64();
                eprintln!(
                    "mesobake: lab: all {} nodes configured after {s:.0} s",
                    state.vms.len()
                );
                configured_at = Some(s);
            }
        }
        if quorum_at.is_some() && configured_at.is_some() {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            let waiting: Vec<String> = state
                .vms
                .iter()
                .filter(|v| !matches!(configured(&v.serial), Ok(Some(_))))
                .map(|v| format!("{} (serial log {})", v.name, v.serial.display()))
                .collect();
            bail!(
                "timed out after {} s: ZooKeeper quorum {}, not configured: {}",
                timeout.as_secs(),
                if quorum_at.is_some() {
                    "reached"
                } else {
                    "not reached"
                },
                if waiting.is_empty() {
                    "none".into()
                } else {
                    waiting.join(", ")
                }
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// One service's health as `lab status` sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// The service.
    pub service: Service,
    /// The host port on 127.0.0.1.
    pub port: u16,
    /// Whether it answered as it should.
    pub ok: bool,
    /// What it said (ZooKeeper's mode; the master's zk and quorum flags; ...).
    pub detail: String,
    /// The daemon's flags, for masters and agents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<serde_json::Value>,
    /// What the daemon says of the cluster: a master's leadership and registered agents,
    /// an agent's ID and the master it registered with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<serde_json::Value>,
}

/// One row of `lab status`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// VM name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Cluster address.
    pub ip: String,
    /// Whether its QEMU runs.
    pub running: bool,
    /// "yes", "no", or "FAILED: ..." from the serial console.
    pub configured: String,
    /// Each service's health (only checked while running).
    pub services: Vec<Health>,
    /// Guest port -> host port.
    pub ports: BTreeMap<u16, u16>,
}

fn check(spec: &ServiceSpec, port: u16, auth: Option<&Credential>) -> Health {
    let svc = spec.service;
    let r = probe::read_as(spec.probe, port, auth).map(|r| (r.detail, r.flags, Some(r.state)));
    match r {
        Ok((detail, flags, state)) => Health {
            service: svc,
            port,
            ok: true,
            detail,
            flags,
            state,
        },
        Err(e) => Health {
            service: svc,
            port,
            ok: false,
            detail: format!("down ({e:#})"),
            flags: None,
            state: None,
        },
    }
}

/// `lab status` found no lab state for the topology: an empty state, not a failure.
#[derive(Debug, thiserror::Error)]
#[error("no lab is running for {} (no {}): start one with `mesobake lab up`", cluster.display(), state.display())]
pub struct NoLab {
    /// The topology.
    pub cluster: PathBuf,
    /// The state file that is not there.
    pub state: PathBuf,
}

/// `lab status`.
pub fn status(c: &Cluster) -> Result<Vec<NodeStatus>> {
    let dir = run_dir(c);
    let Some(state) = load_state(&dir)? else {
        bail!(NoLab {
            cluster: c.path.clone(),
            state: dir.join("state.json"),
        });
    };
    let auth = operator(c)?;
    let mut out = Vec::new();
    for v in &state.vms {
        let running = v.pid.is_some_and(|p| is_our_qemu(p, &v.overlay));
        let configured = match configured(&v.serial) {
            Ok(Some(_)) => "yes".to_string(),
            Ok(None) => "no".to_string(),
            Err(e) => format!("{e}"),
        };
        let services = if running {
            SERVICES
                .iter()
                .filter(|s| v.services.contains(&s.service))
                .map(|s| check(s, v.ports[&s.port], auth.as_ref()))
                .collect()
        } else {
            Vec::new()
        };
        out.push(NodeStatus {
            name: v.name.clone(),
            role: v.role.clone(),
            ip: v.ip.clone(),
            running,
            configured,
            services,
            ports: v.ports.clone(),
        });
    }
    Ok(out)
}

/// The `lab status` table.
pub fn status_table(rows: &[NodeStatus]) -> String {
    let mut t = crate::output::Table::new(&[
        "node",
        "role",
        "ip",
        "state",
        "configured",
        "services (host port on 127.0.0.1: health)",
    ]);
    for r in rows {
        let svc: Vec<String> = if r.running {
            r.services
                .iter()
                .map(|h| {
                    let name = h.service.name();
                    let d = if h.ok {
                        h.detail.clone()
                    } else {
                        "down".into()
                    };
                    format!("{name} :{} {d}", h.port)
                })
                .collect()
        } else {
            vec!["-".into()]
        };
        t.row(vec![
            r.name.clone(),
            r.role.clone(),
            r.ip.clone(),
            if r.running { "up" } else { "down" }.into(),
            r.configured.clone(),
            svc.join("; "),
        ]);
    }
    t.render()
}

/// `lab down`: stops the lab's QEMU processes, by PID and only those, then removes the
/// overlays, seeds and state (serial logs stay for a post-mortem). Returns the names
/// of the VMs it stopped.
pub fn down(c: &Cluster) -> Result<Vec<String>> {
    let dir = run_dir(c);
    let Some(state) = load_state(&dir)? else {
        return Ok(Vec::new());
    };
    let mut stopped = Vec::new();
    for v in &state.vms {
        let Some(pid) = v.pid.filter(|p| is_our_qemu(*p, &v.overlay)) else {
            continue;
        };
        let p = rustix::process::Pid::from_raw(pid as i32).context("bad pid")?;
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        let t = Instant::now();
        while is_our_qemu(pid, &v.overlay) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if is_our_qemu(pid, &v.overlay) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            let t = Instant::now();
            while is_our_qemu(pid, &v.overlay) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if is_our_qemu(pid, &v.overlay) {
            bail!("{}: QEMU pid {pid} did not stop", v.name);
        }
        stopped.push(v.name.clone());
    }
    for v in &state.vms {
        let _ = std::fs::remove_file(&v.overlay);
        let _ = std::fs::remove_file(dir.join(format!("{}-seed.iso", v.name)));
    }
    std::fs::remove_file(dir.join("state.json")).context("removing the lab state")?;
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_that_is_not_our_qemu_is_not_ours() {
        let me = std::process::id();
        assert!(!is_our_qemu(me, Path::new("/nonexistent/x.qcow2")));
        assert!(!is_our_qemu(u32::MAX - 1, Path::new("/x.qcow2")));
    }

    /// A recorded PID that now belongs to some other process (PID reuse, or a VM that
    /// crashed): status shows the VM as down, and down leaves that process alone.
    #[test]
    fn a_reused_pid_is_down_and_never_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let topo = tmp.path().join("cluster.toml");
        std::fs::write(
            &topo,
            "name = \"t\"\n[network]\ncidr = \"10.9.0.0/24\"\n[[node]]\nname = \"m1\"\nrole = \"master\"\nip = \"10.9.0.11\"\n",
        )
        .unwrap();
        let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let c = crate::cluster::load(&topo, &profiles).unwrap();
        let dir = run_dir(&c);
        std::fs::create_dir_all(&dir).unwrap();
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let state = State {
            cluster: "t".into(),
            mcast: mcast_for(&dir),
            accel: "tcg".into(),
            vms: vec![VmState {
                name: "m1".into(),
                role: "master".into(),
                services: vec![Service::Zookeeper, Service::Master],
                ip: "10.9.0.11".into(),
                pid: Some(other.id()),
                ports: BTreeMap::new(),
                overlay: dir.join("m1.qcow2"),
                serial: dir.join("m1.serial.log"),
                started: 0,
            }],
        };
        save_state(&dir, &state).unwrap();
        let rows = status(&c).unwrap();
        assert!(!rows[0].running);
        assert!(status_table(&rows).contains(" down "));
        assert!(down(&c).unwrap().is_empty());
        assert!(
            other.try_wait().unwrap().is_none(),
            "down killed a process that is not its QEMU"
        );
        other.kill().unwrap();
        other.wait().unwrap();
        assert!(load_state(&dir).unwrap().is_none());
    }

    #[test]
    fn mcast_groups_differ_per_run_dir() {
        let a = mcast_for(Path::new("/a/.mesobake-lab/x"));
        let b = mcast_for(Path::new("/b/.mesobake-lab/x"));
        assert_ne!(a, b);
        assert!(a.starts_with("230."));
    }
}
