//! CLI tests: the real binary against scratch directories. None of these needs root or a
//! VM; the ones that exercise refusals (not root, missing tool) check that nothing was
//! left behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::prelude::*;
use predicates::prelude::*;

fn mesobake() -> Command {
    let mut c = Command::cargo_bin("mesobake").unwrap();
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `--with` file for builds that must get past validation without the files a fresh
/// checkout lacks: AVENTER's key (not shipped) and the stand-in debs (built by
/// ci/standins/build.sh). `build` validates every referenced file first (issue 11).
fn without_missing_files(dir: &Path) -> PathBuf {
    let p = dir.join("no-key-no-debs.toml");
    std::fs::write(&p, "[apt]\nsources = []\n[packages]\ndebs = []\n").unwrap();
    p
}

#[test]
fn profiles_lists_the_three_roles_with_descriptions() {
    mesobake()
        .arg("profiles")
        .assert()
        .success()
        .stdout(
            predicate::str::contains("master-slave")
                .and(predicate::str::contains("one-node cluster")),
        )
        .stdout(predicate::str::contains("slave-only").and(predicate::str::contains("agent only")))
        .stdout(predicate::str::contains("master "));
    let out = mesobake().args(["profiles", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The checkout's three, which shadow the built-in ones.
    let here: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["shadowed"] == false)
        .collect();
    assert_eq!(here.len(), 3);
}

#[test]
fn dry_run_prints_the_plan_and_does_nothing() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("o");
    let w = without_missing_files(out.path());
    mesobake()
        .args(["build", "profiles/master.toml", "--dry-run", "--with"])
        .arg(&w)
        .arg("--out")
        .arg(&o)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "services    zookeeper master marathon",
        ))
        .stdout(predicate::str::contains("base        ubuntu-24.04"))
        .stdout(predicate::str::contains("aventer-mesos"));
    assert!(
        !o.exists(),
        "a dry run must not create the output directory"
    );
    mesobake()
        .args([
            "build",
            "profiles/slave-only.toml",
            "--dry-run",
            "--with",
            "profiles/include/offline-standins.toml",
            "--with",
        ])
        .arg(&w)
        .assert()
        .success()
        .stdout(predicate::str::contains("base        debian-12"))
        .stdout(predicate::str::contains(
            "agent       containerizers=docker,mesos executor_registration_timeout=5mins",
        ));
}

#[test]
fn unknown_profile_key_names_file_line_and_key() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.toml");
    std::fs::write(
        &p,
        "include = [\"".to_string()
            + &repo()
                .join("profiles/include/common.toml")
                .to_string_lossy()
            + "\"]\n[role]\nservices = [\"agent\"]\ncontainerisers = \"docker\"\n",
    )
    .unwrap();
    mesobake()
        .arg("build")
        .arg(&p)
        .arg("--dry-run")
        .assert()
        .failure()
        .stderr(predicate::str::contains("bad.toml"))
        .stderr(predicate::str::contains("line 4"))
        .stderr(predicate::str::contains("containerisers"));
}

#[test]
fn missing_base_is_a_clear_error() {
    mesobake()
        .args([
            "build",
            "profiles/master.toml",
            "--dry-run",
            "--base",
            "/nonexistent/base.qcow2",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "base \"/nonexistent/base.qcow2\" not found",
        ))
        .stderr(predicate::str::contains("debian-12"));
}

#[test]
fn unknown_format_is_refused() {
    mesobake()
        .args([
            "build",
            "profiles/master.toml",
            "--dry-run",
            "--format",
            "qcow3",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains("unknown output format \"qcow3\""));
}

/// Runs the binary as an unprivileged user, when this test itself runs as root.
#[test]
fn not_root_is_refused_before_any_work() {
    let out = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        out.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let bin = assert_cmd::cargo::cargo_bin("mesobake");
    let is_root = rustix::process::geteuid().is_root();
    let mut c = if is_root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let wd = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        wd.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let w = without_missing_files(wd.path());
    c.current_dir(repo())
        .args([
            "build",
            "profiles/master.toml",
            "--with",
            "profiles/include/offline-standins.toml",
            "--with",
        ])
        .arg(&w)
        .arg("--out")
        .arg(out.path());
    c.assert()
        .failure()
        .stderr(predicate::str::contains("must run as root"));
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "nothing may be written"
    );
}

/// A PATH holding every build tool but one: the error names the tool and its package.
#[test]
fn missing_host_tool_names_the_package() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the root check comes first; run as root to test the tool check");
        return;
    }
    let bin_dir = tempfile::tempdir().unwrap();
    for (tool, _) in mesobake::context::BUILD_TOOLS
        .iter()
        .chain(mesobake::context::BOOTSTRAP_TOOLS)
    {
        if *tool == "sgdisk" {
            continue;
        }
        if let Some(p) = which(tool) {
            std::os::unix::fs::symlink(p, bin_dir.path().join(tool)).ok();
        }
    }
    let out = tempfile::tempdir().unwrap();
    let w = without_missing_files(bin_dir.path());
    mesobake()
        .env("PATH", bin_dir.path())
        .args([
            "build",
            "profiles/master.toml",
            "--with",
            "profiles/include/offline-standins.toml",
            "--with",
        ])
        .arg(&w)
        .arg("--out")
        .arg(out.path())
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "missing host tool: sgdisk (package gdisk)",
        ))
        .stderr(predicate::str::contains("apt-get install gdisk"));
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "nothing may be written"
    );
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| Path::new(p).is_file())
}

#[test]
fn help_lists_the_commands() {
    mesobake().arg("--help").assert().success().stdout(
        predicate::str::contains("profiles")
            .and(predicate::str::contains("build"))
            .and(predicate::str::contains("verify")),
    );
}
