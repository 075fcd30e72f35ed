//! Configure: overlays, service overrides for the detected init system, cluster-wide
//! config files, the first-boot configurator and cloud-init's datasource config.
//!
//! Nothing node-specific is written here (`ip`, `hostname`, `quorum`, `/etc/mesos/zk`,
//! `myid`): the configurator writes those at first boot.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::layout::{self, Init, Layout};
use super::BuildContext;
use crate::image::{chroot, AttachedImage, ImageRoot};
use crate::profile::{Profile, Service};

/// The configurator script, installed at [`CONFIGURATOR_PATH`].
pub const CONFIGURATOR: &str = include_str!("firstboot/mesobake-configure");
/// Its systemd unit.
pub const CONFIGURATOR_UNIT: &str = include_str!("firstboot/mesobake-configure.service");
/// Its upstart job (Ubuntu 14.04).
pub const CONFIGURATOR_JOB: &str = include_str!("firstboot/mesobake-configure.upstart.conf");
/// Where the configurator lives in the image.
pub const CONFIGURATOR_PATH: &str = "usr/lib/mesobake/mesobake-configure";

/// Runs the configure stage and returns the detected layout.
pub fn run(ctx: &mut BuildContext, img: &mut AttachedImage) -> Result<Layout> {
    let profile = ctx.req.profile.clone();
    let layout = layout::detect(&img.root);
    layout.check_role(&profile)?;
    for o in &profile.overlays {
        ctx.progress.step(&format!("overlay {}", o.display()));
        apply_overlay(&img.root, o)?;
    }
    write_role_files(&img.root, &profile, &layout)?;
    let mark = img.mount_chroot_fs()?;
    let r = apply_service_overrides(&img.root, &profile, &layout);
    let u = img.unmount_chroot_fs(mark);
    r?;
    u?;
    Ok(layout)
}

/// Lays an overlay tree over the image root. Modes are kept; files become root-owned,
/// because a checkout's owner (often uid 1000) means nothing inside the image. Writes
/// resolve inside the root, and a symlink in the overlay that climbs out of the root is
/// refused.
pub fn apply_overlay(root: &ImageRoot, dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "overlay {}: no such directory (listed in the profile's overlays)",
            dir.display()
        );
    }
    walk(root, dir, dir)
}

fn walk(root: &ImageRoot, top: &Path, dir: &Path) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading overlay {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let rel = src
            .strip_prefix(top)
            .expect("walked from top")
            .to_string_lossy()
            .into_owned();
        let meta = std::fs::symlink_metadata(&src)?;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&src)?;
            let depth = Path::new(&rel).components().count() - 1;
            let ups = target
                .components()
                .take_while(|c| matches!(c, std::path::Component::ParentDir))
                .count();
            if target.is_relative() && ups > depth {
                bail!(
                    "overlay {}: symlink {rel} -> {} points outside the image root",
                    top.display(),
                    target.display()
                );
            }
            root.symlink(&target, &rel)?;
        } else if meta.is_dir() {
            root.mkdir_all(&rel, mode)?;
            walk(root, top, &src)?;
        } else if meta.is_file() {
            let data = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            root.write(&rel, &data, mode)?;
        } else {
            bail!(
                "overlay {}: {rel} is not a file, directory or symlink",
                top.display()
            );
        }
    }
    Ok(())
}

/// Quotes a value for a shell `KEY=value` file.
fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// The baked defaults the configurator reads first (`/etc/mesobake/role.env`).
pub fn role_env(profile: &Profile, layout: &Layout) -> String {
    let mut s = String::from("# Written by mesobake at build time: the role's defaults. Node settings go in\n# /etc/mesobake/node.env (from cloud-init user-data); see mesobake-configure.\n");
    let kv = |k: &str, v: &str| format!("{k}={}\n", sh_quote(v));
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
    s
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
    root.write(
        "etc/mesobake/role.env",
        role_env(profile, layout).as_bytes(),
        0o644,
    )?;
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
        for (k, v) in &profile.agent_flags {
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

/// Whether the role's agent uses the docker containerizer, so the Docker daemon must run.
pub fn wants_docker(profile: &Profile) -> bool {
    profile.runs(Service::Agent)
        && profile
            .agent_flags
            .get("containerizers")
            .is_some_and(|c| c.split(',').any(|x| x.trim() == "docker"))
}

/// The upstart override that keeps a job from starting at boot.
pub fn upstart_override() -> &'static str {
    "manual\n"
}

/// The systemd drop-in that orders a role service after the configurator.
pub fn systemd_dropin() -> &'static str {
    "# Written by mesobake: start only after mesobake-configure wrote this node's config.\n[Unit]\nAfter=mesobake-configure.service\n"
}

/// The service actions for the role, as (action, unit) pairs; pure so it can be tested.
/// The role's own services are disabled and started by the configurator after it wrote
/// their config; the others are masked, because package upgrades re-enable a merely
/// disabled unit.
pub fn plan_overrides(profile: &Profile, layout: &Layout) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    for (s, unit) in &layout.installed {
        let action = match (layout.init, profile.runs(*s)) {
            (Init::Systemd, true) => "disable+order",
            (Init::Systemd, false) => "mask",
            (Init::Upstart, _) => "manual",
        };
        v.push((action, unit.clone()));
    }
    v
}

fn apply_service_overrides(root: &ImageRoot, profile: &Profile, layout: &Layout) -> Result<()> {
    let r = root.path();
    for (action, unit) in plan_overrides(profile, layout) {
        match action {
            "disable+order" => {
                chroot(r, &["systemctl", "disable", &unit])
                    .run()
                    .with_context(|| format!("disabling {unit}"))?;
                root.write(
                    &format!("etc/systemd/system/{unit}.service.d/mesobake.conf"),
                    systemd_dropin().as_bytes(),
                    0o644,
                )?;
            }
            "mask" => {
                chroot(r, &["systemctl", "disable", &unit]).run().ok();
                chroot(r, &["systemctl", "mask", &unit])
                    .run()
                    .with_context(|| format!("masking {unit}"))?;
            }
            "manual" => root.write(
                &format!("etc/init/{unit}.override"),
                upstart_override().as_bytes(),
                0o644,
            )?,
            _ => unreachable!("plan_overrides returns known actions"),
        }
    }
    if layout.init == Init::Systemd && !wants_docker(profile) {
        // The shared package set brings Docker to every role; only agents with the docker
        // containerizer need the daemon running (it costs boot time and memory).
        for unit in ["docker.service", "docker.socket"] {
            if root.exists(&format!("lib/systemd/system/{unit}")) {
                chroot(r, &["systemctl", "disable", unit])
                    .run()
                    .with_context(|| format!("disabling {unit}"))?;
            }
        }
    }
    match layout.init {
        Init::Systemd => {
            root.write(
                "etc/systemd/system/mesobake-configure.service",
                CONFIGURATOR_UNIT.as_bytes(),
                0o644,
            )?;
            chroot(r, &["systemctl", "enable", "mesobake-configure.service"]).run()?;
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

    fn profile(services: &[Service]) -> Profile {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let mut p = crate::profile::load(&dir.join("master-slave.toml"), &[]).unwrap();
        p.services = services.to_vec();
        p
    }

    fn layout(init: Init, agent: &str) -> Layout {
        Layout {
            init,
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
                ("mask", "zookeeper".to_string()),
                ("mask", "mesos-master".to_string()),
                ("mask", "marathon".to_string()),
                ("disable+order", "mesos-slave".to_string()),
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
    fn docker_runs_only_for_the_docker_containerizer() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        assert!(wants_docker(
            &crate::profile::load(&dir.join("slave-only.toml"), &[]).unwrap()
        ));
        assert!(!wants_docker(
            &crate::profile::load(&dir.join("master-slave.toml"), &[]).unwrap()
        ));
        assert!(!wants_docker(
            &crate::profile::load(&dir.join("master.toml"), &[]).unwrap()
        ));
    }

    #[test]
    fn upstart_gets_manual_overrides_for_every_job() {
        let p = profile(&[Service::Zookeeper, Service::Master, Service::Marathon]);
        let plan = plan_overrides(&p, &layout(Init::Upstart, "mesos-slave"));
        assert!(plan.iter().all(|(a, _)| *a == "manual"));
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
        apply_overlay(&ir, ov.path()).unwrap();
        let m = std::fs::metadata(root.path().join("usr/local/bin/tool")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o750);

        std::os::unix::fs::symlink(
            "../../../../etc/shadow",
            ov.path().join("usr/local/bin/evil"),
        )
        .unwrap();
        let e = apply_overlay(&ir, ov.path()).unwrap_err();
        assert!(
            format!("{e:#}").contains("points outside the image root"),
            "{e:#}"
        );
    }

    #[test]
    fn shipped_overlay_applies() {
        let root = tempfile::tempdir().unwrap();
        let ir = ImageRoot::open(root.path()).unwrap();
        apply_overlay(
            &ir,
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("overlays/common"),
        )
        .unwrap();
        let m = std::fs::metadata(root.path().join("usr/local/bin/mesobake-status")).unwrap();
        assert_eq!(m.permissions().mode() & 0o111, 0o111);
    }
}
