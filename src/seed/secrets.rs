//! A cluster's secrets: four credentials made by `mesobake seed` from the OS random
//! source, kept beside the seeds in `secrets/` (the directory 0700, the files 0600) and
//! reused on the next run unless `--rotate` asks for new ones. They travel to the nodes
//! only inside seeds, as `/etc/mesobake/secrets.env` (0600, root), never in an image.
//!
//! - `agent`: agents authenticate to masters with it (the master's `--credentials`, each
//!   agent's `--credential`).
//! - `marathon`: Marathon registers with the masters as this framework principal.
//! - `operator`: people and mesobake's own probes: master and agent HTTP read-write
//!   endpoints, and Marathon's HTTP basic auth.
//! - `zookeeper` (principal `mesobake`): ZooKeeper's digest scheme. Mesos and Marathon
//!   connect with `zk://mesobake:<secret>@hosts/path`, and the masters create `/mesos` and
//!   `/marathon` readable and writable only with it.
//!
//! `secrets/` holds `credentials.json` (Mesos's `--credentials` form, so only the three
//! Mesos principals: the ZooKeeper credential is not a Mesos one), `operator`
//! (`operator:<secret>`, for `curl -u`) and `zookeeper` (`mesobake:<secret>`, what zkCli's
//! `addauth digest` takes). A `secrets/` from before the ZooKeeper credential keeps its
//! three and gains a new `zookeeper`.
//!
//! Secrets are 32 characters of `[A-Za-z0-9]`: nothing to quote in JSON, in the sh env
//! files, in a `user:password` basic-auth pair or in a ZooKeeper URL's `user:password@`,
//! and about 190 bits of entropy.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Length of a generated secret.
pub const SECRET_LEN: usize = 32;

/// The secrets' JSON file in `secrets/`: Mesos's own `--credentials` format.
pub const JSON_FILE: &str = "credentials.json";

/// The operator's one-line `operator:<secret>` file in `secrets/` (for `curl -u`).
pub const OPERATOR_FILE: &str = "operator";

/// The ZooKeeper credential's one-line `mesobake:<secret>` file in `secrets/` (for zkCli's
/// `addauth digest`).
pub const ZK_FILE: &str = "zookeeper";

/// The principal of the ZooKeeper digest credential.
pub const ZK_PRINCIPAL: &str = "mesobake";

/// One principal and its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The principal (user name).
    pub principal: String,
    /// The secret (password).
    pub secret: String,
}

/// The four credentials of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secrets {
    /// Agents -> masters.
    pub agent: Credential,
    /// Marathon (the framework) -> masters.
    pub marathon: Credential,
    /// People and probes: HTTP read-write on masters and agents, Marathon basic auth.
    pub operator: Credential,
    /// Mesos and Marathon -> ZooKeeper (digest ACLs on `/mesos` and `/marathon`).
    pub zookeeper: Credential,
}

/// The Mesos principals, in the order `credentials.json` lists them.
pub const PRINCIPALS: [&str; 3] = ["agent", "marathon", "operator"];

/// What a node runs, as far as its secrets are concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// It runs a Mesos master (needs every credential: its credentials file lists the
    /// Mesos ones, and it creates the ZooKeeper znodes).
    pub master: bool,
    /// It runs a Mesos agent.
    pub agent: bool,
    /// It runs Marathon.
    pub marathon: bool,
}

/// `[A-Za-z0-9]`, the alphabet of generated secrets.
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh secret: SECRET_LEN characters of `[A-Za-z0-9]` from /dev/urandom, unbiased
/// (bytes of 248 and above are thrown away: 248 is the largest multiple of 62 <= 256).
pub fn random_secret() -> Result<String> {
    let mut f = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    let mut out = String::with_capacity(SECRET_LEN);
    let mut buf = [0u8; 64];
    while out.len() < SECRET_LEN {
        f.read_exact(&mut buf).context("reading /dev/urandom")?;
        for b in buf {
            if b < 248 && out.len() < SECRET_LEN {
                out.push(ALPHABET[usize::from(b % 62)] as char);
            }
        }
    }
    Ok(out)
}

/// A secret the configurator and every file format take without quoting: 16 to 128
/// characters of `[A-Za-z0-9]` (the configurator checks the same).
pub fn valid_secret(s: &str) -> bool {
    (16..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// How [`load_or_create`] came by the secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// None were there: new ones.
    Generated,
    /// Read back from `secrets/`.
    Reused,
    /// `--rotate`: new ones replaced the old.
    Rotated,
}

/// What `secrets/` held.
enum Found {
    /// No `credentials.json`.
    Nothing,
    /// The three Mesos credentials but no `zookeeper` file (made before it existed).
    MesosOnly([Credential; 3]),
    /// All four.
    All(Secrets),
}

impl Secrets {
    /// Four fresh credentials.
    pub fn generate() -> Result<Secrets> {
        let [agent, marathon, operator] = generate_mesos()?;
        Ok(Secrets {
            agent,
            marathon,
            operator,
            zookeeper: cred(ZK_PRINCIPAL)?,
        })
    }

    /// The Mesos credentials: what `credentials.json` lists.
    fn mesos(&self) -> [&Credential; 3] {
        [&self.agent, &self.marathon, &self.operator]
    }

    /// All four.
    pub fn all(&self) -> [&Credential; 4] {
        [&self.agent, &self.marathon, &self.operator, &self.zookeeper]
    }

    /// Reads `dir`: Ok(None) when it holds no `credentials.json`; an error when that file
    /// is there but the `zookeeper` file is not (`mesobake seed` or `lab up` adds one).
    pub fn load(dir: &Path) -> Result<Option<Secrets>> {
        match find(dir)? {
            Found::Nothing => Ok(None),
            Found::All(s) => Ok(Some(s)),
            Found::MesosOnly(_) => bail!(
                "{}: no {ZK_FILE} file (secrets from before the ZooKeeper credential): run mesobake seed, which adds one",
                dir.display()
            ),
        }
    }

    /// The operator credential alone (what the probes log in with), from `dir`'s
    /// `credentials.json`: Ok(None) when there is none.
    pub fn load_operator(dir: &Path) -> Result<Option<Credential>> {
        Ok(match find(dir)? {
            Found::Nothing => None,
            Found::MesosOnly([_, _, o]) => Some(o),
            Found::All(s) => Some(s.operator),
        })
    }

    /// The JSON file: Mesos's `--credentials` format (so it can be handed to a master
    /// as it is), with the Mesos principals only.
    pub fn json(&self) -> String {
        let v = serde_json::json!({ "credentials": self.mesos() });
        serde_json::to_string_pretty(&v).expect("credentials serialize") + "\n"
    }

    /// Writes `dir/credentials.json`, `dir/operator` and `dir/zookeeper`, the directory
    /// 0700 and the files 0600 from the moment they exist (written to a private temp
    /// file, then renamed).
    pub fn write(&self, dir: &Path) -> Result<()> {
        private_dir(dir)?;
        write_private(&dir.join(JSON_FILE), self.json().as_bytes())?;
        for (file, c) in [(OPERATOR_FILE, &self.operator), (ZK_FILE, &self.zookeeper)] {
            write_private(
                &dir.join(file),
                format!("{}:{}\n", c.principal, c.secret).as_bytes(),
            )?;
        }
        Ok(())
    }

    /// The `secrets.env` settings a node with `needs` gets: the credentials it uses and no
    /// other. Masters get all four (their credentials file lists the agent's, Marathon's
    /// and the operator's); agents the agent's and the operator's (their own HTTP
    /// read-write auth); Marathon its own and the operator's (HTTP basic auth). Every one
    /// of them gets the ZooKeeper credential (`MESOBAKE_ZK_PRINCIPAL`/`_SECRET`): Mesos
    /// masters and agents and Marathon all connect to ZooKeeper.
    pub fn env_for(&self, needs: Needs) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut put = |key: &str, c: &Credential| {
            env.insert(format!("MESOBAKE_{key}_PRINCIPAL"), c.principal.clone());
            env.insert(format!("MESOBAKE_{key}_SECRET"), c.secret.clone());
        };
        if needs.master || needs.agent {
            put("AGENT", &self.agent);
        }
        if needs.master || needs.marathon {
            put("MARATHON", &self.marathon);
        }
        if needs.master || needs.agent || needs.marathon {
            put("OPERATOR", &self.operator);
            put("ZK", &self.zookeeper);
        }
        env
    }
}

/// A fresh credential for `principal`.
fn cred(principal: &str) -> Result<Credential> {
    Ok(Credential {
        principal: principal.to_string(),
        secret: random_secret()?,
    })
}

/// Fresh Mesos credentials, in [`PRINCIPALS`] order.
fn generate_mesos() -> Result<[Credential; 3]> {
    Ok([cred("agent")?, cred("marathon")?, cred("operator")?])
}

/// A principal the files and URLs take without quoting: 1 to 64 characters of
/// `[A-Za-z0-9_-]`.
fn valid_principal(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Reads `credentials.json` and `zookeeper` in `dir`.
fn find(dir: &Path) -> Result<Found> {
    let p = dir.join(JSON_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    #[derive(Deserialize)]
    struct File {
        credentials: Vec<Credential>,
    }
    let f: File = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a {{\"credentials\": [...]}} file (move it away, or run mesobake seed --rotate)",
            p.display()
        )
    })?;
    let find = |name: &str| -> Result<Credential> {
        let c = f
            .credentials
            .iter()
            .find(|c| c.principal == name)
            .with_context(|| {
                format!(
                    "{}: no credential for principal {name:?} (run mesobake seed --rotate for a full set)",
                    p.display()
                )
            })?;
        if !valid_secret(&c.secret) {
            bail!(
                "{}: the secret of {name:?} must be 16 to 128 characters of A-Z, a-z and 0-9 (run mesobake seed --rotate for new ones)",
                p.display()
            );
        }
        Ok(c.clone())
    };
    let mesos = [find("agent")?, find("marathon")?, find("operator")?];
    let zp = dir.join(ZK_FILE);
    let line = match std::fs::read_to_string(&zp) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::MesosOnly(mesos)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", zp.display())),
    };
    let zookeeper = line
        .strip_suffix('\n')
        .unwrap_or(&line)
        .split_once(':')
        .filter(|(p, s)| valid_principal(p) && valid_secret(s))
        .map(|(p, s)| Credential {
            principal: p.to_string(),
            secret: s.to_string(),
        })
        .with_context(|| {
            format!(
                "{}: not one line `{ZK_PRINCIPAL}:<secret>` (a principal of A-Z, a-z, 0-9, _ and -, a secret of 16 to 128 characters of A-Z, a-z and 0-9); run mesobake seed --rotate for new secrets",
                zp.display()
            )
        })?;
    let [agent, marathon, operator] = mesos;
    Ok(Found::All(Secrets {
        agent,
        marathon,
        operator,
        zookeeper,
    }))
}

/// Makes `dir` (and its parents) and sets it to 0700.
fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private (0700)", dir.display()))
}

/// Writes `path` with mode 0600 through a temp file beside it (created 0600), so the
/// content is never readable by others, not even for a moment, and a crash leaves either
/// the old file or the new one.
pub fn write_private(path: &Path, body: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".private-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    tmp.write_all(body)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Loads the secrets in `dir`, or makes and writes new ones when there are none or
/// `rotate` asks for them (all four). Secrets from before the ZooKeeper credential keep
/// their three and gain a new one, with a message saying so. Existing files get their
/// private modes back (0700, 0600).
pub fn load_or_create(dir: &Path, rotate: bool) -> Result<(Secrets, Origin)> {
    let found = find(dir);
    if !rotate {
        let s = match found? {
            Found::Nothing => None,
            Found::All(s) => Some(s),
            Found::MesosOnly([agent, marathon, operator]) => {
                eprintln!(
                    "mesobake: secrets: {} has no ZooKeeper credential (it predates ZooKeeper's digest ACLs): added one in {}, kept the other three; boot every node with its new seed",
                    dir.display(),
                    dir.join(ZK_FILE).display()
                );
                Some(Secrets {
                    agent,
                    marathon,
                    operator,
                    zookeeper: cred(ZK_PRINCIPAL)?,
                })
            }
        };
        if let Some(s) = s {
            // Rewritten as they are: puts the modes right, restores a lost operator file
            // and saves a new ZooKeeper credential.
            s.write(dir)?;
            return Ok((s, Origin::Reused));
        }
    }
    let had = dir.join(JSON_FILE).exists();
    let s = Secrets::generate()?;
    s.write(dir)?;
    Ok((
        s,
        if had {
            Origin::Rotated
        } else {
            Origin::Generated
        },
    ))
}

/// The `secrets/` directory beside a set of seeds.
pub fn dir_in(out: &Path) -> PathBuf {
    out.join("secrets")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn secrets_are_32_alphanumerics_and_differ() {
        let a = random_secret().unwrap();
        let b = random_secret().unwrap();
        assert_eq!(a.len(), SECRET_LEN);
        assert!(valid_secret(&a), "{a}");
        assert_ne!(a, b);
        // All 62 characters can occur (the modulo keeps every one reachable).
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.extend(random_secret().unwrap().bytes());
        }
        assert_eq!(seen.len(), 62);
    }

    #[test]
    fn written_once_reused_and_rotated_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("secrets");
        let (s1, o1) = load_or_create(&dir, false).unwrap();
        assert_eq!(o1, Origin::Generated);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        for f in [JSON_FILE, OPERATOR_FILE, ZK_FILE] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        assert_eq!(
            std::fs::read_to_string(dir.join(OPERATOR_FILE)).unwrap(),
            format!("operator:{}\n", s1.operator.secret)
        );
        // What zkCli's `addauth digest` takes.
        assert_eq!(s1.zookeeper.principal, "mesobake");
        assert_eq!(
            std::fs::read_to_string(dir.join(ZK_FILE)).unwrap(),
            format!("mesobake:{}\n", s1.zookeeper.secret)
        );
        let secrets: std::collections::BTreeSet<_> = s1.all().iter().map(|c| &c.secret).collect();
        assert_eq!(secrets.len(), 4, "four different secrets");
        std::fs::set_permissions(dir.join(JSON_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::set_permissions(dir.join(ZK_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let (s2, o2) = load_or_create(&dir, false).unwrap();
        assert_eq!((o2, &s2), (Origin::Reused, &s1));
        assert_eq!(mode(&dir.join(JSON_FILE)), 0o600, "modes are put right");
        assert_eq!(mode(&dir.join(ZK_FILE)), 0o600, "modes are put right");
        let (s3, o3) = load_or_create(&dir, true).unwrap();
        assert_eq!(o3, Origin::Rotated);
        for (a, b) in s1.all().iter().zip(s3.all()) {
            assert_eq!(a.principal, b.principal);
            assert_ne!(a.secret, b.secret, "--rotate renews all four");
        }
        assert_eq!(Secrets::load(&dir).unwrap().unwrap(), s3);
        // Mesos's own --credentials format, with the Mesos principals only.
        let v: serde_json::Value = serde_json::from_str(&s3.json()).unwrap();
        let principals: Vec<_> = v["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["principal"].as_str().unwrap())
            .collect();
        assert_eq!(principals, PRINCIPALS);
        assert_eq!(v["credentials"][2]["secret"], s3.operator.secret.as_str());
        assert!(!s3.json().contains(&s3.zookeeper.secret));
    }

    #[test]
    fn secrets_from_before_zookeeper_keep_their_three_and_gain_a_fourth() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("secrets");
        let (old, _) = load_or_create(&dir, false).unwrap();
        std::fs::remove_file(dir.join(ZK_FILE)).unwrap();
        let e = format!("{:#}", Secrets::load(&dir).unwrap_err());
        assert!(e.contains("no zookeeper file"), "{e}");
        // The probes' login still reads.
        assert_eq!(Secrets::load_operator(&dir).unwrap().unwrap(), old.operator);
        let (s, o) = load_or_create(&dir, false).unwrap();
        assert_eq!(o, Origin::Reused);
        assert_eq!(
            (&s.agent, &s.marathon, &s.operator),
            (&old.agent, &old.marathon, &old.operator)
        );
        assert_ne!(s.zookeeper.secret, old.zookeeper.secret);
        assert!(valid_secret(&s.zookeeper.secret));
        assert_eq!(Secrets::load(&dir).unwrap().unwrap(), s, "and it is saved");
    }

    #[test]
    fn a_broken_file_is_an_error_not_a_silent_new_set() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join(JSON_FILE),
            r#"{"credentials":[{"principal":"agent","secret":"short"}]}"#,
        )
        .unwrap();
        let e = format!("{:#}", load_or_create(tmp.path(), false).unwrap_err());
        assert!(e.contains("\"agent\"") && e.contains("--rotate"), "{e}");
        // The same for a broken zookeeper file; --rotate replaces both.
        let (s, _) = load_or_create(tmp.path(), true).unwrap();
        for bad in [
            "mesobake\n".to_string(),
            format!("mesobake:{}", "x".repeat(8)),
            format!("me so:{}\n", s.zookeeper.secret),
            format!("mesobake:{}\nmore\n", s.zookeeper.secret),
        ] {
            std::fs::write(tmp.path().join(ZK_FILE), &bad).unwrap();
            let e = format!("{:#}", load_or_create(tmp.path(), false).unwrap_err());
            assert!(
                e.contains("zookeeper") && e.contains("--rotate"),
                "{bad:?}: {e}"
            );
        }
        assert!(load_or_create(tmp.path(), true).is_ok());
    }

    #[test]
    fn each_node_gets_only_what_it_uses() {
        let s = Secrets::generate().unwrap();
        let keys = |n: Needs| s.env_for(n).into_keys().collect::<Vec<_>>().join(" ");
        let master = Needs {
            master: true,
            marathon: true,
            ..Default::default()
        };
        assert_eq!(keys(master), "MESOBAKE_AGENT_PRINCIPAL MESOBAKE_AGENT_SECRET MESOBAKE_MARATHON_PRINCIPAL MESOBAKE_MARATHON_SECRET MESOBAKE_OPERATOR_PRINCIPAL MESOBAKE_OPERATOR_SECRET MESOBAKE_ZK_PRINCIPAL MESOBAKE_ZK_SECRET");
        let agent = Needs {
            agent: true,
            ..Default::default()
        };
        assert_eq!(keys(agent), "MESOBAKE_AGENT_PRINCIPAL MESOBAKE_AGENT_SECRET MESOBAKE_OPERATOR_PRINCIPAL MESOBAKE_OPERATOR_SECRET MESOBAKE_ZK_PRINCIPAL MESOBAKE_ZK_SECRET");
        let marathon = Needs {
            marathon: true,
            ..Default::default()
        };
        assert_eq!(keys(marathon), "MESOBAKE_MARATHON_PRINCIPAL MESOBAKE_MARATHON_SECRET MESOBAKE_OPERATOR_PRINCIPAL MESOBAKE_OPERATOR_SECRET MESOBAKE_ZK_PRINCIPAL MESOBAKE_ZK_SECRET");
        assert!(s.env_for(Needs::default()).is_empty());
        assert_eq!(s.env_for(agent)["MESOBAKE_AGENT_SECRET"], s.agent.secret);
        assert_eq!(s.env_for(agent)["MESOBAKE_ZK_PRINCIPAL"], "mesobake");
        assert_eq!(s.env_for(master)["MESOBAKE_ZK_SECRET"], s.zookeeper.secret);
    }
}
