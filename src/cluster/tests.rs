use super::*;
use std::collections::BTreeSet;

fn profiles() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("profiles")
}

const THREE_PLUS_ONE: &str = r#"
name = "lab"
ssh-keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE3z test@mesobake"]

[network]
cidr = "10.77.0.0/24"
gateway = "10.77.0.1"
dns = ["10.77.0.1"]

[[node]]
name = "m1"
role = "master"
ip = "10.77.0.11"

[[node]]
name = "m2"
role = "master"
ip = "10.77.0.12"

[[node]]
name = "m3"
role = "master"
ip = "10.77.0.13"
zk-id = 1

[[node]]
name = "a1"
role = "slave-only"
ip = "10.77.0.21"
attributes = { rack = "r1" }
resources = { cpus = "2", ports = "[31000-32000]" }
agent-flags = { "?no-switch_user" = "" }

[[group]]
name = "workers"
role = "slave-only"
"#;

fn parse(text: &str) -> Result<Cluster> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cluster.toml");
    std::fs::write(&p, text).unwrap();
    load(&p, &profiles())
}

fn err(text: &str) -> String {
    format!("{:#}", parse(text).unwrap_err())
}

#[test]
fn three_masters_derive_url_servers_quorum_and_hosts() {
    let c = parse(THREE_PLUS_ONE).unwrap();
    assert!(c.warnings.is_empty());
    // Explicit id 1 for m3; the others take the smallest free ids in file order.
    let ids: Vec<_> = c.nodes.iter().map(|n| n.zk_id).collect();
    assert_eq!(ids, [Some(2), Some(3), Some(1), None]);
    let d = c.derive();
    assert_eq!(d.zk_url, "zk://m3:2181,m1:2181,m2:2181/mesos");
    assert_eq!(d.zk_servers, "1=m3 2=m1 3=m2");
    assert_eq!(d.quorum, 2);
    assert_eq!(
        d.hosts,
        "10.77.0.11=m1 10.77.0.12=m2 10.77.0.13=m3 10.77.0.21=a1"
    );

    let m1 = c.node_seed(&d, &c.nodes[0], Target::NoCloud);
    let env = &m1.node_env;
    assert_eq!(env["MESOBAKE_IP"], "10.77.0.11");
    assert_eq!(env["MESOBAKE_HOSTNAME"], "m1");
    assert_eq!(env["MESOBAKE_ZK_ID"], "2");
    assert_eq!(env["MESOBAKE_ZK_SERVERS"], d.zk_servers);
    assert_eq!(env["MESOBAKE_ZK"], d.zk_url);
    assert_eq!(env["MESOBAKE_QUORUM"], "2");
    assert_eq!(env["MESOBAKE_CLUSTER"], "lab");
    let nc = m1.network_config().unwrap();
    assert!(
        nc.contains(&format!("macaddress: \"{}\"", c.nodes[0].mac)),
        "{nc}"
    );
    assert!(nc.contains("addresses: [\"10.77.0.11/24\"]"), "{nc}");
    assert!(nc.contains("gateway4: \"10.77.0.1\""), "{nc}");
    assert!(m1.instance_id.starts_with("lab-m1-"));

    // EC2: same settings, but the address comes from the instance and no network-config.
    let ec2 = c.node_seed(&d, &c.nodes[0], Target::Ec2);
    assert!(!ec2.node_env.contains_key("MESOBAKE_IP"));
    assert!(ec2.network_config().is_none());

    let a1 = c.node_seed(&d, &c.nodes[3], Target::NoCloud);
    assert_eq!(a1.node_env["MESOBAKE_ATTRIBUTES"], "rack:r1");
    assert_eq!(
        a1.node_env["MESOBAKE_RESOURCES"],
        "cpus:2;ports:[31000-32000]"
    );
    assert_eq!(a1.node_env["MESOBAKE_AGENT_FLAGS"], "?no-switch_user");
    assert!(!a1.node_env.contains_key("MESOBAKE_QUORUM"));
    assert!(!a1.node_env.contains_key("MESOBAKE_ZK_ID"));
    assert!(a1.user_data().contains("ssh_authorized_keys:"));
}

#[test]
fn group_seed_has_no_address_or_name_and_lab_instances_share_it() {
    let mut text = THREE_PLUS_ONE.replace("role = \"slave-only\"\n\"#", "");
    text.push_str("lab-count = 2\n");
    let c = parse(&text).unwrap();
    let d = c.derive();
    let g = c.group_seed(&d, &c.groups[0]);
    assert!(g.hostname.is_empty());
    assert!(!g.node_env.contains_key("MESOBAKE_IP"));
    assert!(!g.node_env.contains_key("MESOBAKE_HOSTNAME"));
    assert_eq!(g.node_env["MESOBAKE_ZK"], d.zk_url);
    let lab = c.lab_members().unwrap();
    let w: Vec<_> = lab
        .iter()
        .filter(|m| m.name.starts_with("workers-"))
        .collect();
    assert_eq!(w.len(), 2);
    assert_eq!(w[0].seed.user_data(), w[1].seed.user_data());
    // The group's user-data, plus the lab's management NIC for the firewall to trust.
    let mut lab_env = w[0].seed.node_env.clone();
    let trusted = lab_env.remove("MESOBAKE_TRUSTED_MACS").unwrap();
    assert_eq!(lab_env, g.node_env);
    assert_eq!(w[0].seed.secrets_env, g.secrets_env);
    assert_eq!(w[0].seed.ssh_keys, g.ssh_keys);
    assert!(
        trusted.starts_with("52:54:00:") && trusted.len() == 17,
        "{trusted}"
    );
    assert_eq!(trusted, trusted.to_ascii_lowercase());
    assert!(lab
        .iter()
        .all(|m| m.seed.node_env["MESOBAKE_TRUSTED_MACS"] == trusted));
    assert!(lab.iter().all(|m| m.mac != trusted));
    assert_ne!(w[0].seed.instance_id, w[1].seed.instance_id);
    assert_ne!(w[0].ip, w[1].ip);
    assert_ne!(w[0].mac, w[1].mac);
    assert_eq!(w[0].ip.to_string(), "10.77.0.254");
}

#[test]
fn errors_name_the_line_node_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "name = \"m2\"",
            "name = \"m1\"",
            "cluster.toml:16: node \"m1\" key \"name\": another node already has this name",
        ),
        (
            "ip = \"10.77.0.12\"",
            "ip = \"10.77.0.11\"",
            "cluster.toml:18: node \"m2\" key \"ip\": 10.77.0.11 is already node \"m1\"'s address",
        ),
        (
            "ip = \"10.77.0.12\"",
            "ip = \"10.78.0.12\"",
            "node \"m2\" key \"ip\": 10.78.0.12 is outside the cluster network 10.77.0.0/24",
        ),
        (
            "ip = \"10.77.0.11\"",
            "ip = \"10.77.0.11\"\nzk-id = 1",
            "node \"m3\" key \"zk-id\": ZooKeeper id 1 is already node \"m1\"",
        ),
        (
            "role = \"master\"\nip = \"10.77.0.12\"",
            "role = \"nosuch\"\nip = \"10.77.0.12\"",
            "node \"m2\" key \"role\": no profile",
        ),
        (
            "attributes = { rack = \"r1\" }",
            "attributes = { \"ra ck\" = \"r1\" }",
            "node \"a1\" key \"attributes\": \"ra ck\" is not a valid name",
        ),
        (
            "\"?no-switch_user\" = \"\"",
            "ip = \"1.2.3.4\"",
            "node \"a1\" key \"agent-flags\": \"ip\" is written by the first-boot configurator",
        ),
        (
            "\"?no-switch_user\" = \"\"",
            "\"?no-hostname\" = \"\"",
            "key \"agent-flags\": \"?no-hostname\" is written by the first-boot",
        ),
        (
            "cpus = \"2\"",
            "cpus = \"2;mem:1\"",
            "node \"a1\" key \"resources\": \"cpus\": value",
        ),
        (
            "zk-id = 1",
            "zk-id = 1\nattributes = { a = \"b\" }",
            "node \"m3\" key \"attributes\": role master runs no Mesos agent",
        ),
        (
            "name = \"workers\"\nrole = \"slave-only\"",
            "name = \"workers\"\nrole = \"master\"",
            "group \"workers\" key \"role\": role master runs more than a Mesos agent",
        ),
        (
            "name = \"m3\"",
            "name = \"m_3\"",
            "node \"m_3\" key \"name\"",
        ),
        (
            "dns = [",
            "colour = \"red\"\ndns = [",
            "unknown field `colour`",
        ),
    ];
    for (from, to, want) in cases {
        assert!(THREE_PLUS_ONE.contains(from), "{from}");
        let e = err(&THREE_PLUS_ONE.replacen(from, to, 1));
        assert!(e.contains(want), "want {want:?} in:\n{e}");
    }
}

#[test]
fn no_master_is_an_error_and_even_masters_a_warning() {
    let e = err("name = \"x\"\n[network]\ncidr = \"10.0.0.0/24\"\n[[node]]\nname = \"a\"\nrole = \"slave-only\"\n");
    assert!(e.contains("no node runs a Mesos master"), "{e}");
    let c = parse("name = \"x\"\n[network]\ncidr = \"10.0.0.0/24\"\n[[node]]\nname = \"a\"\nrole = \"master\"\n[[node]]\nname = \"b\"\nrole = \"master\"\n").unwrap();
    assert_eq!(c.derive().quorum, 2);
    assert!(
        c.warnings[0].contains("2 masters: the quorum is a majority, 2"),
        "{:?}",
        c.warnings
    );
}

#[test]
fn dhcp_network_refuses_static_addresses_and_the_lab() {
    let e = err("name = \"x\"\n[network]\ndhcp = true\n[[node]]\nname = \"a\"\nrole = \"master-slave\"\nip = \"10.0.0.5\"\n");
    assert!(
        e.contains("cluster.toml:7: node \"a\" key \"ip\": the network uses DHCP"),
        "{e}"
    );
    let c = parse(
        "name = \"x\"\n[network]\ndhcp = true\n[[node]]\nname = \"a\"\nrole = \"master-slave\"\n",
    )
    .unwrap();
    let d = c.derive();
    assert_eq!(d.zk_url, "zk://a:2181/mesos");
    assert!(c
        .node_seed(&d, &c.nodes[0], Target::NoCloud)
        .network_config()
        .is_none());
    assert!(format!("{:#}", c.lab_members().unwrap_err()).contains("static cluster network"));
}

#[test]
fn derived_macs_are_stable_and_distinct() {
    assert_eq!(derived_mac("lab", "m1"), derived_mac("lab", "m1"));
    assert_ne!(derived_mac("lab", "m1"), derived_mac("lab", "m2"));
    assert!(derived_mac("lab", "m1").starts_with("52:54:00:"));
}

/// A cluster with `n` ZooKeeper members on a /16 (room for them all), none with an id.
fn zk_members(n: usize) -> String {
    let mut s = String::from(
        "name = \"big\"\n[network]\ncidr = \"10.9.0.0/16\"\n\n[[node]]\nname = \"m0\"\nrole = \"master\"\nip = \"10.9.0.2\"\n",
    );
    for i in 1..n {
        s += &format!(
            "\n[[node]]\nname = \"z{i}\"\nrole = \"master\"\nip = \"10.9.{}.{}\"\n",
            (i + 3) / 250,
            (i + 3) % 250 + 2
        );
    }
    s
}

#[test]
fn automatic_zookeeper_ids_stop_at_255_with_file_line_node_and_key() {
    let c = parse(&zk_members(255)).unwrap();
    let ids: BTreeSet<u8> = c.nodes.iter().filter_map(|n| n.zk_id).collect();
    assert_eq!(ids.len(), 255);
    assert!(!ids.contains(&0));
    for n in [256, 257] {
        let e = err(&zk_members(n));
        assert!(e.contains("cluster.toml:"), "{e}");
        assert!(e.contains("node \"z255\""), "{e}");
        assert!(e.contains("zk-id"), "{e}");
        assert!(e.contains("1 to 255"), "{e}");
    }
    // An explicit id taking the last free one leaves none for the next member.
    let mut t = zk_members(255);
    t += "\n[[node]]\nname = \"last\"\nrole = \"master\"\nip = \"10.9.9.9\"\nzk-id = 7\n";
    let e = err(&t);
    assert!(e.contains("node \"z254\"") && e.contains("zk-id"), "{e}");
}

#[test]
fn every_cidr_prefix_length_is_handled() {
    for len in 0..=32u32 {
        let t = format!(
            "name = \"c\"\n[network]\ncidr = \"0.0.0.0/{len}\"\n\n[[node]]\nname = \"m1\"\nrole = \"master\"\n"
        );
        let c = parse(&t).unwrap();
        assert!(c.network.contains(Ipv4Addr::new(0, 0, 0, 0)));
        assert_eq!(c.network.contains(Ipv4Addr::new(255, 0, 0, 0)), len == 0);
        let lab = c.lab_members();
        if len <= 30 {
            let m = lab.unwrap();
            assert_eq!(m.len(), 1);
        } else {
            assert!(lab.is_err(), "/{len} has no free host address");
        }
    }
    let e = err("name = \"c\"\n[network]\ncidr = \"10.0.0.0/33\"\n[[node]]\nname = \"m1\"\nrole = \"master\"\n");
    assert!(e.contains("cidr"), "{e}");
}

#[test]
fn only_regular_cluster_files_of_bounded_size_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    let mut text = THREE_PLUS_ONE.to_string();
    while text.len() <= crate::profile::MAX_CONFIG_BYTES as usize {
        text += "# padding padding padding padding padding padding padding padding\n";
    }
    std::fs::write(&big, text).unwrap();
    let e = format!("{:#}", load(&big, &profiles()).unwrap_err());
    assert!(e.contains("larger than"), "{e}");
    let e = format!(
        "{:#}",
        load(Path::new("/dev/zero"), &profiles()).unwrap_err()
    );
    assert!(e.contains("not a regular file"), "{e}");
    let fifo = dir.path().join("fifo.toml");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let e = format!("{:#}", load(&fifo, &profiles()).unwrap_err());
    assert!(e.contains("not a regular file"), "{e}");
}

#[test]
fn lab_count_is_bounded() {
    let base = "name = \"c\"\n[network]\ncidr = \"10.0.0.0/8\"\n[[node]]\nname = \"m1\"\nrole = \"master\"\n[[group]]\nname = \"w\"\nrole = \"slave-only\"\n";
    assert!(parse(&format!("{base}lab-count = {MAX_LAB_COUNT}\n")).is_ok());
    for n in [0, MAX_LAB_COUNT + 1, u32::MAX] {
        let e = err(&format!("{base}lab-count = {n}\n"));
        assert!(e.contains("group \"w\"") && e.contains("lab-count"), "{e}");
    }
}

#[test]
fn auth_is_on_by_default_and_lab_seeds_carry_each_role_its_secrets() {
    let mut c = parse(THREE_PLUS_ONE).unwrap();
    assert!(c.auth, "authentication is the default");
    assert!(
        !parse(&format!("{THREE_PLUS_ONE}\n[security]\nauth = false\n"))
            .unwrap()
            .auth
    );
    // Without secrets (auth off, or before `seed`/`lab` loaded them): no entry.
    let lab = c.lab_members().unwrap();
    assert!(lab.iter().all(|m| !m.seed.has_secrets()));
    let s = crate::seed::secrets::Secrets::generate().unwrap();
    c.secrets = Some(s.clone());
    let lab = c.lab_members().unwrap();
    for m in &lab {
        let env = &m.seed.secrets_env;
        assert_eq!(env["MESOBAKE_AGENT_SECRET"], s.agent.secret, "{}", m.name);
        assert_eq!(env["MESOBAKE_OPERATOR_SECRET"], s.operator.secret);
        assert_eq!(env["MESOBAKE_ZK_PRINCIPAL"], "mesobake");
        assert_eq!(env["MESOBAKE_ZK_SECRET"], s.zookeeper.secret);
        let master = m.role == "master";
        assert_eq!(
            env.contains_key("MESOBAKE_MARATHON_SECRET"),
            master,
            "{}",
            m.name
        );
        for c in s.all() {
            assert!(!m.seed.node_env_text().contains(&c.secret));
        }
        assert!(m.seed.user_data().contains("/etc/mesobake/secrets.env"));
    }
    // The same code makes `mesobake seed`'s seeds: the same secrets.env.
    let d = c.derive();
    assert_eq!(
        c.node_seed(&d, &c.nodes[0], Target::Ec2).secrets_env,
        lab[0].seed.secrets_env
    );
}

#[test]
fn firewall_networks_are_the_cidr_and_allow_in_network_form() {
    let c = parse(THREE_PLUS_ONE).unwrap();
    assert!(c.firewall, "the firewall is the default");
    let d = c.derive();
    let env = c.node_seed(&d, &c.nodes[0], Target::NoCloud).node_env;
    assert_eq!(env["MESOBAKE_CLUSTER_NETWORKS"], "10.77.0.0/24");
    assert!(!env.contains_key("MESOBAKE_FIREWALL"));
    assert!(
        !env.contains_key("MESOBAKE_TRUSTED_MACS"),
        "only the lab trusts a NIC"
    );

    let text = format!(
        "{THREE_PLUS_ONE}\n[security]\nallow = [\"192.168.9.0/24\", \"10.77.0.0/24\", \"192.168.9.0/24\", \"172.16.0.0/12\", \"172.16.4.0/24\"]\n"
    );
    let c = parse(&text).unwrap();
    let d = c.derive();
    let want = "10.77.0.0/24 192.168.9.0/24 172.16.0.0/12";
    for seed in [
        c.node_seed(&d, &c.nodes[0], Target::NoCloud),
        c.node_seed(&d, &c.nodes[3], Target::Ec2),
        c.group_seed(&d, &c.groups[0]),
    ] {
        assert_eq!(seed.node_env["MESOBAKE_CLUSTER_NETWORKS"], want);
        assert!(seed
            .node_env_text()
            .contains(&format!("MESOBAKE_CLUSTER_NETWORKS='{want}'\n")));
    }
    // A wider allowed network holds the cluster's: the list stays disjoint.
    let c = parse(&format!(
        "{THREE_PLUS_ONE}\n[security]\nallow = [\"10.0.0.0/8\"]\n"
    ))
    .unwrap();
    assert_eq!(c.cluster_networks().unwrap(), "10.0.0.0/8");
    // A cidr written with host bits is given in network form.
    let c = parse(&THREE_PLUS_ONE.replace("cidr = \"10.77.0.0/24\"", "cidr = \"10.77.0.1/24\""))
        .unwrap();
    assert_eq!(c.cluster_networks().unwrap(), "10.77.0.0/24");
}

#[test]
fn firewall_off_and_dhcp_networks() {
    let c = parse(&format!(
        "{THREE_PLUS_ONE}\n[security]\nfirewall = false\nallow = [\"192.168.9.0/24\"]\n"
    ))
    .unwrap();
    assert!(!c.firewall);
    assert!(
        c.warnings.iter().any(|w| w.contains("firewall = false")
            && w.contains("every address")
            && w.contains("allow has no effect")),
        "{:?}",
        c.warnings
    );
    let d = c.derive();
    for seed in [
        c.node_seed(&d, &c.nodes[0], Target::NoCloud),
        c.group_seed(&d, &c.groups[0]),
    ] {
        assert_eq!(seed.node_env["MESOBAKE_FIREWALL"], "off");
        assert!(!seed.node_env.contains_key("MESOBAKE_CLUSTER_NETWORKS"));
    }
    // DHCP without allow: no key (the configurator admits the node's own subnets).
    let dhcp =
        "name = \"x\"\n[network]\ndhcp = true\n[[node]]\nname = \"a\"\nrole = \"master-slave\"\n";
    let c = parse(dhcp).unwrap();
    assert!(c.warnings.is_empty());
    let d = c.derive();
    let env = c.node_seed(&d, &c.nodes[0], Target::Ec2).node_env;
    assert!(!env.contains_key("MESOBAKE_CLUSTER_NETWORKS"), "{env:?}");
    assert!(!env.contains_key("MESOBAKE_FIREWALL"));
    // DHCP with allow: exactly those.
    let c = parse(&format!(
        "{dhcp}[security]\nallow = [\"172.31.0.0/16\", \"192.168.9.0/24\"]\n"
    ))
    .unwrap();
    let d = c.derive();
    assert_eq!(
        c.node_seed(&d, &c.nodes[0], Target::Ec2).node_env["MESOBAKE_CLUSTER_NETWORKS"],
        "172.31.0.0/16 192.168.9.0/24"
    );
}

#[test]
fn bad_allow_entries_name_file_line_and_key() {
    for (entry, want) in [
        (
            "192.168.9.1/24",
            "has host bits set: the network is \"192.168.9.0/24\"",
        ),
        (
            "192.168.9.7",
            "is not an IPv4 CIDR like 192.168.9.0/24 (one address is 192.168.9.7/32)",
        ),
        ("192.168.9.0/33", "is not an IPv4 CIDR"),
        ("192.168.9.0/+24", "is not an IPv4 CIDR"),
        ("example.com/24", "is not an IPv4 CIDR"),
        ("0.0.0.0/0", "admits every address"),
    ] {
        let text = format!(
            "{THREE_PLUS_ONE}\n[security]\nallow = [\n  \"10.1.0.0/16\",\n  \"{entry}\",\n]\n"
        );
        let line = text.lines().position(|l| l.contains(entry)).unwrap() + 1;
        let e = err(&text);
        assert!(
            e.contains(&format!(
                "cluster.toml:{line}: [security] key \"allow\": \"{entry}\" {want}"
            )),
            "{entry}: {e}"
        );
    }
    let e = err(&format!(
        "{THREE_PLUS_ONE}\n[security]\nallow = \"10.0.0.0/8\"\n"
    ));
    assert!(e.contains("allow"), "{e}");
    let e = err(&format!("{THREE_PLUS_ONE}\n[security]\nfirewal = false\n"));
    assert!(e.contains("firewal"), "{e}");
}

#[test]
fn lab_trusts_its_management_nic_only_with_the_firewall_on() {
    let c = parse(THREE_PLUS_ONE).unwrap();
    assert!(c
        .lab_members()
        .unwrap()
        .iter()
        .all(|m| m.seed.node_env.contains_key("MESOBAKE_TRUSTED_MACS")));
    let c = parse(&format!("{THREE_PLUS_ONE}\n[security]\nfirewall = false\n")).unwrap();
    assert!(c
        .lab_members()
        .unwrap()
        .iter()
        .all(|m| !m.seed.node_env.contains_key("MESOBAKE_TRUSTED_MACS")));
    // `seed` never writes it: it is the lab's own NIC.
    let d = c.derive();
    assert!(!c
        .group_seed(&d, &c.groups[0])
        .node_env
        .contains_key("MESOBAKE_TRUSTED_MACS"));
    // A node whose cluster NIC would have the management NIC's MAC is refused.
    let mgmt = parse(THREE_PLUS_ONE).unwrap().lab_members().unwrap()[0]
        .seed
        .node_env["MESOBAKE_TRUSTED_MACS"]
        .clone();
    let text = THREE_PLUS_ONE.replace(
        "ip = \"10.77.0.21\"",
        &format!("ip = \"10.77.0.21\"\nmac = \"{mgmt}\""),
    );
    let e = format!("{:#}", parse(&text).unwrap().lab_members().unwrap_err());
    assert!(
        e.contains("a1's MAC") && e.contains("management NIC"),
        "{e}"
    );
}

/// A one-master cluster on `cidr` with `extra` [network] lines and the master at `ip`.
fn on_network(cidr: &str, extra: &str, ip: &str) -> String {
    format!("name = \"n\"\n[network]\ncidr = \"{cidr}\"\n{extra}\n[[node]]\nname = \"m1\"\nrole = \"master\"\nip = \"{ip}\"\n")
}

#[test]
fn network_and_broadcast_addresses_are_no_node_addresses() {
    // Lines: 3 cidr, 4 gateway, 8 ip.
    let gw = "gateway = \"10.0.0.1\"";
    for (ip, what) in [("10.0.0.0", "network"), ("10.0.0.255", "broadcast")] {
        let e = err(&on_network("10.0.0.0/24", gw, ip));
        assert!(
            e.contains(&format!(
                "cluster.toml:8: node \"m1\" key \"ip\": {ip} is the {what} address of 10.0.0.0/24"
            )),
            "{e}"
        );
    }
    // The first and last hosts are fine, and so is every address of a /31 and a /32.
    for (cidr, ip) in [
        ("10.0.0.0/24", "10.0.0.254"),
        ("10.0.0.0/24", "10.0.0.2"),
        ("10.0.0.0/31", "10.0.0.0"),
        ("10.0.0.0/31", "10.0.0.1"),
        ("10.0.0.7/32", "10.0.0.7"),
    ] {
        assert!(parse(&on_network(cidr, "", ip)).is_ok(), "{cidr} {ip}");
    }
    // /30: two hosts between the network and the broadcast address.
    assert!(err(&on_network("10.0.0.4/30", "", "10.0.0.7")).contains("broadcast address"));
    assert!(parse(&on_network("10.0.0.4/30", "", "10.0.0.6")).is_ok());
    // The gateway too.
    let e = err(&on_network(
        "10.0.0.0/24",
        "gateway = \"10.0.0.255\"",
        "10.0.0.5",
    ));
    assert!(
        e.contains("cluster.toml:4: [network] key \"gateway\": 10.0.0.255 is the broadcast address of 10.0.0.0/24"),
        "{e}"
    );
}

#[test]
fn a_cidr_with_host_bits_is_a_warning_that_names_the_network() {
    let c = parse(&on_network(
        "10.0.0.5/24",
        "gateway = \"10.0.0.1\"",
        "10.0.0.11",
    ))
    .unwrap();
    assert_eq!(
        c.warnings,
        [format!(
            "{}:3: [network] key \"cidr\": \"10.0.0.5/24\" has host bits set: the network is 10.0.0.0/24 (write cidr = \"10.0.0.0/24\")",
            c.path.display()
        )]
    );
    // The network form is used everywhere it matters.
    assert_eq!(c.cluster_networks().as_deref(), Some("10.0.0.0/24"));
    let e = err(&on_network("10.0.0.5/24", "", "10.0.0.0"));
    assert!(
        e.contains("10.0.0.0 is the network address of 10.0.0.0/24"),
        "{e}"
    );
    assert!(parse(&on_network(
        "10.0.0.0/24",
        "gateway = \"10.0.0.1\"",
        "10.0.0.11"
    ))
    .unwrap()
    .warnings
    .is_empty());
}

#[test]
fn a_gateway_outside_the_cidr_is_refused() {
    let e = err(&on_network(
        "10.0.0.0/24",
        "gateway = \"10.0.1.1\"",
        "10.0.0.11",
    ));
    assert!(
        e.contains("cluster.toml:4: [network] key \"gateway\": 10.0.1.1 is outside the cluster network 10.0.0.0/24"),
        "{e}"
    );
    let e = err("name = \"n\"\n[network]\ndhcp = true\ngateway = \"10.0.0.1\"\n[[node]]\nname = \"m1\"\nrole = \"master\"\n");
    assert!(
        e.contains("cluster.toml:4: [network] key \"gateway\": a gateway needs a static network"),
        "{e}"
    );
}

#[test]
fn static_nodes_without_a_gateway_are_a_warning() {
    let c = parse(&on_network("10.0.0.0/24", "", "10.0.0.11")).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = &c.warnings[0];
    assert!(
        w.contains("cluster.toml:3: [network] key \"gateway\": none given, so node \"m1\" (static addresses) get no default route")
            && w.contains("outside 10.0.0.0/24 (no apt"),
        "{w}"
    );
    // Only DHCP nodes: their route comes from DHCP. A DHCP network: nothing to say.
    let dhcp_node = "name = \"n\"\n[network]\ncidr = \"10.0.0.0/24\"\n[[node]]\nname = \"m1\"\nrole = \"master\"\n";
    assert!(parse(dhcp_node).unwrap().warnings.is_empty());
    assert!(parse(
        "name = \"n\"\n[network]\ndhcp = true\n[[node]]\nname = \"m1\"\nrole = \"master\"\n"
    )
    .unwrap()
    .warnings
    .is_empty());
    // Many static nodes: a few are named, the rest counted.
    let c = parse(&zk_members(7)).unwrap();
    let w = c.warnings.iter().find(|w| w.contains("gateway")).unwrap();
    assert!(
        w.contains("nodes \"m0\", \"z1\", \"z2\" and 4 more (static addresses)"),
        "{w}"
    );
}

/// Loads `text` as dir/cluster.toml with `files` beside it (the dir lives as long as the
/// returned guard).
fn parse_with(text: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Cluster>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let p = dir.path().join("cluster.toml");
    std::fs::write(&p, text).unwrap();
    let c = load(&p, &profiles());
    (dir, c)
}

/// THREE_PLUS_ONE with cloud-configs: cluster-wide (line 3), for m1 (line 15) and for
/// the group (line 38).
fn with_cloud_configs() -> String {
    THREE_PLUS_ONE
        .replacen("ssh-keys", "cloud-config = [\"cc/site.yaml\"]\nssh-keys", 1)
        .replacen(
            "ip = \"10.77.0.11\"",
            "ip = \"10.77.0.11\"\ncloud-config = [\"cc/m1.yaml\"]",
            1,
        )
        .replacen(
            "name = \"workers\"",
            "name = \"workers\"\ncloud-config = [\"cc/workers.yaml\"]",
            1,
        )
}

const SITE: &str = "#cloud-config\ntimezone: UTC\nruncmd:\n  - echo site\n";

#[test]
fn user_cloud_configs_follow_mesobakes_part_cluster_wide_first() {
    let (_d, c) = parse_with(
        &with_cloud_configs(),
        &[
            ("cc/site.yaml", SITE),
            ("cc/m1.yaml", "#cloud-config\nruncmd: [echo m1]\n"),
            ("cc/workers.yaml", "#cloud-config\npackages: [jq]\n"),
        ],
    );
    let c = c.unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let d = c.derive();
    let m1 = c.node_seed(&d, &c.nodes[0], Target::NoCloud);
    let names: Vec<&str> = m1.user_parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["cc/site.yaml", "cc/m1.yaml"]);
    let ud = m1.user_data();
    assert!(ud.starts_with("Content-Type: multipart/mixed;"), "{ud}");
    let at = |s: &str| ud.find(s).unwrap_or_else(|| panic!("{s}: {ud}"));
    assert!(at("path: /etc/mesobake/node.env") < at("echo site"));
    assert!(at("echo site") < at("echo m1"));
    // EC2 user-data too; m2 gets the cluster-wide part only; the group its own.
    assert_eq!(
        c.node_seed(&d, &c.nodes[0], Target::Ec2).user_parts.len(),
        2
    );
    assert_eq!(
        c.node_seed(&d, &c.nodes[1], Target::NoCloud)
            .user_parts
            .len(),
        1
    );
    let g = c.group_seed(&d, &c.groups[0]);
    assert!(g.user_data().contains("packages: [jq]"));
    assert!(!g.user_data().contains("echo m1"));
    // The lab boots the same user-data.
    let lab = c.lab_members().unwrap();
    assert!(lab[0].seed.user_data().contains("echo m1"));
    // A change in a user file is a new instance to cloud-init.
    let (_d2, c2) = parse_with(
        &with_cloud_configs(),
        &[
            ("cc/site.yaml", SITE),
            ("cc/m1.yaml", "#cloud-config\nruncmd: [echo m1 again]\n"),
            ("cc/workers.yaml", "#cloud-config\npackages: [jq]\n"),
        ],
    );
    let c2 = c2.unwrap();
    assert_ne!(
        c2.node_seed(&c2.derive(), &c2.nodes[0], Target::NoCloud)
            .instance_id,
        m1.instance_id
    );
    // Without user cloud-configs the user-data stays a plain cloud-config.
    let plain = parse(THREE_PLUS_ONE).unwrap();
    assert!(plain
        .node_seed(&plain.derive(), &plain.nodes[0], Target::NoCloud)
        .user_data()
        .starts_with("#cloud-config\n"));
}

#[test]
fn user_cloud_config_problems_name_both_files_and_lines() {
    let ok = [
        ("cc/site.yaml", SITE),
        ("cc/m1.yaml", "#cloud-config\nruncmd: [echo m1]\n"),
        ("cc/workers.yaml", "#cloud-config\npackages: [jq]\n"),
    ];
    let run = |replace: (&str, &str)| {
        let files: Vec<(&str, &str)> = ok
            .iter()
            .map(|(n, b)| {
                if *n == replace.0 {
                    (*n, replace.1)
                } else {
                    (*n, *b)
                }
            })
            .collect();
        let (d, c) = parse_with(&with_cloud_configs(), &files);
        let e = format!("{:#}", c.unwrap_err());
        (d.path().to_path_buf(), e)
    };
    let (dir, e) = run(("cc/m1.yaml", "#cloud-config\nruncmd:\n  - ls\n  bad: [\n"));
    assert!(
        e.contains(&format!(
            "cluster.toml:15: node \"m1\" key \"cloud-config\": {}:",
            dir.join("cc/m1.yaml").display()
        )) && e.contains("not valid YAML"),
        "{e}"
    );
    let (_, e) = run(("cc/site.yaml", "runcmd: [ls]\n"));
    assert!(
        e.contains("cluster.toml:3: key \"cloud-config\": ")
            && e.contains("site.yaml:1: must begin with a \"#cloud-config\" line"),
        "{e}"
    );
    let (_, e) = run((
        "cc/workers.yaml",
        "#cloud-config\nwrite_files:\n  - path: /etc/mesobake/node.env\n",
    ));
    assert!(
        e.contains("group \"workers\" key \"cloud-config\": ")
            && e.contains("workers.yaml:3: write_files path /etc/mesobake/node.env"),
        "{e}"
    );
    // A missing file, a directory, and one given twice.
    let (_d, c) = parse_with(&with_cloud_configs(), &ok[..2]);
    let e = format!("{:#}", c.unwrap_err());
    assert!(
        e.contains("group \"workers\" key \"cloud-config\": reading cloud-config file"),
        "{e}"
    );
    let (_d, c) = parse_with(&with_cloud_configs().replace("cc/m1.yaml", "cc"), &ok);
    assert!(format!("{:#}", c.unwrap_err()).contains("not a regular file"));
    let (_d, c) = parse_with(
        &with_cloud_configs().replace("cc/m1.yaml", "./cc/site.yaml"),
        &ok,
    );
    let e = format!("{:#}", c.unwrap_err());
    assert!(
        e.contains("cluster.toml:15: node \"m1\" key \"cloud-config\": ")
            && e.contains("is already given (as \"cc/site.yaml\", cluster-wide)"),
        "{e}"
    );
    let (_d, c) = parse_with(
        &THREE_PLUS_ONE.replacen("ssh-keys", "cloud-config = \"cc/site.yaml\"\nssh-keys", 1),
        &ok,
    );
    assert!(format!("{:#}", c.unwrap_err()).contains("cloud-config"));
}

#[test]
fn a_scalar_set_twice_keeps_the_first_value_with_a_warning() {
    let (d, c) = parse_with(
        &with_cloud_configs(),
        &[
            ("cc/site.yaml", SITE),
            (
                "cc/m1.yaml",
                "#cloud-config\nruncmd: [echo m1]\ntimezone: Europe/Paris\n",
            ),
            ("cc/workers.yaml", "#cloud-config\ntimezone: UTC\n"),
        ],
    );
    let c = c.unwrap();
    // Only m1's differs from the cluster-wide value; the group's is the same.
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert_eq!(
        c.warnings[0],
        format!(
            "{}:15: node \"m1\" key \"cloud-config\": {}:3: \"timezone\" is already set by {}:2, whose value stays (\"UTC\"): cloud-init merges the parts with dict(no_replace), so the first value wins",
            c.path.display(),
            d.path().join("cc/m1.yaml").display(),
            d.path().join("cc/site.yaml").display()
        )
    );
}
