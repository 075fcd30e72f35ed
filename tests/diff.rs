//! `mesobake diff`: two manifests that differ in packages and inputs, as text and as
//! JSON, from files and from output directories; the exit status is 0 whether or not
//! they differ, and 3 for a manifest that cannot be read. No root, no image.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use assert_cmd::prelude::*;
use serde_json::json;

fn mesobake(args: &[&str]) -> Output {
    Command::cargo_bin("mesobake")
        .unwrap()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn package(name: &str, version: &str, arch: &str) -> serde_json::Value {
    json!({"name": name, "version": version, "architecture": arch})
}

/// A manifest of one image, `master-slave`, as a build writes it.
fn manifest(
    fingerprint: &str,
    common_sha: &str,
    packages: serde_json::Value,
    debs: serde_json::Value,
) -> serde_json::Value {
    json!({"mesobake": "0.1.0", "images": {"master-slave": {
        "profile": {
            "name": "master-slave",
            "services": ["zookeeper", "master", "marathon", "agent"],
            "sha256": "00".repeat(32),
            "files": [
                ["builtin:profiles/include/common.toml", common_sha],
                ["profiles/master-slave.toml", "aa".repeat(32)],
            ],
        },
        "base": {"spec": "debian-12", "sha256": "bb".repeat(32), "family": "debian", "codename": "bookworm"},
        "build": {
            "input_fingerprint": fingerprint,
            "mesobake_version": "0.1.0",
            "mesobake_revision": "unknown",
            "time": "2023-11-14T22:13:20Z",
            "qemu_img": "7.2.22",
        },
        "layout": null,
        "packages": packages,
        "local_debs": debs,
        "outputs": [],
    }}})
}

fn write(dir: &Path, m: &serde_json::Value) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("manifest.json");
    std::fs::write(&p, serde_json::to_vec_pretty(m).unwrap()).unwrap();
    p
}

/// Two builds: the second upgrades zookeeper, downgrades one package, adds one, drops
/// one, and changed an include, a local .deb and so the fingerprint.
fn two_builds(d: &Path) -> (PathBuf, PathBuf) {
    let old = manifest(
        &"11".repeat(32),
        &"cc".repeat(32),
        json!([
            package("gone", "1.0", "all"),
            package("libc6", "2.36-9+deb12u4", "amd64"),
            package("pinned", "2:1.0-1", "amd64"),
            package("zookeeper", "3.8.0-11", "all"),
        ]),
        json!({"aventer-mesos_1.11.0-0.1.standin_amd64.deb": "dd".repeat(32)}),
    );
    let new = manifest(
        &"22".repeat(32),
        &"ce".repeat(32),
        json!([
            package("libc6", "2.36-9+deb12u4", "amd64"),
            package("new-tool", "1:0.5-1", "amd64"),
            package("pinned", "1:9.9-1", "amd64"),
            package("zookeeper", "3.8.4-1", "all"),
        ]),
        json!({"aventer-mesos_1.11.0-0.2.standin_amd64.deb": "ee".repeat(32)}),
    );
    (write(&d.join("old"), &old), write(&d.join("new"), &new))
}

#[test]
fn diff_names_packages_and_inputs_that_changed() {
    let d = tempfile::tempdir().unwrap();
    let (old, new) = two_builds(d.path());
    let o = mesobake(&["diff", old.to_str().unwrap(), new.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout);
    for want in [
        "master-slave: 4 inputs changed; packages: 1 added, 1 removed, 1 upgraded, 1 downgraded",
        "upgraded",
        "zookeeper (all)",
        "3.8.0-11",
        "3.8.4-1",
        "downgraded",
        "pinned (amd64)",
        "added",
        "new-tool (amd64)",
        "removed",
        "gone (all)",
        "profile file builtin:profiles/include/common.toml",
        "local deb aventer-mesos_1.11.0-0.2.standin_amd64.deb",
        "input fingerprint",
        "diff: the builds differ",
    ] {
        assert!(t.contains(want), "{want:?} missing from:\n{t}");
    }
    // Unchanged packages and inputs are not listed.
    assert!(!t.contains("libc6"), "{t}");
    assert!(!t.contains("profiles/master-slave.toml"), "{t}");
}

#[test]
fn diff_json_is_machine_readable_and_takes_directories() {
    let d = tempfile::tempdir().unwrap();
    two_builds(d.path());
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    let o = mesobake(&[
        "--json",
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["changed"], true);
    let img = &v["images"][0];
    assert_eq!(img["image"], "master-slave");
    assert_eq!(img["status"], "changed");
    let p = &img["packages"];
    assert_eq!(
        p["upgraded"],
        json!([{"name": "zookeeper", "architecture": "all", "old": "3.8.0-11", "new": "3.8.4-1"}])
    );
    assert_eq!(p["downgraded"][0]["name"], "pinned");
    assert_eq!(p["added"][0]["name"], "new-tool");
    assert_eq!(p["added"][0]["version"], "1:0.5-1");
    assert_eq!(p["removed"][0]["name"], "gone");
    let inputs: Vec<&str> = img["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["input"].as_str().unwrap())
        .collect();
    assert_eq!(
        inputs,
        [
            "input fingerprint",
            "local deb aventer-mesos_1.11.0-0.1.standin_amd64.deb",
            "local deb aventer-mesos_1.11.0-0.2.standin_amd64.deb",
            "profile file builtin:profiles/include/common.toml",
        ]
    );
    let fp = img["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["input"] == "input fingerprint")
        .unwrap();
    assert_eq!(fp["old"], "11".repeat(32));
    assert_eq!(fp["new"], "22".repeat(32));
    let dropped_deb = img["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["input"] == "local deb aventer-mesos_1.11.0-0.1.standin_amd64.deb")
        .unwrap();
    assert_eq!(dropped_deb["new"], serde_json::Value::Null);
}

#[test]
fn identical_builds_differ_in_nothing_and_still_exit_0() {
    let d = tempfile::tempdir().unwrap();
    let (old, _) = two_builds(d.path());
    let o = mesobake(&["diff", old.to_str().unwrap(), old.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains("master-slave: unchanged"), "{t}");
    assert!(t.contains("diff: no differences"), "{t}");
    let o = mesobake(&[
        "--json",
        "diff",
        old.to_str().unwrap(),
        old.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["changed"], false);
    assert_eq!(v["images"][0]["status"], "unchanged");
}

#[test]
fn an_older_manifest_with_a_package_map_still_compares() {
    let d = tempfile::tempdir().unwrap();
    let (_, new) = two_builds(d.path());
    let mut old = manifest(
        "",
        &"ce".repeat(32),
        json!({"zookeeper": "3.8.0-11", "libc6:amd64": "2.36-9+deb12u4"}),
        json!({}),
    );
    old["images"]["master-slave"]
        .as_object_mut()
        .unwrap()
        .remove("build");
    let old = write(&d.path().join("older"), &old);
    let o = mesobake(&[
        "--json",
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = &v["images"][0]["packages"];
    assert_eq!(p["upgraded"][0]["name"], "zookeeper");
    // libc6 is the same package, though the old manifest keyed it libc6:amd64.
    assert!(p["removed"].as_array().unwrap().is_empty(), "{p}");
}

#[test]
fn an_unreadable_manifest_is_a_runtime_error() {
    let d = tempfile::tempdir().unwrap();
    let (old, _) = two_builds(d.path());
    let missing = d.path().join("nowhere");
    let o = mesobake(&["diff", old.to_str().unwrap(), missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("nowhere"), "{}", text(&o));
    let garbage = d.path().join("garbage.json");
    std::fs::write(&garbage, "{not json").unwrap();
    let o = mesobake(&[
        "--json",
        "diff",
        old.to_str().unwrap(),
        garbage.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["status"], 3);
}
