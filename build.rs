//! Embeds the shipped profiles, includes, overlays and keys into the binary (see
//! `src/builtin.rs`), with each file's mode, so that an installed mesobake needs no
//! checkout. Only the compile reads these directories; the binary never does.
//!
//! Also records the git commit being built as `MESOBAKE_REVISION`, for the build
//! manifest (`unknown` outside a git checkout of this crate).

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The trees embedded, relative to the crate root.
const TREES: &[&str] = &["profiles", "overlays", "keys"];

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf, u32, bool)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        // Normalised, so the umask of the checkout does not matter: 0755 for directories and
        // executables, 0644 for the rest.
        let exec = md.is_dir() || md.permissions().mode() & 0o111 != 0;
        let mode = if exec { 0o755 } else { 0o644 };
        if md.is_dir() {
            out.push((rel, p.clone(), mode, true));
            walk(root, &p, out);
        } else if md.is_file() {
            out.push((rel, p, mode, false));
        } else {
            panic!(
                "{}: only regular files and directories can be built in",
                p.display()
            );
        }
    }
}

/// Runs git in `root`; its trimmed stdout when it succeeds.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The commit checked out at `root`, and the files whose change means another commit:
/// HEAD, and the branch it names (its loose ref, or packed-refs when it is packed).
/// Watching only those keeps incremental builds incremental; a missing file would make
/// cargo rerun this script on every build, so only existing ones are named.
fn git_revision(root: &Path) -> (String, Vec<PathBuf>) {
    const UNKNOWN: &str = "unknown";
    if let Ok(r) = std::env::var("MESOBAKE_REVISION") {
        // A packager building from a tarball can say which commit it is.
        return (r, Vec::new());
    }
    // Only a checkout of this crate itself: a crate unpacked inside some other
    // repository must not take that repository's commit.
    let top = git(root, &["rev-parse", "--show-toplevel"]).map(PathBuf::from);
    let canon = |p: &Path| p.canonicalize().ok();
    if top.as_deref().and_then(canon).is_none() || top.as_deref().and_then(canon) != canon(root) {
        return (UNKNOWN.into(), Vec::new());
    }
    let Some(rev) = git(root, &["rev-parse", "--verify", "HEAD"]) else {
        return (UNKNOWN.into(), Vec::new());
    };
    let path_of = |p: &str| git(root, &["rev-parse", "--git-path", p]).map(|g| root.join(g));
    let mut watch: Vec<PathBuf> = path_of("HEAD").into_iter().collect();
    if let Some(branch) = git(root, &["symbolic-ref", "-q", "HEAD"]) {
        match path_of(&branch).filter(|p| p.is_file()) {
            Some(loose) => watch.push(loose),
            None => watch.extend(path_of("packed-refs")),
        }
    }
    watch.retain(|p| p.is_file());
    (rev, watch)
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let (revision, watch) = git_revision(&root);
    println!("cargo:rustc-env=MESOBAKE_REVISION={revision}");
    println!("cargo:rerun-if-env-changed=MESOBAKE_REVISION");
    for w in watch {
        println!("cargo:rerun-if-changed={}", w.display());
    }
    let mut files = Vec::new();
    for t in TREES {
        let dir = root.join(t);
        println!("cargo:rerun-if-changed={}", dir.display());
        files.push((t.to_string(), dir.clone(), 0o755, true));
        walk(&root, &dir, &mut files);
    }
    let mut src =
        String::from("/// The built-in tree: (path, mode, contents; None for a directory).\n");
    src += "pub const TREE: &[(&str, u32, Option<&[u8]>)] = &[\n";
    for (rel, abs, mode, is_dir) in &files {
        if *is_dir {
            writeln!(src, "    ({rel:?}, {mode:#o}, None),").unwrap();
        } else {
            writeln!(
                src,
                "    ({rel:?}, {mode:#o}, Some(include_bytes!({:?}))),",
                abs.to_string_lossy()
            )
            .unwrap();
        }
    }
    src += "];\n";
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_tree.rs");
    std::fs::write(out, src).unwrap();
}
