//! What licence a package declares, from its Debian copyright file.
//!
//! dpkg itself records no licence. Debian packages that use the machine-readable
//! copyright format (DEP-5: a `Format:` header paragraph, then `Files:` paragraphs each
//! with a `License:` field) say it in `/usr/share/doc/PACKAGE/copyright`. The licence of
//! the `Files: *` paragraph is the package's; without one, every distinct licence the
//! file names is. A file in any other form says nothing this can read: the licence stays
//! unknown rather than guessed.

use crate::image::ImageRoot;

/// Copyright files larger than this are not read (the largest in Debian are ~1 MiB).
const MAX_COPYRIGHT_BYTES: u64 = 4 << 20;

/// The licence `package`'s copyright file in the image declares, as a DEP-5 licence
/// expression (`GPL-2+ or Artistic`; several joined with `, and `), or None when the
/// file is missing, not DEP-5, or names none. Read inside the image root: links resolve
/// as in the guest and never leave it.
pub fn declared_license(root: &ImageRoot, package: &str) -> Option<String> {
    if package.is_empty() || package.contains('/') || package.starts_with('.') {
        return None;
    }
    let rel = format!("usr/share/doc/{package}/copyright");
    // Only a regular file of sane size: a FIFO would block the read.
    let md = std::fs::metadata(root.resolve(&rel).ok()?).ok()?;
    if !md.is_file() || md.len() > MAX_COPYRIGHT_BYTES {
        return None;
    }
    dep5_license(&root.read_to_string(&rel).ok()?)
}

/// One paragraph: its fields' names (lowercased) and first-line values, in order.
type Paragraph = Vec<(String, String)>;

/// The paragraphs of a Debian control-style file. Continuation lines (starting with
/// white space) belong to the field above; only first lines are kept, as a licence's
/// short name is its `License:` first line.
fn paragraphs(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    let mut cur: Paragraph = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The licence a DEP-5 copyright file declares for the whole package (see
/// [`declared_license`]); None when `text` is not DEP-5.
pub fn dep5_license(text: &str) -> Option<String> {
    let paras = paragraphs(text);
    let header = paras.first()?;
    if !header.iter().any(|(k, _)| k == "format") {
        return None;
    }
    let field = |p: &Paragraph, name: &str| {
        p.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let files: Vec<&Paragraph> = paras[1..]
        .iter()
        .filter(|p| p.iter().any(|(k, _)| k == "files"))
        .collect();
    // `Files: *` alone on its line; patterns on continuation lines are other files.
    if let Some(all) = files
        .iter()
        .find(|p| field(p, "files").is_some_and(|f| f == "*"))
    {
        return field(all, "license");
    }
    let mut seen: Vec<String> = Vec::new();
    for p in &files {
        if let Some(l) = field(p, "license") {
            if !seen.contains(&l) {
                seen.push(l);
            }
        }
    }
    // In DEP-5 a comma separates groups that all apply: `A or B, and C`.
    (!seen.is_empty()).then(|| seen.join(", and "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZLIB: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: zlib
Comment: packaged long ago
 .
 License: not-a-field

Files: *
Copyright: 1995-2013 Jean-loup Gailly and Mark Adler
License: Zlib

Files: debian/*
Copyright: 2000 Someone
License: GPL-2+

License: Zlib
 This software is provided 'as-is'...
";

    #[test]
    fn the_files_star_paragraph_decides() {
        assert_eq!(dep5_license(ZLIB).as_deref(), Some("Zlib"));
    }

    #[test]
    fn without_files_star_every_distinct_licence_counts() {
        let t = "Format: https://example.invalid/dep5\n\nFiles: src/*\nLicense: GPL-2+ or Artistic\n\nFiles: lib/*\nLicense: MIT\n\nFiles: doc/*\nLicense: MIT\n";
        assert_eq!(
            dep5_license(t).as_deref(),
            Some("GPL-2+ or Artistic, and MIT")
        );
    }

    #[test]
    fn free_form_copyright_files_say_nothing() {
        assert_eq!(
            dep5_license("This package was debianized by someone.\n\nLicense: GPL\n"),
            None
        );
        assert_eq!(dep5_license(""), None);
        // DEP-5 with no licence at all.
        assert_eq!(dep5_license("Format: x\n\nFiles: *\nCopyright: me\n"), None);
    }

    #[test]
    fn copyright_is_read_inside_the_root_only() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(
            outside.path().join("copyright"),
            "Format: x\n\nFiles: *\nLicense: Host-Secret\n",
        )
        .unwrap();
        let doc = d.path().join("usr/share/doc");
        std::fs::create_dir_all(doc.join("zlib1g")).unwrap();
        std::fs::write(doc.join("zlib1g/copyright"), ZLIB).unwrap();
        // A package whose doc directory is a link to another's, as libstdc++6 -> gcc-12-base.
        std::os::unix::fs::symlink("zlib1g", doc.join("zlib1g-dev")).unwrap();
        // An absolute link means the guest's /, never the host's.
        std::os::unix::fs::symlink(outside.path(), doc.join("escape")).unwrap();
        let root = ImageRoot::open(d.path()).unwrap();
        assert_eq!(declared_license(&root, "zlib1g").as_deref(), Some("Zlib"));
        assert_eq!(
            declared_license(&root, "zlib1g-dev").as_deref(),
            Some("Zlib")
        );
        assert_eq!(declared_license(&root, "escape"), None);
        assert_eq!(declared_license(&root, "missing"), None);
        assert_eq!(declared_license(&root, "../zlib1g"), None);
    }
}
