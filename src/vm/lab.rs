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
//!
//! Per VM, QEMU also keeps in the run dir its own PID file (`NAME.pid`), a QMP socket
//! (`NAME.qmp`) and the serial console's socket (`NAME.console`, logged to the serial log
//! all the while). Guest port 22 is forwarded like the service ports, for `lab ssh`.
//! Nodes that run ZooKeeper or a Mesos master also get a data disk (`NAME-data.img`,
//! [`data`]) that outlives their overlay, so `lab replace` ([`replace`]) can move a node
//! onto a new image without losing its state.
//! `up`, `down`, `kill` and `replace` take the lab's lock ([`lock`]) while they change
//! anything.

mod addresses;
pub mod console;
pub mod data;
mod lock;
mod replace;
pub mod ssh;
pub use addresses::LabMember;
pub use replace::{replace, ReplaceOptions, Replaced};

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::probe;
use super::qemu::{self, Accel, PortTaken, VmSpec};
use super::qmp::Qmp;
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

/// The guest's SSH port, forwarded on every VM for `lab ssh`.
pub const SSH_PORT: u16 = 22;

/// How long `lab down` lets the guests power down after the ACPI power button before it
/// kills their QEMU. Lab VMs under TCG share two cores: stopping Mesos, Marathon,
/// ZooKeeper and systemd takes a guest tens of seconds there, and all VMs shut down at
/// once. A guest that ignores the button (still booting, before logind listens) costs
/// this much and is then killed; its disk is a throwaway overlay, so nothing is lost.
pub const POWERDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times `lab up` starts a VM with new host ports when QEMU finds one taken:
/// [`qemu::free_ports`] frees its ports before QEMU binds them, so another process can
/// take one in between; two such races in a row are already unlikely.
const PORT_ATTEMPTS: u32 = 5;

/// How long a freshly started QEMU may take to answer QMP, which it does once every
/// device and host forward is set up (well under a second on an idle host).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest unix socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

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
    /// The PID file QEMU writes (None in a state from before QEMU wrote one).
    #[serde(default)]
    pub pidfile: Option<PathBuf>,
    /// QEMU's QMP socket.
    #[serde(default)]
    pub qmp: Option<PathBuf>,
    /// The serial console's socket.
    #[serde(default)]
    pub console: Option<PathBuf>,
    /// cloud-init's default user on the VM's image, from the distribution family in the
    /// images' manifest.json (see [`ssh`]).
    #[serde(default)]
    pub login_user: Option<String>,
    /// The image the overlay is backed by (`lab replace` changes it).
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// The node's data disk ([`data`]), for nodes whose state outlives the image.
    #[serde(default)]
    pub data: Option<PathBuf>,
}

impl VmState {
    /// The PID of this VM's QEMU while it runs: the one in QEMU's own PID file (the
    /// recorded PID for a state from before PID files), and only while that process is
    /// still QEMU on this VM's overlay ([`is_our_qemu`]). A QEMU that was killed leaves
    /// its PID file behind; the check makes that stale PID count for nothing.
    pub fn live_pid(&self) -> Option<u32> {
        let from_file = self.pidfile.as_ref().and_then(|p| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
        });
        [from_file, self.pid]
            .into_iter()
            .flatten()
            .find(|p| is_our_qemu(*p, &self.overlay))
    }

    /// Whether its QEMU runs.
    pub fn running(&self) -> bool {
        self.live_pid().is_some()
    }

    /// The host port forwarded to the guest's SSH port.
    pub fn ssh_port(&self) -> Option<u16> {
        self.ports.get(&SSH_PORT).copied()
    }

    /// What a killed QEMU leaves in the run dir (a clean exit removes them itself).
    fn qemu_leftovers(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.pidfile, &self.qmp, &self.console]
            .into_iter()
            .flatten()
    }

    /// Each service of its role as `lab status` checks it (`auth`: the operator's
    /// credential, for Marathon).
    fn health(&self, auth: Option<&Credential>) -> Vec<Health> {
        SERVICES
            .iter()
            .filter(|s| self.services.contains(&s.service))
            .map(|s| check(s, self.ports[&s.port], auth))
            .collect()
    }
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

impl State {
    /// The acceleration the lab's VMs run with, once one has started.
    fn accel(&self) -> Option<Accel> {
        match self.accel.as_str() {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }
}

/// The topology as the lab boots it: with the lab's secrets (made on first use) unless
/// `[security] auth = false`, and the default gateway as each role's base renders it
/// (its cloud-init, from the manifest.json in `images`; gateway4 without one).
fn lab_cluster(c: &Cluster, images: &Path) -> Result<Cluster> {
    let mut c = c.clone();
    if c.auth {
        let (s, _) = secrets::load_or_create(&secrets_dir(&c), false)?;
        c.secrets = Some(s);
    }
    c.read_route_styles(images, false)?;
    Ok(c)
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

/// A run-dir file QEMU binds a unix socket at: the kernel takes at most
/// [`MAX_SOCKET_PATH`] bytes, so a deep run dir fails here, clearly, not in QEMU.
fn socket_path(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if p.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "{}: too long for a unix socket ({} bytes, at most {MAX_SOCKET_PATH}); move the \
             topology to a shorter path (the lab's run dir is beside it)",
            p.display(),
            p.as_os_str().len()
        );
    }
    Ok(p)
}

/// The role's image in `--images`, as an absolute path.
fn role_image(m: &LabMember, opts: &UpOptions) -> Result<PathBuf> {
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
    Ok(image.canonicalize()?)
}

/// The disks of a VM: the path of its overlay in the run dir, and the image it is backed
/// by. An overlay that is already there is kept with the image it was made on (a node
/// `lab replace` moved to another image stays there when `lab up` restarts it).
fn overlay_for(
    dir: &Path,
    m: &LabMember,
    recorded: Option<&VmState>,
    opts: &UpOptions,
) -> Result<(PathBuf, PathBuf)> {
    let overlay = dir.join(format!("{}.qcow2", m.name));
    if overlay.exists() {
        if let Some(image) = recorded.and_then(|v| v.image.clone()) {
            return Ok((overlay, image));
        }
    }
    Ok((overlay, role_image(m, opts)?))
}

/// A VM's disks in the run dir: its overlay on `image` (kept across restarts), its data
/// disk when its role keeps state ([`data`]), and its seed ISO (written anew). Returns
/// the overlay, the seed and the data disk.
fn prepare_disks(
    c: &Cluster,
    dir: &Path,
    m: &LabMember,
    overlay: &Path,
    image: &Path,
) -> Result<(PathBuf, Option<PathBuf>)> {
    if !overlay.exists() {
        let format = crate::export::qemu_info(image)?["format"]
            .as_str()
            .unwrap_or("qcow2")
            .to_string();
        // A thin overlay per VM, backed by the image (which is never written).
        Cmd::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", &format, "-b"])
            .arg(image)
            .arg(overlay)
            .run()?;
    }
    let data = if data::wanted(&m.services) {
        Some(data::ensure(dir, &m.name)?)
    } else {
        None
    };
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
    Ok((iso, data))
}

/// Starts VM `m` on `overlay` (made on `image` when it is not there yet).
fn start_vm(
    c: &Cluster,
    dir: &Path,
    m: &LabMember,
    (overlay, image): (PathBuf, PathBuf),
    opts: &UpOptions,
    mcast: &str,
    accel: Option<Accel>,
) -> Result<(VmState, Accel)> {
    let (iso, data) = prepare_disks(c, dir, m, &overlay, &image)?;
    let nic0 = mgmt_mac(&c.name);
    let guest: Vec<u16> = SERVICES
        .iter()
        .filter(|s| m.services.contains(&s.service))
        .map(|s| s.port)
        .chain([SSH_PORT])
        .collect();
    let serial = dir.join(format!("{}.serial.log", m.name));
    let qmp = socket_path(dir, &format!("{}.qmp", m.name))?;
    let console = socket_path(dir, &format!("{}.console", m.name))?;
    let pidfile = dir.join(format!("{}.pid", m.name));
    let mut spec = VmSpec {
        disk: overlay.clone(),
        disk_format: "qcow2".into(),
        seed: Some(iso),
        memory_mb: opts.memory_mb,
        cpus: opts.cpus,
        forwards: Vec::new(),
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
        console_socket: Some(console.clone()),
        qmp_socket: Some(qmp.clone()),
        pidfile: Some(pidfile.clone()),
        data_disk: data.clone(),
    };
    let mut attempt = 1;
    let (ports, pid, used) = loop {
        let ports: BTreeMap<u16, u16> = guest
            .iter()
            .copied()
            .zip(qemu::free_ports(guest.len())?)
            .collect();
        spec.forwards = ports.iter().map(|(g, h)| (*h, *g)).collect();
        match launch(&spec, accel) {
            Ok((pid, used)) => break (ports, pid, used),
            Err(e) if e.is::<PortTaken>() && attempt < PORT_ATTEMPTS => {
                eprintln!(
                    "mesobake: lab: {}: a forwarded port was taken as QEMU started; \
                     starting it again with new ports (attempt {} of {PORT_ATTEMPTS})",
                    m.name,
                    attempt + 1
                );
                attempt += 1;
            }
            Err(e) => return Err(e).with_context(|| format!("starting {}", m.name)),
        }
    };
    Ok((
        VmState {
            name: m.name.clone(),
            role: m.role.clone(),
            services: m.services.clone(),
            ip: m.ip.to_string(),
            pid: Some(pid),
            ports,
            overlay,
            serial,
            started: now(),
            pidfile: Some(pidfile),
            qmp: Some(qmp),
            console: Some(console),
            login_user: ssh::user_from_manifest(image.parent().unwrap_or(&opts.images), &m.role),
            image: Some(image),
            data,
        },
        used,
    ))
}

/// Starts QEMU and waits until it runs: until it answers QMP, which it does only once
/// every device and host forward is set up, so a taken port shows here (as
/// [`PortTaken`]) and not later as a VM that silently is not there. Returns QEMU's PID
/// (from its PID file) and the acceleration it runs with.
fn launch(spec: &VmSpec, accel: Option<Accel>) -> Result<(u32, Accel)> {
    // The launcher opens disks with snapshot=on, so even the overlay stays as created
    // and a restarted VM boots fresh. The overlay's own path is what tells this VM's
    // QEMU apart from others booting the same role image.
    let mut vm = match accel {
        Some(a) => qemu::Vm::start(spec, a)?,
        None => qemu::start_auto(spec, None)?,
    };
    let qmp = spec
        .qmp_socket
        .as_deref()
        .expect("lab VMs have a QMP socket");
    let t = Instant::now();
    loop {
        crate::run::check_interrupted()?;
        vm.check_running()?;
        if Qmp::connect(qmp, Duration::from_secs(5)).is_ok() {
            break;
        }
        if t.elapsed() > START_TIMEOUT {
            bail!(
                "QEMU did not answer on its QMP socket {} within {} s",
                qmp.display(),
                START_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let child = vm.pid();
    let used = vm.accel;
    let from_file = spec.pidfile.as_ref().and_then(|p| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
    });
    let pid = from_file.or(child).context("QEMU has no PID")?;
    vm.detach();
    Ok((pid, used))
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
/// Starting happens under the lab's lock; waiting does not (see [`lock`]).
pub fn up(c: &Cluster, opts: &UpOptions) -> Result<State> {
    let dir = run_dir(c);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = lock::LabLock::acquire(&dir, "up")?;
    let c = &lab_cluster(c, &opts.images)?;
    let members = c.lab_members()?;
    let mut state = load_state(&dir)?.unwrap_or_default();
    if state.mcast.is_empty() {
        state.mcast = mcast_for(&dir);
    }
    state.cluster = c.name.clone();
    let mut accel = opts.accel.or(state.accel());
    let t0 = Instant::now();
    for m in &members {
        crate::run::check_interrupted()?;
        let recorded = state.vms.iter().find(|v| v.name == m.name);
        if let Some(pid) = recorded.and_then(VmState::live_pid) {
            eprintln!("mesobake: lab: {} already running (pid {pid})", m.name);
            continue;
        }
        let disks = overlay_for(&dir, m, recorded, opts)?;
        let (vm, used) = start_vm(c, &dir, m, disks, opts, &state.mcast.clone(), accel)?;
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
    drop(lock);
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
            if !v.running() {
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
    /// "up" or "down", as the table says it: down once its QEMU is gone, however it went
    /// (`lab kill`, a crash, a guest that powered off).
    pub state: &'static str,
    /// The host port on 127.0.0.1 forwarded to the guest's SSH port (`lab ssh` uses it);
    /// None for a VM started before the lab forwarded SSH.
    pub ssh_port: Option<u16>,
    /// "yes", "no", or "FAILED: ..." from the serial console.
    pub configured: String,
    /// Each service's health (only checked while running).
    pub services: Vec<Health>,
    /// Guest port -> host port.
    pub ports: BTreeMap<u16, u16>,
    /// The image the node runs (`lab replace` changes it).
    pub image: Option<PathBuf>,
    /// Its data disk, for a node whose state outlives the image ([`data`]).
    pub data_disk: Option<PathBuf>,
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
        let running = v.running();
        let configured = match configured(&v.serial) {
            Ok(Some(_)) => "yes".to_string(),
            Ok(None) => "no".to_string(),
            Err(e) => format!("{e}"),
        };
        let services = if running {
            v.health(auth.as_ref())
        } else {
            Vec::new()
        };
        out.push(NodeStatus {
            name: v.name.clone(),
            role: v.role.clone(),
            ip: v.ip.clone(),
            running,
            state: if running { "up" } else { "down" },
            ssh_port: v.ssh_port(),
            configured,
            services,
            ports: v.ports.clone(),
            image: v.image.clone(),
            data_disk: v.data.clone(),
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
        "ssh",
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
            r.state.into(),
            r.ssh_port
                .map(|p| format!(":{p}"))
                .unwrap_or_else(|| "-".into()),
            r.configured.clone(),
            svc.join("; "),
        ]);
    }
    t.render()
}

/// Sends `sig` to `pid` if it is still this VM's QEMU.
fn signal(v: &VmState, pid: u32, sig: rustix::process::Signal) {
    if !is_our_qemu(pid, &v.overlay) {
        return;
    }
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Waits until none of `vms` is its QEMU any more, or `limit` passes; returns those left.
fn wait_gone(vms: Vec<(&VmState, u32)>, limit: Duration) -> Vec<(&VmState, u32)> {
    let t = Instant::now();
    let mut left = vms;
    loop {
        left.retain(|(v, pid)| is_our_qemu(*pid, &v.overlay));
        if left.is_empty() || t.elapsed() >= limit {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops QEMU processes at once: SIGTERM (QEMU exits, removing its PID file and
/// sockets), then SIGKILL for any that are still there 10 s later.
fn terminate(vms: Vec<(&VmState, u32)>) -> Result<()> {
    for (v, pid) in &vms {
        signal(v, *pid, rustix::process::Signal::TERM);
    }
    let left = wait_gone(vms, Duration::from_secs(10));
    for (v, pid) in &left {
        signal(v, *pid, rustix::process::Signal::KILL);
    }
    if let Some((v, pid)) = wait_gone(left, Duration::from_secs(10)).first() {
        bail!("{}: QEMU pid {pid} did not stop", v.name);
    }
    Ok(())
}

/// Powers the VMs down the way a machine is shut down: the ACPI power button through
/// QMP (`system_powerdown`), all at once, then up to [`POWERDOWN_TIMEOUT`] for their
/// QEMU to exit (the guest powers off, and `-no-reboot` QEMU ends with it). QEMU that
/// does not answer QMP, or is still there after the timeout, is stopped at once.
fn power_down(vms: Vec<(&VmState, u32)>) -> Result<()> {
    let mut asked = Vec::new();
    let mut now = Vec::new();
    for (v, pid) in vms {
        let pressed = v.qmp.as_deref().map(|q| {
            Qmp::connect(q, Duration::from_secs(5)).and_then(|mut s| s.execute("system_powerdown"))
        });
        match pressed {
            Some(Ok(_)) => asked.push((v, pid)),
            Some(Err(e)) => {
                eprintln!(
                    "mesobake: lab: {}: no power button ({e:#}); stopping its QEMU",
                    v.name
                );
                now.push((v, pid));
            }
            // A VM from before the lab had QMP.
            None => now.push((v, pid)),
        }
    }
    terminate(now)?;
    if asked.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = asked.iter().map(|(v, _)| v.name.as_str()).collect();
    eprintln!(
        "mesobake: lab: powering down {} (waiting up to {} s)",
        names.join(" "),
        POWERDOWN_TIMEOUT.as_secs()
    );
    let t = Instant::now();
    let mut left = asked;
    while !left.is_empty() && t.elapsed() < POWERDOWN_TIMEOUT {
        crate::run::check_interrupted()?;
        left = wait_gone(left, Duration::from_millis(500));
    }
    for (v, _) in &left {
        eprintln!(
            "mesobake: lab: {} did not power down within {} s; stopping its QEMU",
            v.name,
            POWERDOWN_TIMEOUT.as_secs()
        );
    }
    terminate(left)
}

/// `lab down`: powers the lab's VMs down (see [`power_down`]; by PID, only its own
/// QEMU processes), then removes the overlays, seeds, QEMU's leftovers and the state
/// (serial logs stay for a post-mortem, `secrets/` for the next `up`, and the data
/// disks too unless `purge`: the next `up` finds the masters' state where they left it).
/// Returns the names of the VMs it stopped.
pub fn down(c: &Cluster, purge: bool) -> Result<Vec<String>> {
    let dir = run_dir(c);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let _lock = lock::LabLock::acquire(&dir, "down")?;
    let Some(state) = load_state(&dir)? else {
        if purge {
            data::purge(&dir)?;
        }
        return Ok(Vec::new());
    };
    let running: Vec<(&VmState, u32)> = state
        .vms
        .iter()
        .filter_map(|v| v.live_pid().map(|p| (v, p)))
        .collect();
    let stopped = running.iter().map(|(v, _)| v.name.clone()).collect();
    power_down(running)?;
    for v in &state.vms {
        let _ = std::fs::remove_file(&v.overlay);
        let _ = std::fs::remove_file(dir.join(format!("{}-seed.iso", v.name)));
        for f in v.qemu_leftovers() {
            let _ = std::fs::remove_file(f);
        }
    }
    if purge {
        data::purge(&dir)?;
    }
    std::fs::remove_file(dir.join("state.json")).context("removing the lab state")?;
    Ok(stopped)
}

/// A node name that is not one of the lab's VMs.
#[derive(Debug, thiserror::Error)]
#[error("no node {name} in the lab of {}; its nodes: {}", cluster.display(), nodes.join(", "))]
pub struct UnknownNode {
    /// The name asked for.
    pub name: String,
    /// The topology.
    pub cluster: PathBuf,
    /// The lab's VMs.
    pub nodes: Vec<String>,
}

/// The lab's VM `name` as state.json records it.
fn find_vm(c: &Cluster, dir: &Path, name: &str) -> Result<VmState> {
    let Some(state) = load_state(dir)? else {
        bail!(NoLab {
            cluster: c.path.clone(),
            state: dir.join("state.json"),
        });
    };
    vm_in(c, &state, name)
}

/// The VM `name` in `state`.
fn vm_in(c: &Cluster, state: &State, name: &str) -> Result<VmState> {
    match state.vms.iter().find(|v| v.name == name) {
        Some(v) => Ok(v.clone()),
        None => bail!(UnknownNode {
            name: name.into(),
            cluster: c.path.clone(),
            nodes: state.vms.iter().map(|v| v.name.clone()).collect(),
        }),
    }
}

/// A VM that must run for what was asked.
fn running_vm(c: &Cluster, name: &str) -> Result<VmState> {
    let v = find_vm(c, &run_dir(c), name)?;
    if !v.running() {
        bail!("{name} is not running (`mesobake lab up` starts it again)");
    }
    Ok(v)
}

/// `lab kill NODE`: a crash of one VM. Its QEMU gets SIGKILL: no ACPI shutdown, no clean
/// exit of QEMU either (its PID file and sockets stay behind, as after a real crash of
/// the host process). The state keeps the VM, so `lab status` shows it down and the
/// next `lab up` starts it again. Returns the PID that was killed.
pub fn kill(c: &Cluster, name: &str) -> Result<u32> {
    let dir = run_dir(c);
    if !dir.is_dir() {
        bail!(NoLab {
            cluster: c.path.clone(),
            state: dir.join("state.json"),
        });
    }
    let _lock = lock::LabLock::acquire(&dir, "kill")?;
    let v = find_vm(c, &dir, name)?;
    let Some(pid) = v.live_pid() else {
        bail!("{name} is not running");
    };
    signal(&v, pid, rustix::process::Signal::KILL);
    if !wait_gone(vec![(&v, pid)], Duration::from_secs(10)).is_empty() {
        bail!("{name}: QEMU pid {pid} did not die from SIGKILL within 10 s");
    }
    Ok(pid)
}

/// The first line of a public key file, for matching cloud-init's console table.
fn public_key_of(identity: &Path) -> Option<String> {
    let pubf = if identity.extension().is_some_and(|x| x == "pub") {
        identity.to_owned()
    } else {
        let mut p = identity.as_os_str().to_owned();
        p.push(".pub");
        PathBuf::from(p)
    };
    let text = std::fs::read_to_string(pubf).ok()?;
    text.lines().next().map(str::to_string)
}

/// What `lab ssh` was asked.
#[derive(Debug, Clone, Default)]
pub struct SshOptions {
    /// `--identity FILE`: the key (else found from the topology's ssh-keys).
    pub identity: Option<PathBuf>,
    /// `--user`: the login user (else the image's default user).
    pub user: Option<String>,
    /// The remote command; empty for a login shell.
    pub command: Vec<String>,
}

/// The `ssh` command line into VM `name` (see [`ssh`] for how key and user are chosen).
pub fn ssh_command(c: &Cluster, name: &str, opts: &SshOptions) -> Result<Cmd> {
    let v = running_vm(c, name)?;
    let Some(port) = v.ssh_port() else {
        bail!("{name} was started before lab VMs forwarded SSH: `lab down` and `lab up` again");
    };
    let (identity, key) = match &opts.identity {
        Some(f) => {
            let id = ssh::identity_from_flag(f)?;
            let key = public_key_of(&id);
            (id, key)
        }
        None => {
            let topo_dir = std::path::absolute(&c.path)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("."));
            let mut dirs = vec![topo_dir];
            dirs.extend(crate::xdg::home().map(|h| h.join(".ssh")));
            let id = ssh::find_identity(&c.ssh_keys, &dirs)?;
            let key = public_key_of(&id);
            (id, key)
        }
    };
    let serial = std::fs::read(&v.serial)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let user = ssh::choose_user(
        opts.user.as_deref(),
        &serial,
        key.as_deref(),
        v.login_user.as_deref(),
        name,
    )?;
    let target = ssh::SshTarget {
        port,
        user,
        identity,
    };
    Ok(Cmd::new("ssh").args(ssh::argv(&target, &opts.command)))
}

/// `lab console NODE`: the terminal on the VM's serial console until Ctrl-].
pub fn console(c: &Cluster, name: &str) -> Result<console::End> {
    let v = running_vm(c, name)?;
    let Some(sock) = &v.console else {
        bail!(
            "{name} was started before lab VMs had a console socket: `lab down` and `lab up` again"
        );
    };
    console::attach(name, sock)
}

/// `lab logs NODE`: writes the VM's serial log to `out`; with `follow`, then what the
/// guest prints next, until the VM stops or Ctrl-C. A reader that goes away (`| head`)
/// ends it quietly.
pub fn logs(c: &Cluster, name: &str, follow: bool, out: &mut impl Write) -> Result<()> {
    let v = find_vm(c, &run_dir(c), name)?;
    let mut f = std::fs::File::open(&v.serial)
        .with_context(|| format!("{name}: opening its serial log {}", v.serial.display()))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    loop {
        // Asked before reading: what a VM printed before it stopped is still read.
        let alive = follow && v.running();
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            pos += n as u64;
            match out.write_all(&buf[..n]).and_then(|_| out.flush()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                r => r.context("writing the serial log")?,
            }
        }
        if !alive {
            return Ok(());
        }
        crate::run::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(300));
        // A restarted VM starts its log afresh (QEMU truncates it): start over.
        if std::fs::metadata(&v.serial).is_ok_and(|m| m.len() < pos) {
            f.rewind()?;
            pos = 0;
        }
    }
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
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (c, dir, _) = one_node_lab(tmp.path(), Some(other.id()));
        let rows = status(&c).unwrap();
        assert!(!rows[0].running);
        assert!(status_table(&rows).contains(" down "));
        assert!(down(&c, false).unwrap().is_empty());
        assert!(
            other.try_wait().unwrap().is_none(),
            "down killed a process that is not its QEMU"
        );
        other.kill().unwrap();
        other.wait().unwrap();
        assert!(load_state(&dir).unwrap().is_none());
    }

    /// A one-node lab in a temp dir, its state naming `pid` (and a PID file with it).
    fn one_node_lab(tmp: &Path, pid: Option<u32>) -> (Cluster, PathBuf, VmState) {
        let topo = tmp.join("cluster.toml");
        std::fs::write(
            &topo,
            "name = \"t\"\n[network]\ncidr = \"10.9.0.0/24\"\n[[node]]\nname = \"m1\"\nrole = \"master\"\nip = \"10.9.0.11\"\n",
        )
        .unwrap();
        let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let c = crate::cluster::load(&topo, &profiles).unwrap();
        let dir = run_dir(&c);
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("m1.pid");
        if let Some(p) = pid {
            std::fs::write(&pidfile, format!("{p}\n")).unwrap();
        }
        let vm = VmState {
            name: "m1".into(),
            role: "master".into(),
            // No services: status would probe their ports.
            services: Vec::new(),
            ip: "10.9.0.11".into(),
            pid,
            ports: BTreeMap::from([(SSH_PORT, 40022)]),
            overlay: dir.join("m1.qcow2"),
            serial: dir.join("m1.serial.log"),
            started: 0,
            pidfile: Some(pidfile),
            qmp: Some(dir.join("m1.qmp")),
            console: Some(dir.join("m1.console")),
            login_user: Some("debian".into()),
            image: None,
            data: Some(dir.join("m1-data.img")),
        };
        let state = State {
            cluster: "t".into(),
            mcast: mcast_for(&dir),
            accel: "tcg".into(),
            vms: vec![vm.clone()],
        };
        save_state(&dir, &state).unwrap();
        (c, dir, vm)
    }

    /// A process that passes for this VM's QEMU (its name and the overlay on its command
    /// line, which is all [`is_our_qemu`] looks at): `sh` waiting on its stdin, with no
    /// child of its own to leave behind when it is killed.
    fn fake_qemu(overlay: &Path) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sh")
            .arg0("qemu-system-x86_64")
            .args(["-c", "read x"])
            .arg(format!("file={},if=virtio", overlay.display()))
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    #[test]
    fn kill_crashes_the_vm_and_status_shows_it_down() {
        let tmp = tempfile::tempdir().unwrap();
        let mut q = fake_qemu(&tmp.path().join(".mesobake-lab/t/m1.qcow2"));
        let (c, _, _) = one_node_lab(tmp.path(), Some(q.id()));
        let rows = status(&c).unwrap();
        assert!(rows[0].running, "the fake QEMU counts as the VM's");
        assert_eq!(rows[0].state, "up");
        assert_eq!(rows[0].ssh_port, Some(40022));
        assert!(status_table(&rows).contains(":40022"));

        assert_eq!(kill(&c, "m1").unwrap(), q.id());
        let st = q.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(9), "SIGKILL: a crash, not a shutdown");
        let rows = status(&c).unwrap();
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["running"], false, "{json}");
        assert_eq!(json[0]["state"], "down", "{json}");
        assert_eq!(json[0]["ssh_port"], 40022, "{json}");
        assert!(status_table(&rows).contains(" down "));
        // Its PID file is still there (no clean exit) and counts for nothing.
        assert!(run_dir(&c).join("m1.pid").exists());
        let e = kill(&c, "m1").unwrap_err().to_string();
        assert!(e.contains("not running"), "{e}");
        let e = kill(&c, "m9").unwrap_err();
        let u = e.downcast_ref::<UnknownNode>().expect("UnknownNode");
        assert_eq!(u.nodes, ["m1"]);
        assert!(e.to_string().contains("its nodes: m1"), "{e}");
        assert!(down(&c, false).unwrap().is_empty());
        assert!(!run_dir(&c).join("m1.pid").exists(), "down tidies up");
    }

    /// `lab down` presses the power button through QMP and waits for QEMU to go; here a
    /// fake QMP server "powers off" the fake QEMU when asked.
    #[test]
    fn down_powers_down_through_qmp() {
        use std::io::BufRead;
        let tmp = tempfile::tempdir().unwrap();
        let overlay = tmp.path().join(".mesobake-lab/t/m1.qcow2");
        let mut q = fake_qemu(&overlay);
        let (c, _, vm) = one_node_lab(tmp.path(), Some(q.id()));
        let listener = std::os::unix::net::UnixListener::bind(vm.qmp.as_ref().unwrap()).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut got = Vec::new();
            for _ in 0..2 {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                got.push(l.trim().to_string());
                s.write_all(b"{\"return\": {}}\n").unwrap();
            }
            // The guest powers off: QEMU exits.
            q.kill().unwrap();
            q.wait().unwrap();
            got
        });
        let t = Instant::now();
        assert_eq!(down(&c, false).unwrap(), ["m1"]);
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        assert_eq!(
            server.join().unwrap(),
            [
                r#"{"execute":"qmp_capabilities"}"#,
                r#"{"execute":"system_powerdown"}"#
            ]
        );
        assert!(load_state(&run_dir(&c)).unwrap().is_none());
    }

    /// `lab down` keeps the masters' data disks for the next `lab up`; `--purge` removes
    /// them, and only them (a link named like one is not followed).
    #[test]
    fn down_keeps_data_disks_and_purge_removes_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, _, vm) = one_node_lab(tmp.path(), None);
        let dir = run_dir(&c);
        let disk = vm.data.clone().unwrap();
        std::fs::write(&disk, "zookeeper state").unwrap();
        let outside = tmp.path().join("precious");
        std::fs::write(&outside, "mine").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("m9-data.img")).unwrap();
        assert!(down(&c, false).unwrap().is_empty());
        assert!(load_state(&dir).unwrap().is_none());
        assert_eq!(std::fs::read_to_string(&disk).unwrap(), "zookeeper state");
        // No state left, and the data disks still go with --purge.
        down(&c, true).unwrap();
        assert!(!disk.exists());
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "mine");
        assert!(dir.join("m9-data.img").symlink_metadata().is_ok());
    }

    /// `lab replace` refuses an image of another role (its manifest says so) and an
    /// unknown node before it stops anything.
    #[test]
    fn replace_refuses_another_roles_image_and_unknown_nodes() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, _, mut vm) = one_node_lab(tmp.path(), None);
        vm.services = vec![Service::Zookeeper, Service::Master, Service::Marathon];
        let dir = run_dir(&c);
        let mut state = load_state(&dir).unwrap().unwrap();
        state.vms = vec![vm];
        save_state(&dir, &state).unwrap();
        let images = tmp.path().join("new");
        std::fs::create_dir_all(&images).unwrap();
        let image = images.join("slave-only.qcow2");
        std::fs::write(&image, "not read").unwrap();
        std::fs::write(
            images.join("manifest.json"),
            r#"{"images": {"slave-only": {"profile": {"services": ["agent"]}}}}"#,
        )
        .unwrap();
        let opts = ReplaceOptions {
            image: image.clone(),
            memory_mb: 512,
            cpus: 1,
            accel: None,
            wait: None,
        };
        let e = format!("{:#}", replace(&c, "m1", &opts).unwrap_err());
        assert!(
            e.contains("an image with services agent")
                && e.contains("m1 runs master (zookeeper, master, marathon)")
                && e.contains("give an image of role master"),
            "{e}"
        );
        let e = replace(&c, "m7", &opts).unwrap_err();
        assert!(e.is::<UnknownNode>(), "{e:#}");
        let e = format!(
            "{:#}",
            replace(
                &c,
                "m1",
                &ReplaceOptions {
                    image: tmp.path().join("none.qcow2"),
                    ..opts
                }
            )
            .unwrap_err()
        );
        assert!(e.contains("none.qcow2: no such image"), "{e}");
    }

    /// A guest that ignores the power button is stopped once the wait is over.
    #[test]
    fn a_vm_that_does_not_power_down_is_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        let overlay = tmp.path().join("m1.qcow2");
        let mut q = fake_qemu(&overlay);
        let vm = VmState {
            name: "m1".into(),
            role: "master".into(),
            services: Vec::new(),
            ip: "10.9.0.11".into(),
            pid: Some(q.id()),
            ports: BTreeMap::new(),
            overlay,
            serial: tmp.path().join("m1.serial.log"),
            started: 0,
            pidfile: None,
            // QMP that is not there: the QEMU is stopped at once.
            qmp: Some(tmp.path().join("none.qmp")),
            console: None,
            login_user: None,
            image: None,
            data: None,
        };
        let t = Instant::now();
        power_down(vec![(&vm, q.id())]).unwrap();
        assert!(t.elapsed() < Duration::from_secs(15));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(q.wait().unwrap().signal(), Some(15), "SIGTERM first");
    }

    #[test]
    fn logs_print_the_serial_log_and_name_unknown_nodes() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, _, vm) = one_node_lab(tmp.path(), None);
        std::fs::write(
            &vm.serial,
            b"Linux version 6.1\r\nmesobake: configured role=master\r\n",
        )
        .unwrap();
        let mut out = Vec::new();
        logs(&c, "m1", false, &mut out).unwrap();
        assert_eq!(out, std::fs::read(&vm.serial).unwrap());
        // Following a VM that is not running ends after what is there.
        let mut out = Vec::new();
        logs(&c, "m1", true, &mut out).unwrap();
        assert_eq!(out, std::fs::read(&vm.serial).unwrap());
        let e = logs(&c, "nope", false, &mut Vec::new()).unwrap_err();
        assert!(e.is::<UnknownNode>(), "{e}");
        let e = ssh_command(&c, "m1", &SshOptions::default())
            .err()
            .expect("no ssh into a VM that is down");
        assert!(e.to_string().contains("not running"), "{e}");
    }

    #[test]
    fn mcast_groups_differ_per_run_dir() {
        let a = mcast_for(Path::new("/a/.mesobake-lab/x"));
        let b = mcast_for(Path::new("/b/.mesobake-lab/x"));
        assert_ne!(a, b);
        assert!(a.starts_with("230."));
    }
}
