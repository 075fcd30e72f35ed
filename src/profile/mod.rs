//! Role profiles: the TOML files that say what goes into an image.
//!
//! A profile may `include` other files (shared bases, package sources, cluster name).
//! Every file is parsed on its own against [`ProfileFile`] with `deny_unknown_fields`, so
//! an unknown or mistyped key is reported with that file's path, line and column. The
//! files are then merged (includes first, in order, then the profile, then any `--with`
//! files), tables key by key and everything else replaced, and resolved into a
//! [`Profile`], the validated form the builder works from.

mod model;

pub use model::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// A problem in one profile file, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ProfileError {
    /// The file the problem is in.
    pub path: PathBuf,
    /// The line (1-based), when the problem is at one place.
    pub line: Option<usize>,
    /// What is wrong, with line and column where the parser knows them.
    pub message: String,
}

/// The largest profile or topology file read, in bytes. Real ones are a few KiB; the
/// limit keeps a mistaken path (a disk image, `/dev/zero`) from being read whole.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads a profile or topology file: only a regular file (a FIFO, socket or device is
/// refused before it is opened, and the open cannot block), at most
/// [`MAX_CONFIG_BYTES`]. `what` names the file's kind in errors ("profile").
pub fn read_config_file(path: &Path, what: &str) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let here = path.display();
    let refuse = |ft: std::fs::FileType| -> Result<()> {
        if !ft.is_file() {
            bail!("{what} {here}: not a regular file");
        }
        Ok(())
    };
    let md = std::fs::metadata(path).with_context(|| format!("reading {what} {here}"))?;
    refuse(md.file_type())?;
    // O_NONBLOCK: if the path was swapped for a FIFO since the check, the open still
    // returns at once and the check on the descriptor refuses it.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .with_context(|| format!("reading {what} {here}"))?;
    let md = f
        .metadata()
        .with_context(|| format!("reading {what} {here}"))?;
    refuse(md.file_type())?;
    let too_big = || anyhow::anyhow!("{what} {here}: larger than {MAX_CONFIG_BYTES} bytes");
    if md.len() > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {what} {here}"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{what} {here}: not UTF-8 text"))
}

/// Loads `path`, its includes and the `extra` files layered on top (`--with`), and resolves
/// them into a validated profile.
pub fn load(path: &Path, extra: &[PathBuf]) -> Result<Profile> {
    let mut files = Vec::new();
    let mut stack = Vec::new();
    collect(path, &mut files, &mut stack)?;
    for e in extra {
        collect(e, &mut files, &mut stack)?;
    }
    let mut merged = toml::Table::new();
    let mut sources = Vec::new();
    for f in &files {
        merge(&mut merged, f.table.clone());
        sources.push((f.path.clone(), f.sha256.clone()));
    }
    merged.remove("include");
    let file: ProfileFile = toml::Value::Table(merged)
        .try_into()
        .map_err(|e| anyhow::anyhow!("merging {}: {e}", path.display()))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "profile".into());
    Profile::resolve(name, path, file, sources)
}

/// One parsed file with the directory its relative paths are resolved from.
struct Loaded {
    path: PathBuf,
    sha256: String,
    table: toml::Table,
}

fn collect(path: &Path, out: &mut Vec<Loaded>, stack: &mut Vec<PathBuf>) -> Result<()> {
    let canon = path
        .canonicalize()
        .with_context(|| format!("reading profile {}: file not found", path.display()))?;
    if stack.contains(&canon) {
        bail!(ProfileError {
            path: path.to_owned(),
            line: None,
            message: format!(
                "include cycle: {}",
                stack
                    .iter()
                    .chain([&canon])
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
        });
    }
    let text = read_config_file(&canon, "profile")?;
    // Parse against the schema first: that is what gives file, line and key for any
    // unknown or mistyped setting.
    let parsed: ProfileFile = toml::from_str(&text).map_err(|e| ProfileError {
        path: path.to_owned(),
        line: e.span().map(|s| line_of(&text, s.start)),
        message: e.to_string().trim_end().to_string(),
    })?;
    let mut table: toml::Table = toml::from_str(&text).expect("already parsed once");
    absolutize_paths(&mut table, canon.parent().unwrap_or(Path::new("/")));
    stack.push(canon.clone());
    for inc in parsed.include.unwrap_or_default() {
        let inc_path = canon.parent().unwrap_or(Path::new("/")).join(&inc);
        collect(&inc_path, out, stack)
            .with_context(|| format!("included from {}", path.display()))?;
    }
    stack.pop();
    let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    out.push(Loaded {
        path: canon,
        sha256,
        table,
    });
    Ok(())
}

/// The line (1-based) of a byte offset in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Relative paths in a file mean "relative to that file", so they are made absolute before
/// the files are merged and the origin is lost.
fn absolutize_paths(table: &mut toml::Table, dir: &Path) {
    let fix = |v: &mut toml::Value| {
        if let toml::Value::String(s) = v {
            if !s.contains("://") && !Path::new(s.as_str()).is_absolute() {
                *s = lexical_normalize(&dir.join(&*s))
                    .to_string_lossy()
                    .into_owned();
            }
        }
    };
    if let Some(toml::Value::Table(pk)) = table.get_mut("packages") {
        if let Some(toml::Value::Array(debs)) = pk.get_mut("debs") {
            debs.iter_mut().for_each(fix);
        }
    }
    if let Some(toml::Value::Array(ov)) = table.get_mut("overlays") {
        ov.iter_mut().for_each(fix);
    }
    if let Some(toml::Value::Table(apt)) = table.get_mut("apt") {
        if let Some(toml::Value::Array(srcs)) = apt.get_mut("sources") {
            for s in srcs {
                if let Some(k) = s.as_table_mut().and_then(|t| t.get_mut("key")) {
                    fix(k);
                }
            }
        }
    }
    if let Some(toml::Value::Table(base)) = table.get_mut("base") {
        if let Some(v @ toml::Value::String(_)) = base.get_mut("name") {
            // Only a path-looking base is a path; "debian-12" is a name.
            if v.as_str().is_some_and(|s| {
                s.starts_with("./") || s.starts_with("../") || s.contains('/') && !s.contains("://")
            }) {
                fix(v);
            }
        }
    }
}

/// Removes `.` and `name/..` pairs without touching the filesystem, so paths in plans and
/// errors read as the user would write them.
pub(crate) fn lexical_normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir
                if matches!(
                    out.components().next_back(),
                    Some(std::path::Component::Normal(_))
                ) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Later tables merge into earlier ones key by key; any other value replaces.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// The profiles shipped in a directory, with their one-line descriptions.
pub fn list(dir: &Path) -> Result<Vec<(String, PathBuf, String)>> {
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("listing profiles in {}", dir.display()))?;
    for e in entries {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let prof = load(&p, &[]).with_context(|| format!("loading {}", p.display()))?;
            out.push((prof.name.clone(), p, prof.description.clone()));
        }
    }
    out.sort();
    Ok(out)
}

/// Renders flag maps for the plan.
pub(crate) fn fmt_map(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
