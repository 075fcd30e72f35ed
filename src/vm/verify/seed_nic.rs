//! The NIC a seed's network-config names, so that `mesobake verify IMAGE --seed ISO|DIR`
//! boots a node's own seed (from `mesobake seed`, or the one inside a node's OVA) with
//! the NIC that seed configures.
//!
//! A node's network-config (version 2) finds the node's cluster NIC by its MAC
//! (`match: macaddress:`). Booted with QEMU's default MAC, cloud-init would leave that
//! NIC unconfigured, so verify gives its one NIC, on QEMU's user network, the MAC the
//! seed names. That network is QEMU's own: 10.0.2.0/24, with the host's side at
//! 10.0.2.2 (the guests' gateway, and where the host's forwarded connections come
//! from), a name server at 10.0.2.3, and DHCP handing out 10.0.2.15 first. So a static
//! address must lie on it: 10.0.2.15, where `hostfwd` sends the forwarded ports by
//! default, or another free 10.0.2.x, which the forwards are then sent to (`hostfwd`'s
//! guest address, as the lab does for its nodes' cluster addresses). Anything else is
//! refused before the boot, with how to seed a node that verify can reach.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use yaml_rust2::{Yaml, YamlLoader};

use crate::cluster::{parse_cidr, valid_mac, Network};
use crate::run::Cmd;

/// QEMU's user network.
const SLIRP_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 0, 2, 0), 24);
/// The host's side of it: the guests' gateway, where forwarded connections come from.
const SLIRP_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// QEMU's name server on it.
const SLIRP_DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The first address QEMU's DHCP server gives, where `hostfwd` goes unless told otherwise.
const SLIRP_GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

/// How to seed a node so that verify can boot it.
const FIX: &str = "to verify a node, seed it from a topology whose [network] has \
     cidr = \"10.0.2.0/24\" and gateway = \"10.0.2.2\" with the node at ip = \"10.0.2.15\", \
     or dhcp = true";

/// The NIC a seed names, as verify boots it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedNic {
    /// The network-config's id for it (`cluster0` in mesobake's seeds).
    pub id: String,
    /// Its MAC, lower-cased: the VM's NIC gets it.
    pub mac: String,
    /// The static `address/prefix` it gets; None: DHCP.
    pub address: Option<String>,
    /// Where the forwarded ports go, when not to 10.0.2.15 (a static 10.0.2.x).
    pub forward_to: Option<String>,
}

impl SeedNic {
    /// The NIC as the boot line names it.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "NIC {} (the seed's network-config: {}, {})",
            self.mac,
            self.id,
            self.address.as_deref().unwrap_or("DHCP")
        );
        if let Some(to) = &self.forward_to {
            s += &format!(", ports forwarded to {to}");
        }
        s
    }
}

/// The NIC that the network-config of `seed` (a NoCloud ISO, or a directory with
/// user-data and meta-data) matches by MAC; None when the seed has no network-config or
/// it names no NIC by MAC. An ISO is read with genisoimage's `isoinfo`; one it cannot read
/// (not ISO 9660: a vfat seed, say) boots as before, with a warning.
pub fn from_seed(seed: &Path) -> Result<Option<SeedNic>> {
    let text = if seed.is_dir() {
        let p = seed.join("network-config");
        if !p.is_file() {
            return Ok(None);
        }
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?
    } else if seed.is_file() {
        match iso_network_config(seed) {
            Ok(t) => t,
            Err(e) => {
                eprintln!(
                    "mesobake: warning: {}: no network-config could be read from it ({e:#}); \
                     the VM's NIC keeps QEMU's default MAC",
                    seed.display()
                );
                return Ok(None);
            }
        }
    } else {
        bail!(
            "{}: no such seed (give a NoCloud ISO, or a directory with user-data and meta-data)",
            seed.display()
        );
    };
    nic_in(&text, seed)
}

/// The `/network-config` of a NoCloud ISO, empty when it has none: by its Rock Ridge
/// name (genisoimage -rock, as `mesobake seed` and cloud-localds write them), else by
/// its Joliet name. Fails when the file is no ISO 9660 image.
fn iso_network_config(iso: &Path) -> Result<String> {
    let read = |names: &str| {
        Cmd::new("isoinfo")
            .arg("-i")
            .arg(iso)
            .args([names, "-x", "/network-config"])
            .read()
    };
    let text = read("-R")?;
    if !text.is_empty() {
        return Ok(text);
    }
    // An ISO without Joliet names makes isoinfo -J fail: then there is no such file.
    Ok(read("-J").unwrap_or_default())
}

/// A YAML key or scalar as text.
fn yaml_text(y: &Yaml) -> String {
    match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// The one NIC the network-config `text` matches by MAC, checked against QEMU's user
/// network; `seed` names the seed in errors. None: no NIC is matched by MAC.
pub fn nic_in(text: &str, seed: &Path) -> Result<Option<SeedNic>> {
    let docs = YamlLoader::load_from_str(text)
        .map_err(|e| anyhow!("{}: its network-config is not YAML: {e}", seed.display()))?;
    let Some(doc) = docs.into_iter().next() else {
        return Ok(None);
    };
    // cloud-init also takes the document under a top-level `network:` key.
    let doc = match &doc["network"] {
        Yaml::Hash(_) => doc["network"].clone(),
        _ => doc,
    };
    let Yaml::Hash(ethernets) = &doc["ethernets"] else {
        return Ok(None);
    };
    let matched: Vec<(String, String, &Yaml)> = ethernets
        .iter()
        .filter_map(|(id, body)| {
            let mac = body["match"]["macaddress"].as_str()?;
            Some((yaml_text(id), mac.to_ascii_lowercase(), body))
        })
        .collect();
    let (id, mac, body) = match matched.as_slice() {
        [] => return Ok(None),
        [one] => one,
        more => bail!(
            "{}: its network-config matches {} NICs by MAC ({}); verify boots one NIC and \
             cannot tell which is the node's: give it a seed with one (a node's seed from \
             `mesobake seed`, not a lab's)",
            seed.display(),
            more.len(),
            more.iter()
                .map(|(id, mac, _)| format!("{id} {mac}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if !valid_mac(mac) {
        bail!(
            "{}: its network-config matches NIC {id} by {mac:?}, not a MAC address like \
             52:54:00:12:34:56",
            seed.display()
        );
    }
    let nic = format!("{id} (MAC {mac})");
    let (address, forward_to) =
        reach(body, &nic).map_err(|e| anyhow!("{}: {e}", seed.display()))?;
    Ok(Some(SeedNic {
        id: id.clone(),
        mac: mac.clone(),
        address,
        forward_to,
    }))
}

/// The IPv4 `address/prefix` entries of a v2 ethernet (strings, or netplan's mappings
/// from an address to its options).
fn ipv4_addresses(body: &Yaml) -> Vec<String> {
    let Some(list) = body["addresses"].as_vec() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|a| match a {
            Yaml::String(s) => Some(s.clone()),
            Yaml::Hash(h) => h.keys().next().and_then(|k| k.as_str()).map(String::from),
            _ => None,
        })
        .filter(|a| !a.contains(':'))
        .collect()
}

/// Whether a v2 boolean (`dhcp4`) is on.
fn truthy(y: &Yaml) -> bool {
    match y {
        Yaml::Boolean(b) => *b,
        Yaml::String(s) => ["true", "yes", "on"].contains(&s.to_ascii_lowercase().as_str()),
        _ => false,
    }
}

/// How verify's forwards reach NIC `nic` (described so) with the settings `body`: its
/// static address (None: DHCP) and, when that is not 10.0.2.15, the address the forwards
/// go to. An error says why QEMU's user network cannot reach the node.
fn reach(body: &Yaml, nic: &str) -> Result<(Option<String>, Option<String>)> {
    let statics = ipv4_addresses(body);
    if statics.is_empty() {
        if truthy(&body["dhcp4"]) {
            return Ok((None, None));
        }
        bail!("its network-config gives NIC {nic} no IPv4 address (no addresses, no dhcp4: true), so nothing could reach the node; {FIX}");
    }
    let mut parsed = Vec::new();
    for a in &statics {
        let Some(p) = parse_cidr(a) else {
            bail!("its network-config gives NIC {nic} the address {a:?}, not an address/prefix like 10.0.2.15/24");
        };
        parsed.push(p);
    }
    let slirp = Network {
        cidr: Some(SLIRP_NET),
        gateway: Some(SLIRP_HOST),
        dns: vec![SLIRP_DNS],
    };
    let Some(&(ip, len)) = parsed.iter().find(|(ip, _)| slirp.contains(*ip)) else {
        bail!(
            "its network-config gives NIC {nic} the static address {}, which is not on QEMU's \
             user network 10.0.2.0/24 that verify boots it on (guest 10.0.2.15, gateway \
             10.0.2.2), so the host could not reach the node; {FIX}",
            statics.join(", ")
        );
    };
    let what = match ip {
        SLIRP_HOST => Some("the host's side (the gateway)".to_string()),
        SLIRP_DNS => Some("the name server".to_string()),
        _ => slirp.reserved(ip).map(|w| format!("the {w} address")),
    };
    if let Some(what) = what {
        bail!("its network-config gives NIC {nic} the address {ip}/{len}, which on QEMU's user network 10.0.2.0/24 is {what}, not a guest's; {FIX}");
    }
    let own = Network {
        cidr: Some((ip, len)),
        gateway: None,
        dns: Vec::new(),
    };
    if !own.contains(SLIRP_HOST) {
        bail!("its network-config gives NIC {nic} the address {ip}/{len}, whose network leaves out 10.0.2.2, where the host's connections come from, so the node could not answer them; {FIX}");
    }
    Ok((
        Some(format!("{ip}/{len}")),
        (ip != SLIRP_GUEST).then(|| ip.to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A network-config as `mesobake seed` writes one, for one NIC.
    fn one_nic(settings: &str) -> String {
        format!(
            "version: 2\nethernets:\n  cluster0:\n    match:\n      macaddress: \"52:54:00:AB:cd:01\"\n{settings}"
        )
    }

    /// `text` as the network-config of a seed directory, read as verify reads it.
    fn read_dir_seed(text: Option<&str>) -> Result<Option<SeedNic>> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("user-data"), "#cloud-config\n").unwrap();
        std::fs::write(dir.path().join("meta-data"), "instance-id: i-1\n").unwrap();
        if let Some(t) = text {
            std::fs::write(dir.path().join("network-config"), t).unwrap();
        }
        from_seed(dir.path())
    }

    #[test]
    fn a_nodes_static_address_on_qemus_network_boots_with_its_mac() {
        let nic = read_dir_seed(Some(&one_nic(
            "    dhcp4: false\n    addresses: [\"10.0.2.15/24\"]\n    gateway4: \"10.0.2.2\"\n",
        )))
        .unwrap()
        .unwrap();
        assert_eq!(
            nic,
            SeedNic {
                id: "cluster0".into(),
                mac: "52:54:00:ab:cd:01".into(),
                address: Some("10.0.2.15/24".into()),
                forward_to: None,
            }
        );
        assert_eq!(
            nic.describe(),
            "NIC 52:54:00:ab:cd:01 (the seed's network-config: cluster0, 10.0.2.15/24)"
        );
    }

    #[test]
    fn dhcp_boots_with_the_mac() {
        let nic = read_dir_seed(Some(&one_nic("    dhcp4: true\n")))
            .unwrap()
            .unwrap();
        assert_eq!(nic.mac, "52:54:00:ab:cd:01");
        assert_eq!((nic.address, nic.forward_to), (None, None));
        // Under a top-level `network:` key, as cloud-init also takes it.
        let nested = format!(
            "network:\n{}",
            one_nic("    dhcp4: yes\n")
                .lines()
                .map(|l| format!("  {l}\n"))
                .collect::<String>()
        );
        assert!(read_dir_seed(Some(&nested)).unwrap().is_some());
    }

    #[test]
    fn no_network_config_or_no_mac_match_changes_nothing() {
        assert_eq!(read_dir_seed(None).unwrap(), None);
        assert_eq!(read_dir_seed(Some("")).unwrap(), None);
        let by_name = "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n";
        assert_eq!(read_dir_seed(Some(by_name)).unwrap(), None);
    }

    #[test]
    fn a_static_address_off_qemus_network_is_refused_before_the_boot() {
        let e = read_dir_seed(Some(&one_nic(
            "    dhcp4: false\n    addresses: [\"192.168.56.10/24\"]\n",
        )))
        .unwrap_err();
        let e = format!("{e:#}");
        for want in [
            "network-config gives NIC cluster0 (MAC 52:54:00:ab:cd:01)",
            "192.168.56.10/24",
            "10.0.2.0/24",
            "cidr = \"10.0.2.0/24\"",
            "gateway = \"10.0.2.2\"",
            "ip = \"10.0.2.15\"",
            "dhcp = true",
        ] {
            assert!(e.contains(want), "{want:?} in {e}");
        }
        // Not a guest's address, or a network without the host's side.
        for (addr, want) in [
            ("10.0.2.2/24", "the gateway"),
            ("10.0.2.3/24", "name server"),
            ("10.0.2.255/24", "the broadcast address"),
            ("10.0.2.100/26", "leaves out 10.0.2.2"),
            ("10.0.2.15", "not an address/prefix"),
        ] {
            let text = one_nic(&format!("    addresses: [\"{addr}\"]\n"));
            let e = format!("{:#}", read_dir_seed(Some(&text)).unwrap_err());
            assert!(e.contains(want), "{addr}: {e}");
        }
        let none = format!(
            "{:#}",
            read_dir_seed(Some(&one_nic("    dhcp4: false\n"))).unwrap_err()
        );
        assert!(none.contains("no IPv4 address"), "{none}");
    }

    #[test]
    fn another_address_on_qemus_network_gets_the_forwards() {
        let text = one_nic("    addresses: [\"fd00::5/64\", {\"10.0.2.21/24\": {}}]\n");
        let nic = read_dir_seed(Some(&text)).unwrap().unwrap();
        assert_eq!(nic.address.as_deref(), Some("10.0.2.21/24"));
        assert_eq!(nic.forward_to.as_deref(), Some("10.0.2.21"));
        assert!(nic.describe().ends_with(", ports forwarded to 10.0.2.21"));
    }

    #[test]
    fn two_nics_matched_by_mac_are_refused() {
        let text = "version: 2\nethernets:\n  lab0:\n    match:\n      macaddress: \"52:54:00:00:00:01\"\n    addresses: [\"10.0.2.15/24\"]\n  cluster0:\n    match:\n      macaddress: \"52:54:00:00:00:02\"\n    addresses: [\"10.77.0.11/24\"]\n";
        let e = format!("{:#}", read_dir_seed(Some(text)).unwrap_err());
        assert!(
            e.contains(
                "matches 2 NICs by MAC (lab0 52:54:00:00:00:01, cluster0 52:54:00:00:00:02)"
            ),
            "{e}"
        );
        let bad = "version: 2\nethernets:\n  c:\n    match:\n      macaddress: \"nope\"\n";
        assert!(format!("{:#}", read_dir_seed(Some(bad)).unwrap_err()).contains("not a MAC"));
    }

    #[test]
    fn a_missing_seed_is_named() {
        let e = from_seed(Path::new("/nonexistent/seed.iso")).unwrap_err();
        assert!(format!("{e}").contains("no such seed"), "{e}");
    }

    #[test]
    fn an_iso_seed_is_read_with_isoinfo() {
        let on_path = |t: &str| {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
        };
        if !on_path("isoinfo") || !on_path("genisoimage") {
            eprintln!("skipped: no isoinfo or genisoimage (package genisoimage)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut s = crate::seed::NodeSeed {
            instance_id: "i-1".into(),
            ..Default::default()
        };
        let iso = dir.path().join("none.iso");
        s.write_iso(&iso).unwrap();
        assert_eq!(from_seed(&iso).unwrap(), None, "no network-config");
        s.network.push(crate::seed::NetIface {
            id: "cluster0".into(),
            mac: "52:54:00:12:34:56".into(),
            address: Some("10.0.2.15/24".into()),
            gateway: Some("10.0.2.2".into()),
            dns: Vec::new(),
        });
        let iso = dir.path().join("node.iso");
        s.write_iso(&iso).unwrap();
        let nic = from_seed(&iso).unwrap().unwrap();
        assert_eq!(nic.mac, "52:54:00:12:34:56");
        // Not an ISO (a vfat seed, say): booted as before.
        let junk = dir.path().join("junk.img");
        std::fs::write(&junk, vec![0u8; 4096]).unwrap();
        assert_eq!(from_seed(&junk).unwrap(), None);
    }
}
