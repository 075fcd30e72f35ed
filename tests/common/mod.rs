//! Helpers shared by the end-to-end test binaries (tests/e2e*.rs), and the SPDX
//! validator's lookup, which tests/sbom.rs shares with them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The offline profile layer: debian-12 bootstrap plus the stand-in Mesos packages.
pub const OFFLINE: &str = "profiles/include/offline-standins.toml";

/// Whether the root + VM tier runs (`MESOBAKE_E2E=1`, as root).
pub fn enabled() -> bool {
    if std::env::var("MESOBAKE_E2E").as_deref() != Ok("1") {
        eprintln!("skipped: set MESOBAKE_E2E=1 (needs root, QEMU and the host tools from ci/setup-host.sh)");
        return false;
    }
    assert!(
        rustix::process::geteuid().is_root(),
        "MESOBAKE_E2E=1 needs root"
    );
    true
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A directory under target/.
pub fn target_dir(name: &str) -> PathBuf {
    repo().join("target").join(name)
}

/// The mesobake binary, run from the repository with the shared e2e cache.
pub fn mesobake(args: &[&str]) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("mesobake"));
    c.current_dir(repo())
        .env("MESOBAKE_CACHE_DIR", target_dir("e2e-cache"))
        .args(args);
    c
}

/// Runs a command that must succeed; returns its stdout and how long it took.
pub fn run_ok(mut c: Command, what: &str) -> (String, f64) {
    let t = Instant::now();
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let secs = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}",
        out.status
    );
    eprintln!("e2e: {what}: {secs:.1} s");
    (stdout, secs)
}

/// Builds the stand-in packages into ci/standins/out.
pub fn standins() {
    let dest = repo().join("ci/standins/out");
    let st = Command::new("bash")
        .arg(repo().join("ci/standins/build.sh"))
        .arg(&dest)
        .status()
        .unwrap();
    assert!(st.success(), "building the stand-in packages failed");
}

/// [`run_ok`] for callers that only want stdout.
pub fn run_ok_text(c: Command, what: &str) -> String {
    run_ok(c, what).0
}

/// Where `ci/setup-host.sh` installs the SPDX project's validator.
pub const PYSPDXTOOLS: &str = "/opt/mesobake-ci/spdx-tools/bin/pyspdxtools";

/// The SPDX validator (`pyspdxtools`): `$MESOBAKE_PYSPDXTOOLS`, the one
/// `ci/setup-host.sh` installs, or one on PATH. Without it a test fails when `CI` is
/// set (CI runs ci/setup-host.sh, so it must be there) and is skipped otherwise
/// (None, after saying so).
pub fn pyspdxtools() -> Option<PathBuf> {
    let works = |p: &std::path::Path| {
        Command::new(p)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let candidates = std::env::var_os("MESOBAKE_PYSPDXTOOLS")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from(PYSPDXTOOLS), PathBuf::from("pyspdxtools")]);
    for c in candidates {
        if works(&c) {
            return Some(c);
        }
    }
    let why = format!(
        "the SPDX validator pyspdxtools is not installed (looked at $MESOBAKE_PYSPDXTOOLS, \
         {PYSPDXTOOLS} and PATH): run ci/setup-host.sh, which installs it there"
    );
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// Runs the SPDX validator on `file`; panics with its complaints when it rejects it.
pub fn assert_valid_spdx(validator: &std::path::Path, file: &std::path::Path) {
    let out = Command::new(validator)
        .arg("-i")
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", validator.display()));
    assert!(
        out.status.success(),
        "pyspdxtools rejects {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
