//! End-to-end lab tier: a cluster from cluster.toml, booted with `mesobake lab up` from
//! images `mesobake build` made (stand-in Mesos packages, real ZooKeeper, cloud-init,
//! systemd and QEMU).
//!
//! Gated like tests/e2e.rs: `MESOBAKE_E2E=1` and root. It builds the `master` and
//! `slave-only` images (the provisioned layer comes from the shared cache in
//! target/e2e-cache), boots 3 masters and, with `MESOBAKE_LAB_AGENT=1` (ci/lab-4node.sh),
//! one agent as well, then checks: ZooKeeper has one leader and two followers (srvr
//! through the forwarded ports), every master runs with --quorum=2 and the same three-host
//! zk:// URL, the agent's --master is that URL, `lab up` again starts nothing, and after
//! `lab down` none of the lab's QEMU processes is left.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// QEMU processes whose command line names a file under `dir`.
fn qemu_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let s = String::from_utf8_lossy(&c);
                    s.starts_with("qemu-system") && s.contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Stops the lab if the test fails half way, so no VM outlives it.
struct LabGuard(PathBuf);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = mesobake(&["lab", "down", &self.0.to_string_lossy()]).status();
    }
}

#[test]
fn lab_up_three_masters_reach_quorum_and_down_leaves_nothing() {
    if !enabled() {
        return;
    }
    standins();
    let images = repo().join("target/e2e-lab-out");
    let images_s = images.to_string_lossy().into_owned();
    for role in ["master", "slave-only"] {
        run_ok_text(
            mesobake(&[
                "build",
                &format!("profiles/{role}.toml"),
                "--with",
                OFFLINE,
                "--out",
                &images_s,
            ]),
            &format!("build {role}"),
        );
    }

    let with_agent = std::env::var("MESOBAKE_LAB_AGENT").as_deref() == Ok("1");
    let tmp = tempfile::tempdir().unwrap();
    let topo = tmp.path().join("cluster.toml");
    let mut text = String::from(
        "name = \"e2e\"\n\n[network]\ncidr = \"10.77.0.0/24\"\ngateway = \"10.77.0.1\"\n\n[lab]\nmemory = 1024\n",
    );
    for i in 1..=3 {
        text += &format!("\n[[node]]\nname = \"m{i}\"\nrole = \"master\"\nip = \"10.77.0.1{i}\"\n");
    }
    if with_agent {
        text += "\n[[node]]\nname = \"a1\"\nrole = \"slave-only\"\nip = \"10.77.0.21\"\nattributes = { rack = \"r1\" }\n";
    }
    std::fs::write(&topo, text).unwrap();
    let topo_s = topo.to_string_lossy().into_owned();
    let _guard = LabGuard(topo.clone());

    let t = Instant::now();
    run_ok_text(
        mesobake(&[
            "lab",
            "up",
            &topo_s,
            "--images",
            &images_s,
            "--timeout",
            "1500",
        ]),
        "lab up (to quorum and all configured)",
    );
    eprintln!("e2e-lab: lab up -> ZooKeeper quorum and all nodes configured: {:.0} s (the split is in lab up's lines above)", t.elapsed().as_secs_f64());

    // Services start after the configured line; give them a while.
    let zk = "zk://m1:2181,m2:2181,m3:2181/mesos";
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    let rows = loop {
        let out = run_ok_text(
            mesobake(&["--json", "lab", "status", &topo_s]),
            "lab status",
        );
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        let all_ok = rows.as_array().unwrap().iter().all(|r| {
            r["running"] == true
                && r["configured"] == "yes"
                && r["services"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|s| s["ok"] == true)
        });
        if all_ok || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(std::time::Duration::from_secs(10));
    };
    eprintln!(
        "e2e-lab: all services healthy {:.0} s after lab up",
        t.elapsed().as_secs_f64()
    );
    let table = run_ok_text(mesobake(&["lab", "status", &topo_s]), "lab status (table)");
    eprintln!("{table}");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), if with_agent { 4 } else { 3 });
    let svc = |r: &serde_json::Value, name: &str| -> serde_json::Value {
        r["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == name)
            .unwrap_or_else(|| panic!("{} has no {name}: {r}", r["name"]))
            .clone()
    };
    let mut modes = Vec::new();
    for r in rows.iter().filter(|r| r["role"] == "master") {
        assert!(r["running"] == true && r["configured"] == "yes", "{r}");
        let z = svc(r, "zookeeper");
        assert!(z["ok"] == true, "{z}");
        modes.push(z["detail"].as_str().unwrap().to_string());
        let m = svc(r, "master");
        assert!(m["ok"] == true, "{m}");
        assert_eq!(m["flags"]["quorum"], "2", "{m}");
        assert_eq!(m["flags"]["zk"], zk, "{m}");
        assert_eq!(m["flags"]["ip"], r["ip"], "{m}");
        let mar = svc(r, "marathon");
        assert!(
            mar["ok"] == true && mar["detail"] == format!("master={zk}"),
            "{mar}"
        );
    }
    modes.sort();
    assert_eq!(modes, ["follower", "follower", "leader"]);
    // The leader/follower check straight through one forwarded port too.
    let port = rows[0]["ports"]["2181"].as_u64().unwrap() as u16;
    let srvr = mesobake::vm::verify::four_letter(port, "srvr").unwrap();
    assert!(
        srvr.contains("Mode: leader") || srvr.contains("Mode: follower"),
        "{srvr}"
    );
    if with_agent {
        let a = rows.iter().find(|r| r["name"] == "a1").unwrap();
        let ag = svc(a, "agent");
        assert!(ag["ok"] == true, "{ag}");
        assert_eq!(ag["flags"]["master"], zk, "{ag}");
        assert_eq!(ag["flags"]["attributes"], "rack:r1", "{ag}");
    }

    // Up again: nothing new starts.
    let run_dir = tmp.path().join(".mesobake-lab/e2e");
    let before = qemu_under(&run_dir);
    assert_eq!(before.len(), rows.len());
    run_ok_text(
        mesobake(&["lab", "up", &topo_s, "--images", &images_s, "--no-wait"]),
        "lab up again",
    );
    let mut after = qemu_under(&run_dir);
    after.sort();
    let mut before = before;
    before.sort();
    assert_eq!(before, after, "lab up twice must not start duplicates");

    run_ok_text(mesobake(&["lab", "down", &topo_s]), "lab down");
    assert!(qemu_under(&run_dir).is_empty(), "QEMU left after lab down");
}
