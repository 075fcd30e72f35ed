//! The CLI contract (issue 11, parts 2 and 3): `validate` finds each kind of problem with
//! its file and line, `build --dry-run` runs the same checks, `--json` errors are one
//! object on stdout, exit statuses are distinct, and a closed stdout is no panic.
//! Nothing here needs root, a VM or the network.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use assert_cmd::prelude::*;

fn mesobake() -> Command {
    let mut c = Command::cargo_bin("mesobake").unwrap();
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn run(args: &[&str]) -> Output {
    mesobake().args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

/// A profile that needs no file (named base, no overlay, key or deb), plus `extra`
/// starting at line 7.
fn profile(dir: &Path, extra: &str) -> PathBuf {
    write(
        dir,
        "p.toml",
        &format!(
            "description = \"test\"\n[role]\nservices = [\"agent\"]\n[packages]\ninstall = [\"mesos\"]\n[base]\n{extra}"
        ),
    )
}

fn validate(p: &Path) -> Output {
    mesobake().arg("validate").arg(p).output().unwrap()
}

#[test]
fn a_valid_profile_validates_and_dry_runs() {
    let d = tempfile::tempdir().unwrap();
    let p = profile(d.path(), "name = \"debian-12\"\n");
    let o = validate(&p);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("valid profile"), "{}", text(&o));
    let o = mesobake()
        .args(["--json", "build", "--dry-run"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["base"], "debian-12");
}

#[test]
fn validate_names_a_missing_overlay_with_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "p.toml",
        "overlays = [\"no-such-overlay\"]\n[role]\nservices = [\"agent\"]\n[packages]\ninstall = [\"mesos\"]\n[base]\nname = \"debian-12\"\n",
    );
    let o = validate(&p);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("p.toml:1:"), "{t}");
    assert!(
        t.contains("no-such-overlay") && t.contains("no such directory"),
        "{t}"
    );
    // A file where a directory belongs.
    write(d.path(), "a-file", "x");
    let p = write(
        d.path(),
        "p.toml",
        "[role]\nservices = [\"agent\"]\n[packages]\ninstall = [\"mesos\"]\n[base]\nname = \"debian-12\"\n",
    );
    let inc = write(d.path(), "inc.toml", "\n\noverlays = [\"a-file\"]\n");
    let o = mesobake()
        .arg("validate")
        .arg(&p)
        .arg("--with")
        .arg(&inc)
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("inc.toml:3:") && t.contains("not a directory"),
        "{t}"
    );
}

#[test]
fn validate_refuses_an_apt_key_that_is_not_a_key() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "key.asc", "this is not an OpenPGP key\n");
    let p = profile(
        d.path(),
        "name = \"debian-12\"\n[[apt.sources]]\nname = \"x\"\nuri = \"http://example.invalid/\"\nsuites = [\"bookworm\"]\nkey = \"key.asc\"\n",
    );
    let o = validate(&p);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("p.toml:12:"), "{t}");
    assert!(t.contains("not an OpenPGP public key"), "{t}");
    // Missing altogether.
    std::fs::remove_file(d.path().join("key.asc")).unwrap();
    let t = text(&validate(&p));
    assert!(
        t.contains("p.toml:12:") && t.contains("key.asc: not found"),
        "{t}"
    );
}

/// A real key, armoured and binary, passes (when gpg is here to make one).
#[test]
fn validate_accepts_an_armoured_and_a_binary_key() {
    let d = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let gpg = |args: &[&str]| {
        Command::new("gpg")
            .env("GNUPGHOME", home.path())
            .args(["--batch", "--no-tty", "--quiet"])
            .args(args)
            .output()
    };
    match gpg(&[
        "--passphrase",
        "",
        "--quick-gen-key",
        "t@example.invalid",
        "ed25519",
        "sign",
        "never",
    ]) {
        Ok(o) if o.status.success() => {}
        _ => {
            eprintln!("skipped: gpg cannot make a key here");
            return;
        }
    }
    let armoured = gpg(&["--armor", "--export", "t@example.invalid"])
        .unwrap()
        .stdout;
    let binary = gpg(&["--export", "t@example.invalid"]).unwrap().stdout;
    for (name, bytes) in [("k.asc", armoured), ("k.gpg", binary)] {
        std::fs::write(d.path().join(name), bytes).unwrap();
        let p = profile(
            d.path(),
            &format!("name = \"debian-12\"\n[[apt.sources]]\nname = \"x\"\nuri = \"http://example.invalid/\"\nsuites = [\"bookworm\"]\nkey = \"{name}\"\n"),
        );
        let o = validate(&p);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", text(&o));
    }
}

#[test]
fn validate_refuses_a_local_deb_that_is_not_a_deb() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "fake.deb", "!<arch>\nnot really\n");
    let p = write(
        d.path(),
        "p.toml",
        "[role]\nservices = [\"agent\"]\n[packages]\ninstall = [\"mesos\"]\ndebs = [\n  \"fake.deb\",\n  \"missing.deb\",\n  \"empty-dir\",\n]\n[base]\nname = \"debian-12\"\n",
    );
    std::fs::create_dir(d.path().join("empty-dir")).unwrap();
    let o = validate(&p);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("p.toml:6:") && t.contains("fake.deb is not a Debian package"),
        "{t}"
    );
    assert!(
        t.contains("p.toml:7:") && t.contains("missing.deb: no such"),
        "{t}"
    );
    assert!(
        t.contains("p.toml:8:") && t.contains("no .deb files"),
        "{t}"
    );
    // --json: every problem, each with file and line.
    let o = mesobake()
        .args(["--json", "validate"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let lines: Vec<_> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [6, 7, 8]);
}

/// A real .deb passes, alone and in a directory (when dpkg-deb is here to make one).
#[test]
fn validate_accepts_a_real_deb() {
    let d = tempfile::tempdir().unwrap();
    let pkg = d.path().join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        "Package: t\nVersion: 1\nArchitecture: all\nMaintainer: t <t@example.invalid>\nDescription: t\n",
    )
    .unwrap();
    std::fs::create_dir(d.path().join("debs")).unwrap();
    let built = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&pkg)
        .arg(d.path().join("debs/t_1_all.deb"))
        .stdout(Stdio::null())
        .status();
    if !built.is_ok_and(|s| s.success()) {
        eprintln!("skipped: no dpkg-deb");
        return;
    }
    let p = write(
        d.path(),
        "p.toml",
        "[role]\nservices = [\"agent\"]\n[packages]\ninstall = [\"mesos\"]\ndebs = [\"debs\", \"debs/t_1_all.deb\"]\n[base]\nname = \"debian-12\"\n",
    );
    let o = validate(&p);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_bad_format_names_file_line_and_column() {
    let d = tempfile::tempdir().unwrap();
    let p = profile(
        d.path(),
        "name = \"debian-12\"\n[output]\nformats = [\"qcow3\"]\n",
    );
    for args in [vec!["validate"], vec!["build", "--dry-run"]] {
        let o = mesobake().args(&args).arg(&p).output().unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {t}");
        assert!(t.contains("p.toml:9:"), "{args:?}: {t}");
        assert!(t.contains("line 9, column"), "{args:?}: {t}");
        assert!(
            t.contains("unknown output format \"qcow3\""),
            "{args:?}: {t}"
        );
    }
}

#[test]
fn a_bad_base_is_refused_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let p = profile(d.path(), "name = \"./no-such-base.qcow2\"\n");
    let o = mesobake()
        .args(["--json", "build", "--dry-run"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "invalid-profile");
    assert_eq!(v["error"]["line"], 7);
    assert!(v["error"]["file"].as_str().unwrap().ends_with("p.toml"));
    let p = profile(d.path(), "name = \"https://example.invalid/x.img\"\n");
    let t = text(&validate(&p));
    assert!(t.contains("p.toml:7:") && t.contains("checksum"), "{t}");
}

#[test]
fn validate_checks_a_topology_without_writing_seeds() {
    let d = tempfile::tempdir().unwrap();
    let profiles = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let good = write(
        d.path(),
        "cluster.toml",
        "name = \"t\"\n[network]\ncidr = \"10.9.0.0/24\"\n[[node]]\nname = \"m1\"\nrole = \"master\"\nip = \"10.9.0.11\"\n",
    );
    let o = mesobake()
        .arg("validate")
        .arg(&good)
        .arg("--profiles")
        .arg(&profiles)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("valid cluster"), "{}", text(&o));
    let bad = write(
        d.path(),
        "cluster.toml",
        "name = \"t\"\n[network]\ncidr = \"10.9.0.0/24\"\n[[node]]\nname = \"m1\"\nrole = \"master\"\nip = \"10.8.0.11\"\n",
    );
    let o = mesobake()
        .args(["--json", "validate"])
        .arg(&bad)
        .arg("--profiles")
        .arg(&profiles)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "cluster");
    assert_eq!(v["problems"][0]["line"], 7, "{v}");
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["cluster.toml"], "validate wrote nothing");
}

#[test]
fn topology_network_checks_name_file_line_and_key() {
    let d = tempfile::tempdir().unwrap();
    let profiles = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let validate = |p: &Path, json: bool| {
        let mut c = mesobake();
        if json {
            c.arg("--json");
        }
        c.arg("validate")
            .arg(p)
            .arg("--profiles")
            .arg(&profiles)
            .output()
            .unwrap()
    };
    // A cidr with host bits and static nodes without a gateway: valid, with two warnings
    // on stderr, each at its line, and in the --json report.
    let warned = write(
        d.path(),
        "cluster.toml",
        "name = \"t\"\n[network]\ncidr = \"10.9.0.5/24\"\n[[node]]\nname = \"m1\"\nrole = \"master\"\nip = \"10.9.0.11\"\n",
    );
    let o = validate(&warned, false);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let at = format!("mesobake: warning: {}:3: [network] key", warned.display());
    assert!(
        err.contains(&format!(
            "{at} \"cidr\": \"10.9.0.5/24\" has host bits set: the network is 10.9.0.0/24"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{at} \"gateway\": none given, so node \"m1\"")),
        "{err}"
    );
    let o = validate(&warned, true);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true, "{v}");
    let w = v["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 2, "{v}");
    assert!(
        w[0].as_str()
            .unwrap()
            .contains("cluster.toml:3: [network] key \"cidr\""),
        "{v}"
    );

    // The broadcast address as a node's: refused at its line, nothing written by seed.
    let bad = write(
        d.path(),
        "cluster.toml",
        "name = \"t\"\n[network]\ncidr = \"10.9.0.0/24\"\ngateway = \"10.9.0.1\"\n[[node]]\nname = \"m1\"\nrole = \"master\"\nip = \"10.9.0.255\"\n",
    );
    let o = validate(&bad, false);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "{}:8: node \"m1\" key \"ip\": 10.9.0.255 is the broadcast address of 10.9.0.0/24",
            bad.display()
        )),
        "{}",
        text(&o)
    );
    let seeds = d.path().join("seeds");
    let o = mesobake()
        .arg("seed")
        .arg(&bad)
        .arg("--profiles")
        .arg(&profiles)
        .arg("--out")
        .arg(&seeds)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("cluster.toml:8: node \"m1\" key \"ip\""),
        "{}",
        text(&o)
    );
    assert!(!seeds.exists());
}

#[test]
fn json_errors_are_one_object_on_stdout_with_the_exit_status() {
    // A runtime error: the output directory is a file.
    let d = tempfile::tempdir().unwrap();
    let f = write(d.path(), "not-a-dir", "x");
    let o = mesobake()
        .args(["--json", "check"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "runtime", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not-a-dir"),
        "{v}"
    );
    assert!(
        !o.stderr.is_empty(),
        "people still get the message on stderr"
    );
    // A usage error.
    let o = run(&["--json", "build", "--no-such-option"]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "usage");
    // An invalid input.
    let p = write(
        d.path(),
        "p.toml",
        "[role]\nservices = [\"agent\"]\nbogus = 1\n",
    );
    let o = mesobake()
        .args(["--json", "build", "--dry-run"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "invalid-profile");
    assert_eq!(v["error"]["line"], 3);
}

#[test]
fn exit_statuses_are_distinct() {
    // 2: usage.
    assert_eq!(run(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(run(&["build"]).status.code(), Some(2));
    assert_eq!(
        run(&["build", "x.toml", "--format", "qcow3"]).status.code(),
        Some(2)
    );
    assert_eq!(
        run(&["verify", "x", "--accel", "warp"]).status.code(),
        Some(2)
    );
    // 3: runtime.
    assert_eq!(run(&["check", "/nonexistent-dir"]).status.code(), Some(3));
    // 1: a check that failed (an empty output directory passes nothing).
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("SHA256SUMS"), "").unwrap();
    let o = mesobake().arg("check").arg(d.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // 0.
    assert_eq!(run(&["profiles"]).status.code(), Some(0));
    // --help documents them.
    let help = String::from_utf8(run(&["--help"]).stdout).unwrap();
    for s in ["Exit status", "  1 ", "  2 ", "  3 ", "130"] {
        assert!(help.contains(s), "{s:?} in --help:\n{help}");
    }
}

#[test]
fn no_lab_running_is_an_empty_state() {
    let d = tempfile::tempdir().unwrap();
    let profiles = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let topo = write(
        d.path(),
        "cluster.toml",
        "name = \"contract-test-no-lab\"\n[network]\ncidr = \"10.9.0.0/24\"\n[[node]]\nname = \"m1\"\nrole = \"master\"\nip = \"10.9.0.11\"\n",
    );
    let o = mesobake()
        .current_dir(d.path())
        .args(["--json", "lab", "status"])
        .arg(&topo)
        .arg("--profiles")
        .arg(&profiles)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["lab"], serde_json::Value::Null);
    assert_eq!(v["message"], "no lab running");
}

/// `| head -0`: the reader is gone before mesobake writes; no panic, normal status.
#[test]
fn a_closed_stdout_is_no_panic() {
    let d = tempfile::tempdir().unwrap();
    let p = profile(d.path(), "name = \"debian-12\"\n");
    let p = p.to_str().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("mesobake");
    for (args, want) in [
        (vec!["profiles"], 0),
        (vec!["--json", "profiles"], 0),
        (vec!["cache", "ls"], 0),
        (vec!["--help"], 0),
        (vec!["build", p, "--dry-run"], 0),
        (vec!["--json", "build", p, "--dry-run"], 0),
        (vec!["--json", "check", "/nonexistent-dir"], 3),
    ] {
        // `true` exits at once and closes the pipe; mesobake starts writing later.
        let o = Command::new("bash")
            .arg("-c")
            .arg(r#"{ sleep 0.3; exec "$0" "$@"; } | true; echo "status=${PIPESTATUS[0]}" >&2"#)
            .arg(&bin)
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("MESOBAKE_CACHE_DIR", d.path().join("cache"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains(&format!("status={want}\n")), "{args:?}: {err}");
    }
}
