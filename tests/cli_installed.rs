//! CLI tests for mesobake as an installed tool: the profile lookup path and the
//! built-in profiles, `init`, profile names on `build`, completions and the man page,
//! and `lab status`/`lab down` from another directory. No root, no VM. Each test runs the
//! binary with a private cache (the built-ins are materialised there) and a private
//! `$XDG_CONFIG_HOME`, from a directory outside the checkout.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use assert_cmd::prelude::*;
use predicates::prelude::*;

/// A scratch home: `cache/`, `config/` and `cwd/` (empty, outside the checkout).
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let h = Home {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(h.cwd()).unwrap();
        h
    }
    fn path(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }
    fn cwd(&self) -> PathBuf {
        self.dir.path().join("cwd")
    }
    fn config(&self) -> PathBuf {
        self.dir.path().join("config")
    }
    /// mesobake in `cwd`.
    fn cmd_in(&self, cwd: &Path) -> Command {
        let mut c = Command::cargo_bin("mesobake").unwrap();
        c.current_dir(cwd)
            .env("MESOBAKE_CACHE_DIR", self.dir.path().join("cache"))
            .env("XDG_CONFIG_HOME", self.config())
            .env("HOME", self.dir.path());
        c
    }
    fn cmd(&self) -> Command {
        self.cmd_in(&self.cwd())
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// An OpenPGP public key made for the test (the user's fetched repository key stands
/// here: validation parses it, nothing is verified with it). Written to `dest`.
fn test_key(dest: &Path) {
    let gnupg = tempfile::tempdir().unwrap();
    let gpg = |args: &[&str]| {
        let o = Command::new("gpg")
            .env("GNUPGHOME", gnupg.path())
            .args([
                "--batch",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .output()
            .expect("gpg (apt-get install gpg)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    gpg(&[
        "--quick-gen-key",
        "mesobake test <test@invalid>",
        "ed25519",
        "sign",
        "never",
    ]);
    let key = gpg(&["--armor", "--export", "test@invalid"]);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(dest, key).unwrap();
}

/// A minimal real .deb in `dir` (what a user puts in a project's debs/).
fn test_deb(dir: &Path) {
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("DEBIAN")).unwrap();
    std::fs::write(
        tree.path().join("DEBIAN/control"),
        "Package: mesobake-test\nVersion: 1\nArchitecture: all\nMaintainer: t <t@invalid>\nDescription: test\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let st = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(tree.path())
        .arg(dir.join("mesobake-test_1_all.deb"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

const MY_MASTER: &str = "description = \"my own master\"\n[role]\nservices = [\"zookeeper\", \"master\"]\n[packages]\ninstall = [\"aventer-mesos\", \"zookeeperd\"]\n";

#[test]
fn profiles_outside_a_checkout_are_the_built_ins() {
    let h = Home::new();
    let v = json(&h.cmd().args(["profiles", "--json"]).output().unwrap());
    let rows = v.as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["master", "master-slave", "slave-only"]);
    for r in rows {
        assert_eq!(r["source"], "built-in");
        assert_eq!(r["origin"], "builtin");
        assert_eq!(r["shadowed"], false);
        assert!(!r["description"].as_str().unwrap().is_empty());
        let p = PathBuf::from(r["path"].as_str().unwrap());
        assert!(
            p.starts_with(h.path().join("cache/builtin")),
            "{}",
            p.display()
        );
    }
}

#[test]
fn profiles_shows_where_each_comes_from_and_what_it_shadows() {
    let h = Home::new();
    let user = h.config().join("mesobake/profiles");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("master.toml"), MY_MASTER).unwrap();
    std::fs::write(user.join("tiny.toml"), MY_MASTER).unwrap();
    let flag = h.path().join("flagged");
    std::fs::create_dir_all(&flag).unwrap();
    std::fs::write(flag.join("tiny.toml"), MY_MASTER).unwrap();
    let cwd_profiles = h.cwd().join("profiles");
    std::fs::create_dir_all(&cwd_profiles).unwrap();
    std::fs::write(
        cwd_profiles.join("slave-only.toml"),
        "description = [broken",
    )
    .unwrap();

    let o = h
        .cmd()
        .args(["profiles", "--json", "--profiles"])
        .arg(&flag)
        .output()
        .unwrap();
    let v = json(&o);
    let rows: Vec<(String, String, bool)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["origin"].as_str().unwrap().to_string(),
                r["shadowed"].as_bool().unwrap(),
            )
        })
        .collect();
    let row = |n: &str, o: &str| {
        rows.iter()
            .find(|r| r.0 == n && r.1 == o)
            .unwrap_or_else(|| panic!("no {n} from {o} in {rows:?}"))
            .2
    };
    assert!(!row("tiny", "flag"));
    assert!(row("tiny", "user"));
    assert!(!row("master", "user"));
    assert!(row("master", "builtin"));
    assert!(!row("slave-only", "cwd"));
    assert!(row("slave-only", "builtin"));
    assert!(!row("master-slave", "builtin"));
    // A profile that does not load is listed with its error, not fatal.
    let broken = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["origin"] == "cwd")
        .unwrap();
    assert!(broken["error"]
        .as_str()
        .unwrap()
        .contains("slave-only.toml"));

    // The table: columns as wide as their content, shadowed ones marked.
    let o = h
        .cmd()
        .arg("profiles")
        .arg("--profiles")
        .arg(&flag)
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{out}");
    let name_w = rows.iter().map(|r| r.0.len()).max().unwrap();
    let src_col = lines[0].find("SOURCE").unwrap();
    assert_eq!(src_col, name_w + 2, "{out}");
    let desc_col = lines[0].find("DESCRIPTION").unwrap();
    let src_w = lines[1..]
        .iter()
        .map(|l| l[src_col..].split("  ").next().unwrap().len())
        .max()
        .unwrap();
    assert_eq!(desc_col, src_col + src_w + 2, "{out}");
    assert!(out.contains("built-in (shadowed)"), "{out}");
    assert!(
        out.contains(&format!("{} (shadowed)", user.display())),
        "{out}"
    );
    assert!(out.contains("./profiles"), "{out}");
    for l in &lines {
        assert_eq!(l.trim_end(), *l, "trailing blanks: {l:?}");
    }
}

#[test]
fn build_by_name_from_the_built_ins_anywhere() {
    let h = Home::new();
    // The built-ins ship no apt key: without one, the dry run says where it goes.
    let o = h
        .cmd_in(Path::new("/"))
        .args(["build", "master-slave", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("aventer.asc: not found"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    test_key(&h.config().join("mesobake/keys/aventer.asc"));
    let o = h
        .cmd_in(Path::new("/"))
        .args(["build", "master-slave", "--dry-run", "--json"])
        .output()
        .unwrap();
    let v = json(&o);
    assert_eq!(v["name"], "master-slave");
    let builtin = h.path().join("cache/builtin");
    let path = PathBuf::from(v["path"].as_str().unwrap());
    assert!(path.starts_with(&builtin), "{}", path.display());
    let overlay = PathBuf::from(v["overlays"][0].as_str().unwrap());
    assert!(overlay.starts_with(&builtin), "{}", overlay.display());
    let status = overlay.join("usr/local/bin/mesobake-status");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&status).unwrap().permissions());
    assert_eq!(
        mode & 0o777,
        0o755,
        "the overlay's executable lost its mode"
    );
    // Same settings as the checkout's own profile.
    let no_sources = h.path().join("no-sources.toml");
    std::fs::write(&no_sources, "[apt]\nsources = []\n").unwrap();
    let v = json(
        &h.cmd_in(Path::new("/"))
            .args(["build", "master-slave", "--dry-run", "--json", "--with"])
            .arg(&no_sources)
            .output()
            .unwrap(),
    );
    let checkout = Command::cargo_bin("mesobake")
        .unwrap()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("MESOBAKE_CACHE_DIR", h.path().join("cache"))
        .args(["build", "profiles/master-slave.toml", "--dry-run", "--json"])
        // The checkout has no key either: its apt source is left out, and so is the
        // built-in's below; everything else must be the same.
        .arg("--with")
        .arg(&no_sources)
        .output()
        .unwrap();
    let c = json(&checkout);
    for k in [
        "services",
        "base",
        "disk_size",
        "packages",
        "agent_flags",
        "marathon_env",
        "formats",
    ] {
        assert_eq!(v[k], c[k], "{k} differs from the checkout's");
    }

    // The offline include by name: its local packages live only in a checkout.
    h.cmd_in(Path::new("/"))
        .args([
            "build",
            "slave-only",
            "--with",
            "offline-standins",
            "--dry-run",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains("ci/standins/out"))
        .stderr(predicate::str::contains("only in a mesobake checkout"))
        .stderr(predicate::str::contains("mesobake init"));
}

#[test]
fn an_unknown_name_says_where_it_looked() {
    let h = Home::new();
    h.cmd()
        .args(["build", "mastr", "--dry-run"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no profile \"mastr\""))
        .stderr(predicate::str::contains("the built-ins"))
        .stderr(predicate::str::contains("master-slave"));
    h.cmd()
        .args(["build", "..", "--dry-run"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("not a profile name"));
    h.cmd()
        .args(["--profiles", "/nonexistent/dir", "profiles"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "--profiles /nonexistent/dir: no such directory",
        ));
}

#[test]
fn init_writes_a_project_that_builds_as_it_is() {
    let h = Home::new();
    let p = h.path().join("proj");
    h.cmd()
        .arg("init")
        .arg(&p)
        .assert()
        .success()
        .stdout(predicate::str::contains("cluster.toml"));
    for f in [
        "profiles/master.toml",
        "profiles/master-slave.toml",
        "profiles/slave-only.toml",
        "profiles/include/common.toml",
        "profiles/include/offline-standins.toml",
        "overlays/common/etc/motd",
        "keys/README.md",
        "cluster.toml",
        "README.md",
    ] {
        assert!(p.join(f).is_file(), "{f} missing");
    }
    let st = p.join("overlays/common/usr/local/bin/mesobake-status");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&st).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o755);
    // What its README asks for before a build: the repository key, and for the offline
    // variant the packages in debs/.
    test_key(&p.join("keys/aventer.asc"));
    test_deb(&p.join("debs"));

    // From the project: ./profiles, and its overlay.
    let o = h
        .cmd_in(&p)
        .args(["build", "master-slave", "--dry-run"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plan = stdout(&o);
    assert!(
        plan.contains(&format!(
            "({})",
            p.join("profiles/master-slave.toml").display()
        )),
        "{plan}"
    );
    assert!(
        plan.contains(&format!(
            "overlay     {}",
            p.join("overlays/common").display()
        )),
        "{plan}"
    );
    // From / with --profiles: the same plan.
    let o = h
        .cmd_in(Path::new("/"))
        .args(["build", "master-slave", "--dry-run", "--profiles"])
        .arg(p.join("profiles"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&o), plan);
    // The offline variant by name, with the project's (empty) debs/.
    h.cmd_in(&p)
        .args([
            "build",
            "slave-only",
            "--with",
            "offline-standins",
            "--dry-run",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("base        debian-12"))
        .stdout(predicate::str::contains(format!(
            "local debs  {}",
            p.join("debs").display()
        )));
    // The example topology makes seeds with the project's profiles.
    let seeds = h.path().join("seeds");
    h.cmd_in(&p)
        .args(["seed", "cluster.toml", "--out"])
        .arg(&seeds)
        .assert()
        .success()
        .stdout(predicate::str::contains("m3").and(predicate::str::contains("workers")));

    // Never over what is there.
    h.cmd()
        .arg("init")
        .arg(&p)
        .assert()
        .failure()
        .stderr(predicate::str::contains("not empty"));
    std::fs::write(p.join("README.md"), "mine").unwrap();
    h.cmd()
        .args(["init", "--force"])
        .arg(&p)
        .assert()
        .failure()
        .stderr(predicate::str::contains("would overwrite"));
    assert_eq!(
        std::fs::read_to_string(p.join("README.md")).unwrap(),
        "mine"
    );
    // --force into a non-empty directory without clashes writes the project.
    let q = h.path().join("q");
    std::fs::create_dir_all(&q).unwrap();
    std::fs::write(q.join("notes.txt"), "x").unwrap();
    h.cmd().args(["init", "--force"]).arg(&q).assert().success();
    assert!(q.join("cluster.toml").is_file());
    assert_eq!(std::fs::read_to_string(q.join("notes.txt")).unwrap(), "x");
}

#[test]
fn completions_and_man_page_come_from_the_cli() {
    let h = Home::new();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef mesobake"),
        ("fish", "complete -c mesobake"),
    ] {
        h.cmd()
            .args(["completions", shell])
            .assert()
            .success()
            .stdout(predicate::str::contains(marker))
            .stdout(predicate::str::contains("profiles"));
    }
    h.cmd()
        .arg("man")
        .assert()
        .success()
        .stdout(predicate::str::contains(".TH mesobake 1"))
        .stdout(predicate::str::contains("init"));
    h.cmd()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("/etc/mesobake/profiles"))
        .stdout(predicate::str::contains("XDG_CONFIG_HOME"));
}

#[test]
fn lab_state_is_found_from_the_topology_not_the_working_directory() {
    let h = Home::new();
    let p = h.path().join("proj");
    h.cmd().arg("init").arg(&p).assert().success();
    // A role only the project has: found from / through the topology's own profiles/.
    std::fs::write(p.join("profiles/my-master.toml"), MY_MASTER).unwrap();
    let topo = std::fs::read_to_string(p.join("cluster.toml"))
        .unwrap()
        .replace("role = \"master\"", "role = \"my-master\"");
    std::fs::write(p.join("cluster.toml"), topo).unwrap();
    let state = p.join(".mesobake-lab/example/state.json");

    // No lab: said plainly (whatever exit status the CLI contract gives an empty state),
    // about the state beside the topology, not about a profile or the working directory.
    let o = h
        .cmd_in(Path::new("/"))
        .arg("lab")
        .arg("status")
        .arg(p.join("cluster.toml"))
        .output()
        .unwrap();
    let all = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(matches!(o.status.code(), Some(0 | 1)), "{all}");
    assert!(all.contains("no lab"), "{all}");
    assert!(!all.contains("no profile"), "{all}");
    h.cmd_in(Path::new("/"))
        .arg("lab")
        .arg("down")
        .arg(p.join("cluster.toml"))
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing was running"));

    // A lab with no VM left: found from another directory, by a relative path too.
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(
        &state,
        r#"{"cluster": "example", "mcast": "230.1.2.3:5000", "accel": "tcg", "vms": []}"#,
    )
    .unwrap();
    h.cmd_in(&h.path())
        .args(["lab", "status", "proj/cluster.toml"])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("node"));
    h.cmd_in(&h.path())
        .args(["lab", "down", "proj/cluster.toml"])
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing was running"));
    assert!(!state.exists(), "lab down left the state behind");
}
