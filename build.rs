//! Embeds the shipped profiles, includes, overlays and keys into the binary (see
//! `src/builtin.rs`), with each file's mode, so that an installed mesobake needs no
//! checkout. Only the compile reads these directories; the binary never does.

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

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
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
