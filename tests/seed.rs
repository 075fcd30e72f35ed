//! `mesobake seed`: a cluster.toml in, every node's seeds out, checked with the tools the
//! seeds meet in real life: the ISO's volume label (isoinfo) and Debian 12's own
//! cloud-init (`ci/cloud-init-schema.sh`: `cloud-init schema` for user-data, the ENI
//! renderer for network-config, since 22.4 has no network-config schema).

use std::fs;
use std::path::Path;
use std::process::Command;

const CLUSTER: &str = r#"
name = "prod"
ssh-keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE3zGx3 ops@example"]

[network]
cidr = "10.20.0.0/24"
gateway = "10.20.0.1"
dns = ["10.20.0.2"]

[[node]]
name = "m1"
role = "master"
ip = "10.20.0.11"

[[node]]
name = "m2"
role = "master"
ip = "10.20.0.12"

[[node]]
name = "m3"
role = "master"
ip = "10.20.0.13"

[[node]]
name = "a1"
role = "slave-only"
ip = "10.20.0.21"
attributes = { rack = "r1" }
agent-flags = { "?no-switch_user" = "" }

[[node]]
name = "a2"
role = "slave-only"

[[group]]
name = "workers"
role = "slave-only"
resources = { cpus = "4" }
"#;

fn mesobake(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mesobake"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// `cloud-init schema` over every user-data the example topology's seed wrote (the ISO
/// directories' and the EC2 files'), each of which must be valid: how many, and the
/// checker's output.
fn schema_every_user_data(out: &Path) -> (Vec<std::path::PathBuf>, String) {
    let mut uds: Vec<std::path::PathBuf> = Vec::new();
    for n in ["m1", "m2", "m3", "a1", "a2", "workers"] {
        uds.push(out.join(format!("{n}/user-data")));
        uds.push(out.join(format!("{n}.user-data")));
    }
    let text = schema_valid_user_data(&uds);
    (uds, text)
}

/// `cloud-init schema` over `uds`, each of which must be valid; the checker's output.
fn schema_valid_user_data(uds: &[std::path::PathBuf]) -> String {
    let refs: Vec<&Path> = uds.iter().map(|p| p.as_path()).collect();
    let text = schema("user-data", &refs);
    assert_eq!(
        text.matches("Valid cloud-config").count(),
        uds.len(),
        "{text}"
    );
    text
}

fn schema(kind: &str, files: &[&Path]) -> String {
    let (ok, text) = schema_result(kind, files);
    assert!(ok, "cloud-init {kind} check failed:\n{text}");
    text
}

/// ci/cloud-init-schema.sh's verdict and output, success or not.
fn schema_result(kind: &str, files: &[&Path]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/ci/cloud-init-schema.sh"
        ))
        .arg(kind)
        .args(files)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Whether the cloud-init check can run here (CI's setup-host.sh installs what it needs):
/// in CI (`CI` set) a missing piece fails the test, elsewhere the check is skipped, said.
fn cloud_init_available() -> bool {
    let ok = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import yaml, jsonschema, jinja2, configobj, netifaces",
        ])
        .status()
        .is_ok_and(|s| s.success());
    let fix = "run ci/setup-host.sh (python3-jsonschema, python3-configobj, ...; ci/cloud-init-schema.sh unpacks Debian's cloud-init)";
    if !ok && std::env::var_os("CI").is_some() {
        panic!("CI must check seeds with cloud-init, but its python libraries are missing: {fix}");
    }
    if !ok {
        eprintln!("skipped cloud-init checks: {fix}");
    }
    ok
}

#[test]
fn seeds_for_every_node_and_group_pass_cloud_init() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("cluster.toml");
    fs::write(&topo, CLUSTER).unwrap();
    let out = dir.path().join("seeds");
    let o = mesobake(&[
        "seed",
        topo.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(
        listing.lines().any(|l| l
            .split_whitespace()
            .take(3)
            .eq(["a2", "slave-only", "dhcp"])),
        "{listing}"
    );

    for n in ["m1", "m2", "m3", "a1", "a2", "workers"] {
        for f in [
            format!("{n}.iso"),
            format!("{n}.user-data"),
            format!("{n}/user-data"),
            format!("{n}/meta-data"),
        ] {
            assert!(out.join(&f).is_file(), "{f} missing");
        }
    }
    // Static nodes carry network-config; DHCP nodes and groups match by MAC with DHCP or
    // carry none at all.
    assert!(out.join("m1.network-config").is_file());
    assert!(!out.join("workers.network-config").exists());
    let m1 = fs::read_to_string(out.join("m1/user-data")).unwrap();
    assert!(
        m1.contains("MESOBAKE_ZK='zk://m1:2181,m2:2181,m3:2181/mesos'"),
        "{m1}"
    );
    assert!(m1.contains("MESOBAKE_QUORUM='2'"), "{m1}");
    assert!(m1.contains("MESOBAKE_IP='10.20.0.11'"), "{m1}");
    assert!(m1.contains("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE3zGx3 ops@example"));
    // EC2: the address comes from the instance.
    let ec2 = fs::read_to_string(out.join("m1.user-data")).unwrap();
    assert!(!ec2.contains("MESOBAKE_IP"), "{ec2}");
    assert!(
        ec2.contains("MESOBAKE_HOSTS='10.20.0.11=m1 10.20.0.12=m2 10.20.0.13=m3 10.20.0.21=a1'")
    );
    let meta = fs::read_to_string(out.join("m1/meta-data")).unwrap();
    assert!(
        meta.starts_with("instance-id: \"prod-m1-") && meta.contains("local-hostname: \"m1\""),
        "{meta}"
    );
    let workers = fs::read_to_string(out.join("workers.user-data")).unwrap();
    assert!(
        !workers.contains("MESOBAKE_HOSTNAME") && !workers.contains("MESOBAKE_IP"),
        "{workers}"
    );
    assert!(workers.contains("MESOBAKE_RESOURCES='cpus:4'"));

    if on_path("isoinfo") {
        let info = Command::new("isoinfo")
            .args(["-d", "-i"])
            .arg(out.join("m1.iso"))
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&info.stdout).contains("Volume id: cidata"));
        let files = Command::new("isoinfo")
            .args(["-R", "-f", "-i"])
            .arg(out.join("m1.iso"))
            .output()
            .unwrap();
        let files = String::from_utf8_lossy(&files.stdout);
        for f in ["/user-data", "/meta-data", "/network-config"] {
            assert!(files.lines().any(|l| l == f), "{f} not on the ISO: {files}");
        }
    }

    if cloud_init_available() {
        schema_every_user_data(&out);
        let rendered = schema(
            "network-config",
            &[
                &out.join("m1/network-config"),
                &out.join("a2/network-config"),
            ],
        );
        assert!(rendered.contains("address 10.20.0.11/24"), "{rendered}");
        assert!(rendered.contains("gateway 10.20.0.1"), "{rendered}");
        assert!(rendered.contains("inet dhcp"), "{rendered}");
    }
}

#[test]
fn bad_topologies_name_node_and_key_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("cluster.toml");
    let out = dir.path().join("seeds");
    for (from, to, want) in [
        (
            "ip = \"10.20.0.12\"",
            "ip = \"10.20.0.11\"",
            "node \"m2\" key \"ip\": 10.20.0.11 is already node \"m1\"'s address",
        ),
        (
            "role = \"slave-only\"\nip = \"10.20.0.21\"",
            "role = \"gpu-agent\"\nip = \"10.20.0.21\"",
            "node \"a1\" key \"role\": no profile",
        ),
        (
            "ip = \"10.20.0.13\"",
            "ip = \"192.168.0.13\"",
            "node \"m3\" key \"ip\": 192.168.0.13 is outside the cluster network 10.20.0.0/24",
        ),
    ] {
        fs::write(&topo, CLUSTER.replacen(from, to, 1)).unwrap();
        let o = mesobake(&[
            "seed",
            topo.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(want),
            "want {want:?}:\n{err}"
        );
        assert!(!out.exists(), "nothing may be written for a bad topology");
    }
    // Two masters: allowed, with a warning that explains the quorum.
    fs::write(
        &topo,
        CLUSTER.replacen(
            "name = \"m3\"\nrole = \"master\"",
            "name = \"m3\"\nrole = \"slave-only\"",
            1,
        ),
    )
    .unwrap();
    let o = mesobake(&[
        "seed",
        topo.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("2 masters: the quorum is a majority, 2"),
        "{err}"
    );
}

/// The `write_files` entries of a user-data, path -> (permissions, content).
fn write_files(ud: &str) -> std::collections::BTreeMap<String, (String, String)> {
    let mut out = std::collections::BTreeMap::new();
    let mut path = String::new();
    let mut perms = String::new();
    for line in ud.lines() {
        let l = line.trim_start();
        if let Some(p) = l.strip_prefix("- path: ") {
            path = p.to_string();
        } else if let Some(p) = l.strip_prefix("permissions: ") {
            perms = p.to_string();
        } else if let Some(c) = l.strip_prefix("content: ") {
            let content: String = serde_json::from_str(c).unwrap();
            out.insert(path.clone(), (perms.clone(), content));
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn seed(topo: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "seed",
        topo.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let o = mesobake(&args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err
}

fn secrets_json(out: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(out.join("secrets/credentials.json")).unwrap())
        .unwrap()
}

fn secret_of(v: &serde_json::Value, principal: &str) -> String {
    v["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["principal"] == principal)
        .unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn secrets_are_made_once_kept_private_and_given_only_to_the_nodes_that_use_them() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("cluster.toml");
    fs::write(&topo, CLUSTER).unwrap();
    let out = dir.path().join("seeds");
    let err = seed(&topo, &out, &[]);
    assert!(err.contains("secrets generated"), "{err}");

    // secrets/: private, Mesos's JSON form plus the operator's curl -u line and the
    // ZooKeeper digest credential for zkCli's `addauth digest`.
    assert_eq!(mode(&out.join("secrets")), 0o700);
    for f in ["credentials.json", "operator", "zookeeper"] {
        assert_eq!(mode(&out.join("secrets").join(f)), 0o600, "{f}");
    }
    let v = secrets_json(&out);
    let (agent, marathon, operator) = (
        secret_of(&v, "agent"),
        secret_of(&v, "marathon"),
        secret_of(&v, "operator"),
    );
    let zk = zk_secret(&out);
    for s in [&agent, &marathon, &operator, &zk] {
        assert_eq!(s.len(), 32);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()), "{s}");
    }
    let all = std::collections::BTreeSet::from([&agent, &marathon, &operator, &zk]);
    assert_eq!(all.len(), 4, "four different secrets");
    assert_eq!(
        fs::read_to_string(out.join("secrets/operator")).unwrap(),
        format!("operator:{operator}\n")
    );
    // credentials.json is Mesos's --credentials file: Mesos principals only.
    let principals: Vec<&str> = v["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["principal"].as_str().unwrap())
        .collect();
    assert_eq!(principals, ["agent", "marathon", "operator"]);

    for n in ["m1", "m2", "m3", "a1", "a2", "workers"] {
        // Every file that carries a secret is private on the host.
        for f in [
            format!("{n}.iso"),
            format!("{n}.user-data"),
            format!("{n}/user-data"),
        ] {
            assert_eq!(mode(&out.join(&f)), 0o600, "{f}");
        }
        for f in [format!("{n}.user-data"), format!("{n}/user-data")] {
            let ud = fs::read_to_string(out.join(&f)).unwrap();
            let files = write_files(&ud);
            let (perms, node_env) = &files["/etc/mesobake/node.env"];
            assert_eq!(perms, "'0644'");
            for s in [&agent, &marathon, &operator, &zk] {
                assert!(!node_env.contains(s.as_str()), "{f}: node.env has a secret");
            }
            let (perms, secrets) = &files["/etc/mesobake/secrets.env"];
            assert_eq!(perms, "'0600'", "{f}");
            assert!(
                ud.contains("- path: /etc/mesobake/secrets.env\n    owner: root:root\n"),
                "{ud}"
            );
            assert!(secrets.contains(&format!("MESOBAKE_AGENT_SECRET='{agent}'\n")));
            assert!(secrets.contains(&format!("MESOBAKE_OPERATOR_SECRET='{operator}'\n")));
            assert!(secrets.contains("MESOBAKE_OPERATOR_PRINCIPAL='operator'\n"));
            // Every node here runs a Mesos master or agent: each connects to ZooKeeper.
            assert!(
                secrets.contains("MESOBAKE_ZK_PRINCIPAL='mesobake'\n"),
                "{f}"
            );
            assert!(
                secrets.contains(&format!("MESOBAKE_ZK_SECRET='{zk}'\n")),
                "{f}"
            );
            // Marathon's secret only where Marathon and the masters run.
            let master = n.starts_with('m');
            assert_eq!(
                ud.contains(&marathon),
                master,
                "{f}: Marathon's secret where it does not belong, or missing"
            );
            if master {
                assert!(secrets.contains("MESOBAKE_MARATHON_PRINCIPAL='marathon'\n"));
            }
        }
    }
    // No secret on the ISO's meta-data or network-config, nor in the listing.
    assert_eq!(mode(&out.join("m1/meta-data")) & 0o044, 0o044);

    // The next run reuses them: same seeds, same instance ids.
    let ud1 = fs::read_to_string(out.join("a1/user-data")).unwrap();
    let meta1 = fs::read_to_string(out.join("a1/meta-data")).unwrap();
    let err = seed(&topo, &out, &[]);
    assert!(err.contains("secrets reused"), "{err}");
    assert_eq!(secrets_json(&out), v);
    assert_eq!(fs::read_to_string(out.join("a1/user-data")).unwrap(), ud1);
    assert_eq!(fs::read_to_string(out.join("a1/meta-data")).unwrap(), meta1);

    // --rotate: new secrets everywhere, and new instance ids so cloud-init writes them.
    let err = seed(&topo, &out, &["--rotate"]);
    assert!(err.contains("secrets rotated"), "{err}");
    let v2 = secrets_json(&out);
    for p in ["agent", "marathon", "operator"] {
        assert_ne!(secret_of(&v2, p), secret_of(&v, p), "{p}");
    }
    assert_ne!(
        zk_secret(&out),
        zk,
        "--rotate renews the ZooKeeper credential too"
    );
    let ud2 = fs::read_to_string(out.join("a1/user-data")).unwrap();
    assert!(!ud2.contains(&agent) && ud2.contains(&secret_of(&v2, "agent")));
    assert_ne!(fs::read_to_string(out.join("a1/meta-data")).unwrap(), meta1);
    assert_eq!(mode(&out.join("secrets/credentials.json")), 0o600);
    assert_eq!(mode(&out.join("secrets/zookeeper")), 0o600);

    // secrets/ from before the ZooKeeper credential: its three are kept, a fourth is made
    // and said so, and the seeds carry it.
    fs::remove_file(out.join("secrets/zookeeper")).unwrap();
    let err = seed(&topo, &out, &[]);
    assert!(
        err.contains("has no ZooKeeper credential") && err.contains("kept the other three"),
        "{err}"
    );
    assert_eq!(secrets_json(&out), v2);
    assert_eq!(mode(&out.join("secrets/zookeeper")), 0o600);
    let zk3 = zk_secret(&out);
    let ud3 = fs::read_to_string(out.join("m1/user-data")).unwrap();
    assert!(
        ud3.contains(&format!("MESOBAKE_ZK_SECRET='{zk3}'")),
        "{ud3}"
    );
    assert!(ud3.contains(&secret_of(&v2, "agent")));
}

/// The secret of `secrets/zookeeper`, checking its one-line `mesobake:<secret>` form.
fn zk_secret(out: &Path) -> String {
    let line = fs::read_to_string(out.join("secrets/zookeeper")).unwrap();
    let s = line
        .strip_prefix("mesobake:")
        .and_then(|s| s.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("secrets/zookeeper: {line:?}"));
    assert!(!s.contains(['\n', ':']), "{line:?}");
    s.to_string()
}

#[test]
fn node_env_carries_the_firewall_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("cluster.toml");
    fs::write(
        &topo,
        format!("{CLUSTER}\n[security]\nallow = [\"192.168.9.0/24\", \"10.20.0.0/24\"]\n"),
    )
    .unwrap();
    let out = dir.path().join("seeds");
    seed(&topo, &out, &[]);
    let mut uds = Vec::new();
    for n in ["m1", "m2", "m3", "a1", "a2", "workers"] {
        for f in [format!("{n}.user-data"), format!("{n}/user-data")] {
            let ud = fs::read_to_string(out.join(&f)).unwrap();
            let (_, node_env) = &write_files(&ud)["/etc/mesobake/node.env"];
            assert!(
                node_env.contains("MESOBAKE_CLUSTER_NETWORKS='10.20.0.0/24 192.168.9.0/24'\n"),
                "{f}: {node_env}"
            );
            assert!(!node_env.contains("MESOBAKE_FIREWALL"), "{f}");
            assert!(
                !node_env.contains("MESOBAKE_TRUSTED_MACS"),
                "{f}: only the lab"
            );
            uds.push(out.join(f));
        }
    }
    if cloud_init_available() {
        schema_valid_user_data(&uds);
    }

    // firewall = false: said loudly, and the nodes are told.
    fs::write(&topo, format!("{CLUSTER}\n[security]\nfirewall = false\n")).unwrap();
    let err = seed(&topo, &out, &[]);
    assert!(
        err.contains("warning") && err.contains("firewall = false"),
        "{err}"
    );
    let ud = fs::read_to_string(out.join("a1/user-data")).unwrap();
    let (_, node_env) = &write_files(&ud)["/etc/mesobake/node.env"];
    assert!(node_env.contains("MESOBAKE_FIREWALL='off'\n"), "{node_env}");
    assert!(
        !node_env.contains("MESOBAKE_CLUSTER_NETWORKS"),
        "{node_env}"
    );

    // A network with host bits: refused with file, line and the fixed form; no seeds.
    let out2 = dir.path().join("seeds2");
    let text = format!("{CLUSTER}\n[security]\nallow = [\"192.168.9.1/24\"]\n");
    let line = text.lines().count();
    fs::write(&topo, text).unwrap();
    let o = mesobake(&[
        "seed",
        topo.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!(
            "cluster.toml:{line}: [security] key \"allow\": \"192.168.9.1/24\" has host bits set: the network is \"192.168.9.0/24\""
        )),
        "{err}"
    );
    assert!(!out2.exists());
}

#[test]
fn auth_off_gives_seeds_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("cluster.toml");
    fs::write(&topo, format!("{CLUSTER}\n[security]\nauth = false\n")).unwrap();
    let out = dir.path().join("seeds");
    let err = seed(&topo, &out, &[]);
    assert!(err.contains("WITHOUT authentication"), "{err}");
    assert!(!out.join("secrets").exists());
    let ud = fs::read_to_string(out.join("m1/user-data")).unwrap();
    assert!(!ud.contains("secrets.env"), "{ud}");
    assert!(!write_files(&ud).contains_key("/etc/mesobake/secrets.env"));
    assert_ne!(mode(&out.join("m1/user-data")), 0o600);
    let o = mesobake(&[
        "seed",
        topo.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--rotate",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no secrets to rotate"));
    // A typo in [security] is refused, not read as "off".
    fs::write(&topo, format!("{CLUSTER}\n[security]\nauht = false\n")).unwrap();
    let o = mesobake(&[
        "seed",
        topo.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("auht"));
}

/// The cluster with user cloud-configs: cluster-wide, for a1 and for the group.
fn with_user_configs(dir: &Path) -> std::path::PathBuf {
    let cc = dir.join("cloud-config");
    fs::create_dir_all(&cc).unwrap();
    fs::write(
        cc.join("site.yaml"),
        "#cloud-config\npackages: [jq]\nruncmd:\n  - echo site\nwrite_files:\n  - path: /etc/site-motd\n    content: \"welcome, \u{e9}quipe\\n\"\n",
    )
    .unwrap();
    fs::write(
        cc.join("a1.yaml"),
        "#cloud-config\nruncmd:\n  - [sh, -c, \"echo a1 > /run/a1\"]\npackages: [curl]\n",
    )
    .unwrap();
    fs::write(
        cc.join("workers.yaml"),
        "#cloud-config\nwrite_files:\n  - path: /etc/workers\n    content: w\n",
    )
    .unwrap();
    let topo = dir.join("cluster.toml");
    let text = CLUSTER
        .replacen(
            "ssh-keys",
            "cloud-config = [\"cloud-config/site.yaml\"]\nssh-keys",
            1,
        )
        .replacen(
            "agent-flags = { \"?no-switch_user\" = \"\" }",
            "agent-flags = { \"?no-switch_user\" = \"\" }\ncloud-config = [\"cloud-config/a1.yaml\"]",
            1,
        )
        .replacen(
            "resources = { cpus = \"4\" }",
            "resources = { cpus = \"4\" }\ncloud-config = [\"cloud-config/workers.yaml\"]",
            1,
        );
    fs::write(&topo, text).unwrap();
    topo
}

#[test]
fn user_cloud_configs_are_merged_by_cloud_init_after_mesobakes_own() {
    let dir = tempfile::tempdir().unwrap();
    let topo = with_user_configs(dir.path());
    let out = dir.path().join("seeds");
    // Run from elsewhere: the paths are relative to cluster.toml, not to the cwd.
    seed(&topo, &out, &[]);
    let a1 = fs::read_to_string(out.join("a1/user-data")).unwrap();
    assert!(
        a1.starts_with("Content-Type: multipart/mixed; boundary="),
        "{a1}"
    );
    assert_eq!(
        a1.matches("Merge-Type: list(append)+dict(no_replace,recurse_list)+str()\n")
            .count(),
        3,
        "{a1}"
    );
    // mesobake's own part is unchanged inside: node.env and secrets.env as before.
    let files = write_files(&a1);
    assert!(files["/etc/mesobake/node.env"]
        .1
        .contains("MESOBAKE_ATTRIBUTES='rack:r1'"));
    assert_eq!(files["/etc/mesobake/secrets.env"].0, "'0600'");
    assert_eq!(mode(&out.join("a1/user-data")), 0o600);
    // Nodes without their own file get the cluster-wide one only.
    let m1 = fs::read_to_string(out.join("m1.user-data")).unwrap();
    assert_eq!(m1.matches("Merge-Type:").count(), 2, "{m1}");

    if cloud_init_available() {
        let (uds, text) = schema_every_user_data(&out);
        assert_eq!(text.matches("(multipart: ").count(), uds.len(), "{text}");
        // What cloud-init makes of a1's parts: lists appended in part order, mesobake's
        // write_files first, the non-ASCII text intact.
        let merged: serde_json::Value =
            serde_json::from_str(&schema("merged", &[&out.join("a1/user-data")])).unwrap();
        assert_eq!(merged["hostname"], "a1", "{merged}");
        assert_eq!(merged["packages"], serde_json::json!(["jq", "curl"]));
        assert_eq!(
            merged["runcmd"],
            serde_json::json!(["echo site", ["sh", "-c", "echo a1 > /run/a1"]])
        );
        let paths: Vec<&str> = merged["write_files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "/etc/mesobake/node.env",
                "/etc/mesobake/secrets.env",
                "/etc/site-motd"
            ]
        );
        assert_eq!(
            merged["write_files"][2]["content"],
            "welcome, \u{e9}quipe\n"
        );
        assert_eq!(merged["ssh_authorized_keys"].as_array().unwrap().len(), 1);
        let workers: serde_json::Value =
            serde_json::from_str(&schema("merged", &[&out.join("workers.user-data")])).unwrap();
        let paths: Vec<&str> = workers["write_files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "/etc/mesobake/node.env",
                "/etc/mesobake/secrets.env",
                "/etc/site-motd",
                "/etc/workers"
            ]
        );
        assert!(workers.get("hostname").is_none(), "{workers}");
    }

    // A user file that is not YAML: refused with its file and line, nothing written.
    fs::write(
        dir.path().join("cloud-config/a1.yaml"),
        "#cloud-config\nruncmd:\n  - ls\n  oops: [\n",
    )
    .unwrap();
    let out2 = dir.path().join("seeds2");
    let o = mesobake(&[
        "seed",
        topo.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("node \"a1\" key \"cloud-config\": ")
            && err.contains("cloud-config/a1.yaml:4: not valid YAML"),
        "{err}"
    );
    assert!(!out2.exists());
}

#[test]
fn seeds_of_nodes_that_left_are_removed_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("cluster.toml");
    fs::write(&topo, CLUSTER).unwrap();
    let out = dir.path().join("seeds");
    seed(&topo, &out, &[]);
    assert!(out.join(".mesobake-seed.json").is_file());
    // Someone else's files in the output directory, and one inside a2's.
    fs::write(out.join("notes.txt"), "mine").unwrap();
    fs::write(out.join("a2/README"), "mine").unwrap();
    // a1 and a2 leave; a2's ISO was changed by hand since.
    fs::write(out.join("a2.iso"), "edited").unwrap();
    let text = CLUSTER
        .replacen(
            "[[node]]\nname = \"a1\"\nrole = \"slave-only\"\nip = \"10.20.0.21\"\nattributes = { rack = \"r1\" }\nagent-flags = { \"?no-switch_user\" = \"\" }\n",
            "",
            1,
        )
        .replacen("[[node]]\nname = \"a2\"\nrole = \"slave-only\"\n", "", 1);
    assert!(
        !text.contains("\"a1\"") && !text.contains("\"a2\""),
        "{text}"
    );
    fs::write(&topo, &text).unwrap();
    let err = seed(&topo, &out, &[]);
    for f in [
        "a1/",
        "a1/user-data",
        "a1/meta-data",
        "a1/network-config",
        "a1.iso",
        "a1.user-data",
        "a1.network-config",
    ] {
        assert!(!out.join(f).exists(), "{f} is still there");
        assert!(
            err.contains(&out.join(f).display().to_string()),
            "{f}: {err}"
        );
    }
    assert!(
        err.contains("removed the seeds of a1, no longer in the topology"),
        "{err}"
    );
    assert!(
        err.contains("removed the seeds of a2, no longer in the topology"),
        "{err}"
    );
    assert!(!out.join("a2/user-data").exists() && !out.join("a2.user-data").exists());
    // Kept, and said so: the edited ISO, and a2/ with a file mesobake did not write.
    assert_eq!(fs::read_to_string(out.join("a2.iso")).unwrap(), "edited");
    assert!(out.join("a2/README").exists() && out.join("notes.txt").exists());
    assert!(
        err.contains("a2.iso: it changed since mesobake wrote it"),
        "{err}"
    );
    assert!(
        err.contains("a2/: it holds files mesobake did not write"),
        "{err}"
    );
    // The others, and the secrets, are untouched; a third run has nothing to remove.
    for f in [
        "m1.iso",
        "m1/user-data",
        "workers.user-data",
        "secrets/operator",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let err = seed(&topo, &out, &[]);
    assert!(!err.contains("removed") && !err.contains("kept"), "{err}");
}

/// A manifest.json as `mesobake build` writes it, for two roles: `master` on Debian 12
/// (cloud-init 22.4, ifupdown) and `slave-only` on a netplan base with a later cloud-init.
const MANIFEST: &str = r#"{"mesobake": "0.1.0", "images": {
  "master": {"profile": {"name": "master", "services": [], "sha256": "", "files": []},
    "base": {"spec": "debian-12", "sha256": "", "family": "debian", "codename": "bookworm"},
    "layout": null, "local_debs": {}, "outputs": [],
    "packages": [{"name": "cloud-init", "version": "22.4.2-1+deb12u4", "architecture": "all"},
                 {"name": "ifupdown", "version": "0.8.41", "architecture": "amd64"}]},
  "slave-only": {"profile": {"name": "slave-only", "services": [], "sha256": "", "files": []},
    "base": {"spec": "ubuntu-24.04", "sha256": "", "family": "ubuntu", "codename": "noble"},
    "layout": null, "local_debs": {}, "outputs": [],
    "packages": [{"name": "cloud-init", "version": "24.4.1-0ubuntu0~24.04.1", "architecture": "all"},
                 {"name": "netplan.io", "version": "1.1.2-2~ubuntu24.04.1", "architecture": "amd64"}]}}}"#;

#[test]
fn the_default_gateway_is_written_the_way_each_roles_base_renders_it() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("cluster.toml");
    fs::write(&topo, CLUSTER).unwrap();
    let images = dir.path().join("images");
    fs::create_dir_all(&images).unwrap();

    // --images without a manifest: refused, nothing guessed.
    let out = dir.path().join("seeds");
    let o = mesobake(&[
        "seed",
        topo.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("manifest.json"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    fs::write(images.join("manifest.json"), MANIFEST).unwrap();
    let o = mesobake(&[
        "seed",
        topo.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let master = fs::read_to_string(out.join("m1/network-config")).unwrap();
    assert!(master.contains("gateway4: \"10.20.0.1\""), "{master}");
    assert!(!master.contains("routes"), "{master}");
    let agent = fs::read_to_string(out.join("a1/network-config")).unwrap();
    assert!(
        agent.contains("routes: [{to: \"0.0.0.0/0\", via: \"10.20.0.1\"}]"),
        "{agent}"
    );
    assert!(!agent.contains("gateway4"), "{agent}");
    // The same seed without --images: gateway4 everywhere, as before.
    let plain = dir.path().join("plain");
    seed(&topo, &plain, &[]);
    let a1 = fs::read_to_string(plain.join("a1/network-config")).unwrap();
    assert!(a1.contains("gateway4: \"10.20.0.1\""), "{a1}");

    if !cloud_init_available() {
        return;
    }
    // Why the Debian 12 master gets gateway4, shown by 22.4's own parser and ENI
    // renderer: gateway4 becomes ifupdown's `gateway`; the routes form becomes a
    // net-tools `route add`, which minimal images cannot run; and `to: default` does
    // not even parse.
    let rendered = schema("network-config", &[&out.join("m1/network-config")]);
    assert!(rendered.contains("    gateway 10.20.0.1\n"), "{rendered}");
    assert!(!rendered.contains("route add"), "{rendered}");
    let as_routes = dir.path().join("routes.yaml");
    fs::write(
        &as_routes,
        master.replace(
            "gateway4: \"10.20.0.1\"",
            "routes: [{to: \"0.0.0.0/0\", via: \"10.20.0.1\"}]",
        ),
    )
    .unwrap();
    let rendered = schema("network-config", &[&as_routes]);
    assert!(
        rendered.contains("post-up route add default gw 10.20.0.1"),
        "{rendered}"
    );
    assert!(!rendered.contains("    gateway 10.20.0.1"), "{rendered}");
    let as_default = dir.path().join("default.yaml");
    fs::write(
        &as_default,
        fs::read_to_string(&as_routes)
            .unwrap()
            .replace("0.0.0.0/0", "default"),
    )
    .unwrap();
    let (ok, text) = schema_result("network-config", &[&as_default]);
    assert!(
        !ok && text.contains("Address default is not a valid ip address"),
        "{text}"
    );
}

const OVA_CLUSTER: &str = r#"
name = "class"
ssh-keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE3zGx3 ops@example"]

[network]
cidr = "192.168.56.0/24"
gateway = "192.168.56.1"

[[node]]
name = "m1"
role = "master"
ip = "192.168.56.10"

[[node]]
name = "a1"
role = "slave-only"
ip = "192.168.56.11"

[[group]]
name = "workers"
role = "slave-only"
"#;

/// A manifest.json as `mesobake build` writes it, listing `<role>.qcow2` for each role.
fn ova_manifest(images: &Path) -> String {
    let image = |role: &str, family: &str| {
        let q = images.join(format!("{role}.qcow2"));
        let sum = run_text(Command::new("sha256sum").arg(&q));
        serde_json::json!({
            "profile": {"name": role, "services": [], "sha256": "", "files": []},
            "base": {"spec": "x", "sha256": "", "family": family, "codename": null},
            "layout": null, "local_debs": {}, "packages": [],
            "outputs": [{"file": format!("{role}.qcow2"), "format": "qcow2", "kind": "disk",
                "virtual_size": 64u64 << 20, "size": fs::metadata(&q).unwrap().len(),
                "sha256": sum.split_whitespace().next().unwrap()}]})
    };
    serde_json::json!({"mesobake": "0.1.0", "images": {
        "master": image("master", "debian"),
        "slave-only": image("slave-only", "ubuntu")}})
    .to_string()
}

fn run_text(c: &mut Command) -> String {
    let o = c.output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{c:?} failed:\n{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

/// Whether virt-v2v can parse the OVAs here: skipped, said, when it is absent, unless
/// `CI` is set.
fn virt_v2v_available() -> bool {
    if on_path("virt-v2v") {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI must check OVAs with virt-v2v's OVF parser, but virt-v2v is missing: run ci/setup-host.sh");
    }
    eprintln!("skipped the virt-v2v OVF parse: virt-v2v is not installed");
    false
}

#[test]
fn seed_ova_packs_each_nodes_role_disk_with_its_seed() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("cluster.toml");
    fs::write(&topo, OVA_CLUSTER).unwrap();
    let images = dir.path().join("images");
    fs::create_dir_all(&images).unwrap();
    for role in ["master", "slave-only"] {
        run_text(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(images.join(format!("{role}.qcow2")))
                .arg("64M"),
        );
    }
    fs::write(images.join("manifest.json"), ova_manifest(&images)).unwrap();
    let out = dir.path().join("seeds");
    let o = mesobake(&[
        "--json",
        "seed",
        topo.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--ova",
        "--images",
        images.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("m1.ova"), "progress names each OVA: {err}");
    // One VMDK written per role: a1 and the workers group share slave-only's.
    let written = |who: &str| {
        err.matches(&format!(
            "{who}: writing the disk as a streamOptimized VMDK"
        ))
        .count()
    };
    assert_eq!(
        (written("slave-only"), written("a1"), written("workers")),
        (1, 0, 0),
        "{err}"
    );
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for (i, name) in ["m1", "a1", "workers"].iter().enumerate() {
        let files = listed[i]["files"].as_array().unwrap();
        assert!(
            files.iter().any(|f| f == &format!("{name}.ova")),
            "{listed}"
        );
    }
    // No temporary file is left beside them.
    for e in fs::read_dir(&out).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !n.contains(".part") && !n.starts_with(".mesobake-ova"),
            "{n}"
        );
    }

    let v2v = virt_v2v_available();
    let mut cids = Vec::new();
    for (name, memory) in [("m1", 4u64 << 30), ("a1", 2 << 30), ("workers", 2 << 30)] {
        let ova = out.join(format!("{name}.ova"));
        // Holding the seed's secrets, the OVA is as private as its ISO.
        assert_eq!(mode(&ova), 0o600, "{name}");
        let listing = run_text(Command::new("tar").arg("-tf").arg(&ova));
        let members = [
            format!("{name}.ovf"),
            format!("{name}-disk1.vmdk"),
            format!("{name}-seed.iso"),
            format!("{name}.mf"),
        ];
        assert_eq!(listing.lines().collect::<Vec<_>>(), members, "{name}");
        let x = dir.path().join(format!("x-{name}"));
        fs::create_dir_all(&x).unwrap();
        run_text(Command::new("tar").arg("-xf").arg(&ova).arg("-C").arg(&x));
        // The .mf in sha256sum's own check format: `sha256sum -c` re-hashes each member.
        let mf = fs::read_to_string(x.join(&members[3])).unwrap();
        let mut check = String::new();
        for m in &members[..3] {
            let line = mf
                .lines()
                .find(|l| l.starts_with(&format!("SHA256({m})= ")))
                .unwrap_or_else(|| panic!("{m} not in {mf}"));
            let hex = line.rsplit(' ').next().unwrap();
            check += &format!("{hex}  {m}\n");
        }
        fs::write(x.join("SUMS"), check).unwrap();
        run_text(
            Command::new("sha256sum")
                .args(["-c", "--strict", "SUMS"])
                .current_dir(&x),
        );
        let vmdk = x.join(&members[1]);
        run_text(
            Command::new("qemu-img")
                .args(["check", "-f", "vmdk"])
                .arg(&vmdk),
        );
        let info: serde_json::Value = serde_json::from_str(&run_text(
            Command::new("qemu-img")
                .args(["info", "--output=json", "-f", "vmdk"])
                .arg(&vmdk),
        ))
        .unwrap();
        assert_eq!(info["virtual-size"], 64u64 << 20, "{name}");
        assert_eq!(
            info["format-specific"]["data"]["create-type"],
            "streamOptimized"
        );
        cids.push(info["format-specific"]["data"]["cid"].clone());
        // The seed ISO: label cidata, and exactly this node's user-data.
        let iso = x.join(&members[2]);
        let pvd = run_text(Command::new("isoinfo").arg("-d").arg("-i").arg(&iso));
        assert!(pvd.contains("Volume id: cidata"), "{pvd}");
        let ud = run_text(
            Command::new("isoinfo")
                .args(["-R", "-x", "/user-data", "-i"])
                .arg(&iso),
        );
        assert_eq!(
            ud,
            fs::read_to_string(out.join(format!("{name}/user-data"))).unwrap(),
            "{name}"
        );
        assert_eq!(
            fs::read(&iso).unwrap(),
            fs::read(out.join(format!("{name}.iso"))).unwrap()
        );
        if v2v {
            let o = Command::new("virt-v2v")
                .env("LIBGUESTFS_BACKEND", "direct")
                .args(["-i", "ova"])
                .arg(&ova)
                .arg("--print-source")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "virt-v2v: {text}");
            for want in [
                format!("source name: {name}"),
                format!("memory: {memory} (bytes)"),
                "nr vCPUs: 2".into(),
                "[ide]".into(),
                "[virtio-net]".into(),
                "CD-ROM [ide]".into(),
            ] {
                assert!(text.contains(&want), "virt-v2v lacks {want:?}:\n{text}");
            }
        }
    }

    // Each OVA's disk has its own CID, shared conversion or not.
    assert!(
        cids[0] != cids[1] && cids[1] != cids[2] && cids[0] != cids[2],
        "{cids:?}"
    );

    // a1 leaves: its OVA goes with its other seeds; a file mesobake did not write stays.
    fs::write(out.join("notes.ova"), "mine").unwrap();
    let fewer = OVA_CLUSTER.replace(
        "[[node]]\nname = \"a1\"\nrole = \"slave-only\"\nip = \"192.168.56.11\"\n",
        "",
    );
    assert_ne!(fewer, OVA_CLUSTER);
    fs::write(&topo, fewer).unwrap();
    let err = seed(
        &topo,
        &out,
        &["--ova", "--images", images.to_str().unwrap()],
    );
    assert!(!out.join("a1.ova").exists(), "{err}");
    assert!(err.contains("a1.ova"), "{err}");
    assert!(out.join("m1.ova").is_file() && out.join("workers.ova").is_file());
    assert_eq!(fs::read_to_string(out.join("notes.ova")).unwrap(), "mine");
    let record = fs::read_to_string(out.join(".mesobake-seed.json")).unwrap();
    assert!(
        record.contains("\"m1.ova\"") && !record.contains("a1.ova"),
        "{record}"
    );
}

#[test]
fn seed_ova_needs_images_and_names_the_build_of_a_missing_role_image() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("cluster.toml");
    fs::write(&topo, OVA_CLUSTER).unwrap();
    let out = dir.path().join("seeds");
    let o = mesobake(&[
        "seed",
        topo.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--ova",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--images"), "{err}");
    assert!(!out.exists(), "a usage error writes nothing");

    // Only the master's image was built.
    let images = dir.path().join("images");
    fs::create_dir_all(&images).unwrap();
    for role in ["master", "slave-only"] {
        run_text(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(images.join(format!("{role}.qcow2")))
                .arg("64M"),
        );
    }
    let mut m: serde_json::Value = serde_json::from_str(&ova_manifest(&images)).unwrap();
    m["images"].as_object_mut().unwrap().remove("slave-only");
    fs::write(images.join("manifest.json"), m.to_string()).unwrap();
    let o = mesobake(&[
        "seed",
        topo.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--ova",
        "--images",
        images.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    for want in [
        "role slave-only",
        images.to_str().unwrap(),
        "mesobake build slave-only",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    assert!(
        !out.exists(),
        "nothing is written before every image is found: {err}"
    );
}
