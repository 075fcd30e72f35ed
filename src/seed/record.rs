//! The record of what `mesobake seed` wrote into an output directory, so that the next
//! run can remove the seeds of nodes and groups that left the topology (and files a
//! node no longer gets, such as a network-config), and nothing else.
//!
//! `<out>/.mesobake-seed.json` lists, per node or group, each file written (relative to
//! the output directory; `seed --ova`'s `<name>.ova` included) with its SHA-256, hashed in
//! chunks since an OVA holds a whole disk. A file is removed only when it is in the
//! record of the previous run, is not written by this one, is a regular file reached
//! without following any symlink (the node's directory included), and still has the
//! recorded content: a file someone changed or replaced since is kept, and said so. A
//! node's directory is removed once empty. No record (seeds from before it, or another
//! tool's directory) means nothing is removed; neither does a record that does not
//! parse. `secrets/` is never touched.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The record's file name in the output directory.
pub const FILE: &str = ".mesobake-seed.json";

/// Files by node or group name: relative path -> SHA-256 (hex).
pub type Files = BTreeMap<String, BTreeMap<String, String>>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// Format version.
    version: u32,
    /// What each node and group got.
    seeds: Files,
}

/// What tidying an output directory did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tidy {
    /// Removed files (and emptied directories, with a trailing `/`), by node or group,
    /// for names no longer in the topology.
    pub left: BTreeMap<String, Vec<String>>,
    /// Removed files of names still in the topology that no longer get them.
    pub dropped: Vec<String>,
    /// Files (or directories) that were mesobake's but are kept, and why.
    pub kept: Vec<(String, String)>,
    /// A note on the previous record, when it could not be used.
    pub note: Option<String>,
}

impl Tidy {
    /// One line per thing done or kept, for stderr.
    pub fn lines(&self, out: &Path) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(n) = &self.note {
            v.push(n.clone());
        }
        for (name, files) in &self.left {
            v.push(format!(
                "removed the seeds of {name}, no longer in the topology: {}",
                files
                    .iter()
                    .map(|f| out.join(f).display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        for f in &self.dropped {
            v.push(format!(
                "removed {}: its node no longer gets it",
                out.join(f).display()
            ));
        }
        for (f, why) in &self.kept {
            v.push(format!(
                "kept {}: {why} (remove it yourself if it is no longer needed)",
                out.join(f).display()
            ));
        }
        v
    }
}

/// SHA-256 (hex) of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 (hex) of everything `r` yields, read in chunks (an OVA holds a whole disk).
fn digest_reader(mut r: impl Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    std::io::copy(&mut r, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// The digests of `files` (relative to `out`), as written just now.
pub fn digests(out: &Path, files: &[String]) -> Result<BTreeMap<String, String>> {
    files
        .iter()
        .map(|f| {
            let p = out.join(f);
            let r = std::fs::File::open(&p).with_context(|| format!("reading {}", p.display()))?;
            let d = digest_reader(r).with_context(|| format!("reading {}", p.display()))?;
            Ok((f.clone(), d))
        })
        .collect()
}

/// Reads the previous record (an empty one when there is none, or it does not parse).
fn read(out: &Path) -> (Files, Option<String>) {
    let p = out.join(FILE);
    match std::fs::symlink_metadata(&p) {
        Err(_) => return (Files::new(), None),
        Ok(m) if !m.file_type().is_file() => {
            return (
                Files::new(),
                Some(format!(
                    "{} is not a regular file: no seed files were removed",
                    p.display()
                )),
            )
        }
        Ok(_) => {}
    }
    let parsed = crate::profile::read_config_file(&p, "seed record")
        .ok()
        .and_then(|t| serde_json::from_str::<Record>(&t).ok())
        .filter(|r| r.version == 1);
    match parsed {
        Some(r) => (r.seeds, None),
        None => (
            Files::new(),
            Some(format!(
                "{} does not parse: no seed files were removed (it is rewritten now)",
                p.display()
            )),
        ),
    }
}

/// A recorded path mesobake could have written: `NAME.ext` or `NAME/file`, plain names
/// only, never under `secrets/`.
fn plausible(rel: &str) -> Option<(Option<&str>, &str)> {
    let p = Path::new(rel);
    let parts: Vec<&str> = p
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [f] if *f != FILE => Some((None, f)),
        [d, f] if *d != "secrets" => Some((Some(d), f)),
        _ => None,
    }
}

fn open_dir(at: &OwnedFd, name: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Why a recorded file was kept.
struct Kept {
    why: String,
    /// Whether a later run may still remove it (an I/O error, not a change of owner).
    retry: bool,
}

impl From<String> for Kept {
    fn from(why: String) -> Kept {
        Kept { why, retry: false }
    }
}

impl From<&str> for Kept {
    fn from(why: &str) -> Kept {
        why.to_string().into()
    }
}

fn io(e: rustix::io::Errno) -> Kept {
    Kept {
        why: e.to_string(),
        retry: true,
    }
}

/// Removes `rel` under `out` if it is a regular file with content `sha`; Err when it is
/// kept. A file already gone is Ok(false).
fn remove(out: &OwnedFd, rel: &str, sha: &str) -> std::result::Result<bool, Kept> {
    let Some((dir, file)) = plausible(rel) else {
        return Err("not a path mesobake writes".into());
    };
    let dirfd = match dir {
        None => None,
        Some(d) => match open_dir(out, d) {
            Ok(fd) => Some(fd),
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                return Err(format!("{d} is no longer a directory (a symlink?)").into())
            }
            Err(e) => return Err(io(e)),
        },
    };
    let at = dirfd.as_ref().unwrap_or(out);
    let fd = match rustix::fs::openat(
        at,
        file,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(rustix::io::Errno::LOOP) => return Err("it is a symlink now".into()),
        Err(e) => return Err(io(e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(io)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err("not a regular file".into());
    }
    let now = digest_reader(std::fs::File::from(fd)).map_err(|e| Kept {
        why: e.to_string(),
        retry: true,
    })?;
    if now != sha {
        return Err("it changed since mesobake wrote it".into());
    }
    rustix::fs::unlinkat(at, file, AtFlags::empty()).map_err(io)?;
    Ok(true)
}

/// Removes what the previous run recorded and this one (`now`) did not write, then
/// records `now`. Called after every seed was written.
pub fn tidy(out: &Path, now: &Files) -> Result<Tidy> {
    let (before, note) = read(out);
    let mut t = Tidy {
        note,
        ..Tidy::default()
    };
    let outfd = rustix::fs::openat(
        CWD,
        out,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", out.display()))?;
    let written: std::collections::BTreeSet<&String> =
        now.values().flat_map(|f| f.keys()).collect();
    // Files kept for a retry: removal failed for a reason that may pass (not a change).
    let mut retry: Files = Files::new();
    for (name, files) in &before {
        let left = !now.contains_key(name);
        let mut dirs = std::collections::BTreeSet::new();
        for (rel, sha) in files {
            if written.contains(rel) {
                continue;
            }
            if let Some((Some(d), _)) = plausible(rel) {
                dirs.insert(d.to_string());
            }
            match remove(&outfd, rel, sha) {
                Ok(true) if left => t.left.entry(name.clone()).or_default().push(rel.clone()),
                Ok(true) => t.dropped.push(rel.clone()),
                Ok(false) => {}
                Err(k) => {
                    if k.retry {
                        retry
                            .entry(name.clone())
                            .or_default()
                            .insert(rel.clone(), sha.clone());
                    }
                    t.kept.push((rel.clone(), k.why));
                }
            }
        }
        if !left {
            continue;
        }
        for d in dirs {
            if now
                .values()
                .any(|f| f.keys().any(|k| k.starts_with(&format!("{d}/"))))
            {
                continue;
            }
            match rustix::fs::unlinkat(&outfd, d.as_str(), AtFlags::REMOVEDIR) {
                Ok(()) => t
                    .left
                    .entry(name.clone())
                    .or_default()
                    .push(format!("{d}/")),
                Err(rustix::io::Errno::NOENT) => {}
                Err(rustix::io::Errno::NOTEMPTY | rustix::io::Errno::EXIST) => t.kept.push((
                    format!("{d}/"),
                    "it holds files mesobake did not write".into(),
                )),
                Err(e) => t.kept.push((format!("{d}/"), e.to_string())),
            }
        }
    }
    let mut seeds = now.clone();
    for (name, files) in retry {
        seeds.entry(name).or_default().extend(files);
    }
    let record = Record { version: 1, seeds };
    let text = serde_json::to_string_pretty(&record)? + "\n";
    let tmp = out.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out.join(FILE))
        .with_context(|| format!("writing {}", out.join(FILE).display()))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn files(out: &Path, by: &[(&str, &[&str])]) -> Files {
        by.iter()
            .map(|(n, fs)| {
                let list: Vec<String> = fs.iter().map(|f| f.to_string()).collect();
                (n.to_string(), digests(out, &list).unwrap())
            })
            .collect()
    }

    fn put(out: &Path, rel: &str, body: &str) {
        let p = out.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }

    #[test]
    fn only_recorded_unchanged_regular_files_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path();
        // No record: nothing is removed, whatever lies there.
        put(out, "old/user-data", "x");
        put(out, "m1/user-data", "m1");
        let now = files(out, &[("m1", &["m1/user-data"])]);
        assert_eq!(tidy(out, &now).unwrap(), Tidy::default());
        assert!(out.join("old/user-data").exists());

        // a1 and a2 written, then left; a2's ISO was edited by someone, a2's directory
        // holds a file of their own, and a1's network-config became a symlink.
        for (f, b) in [
            ("a1/user-data", "1"),
            ("a1/meta-data", "2"),
            ("a1.iso", "3"),
            ("a2/user-data", "4"),
            ("a2.iso", "5"),
            ("a1.network-config", "6"),
        ] {
            put(out, f, b);
        }
        let both = files(
            out,
            &[
                ("m1", &["m1/user-data"]),
                (
                    "a1",
                    &[
                        "a1/user-data",
                        "a1/meta-data",
                        "a1.iso",
                        "a1.network-config",
                    ],
                ),
                ("a2", &["a2/user-data", "a2.iso"]),
            ],
        );
        tidy(out, &both).unwrap();
        fs::write(out.join("a2.iso"), "edited").unwrap();
        put(out, "a2/notes.txt", "mine");
        fs::remove_file(out.join("a1.network-config")).unwrap();
        std::os::unix::fs::symlink(out.join("m1/user-data"), out.join("a1.network-config"))
            .unwrap();

        let t = tidy(out, &now).unwrap();
        assert_eq!(
            t.left,
            BTreeMap::from([
                (
                    "a1".to_string(),
                    vec![
                        "a1.iso".to_string(),
                        "a1/meta-data".into(),
                        "a1/user-data".into(),
                        "a1/".into()
                    ]
                ),
                ("a2".to_string(), vec!["a2/user-data".to_string()]),
            ])
        );
        let kept: Vec<&str> = t.kept.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(kept, ["a1.network-config", "a2.iso", "a2/"], "{t:?}");
        assert!(t.kept[0].1.contains("symlink"), "{t:?}");
        assert!(t.kept[1].1.contains("changed"), "{t:?}");
        assert!(out.join("a2/notes.txt").exists() && out.join("a2.iso").exists());
        assert!(
            out.join("m1/user-data").exists(),
            "the symlink's target is untouched"
        );
        assert!(out.join("old/user-data").exists(), "never recorded");
        let lines = t.lines(out).join("\n");
        assert!(
            lines.contains("removed the seeds of a1, no longer in the topology"),
            "{lines}"
        );
        assert!(
            lines.contains("kept ") && lines.contains("a2.iso: it changed"),
            "{lines}"
        );

        // The record now holds m1 only: running again removes nothing more.
        assert_eq!(tidy(out, &now).unwrap(), Tidy::default());
    }

    #[test]
    fn a_symlinked_node_directory_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let elsewhere = tmp.path().join("elsewhere");
        put(&out, "a1/user-data", "1");
        let rec = files(&out, &[("a1", &["a1/user-data"])]);
        tidy(&out, &rec).unwrap();
        // a1/ is swapped for a symlink to a directory holding the same content.
        fs::rename(out.join("a1"), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, out.join("a1")).unwrap();
        let t = tidy(&out, &Files::new()).unwrap();
        assert!(t.left.is_empty(), "{t:?}");
        assert!(elsewhere.join("user-data").exists());
        assert!(t.kept[0].1.contains("no longer a directory"), "{t:?}");
    }

    #[test]
    fn files_a_node_no_longer_gets_are_dropped_and_bad_records_remove_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path();
        put(out, "w/user-data", "1");
        put(out, "w/network-config", "2");
        put(out, "w.network-config", "2");
        let full = files(
            out,
            &[(
                "w",
                &["w/user-data", "w/network-config", "w.network-config"],
            )],
        );
        tidy(out, &full).unwrap();
        let less = files(out, &[("w", &["w/user-data"])]);
        let t = tidy(out, &less).unwrap();
        assert_eq!(t.dropped, ["w.network-config", "w/network-config"]);
        assert!(out.join("w/user-data").exists());

        // A record naming paths mesobake never writes is not obeyed.
        put(out, "secrets/operator", "s");
        put(out, "x/y/z", "z");
        let mut bad = Files::new();
        bad.insert(
            "evil".into(),
            BTreeMap::from([
                ("secrets/operator".to_string(), digest(b"s")),
                ("../outside".to_string(), digest(b"o")),
                ("x/y/z".to_string(), digest(b"z")),
                ("/etc/passwd".to_string(), digest(b"p")),
            ]),
        );
        fs::write(
            out.join(FILE),
            serde_json::to_string(&Record {
                version: 1,
                seeds: bad,
            })
            .unwrap(),
        )
        .unwrap();
        let t = tidy(out, &less).unwrap();
        assert!(t.left.is_empty() && t.dropped.is_empty(), "{t:?}");
        assert!(out.join("secrets/operator").exists() && out.join("x/y/z").exists());

        fs::write(out.join(FILE), "{ not json").unwrap();
        let t = tidy(out, &less).unwrap();
        assert!(
            t.note.as_deref().unwrap_or("").contains("does not parse"),
            "{t:?}"
        );
    }
}
