//! The cgroup hierarchy the image boots, decided on purpose.
//!
//! Mesos cares in two places (apache/mesos 1.11):
//! - the agent's `--systemd_enable_support` (default true) makes it look for the cgroup v1
//!   systemd hierarchy at `/sys/fs/cgroup/systemd` and exit without it
//!   (`src/slave/main.cpp`, `src/linux/systemd.cpp`): fatal on a pure cgroup v2 boot, which
//!   is what Debian 12 and Ubuntu 22.04/24.04 do by default;
//! - Apache's Docker containerizer needs a cgroup v1 `cpu` hierarchy
//!   (`src/docker/docker.cpp`); AVENTER's build skips that check on v2.
//!
//! What the image boots follows from its systemd's compiled default hierarchy and the
//! kernel command line in its boot config. A profile may change the latter
//! (`[boot] cgroup`), where the image's systemd can still boot cgroup v1.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::image::ImageRoot;

/// The kernel parameter systemd reads to choose between v2 and v1 (hybrid).
pub const UNIFIED_PARAM: &str = "systemd.unified_cgroup_hierarchy";
/// systemd 256 refuses to boot cgroup v1 without an override, and later releases drop it.
pub const LAST_SYSTEMD_WITH_V1: u32 = 255;
/// The grub.cfg a profile's cgroup setting edits.
const GRUB_CFG: &str = "boot/grub/grub.cfg";
/// Kept by the image's own update-grub, so a kernel upgrade keeps the setting.
const GRUB_DEFAULTS: &str = "etc/default/grub.d/60-mesobake-cgroup.cfg";

pub use crate::profile::CgroupMode as Mode;

/// What the image boots, and why; recorded in `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    /// The mode.
    pub mode: Mode,
    /// `legacy`, `hybrid` or `unified`.
    pub hierarchy: String,
    /// The image's systemd version (none under upstart).
    pub systemd: Option<u32>,
    /// systemd's compiled default hierarchy (`systemctl --version`).
    pub default_hierarchy: Option<String>,
    /// The kernel parameter that overrides the default, as found in the boot config.
    pub cmdline: Option<String>,
    /// Whether the profile's `[boot] cgroup` set it.
    pub from_profile: bool,
}

/// Parses `systemctl --version`: the version and the `default-hierarchy=` feature.
/// systemd before 233 prints no hierarchy and always boots legacy.
pub fn parse_systemctl_version(text: &str) -> Option<(u32, Option<String>)> {
    let first = text.lines().next()?;
    let version = first
        .split_whitespace()
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let hierarchy = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("default-hierarchy="))
        .map(String::from);
    Some((version, hierarchy))
}

/// The cgroup parameter on the default entry's kernel line in a grub.cfg (the first
/// `linux` line, which is the default entry in the files update-grub writes).
pub fn cmdline_param(grub_cfg: &str) -> Option<(String, bool)> {
    let line = grub_cfg.lines().map(str::trim_start).find(|l| {
        l.starts_with("linux ") || l.starts_with("linuxefi ") || l.starts_with("linux\t")
    })?;
    // The kernel hands the last occurrence to systemd.
    line.split_whitespace()
        .rev()
        .find(|w| *w == UNIFIED_PARAM || w.starts_with(&format!("{UNIFIED_PARAM}=")))
        .map(|w| {
            let v = w.split_once('=').map(|(_, v)| v).unwrap_or("1");
            let on = !matches!(v, "0" | "no" | "false" | "off" | "n");
            (w.to_string(), on)
        })
}

/// Works out what an image boots from its systemd and its grub.cfg. `systemctl` is
/// `systemctl --version` from inside the image, None where there is no systemd.
pub fn detect(systemctl: Option<&str>, grub_cfg: Option<&str>) -> Cgroup {
    let Some((version, default)) = systemctl.and_then(parse_systemctl_version) else {
        // Upstart (Ubuntu 14.04) mounts v1 controllers (cgroup-lite), and Mesos's systemd
        // support stays off because systemd is not running.
        return Cgroup {
            mode: Mode::V1,
            hierarchy: "legacy".into(),
            systemd: None,
            default_hierarchy: None,
            cmdline: None,
            from_profile: false,
        };
    };
    let compiled = default.clone().unwrap_or_else(|| "legacy".into());
    let param = grub_cfg.and_then(cmdline_param);
    let hierarchy = match &param {
        Some((_, true)) => "unified".to_string(),
        Some((_, false)) if compiled == "unified" => "hybrid".to_string(),
        _ => compiled,
    };
    Cgroup {
        mode: if hierarchy == "unified" {
            Mode::V2
        } else {
            Mode::V1
        },
        hierarchy,
        systemd: Some(version),
        default_hierarchy: default,
        cmdline: param.map(|(p, _)| p),
        from_profile: false,
    }
}

/// Reads what the image at `root` boots. `systemctl` is the output of
/// `systemctl --version` run in the image (None under upstart).
pub fn read(root: &ImageRoot, systemctl: Option<&str>) -> Cgroup {
    let cfg = root.read_to_string(GRUB_CFG).ok();
    detect(systemctl, cfg.as_deref())
}

/// The kernel line of every entry in a grub.cfg, with the cgroup parameter set to `mode`.
pub fn rewrite_grub_cfg(cfg: &str, mode: Mode) -> String {
    let param = format!("{UNIFIED_PARAM}={}", if mode == Mode::V2 { 1 } else { 0 });
    let mut out = String::with_capacity(cfg.len() + 256);
    for line in cfg.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let t = body.trim_start();
        if t.starts_with("linux ") || t.starts_with("linux\t") || t.starts_with("linuxefi ") {
            let indent = &body[..body.len() - t.len()];
            let kept: Vec<&str> = t
                .split_whitespace()
                .filter(|w| *w != UNIFIED_PARAM && !w.starts_with(&format!("{UNIFIED_PARAM}=")))
                .collect();
            out += indent;
            out += &kept.join(" ");
            out += " ";
            out += &param;
            if line.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out += line;
        }
    }
    out
}

/// Makes the image boot `want`: edits the kernel line of every grub.cfg entry and leaves
/// a grub.d snippet so that the image's own update-grub keeps it. Fails where the image's
/// systemd cannot boot that mode or there is no grub.cfg to edit.
pub fn apply(root: &ImageRoot, current: &Cgroup, want: Mode) -> Result<Cgroup> {
    let Some(version) = current.systemd else {
        if want == Mode::V1 {
            let mut c = current.clone();
            c.from_profile = true;
            return Ok(c);
        }
        bail!("[boot] cgroup = \"v2\": this image boots with upstart, which mounts only cgroup v1; remove the setting");
    };
    if want == Mode::V1 && version > LAST_SYSTEMD_WITH_V1 {
        bail!(
            "[boot] cgroup = \"v1\": the image's systemd {version} no longer boots cgroup v1 (the last that does is {LAST_SYSTEMD_WITH_V1}); use a base with an older systemd, or leave cgroup at v2 with a Mesos build that supports it (AVENTER's aventer-mesos)"
        );
    }
    let cfg = root.read_to_string(GRUB_CFG).with_context(|| {
        format!("[boot] cgroup = \"{want}\": reading /{GRUB_CFG} to edit the kernel command line")
    })?;
    let new = rewrite_grub_cfg(&cfg, want);
    if !new.contains(UNIFIED_PARAM) {
        bail!("[boot] cgroup = \"{want}\": /{GRUB_CFG} has no kernel (linux) line to edit");
    }
    root.write(GRUB_CFG, new.as_bytes(), 0o644)?;
    let v = if want == Mode::V2 { 1 } else { 0 };
    root.write(
        GRUB_DEFAULTS,
        format!(
            "# Written by mesobake ([boot] cgroup = \"{want}\" in the profile).\nGRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX {UNIFIED_PARAM}={v}\"\n"
        )
        .as_bytes(),
        0o644,
    )?;
    let mut c = detect(
        Some(&format!(
            "systemd {version}\n{}",
            current
                .default_hierarchy
                .as_ref()
                .map(|h| format!("default-hierarchy={h}"))
                .unwrap_or_default()
        )),
        Some(&new),
    );
    c.from_profile = true;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_12: &str = "systemd 252 (252.36-1~deb12u1)\n+PAM +AUDIT +SELINUX +APPARMOR +IMA +SMACK +SECCOMP +GCRYPT -GNUTLS +OPENSSL +ACL +BLKID +CURL +ELFUTILS +FIDO2 +IDN2 -IDN +IPTC +KMOD +LIBCRYPTSETUP +LIBFDISK +PCRE2 -PWQUALITY +P11KIT +QRENCODE +TPM2 +BZIP2 +LZ4 +XZ +ZLIB +ZSTD -BPF_FRAMEWORK -XKBCOMMON +UTMP +SYSVINIT default-hierarchy=unified\n";
    const UBUNTU_18: &str = "systemd 237\n+PAM +AUDIT +SELINUX +IMA +APPARMOR +SMACK +SYSVINIT +UTMP +LIBCRYPTSETUP +GCRYPT +GNUTLS +ACL +XZ +LZ4 +SECCOMP +BLKID +ELFUTILS +KMOD -IDN2 +IDN -PCRE2 default-hierarchy=hybrid\n";
    const UBUNTU_16: &str = "systemd 229\n+PAM +AUDIT +SELINUX +IMA +APPARMOR +SMACK +SYSVINIT +UTMP +LIBCRYPTSETUP +GCRYPT +GNUTLS +ACL +XZ -LZ4 +SECCOMP +BLKID +ELFUTILS +KMOD -IDN\n";
    const GRUB: &str = "set default=0\nmenuentry 'Debian' {\n\tsearch --set=root x\n\tlinux /boot/vmlinuz-6.1 root=UUID=abc ro console=ttyS0,115200\n\tinitrd /boot/initrd.img-6.1\n}\nmenuentry 'rescue' {\n\tlinux /boot/vmlinuz-6.1 root=UUID=abc ro single systemd.unified_cgroup_hierarchy=1\n}\n";

    #[test]
    fn modern_systemd_boots_v2_older_ones_v1() {
        let c = detect(Some(DEBIAN_12), Some(GRUB));
        assert_eq!(
            (c.mode, c.hierarchy.as_str(), c.systemd),
            (Mode::V2, "unified", Some(252))
        );
        let c = detect(Some(UBUNTU_18), None);
        assert_eq!((c.mode, c.hierarchy.as_str()), (Mode::V1, "hybrid"));
        let c = detect(Some(UBUNTU_16), None);
        assert_eq!((c.mode, c.hierarchy.as_str()), (Mode::V1, "legacy"));
        let c = detect(None, None);
        assert_eq!((c.mode, c.systemd), (Mode::V1, None));
    }

    #[test]
    fn the_kernel_command_line_overrides_the_default() {
        let cfg = GRUB.replace(
            "console=ttyS0,115200",
            "console=ttyS0,115200 systemd.unified_cgroup_hierarchy=0",
        );
        let c = detect(Some(DEBIAN_12), Some(&cfg));
        assert_eq!((c.mode, c.hierarchy.as_str()), (Mode::V1, "hybrid"));
        assert_eq!(
            c.cmdline.as_deref(),
            Some("systemd.unified_cgroup_hierarchy=0")
        );
        let cfg = GRUB.replace("console=ttyS0,115200", "systemd.unified_cgroup_hierarchy");
        assert_eq!(detect(Some(UBUNTU_18), Some(&cfg)).mode, Mode::V2);
    }

    #[test]
    fn rewriting_sets_every_kernel_line_once() {
        let new = rewrite_grub_cfg(GRUB, Mode::V1);
        let lines: Vec<&str> = new
            .lines()
            .filter(|l| l.trim_start().starts_with("linux"))
            .collect();
        assert_eq!(lines.len(), 2);
        for l in &lines {
            assert_eq!(l.matches(UNIFIED_PARAM).count(), 1, "{l}");
            assert!(l.ends_with("systemd.unified_cgroup_hierarchy=0"), "{l}");
            assert!(l.starts_with('\t'), "indent kept: {l:?}");
        }
        assert!(new.contains("\tinitrd /boot/initrd.img-6.1\n"));
        assert_eq!(rewrite_grub_cfg(&new, Mode::V1), new, "idempotent");
        assert_eq!(detect(Some(DEBIAN_12), Some(&new)).mode, Mode::V1);
    }

    #[test]
    fn v1_is_refused_where_systemd_dropped_it() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("boot/grub")).unwrap();
        std::fs::write(d.path().join("boot/grub/grub.cfg"), GRUB).unwrap();
        let root = ImageRoot::open(d.path()).unwrap();
        let new = "systemd 257 (257.4)\n+PAM default-hierarchy=unified\n";
        let cur = read(&root, Some(new));
        let e = apply(&root, &cur, Mode::V1).unwrap_err().to_string();
        assert!(e.contains("systemd 257 no longer boots cgroup v1"), "{e}");

        let cur = read(&root, Some(DEBIAN_12));
        let c = apply(&root, &cur, Mode::V1).unwrap();
        assert_eq!((c.mode, c.from_profile), (Mode::V1, true));
        let cfg = std::fs::read_to_string(d.path().join("boot/grub/grub.cfg")).unwrap();
        assert_eq!(read(&root, Some(DEBIAN_12)).mode, Mode::V1, "{cfg}");
        let snippet =
            std::fs::read_to_string(d.path().join("etc/default/grub.d/60-mesobake-cgroup.cfg"))
                .unwrap();
        assert!(snippet.contains(
            "GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX systemd.unified_cgroup_hierarchy=0\""
        ));
    }
}
