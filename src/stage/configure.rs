//! Configure: overlays, service overrides for the detected init system, cluster-wide
//! config files, the first-boot configurator and cloud-init's datasource config.
//!
//! Nothing node-specific is written here (`ip`, `hostname`, `quorum`, `/etc/mesos/zk`,
//! `myid`): the configurator writes those at first boot.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::cgroup::{self, Cgroup};
use super::layout::{self, Init, Layout, Packaging};
use super::BuildContext;
use crate::image::{chroot, AttachedImage, ImageRoot};
use crate::nodeconf::{self, Daemon};
use crate::profile::{OverlayPolicy, Profile, Service};

/// The configurator script, installed at [`CONFIGURATOR_PATH`].
pub const CONFIGURATOR: &str = include_str!("firstboot/mesobake-configure");
/// Its systemd unit.
pub const CONFIGURATOR_UNIT: &str = include_str!("firstboot/mesobake-configure.service");
/// The unit that makes /mesos and /marathon digest-only (started by the configurator).
pub const ZK_ACL_UNIT: &str = include_str!("firstboot/mesobake-zk-acl.service");
/// Its upstart job (Ubuntu 14.04).
pub const CONFIGURATOR_JOB: &str = include_str!("firstboot/mesobake-configure.upstart.conf");
/// Where the configurator lives in the image.
pub const CONFIGURATOR_PATH: &str = "usr/lib/mesobake/mesobake-configure";

/// Runs the configure stage and returns the detected layout.
pub fn run(ctx: &mut BuildContext, img: &mut AttachedImage) -> Result<Layout> {
    let profile = ctx.req.profile.clone();
    let mut layout = layout::detect(&img.root);
    layout.check_role(&profile)?;
    for o in &profile.overlays {
        ctx.progress.step(&format!("overlay {}", o.display()));
        for w in apply_overlay(&img.root, o, &profile.overlay_policy)? {
            eprintln!("warning: {w}");
        }
    }
    let mark = img.mount_chroot_fs()?;
    let r = (|| {
        let cg = boot_cgroup(&img.root, &profile, &layout)?;
        layout.cgroup = Some(cg);
        write_role_files(&img.root, &profile, &layout)?;
        check_flag_dirs(&img.root, &profile, &layout)?;
        create_task_user(&img.root, &profile)?;
        apply_service_overrides(&img.root, &profile, &layout)
    })();
    let u = img.unmount_chroot_fs(mark);
    r?;
    u?;
    Ok(layout)
}

/// Works out (and, where the profile asks, sets) the cgroup hierarchy the image boots,
/// and refuses a role that could not start on it.
fn boot_cgroup(root: &ImageRoot, profile: &Profile, layout: &Layout) -> Result<Cgroup> {
    let systemctl = match layout.init {
        Init::Systemd => Some(
            chroot(root.path(), &["systemctl", "--version"])
                .read()
                .context("asking the image's systemd for its version")?,
        ),
        Init::Upstart => None,
    };
    let current = cgroup::read(root, systemctl.as_deref());
    let cg = match profile.cgroup {
        Some(want) if want != current.mode => cgroup::apply(root, &current, want)?,
        Some(_) => Cgroup {
            from_profile: true,
            ..current
        },
        None => current,
    };
    check_runnable(profile, layout, &cg)?;
    Ok(cg)
}

/// The value stout would load for a boolean flag file, or None for a value it refuses.
fn flag_bool(name: &nodeconf::FlagName, value: &str) -> Option<bool> {
    if name.negated {
        return Some(false);
    }
    if name.bare {
        return Some(true);
    }
    match value.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Whether the agent would use systemd's cgroup v1 hierarchy: the profile's setting, else
/// Mesos's default (true).
fn agent_systemd_support(profile: &Profile) -> Option<bool> {
    profile.agent_flags.iter().find_map(|(k, v)| {
        let n = nodeconf::flag_name(k).ok()?;
        (n.canonical == nodeconf::SYSTEMD_SUPPORT_FLAG).then(|| flag_bool(&n, v).unwrap_or(true))
    })
}

/// Refuses a role that cannot start on the cgroup hierarchy the image boots, naming the
/// setting that fixes it.
pub fn check_runnable(profile: &Profile, layout: &Layout, cg: &Cgroup) -> Result<()> {
    if !profile.runs(Service::Agent) || cg.mode != cgroup::Mode::V2 {
        return Ok(());
    }
    let here = profile.path.display();
    if cg.systemd.is_some() && agent_systemd_support(profile) == Some(true) {
        bail!(
            "{here}: [mesos] agent-flags turns systemd_enable_support on, but the image boots cgroup v2 ({}): the agent would exit at start with \"Failed to locate systemd cgroups hierarchy: '/sys/fs/cgroup/systemd' is not a valid hierarchy\". Remove the flag (mesobake sets it to false on cgroup v2), or set [boot] cgroup = \"v1\"",
            cg.hierarchy
        );
    }
    if layout.packaging == Some(Packaging::Mesosphere) && wants_docker(profile) {
        bail!(
            "{here}: the agent uses the docker containerizer with Mesosphere/Apache Mesos packages, whose Docker containerizer needs a cgroup v1 cpu hierarchy, but the image boots cgroup v2 ({}); set [boot] cgroup = \"v1\" in the profile, drop docker from [mesos] agent-flags containerizers, or use AVENTER's aventer-mesos, which supports cgroup v2",
            cg.hierarchy
        );
    }
    Ok(())
}

/// The agent flags the image gets: the profile's, plus `systemd_enable_support=false`
/// where the image boots cgroup v2 under systemd and the profile did not decide.
pub fn agent_flags(profile: &Profile, layout: &Layout) -> Vec<(String, String)> {
    let mut v: Vec<_> = profile
        .agent_flags
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let v2_systemd = layout
        .cgroup
        .as_ref()
        .is_some_and(|c| c.mode == cgroup::Mode::V2 && c.systemd.is_some());
    if v2_systemd && agent_systemd_support(profile).is_none() {
        v.push((nodeconf::SYSTEMD_SUPPORT_FLAG.into(), "false".into()));
    }
    v
}

/// Checks each Mesos flag dir as the image now has it (package files, overlays, the
/// profile's flags) the way the init wrapper and Mesos will read it: no dotfile or stray
/// file, no two files that are one flag, no flag the configurator owns under another
/// spelling, and nothing the wrapper already passes from `/etc/default`.
fn check_flag_dirs(root: &ImageRoot, profile: &Profile, layout: &Layout) -> Result<()> {
    let here = profile.path.display();
    let mut dirs = Vec::new();
    if profile.runs(Service::Master) {
        dirs.push((
            Daemon::Master,
            "/etc/mesos-master".to_string(),
            &profile.master_flags,
        ));
    }
    if let (true, Some(d)) = (profile.runs(Service::Agent), &layout.agent_dir) {
        dirs.push((Daemon::Agent, d.clone(), &profile.agent_flags));
    }
    for (daemon, dir, from_profile) in dirs {
        let defaults: Vec<(String, String)> =
            nodeconf::defaults_files(daemon, layout.agent_defaults.as_deref())
                .into_iter()
                .filter_map(|f| {
                    let t = root.read_to_string(f.trim_start_matches('/')).ok()?;
                    Some((f, t))
                })
                .collect();
        // AVENTER's package ships no flag dirs; the configurator makes them at boot.
        let Ok(host) = root.resolve(dir.trim_start_matches('/')) else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(&host) else {
            continue;
        };
        let mut names: Vec<String> = Vec::new();
        for e in entries {
            let e = e.with_context(|| format!("listing {dir} in the image"))?;
            if e.file_type()?.is_file() {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        let origin = |n: &str| {
            if from_profile.contains_key(n) {
                format!("{here}: [mesos] {daemon}-flags")
            } else {
                format!("{dir}/{n} (from an overlay or a package)")
            }
        };
        let mut seen: Vec<(String, String)> = Vec::new();
        for n in &names {
            // The init wrappers skip these package-manager leftovers themselves.
            if n.ends_with(".dpkg-dist") || n.ends_with(".rpmnew") {
                continue;
            }
            let f = nodeconf::flag_name(n).map_err(|e| {
                anyhow::anyhow!("{}: {e}; the init wrapper would pass it to Mesos, which stops on an unknown flag. Remove the file", origin(n))
            })?;
            if let Some((_, first)) = seen.iter().find(|(c, _)| *c == f.canonical) {
                bail!(
                    "{}: {}",
                    origin(n),
                    nodeconf::Conflict::Twice(first.clone(), n.clone())
                );
            }
            if nodeconf::OWNED_FLAGS.contains(&f.canonical.as_str()) {
                if *n != f.canonical {
                    bail!("{}: {}", origin(n), nodeconf::Conflict::Owned(n.clone()));
                }
            } else {
                nodeconf::check_against_wrapper(daemon, n, &defaults)
                    .map_err(|c| anyhow::anyhow!("{}: {c}", origin(n)))?;
            }
            seen.push((f.canonical, n.clone()));
        }
    }
    Ok(())
}

/// Lays an overlay tree over the image root. Modes are kept; files become root-owned,
/// because a checkout's owner (often uid 1000) means nothing inside the image. Writes
/// resolve inside the root, and a symlink in the overlay that climbs out of the root is
/// refused. The tree is read through [`walk_overlay`], so no link in it is followed
/// and nothing but directories and regular files is opened. Setuid, setgid and
/// world-writable entries are refused from an overlay root does not own, unless
/// `policy` allows them; the warnings about them are returned.
pub fn apply_overlay(root: &ImageRoot, dir: &Path, policy: &OverlayPolicy) -> Result<Vec<String>> {
    if !dir.is_dir() {
        bail!(
            "overlay {}: no such directory (listed in the profile's overlays)",
            dir.display()
        );
    }
    let mut warnings = Vec::new();
    walk_overlay(dir, &mut |rel, entry| match entry {
        OverlayEntry::Link { target } => {
            if escapes_root(rel, &target) {
                bail!(
                    "overlay {}: symlink {rel} -> {} points outside the image root",
                    dir.display(),
                    target.display()
                );
            }
            root.symlink(&target, rel)
        }
        OverlayEntry::Dir { mode, root_owned } => {
            warnings.extend(check_mode(dir, rel, true, mode, root_owned, policy)?);
            root.mkdir_all(rel, mode).map(drop)
        }
        OverlayEntry::File {
            file,
            mode,
            root_owned,
        } => {
            warnings.extend(check_mode(dir, rel, false, mode, root_owned, policy)?);
            root.write_from(rel, &file, mode)
        }
    })?;
    Ok(warnings)
}

/// Whether a relative link target, taken from the link's directory, climbs above the
/// overlay's root at any point (`a/../../..` as well as a leading `../..`). Absolute
/// targets are image paths: the image resolves them inside itself.
fn escapes_root(rel: &str, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = Path::new(rel).components().count().saturating_sub(1);
    for c in target.components() {
        match c {
            std::path::Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            std::path::Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    false
}

/// Refuses (or warns about) a setuid, setgid or world-writable overlay entry: inside the
/// image it becomes root's.
fn check_mode(
    top: &Path,
    rel: &str,
    is_dir: bool,
    mode: u32,
    root_owned: bool,
    policy: &OverlayPolicy,
) -> Result<Option<String>> {
    let setid: Vec<&str> = [(0o4000, "setuid"), (0o2000, "setgid")]
        .into_iter()
        .filter(|(bit, _)| !is_dir && mode & bit != 0)
        .map(|(_, name)| name)
        .collect();
    // A world-writable directory with the sticky bit (like /tmp) is the usual thing.
    let world_writable = mode & 0o002 != 0 && !(is_dir && mode & 0o1000 != 0);
    let mut what = setid.clone();
    if world_writable {
        what.push("world-writable");
    }
    if what.is_empty() {
        return Ok(None);
    }
    let what = what.join(", ");
    let kind = if is_dir { "directory" } else { "file" };
    let allowed = (setid.is_empty() || policy.allow_setuid)
        && (!world_writable || policy.allow_world_writable);
    if !root_owned && !allowed {
        let key = match (setid.is_empty(), world_writable) {
            (false, true) => "allow-setuid = true and allow-world-writable = true",
            (false, false) => "allow-setuid = true",
            _ => "allow-world-writable = true",
        };
        bail!(
            "overlay {}: {rel} is a {what} {kind} ({mode:04o}) in an overlay not owned by root; it would become root's in the image. Fix its mode, or set [overlay-policy] {key} in the profile if that is meant",
            top.display()
        );
    }
    Ok(Some(format!(
        "overlay {}: {rel} is a {what} {kind} ({mode:04o}); it lands in the image owned by root",
        top.display()
    )))
}

/// One entry of an overlay tree, as [`walk_overlay`] found it.
pub(crate) enum OverlayEntry {
    /// A directory.
    Dir {
        /// Its permission bits.
        mode: u32,
        /// Whether it and every directory above it in the overlay belong to root.
        root_owned: bool,
    },
    /// A symlink, never followed.
    Link {
        /// What it points to.
        target: std::path::PathBuf,
    },
    /// A regular file, opened.
    File {
        /// The open file: what is hashed or copied is what was checked.
        file: std::fs::File,
        /// Its permission bits.
        mode: u32,
        /// Whether it and every directory above it in the overlay belong to root.
        root_owned: bool,
    },
}

/// Walks an overlay tree in name order, parents before children, handing each entry to
/// `visit` with its path relative to `top`. Every entry is reached from its parent's
/// open descriptor and opened with `O_NOFOLLOW`, so a file or directory swapped for a
/// symlink mid-walk is never followed out of the tree. FIFOs, sockets and devices are
/// refused from their `lstat`, before anything opens them; files are opened
/// `O_NONBLOCK` and checked on the descriptor, so a swap between the check and the open
/// cannot block either.
pub(crate) fn walk_overlay(
    top: &Path,
    visit: &mut dyn FnMut(&str, OverlayEntry) -> Result<()>,
) -> Result<()> {
    use rustix::fs::OFlags;
    let fd = rustix::fs::open(
        top,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .with_context(|| format!("reading overlay {}", top.display()))?;
    let root_owned = rustix::fs::fstat(&fd)?.st_uid == 0;
    walk_dir(top, &fd, Path::new(""), root_owned, visit)
}

fn walk_dir(
    top: &Path,
    dir: &std::os::fd::OwnedFd,
    prefix: &Path,
    root_owned: bool,
    visit: &mut dyn FnMut(&str, OverlayEntry) -> Result<()>,
) -> Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    use std::os::unix::ffi::OsStrExt;
    let reading = || format!("reading overlay {}", top.join(prefix).display());
    let mut names: Vec<std::ffi::OsString> = Vec::new();
    for e in rustix::fs::Dir::read_from(dir).with_context(reading)? {
        let e = e.with_context(reading)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(std::ffi::OsStr::from_bytes(n).to_owned());
        }
    }
    names.sort();
    for name in names {
        let relp = prefix.join(&name);
        let rel = relp.to_string_lossy().into_owned();
        let changed = |e: rustix::io::Errno| {
            anyhow::anyhow!(
                "overlay {}: {rel} changed while it was read ({e}); is something editing the overlay?",
                top.display()
            )
        };
        let st = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW)
            .with_context(|| format!("reading overlay {}: {rel}", top.display()))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, &name, Vec::new()).map_err(changed)?;
                let target = std::ffi::OsStr::from_bytes(target.as_bytes()).into();
                visit(&rel, OverlayEntry::Link { target })?;
            }
            FileType::Directory => {
                let sub = rustix::fs::openat(
                    dir,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(changed)?;
                let st = rustix::fs::fstat(&sub)?;
                let owned = root_owned && st.st_uid == 0;
                visit(
                    &rel,
                    OverlayEntry::Dir {
                        mode: st.st_mode & 0o7777,
                        root_owned: owned,
                    },
                )?;
                walk_dir(top, &sub, &relp, owned, visit)?;
            }
            FileType::RegularFile => {
                let fd = rustix::fs::openat(
                    dir,
                    &name,
                    OFlags::RDONLY
                        | OFlags::NOFOLLOW
                        | OFlags::NONBLOCK
                        | OFlags::NOCTTY
                        | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(changed)?;
                let st = rustix::fs::fstat(&fd)?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    bail!(
                        "overlay {}: {rel} changed while it was read (it is no longer a regular file); is something editing the overlay?",
                        top.display()
                    );
                }
                visit(
                    &rel,
                    OverlayEntry::File {
                        file: std::fs::File::from(fd),
                        mode: st.st_mode & 0o7777,
                        root_owned: root_owned && st.st_uid == 0,
                    },
                )?;
            }
            other => {
                let what = match other {
                    FileType::Fifo => "a FIFO",
                    FileType::Socket => "a socket",
                    FileType::CharacterDevice => "a character device",
                    FileType::BlockDevice => "a block device",
                    _ => "of an unknown type",
                };
                bail!(
                    "overlay {}: {rel} is {what}: overlays may hold only files, directories and symlinks",
                    top.display()
                );
            }
        }
    }
    Ok(())
}

/// Every entry under an overlay tree, by relative path, for the configured layer's key:
/// mode and content digest for files, target for links, mode for directories; a
/// setuid, setgid or world-writable entry also records whether root owns it, which
/// decides whether configure takes it. Read the way [`apply_overlay`] reads it.
pub(crate) fn overlay_digests(dir: &Path) -> Result<Vec<(String, String)>> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::new();
    let owner = |mode: u32, root_owned: bool| {
        if mode & 0o6002 != 0 && !root_owned {
            " not root's"
        } else {
            ""
        }
    };
    walk_overlay(dir, &mut |rel, entry| {
        let v = match entry {
            OverlayEntry::Link { target } => format!("link {}", target.display()),
            OverlayEntry::Dir { mode, root_owned } => {
                format!("dir {mode:o}{}", owner(mode, root_owned))
            }
            OverlayEntry::File {
                mut file,
                mode,
                root_owned,
            } => {
                let mut h = Sha256::new();
                std::io::copy(&mut file, &mut h)
                    .with_context(|| format!("reading overlay {}: {rel}", dir.display()))?;
                format!(
                    "file {mode:o} {}{}",
                    hex::encode(h.finalize()),
                    owner(mode, root_owned)
                )
            }
        };
        out.push((rel.to_string(), v));
        Ok(())
    })?;
    out.sort();
    Ok(out)
}

/// The baked defaults the configurator reads first (`/etc/mesobake/role.env`).
pub fn role_env(profile: &Profile, layout: &Layout) -> String {
    let mut s = String::from("# Written by mesobake at build time: the role's defaults. Node settings go in\n# /etc/mesobake/node.env (from cloud-init user-data); see mesobake-configure.\n");
    let kv = |k: &str, v: &str| format!("{k}={}\n", nodeconf::sh_quote(v));
    s += &kv("MESOBAKE_ROLE", &profile.name);
    s += &kv("MESOBAKE_SERVICES", &layout.role_units(profile).join(" "));
    s += &kv("MESOBAKE_INIT", layout.init.as_str());
    let agent = profile.runs(Service::Agent);
    s += &kv(
        "MESOBAKE_AGENT_DIR",
        if agent {
            layout.agent_dir.as_deref().unwrap_or("")
        } else {
            ""
        },
    );
    s += &kv(
        "MESOBAKE_AGENT_DEFAULTS",
        if agent {
            layout.agent_defaults.as_deref().unwrap_or("")
        } else {
            ""
        },
    );
    s += &kv("MESOBAKE_CLUSTER", &profile.cluster);
    // The network policy guards exactly the ports of the services this role runs.
    let guarded: Vec<&str> = crate::service::SERVICES
        .iter()
        .filter(|spec| profile.runs(spec.service))
        .flat_map(|spec| spec.guarded.iter().copied())
        .collect();
    s += &kv("MESOBAKE_GUARDED_PORTS", &guarded.join(" "));
    // A master booted without user-data is a stand-alone appliance: it makes its own
    // secrets rather than run open (the configurator's generate_secrets).
    if profile.runs(Service::Master) {
        s += &kv("MESOBAKE_APPLIANCE_SECRETS", "generate");
    }
    s
}

/// The name the image itself carries (`/etc/hostname`): every instance has it until
/// something names the instance, so the configurator must not take it for a node's name.
fn image_hostname(root: &ImageRoot) -> String {
    root.read_to_string("etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A complete zoo.cfg for a standalone server. The shipped one on Debian 12 is upstream's
/// sample with dataDir=/tmp/zookeeper, where the package's myid link is not; the
/// configurator rewrites this whole file with the ensemble's server lines at first boot.
pub fn zoo_cfg() -> String {
    "# Written by mesobake; rewritten whole by mesobake-configure at boot.\n\
     tickTime=2000\ninitLimit=10\nsyncLimit=5\ndataDir=/var/lib/zookeeper\nclientPort=2181\n\
     4lw.commands.whitelist=srvr,ruok,mntr,stat\n\
     # Jetty's AdminServer would take port 8080 from Marathon.\nadmin.enableServer=false\n"
        .to_string()
}

fn write_role_files(root: &ImageRoot, profile: &Profile, layout: &Layout) -> Result<()> {
    let guards = crate::service::SERVICES
        .iter()
        .any(|spec| profile.runs(spec.service) && !spec.guarded.is_empty());
    if guards && !root.exists("usr/sbin/nft") {
        // Not an error: a seed with `[security] firewall = false` boots such an image
        // (Ubuntu 14.04 has no nftables). Every other seed stops at first boot.
        eprintln!(
            "warning: the image has no nft (package nftables): its nodes refuse to start \
             unless their seed turns the network policy off ([security] firewall = false); \
             add \"nftables\" to [packages] install"
        );
    }
    let mut env = role_env(profile, layout);
    env += &format!(
        "MESOBAKE_IMAGE_HOSTNAME={}\n",
        nodeconf::sh_quote(&image_hostname(root))
    );
    root.write("etc/mesobake/role.env", env.as_bytes(), 0o644)?;
    root.write(CONFIGURATOR_PATH, CONFIGURATOR.as_bytes(), 0o755)?;
    if profile.runs(Service::Master) {
        for (k, v) in &profile.master_flags {
            root.write(
                &format!("etc/mesos-master/{k}"),
                format!("{v}\n").as_bytes(),
                0o644,
            )?;
        }
    }
    if profile.runs(Service::Agent) {
        let dir = layout
            .agent_dir
            .as_deref()
            .expect("check_role ensured an agent")
            .trim_start_matches('/');
        for (k, v) in agent_flags(profile, layout) {
            root.write(&format!("{dir}/{k}"), format!("{v}\n").as_bytes(), 0o644)?;
        }
    }
    if profile.runs(Service::Zookeeper) {
        root.write("etc/zookeeper/conf/zoo.cfg", zoo_cfg().as_bytes(), 0o644)?;
    }
    if profile.runs(Service::Marathon) {
        let mut env = String::from(
            "# Baked by mesobake from the profile; node settings are added at boot.\n",
        );
        for (k, v) in &profile.marathon_env {
            env += &format!("{k}={v}\n");
        }
        root.write("etc/mesobake/marathon.env", env.as_bytes(), 0o644)?;
    }
    // cloud-init: look only where our seeds come from (NoCloud for KVM/VirtualBox,
    // ConfigDrive, EC2), and still run with no seed at all (None), which gives the
    // appliance DHCP networking and fresh SSH host keys. strict_id keeps the EC2 source
    // from probing 169.254.169.254 on machines that are not EC2.
    root.write(
        "etc/cloud/cloud.cfg.d/90-mesobake.cfg",
        b"# Written by mesobake.\ndatasource_list: [ NoCloud, ConfigDrive, Ec2, None ]\ndatasource:\n  Ec2:\n    strict_id: true\n",
        0o644,
    )?;
    root.write(
        "etc/cloud/ds-identify.cfg",
        b"# Written by mesobake: run cloud-init even when no datasource is found, so an\n# appliance booted without a seed still gets networking and SSH host keys.\npolicy: search,found=all,maybe=all,notfound=enabled\n",
        0o644,
    )?;
    Ok(())
}

/// The unprivileged user tasks run as: Marathon's default `MARATHON_MESOS_USER`, which it
/// sends as `FrameworkInfo.user`. With Mesos's default `--switch_user` the agent chowns
/// the task's sandbox to this user and runs the task as it, so agents must have it;
/// every role must name the same user, so it is one constant.
pub const TASK_USER: &str = "mesos-task";

/// The command (argv inside the image) that creates [`TASK_USER`], or None for a role
/// that runs no agent: only agents run tasks, so masters need no such account. A system
/// account with its own group, a home for tools that want one, and no login shell or
/// password, so nobody can log in as it.
pub fn task_user_command(profile: &Profile) -> Option<Vec<&'static str>> {
    profile.runs(Service::Agent).then(|| {
        vec![
            "useradd",
            "--system",
            "--user-group",
            "--home-dir",
            "/var/lib/mesos-task",
            "--create-home",
            "--shell",
            "/usr/sbin/nologin",
            TASK_USER,
        ]
    })
}

/// Creates the task user in an agent image. An image that already has it (an overlay's
/// passwd, a base that made it) keeps it: useradd refuses an existing name.
fn create_task_user(root: &ImageRoot, profile: &Profile) -> Result<()> {
    let Some(argv) = task_user_command(profile) else {
        return Ok(());
    };
    let r = root.path();
    if chroot(r, &["getent", "passwd", TASK_USER]).succeeds()? {
        return Ok(());
    }
    chroot(r, &argv)
        .run()
        .with_context(|| format!("creating the task user {TASK_USER}"))
}

/// Whether the role's agent uses the docker containerizer, so the Docker daemon must run.
pub fn wants_docker(profile: &Profile) -> bool {
    profile.runs(Service::Agent)
        && profile
            .agent_flags
            .get("containerizers")
            .is_some_and(|c| c.split(',').any(|x| x.trim() == "docker"))
}

/// The drop-in that holds Docker's daemons until the node is configured: under TCG
/// dockerd and containerd take about 50 s of CPU to start, which otherwise delays the
/// configurator and so every service of the node.
pub const DOCKER_AFTER_CONFIGURE: &str = "# Written by mesobake: Docker starts once the node is configured, so its start-up does\n# not delay the configurator; the agent waits for it (mesobake-docker.conf).\n[Unit]\nAfter=mesobake-configure.service\n";

/// The agent's drop-in when it uses the docker containerizer: the agent exits at start-up
/// when it cannot reach the Docker daemon (its containerizer recovery runs `docker ps`).
pub const AGENT_AFTER_DOCKER: &str = "# Written by mesobake: the docker containerizer needs a running Docker daemon at start-up.\n[Unit]\nWants=docker.service\nAfter=docker.service\n";

/// Docker on systemd: disabled for roles without the docker containerizer; else started
/// after the configurator, with the agent ordered after it.
fn docker_units(root: &ImageRoot, profile: &Profile, layout: &Layout) -> Result<()> {
    let installed = |unit: &str| root.exists(&format!("lib/systemd/system/{unit}"));
    if !wants_docker(profile) {
        // The shared package set brings Docker to every role; only agents with the docker
        // containerizer need the daemon running (it costs boot time and memory), and
        // containerd only serves Docker here.
        for unit in ["docker.service", "docker.socket", "containerd.service"] {
            if installed(unit) {
                chroot(root.path(), &["systemctl", "disable", unit])
                    .run()
                    .with_context(|| format!("disabling {unit}"))?;
            }
        }
        return Ok(());
    }
    for unit in ["docker.service", "containerd.service"] {
        if installed(unit) {
            root.write(
                &format!("etc/systemd/system/{unit}.d/mesobake.conf"),
                DOCKER_AFTER_CONFIGURE.as_bytes(),
                0o644,
            )?;
        }
    }
    for (s, unit) in &layout.installed {
        if *s == Service::Agent {
            root.write(
                &format!("etc/systemd/system/{unit}.service.d/mesobake-docker.conf"),
                AGENT_AFTER_DOCKER.as_bytes(),
                0o644,
            )?;
        }
    }
    Ok(())
}

/// The upstart override that keeps a job from starting at boot.
pub fn upstart_override() -> &'static str {
    "manual\n"
}

/// The systemd drop-in that orders a role service after the configurator.
pub fn systemd_dropin() -> &'static str {
    "# Written by mesobake: start only after mesobake-configure wrote this node's config.\n[Unit]\nAfter=mesobake-configure.service\n"
}

/// What the build does to an installed service's unit or job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    /// systemd, a service the role runs: disabled at boot, ordered after the configurator,
    /// which starts it once it wrote the service's config.
    DisableAndOrder,
    /// systemd, a service the role does not run: masked, because package upgrades
    /// re-enable a merely disabled unit.
    Mask,
    /// upstart: a `manual` override for every job; the configurator starts the role's.
    Manual,
}

/// The service actions for the role, as (action, unit) pairs; pure so it can be tested.
pub fn plan_overrides(profile: &Profile, layout: &Layout) -> Vec<(ServiceAction, String)> {
    let mut v = Vec::new();
    for (s, unit) in &layout.installed {
        let action = match (layout.init, profile.runs(*s)) {
            (Init::Systemd, true) => ServiceAction::DisableAndOrder,
            (Init::Systemd, false) => ServiceAction::Mask,
            (Init::Upstart, _) => ServiceAction::Manual,
        };
        v.push((action, unit.clone()));
    }
    v
}

fn apply_service_overrides(root: &ImageRoot, profile: &Profile, layout: &Layout) -> Result<()> {
    let r = root.path();
    for (action, unit) in plan_overrides(profile, layout) {
        match action {
            ServiceAction::DisableAndOrder => {
                chroot(r, &["systemctl", "disable", &unit])
                    .run()
                    .with_context(|| format!("disabling {unit}"))?;
                root.write(
                    &format!("etc/systemd/system/{unit}.service.d/mesobake.conf"),
                    systemd_dropin().as_bytes(),
                    0o644,
                )?;
            }
            ServiceAction::Mask => {
                chroot(r, &["systemctl", "disable", &unit]).run().ok();
                chroot(r, &["systemctl", "mask", &unit])
                    .run()
                    .with_context(|| format!("masking {unit}"))?;
            }
            ServiceAction::Manual => root.write(
                &format!("etc/init/{unit}.override"),
                upstart_override().as_bytes(),
                0o644,
            )?,
        }
    }
    if layout.init == Init::Systemd {
        docker_units(root, profile, layout)?;
    }
    match layout.init {
        Init::Systemd => {
            root.write(
                "etc/systemd/system/mesobake-configure.service",
                CONFIGURATOR_UNIT.as_bytes(),
                0o644,
            )?;
            chroot(r, &["systemctl", "enable", "mesobake-configure.service"]).run()?;
            if profile.runs(Service::Zookeeper) && profile.runs(Service::Master) {
                root.write(
                    "etc/systemd/system/mesobake-zk-acl.service",
                    ZK_ACL_UNIT.as_bytes(),
                    0o644,
                )?;
            }
            // Host keys are removed from the image. If cloud-init does not run (or is
            // too old to make them), sshd makes its own. Drop-in ExecStartPre lines are
            // appended after the unit's `sshd -t`, which fails without keys, so the list
            // is reset. Same file name as the bootstrapped base's drop-in: one, not two.
            if root.exists("lib/systemd/system/ssh.service") {
                root.write(
                    "etc/systemd/system/ssh.service.d/10-hostkeys.conf",
                    b"# Written by mesobake: the image ships without SSH host keys.\n[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n",
                    0o644,
                )?;
            }
        }
        Init::Upstart => {
            root.write(
                "etc/init/mesobake-configure.conf",
                CONFIGURATOR_JOB.as_bytes(),
                0o644,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Service;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn profile(services: &[Service]) -> Profile {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let mut p = crate::profile::load(&dir.join("master-slave.toml"), &[]).unwrap();
        p.services = services.to_vec();
        p
    }

    fn layout(init: Init, agent: &str) -> Layout {
        Layout {
            init,
            packaging: Some(if agent == "mesos-agent" {
                Packaging::Aventer
            } else {
                Packaging::Mesosphere
            }),
            cgroup: None,
            agent_service: Some(agent.into()),
            agent_dir: Some(format!("/etc/{agent}")),
            agent_defaults: Some(format!("/etc/default/{agent}")),
            installed: vec![
                (Service::Zookeeper, "zookeeper".into()),
                (Service::Master, "mesos-master".into()),
                (Service::Marathon, "marathon".into()),
                (Service::Agent, agent.into()),
            ],
        }
    }

    #[test]
    fn systemd_slave_only_masks_the_rest() {
        let p = profile(&[Service::Agent]);
        let plan = plan_overrides(&p, &layout(Init::Systemd, "mesos-slave"));
        assert_eq!(
            plan,
            vec![
                (ServiceAction::Mask, "zookeeper".to_string()),
                (ServiceAction::Mask, "mesos-master".to_string()),
                (ServiceAction::Mask, "marathon".to_string()),
                (ServiceAction::DisableAndOrder, "mesos-slave".to_string()),
            ]
        );
        let env = role_env(&p, &layout(Init::Systemd, "mesos-slave"));
        assert!(env.contains("MESOBAKE_SERVICES='mesos-slave'\n"), "{env}");
        assert!(
            env.contains("MESOBAKE_AGENT_DIR='/etc/mesos-slave'\n"),
            "{env}"
        );
    }

    #[test]
    fn role_env_guards_the_roles_ports_and_lets_masters_make_their_own_secrets() {
        let l = layout(Init::Systemd, "mesos-agent");
        let agent = role_env(&profile(&[Service::Agent, Service::NodeExporter]), &l);
        assert!(
            agent.contains("MESOBAKE_GUARDED_PORTS='5051 31000-32000'\n"),
            "{agent}"
        );
        assert!(!agent.contains("MESOBAKE_APPLIANCE_SECRETS"), "{agent}");
        let all = role_env(
            &profile(&[
                Service::Zookeeper,
                Service::Master,
                Service::Marathon,
                Service::Agent,
            ]),
            &l,
        );
        assert!(
            all.contains("MESOBAKE_GUARDED_PORTS='2181 2888 3888 5050 8080 5051 31000-32000'\n"),
            "{all}"
        );
        assert!(
            all.contains("MESOBAKE_APPLIANCE_SECRETS='generate'\n"),
            "{all}"
        );
    }

    #[test]
    fn the_node_exporter_is_an_optional_service_from_the_table() {
        let mut l = layout(Init::Systemd, "mesos-agent");
        l.installed
            .push((Service::NodeExporter, "prometheus-node-exporter".into()));
        let plan = plan_overrides(&profile(&[Service::Agent]), &l);
        assert!(plan.contains(&(ServiceAction::Mask, "prometheus-node-exporter".into())));
        let p = profile(&[Service::Agent, Service::NodeExporter]);
        let plan = plan_overrides(&p, &l);
        assert!(plan.contains(&(
            ServiceAction::DisableAndOrder,
            "prometheus-node-exporter".into()
        )));
        // Started by the configurator, after the Mesos daemons.
        let env = role_env(&p, &l);
        assert!(
            env.contains("MESOBAKE_SERVICES='mesos-agent prometheus-node-exporter'\n"),
            "{env}"
        );
        // The shipped master+slave profile runs it.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let ms = crate::profile::load(&dir.join("master-slave.toml"), &[]).unwrap();
        assert!(ms.runs(Service::NodeExporter));
    }

    #[test]
    fn docker_runs_only_for_the_docker_containerizer() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        assert!(wants_docker(
            &crate::profile::load(&dir.join("slave-only.toml"), &[]).unwrap()
        ));
        // Node 1 of the hand-built procedure (master and agent) runs Docker tasks too.
        assert!(wants_docker(
            &crate::profile::load(&dir.join("master-slave.toml"), &[]).unwrap()
        ));
        assert!(!wants_docker(
            &crate::profile::load(&dir.join("master.toml"), &[]).unwrap()
        ));
    }

    #[test]
    fn agent_roles_create_the_task_user_and_master_only_roles_do_not() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let want = [
            "useradd",
            "--system",
            "--user-group",
            "--home-dir",
            "/var/lib/mesos-task",
            "--create-home",
            "--shell",
            "/usr/sbin/nologin",
            "mesos-task",
        ];
        for (file, agent) in [
            ("slave-only.toml", true),
            ("master-slave.toml", true),
            ("master.toml", false),
        ] {
            let p = crate::profile::load(&dir.join(file), &[]).unwrap();
            let cmd = task_user_command(&p);
            assert_eq!(cmd.as_deref(), agent.then_some(&want[..]), "{file}");
            // Every role, masters too, names the same user to Marathon.
            assert_eq!(
                p.marathon_env
                    .get("MARATHON_MESOS_USER")
                    .map(String::as_str),
                Some(TASK_USER),
                "{file}"
            );
        }
        assert_eq!(
            task_user_command(&profile(&[Service::Agent])).unwrap(),
            want
        );
        for only in [Service::Master, Service::Marathon, Service::Zookeeper] {
            assert_eq!(task_user_command(&profile(&[only])), None, "{only:?}");
        }
    }

    fn cg(mode: cgroup::Mode) -> Cgroup {
        let v = match mode {
            cgroup::Mode::V2 => "systemd 252\n+PAM default-hierarchy=unified\n",
            cgroup::Mode::V1 => "systemd 237\n+PAM default-hierarchy=hybrid\n",
        };
        cgroup::detect(Some(v), None)
    }

    #[test]
    fn cgroup_v2_agents_get_systemd_support_off() {
        let p = profile(&[Service::Agent]);
        let mut l = layout(Init::Systemd, "mesos-agent");
        l.cgroup = Some(cg(cgroup::Mode::V2));
        check_runnable(&p, &l, l.cgroup.as_ref().unwrap()).unwrap();
        assert!(agent_flags(&p, &l).contains(&("systemd_enable_support".into(), "false".into())));
        // On cgroup v1 Mesos's default stays.
        l.cgroup = Some(cg(cgroup::Mode::V1));
        assert!(!agent_flags(&p, &l)
            .iter()
            .any(|(k, _)| k == "systemd_enable_support"));
    }

    #[test]
    fn combinations_that_cannot_start_are_refused_naming_the_setting() {
        let mut p = profile(&[Service::Agent]);
        let mut l = layout(Init::Systemd, "mesos-agent");
        let v2 = cg(cgroup::Mode::V2);
        for on in [
            ("systemd_enable_support", "true"),
            ("?systemd_enable_support", ""),
            ("Systemd_Enable_Support", "1"),
        ] {
            p.agent_flags.clear();
            p.agent_flags.insert(on.0.into(), on.1.into());
            let e = check_runnable(&p, &l, &v2).unwrap_err().to_string();
            assert!(
                e.contains("is not a valid hierarchy") && e.contains("[boot] cgroup = \"v1\""),
                "{e}"
            );
            assert!(check_runnable(&p, &l, &cg(cgroup::Mode::V1)).is_ok());
        }
        p.agent_flags.clear();
        p.agent_flags
            .insert("?no-systemd_enable_support".into(), String::new());
        check_runnable(&p, &l, &v2).unwrap();
        assert!(!agent_flags(&p, &l)
            .iter()
            .any(|(k, _)| k == "systemd_enable_support"));

        // Apache's Docker containerizer (Mesosphere packages) needs cgroup v1.
        p.agent_flags
            .insert("containerizers".into(), "docker,mesos".into());
        l = layout(Init::Systemd, "mesos-slave");
        let e = check_runnable(&p, &l, &v2).unwrap_err().to_string();
        assert!(
            e.contains("cgroup v1 cpu hierarchy") && e.contains("[boot] cgroup = \"v1\""),
            "{e}"
        );
        check_runnable(&p, &l, &cg(cgroup::Mode::V1)).unwrap();
        // AVENTER's build runs Docker on cgroup v2.
        check_runnable(&p, &layout(Init::Systemd, "mesos-agent"), &v2).unwrap();
    }

    fn flag_dir_error(files: &[(&str, &str)], master_flags: &[(&str, &str)]) -> Option<String> {
        let d = tempfile::tempdir().unwrap();
        for (f, body) in files {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        let root = ImageRoot::open(d.path()).unwrap();
        let mut p = profile(&[Service::Zookeeper, Service::Master]);
        p.master_flags = master_flags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let l = layout(Init::Systemd, "mesos-slave");
        write_role_files(&root, &p, &l).unwrap();
        check_flag_dirs(&root, &p, &l)
            .err()
            .map(|e| format!("{e:#}"))
    }

    #[test]
    fn flag_dirs_are_checked_as_the_wrapper_reads_them() {
        let mesosphere = [
            (
                "etc/default/mesos",
                "LOGS=/var/log/mesos\nULIMIT=\"-n 8192\"\n",
            ),
            (
                "etc/default/mesos-master",
                "PORT=5050\nZK=`cat /etc/mesos/zk`\n",
            ),
            ("etc/mesos-master/work_dir", "/var/lib/mesos\n"),
            ("etc/mesos-master/quorum", "1\n"),
        ];
        assert_eq!(
            flag_dir_error(&mesosphere, &[("max_agent_ping_timeouts", "10")]),
            None
        );
        // Defect 5: the wrapper already passes --port and --log_dir on this layout.
        let e = flag_dir_error(&mesosphere, &[("port", "5051")]).unwrap();
        assert!(
            e.contains("[mesos] master-flags") && e.contains("PORT= in /etc/default/mesos-master"),
            "{e}"
        );
        let e = flag_dir_error(&mesosphere, &[("log_dir", "/x")]).unwrap();
        assert!(e.contains("LOGS= in /etc/default/mesos"), "{e}");
        // AVENTER ships no defaults: a port flag is fine there.
        assert_eq!(flag_dir_error(&[], &[("port", "5051")]), None);
        // Defect 4: another spelling of a package file or of an owned flag.
        let e = flag_dir_error(&mesosphere, &[("Work_Dir", "/srv")]).unwrap();
        assert!(e.contains("are the same flag"), "{e}");
        let mut with_overlay = mesosphere.to_vec();
        with_overlay.push(("etc/mesos-master/Quorum", "3\n"));
        let e = flag_dir_error(&with_overlay, &[]).unwrap();
        assert!(
            e.contains("etc/mesos-master/Quorum (from an overlay or a package)")
                && e.contains("written by the first-boot configurator"),
            "{e}"
        );
        // Stray files the wrapper would pass: editor leftovers and dotfiles.
        for stray in ["etc/mesos-master/quorum~", "etc/mesos-master/.quorum.swp"] {
            let e = flag_dir_error(&[(stray, "2\n")], &[]).unwrap();
            assert!(e.contains("not a Mesos flag name"), "{e}");
        }
        assert_eq!(
            flag_dir_error(&[("etc/mesos-master/quorum.dpkg-dist", "1\n")], &[]),
            None
        );
    }

    #[test]
    fn upstart_gets_manual_overrides_for_every_job() {
        let p = profile(&[Service::Zookeeper, Service::Master, Service::Marathon]);
        let plan = plan_overrides(&p, &layout(Init::Upstart, "mesos-slave"));
        assert!(plan.iter().all(|(a, _)| *a == ServiceAction::Manual));
        assert_eq!(plan.len(), 4);
        assert_eq!(upstart_override(), "manual\n");
        let env = role_env(&p, &layout(Init::Upstart, "mesos-slave"));
        assert!(
            env.contains("MESOBAKE_SERVICES='zookeeper mesos-master marathon'\n"),
            "{env}"
        );
        assert!(env.contains("MESOBAKE_INIT='upstart'\n"));
        assert!(env.contains("MESOBAKE_AGENT_DIR=''\n"));
    }

    #[test]
    fn aventer_agent_name_flows_into_role_env() {
        let p = profile(&[
            Service::Zookeeper,
            Service::Master,
            Service::Marathon,
            Service::Agent,
        ]);
        let env = role_env(&p, &layout(Init::Systemd, "mesos-agent"));
        assert!(
            env.contains("MESOBAKE_SERVICES='zookeeper mesos-master marathon mesos-agent'\n"),
            "{env}"
        );
        assert!(
            env.contains("MESOBAKE_AGENT_DEFAULTS='/etc/default/mesos-agent'\n"),
            "{env}"
        );
    }

    #[test]
    fn zoo_cfg_is_complete() {
        let z = zoo_cfg();
        for line in [
            "dataDir=/var/lib/zookeeper",
            "clientPort=2181",
            "admin.enableServer=false",
            "4lw.commands.whitelist=srvr,ruok,mntr,stat",
        ] {
            assert!(z.lines().any(|l| l == line), "missing {line}");
        }
    }

    #[test]
    fn overlay_keeps_modes_and_refuses_escaping_links() {
        let root = tempfile::tempdir().unwrap();
        let ov = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ov.path().join("usr/local/bin")).unwrap();
        std::fs::write(ov.path().join("usr/local/bin/tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            ov.path().join("usr/local/bin/tool"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        let ir = ImageRoot::open(root.path()).unwrap();
        apply_overlay(&ir, ov.path(), &OverlayPolicy::default()).unwrap();
        let m = std::fs::metadata(root.path().join("usr/local/bin/tool")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o750);

        std::os::unix::fs::symlink(
            "../../../../etc/shadow",
            ov.path().join("usr/local/bin/evil"),
        )
        .unwrap();
        let e = apply_overlay(&ir, ov.path(), &OverlayPolicy::default()).unwrap_err();
        assert!(
            format!("{e:#}").contains("points outside the image root"),
            "{e:#}"
        );
    }

    fn no_policy() -> OverlayPolicy {
        OverlayPolicy::default()
    }

    #[test]
    fn a_link_climbing_out_anywhere_in_its_target_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let ir = ImageRoot::open(root.path()).unwrap();
        for (target, escapes) in [
            ("a/../../../../etc/shadow", true),
            ("../x/../../../etc/shadow", true),
            ("./../../../etc/shadow", true),
            ("../../etc/mesos", false),
            ("a/b/../../../../etc/mesos", false),
            ("/etc/shadow", false),
        ] {
            let ov = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(ov.path().join("usr/local")).unwrap();
            std::os::unix::fs::symlink(target, ov.path().join("usr/local/link")).unwrap();
            let r = apply_overlay(&ir, ov.path(), &no_policy());
            assert_eq!(r.is_err(), escapes, "{target}: {r:?}");
        }
    }

    /// Every regular file under `dir`, read without following links.
    fn image_files(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                image_files(&p, out);
            } else if md.is_file() {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }

    #[test]
    fn a_file_swapped_for_a_symlink_during_apply_never_brings_the_host_file_in() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("f"), "HOST-SECRET").unwrap();
        let base = tempfile::tempdir().unwrap();
        let ov = base.path().join("ov");
        let stage = base.path().join("stage");
        std::fs::create_dir_all(ov.join("etc")).unwrap();
        std::fs::create_dir_all(ov.join("sub")).unwrap();
        std::fs::create_dir_all(&stage).unwrap();
        std::fs::write(ov.join("etc/f"), "overlay").unwrap();
        std::fs::write(ov.join("sub/f"), "overlay").unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let swapper = {
            let (stop, ov, stage, host) = (
                stop.clone(),
                ov.clone(),
                stage.clone(),
                host.path().to_owned(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // A file becomes a link to a host file, and back (atomic renames).
                    std::os::unix::fs::symlink(host.join("f"), stage.join("l")).unwrap();
                    std::fs::rename(stage.join("l"), ov.join("etc/f")).unwrap();
                    std::fs::write(stage.join("r"), "overlay").unwrap();
                    std::fs::rename(stage.join("r"), ov.join("etc/f")).unwrap();
                    // A directory becomes a link to a host directory, and back.
                    std::fs::rename(ov.join("sub"), stage.join("sub")).unwrap();
                    std::os::unix::fs::symlink(&host, ov.join("sub")).unwrap();
                    std::thread::yield_now();
                    std::fs::remove_file(ov.join("sub")).unwrap();
                    std::fs::rename(stage.join("sub"), ov.join("sub")).unwrap();
                }
            })
        };
        let started = std::time::Instant::now();
        let mut applied = 0;
        while started.elapsed() < std::time::Duration::from_millis(3000) {
            let root = tempfile::tempdir().unwrap();
            let ir = ImageRoot::open(root.path()).unwrap();
            // Refusing a tree that changes under the walk is fine; copying the host's
            // file is not.
            if apply_overlay(&ir, &ov, &no_policy()).is_ok() {
                applied += 1;
            }
            let mut files = Vec::new();
            image_files(root.path(), &mut files);
            for (p, content) in files {
                assert_ne!(
                    content,
                    b"HOST-SECRET",
                    "{} came from the host",
                    p.display()
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        assert!(applied > 0, "no apply ever finished");
    }

    /// Runs `f` on another thread and fails if it has not returned within 10 s.
    fn within_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("blocked: the walk opened something that never answers")
    }

    #[test]
    fn a_fifo_in_an_overlay_is_refused_at_once() {
        // overlay_digests is what the configured layer's key is made from.
        let ov = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ov.path().join("etc")).unwrap();
        std::fs::write(ov.path().join("etc/a"), "a").unwrap();
        assert!(std::process::Command::new("mkfifo")
            .arg(ov.path().join("etc/pipe"))
            .status()
            .unwrap()
            .success());
        let dir = ov.path().to_owned();
        let e = within_seconds(move || format!("{:#}", overlay_digests(&dir).unwrap_err()));
        assert!(e.contains("etc/pipe is a FIFO"), "{e}");
        let dir = ov.path().to_owned();
        let e = within_seconds(move || {
            let root = tempfile::tempdir().unwrap();
            let ir = ImageRoot::open(root.path()).unwrap();
            format!("{:#}", apply_overlay(&ir, &dir, &no_policy()).unwrap_err())
        });
        assert!(e.contains("etc/pipe is a FIFO"), "{e}");
    }

    #[test]
    fn sparse_files_are_copied_sparse() {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::MetadataExt;
        let ov = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ov.path().join("var/lib")).unwrap();
        let size = 256u64 << 20;
        let mut f = std::fs::File::create(ov.path().join("var/lib/sparse")).unwrap();
        f.set_len(size).unwrap();
        f.seek(SeekFrom::Start(size / 2)).unwrap();
        f.write_all(b"middle").unwrap();
        drop(f);
        let root = tempfile::tempdir().unwrap();
        let ir = ImageRoot::open(root.path()).unwrap();
        apply_overlay(&ir, ov.path(), &no_policy()).unwrap();
        let out = root.path().join("var/lib/sparse");
        let md = std::fs::metadata(&out).unwrap();
        assert_eq!(md.len(), size);
        assert!(
            md.blocks() * 512 < 1 << 20,
            "{} bytes allocated for a file with 6 bytes of data",
            md.blocks() * 512
        );
        let mut data = vec![0u8; 6];
        let f = std::fs::File::open(&out).unwrap();
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut data, size / 2).unwrap();
        assert_eq!(&data, b"middle");
        // The copy is exact around the data too.
        let mut around = vec![1u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut around, size / 2 - 4096).unwrap();
        assert!(around.iter().all(|&b| b == 0));
    }

    #[test]
    fn setuid_and_world_writable_files_need_root_or_the_profile() {
        let setuid = |ov: &Path| {
            std::fs::create_dir_all(ov.join("usr/bin")).unwrap();
            std::fs::write(ov.join("usr/bin/su-ish"), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(
                ov.join("usr/bin/su-ish"),
                std::fs::Permissions::from_mode(0o4755),
            )
            .unwrap();
        };
        let world = |ov: &Path| {
            std::fs::create_dir_all(ov.join("etc")).unwrap();
            std::fs::write(ov.join("etc/open"), "x").unwrap();
            std::fs::set_permissions(ov.join("etc/open"), std::fs::Permissions::from_mode(0o666))
                .unwrap();
        };
        let user_owned = |ov: &Path| {
            // The tests may run as root; give the tree to nobody as a checkout would be.
            if rustix::process::geteuid().is_root() {
                let uid = Some(rustix::fs::Uid::from_raw(65534));
                for p in ["", "usr", "usr/bin", "usr/bin/su-ish", "etc", "etc/open"] {
                    let Ok(md) = std::fs::metadata(ov.join(p)) else {
                        continue;
                    };
                    rustix::fs::chown(ov.join(p), uid, None).unwrap();
                    // chown clears setuid; put the mode back.
                    std::fs::set_permissions(ov.join(p), md.permissions()).unwrap();
                }
            }
        };
        let apply = |ov: &Path, policy: OverlayPolicy| {
            let root = tempfile::tempdir().unwrap();
            let ir = ImageRoot::open(root.path()).unwrap();
            apply_overlay(&ir, ov, &policy).map(|w| {
                let modes: Vec<u32> = ["usr/bin/su-ish", "etc/open"]
                    .iter()
                    .filter_map(|p| std::fs::metadata(root.path().join(p)).ok())
                    .map(|m| m.permissions().mode() & 0o7777)
                    .collect();
                (w, modes)
            })
        };

        let ov = tempfile::tempdir().unwrap();
        setuid(ov.path());
        user_owned(ov.path());
        let e = format!("{:#}", apply(ov.path(), no_policy()).unwrap_err());
        assert!(
            e.contains("usr/bin/su-ish is a setuid file (4755)")
                && e.contains("[overlay-policy] allow-setuid = true"),
            "{e}"
        );
        let allow_setuid = OverlayPolicy {
            allow_setuid: true,
            ..no_policy()
        };
        let (w, modes) = apply(ov.path(), allow_setuid).unwrap();
        assert_eq!(modes, [0o4755]);
        assert!(w.len() == 1 && w[0].contains("setuid"), "{w:?}");

        let ov = tempfile::tempdir().unwrap();
        world(ov.path());
        user_owned(ov.path());
        let e = format!("{:#}", apply(ov.path(), allow_setuid).unwrap_err());
        assert!(
            e.contains("etc/open is a world-writable file")
                && e.contains("allow-world-writable = true"),
            "{e}"
        );
        let both = OverlayPolicy {
            allow_setuid: true,
            allow_world_writable: true,
        };
        let (w, _) = apply(ov.path(), both).unwrap();
        assert!(w[0].contains("world-writable"), "{w:?}");

        // From an overlay root owns: taken, with a warning.
        if rustix::process::geteuid().is_root() {
            let ov = tempfile::tempdir().unwrap();
            setuid(ov.path());
            let (w, modes) = apply(ov.path(), no_policy()).unwrap();
            assert_eq!(modes, [0o4755]);
            assert!(w[0].contains("usr/bin/su-ish is a setuid file"), "{w:?}");
        }
    }

    #[test]
    fn shipped_overlay_applies() {
        let root = tempfile::tempdir().unwrap();
        let ir = ImageRoot::open(root.path()).unwrap();
        apply_overlay(
            &ir,
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("overlays/common"),
            &no_policy(),
        )
        .unwrap();
        let m = std::fs::metadata(root.path().join("usr/local/bin/mesobake-status")).unwrap();
        assert_eq!(m.permissions().mode() & 0o111, 0o111);
    }
}
