//! Where profiles come from, and `mesobake init`.
//!
//! A profile named on the command line (`build master`, `--with offline-standins`, a
//! topology's `role = "master"`) is looked up along one path, first match wins:
//!
//! 1. `--profiles DIR` (the global flag);
//! 2. for `seed` and `lab`, `profiles/` beside the topology file;
//! 3. `./profiles`;
//! 4. `$XDG_CONFIG_HOME/mesobake/profiles` (`~/.config/mesobake/profiles`);
//! 5. `/etc/mesobake/profiles`;
//! 6. the built-in profiles ([`crate::builtin`]).
//!
//! An argument that contains `/` or ends in `.toml` is a path and is not looked up.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::profile::{self, Profile};

/// Where a profiles directory on the lookup path comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// `--profiles DIR`.
    Flag,
    /// `profiles/` beside the topology file (`seed`, `lab`).
    Topology,
    /// `./profiles`.
    Cwd,
    /// `$XDG_CONFIG_HOME/mesobake/profiles`.
    User,
    /// `/etc/mesobake/profiles`.
    System,
    /// Built into the binary.
    Builtin,
}

/// The lookup path, for `--help`.
pub const LOOKUP_HELP: &str = "\
Profiles are looked up by name along this path, first match wins:
  1. --profiles DIR
  2. for seed and lab: profiles/ beside the topology file
  3. ./profiles
  4. $XDG_CONFIG_HOME/mesobake/profiles (default ~/.config/mesobake/profiles)
  5. /etc/mesobake/profiles
  6. the built-in profiles
A PROFILE with a '/' or ending in .toml is a file and is not looked up.";

/// The system-wide profiles directory.
pub const SYSTEM_DIR: &str = "/etc/mesobake/profiles";

/// One directory on the lookup path.
#[derive(Debug, Clone, Serialize)]
pub struct Dir {
    /// Where it comes from.
    pub origin: Origin,
    /// The directory.
    pub path: PathBuf,
}

impl Dir {
    /// How `mesobake profiles` names it.
    pub fn label(&self) -> String {
        match self.origin {
            Origin::Builtin => "built-in".into(),
            Origin::Cwd => "./profiles".into(),
            _ => self.path.display().to_string(),
        }
    }
}

static FLAG: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Records the global `--profiles DIR` (once, at start).
pub fn set_flag(dir: Option<PathBuf>) {
    let _ = FLAG.set(dir);
}

/// The user's profiles directory: `$XDG_CONFIG_HOME/mesobake/profiles`, else
/// `$HOME/.config/mesobake/profiles`.
pub fn user_dir() -> Option<PathBuf> {
    crate::xdg::config_home().map(|c| c.join("mesobake").join("profiles"))
}

/// Where apt keys that built-in profiles name are looked for when the built-in tree does
/// not carry them (it ships none): `$XDG_CONFIG_HOME/mesobake/keys`, `/etc/mesobake/keys`.
pub fn key_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = crate::xdg::config_home()
        .map(|c| c.join("mesobake").join("keys"))
        .into_iter()
        .collect();
    v.push(PathBuf::from("/etc/mesobake/keys"));
    v
}

/// Whether a command-line profile argument is a path rather than a name.
pub fn is_path(arg: &Path) -> bool {
    let s = arg.as_os_str().to_string_lossy();
    s.contains('/') || s.ends_with(".toml")
}

/// The lookup path.
#[derive(Debug, Clone)]
pub struct Search {
    /// The directories before the built-ins, in order (only those that exist).
    dirs: Vec<Dir>,
}

impl Search {
    /// The lookup path for this process (`--profiles` from [`set_flag`]), with the
    /// topology's own `profiles/` when a topology file is given.
    pub fn new(topology: Option<&Path>) -> Result<Search> {
        let flag = FLAG.get().cloned().flatten();
        Search::with(flag.as_deref(), topology)
    }

    /// The lookup path for an explicit `--profiles` (None: none given).
    pub fn with(flag: Option<&Path>, topology: Option<&Path>) -> Result<Search> {
        let mut cands = Vec::new();
        if let Some(f) = flag {
            if !f.is_dir() {
                bail!("--profiles {}: no such directory", f.display());
            }
            cands.push(Dir {
                origin: Origin::Flag,
                path: f.to_owned(),
            });
        }
        if let Some(t) = topology {
            let parent = t.parent().filter(|p| !p.as_os_str().is_empty());
            cands.push(Dir {
                origin: Origin::Topology,
                path: parent.unwrap_or(Path::new(".")).join("profiles"),
            });
        }
        cands.push(Dir {
            origin: Origin::Cwd,
            path: PathBuf::from("profiles"),
        });
        if let Some(u) = user_dir() {
            cands.push(Dir {
                origin: Origin::User,
                path: u,
            });
        }
        cands.push(Dir {
            origin: Origin::System,
            path: PathBuf::from(SYSTEM_DIR),
        });
        // Only directories that exist, each once (./profiles is often also the
        // topology's, or the flag's).
        let mut seen = Vec::new();
        let mut dirs = Vec::new();
        for d in cands {
            let Ok(canon) = d.path.canonicalize() else {
                continue;
            };
            if !canon.is_dir() || seen.contains(&canon) {
                continue;
            }
            seen.push(canon);
            dirs.push(d);
        }
        Ok(Search { dirs })
    }

    /// Every directory on the path, the built-ins (materialised) last.
    pub fn dirs(&self) -> Result<Vec<Dir>> {
        let mut v = self.dirs.clone();
        v.push(Dir {
            origin: Origin::Builtin,
            path: crate::builtin::profiles_dir()?,
        });
        Ok(v)
    }

    /// The directories only, for the cluster loader.
    pub fn paths(&self) -> Result<Vec<PathBuf>> {
        Ok(self.dirs()?.into_iter().map(|d| d.path).collect())
    }

    /// Finds `rel` (`NAME.toml` or `include/NAME.toml`) along the path.
    fn find_file(&self, rel: &str) -> Result<Option<(Dir, PathBuf)>> {
        for d in &self.dirs {
            let p = d.path.join(rel);
            if p.is_file() {
                let p = std::path::absolute(&p).unwrap_or(p);
                return Ok(Some((d.clone(), p)));
            }
        }
        if crate::builtin::file(&format!("profiles/{rel}")).is_some() {
            let d = Dir {
                origin: Origin::Builtin,
                path: crate::builtin::profiles_dir()?,
            };
            let p = d.path.join(rel);
            return Ok(Some((d, p)));
        }
        Ok(None)
    }

    fn not_found(&self, what: &str, name: &str) -> anyhow::Error {
        let names: Vec<String> = self
            .list()
            .map(|l| {
                let mut n: Vec<String> = l.into_iter().map(|e| e.name).collect();
                n.sort();
                n.dedup();
                n
            })
            .unwrap_or_default();
        let mut looked: Vec<String> = self
            .dirs
            .iter()
            .map(|d| d.path.display().to_string())
            .collect();
        looked.push("the built-ins".into());
        anyhow::anyhow!(
            "no {what} {name:?}: looked in {} (profiles: {}; `mesobake profiles` lists them, a path with '/' or ending in .toml is taken as it is)",
            looked.join(", "),
            names.join(", ")
        )
    }

    /// The file of profile `name` (or `arg` itself when it is a path).
    pub fn profile(&self, arg: &Path) -> Result<PathBuf> {
        if is_path(arg) {
            return Ok(arg.to_owned());
        }
        let name = arg.to_string_lossy();
        check_name(&name)?;
        match self.find_file(&format!("{name}.toml"))? {
            Some((_, p)) => Ok(p),
            None => Err(self.not_found("profile", &name)),
        }
    }

    /// The file a `--with NAME` means: `include/NAME.toml`, else `NAME.toml`, along the
    /// path (or `arg` itself when it is a path).
    pub fn include(&self, arg: &Path) -> Result<PathBuf> {
        if is_path(arg) {
            return Ok(arg.to_owned());
        }
        let name = arg.to_string_lossy();
        check_name(&name)?;
        if let Some((_, p)) = self.find_file(&format!("include/{name}.toml"))? {
            return Ok(p);
        }
        match self.find_file(&format!("{name}.toml"))? {
            Some((_, p)) => Ok(p),
            None => Err(self.not_found("profile or include", &name)),
        }
    }

    /// Every profile on the path, in lookup order, a later one of the same name marked
    /// shadowed.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let mut out: Vec<Listed> = Vec::new();
        for d in self.dirs()? {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&d.path)
                .with_context(|| format!("listing profiles in {}", d.path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect();
            files.sort();
            for p in files {
                let name = p
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let shadowed = out.iter().any(|e| e.name == name);
                let (description, error) = match profile::load(&p, &[]) {
                    Ok(prof) => (prof.description, None),
                    Err(e) => (String::new(), Some(format!("{e:#}"))),
                };
                out.push(Listed {
                    name,
                    source: d.label(),
                    origin: d.origin,
                    path: p,
                    description,
                    shadowed,
                    error,
                });
            }
        }
        // By name; a name's entries stay in lookup order, the one that wins first.
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// A profile name: what `NAME.toml` can be, without a path.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\0']) {
        bail!("{name:?} is not a profile name");
    }
    Ok(())
}

/// One line of `mesobake profiles`.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// The profile name (its file stem).
    pub name: String,
    /// Where it was found: `--profiles`' path, `./profiles`, a path, or `built-in`.
    pub source: String,
    /// The kind of place it was found.
    pub origin: Origin,
    /// Its file.
    pub path: PathBuf,
    /// Its one-line description.
    pub description: String,
    /// An earlier directory on the path has a profile of the same name, which wins.
    pub shadowed: bool,
    /// Why it does not load, if it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The `mesobake profiles` table: name, source, description, each column as wide as
/// its content.
pub fn table(rows: &[Listed]) -> String {
    let src = |r: &Listed| {
        if r.shadowed {
            format!("{} (shadowed)", r.source)
        } else {
            r.source.clone()
        }
    };
    let wn = rows
        .iter()
        .map(|r| r.name.len())
        .chain([4])
        .max()
        .unwrap_or(4);
    let ws = rows
        .iter()
        .map(|r| src(r).len())
        .chain([6])
        .max()
        .unwrap_or(6);
    let mut s = format!("{:<wn$}  {:<ws$}  DESCRIPTION\n", "NAME", "SOURCE");
    for r in rows {
        let d = match &r.error {
            // The table keeps one line per profile: the first line of the error.
            Some(e) => format!("error: {}", e.lines().next().unwrap_or_default()),
            None => r.description.clone(),
        };
        s += format!("{:<wn$}  {:<ws$}  {d}", r.name, src(r)).trim_end();
        s += "\n";
    }
    s
}

/// Loads a profile named or given on the command line with its `--with` files, along
/// the lookup path, and settles what the built-in tree cannot carry: apt keys are taken
/// from [`key_dirs`], and local packages it names outside itself are refused clearly.
pub fn load_profile(search: &Search, arg: &Path, with: &[PathBuf]) -> Result<Profile> {
    let path = search.profile(arg)?;
    let with: Vec<PathBuf> = with
        .iter()
        .map(|w| search.include(w))
        .collect::<Result<_>>()?;
    let mut prof = profile::load(&path, &with)?;
    settle_builtin(&mut prof)?;
    Ok(prof)
}

fn settle_builtin(prof: &mut Profile) -> Result<()> {
    if !prof
        .sources
        .iter()
        .any(|(f, _)| crate::builtin::contains(f))
    {
        return Ok(());
    }
    let root = crate::builtin::root()?;
    for d in &prof.debs {
        if d.starts_with(root) && !d.exists() {
            let rel = d.strip_prefix(root).unwrap_or(d);
            bail!(
                "{}: the built-in profiles take local packages from {}, which exists only in a mesobake checkout (ci/standins/build.sh makes the stand-ins there). Build from the checkout, or write an editable copy with `mesobake init DIR` and point [packages] debs at your .debs",
                prof.name,
                rel.display()
            );
        }
    }
    for s in &mut prof.apt_sources {
        let k = Path::new(&s.key);
        if k.starts_with(root) && !k.exists() {
            if let Some(file) = k.file_name() {
                if let Some(found) = key_dirs()
                    .into_iter()
                    .map(|d| d.join(file))
                    .find(|p| p.is_file())
                {
                    s.key = found.to_string_lossy().into_owned();
                }
            }
        }
    }
    Ok(())
}

/// `mesobake init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The project directory (created if missing; must be empty unless --force).
    pub dir: PathBuf,
    /// Write into a non-empty directory (an existing file is still never overwritten).
    #[arg(long)]
    pub force: bool,
}

/// Runs `mesobake init`; returns the exit code.
pub fn init_cmd(a: &InitArgs, json: bool) -> Result<i32> {
    let r = init(&a.dir, a.force)?;
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for f in &r.files {
            crate::outln!("wrote {}", f.display());
        }
        crate::outln!(
            "next: cd {} && mesobake build master-slave --dry-run",
            a.dir.display()
        );
    }
    Ok(0)
}

/// What `mesobake init` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Init {
    /// The project directory.
    pub dir: PathBuf,
    /// Every file written.
    pub files: Vec<PathBuf>,
}

/// The example topology `init` writes: three masters and an agent group, valid for
/// `mesobake seed` with the project's profiles.
pub const EXAMPLE_CLUSTER: &str = r#"# An example topology: three masters and a group of agents. Edit the names and addresses,
# then: mesobake seed cluster.toml --out seeds/   (or: mesobake lab up cluster.toml)
name = "example"
# ssh-keys = ["ssh-ed25519 AAAA... you@example"]

[network]
cidr = "10.20.0.0/24"
gateway = "10.20.0.1"
dns = ["10.20.0.1"]

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

[[group]]            # autoscaling agents: one user-data for any number of instances
name = "workers"
role = "slave-only"
lab-count = 1
"#;

const README_STUB: &str = r#"# A mesobake project

Written by `mesobake init`. mesobake finds the profiles here when it runs in this
directory (`./profiles`), or anywhere with `--profiles PATH/profiles`.

- `profiles/`: the role profiles (`master`, `master-slave`, `slave-only`) and
  `profiles/include/` (settings they share, package sources, the offline variant).
- `overlays/`: files laid over every image's root.
- `keys/`: apt repository keys the profiles pin. Fetch AVENTER's key before a real build:
  `curl -fsSL https://www.aventer.biz/assets/support_aventer.asc -o keys/aventer.asc`
- `debs/`: local .deb files for `--with offline-standins` (empty here).
- `cluster.toml`: an example topology for `mesobake seed` and `mesobake lab`.

```sh
mesobake profiles                                # what is here, and what it shadows
mesobake build master-slave --dry-run            # the plan
sudo mesobake build master-slave                 # out/master-slave.qcow2
mesobake seed cluster.toml --out seeds/
```
"#;

/// The offline include's local packages, as shipped (they point into a checkout) and
/// as `init` writes them.
const STANDINS_DEBS: (&str, &str) = (
    "debs = [\"../../ci/standins/out\"]",
    "debs = [\"../../debs\"]",
);

/// The files `init` writes, relative to the project, with their modes and contents.
fn project_files() -> Vec<(String, u32, Option<Vec<u8>>)> {
    let mut v: Vec<(String, u32, Option<Vec<u8>>)> = crate::builtin::entries()
        .map(|e| {
            let c = e.contents.map(|c| {
                if e.path == "profiles/include/offline-standins.toml" {
                    String::from_utf8_lossy(c)
                        .replace(STANDINS_DEBS.0, STANDINS_DEBS.1)
                        .into_bytes()
                } else {
                    c.to_vec()
                }
            });
            (e.path.to_string(), e.mode, c)
        })
        .collect();
    v.push(("debs".into(), 0o755, None));
    v.push((
        "debs/README.md".into(),
        0o644,
        Some(
            b"Local .deb files that profiles/include/offline-standins.toml offers to apt.\n"
                .to_vec(),
        ),
    ));
    v.push(("cluster.toml".into(), 0o644, Some(EXAMPLE_CLUSTER.into())));
    v.push(("README.md".into(), 0o644, Some(README_STUB.into())));
    v
}

/// `mesobake init DIR`: writes an editable project. A non-empty `dir` is refused unless
/// `force`; even then no existing file is overwritten (all are checked before any is
/// written).
pub fn init(dir: &Path, force: bool) -> Result<Init> {
    if dir.exists() {
        if !dir.is_dir() {
            bail!("{}: exists and is not a directory", dir.display());
        }
        let non_empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some();
        if non_empty && !force {
            bail!(
                "{} is not empty: init writes a new project into an empty or new directory (--force adds the project's files beside what is there, still never overwriting one)",
                dir.display()
            );
        }
    }
    let files = project_files();
    let clash: Vec<String> = files
        .iter()
        .filter(|(rel, _, c)| {
            let p = dir.join(rel);
            match c {
                Some(_) => p.symlink_metadata().is_ok(),
                None => p.symlink_metadata().is_ok_and(|m| !m.is_dir()),
            }
        })
        .map(|(rel, _, _)| rel.clone())
        .collect();
    if !clash.is_empty() {
        bail!(
            "{}: would overwrite {}; nothing was written (move them away, or init another directory)",
            dir.display(),
            clash.join(", ")
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (rel, mode, contents) in files {
        written.extend(crate::builtin::write_entry(
            dir,
            &rel,
            mode,
            contents.as_deref(),
            false,
        )?);
    }
    Ok(Init {
        dir: dir.to_owned(),
        files: written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert!(!is_path(Path::new("master")));
        assert!(is_path(Path::new("profiles/master.toml")));
        assert!(is_path(Path::new("master.toml")));
        assert!(is_path(Path::new("./master")));
        assert!(check_name("..").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("master-slave").is_ok());
    }

    #[test]
    fn init_rewrites_the_standins_debs_and_writes_everything() {
        let shipped = String::from_utf8_lossy(
            crate::builtin::file("profiles/include/offline-standins.toml").unwrap(),
        )
        .into_owned();
        assert!(
            shipped.contains(STANDINS_DEBS.0),
            "offline-standins.toml no longer says {}: update STANDINS_DEBS",
            STANDINS_DEBS.0
        );
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("p");
        let r = init(&d, false).unwrap();
        assert!(r.files.iter().any(|f| f.ends_with("cluster.toml")));
        let inc =
            std::fs::read_to_string(d.join("profiles/include/offline-standins.toml")).unwrap();
        assert!(inc.contains(STANDINS_DEBS.1));
        assert!(d.join("debs").is_dir());
        // Non-empty: refused; --force still overwrites nothing.
        assert!(init(&d, false)
            .unwrap_err()
            .to_string()
            .contains("not empty"));
        let e = init(&d, true).unwrap_err().to_string();
        assert!(e.contains("would overwrite"), "{e}");
        // The example topology is valid with the project's profiles.
        crate::cluster::load(&d.join("cluster.toml"), &d.join("profiles")).unwrap();
    }
}
