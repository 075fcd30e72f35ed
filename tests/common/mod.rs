//! Helpers shared by the end-to-end test binaries (tests/e2e*.rs).
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
