//! `lab replace NODE --image NEW`: day 2 for immutable images. One node is powered down
//! (ACPI, then stopped), its overlay is made anew on the new image, and it boots again
//! with the same seed (same MAC, address, ZooKeeper id, secrets) and the same data disk
//! ([`super::data`]), so a master comes back with its ZooKeeper log and Mesos registry.
//! Then it waits until the node has rejoined: configured, and every service of its role
//! answering as `lab status` checks it (a ZooKeeper member as leader or follower).
//!
//! One node at a time is the safe unit: a 3-member ensemble keeps its quorum while one
//! member is away, so replacing the masters one after another, each only once the one
//! before has rejoined, never loses it (ci/rolling-replace.sh shows that, polling `srvr`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{
    configured, lab_cluster, load_state, lock, operator, power_down, run_dir, save_state, start_vm,
    vm_in, Accel, NoLab, UnknownNode, UpOptions, VmState,
};
use crate::cluster::Cluster;
use crate::profile::Service;

/// What `lab replace` was asked.
#[derive(Debug, Clone)]
pub struct ReplaceOptions {
    /// The new image (qcow2 from `mesobake build`, or any format qemu-img reads).
    pub image: PathBuf,
    /// Memory of the new VM in MiB.
    pub memory_mb: u32,
    /// vCPUs of the new VM.
    pub cpus: u32,
    /// Forced acceleration (None: the lab's).
    pub accel: Option<Accel>,
    /// Wait until the node has rejoined; None: return once it is started.
    pub wait: Option<Duration>,
}

/// What `lab replace` did, with its timings (seconds since it started).
#[derive(Debug, Clone, Serialize)]
pub struct Replaced {
    /// The node.
    pub node: String,
    /// The image it ran before.
    pub previous_image: Option<PathBuf>,
    /// The image it runs now.
    pub image: PathBuf,
    /// When its old VM was gone (powered down, or already down).
    pub down_s: f64,
    /// When the new VM printed its configured line.
    pub configured_s: Option<f64>,
    /// When every service of its role answered (a ZooKeeper member in the ensemble).
    pub rejoined_s: Option<f64>,
}

/// The role's services as the new image's manifest.json (beside it) records them, when
/// it does: a new image of another role must not replace the node.
fn check_role(image: &Path, v: &VmState) -> Result<()> {
    let manifest = image.with_file_name("manifest.json");
    let Ok(text) = std::fs::read_to_string(&manifest) else {
        eprintln!(
            "mesobake: lab: no manifest.json beside {}: its role is not checked",
            image.display()
        );
        return Ok(());
    };
    let m: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("reading {}", manifest.display()))?;
    let stem = image.file_stem().unwrap_or_default().to_string_lossy();
    let Some(services) = m["images"][stem.as_ref()]["profile"]["services"].as_array() else {
        eprintln!(
            "mesobake: lab: {} does not list {}: its role is not checked",
            manifest.display(),
            image.display()
        );
        return Ok(());
    };
    let has = |s: &Service| services.iter().any(|x| x.as_str() == Some(s.name()));
    if v.services.iter().all(has) && services.len() == v.services.len() {
        return Ok(());
    }
    let theirs: Vec<&str> = services.iter().filter_map(|s| s.as_str()).collect();
    let ours: Vec<&str> = v.services.iter().map(|s| s.name()).collect();
    bail!(
        "{}: an image with services {} (per {}), but {} runs {} ({}): give an image of \
         role {}",
        image.display(),
        theirs.join(", "),
        manifest.display(),
        v.name,
        v.role,
        ours.join(", "),
        v.role
    )
}

/// `lab replace`: see the module documentation.
pub fn replace(c: &Cluster, name: &str, opts: &ReplaceOptions) -> Result<Replaced> {
    let t0 = Instant::now();
    let image = std::path::absolute(&opts.image)?;
    if !image.is_file() {
        bail!("{}: no such image", image.display());
    }
    let dir = run_dir(c);
    let no_lab = || NoLab {
        cluster: c.path.clone(),
        state: dir.join("state.json"),
    };
    if !dir.is_dir() {
        bail!(no_lab());
    }
    let lock = lock::LabLock::acquire(&dir, "replace")?;
    // Read once, under the lock: nothing else writes it until we do.
    let mut state = load_state(&dir)?.ok_or_else(no_lab)?;
    let old = vm_in(c, &state, name)?;
    check_role(&image, &old)?;
    // Reads the image before anything stops: a file qemu-img cannot read fails here.
    crate::export::qemu_info(&image)?;
    let images = image.parent().unwrap_or(Path::new("."));
    let c = lab_cluster(c, images)?;
    let members = c.lab_members()?;
    let Some(m) = members.iter().find(|m| m.name == name) else {
        bail!(UnknownNode {
            name: name.into(),
            cluster: c.path.clone(),
            nodes: members.iter().map(|m| m.name.clone()).collect(),
        });
    };
    if let Some(pid) = old.live_pid() {
        power_down(vec![(&old, pid)])?;
    }
    let down_s = t0.elapsed().as_secs_f64();
    eprintln!("mesobake: lab: {name} down after {down_s:.0} s");
    remove_leftovers(&old)?;
    let accel = opts.accel.or(state.accel());
    let up = UpOptions {
        images: images.to_owned(),
        memory_mb: opts.memory_mb,
        cpus: opts.cpus,
        accel,
        wait: None,
    };
    let (vm, _) = start_vm(
        &c,
        &dir,
        m,
        (old.overlay.clone(), image.clone()),
        &up,
        &state.mcast.clone(),
        accel,
    )?;
    eprintln!(
        "mesobake: lab: started {name} on {} (pid {})",
        image.display(),
        vm.pid.unwrap_or(0)
    );
    state.vms.retain(|v| v.name != name);
    state.vms.push(vm.clone());
    save_state(&dir, &state)?;
    drop(lock);
    let mut done = Replaced {
        node: name.into(),
        previous_image: old.image.clone(),
        image,
        down_s,
        configured_s: None,
        rejoined_s: None,
    };
    if let Some(limit) = opts.wait {
        wait_rejoined(&c, &vm, t0, limit, &mut done)?;
    }
    Ok(done)
}

/// The old VM's files that the new one must not inherit: the overlay (it is made anew
/// on the new image), what a killed QEMU leaves, and the serial log, kept beside as
/// `NAME.serial.prev.log` for a post-mortem (the new log must not show the old VM's
/// configured line).
fn remove_leftovers(old: &VmState) -> Result<()> {
    for f in std::iter::once(&old.overlay).chain(old.qemu_leftovers()) {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", f.display()))
            }
            _ => {}
        }
    }
    if old.serial.exists() {
        let prev = old
            .serial
            .with_file_name(format!("{}.serial.prev.log", old.name));
        std::fs::rename(&old.serial, &prev)
            .with_context(|| format!("keeping {}", old.serial.display()))?;
    }
    Ok(())
}

/// Waits until the new VM is configured and every service of its role answers; a
/// ZooKeeper member must be leader or follower again (a member that is up but not in
/// the ensemble says neither).
fn wait_rejoined(
    c: &Cluster,
    vm: &VmState,
    t0: Instant,
    limit: Duration,
    done: &mut Replaced,
) -> Result<()> {
    let auth = operator(c)?;
    let mut last = String::from("not configured yet");
    loop {
        crate::run::check_interrupted()?;
        if !vm.running() {
            bail!(
                "{}: QEMU is not running any more (serial log {})",
                vm.name,
                vm.serial.display()
            );
        }
        if done.configured_s.is_none() {
            match configured(&vm.serial) {
                Ok(Some(_)) => {
                    let s = t0.elapsed().as_secs_f64();
                    eprintln!("mesobake: lab: {} configured after {s:.0} s", vm.name);
                    done.configured_s = Some(s);
                }
                Ok(None) => {}
                Err(e) => bail!("{}: {e} (serial log {})", vm.name, vm.serial.display()),
            }
        }
        if done.configured_s.is_some() {
            let health = vm.health(auth.as_ref());
            let in_ensemble = |h: &super::Health| {
                h.service != Service::Zookeeper
                    || matches!(h.detail.as_str(), "leader" | "follower" | "standalone")
            };
            match health.iter().find(|h| !h.ok || !in_ensemble(h)) {
                None => {
                    let s = t0.elapsed().as_secs_f64();
                    let said: Vec<String> = health
                        .iter()
                        .map(|h| format!("{} {}", h.service.name(), h.detail))
                        .collect();
                    eprintln!(
                        "mesobake: lab: {} rejoined after {s:.0} s ({})",
                        vm.name,
                        said.join("; ")
                    );
                    done.rejoined_s = Some(s);
                    return Ok(());
                }
                Some(h) => last = format!("{} :{} {}", h.service.name(), h.port, h.detail),
            }
        }
        if t0.elapsed() > limit {
            bail!(
                "{} did not rejoin within {} s: {last} (serial log {})",
                vm.name,
                limit.as_secs(),
                vm.serial.display()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
