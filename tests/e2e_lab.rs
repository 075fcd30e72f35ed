//! End-to-end lab tier: a cluster from cluster.toml, booted with `mesobake lab up` from
//! images `mesobake build` made (stand-in Mesos packages in AVENTER's layout, real
//! ZooKeeper, cloud-init, systemd and QEMU).
//!
//! Gated like tests/e2e.rs: `MESOBAKE_E2E=1` and root. It builds the `master` and
//! `slave-only` images (the provisioned layer comes from the shared cache in
//! target/e2e-cache), boots 3 masters and an autoscaling group with one agent (a group's
//! user-data names no instance), then checks: ZooKeeper has one leader and two followers
//! (srvr through the forwarded ports), every master runs with --quorum=2, exactly one
//! Mesos master leads (elected through ZooKeeper) and the others redirect to it, the agent
//! registered with it under a name from its own address, `lab up` again starts nothing;
//! `lab ssh` logs in to a master with a throwaway key the topology names (found beside
//! it) and reads the node's own hostname, and passes the remote exit status through;
//! then `lab kill` crashes the leading master's VM, `lab status --json` shows it down,
//! and another master takes over with the agent re-registered while the two surviving
//! ZooKeeper members keep their quorum (srvr to each); after `lab down` none of the lab's
//! QEMU processes is left. Before the crash, the test checks that the master keeps its
//! ZooKeeper state on its data disk (the disk `lab replace` keeps; the replacement itself,
//! four more boots in a row, is ci/rolling-replace.sh, outside CI's time). Authentication is on, as for every cluster from cluster.toml: the
//! test reads the lab's secrets, checks the master's authentication flags, refusals
//! without credentials (an agent, a framework, a read-write endpoint, Marathon's API)
//! and acceptance with them, that host files holding secrets are 0600, and that no
//! secret is in the images. ZooKeeper: a real client on the host can neither list nor
//! read /mesos and /marathon without the cluster's digest, and can with it. Network
//! policy: a host bridged onto the lab's segment (tests/e2e_lab/outside.rs) reaches
//! ZooKeeper from the cluster network, while from an address outside it only SSH answers
//! and ZooKeeper, the master, Marathon and the agent are dropped. User cloud-config: a
//! cluster-wide file (cluster.toml's `cloud-config`) merged by cloud-init after
//! mesobake's own part: its `write_files` entry and its `runcmd` each leave a file on
//! every VM, and a runcmd prints both files' contents to the console, which the serial
//! logs show.
//!
//! Four VMs share two cores under TCG, so the lab is kept to what only a lab shows. The
//! agent runs the mesos containerizer alone: the Docker daemon costs each boot about a
//! minute of CPU here, and the e2e tier already boots three agents with Docker.

mod common;
#[path = "e2e_lab/outside.rs"]
mod outside;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// The agents the lab boots (the group's lab-count).
const AGENTS: usize = 1;

/// Stops the lab if the test fails half way, so no VM outlives it.
struct LabGuard(PathBuf);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = mesobake(&["lab", "down", &self.0.to_string_lossy()]).status();
    }
}

#[test]
fn three_masters_elect_one_leader_agents_register_and_survive_its_loss() {
    if !enabled() {
        return;
    }
    standins();
    let images = repo().join("target/e2e-lab-out");
    let images_s = images.to_string_lossy().into_owned();
    let tmp = tempfile::tempdir().unwrap();
    let no_docker = tmp.path().join("mesos-containerizer.toml");
    std::fs::write(
        &no_docker,
        "[mesos.agent-flags]\ncontainerizers = \"mesos\"\n",
    )
    .unwrap();
    let no_docker_s = no_docker.to_string_lossy().into_owned();
    for role in ["master", "slave-only"] {
        run_ok_text(
            mesobake(&[
                "build",
                &format!("profiles/{role}.toml"),
                "--with",
                OFFLINE,
                "--with",
                &no_docker_s,
                "--out",
                &images_s,
            ]),
            &format!("build {role}"),
        );
    }

    // A throwaway SSH key beside the topology, where `lab ssh` finds its private half.
    let key = tmp.path().join("lab_key");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e-lab", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (package openssh-client)");
    assert!(st.success(), "ssh-keygen");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let topo = tmp.path().join("cluster.toml");
    // The user's own cloud-config, relative to cluster.toml: merged after mesobake's part.
    std::fs::write(tmp.path().join("lab-user.yaml"), USER_CLOUD_CONFIG).unwrap();
    let mut text = format!(
        "name = \"e2e\"\nssh-keys = [{}]\ncloud-config = [\"lab-user.yaml\"]\n\n[network]\ncidr = \"10.77.0.0/24\"\ngateway = \"10.77.0.1\"\n\n[lab]\nmemory = 1024\n",
        serde_json::to_string(public.trim()).unwrap()
    );
    for i in 1..=3 {
        text += &format!("\n[[node]]\nname = \"m{i}\"\nrole = \"master\"\nip = \"10.77.0.1{i}\"\n");
    }
    // An instance of a group: its user-data names no address and no instance, like an
    // autoscaling group's.
    text += "\n[[group]]\nname = \"workers\"\nrole = \"slave-only\"\nlab-count = 1\nattributes = { rack = \"r1\" }\n";
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
            "1800",
        ]),
        "lab up (to quorum and all configured)",
    );
    eprintln!("e2e-lab: lab up -> ZooKeeper quorum and all nodes configured: {:.0} s (the split is in lab up's lines above)", t.elapsed().as_secs_f64());

    // Services start after the configured line, and agents register once a master leads.
    let rows = wait_for(
        &topo_s,
        Duration::from_secs(900),
        "every service healthy, one leader, the agent registered",
        |rows| {
            let all_ok = rows.iter().all(|r| {
                r["running"] == true
                    && r["configured"] == "yes"
                    && r["services"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|s| s["ok"] == true)
            });
            all_ok && agents_on_the_leader(rows, None)
        },
    );
    eprintln!(
        "e2e-lab: all services healthy, one leader, agents registered {:.0} s after lab up",
        t.elapsed().as_secs_f64()
    );
    let table = run_ok_text(mesobake(&["lab", "status", &topo_s]), "lab status (table)");
    eprintln!("{table}");
    assert_eq!(rows.len(), 4);
    for r in &rows {
        let ssh = r["ssh_port"].as_u64();
        assert!(
            ssh.is_some() && r["ports"]["22"].as_u64() == ssh,
            "every VM forwards SSH: {r}"
        );
    }
    let zk = "zk://m1:2181,m2:2181,m3:2181/mesos";
    let mut modes = Vec::new();
    for r in rows.iter().filter(|r| r["role"] == "master") {
        assert!(r["running"] == true && r["configured"] == "yes", "{r}");
        let z = svc(r, "zookeeper");
        assert!(z["ok"] == true, "{z}");
        modes.push(z["detail"].as_str().unwrap().to_string());
        let m = svc(r, "master");
        assert!(m["ok"] == true, "{m}");
        assert_eq!(m["flags"]["quorum"], "2", "{m}");
        // AVENTER's layout: the flag names the file the configurator wrote the URL into.
        assert_eq!(m["flags"]["zk"], "file:///etc/mesos/zk", "{m}");
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
    let leader = check_one_leader_with_the_agents(&rows);
    check_ssh(&topo_s, "m1");
    let run_dir = tmp.path().join(".mesobake-lab/e2e");
    check_authentication(&rows, &leader, &run_dir, &images);
    check_zookeeper_acls(&rows, &run_dir);
    check_network_policy(&rows, &leader, &run_dir);
    check_user_cloud_config(&rows, &run_dir);

    // Up again: nothing new starts.
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

    check_data_disk(&topo_s, &leader);

    // The leading master's machine dies (`lab kill`: SIGKILL, no shutdown): status shows
    // it down at once, then another master takes over through ZooKeeper and the agent
    // re-registers with it.
    let killed = Instant::now();
    let said = run_ok_text(
        mesobake(&["lab", "kill", &topo_s, &leader]),
        "lab kill (the leader crashes)",
    );
    eprintln!("e2e-lab: {}", said.trim());
    assert_eq!(
        qemu_under(&run_dir).len(),
        rows.len() - 1,
        "lab kill stops exactly the one QEMU"
    );
    let out = run_ok_text(
        mesobake(&["--json", "lab", "status", &topo_s]),
        "lab status right after lab kill",
    );
    let now: serde_json::Value = serde_json::from_str(&out).unwrap();
    let dead = now
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == leader)
        .unwrap();
    assert!(
        dead["running"] == false && dead["state"] == "down",
        "{leader} after lab kill: {dead}"
    );
    let rows = wait_for(
        &topo_s,
        Duration::from_secs(600),
        "a new leader with the agent re-registered",
        |rows| agents_on_the_leader(rows, Some(&leader)),
    );
    eprintln!(
        "e2e-lab: {leader} killed -> new leader with the agent re-registered in {:.0} s",
        killed.elapsed().as_secs_f64()
    );
    eprintln!(
        "{}",
        run_ok_text(mesobake(&["lab", "status", &topo_s]), "lab status (table)")
    );
    let dead = rows.iter().find(|r| r["name"] == leader).unwrap();
    assert_eq!(dead["running"], false, "{dead}");
    let new_leader = check_one_leader_with_the_agents(&rows);
    assert_ne!(new_leader, leader);
    // The two surviving ZooKeeper members still form a quorum.
    let mut modes: Vec<String> = rows
        .iter()
        .filter(|r| r["role"] == "master" && r["running"] == true)
        .map(|r| svc(r, "zookeeper")["detail"].as_str().unwrap().to_string())
        .collect();
    modes.sort();
    assert_eq!(modes, ["follower", "leader"]);
    // And straight from the two members: srvr to each one's forwarded 2181.
    let mut direct: Vec<String> = rows
        .iter()
        .filter(|r| r["role"] == "master" && r["name"] != leader.as_str())
        .map(|r| {
            let port = r["ports"]["2181"].as_u64().unwrap() as u16;
            let srvr = mesobake::vm::verify::four_letter(port, "srvr").unwrap();
            srvr.lines()
                .find_map(|l| l.strip_prefix("Mode: "))
                .unwrap_or_else(|| panic!("{}: srvr has no Mode: {srvr}", r["name"]))
                .trim()
                .to_string()
        })
        .collect();
    direct.sort();
    assert_eq!(
        direct,
        ["follower", "leader"],
        "the two ZooKeeper members left hold a quorum"
    );

    run_ok_text(mesobake(&["lab", "down", &topo_s]), "lab down");
    assert!(qemu_under(&run_dir).is_empty(), "QEMU left after lab down");
}

/// The lab's cluster-wide user cloud-config: a `write_files` entry and a `runcmd` that
/// writes a marker file, then prints both files' contents to the console (the lab has no
/// shell into a node; the serial log is the way out). The console lines are built from
/// the files, so they appear only if both files exist with their content.
const USER_CLOUD_CONFIG: &str = r#"#cloud-config
write_files:
  - path: /etc/mesobake-lab/user-file
    content: |
      mesobake-lab-user-file-marker
runcmd:
  - [sh, -c, 'echo mesobake-lab-user-runcmd-marker > /var/lib/mesobake-lab-runcmd']
  - [sh, -c, 'echo "mesobake-lab-user-file: $(cat /etc/mesobake-lab/user-file)" > /dev/console']
  - [sh, -c, 'echo "mesobake-lab-user-runcmd: $(cat /var/lib/mesobake-lab-runcmd)" > /dev/console']
"#;

/// Every VM ran the user cloud-config: its serial log has both marker lines (runcmd runs
/// in cloud-init's final stage, which may end after the configured line).
fn check_user_cloud_config(rows: &[serde_json::Value], run_dir: &Path) {
    let want = [
        "mesobake-lab-user-file: mesobake-lab-user-file-marker",
        "mesobake-lab-user-runcmd: mesobake-lab-user-runcmd-marker",
    ];
    let t = Instant::now();
    for r in rows {
        let name = r["name"].as_str().unwrap();
        let log = run_dir.join(format!("{name}.serial.log"));
        loop {
            // Lossy: a console log can hold bytes that are not UTF-8.
            let text =
                String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
            if want.iter().all(|w| text.contains(w)) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "{name}: the user cloud-config's marker lines {want:?} are not on the console ({}) within 300 s: cloud-init did not merge or run it",
                log.display()
            );
            std::thread::sleep(Duration::from_secs(5));
        }
    }
    eprintln!("e2e-lab: every VM wrote and ran the user cloud-config (write_files and runcmd)");
}

/// One HTTP/1.0 request to 127.0.0.1:`port`, with basic auth when given; returns the
/// status line and the body.
fn http(port: u64, method: &str, path: &str, auth: Option<&str>, body: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
    if let Some(a) = auth {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(a);
        req += &format!("Authorization: Basic {b}\r\n");
    }
    req += &format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.lines().next().unwrap_or("").to_string();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// Authentication, on by default for a cluster from cluster.toml, with secrets that live
/// only in the seeds (issue 15): the master's flags, refusals without credentials and
/// acceptance with them (agents, frameworks, HTTP read-write, Marathon's API), the host
/// copies' modes, and no secret in the images the nodes booted.
fn check_authentication(rows: &[serde_json::Value], leader: &str, run_dir: &Path, images: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let secrets_dir = run_dir.join("secrets");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&secrets_dir), 0o700);
    let creds: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(secrets_dir.join("credentials.json")).unwrap(),
    )
    .unwrap();
    let secret_of = |p: &str| {
        creds["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["principal"] == p)
            .unwrap_or_else(|| panic!("no {p} credential: {creds}"))["secret"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (agent, marathon, operator) = (
        secret_of("agent"),
        secret_of("marathon"),
        secret_of("operator"),
    );
    // ZooKeeper's digest is not a Mesos credential: its own file, `principal:secret`.
    let zookeeper = std::fs::read_to_string(secrets_dir.join("zookeeper")).unwrap();
    let zookeeper = zookeeper
        .trim()
        .strip_prefix("mesobake:")
        .expect("secrets/zookeeper is mesobake:<secret>")
        .to_string();
    // Every host file that holds a secret is 0600.
    let mut carriers = Vec::new();
    let mut stack = vec![run_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with("-data.img") {
                // A master's data disk (4 GiB, sparse): its state is the cluster's, private
                // like a secret; read, it would take minutes and gigabytes.
                assert_eq!(mode(&p), 0o600, "{} is a data disk", p.display());
            } else if e.file_type().unwrap().is_file() {
                let bytes = std::fs::read(&p).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                if text.contains(&agent) || text.contains(&operator) || text.contains(&zookeeper) {
                    assert_eq!(mode(&p), 0o600, "{} holds a secret", p.display());
                    carriers.push(p);
                }
            }
        }
    }
    assert!(
        carriers.len() >= 4,
        "the secrets, each node's user-data: {carriers:?}"
    );

    let row = rows.iter().find(|r| r["name"] == leader).unwrap();
    let m = svc(row, "master");
    for f in [
        "authenticate_agents",
        "authenticate_frameworks",
        "authenticate_http_readwrite",
    ] {
        assert_eq!(m["flags"][f], "true", "{f}: {m}");
    }
    let port = |r: &serde_json::Value, p: &str| r["ports"][p].as_u64().unwrap();
    let mp = port(row, "5050");
    let op = format!("operator:{operator}");
    // Read-write endpoints: 401 without credentials, served with them (a teardown of no
    // framework is a bad request).
    let (st, _) = http(mp, "POST", "/teardown", None, "");
    assert!(st.contains(" 401"), "teardown without credentials: {st}");
    let (st, _) = http(
        mp,
        "POST",
        "/teardown",
        Some(&format!("operator:{marathon}")),
        "",
    );
    assert!(st.contains(" 401"), "teardown with a wrong secret: {st}");
    let (st, body) = http(mp, "POST", "/teardown", Some(&op), "");
    assert!(
        st.contains(" 400"),
        "teardown with the operator's credentials: {st} {body}"
    );
    // An agent and a framework without credentials are refused; the lab's agent (checked
    // above) and Marathon, with them, are accepted. (The stand-ins' registration calls
    // stand for Mesos's CRAM-MD5 handshake; ci/standins/README.md.)
    let intruder = r#"{"pid":"slave(1)@10.77.0.99:5051","hostname":"intruder","port":5051}"#;
    let (st, _) = http(mp, "POST", "/master/standin/register", None, intruder);
    assert!(st.contains(" 403"), "an agent without a credential: {st}");
    let forged = format!(
        r#"{{"pid":"slave(1)@10.77.0.99:5051","hostname":"intruder","port":5051,"credential":{{"principal":"agent","secret":"{marathon}"}}}}"#
    );
    let (st, _) = http(mp, "POST", "/master/standin/register", None, &forged);
    assert!(st.contains(" 401"), "an agent with a wrong secret: {st}");
    let framework =
        r#"{"framework_info":{"name":"intruder"},"pid":"scheduler(1)@10.77.0.99:4000"}"#;
    let (st, body) = http(mp, "POST", "/master/standin/subscribe", None, framework);
    assert!(
        st.contains(" 403") && body.contains("not authenticated"),
        "{st} {body}"
    );
    let mar = port(row, "8080");
    let (st, _) = http(mar, "GET", "/v2/info", None, "");
    assert!(st.contains(" 401"), "Marathon without a password: {st}");
    let (st, body) = http(mar, "GET", "/v2/info", Some(&op), "");
    assert!(
        st.contains(" 200"),
        "Marathon with the operator's password: {st}"
    );
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        info["frameworkId"].as_str().is_some_and(|f| !f.is_empty()),
        "Marathon registered as an authenticated framework: {info}"
    );

    // No secret in any image the nodes booted: the disks, decompressed, scanned whole.
    for img in ["master.qcow2", "slave-only.qcow2"] {
        let raw = run_dir.join("scan.raw");
        let st = std::process::Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(images.join(img))
            .arg(&raw)
            .status()
            .unwrap();
        assert!(st.success());
        let found = std::process::Command::new("grep")
            .args(["-c", "-a", "-F"])
            .args([
                "-e", &agent, "-e", &marathon, "-e", &operator, "-e", &zookeeper,
            ])
            .arg(&raw)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&raw);
        assert_eq!(
            found.status.code(),
            Some(1),
            "a secret is in {img}: {}",
            String::from_utf8_lossy(&found.stdout)
        );
    }
}

/// ZooKeeper digest ACLs (issue 15): once a master's mesobake-zk-acl job reports it, a
/// real ZooKeeper client (python3-kazoo) on the host, through a master's forwarded 2181,
/// can neither list nor read /mesos and /marathon without the digest, and can with it.
fn check_zookeeper_acls(rows: &[serde_json::Value], run_dir: &Path) {
    let line = "ZooKeeper /mesos and /marathon are digest-only";
    let t = Instant::now();
    let masters: Vec<&serde_json::Value> = rows.iter().filter(|r| r["role"] == "master").collect();
    while !masters.iter().any(|r| {
        std::fs::read_to_string(run_dir.join(format!("{}.serial.log", r["name"].as_str().unwrap())))
            .is_ok_and(|log| log.contains(line))
    }) {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "no master reported {line:?} within 600 s"
        );
        std::thread::sleep(Duration::from_secs(5));
    }
    eprintln!(
        "e2e-lab: ZooKeeper ACLs set ({:.0} s after the authentication checks)",
        t.elapsed().as_secs_f64()
    );
    let digest = std::fs::read_to_string(run_dir.join("secrets/zookeeper")).unwrap();
    let digest = digest.trim();
    assert!(
        digest.starts_with("mesobake:"),
        "secrets/zookeeper: one principal:secret line"
    );
    let port = masters[0]["ports"]["2181"].as_u64().unwrap();
    let script = format!(
        "from kazoo.client import KazooClient\n\
         from kazoo.exceptions import NoAuthError\n\
         anon = KazooClient(hosts='127.0.0.1:{port}', timeout=10)\n\
         anon.start(timeout=30)\n\
         for what, call in (('ls /mesos', lambda: anon.get_children('/mesos')),\n\
                            ('get /mesos', lambda: anon.get('/mesos')),\n\
                            ('ls /marathon', lambda: anon.get_children('/marathon')),\n\
                            ('get /marathon', lambda: anon.get('/marathon'))):\n\
         \ttry:\n\t\tcall()\n\t\tprint('READABLE', what)\n\
         \texcept NoAuthError:\n\t\tprint('noauth', what)\n\
         auth = KazooClient(hosts='127.0.0.1:{port}', timeout=10, auth_data=[('digest', '{digest}')])\n\
         auth.start(timeout=30)\n\
         print('mesos', sorted(auth.get_children('/mesos')))\n\
         print('marathon', sorted(auth.get_children('/marathon')))\n"
    );
    let out = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "e2e-lab: ZooKeeper as seen from the host:\n{}",
        text.replace(&digest[9..], "<secret>")
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("noauth").count(), 4, "{text}");
    assert!(!text.contains("READABLE"), "{text}");
    assert!(
        text.contains("json.info_"),
        "the masters' election znodes, with the digest: {text}"
    );
}

/// The baked nftables policy (issue 15): a host on the lab's segment (a network namespace
/// bridged onto it) that is also the cluster's gateway, 10.77.0.1, reaches ZooKeeper from
/// that inside address; from an address outside the cluster network, 10.99.0.5 (routed
/// back through the gateway, so replies would arrive), SSH still answers while ZooKeeper,
/// the master and the agent do not.
fn check_network_policy(rows: &[serde_json::Value], leader: &str, run_dir: &Path) {
    use outside::{OutsideHost, Reach};
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("state.json")).unwrap())
            .unwrap();
    let host = OutsideHost::join(
        state["mcast"].as_str().unwrap(),
        &["10.77.0.1/24", "10.99.0.5/24"],
    )
    .expect("a host on the lab segment");
    let ip = |name: &str| {
        rows.iter().find(|r| r["name"] == name).unwrap()["ip"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let master = ip(leader);
    let agent = rows.iter().find(|r| r["role"] != "master").unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let wait = Duration::from_secs(5);
    let inside = host.connect("10.77.0.1", &master, 2181, wait);
    assert_eq!(
        inside,
        Reach::Connected,
        "ZooKeeper from the cluster network"
    );
    let ssh = host.connect("10.99.0.5", &master, 22, wait);
    assert!(
        matches!(ssh, Reach::Connected | Reach::Refused),
        "SSH from outside must get an answer (the route back works): {ssh:?}"
    );
    for (what, ip, port) in [
        ("ZooKeeper", &master, 2181),
        ("the Mesos master", &master, 5050),
        ("Marathon", &master, 8080),
        ("the Mesos agent", &agent, 5051),
    ] {
        let r = host.connect("10.99.0.5", ip, port, wait);
        assert_eq!(
            r,
            Reach::TimedOut,
            "{what} ({ip}:{port}) from 10.99.0.5 must be dropped"
        );
    }
    eprintln!("e2e-lab: network policy: inside {inside:?}, SSH from outside {ssh:?}, 2181/5050/8080/5051 from outside dropped");
}

/// `lab ssh` (issue 12): logs in to `node` through its forwarded port 22 with the
/// topology's key (its private half found beside cluster.toml) as the user cloud-init
/// gave it, and reads the node's own hostname; the remote command's exit status comes
/// back as mesobake's. sshd may still be starting on a slow TCG guest, so a failure of
/// ssh itself (255) is retried a few times; any other failure is not.
fn check_ssh(topo: &str, node: &str) {
    let out = lab_ssh(topo, node, &["cat", "/etc/hostname"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lab ssh {node}: {}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        node,
        "{node}'s /etc/hostname through lab ssh"
    );
    let st = lab_ssh(topo, node, &["exit", "7"]).status;
    assert_eq!(st.code(), Some(7), "lab ssh passes the remote exit status");
    eprintln!(
        "e2e-lab: lab ssh {node} -- cat /etc/hostname: {}",
        stdout.trim()
    );
}

/// `lab ssh TOPO NODE -- CMD...`, again while ssh itself fails (255: sshd may still be
/// starting), up to 6 times 10 s apart; the first output that is not ssh's failure.
fn lab_ssh(topo: &str, node: &str, cmd: &[&str]) -> std::process::Output {
    let mut args = vec!["lab", "ssh", topo, node, "--"];
    args.extend_from_slice(cmd);
    let mut last = String::new();
    for attempt in 1..=6 {
        let out = mesobake(&args).output().unwrap();
        if out.status.code() != Some(255) {
            return out;
        }
        last = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr));
        eprintln!("e2e-lab: lab ssh {node}: attempt {attempt} failed: {last}");
        std::thread::sleep(Duration::from_secs(10));
    }
    panic!("lab ssh {node} failed 6 times; the last: {last}");
}

/// Runs `script` as root on `node` through `lab ssh`; its stdout.
fn on(topo: &str, node: &str, script: &str) -> String {
    let remote = format!("sudo sh -c '{}'", script.replace('\'', r"'\''"));
    let out = lab_ssh(topo, node, &[&remote]);
    assert!(
        out.status.success(),
        "on {node}: {script}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A master's ZooKeeper state lives on its data disk: /var/lib/mesobake-data is the disk
/// labelled mesobake-data that the lab attached, /var/lib/zookeeper is bound from it, and
/// ZooKeeper wrote its transaction log there. (`lab replace` onto a new image keeps that
/// disk; ci/rolling-replace.sh shows the log surviving three replacements.)
fn check_data_disk(topo: &str, node: &str) {
    let out = on(
        topo,
        node,
        "blkid -s LABEL -o value $(findmnt -no SOURCE /var/lib/mesobake-data) && \
         findmnt -no SOURCE /var/lib/zookeeper && ls /var/lib/mesobake-data/zookeeper/version-2",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("mesobake-data"),
        "{node}: {out}"
    );
    assert!(
        lines.get(1).is_some_and(|l| l.ends_with("[/zookeeper]")),
        "{node}: /var/lib/zookeeper is not bound from the data disk: {out}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("log.")),
        "{node}: no ZooKeeper transaction log on the data disk: {out}"
    );
    eprintln!(
        "e2e-lab: {node} keeps its ZooKeeper state on its data disk: {}",
        lines.join(" ")
    );
}

fn svc(r: &serde_json::Value, name: &str) -> serde_json::Value {
    r["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == name)
        .unwrap_or_else(|| panic!("{} has no {name}: {r}", r["name"]))
        .clone()
}

/// The hostname an agent reports.
fn host_of(r: &serde_json::Value) -> String {
    svc(r, "agent")["state"]["hostname"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The names of the masters that say they lead.
fn leaders(rows: &[serde_json::Value]) -> Vec<String> {
    rows.iter()
        .filter(|r| r["role"] == "master" && r["running"] == true)
        .filter(|r| {
            r["services"].as_array().unwrap().iter().any(|s| {
                s["service"] == "master" && s["ok"] == true && s["state"]["leading"] == true
            })
        })
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

/// The agents (ID, hostname) that say they registered.
fn registered_agents(rows: &[serde_json::Value]) -> Vec<(String, String)> {
    rows.iter()
        .filter(|r| r["role"] == "slave-only" && r["running"] == true)
        .filter_map(|r| {
            let a = svc(r, "agent");
            let id = a["state"]["id"].as_str().unwrap_or("").to_string();
            (a["ok"] == true && !id.is_empty()).then(|| {
                (
                    id,
                    a["state"]["hostname"].as_str().unwrap_or("").to_string(),
                )
            })
        })
        .collect()
}

/// Whether one master leads (not `old`, when given), every agent says it is registered
/// with it, and it lists each as active. An agent keeps naming the master it registered
/// with until it notices the loss, so its own word alone is not enough after a failover.
fn agents_on_the_leader(rows: &[serde_json::Value], old: Option<&str>) -> bool {
    let l = leaders(rows);
    if l.len() != 1 || old == Some(l[0].as_str()) {
        return false;
    }
    let leader = rows.iter().find(|r| r["name"] == l[0]).unwrap();
    let listed = svc(leader, "master")["state"]["agents"].clone();
    let agents = registered_agents(rows);
    agents.len() == AGENTS
        && rows
            .iter()
            .filter(|r| r["role"] == "slave-only")
            .all(|r| svc(r, "agent")["state"]["master_hostname"] == l[0].as_str())
        && agents.iter().all(|(id, _)| {
            listed.as_array().is_some_and(|a| {
                a.iter()
                    .any(|e| e["id"] == id.as_str() && e["active"] == true)
            })
        })
}

/// Checks that one master leads, that the running others redirect to it, and that it lists
/// the agents as active under names from their own addresses. Returns the leader's name.
fn check_one_leader_with_the_agents(rows: &[serde_json::Value]) -> String {
    let l = leaders(rows);
    assert_eq!(l.len(), 1, "one leading master: {rows:#?}");
    let leader = rows.iter().find(|r| r["name"] == l[0]).unwrap();
    // Mesos redirects to the leader by the hostname it advertises (here its node name).
    let leader_at = format!("//{}:5050", l[0]);
    for r in rows
        .iter()
        .filter(|r| r["role"] == "master" && r["running"] == true && r["name"] != l[0])
    {
        let m = svc(r, "master");
        assert_eq!(m["state"]["leading"], false, "{m}");
        assert!(
            m["state"]["leader"]
                .as_str()
                .unwrap()
                .starts_with(&leader_at),
            "a follower redirects to the leader {leader_at}: {m}"
        );
    }
    let listed = svc(leader, "master")["state"]["agents"].clone();
    let listed = listed.as_array().unwrap();
    let agents = registered_agents(rows);
    assert_eq!(agents.len(), AGENTS, "{rows:#?}");
    for (id, host) in &agents {
        let entry = listed
            .iter()
            .find(|a| a["id"] == id.as_str())
            .unwrap_or_else(|| panic!("the leader does not list agent {id}: {listed:?}"));
        assert_eq!(entry["active"], true, "{entry}");
        assert_eq!(entry["hostname"], host.as_str(), "{entry}");
        assert!(
            host.starts_with("ip-10-77-0-"),
            "an unnamed group instance is named from its address: {host}"
        );
    }
    for r in rows.iter().filter(|r| r["role"] == "slave-only") {
        let a = svc(r, "agent");
        assert_eq!(a["flags"]["attributes"], "rack:r1", "{a}");
        // Built with the mesos containerizer only (see the module docs).
        assert_eq!(a["flags"]["containerizers"], "mesos", "{a}");
        assert_eq!(
            host_of(r),
            format!("ip-{}", r["ip"].as_str().unwrap().replace('.', "-")),
            "the instance is named from its own address"
        );
    }
    l[0].clone()
}

/// Polls `lab status --json` until `done` holds or `limit` passes; returns the last rows.
fn wait_for(
    topo: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + limit;
    loop {
        let out = run_ok_text(mesobake(&["--json", "lab", "status", topo]), "lab status");
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        let rows = rows.as_array().unwrap().clone();
        if done(&rows) {
            return rows;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {} s waiting for {what}: {rows:#?}",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_secs(10));
    }
}
