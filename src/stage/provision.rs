//! Provision: apt sources with pinned keys, local .deb files, and the package list,
//! installed in a chroot with service starts blocked.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::BuildContext;
use crate::base::Family;
use crate::image::{chroot, AttachedImage, ImageRoot};
use crate::profile::AptSource;
use crate::run::{Cmd, CommandFailed};

/// What provisioning installed.
#[derive(Debug, Clone, Default)]
pub struct ProvisionReport {
    /// Every installed package, sorted by name and architecture.
    pub packages: Vec<Package>,
    /// The local .deb files that were offered to apt, with their SHA256.
    pub debs: Vec<(String, String)>,
}

/// Where local .debs are staged inside the image while apt runs (removed afterwards).
const LOCAL_REPO: &str = "var/cache/mesobake-debs";
const LOCAL_LIST: &str = "etc/apt/sources.list.d/mesobake-local.list";
/// Blocks service starts from maintainer scripts (zookeeperd's postinst starts it).
const POLICY_RC_D: &str = "usr/sbin/policy-rc.d";
const RESOLV_BACKUP: &str = "etc/.resolv.conf.mesobake-orig";

/// Runs the provision stage.
pub fn run(ctx: &mut BuildContext, img: &mut AttachedImage) -> Result<ProvisionReport> {
    let mark = img.mount_chroot_fs()?;
    let prepared = prepare(ctx, &img.root);
    let installed = prepared.and_then(|debs| {
        ctx.progress.step(&format!(
            "apt-get install {}",
            ctx.req.profile.packages.join(" ")
        ));
        install(ctx, &img.root)?;
        Ok(debs)
    });
    // Undo the temporary changes whether or not apt succeeded, then unmount /proc & co.
    let undone = undo(&img.root);
    let packages = installed
        .as_ref()
        .ok()
        .map(|_| installed_packages(&img.root));
    let unmounted = img.unmount_chroot_fs(mark);
    let debs = installed?;
    undone?;
    unmounted?;
    Ok(ProvisionReport {
        packages: packages.transpose()?.unwrap_or_default(),
        debs,
    })
}

fn prepare(ctx: &mut BuildContext, root: &ImageRoot) -> Result<Vec<(String, String)>> {
    // The chroot resolves names with the host's resolver for the duration of apt.
    if root.exists("etc/resolv.conf")
        || std::fs::symlink_metadata(root.path().join("etc/resolv.conf")).is_ok()
    {
        std::fs::rename(
            root.path().join("etc/resolv.conf"),
            root.path().join(RESOLV_BACKUP),
        )
        .context("setting aside the image's resolv.conf")?;
    }
    let host_resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    root.write("etc/resolv.conf", &host_resolv, 0o644)?;
    if root.exists(POLICY_RC_D) {
        bail!("the base already has /{POLICY_RC_D}; refusing to replace it (it would be removed after the build)");
    }
    root.write(POLICY_RC_D, b"#!/bin/sh\n# Written by mesobake during the build: no service starts in a chroot.\nexit 101\n", 0o755)?;
    let family = ctx.base.family;
    let codename = ctx.base.codename.clone().unwrap_or_default();
    for src in &ctx.req.profile.apt_sources {
        let applies = match (&src.family, family) {
            (None, _) => true,
            (Some(f), Some(Family::Ubuntu)) => f == "ubuntu",
            (Some(f), Some(Family::Debian)) => f == "debian",
            (Some(_), None) => false,
        };
        if applies {
            write_source(root, src, &codename)?;
        }
    }
    let debs = stage_local_debs(root, &ctx.req.profile.debs)?;
    Ok(debs)
}

/// Writes one apt source pinned to its key with `signed-by`, so the key vouches for this
/// repository only (not for the whole system, as apt-key did).
fn write_source(root: &ImageRoot, src: &AptSource, codename: &str) -> Result<()> {
    let key = std::fs::read(&src.key).with_context(|| {
        format!("reading the key of apt source {:?}: {} not found; fetch the repository's public key there", src.name, src.key)
    })?;
    let binary = if key.starts_with(b"-----BEGIN PGP") {
        Cmd::new("gpg")
            .args(["--batch", "--dearmor"])
            .stdin_bytes(key)
            .output()
            .with_context(|| format!("de-armouring the key of apt source {:?}", src.name))?
    } else {
        key
    };
    let keyfile = format!("etc/apt/keyrings/mesobake-{}.gpg", src.name);
    root.write(&keyfile, &binary, 0o644)?;
    let sub = |s: &str| s.replace("{codename}", codename);
    let uri = sub(&src.uri);
    let mut text = String::from("# Written by mesobake from the profile.\n");
    for suite in src.suites.iter().map(|s| sub(s)) {
        text += &format!(
            "deb [signed-by=/{keyfile}] {uri} {suite} {}\n",
            src.components.join(" ")
        );
    }
    root.write(
        &format!("etc/apt/sources.list.d/mesobake-{}.list", src.name),
        text.as_bytes(),
        0o644,
    )
}

/// Copies local .debs into a flat repository inside the image, so apt installs them by
/// name and resolves their dependencies from the archive.
fn stage_local_debs(root: &ImageRoot, sources: &[PathBuf]) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for s in sources {
        if s.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(s)
                .with_context(|| format!("reading local debs from {}", s.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "deb"))
                .collect();
            if found.is_empty() {
                bail!(
                    "{}: no .deb files in this directory (listed in [packages] debs)",
                    s.display()
                );
            }
            found.sort();
            files.extend(found);
        } else if s.is_file() {
            files.push(s.clone());
        } else {
            bail!(
                "{}: no such .deb file or directory (listed in [packages] debs)",
                s.display()
            );
        }
    }
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let repo = root.mkdir_all(LOCAL_REPO, 0o755)?;
    let mut out = Vec::new();
    for f in &files {
        let name = f
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        let data = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        out.push((
            name.clone(),
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data)),
        ));
        root.write(&format!("{LOCAL_REPO}/{name}"), &data, 0o644)?;
    }
    let index = Cmd::new("dpkg-scanpackages")
        .args(["--multiversion", "."])
        .current_dir(&repo)
        .output()
        .context("indexing the local .deb files")?;
    root.write(&format!("{LOCAL_REPO}/Packages"), &index, 0o644)?;
    // trusted=yes covers only this repository of files the user handed us.
    root.write(
        LOCAL_LIST,
        format!("deb [trusted=yes] file:/{LOCAL_REPO} ./\n").as_bytes(),
        0o644,
    )?;
    Ok(out)
}

fn install(ctx: &BuildContext, root: &ImageRoot) -> Result<()> {
    let r = root.path();
    let apt = |args: &[&str]| {
        let mut argv = vec![
            "apt-get",
            "-y",
            "-q",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
            // dpkg fsyncs every unpacked file; a build that crashes throws its disk away
            // anyway, so the syncs only cost time (about 10% of the install here). An
            // option of this command only: nothing of it reaches the image's dpkg.cfg.
            "-o",
            "Dpkg::Options::=--force-unsafe-io",
        ];
        argv.extend_from_slice(args);
        chroot(r, &argv)
    };
    apt(&["update"]).run().map_err(|e| explain_apt(e, &[]))?;
    let mut args = vec!["install", "--no-install-recommends"];
    args.extend(ctx.req.profile.packages.iter().map(String::as_str));
    apt(&args)
        .run()
        .map_err(|e| explain_apt(e, &ctx.req.profile.packages))?;
    // Keep downloaded .debs out of the image: they would only be trimmed later.
    apt(&["clean"]).run()?;
    Ok(())
}

/// Turns an apt failure into one that names the package, when apt said which.
fn explain_apt(e: anyhow::Error, wanted: &[String]) -> anyhow::Error {
    let Some(cf) = e.downcast_ref::<CommandFailed>() else {
        return e;
    };
    let tail = cf.stderr_tail.clone();
    let culprit = tail.lines().find_map(|l| {
        for pat in [
            "Unable to locate package ",
            "Package '",
            "dpkg: error processing package ",
            "has no installation candidate",
        ] {
            if let Some(i) = l.find(pat) {
                let rest = &l[i + pat.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "+-.:".contains(*c))
                    .collect();
                if !name.is_empty() {
                    return Some(name);
                }
                if pat == "has no installation candidate" {
                    return l.split('\'').nth(1).map(String::from);
                }
            }
        }
        l.contains("Depends:").then(|| {
            l.split_whitespace()
                .next()
                .unwrap_or("")
                .trim_end_matches(':')
                .to_string()
        })
    });
    match culprit {
        Some(p) if !p.is_empty() => e.context(format!(
            "apt could not install package {p}{}",
            if wanted.contains(&p) {
                ""
            } else {
                " (a dependency)"
            }
        )),
        _ => e.context("apt-get failed"),
    }
}

fn undo(root: &ImageRoot) -> Result<()> {
    root.remove_file(POLICY_RC_D)?;
    root.remove_file(LOCAL_LIST)?;
    if root.exists(LOCAL_REPO) {
        root.empty_dir(LOCAL_REPO)?;
        std::fs::remove_dir(root.resolve(LOCAL_REPO)?).ok();
    }
    root.remove_file("etc/resolv.conf")?;
    let backup = root.path().join(RESOLV_BACKUP);
    if std::fs::symlink_metadata(&backup).is_ok() {
        std::fs::rename(&backup, root.path().join("etc/resolv.conf"))
            .context("restoring the image's resolv.conf")?;
    }
    Ok(())
}

/// One installed package, as dpkg records it in the image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    /// The package name, without an architecture qualifier.
    pub name: String,
    /// Its version, epoch included (`1:2.3-4`).
    pub version: String,
    /// Its architecture (`amd64`, `all`).
    pub architecture: String,
    /// The source package it was built from, when its name or version differs from the
    /// binary's (`openssl` for `libssl3`, `5.2.15-2` for bash `5.2.15-2+b8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourcePackage>,
    /// The licence its DEP-5 copyright file declares, as written there
    /// (`GPL-2+ or Artistic`); None when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
}

/// A source package: name and version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourcePackage {
    /// The source package name.
    pub name: String,
    /// The source package version.
    pub version: String,
}

impl Package {
    /// The source package's name and version (the binary's own when dpkg names none).
    pub fn source_or_self(&self) -> (&str, &str) {
        match &self.source {
            Some(s) => (&s.name, &s.version),
            None => (&self.name, &self.version),
        }
    }
}

/// The dpkg-query format [`parse_installed`] reads: `${Source}` besides the
/// `source:*` virtual fields for a dpkg too old to have them.
const DPKG_QUERY_FORMAT: &str = "${Package}\t${Architecture}\t${Version}\t${source:Package}\t${source:Version}\t${Source}\t${db:Status-Abbrev}\n";

/// Every installed package, from dpkg's database inside the image, with the licence its
/// copyright file declares ([`super::copyright`]).
pub fn installed_packages(root: &ImageRoot) -> Result<Vec<Package>> {
    let out = Cmd::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.path().join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", DPKG_QUERY_FORMAT])
        .read()
        .context("listing installed packages")?;
    let mut v = parse_installed(&out);
    for p in &mut v {
        p.license = super::copyright::declared_license(root, &p.name);
    }
    Ok(v)
}

/// Reads dpkg-query's output in [`DPKG_QUERY_FORMAT`]: installed (`ii`) packages only,
/// sorted.
fn parse_installed(out: &str) -> Vec<Package> {
    let mut v: Vec<Package> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let [name, arch, version, src, src_version, src_field, status] = f[..] else {
                return None;
            };
            if !status.starts_with("ii") {
                return None;
            }
            // `Source: name (version)`, or just `name`, or empty for "the same".
            let (src, src_version) = if src.is_empty() {
                let mut it = src_field.split_whitespace();
                let n = it.next().unwrap_or(name);
                let sv = it.next().map(|v| v.trim_matches(['(', ')']));
                (n, sv.unwrap_or(version))
            } else {
                (
                    src,
                    if src_version.is_empty() {
                        version
                    } else {
                        src_version
                    },
                )
            };
            let source = (src != name || src_version != version).then(|| SourcePackage {
                name: src.to_string(),
                version: src_version.to_string(),
            });
            Some(Package {
                name: name.to_string(),
                version: version.to_string(),
                architecture: arch.to_string(),
                source,
                license: None,
            })
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(tail: &str) -> anyhow::Error {
        CommandFailed {
            cmdline: "chroot r apt-get install x".into(),
            status: "exit status 100".into(),
            stderr_tail: tail.into(),
        }
        .into()
    }

    #[test]
    fn dpkg_query_output_becomes_package_records() {
        let out = "bash\tamd64\t5.2.15-2+b8\tbash\t5.2.15-2\tbash (5.2.15-2)\tii \n\
                   zlib1g\tamd64\t1:1.2.13.dfsg-1\tzlib\t1:1.2.13.dfsg-1\tzlib\tii \n\
                   gone\tall\t1.0\tgone\t1.0\t\trc \n\
                   dash\tamd64\t0.5.12-2\tdash\t0.5.12-2\t\tii \n\
                   libssl3\tamd64\t3.0.11-1\t\t\topenssl\tii \n";
        let v = parse_installed(out);
        let names: Vec<&str> = v.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["bash", "dash", "libssl3", "zlib1g"]);
        // A binNMU: same source name, different version.
        assert_eq!(
            v[0].source,
            Some(SourcePackage {
                name: "bash".into(),
                version: "5.2.15-2".into()
            })
        );
        assert_eq!(v[1].source, None);
        assert_eq!(v[1].source_or_self(), ("dash", "0.5.12-2"));
        // From `Source:` alone (a dpkg without the source:* fields).
        assert_eq!(v[2].source_or_self(), ("openssl", "3.0.11-1"));
        assert_eq!(v[3].source.as_ref().unwrap().name, "zlib");
        assert_eq!(v[3].version, "1:1.2.13.dfsg-1");
        assert_eq!(v[3].architecture, "amd64");
    }

    #[test]
    fn apt_errors_name_the_package() {
        let wanted = vec!["mesos".to_string(), "nosuchpkg".to_string()];
        let e = explain_apt(failed("E: Unable to locate package nosuchpkg"), &wanted);
        assert!(
            format!("{e:#}").starts_with("apt could not install package nosuchpkg:"),
            "{e:#}"
        );
        let e = explain_apt(
            failed("E: Package 'mesos' has no installation candidate"),
            &wanted,
        );
        assert!(format!("{e:#}").contains("package mesos"), "{e:#}");
        let e = explain_apt(
            failed("dpkg: error processing package libfoo1 (--configure):"),
            &wanted,
        );
        assert!(
            format!("{e:#}").contains("package libfoo1 (a dependency)"),
            "{e:#}"
        );
    }

    #[test]
    fn sources_are_pinned_to_their_key() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("k.gpg");
        std::fs::write(&key, b"\x99binarykey").unwrap();
        let root = ImageRoot::open(d.path()).unwrap();
        let src = AptSource {
            name: "aventer".into(),
            family: Some("debian".into()),
            uri: "http://repo.example/Debian/".into(),
            suites: vec!["{codename}".into()],
            components: vec!["main".into()],
            key: key.to_string_lossy().into(),
        };
        write_source(&root, &src, "bookworm").unwrap();
        let list = root
            .read_to_string("etc/apt/sources.list.d/mesobake-aventer.list")
            .unwrap();
        assert!(
            list.contains("deb [signed-by=/etc/apt/keyrings/mesobake-aventer.gpg] http://repo.example/Debian/ bookworm main"),
            "{list}"
        );
        assert_eq!(
            std::fs::read(d.path().join("etc/apt/keyrings/mesobake-aventer.gpg")).unwrap(),
            b"\x99binarykey"
        );
    }
}
