//! `lab ssh`: the system `ssh` into a lab VM, through the VM's forward of guest port 22
//! on 127.0.0.1.
//!
//! **Key.** cluster.toml's `ssh-keys` are public key lines, which cloud-init installs
//! for the image's default user. Their private halves are looked up as OpenSSH keeps
//! them: a `NAME.pub` whose key is the topology's, with the private key `NAME` beside
//! it, in the topology's directory and in `~/.ssh`. The first of the topology's keys
//! found that way is used; `--identity FILE` names one instead (a `.pub` given there
//! means the private key beside it when there is one, else the key an ssh-agent holds).
//!
//! **User.** The seeds add no user: `ssh_authorized_keys` go to cloud-init's default
//! user, whose name the image's `/etc/cloud/cloud.cfg` sets (Debian's cloud-init:
//! `debian`, Ubuntu's: `ubuntu`). The guest names it itself: cloud-init's
//! `ssh-authkey-fingerprints` module prints "Authorized keys from ... for user NAME" and
//! the keys' fingerprints on the serial console. Until it has, the user comes from the
//! image's distribution family as its build recorded it (`manifest.json` beside the
//! images). `--user` overrides both.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine;
use sha2::{Digest, Sha256};

/// How long ssh waits for the TCP connection and the server's greeting. The forward on
/// 127.0.0.1 accepts at once, but a guest sharing two cores with other TCG guests can
/// take many seconds to answer: generous, yet a VM that is down fails in bounded time.
pub const CONNECT_TIMEOUT_SECS: u32 = 30;

/// Where and as whom `lab ssh` logs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The host port on 127.0.0.1 forwarded to the guest's port 22.
    pub port: u16,
    /// The login user.
    pub user: String,
    /// The private key (or a public key whose private half an ssh-agent holds).
    pub identity: PathBuf,
}

/// The ssh command line (without the program name) for `target`, running `command`
/// when it is not empty (ssh joins its words and the remote shell runs them, as always
/// with ssh).
pub fn argv(target: &SshTarget, command: &[String]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["-p".into(), target.port.to_string().into()];
    a.push("-i".into());
    a.push(target.identity.clone().into());
    for o in [
        // Lab VMs are throwaway: each boot of an image that ships without host keys
        // makes new ones, and every lab reuses 127.0.0.1 with ports that change per
        // boot. Known-hosts entries would only ever be wrong (and a stale one makes ssh
        // refuse), so none is checked and none is recorded.
        "StrictHostKeyChecking=no".to_string(),
        "UserKnownHostsFile=/dev/null".to_string(),
        // Only the lab's key: offering every key of an agent first can exhaust the
        // server's MaxAuthTries before the right one is tried.
        "IdentitiesOnly=yes".to_string(),
        // Drops "Permanently added ... to the list of known hosts" on every login.
        "LogLevel=ERROR".to_string(),
        format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}"),
    ] {
        a.push("-o".into());
        a.push(o.into());
    }
    a.push("-l".into());
    a.push(target.user.clone().into());
    a.push("127.0.0.1".into());
    if !command.is_empty() {
        // Ends ssh's options: a command word starting with '-' is the command's.
        a.push("--".into());
        a.extend(command.iter().map(OsString::from));
    }
    a
}

/// The key type and base64 blob of an OpenSSH public key line (`TYPE BLOB [comment]`).
fn key_id(line: &str) -> Option<(&str, &str)> {
    let mut w = line.split_whitespace();
    Some((w.next()?, w.next()?))
}

/// The private key for the first of `keys` (public key lines) that has one: a `.pub`
/// file holding the same key in one of `dirs`, with its private half beside it.
pub fn find_identity(keys: &[String], dirs: &[PathBuf]) -> Result<PathBuf> {
    if keys.is_empty() {
        bail!(
            "the topology has no ssh-keys, so the lab's nodes accept no SSH login: add a public \
             key (ssh-keys = [\"ssh-ed25519 AAAA... you@host\"]) and start the lab again"
        );
    }
    let mut pubs: Vec<(PathBuf, String)> = Vec::new();
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(d) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pub") && p.is_file())
            .collect();
        found.sort();
        for p in found {
            // A public key is one short line; anything big is not one.
            if std::fs::metadata(&p).is_ok_and(|m| m.len() <= 16 * 1024) {
                if let Ok(text) = std::fs::read_to_string(&p) {
                    pubs.push((p, text));
                }
            }
        }
    }
    let mut without_private = Vec::new();
    for k in keys {
        let Some(want) = key_id(k) else { continue };
        for (p, text) in &pubs {
            if text.lines().filter_map(key_id).any(|id| id == want) {
                let private = p.with_extension("");
                if private.is_file() {
                    return Ok(private);
                }
                without_private.push(p.display().to_string());
            }
        }
    }
    let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    if without_private.is_empty() {
        bail!(
            "no private key for the topology's ssh-keys: no KEY.pub holding one of them in {}; \
             name the private key with --identity FILE",
            looked.join(", ")
        );
    }
    bail!(
        "found {} but not the private key beside it; name it with --identity FILE",
        without_private.join(", ")
    )
}

/// The key file for `--identity FILE`: a `.pub` stands for the private key beside it when
/// that exists.
pub fn identity_from_flag(file: &Path) -> Result<PathBuf> {
    if !file.is_file() {
        bail!("--identity {}: no such file", file.display());
    }
    if file.extension().is_some_and(|x| x == "pub") {
        let private = file.with_extension("");
        if private.is_file() {
            return Ok(private);
        }
    }
    Ok(file.to_owned())
}

/// The SHA256 fingerprint of a public key line as cloud-init prints it: hex pairs joined
/// by ':'.
fn cloud_init_fingerprint(key_line: &str) -> Option<String> {
    let (_, blob) = key_id(key_line)?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .ok()?;
    let hex = hex::encode(Sha256::digest(&raw));
    Some(
        hex.as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// The user cloud-init installed SSH keys for, from a serial console log: the user whose
/// "Authorized keys from ... for user NAME" table lists `key` (a public key line), else
/// the first user such a table names. None while cloud-init has printed no table.
pub fn user_from_console(serial: &str, key: Option<&str>) -> Option<String> {
    const HEADER: &str = "Authorized keys from ";
    let fp = key.and_then(cloud_init_fingerprint);
    let mut first = None;
    let mut current: Option<String> = None;
    for l in serial.lines() {
        if let Some(i) = l.find(HEADER) {
            current = l[i + HEADER.len()..]
                .split_once(" for user ")
                .and_then(|(_, u)| {
                    let u = u.trim_end().trim_end_matches('+').trim_end();
                    (!u.is_empty() && !u.contains(char::is_whitespace)).then(|| u.to_string())
                });
            if first.is_none() {
                first.clone_from(&current);
            }
            continue;
        }
        if let (Some(u), Some(fp)) = (&current, &fp) {
            if l.contains('|') && l.contains(fp.as_str()) {
                return Some(u.clone());
            }
        }
    }
    first
}

/// cloud-init's default user on a distribution family's images (from the family name
/// `manifest.json` records: "debian", "ubuntu").
pub fn default_user(family: &str) -> Option<&'static str> {
    match family {
        "debian" => Some("debian"),
        "ubuntu" => Some("ubuntu"),
        _ => None,
    }
}

/// The default user of the image `<images>/<role>.qcow2`, from the distribution family
/// its build recorded in `<images>/manifest.json`; None when that is not known.
pub fn user_from_manifest(images: &Path, role: &str) -> Option<String> {
    let text = std::fs::read_to_string(images.join("manifest.json")).ok()?;
    let m: serde_json::Value = serde_json::from_str(&text).ok()?;
    let family = m["images"][role]["base"]["family"].as_str()?;
    default_user(family).map(str::to_string)
}

/// The login user: `--user`, else what the guest's console says, else what `lab up`
/// recorded from the image's build.
pub fn choose_user(
    flag: Option<&str>,
    serial: &str,
    key: Option<&str>,
    recorded: Option<&str>,
    node: &str,
) -> Result<String> {
    if let Some(u) = flag {
        return Ok(u.to_string());
    }
    if let Some(u) = user_from_console(serial, key) {
        return Ok(u);
    }
    recorded.map(str::to_string).with_context(|| {
        format!(
            "{node}: cannot tell the login user yet (cloud-init has not named it on the console, \
             and the image's manifest.json did not say its distribution); give it with --user"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with `ssh-keygen -t ed25519 -C lab@test` (its SHA256 fingerprint, as ssh-keygen
    /// prints it, is +0HlAQV9Y1CmsEQuP0bqBON7HtJ8IVJGL89v/FdlOk4).
    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHOIT1SkKWJX84cCcjhEkRXh3tL6IgBeVUtEA0bLYZOK lab@test";

    #[test]
    fn the_ssh_command_line() {
        let t = SshTarget {
            port: 40022,
            user: "debian".into(),
            identity: "/k/lab".into(),
        };
        let a: Vec<String> = argv(&t, &["cat".into(), "/etc/hostname".into()])
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert_eq!(
            a,
            [
                "-p",
                "40022",
                "-i",
                "/k/lab",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=30",
                "-l",
                "debian",
                "127.0.0.1",
                "--",
                "cat",
                "/etc/hostname"
            ]
        );
        let interactive = argv(&t, &[]);
        assert_eq!(
            interactive.last().unwrap(),
            "127.0.0.1",
            "no command: a login shell"
        );
    }

    #[test]
    fn the_private_key_beside_the_matching_pub_is_found() {
        let home = tempfile::tempdir().unwrap();
        let topo = tempfile::tempdir().unwrap();
        let (blob_type, blob) = key_id(KEY).unwrap();
        // Another key in ~/.ssh, and ours (other comment) beside the topology.
        std::fs::write(
            home.path().join("id_other.pub"),
            "ssh-ed25519 AAAAOTHER other@x\n",
        )
        .unwrap();
        std::fs::write(home.path().join("id_other"), "private").unwrap();
        std::fs::write(
            topo.path().join("lab_key.pub"),
            format!("{blob_type} {blob} renamed@elsewhere\n"),
        )
        .unwrap();
        std::fs::write(topo.path().join("lab_key"), "private").unwrap();
        let dirs = [topo.path().to_owned(), home.path().to_owned()];
        assert_eq!(
            find_identity(&[KEY.into()], &dirs).unwrap(),
            topo.path().join("lab_key")
        );
        // The first key that has a private half wins.
        let keys = ["ssh-ed25519 AAAANOTFOUND x".to_string(), KEY.to_string()];
        assert_eq!(
            find_identity(&keys, &dirs).unwrap(),
            topo.path().join("lab_key")
        );
        // A .pub without its private half is named in the error.
        std::fs::remove_file(topo.path().join("lab_key")).unwrap();
        let e = find_identity(&[KEY.into()], &dirs).unwrap_err().to_string();
        assert!(e.contains("lab_key.pub") && e.contains("--identity"), "{e}");
        let e = find_identity(&[], &dirs).unwrap_err().to_string();
        assert!(e.contains("no ssh-keys"), "{e}");
    }

    #[test]
    fn identity_flag_takes_the_private_half_of_a_pub() {
        let d = tempfile::tempdir().unwrap();
        let pubf = d.path().join("k.pub");
        std::fs::write(&pubf, KEY).unwrap();
        assert_eq!(identity_from_flag(&pubf).unwrap(), pubf, "agent case");
        std::fs::write(d.path().join("k"), "private").unwrap();
        assert_eq!(identity_from_flag(&pubf).unwrap(), d.path().join("k"));
        assert!(identity_from_flag(&d.path().join("none")).is_err());
    }

    /// cloud-init 22.4's ssh-authkey-fingerprints output on the serial console.
    #[test]
    fn the_login_user_comes_from_cloud_init_s_console_table() {
        let fp = cloud_init_fingerprint(KEY).unwrap();
        // The same digest ssh-keygen -l prints in base64.
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode("+0HlAQV9Y1CmsEQuP0bqBON7HtJ8IVJGL89v/FdlOk4")
            .unwrap();
        assert_eq!(fp.replace(':', ""), hex::encode(b64));
        let serial = format!(
            "[   42.1] cloud-init[512]: Cloud-init v. 22.4.2 running 'modules:final'\n\
             ci-info: no authorized SSH keys fingerprints found for user root.\n\
             ci-info: ++++++++++Authorized keys from /home/admin/.ssh/authorized_keys for user admin+++++++++++\n\
             ci-info: | ssh-rsa | 00:11 | - | other |\n\
             ci-info: +++++++++Authorized keys from /home/debian/.ssh/authorized_keys for user debian++++++++++\n\
             ci-info: +-------------+-----+---------+----------+\n\
             ci-info: |   Keytype   | Fingerprint (sha256) | Options | Comment  |\n\
             ci-info: | ssh-ed25519 | {fp} |    -    | lab@test |\r\n\
             mesobake: configured role=master ip=10.0.0.11 zk=zk://m1:2181/mesos\n"
        );
        assert_eq!(user_from_console(&serial, Some(KEY)).unwrap(), "debian");
        assert_eq!(
            user_from_console(&serial, None).unwrap(),
            "admin",
            "no key to match: the first user named"
        );
        assert_eq!(user_from_console("Linux version 6.1\n", Some(KEY)), None);
        assert_eq!(
            choose_user(Some("me"), &serial, Some(KEY), Some("ubuntu"), "m1").unwrap(),
            "me"
        );
        assert_eq!(
            choose_user(None, "", Some(KEY), Some("ubuntu"), "m1").unwrap(),
            "ubuntu"
        );
        let e = choose_user(None, "", Some(KEY), None, "m1").unwrap_err();
        assert!(e.to_string().contains("--user"), "{e}");
    }

    #[test]
    fn the_default_user_comes_from_the_images_manifest() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(user_from_manifest(d.path(), "master"), None);
        std::fs::write(
            d.path().join("manifest.json"),
            r#"{"mesobake": "0.1.0", "images": {"master": {"base": {"spec": "debian-12", "family": "debian"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            user_from_manifest(d.path(), "master").as_deref(),
            Some("debian")
        );
        assert_eq!(user_from_manifest(d.path(), "slave-only"), None);
    }
}
