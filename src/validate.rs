//! `mesobake validate`, and the checks `build` runs before any download, mount or
//! bootstrap (`--dry-run` included).
//!
//! A profile is loaded as `build` loads it (includes, `--with` files: any unknown key or
//! mistyped value, a bad format among them, is refused with its file and line), then
//! everything it refers to is checked, each problem named by the file and line that
//! wrote the value: overlays must be directories, apt keys OpenPGP public keys (`gpg
//! --show-keys`, armoured or binary), local debs Debian packages (or directories of
//! them), and the base a named base, an existing image file, or a URL with a checksum.
//! A cluster.toml gets the topology checks `seed` and `lab` run, and writes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::profile::{self, Profile};

/// What a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// A role profile.
    Profile,
    /// A cluster topology (cluster.toml).
    Cluster,
}

impl InputKind {
    /// The `kind` of the error a command stops with when such a file fails validation.
    pub fn error_kind(self) -> &'static str {
        match self {
            InputKind::Profile => "invalid-profile",
            InputKind::Cluster => "invalid-cluster",
        }
    }
}

/// One problem, located where the offending value is written.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    /// The file the value is in (None: the command line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Its line (1-based), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.line) {
            (Some(p), Some(l)) => write!(f, "{}:{l}: {}", p.display(), self.message),
            (Some(p), None) => write!(f, "{}: {}", p.display(), self.message),
            (None, _) => write!(f, "command line: {}", self.message),
        }
    }
}

/// The error a command stops with when its input fails validation.
#[derive(Debug, thiserror::Error)]
pub struct Invalid {
    /// Profile or cluster.
    pub kind: InputKind,
    /// The file given on the command line.
    pub path: PathBuf,
    /// Every problem found (at least one).
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let [one] = self.problems.as_slice() {
            return write!(f, "{one}");
        }
        write!(
            f,
            "{}: {} problems:",
            self.path.display(),
            self.problems.len()
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// What `mesobake validate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Profile or cluster.
    pub kind: InputKind,
    /// The file.
    pub file: PathBuf,
    /// The profile's or cluster's name, when it loaded.
    pub name: Option<String>,
    /// Whether no problem was found.
    pub valid: bool,
    /// The problems.
    pub problems: Vec<Problem>,
    /// Things allowed but probably wrong.
    pub warnings: Vec<String>,
}

/// Tells a profile from a cluster.toml by its top-level keys: a topology has `[network]`,
/// `[[node]]` or `[[group]]`, which no profile has.
pub fn detect(path: &Path) -> Result<InputKind> {
    let text = profile::read_config_file(path, "file")?;
    let Ok(t) = toml::from_str::<toml::Table>(&text) else {
        return Ok(InputKind::Profile);
    };
    let cluster = ["network", "node", "group", "ssh-keys"]
        .iter()
        .any(|k| t.contains_key(*k));
    Ok(if cluster {
        InputKind::Cluster
    } else {
        InputKind::Profile
    })
}

/// Strips a leading `path: ` from a message that will be printed after its path.
fn strip_path(msg: String, path: &Path) -> String {
    let prefix = format!("{}: ", path.display());
    match msg.strip_prefix(&prefix) {
        Some(rest) => rest.to_string(),
        None => msg,
    }
}

/// The problem a failed load is.
fn load_problem(path: &Path, e: &anyhow::Error) -> Problem {
    for c in e.chain() {
        if let Some(pe) = c.downcast_ref::<profile::ProfileError>() {
            return Problem {
                file: Some(shown(&pe.path)),
                line: pe.line,
                message: pe.message.clone(),
            };
        }
        if let Some(ce) = c.downcast_ref::<crate::cluster::ClusterError>() {
            return Problem {
                file: Some(ce.path.clone()),
                line: Some(ce.line),
                message: format!("{}key \"{}\": {}", ce.subject, ce.key, ce.message),
            };
        }
    }
    Problem {
        file: Some(path.to_owned()),
        line: None,
        message: strip_path(format!("{e:#}"), path),
    }
}

/// Loads a profile as `build` does; a failure is an [`Invalid`] error with its location.
pub fn load_profile(path: &Path, with: &[PathBuf]) -> Result<Profile> {
    profile::load(path, with).map_err(|e| invalid_profile(path, e))
}

/// A profile that did not load, as an [`Invalid`] error with its location.
pub fn invalid_profile(path: &Path, e: anyhow::Error) -> anyhow::Error {
    Invalid {
        kind: InputKind::Profile,
        path: path.to_owned(),
        problems: vec![load_problem(path, &e)],
    }
    .into()
}

/// Loads and checks a cluster.toml (roles looked up in `profiles`, in order); a failure
/// is an [`Invalid`] error with its location.
pub fn load_cluster(path: &Path, profiles: &[PathBuf]) -> Result<crate::cluster::Cluster> {
    crate::cluster::load_in(path, profiles).map_err(|e| {
        let mut p = load_problem(path, &e);
        if p.line.is_none() {
            // A schema error: the parser knows where.
            if let Ok(text) = profile::read_config_file(path, "cluster file") {
                if let Err(te) = toml::from_str::<crate::cluster::ClusterFile>(&text) {
                    p.line = te.span().map(|s| profile::line_of(&text, s.start));
                    p.message = te.message().trim_end().to_string();
                }
            }
        }
        Invalid {
            kind: InputKind::Cluster,
            path: path.to_owned(),
            problems: vec![p],
        }
        .into()
    })
}

/// `build`'s check before any work: every problem [`check_profile`] finds, as one error.
pub fn require(prof: &Profile, base_from_cli: bool) -> Result<()> {
    let problems = check_profile(prof, base_from_cli);
    if problems.is_empty() {
        return Ok(());
    }
    Err(Invalid {
        kind: InputKind::Profile,
        path: prof.path.clone(),
        problems,
    }
    .into())
}

/// `mesobake validate` on a profile.
pub fn validate_profile(path: &Path, with: &[PathBuf]) -> Report {
    let mut r = Report {
        kind: InputKind::Profile,
        file: path.to_owned(),
        name: None,
        valid: false,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    match profile::load(path, with) {
        Ok(p) => {
            r.name = Some(p.name.clone());
            r.problems = check_profile(&p, false);
        }
        Err(e) => r.problems.push(load_problem(path, &e)),
    }
    r.valid = r.problems.is_empty();
    r
}

/// `mesobake validate` on a cluster.toml: the topology checks, no seeds written.
pub fn validate_cluster(path: &Path, profiles: &[PathBuf]) -> Report {
    let mut r = Report {
        kind: InputKind::Cluster,
        file: path.to_owned(),
        name: None,
        valid: false,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    match load_cluster(path, profiles) {
        Ok(c) => {
            r.name = Some(c.name.clone());
            r.warnings = c.warnings.clone();
        }
        Err(e) => match e.downcast::<Invalid>() {
            Ok(inv) => r.problems = inv.problems,
            Err(e) => r.problems.push(load_problem(path, &e)),
        },
    }
    r.valid = r.problems.is_empty();
    r
}

/// A path as the user would like to read it: relative to the working directory when
/// it is under it (but not to `/`, where `tmp/x` would read as a relative path).
fn shown(p: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|d| d.canonicalize().ok())
        .filter(|d| d.parent().is_some())
        .and_then(|d| p.strip_prefix(&d).ok().map(Path::to_path_buf))
        .filter(|r| !r.as_os_str().is_empty())
        .unwrap_or_else(|| p.to_path_buf())
}

// The referring values of one profile file, with where they are written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct RefsFile {
    overlays: Option<Vec<Spanned<String>>>,
    packages: Option<PackagesRefs>,
    apt: Option<AptRefs>,
    base: Option<BaseRefs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PackagesRefs {
    debs: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AptRefs {
    sources: Option<Vec<SourceRefs>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SourceRefs {
    key: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct BaseRefs {
    name: Option<Spanned<String>>,
    sha256: Option<Spanned<String>>,
}

/// Where each referring value of a loaded profile was written: (what, value as the
/// loader resolved it) -> (file, line). Later files win, as they do in the merge.
#[derive(Debug, Default)]
struct Locations(BTreeMap<(&'static str, String), (PathBuf, usize)>);

impl Locations {
    fn of(prof: &Profile) -> Locations {
        let mut m = BTreeMap::new();
        for (file, _) in &prof.sources {
            let Ok(text) = profile::read_config_file(file, "profile") else {
                continue;
            };
            let Ok(refs) = toml::from_str::<RefsFile>(&text) else {
                continue;
            };
            let dir = file.parent().unwrap_or(Path::new("/"));
            let mut put = |what: &'static str, v: &Spanned<String>, path_like: bool| {
                let s = v.get_ref();
                let resolved = if path_like && !s.contains("://") && !Path::new(s).is_absolute() {
                    profile::lexical_normalize(&dir.join(s))
                        .to_string_lossy()
                        .into_owned()
                } else {
                    s.clone()
                };
                let line = profile::line_of(&text, v.span().start);
                m.insert((what, resolved), (shown(file), line));
            };
            for o in refs.overlays.iter().flatten() {
                put("overlay", o, true);
            }
            for d in refs.packages.iter().flat_map(|p| p.debs.iter().flatten()) {
                put("deb", d, true);
            }
            for s in refs.apt.iter().flat_map(|a| a.sources.iter().flatten()) {
                if let Some(k) = &s.key {
                    put("key", k, true);
                }
            }
            if let Some(b) = &refs.base {
                if let Some(n) = &b.name {
                    let s = n.get_ref();
                    let path_like = s.starts_with("./")
                        || s.starts_with("../")
                        || s.contains('/') && !s.contains("://");
                    put("base", n, path_like);
                }
                if let Some(h) = &b.sha256 {
                    put("sha256", h, false);
                }
            }
        }
        Locations(m)
    }

    fn problem(&self, what: &'static str, value: &str, message: String) -> Problem {
        match self.0.get(&(what, value.to_string())) {
            Some((f, l)) => Problem {
                file: Some(f.clone()),
                line: Some(*l),
                message,
            },
            None => Problem {
                file: None,
                line: None,
                message,
            },
        }
    }
}

/// Every problem with what a loaded profile refers to; empty when it can be built.
/// `base_from_cli`: the base was given with `--base` (problems with it name no file).
pub fn check_profile(prof: &Profile, base_from_cli: bool) -> Vec<Problem> {
    let loc = Locations::of(prof);
    let mut out = Vec::new();
    let mut locate = |what: &'static str, value: &str, msg: String| {
        let mut p = loc.problem(what, value, msg);
        if p.file.is_none() && !(what == "base" && base_from_cli) {
            p.file = Some(prof.path.clone());
        }
        out.push(p);
    };

    for o in &prof.overlays {
        let s = o.to_string_lossy();
        let shown_o = shown(o);
        match std::fs::metadata(o) {
            Err(_) => locate(
                "overlay",
                &s,
                format!("overlay {}: no such directory: create it, or remove it from `overlays`", shown_o.display()),
            ),
            Ok(m) if !m.is_dir() => locate(
                "overlay",
                &s,
                format!("overlay {} is not a directory: an overlay is a directory tree laid over the image root", shown_o.display()),
            ),
            Ok(_) => {}
        }
    }

    // Apt keys, of the sources this base uses (all of them when the family is not known
    // before the image is opened).
    let family = crate::base::named(&prof.base).map(|b| b.family);
    let mut keys_seen = Vec::new();
    for src in &prof.apt_sources {
        let applies = match (&src.family, family) {
            (None, _) | (_, None) => true,
            (Some(f), Some(crate::base::Family::Ubuntu)) => f == "ubuntu",
            (Some(f), Some(crate::base::Family::Debian)) => f == "debian",
        };
        if !applies || keys_seen.contains(&src.key) {
            continue;
        }
        keys_seen.push(src.key.clone());
        if let Err(m) = check_key(Path::new(&src.key)) {
            locate(
                "key",
                &src.key,
                format!(
                    "apt source {:?}: key {}: {m}",
                    src.name,
                    shown(Path::new(&src.key)).display()
                ),
            );
        }
    }

    for d in &prof.debs {
        let s = d.to_string_lossy();
        for m in check_debs(d) {
            locate("deb", &s, format!("[packages] debs: {m}"));
        }
    }

    // The base, once: the same rules `build` obtains it by.
    let opts = crate::base::BaseOptions {
        sha256: prof.base_sha256.clone(),
        sha256sums: prof.base_sha256sums.clone(),
        mirror: None,
    };
    if let Err(e) = crate::base::check_spec(&prof.base, &opts) {
        let fix = if base_from_cli {
            ""
        } else {
            " (fix [base] name)"
        };
        locate("base", &prof.base, format!("{e:#}{fix}"));
    } else if crate::base::named(&prof.base).is_none()
        && !prof.base.contains("://")
        && !Path::new(&prof.base).is_file()
    {
        locate(
            "base",
            &prof.base,
            format!(
                "base {}: not a regular file: a local base is a disk image (qcow2 or raw)",
                prof.base
            ),
        );
    }
    if let Some(h) = &prof.base_sha256 {
        if let Err(e) = crate::base::cache::normalize_sha256(h) {
            locate("sha256", h, format!("[base] sha256: {e:#}"));
        }
    }
    out
}

/// Checks that `path` is an OpenPGP public key file (armoured or binary) with
/// `gpg --show-keys` in a throwaway home. No gpg: not checked (a warning).
fn check_key(path: &Path) -> std::result::Result<(), String> {
    match std::fs::metadata(path) {
        Err(_) => {
            return Err("not found: fetch the repository's public key there (ASCII-armoured or binary), or remove the source".into())
        }
        Ok(m) if !m.is_file() => return Err("not a regular file".into()),
        Ok(_) => {}
    }
    let Ok(home) = tempfile::tempdir() else {
        return Ok(());
    };
    let r = crate::run::Cmd::new("gpg")
        .env("GNUPGHOME", home.path())
        .args(["--batch", "--no-tty", "--show-keys", "--with-colons"])
        .arg(path)
        .read();
    match r {
        Ok(out) if out.lines().any(|l| l.starts_with("pub:")) => Ok(()),
        Ok(_) => Err("not an OpenPGP public key: gpg --show-keys finds no public key in it".into()),
        Err(e) if e.is::<crate::run::CommandFailed>() => Err(format!(
            "not an OpenPGP public key: gpg --show-keys cannot read it ({})",
            first_line_of_tail(&e)
        )),
        Err(e) => {
            eprintln!(
                "mesobake: warning: {}: apt key not checked: {e:#}",
                path.display()
            );
            Ok(())
        }
    }
}

fn first_line_of_tail(e: &anyhow::Error) -> String {
    match e.downcast_ref::<crate::run::CommandFailed>() {
        Some(c) => c
            .stderr_tail
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or(&c.status)
            .trim()
            .to_string(),
        None => format!("{e:#}"),
    }
}

/// Checks a `[packages] debs` entry: a .deb, or a directory holding at least one.
fn check_debs(path: &Path) -> Vec<String> {
    let shown_path = shown(path);
    let s = shown_path.display();
    match std::fs::metadata(path) {
        Err(_) => vec![format!(
            "{s}: no such .deb file or directory: build or fetch it, or remove it from the list"
        )],
        Ok(m) if m.is_dir() => {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            if found.is_empty() {
                return vec![format!("{s}: no .deb files in this directory")];
            }
            found.iter().filter_map(|f| check_deb(f).err()).collect()
        }
        Ok(m) if m.is_file() => check_deb(path).err().into_iter().collect(),
        Ok(_) => vec![format!("{s}: not a regular file or a directory")],
    }
}

/// Checks that one file is a Debian package: an ar archive whose first member is
/// `debian-binary`, which `dpkg-deb --field` reads (when dpkg-deb is installed).
fn check_deb(path: &Path) -> std::result::Result<(), String> {
    use std::io::Read;
    let shown_path = shown(path);
    let s = shown_path.display();
    let mut head = [0u8; 8 + 16];
    let n = std::fs::File::open(path)
        .and_then(|f| f.take(head.len() as u64).read(&mut head))
        .map_err(|e| format!("{s}: {e}"))?;
    if n < head.len() || &head[..8] != b"!<arch>\n" || !head[8..].starts_with(b"debian-binary") {
        return Err(format!(
            "{s} is not a Debian package (.deb): no debian-binary member"
        ));
    }
    let r = crate::run::Cmd::new("dpkg-deb")
        .args(["--field"])
        .arg(path)
        .arg("Package")
        .read();
    match r {
        Ok(name) if !name.trim().is_empty() => Ok(()),
        Ok(_) => Err(format!("{s}: dpkg-deb finds no Package field in it")),
        Err(e) if e.is::<crate::run::CommandFailed>() => Err(format!(
            "{s} is not a readable Debian package: dpkg-deb: {}",
            first_line_of_tail(&e)
        )),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const HEAD: &str = "[role]\nservices = [\"agent\"]\n[packages]\ninstall = [\"mesos\"]\n";

    #[test]
    fn a_missing_overlay_names_its_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "p.toml",
            &format!("{HEAD}[base]\nname = \"debian-12\"\n\n[output]\n\n\n\n"),
        );
        let inc = write(d.path(), "inc.toml", "\n\noverlays = [\"nope\"]\n");
        let prof = profile::load(&p, &[inc]).unwrap();
        let probs = check_profile(&prof, false);
        assert_eq!(probs.len(), 1, "{probs:?}");
        assert_eq!(probs[0].line, Some(3));
        assert!(probs[0].file.as_ref().unwrap().ends_with("inc.toml"));
        assert!(probs[0].message.contains("no such directory"), "{probs:?}");
    }

    #[test]
    fn detect_tells_a_topology_from_a_profile() {
        let d = tempfile::tempdir().unwrap();
        let c = write(
            d.path(),
            "c.toml",
            "name = \"x\"\n[network]\ncidr = \"10.0.0.0/24\"\n",
        );
        let p = write(d.path(), "p.toml", HEAD);
        assert_eq!(detect(&c).unwrap(), InputKind::Cluster);
        assert_eq!(detect(&p).unwrap(), InputKind::Profile);
    }
}
