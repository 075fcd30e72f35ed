//! `SHA256SUMS` files: the one reader (and writer) for the lists distributions publish
//! beside their images, the lists `check` verifies and the list export rewrites. One
//! reader means a file that one of them accepts, the others accept too.
//!
//! Each line is one of:
//!
//! - GNU (`sha256sum`): `HASH  NAME`, or `HASH *NAME` with the binary marker; a line that
//!   starts with `\` has `\\`, `\n` and `\r` escaped in its name;
//! - BSD (`sha256sum --tag`, `shasum --tag`, Fedora's CHECKSUM): `SHA256 (NAME) = HASH`;
//!   lines of the same form for other algorithms (`SHA512 (NAME) = ...`) are skipped;
//! - blank, or a `#` comment.
//!
//! A clearsigned file (`-----BEGIN PGP SIGNED MESSAGE-----`, as Fedora publishes its
//! CHECKSUM) is read as its signed text: the armour is skipped, not verified. Anything
//! else is an error that names its line, as is a SHA256 that is not 64 hex digits.

use std::collections::BTreeMap;

/// One file's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file name as listed (unescaped).
    pub name: String,
    /// Its SHA256: 64 lowercase hex digits.
    pub sha256: String,
    /// The line it was on (1-based).
    pub line: usize,
}

/// Why a SHA256SUMS text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SumsError {
    /// A line that is neither an entry, a comment nor blank, or an entry whose digest is
    /// not a SHA256.
    #[error("line {line}: {problem}: {text:?}")]
    Malformed {
        /// The line (1-based).
        line: usize,
        /// What is wrong with it.
        problem: String,
        /// The line itself.
        text: String,
    },
    /// One name listed twice with different digests: which one is meant cannot be told.
    #[error("{name:?} is listed twice with different SHA256s (lines {first} and {second})")]
    Conflict {
        /// The file name.
        name: String,
        /// The line of the first entry.
        first: usize,
        /// The line of the second.
        second: usize,
    },
}

/// The length of a SHA256 in hex.
const SHA256_HEX: usize = 64;

/// A parsed SHA256SUMS text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums {
    entries: Vec<Entry>,
}

/// Where a line sits in a clearsigned file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Armour {
    /// Not inside any armour (or no armour at all).
    Outside,
    /// The armour headers (`Hash: SHA256`) before the signed text.
    Headers,
    /// The signed text: lines that start with `-` are dash-escaped.
    Signed,
    /// The signature block.
    Signature,
}

impl Sums {
    /// Parses a whole file.
    pub fn parse(text: &str) -> Result<Sums, SumsError> {
        let mut entries = Vec::new();
        let mut armour = Armour::Outside;
        for (idx, raw) in text.lines().enumerate() {
            let line_no = idx + 1;
            let mut line = raw.strip_suffix('\r').unwrap_or(raw);
            match (armour, line.trim_end()) {
                (Armour::Outside, "-----BEGIN PGP SIGNED MESSAGE-----") => {
                    armour = Armour::Headers;
                    continue;
                }
                (Armour::Headers, l) => {
                    if l.is_empty() {
                        armour = Armour::Signed;
                    }
                    continue;
                }
                (Armour::Signed, "-----BEGIN PGP SIGNATURE-----") => {
                    armour = Armour::Signature;
                    continue;
                }
                (Armour::Signature, l) => {
                    if l == "-----END PGP SIGNATURE-----" {
                        armour = Armour::Outside;
                    }
                    continue;
                }
                (Armour::Signed, _) => line = line.strip_prefix("- ").unwrap_or(line),
                (Armour::Outside, _) => {}
            }
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            if let Some(e) = parse_line(line).map_err(|problem| SumsError::Malformed {
                line: line_no,
                problem,
                text: line.to_string(),
            })? {
                entries.push(Entry {
                    name: e.0,
                    sha256: e.1,
                    line: line_no,
                });
            }
        }
        Ok(Sums { entries })
    }

    /// The entries in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The SHA256 of `name` (also found when listed as `./NAME`), `None` if it is not
    /// listed. Listing it twice is fine if both digests agree.
    pub fn sha256_of(&self, name: &str) -> Result<Option<String>, SumsError> {
        let mut found: Option<&Entry> = None;
        for e in &self.entries {
            if e.name != name && e.name.strip_prefix("./") != Some(name) {
                continue;
            }
            match found {
                Some(prev) if prev.sha256 != e.sha256 => {
                    return Err(SumsError::Conflict {
                        name: name.to_string(),
                        first: prev.line,
                        second: e.line,
                    })
                }
                Some(_) => {}
                None => found = Some(e),
            }
        }
        Ok(found.map(|e| e.sha256.clone()))
    }

    /// Name → SHA256 for every entry; a name listed twice with different digests is an
    /// error.
    pub fn into_map(self) -> Result<BTreeMap<String, String>, SumsError> {
        let mut map: BTreeMap<String, (String, usize)> = BTreeMap::new();
        for e in self.entries {
            match map.get(&e.name) {
                Some((h, first)) if *h != e.sha256 => {
                    return Err(SumsError::Conflict {
                        name: e.name,
                        first: *first,
                        second: e.line,
                    })
                }
                Some(_) => {}
                None => {
                    map.insert(e.name, (e.sha256, e.line));
                }
            }
        }
        Ok(map.into_iter().map(|(n, (h, _))| (n, h)).collect())
    }
}

/// Writes GNU lines (`HASH  NAME`) in the order given, escaping names as `sha256sum`
/// does so that [`Sums::parse`] reads back the same names.
pub fn render<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (name, sha256) in entries {
        if name.contains(['\\', '\n', '\r']) {
            let escaped = name
                .replace('\\', "\\\\")
                .replace('\n', "\\n")
                .replace('\r', "\\r");
            out.push_str(&format!("\\{sha256}  {escaped}\n"));
        } else {
            out.push_str(&format!("{sha256}  {name}\n"));
        }
    }
    out
}

/// One non-blank, non-comment line: `Ok(Some((name, sha256)))` for a SHA256 entry,
/// `Ok(None)` for a well-formed BSD line of another algorithm, `Err(problem)` otherwise.
fn parse_line(line: &str) -> Result<Option<(String, String)>, String> {
    let first_word = line.split([' ', '(']).next().unwrap_or("");
    let gnu_escaped = line.starts_with('\\');
    let hex_start = if gnu_escaped { &line[1..] } else { line };
    if hex_start.split(' ').next().is_some_and(is_hex) {
        return parse_gnu(hex_start, gnu_escaped).map(Some);
    }
    let is_algo = !first_word.is_empty()
        && first_word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if is_algo && line[first_word.len()..].trim_start().starts_with('(') {
        return parse_bsd(line, first_word);
    }
    Err("neither `HASH  NAME` nor `SHA256 (NAME) = HASH`".into())
}

/// `HASH  NAME` or `HASH *NAME` (the line's leading `\`, if any, already removed).
fn parse_gnu(line: &str, escaped: bool) -> Result<(String, String), String> {
    let (hash, rest) = line
        .split_once(' ')
        .ok_or_else(|| "a digest without a file name".to_string())?;
    // The standard separator is a space and then ' ' (text) or '*' (binary); one bare
    // space is accepted too, since some tools write that.
    let name = rest
        .strip_prefix(' ')
        .or_else(|| rest.strip_prefix('*'))
        .unwrap_or(rest);
    if name.is_empty() {
        return Err("a digest without a file name".into());
    }
    let name = if escaped {
        unescape(name)?
    } else {
        name.to_string()
    };
    Ok((name, sha256_hex(hash)?))
}

/// `ALGO (NAME) = HASH`, also without the spaces; `None` for an algorithm other than
/// SHA256.
fn parse_bsd(line: &str, algo: &str) -> Result<Option<(String, String)>, String> {
    let bad = || "a BSD-style line is `SHA256 (NAME) = HASH`".to_string();
    let rest = line[algo.len()..].trim_start();
    let rest = rest.strip_prefix('(').ok_or_else(bad)?;
    // The name may itself hold ") = ", so the last one ends it.
    let (name, hash) = rest.rsplit_once(')').ok_or_else(bad)?;
    let hash = hash.trim_start().strip_prefix('=').ok_or_else(bad)?.trim();
    if name.is_empty() {
        return Err("a digest without a file name".into());
    }
    let algo_upper = algo.to_ascii_uppercase();
    if algo_upper != "SHA256" && algo_upper != "SHA2-256" {
        return Ok(None);
    }
    Ok(Some((name.to_string(), sha256_hex(hash)?)))
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Lowercases a SHA256 and checks its length.
fn sha256_hex(hash: &str) -> Result<String, String> {
    if !is_hex(hash) {
        return Err(format!("{hash:?} is not a hex digest"));
    }
    if hash.len() != SHA256_HEX {
        return Err(format!(
            "the digest has {} hex digits; a SHA256 has {SHA256_HEX}",
            hash.len()
        ));
    }
    Ok(hash.to_ascii_lowercase())
}

/// Undoes `sha256sum`'s escaping of `\`, newline and carriage return.
fn unescape(name: &str) -> Result<String, String> {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            other => {
                return Err(format!(
                    "an escaped name with an unknown escape \\{}",
                    other.map(String::from).unwrap_or_default()
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn entry(name: &str, sha256: &str, line: usize) -> Entry {
        Entry {
            name: name.into(),
            sha256: sha256.into(),
            line,
        }
    }

    fn malformed_line(text: &str) -> usize {
        match Sums::parse(text) {
            Err(SumsError::Malformed { line, .. }) => line,
            other => panic!("expected a malformed line in {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn gnu_text_and_binary_lines() {
        let s = Sums::parse(&format!("{A}  other.img\n{B} *noble.img\n")).unwrap();
        assert_eq!(
            s.entries(),
            [entry("other.img", A, 1), entry("noble.img", B, 2)]
        );
        assert_eq!(s.sha256_of("noble.img").unwrap().as_deref(), Some(B));
        // One bare space, as some tools write.
        let s = Sums::parse(&format!("{A} one-space.img\n")).unwrap();
        assert_eq!(s.entries(), [entry("one-space.img", A, 1)]);
    }

    #[test]
    fn bsd_lines_and_other_algorithms() {
        let upper = B.to_uppercase();
        let text = format!(
            "SHA512 (x.qcow2) = {A}{A}\nSHA256 (x.qcow2) = {upper}\nSHA256(y.img)= {A}\nSHA2-256 (z) = {A}\n"
        );
        let s = Sums::parse(&text).unwrap();
        assert_eq!(
            s.entries(),
            [
                entry("x.qcow2", B, 2),
                entry("y.img", A, 3),
                entry("z", A, 4)
            ]
        );
    }

    #[test]
    fn blank_lines_comments_and_crlf_are_skipped() {
        let text = format!("# made by hand\r\n\r\n   \n  # indented\n{A}  a.img\r\n");
        let s = Sums::parse(&text).unwrap();
        assert_eq!(s.entries(), [entry("a.img", A, 5)]);
        assert_eq!(Sums::parse("").unwrap().entries(), []);
    }

    #[test]
    fn hex_is_lowercased() {
        let s = Sums::parse(&format!("{}  a\n", A.to_uppercase())).unwrap();
        assert_eq!(s.entries()[0].sha256, A);
    }

    #[test]
    fn escaped_and_dot_slash_names() {
        let text = format!("{A}  ./base.img\n\\{B}  we\\\\ird\\nname\n");
        let s = Sums::parse(&text).unwrap();
        assert_eq!(s.sha256_of("base.img").unwrap().as_deref(), Some(A));
        assert_eq!(s.sha256_of("we\\ird\nname").unwrap().as_deref(), Some(B));
        assert_eq!(s.sha256_of("missing").unwrap(), None);
    }

    #[test]
    fn render_reads_back() {
        let names = ["plain.qcow2", "back\\slash", "new\nline"];
        let text = render(names.iter().map(|n| (*n, A)));
        assert!(text.starts_with(&format!("{A}  plain.qcow2\n\\{A}  back\\\\slash\n")));
        let back: Vec<String> = Sums::parse(&text)
            .unwrap()
            .entries()
            .iter()
            .map(|e| e.name.clone())
            .collect();
        assert_eq!(back, names);
    }

    #[test]
    fn clearsigned_text_is_read_and_its_armour_skipped() {
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n# Fedora-Cloud CHECKSUM\nSHA256 (f.qcow2) = {A}\n-----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCAAdFiEE\n=abcd\n-----END PGP SIGNATURE-----\n"
        );
        let s = Sums::parse(&text).unwrap();
        assert_eq!(s.entries(), [entry("f.qcow2", A, 5)]);
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        assert_eq!(malformed_line(&format!("{A}  a\ngarbage\n")), 2);
        assert_eq!(malformed_line(&format!("{A}\n")), 1);
        assert_eq!(malformed_line(&format!("{A}  \n")), 1);
        assert_eq!(malformed_line(&format!("\n{A}\tname\n")), 2);
        assert_eq!(malformed_line("SHA256 (a.img = 00\n"), 1);
        assert_eq!(malformed_line("SHA256 (a.img) 00\n"), 1);
        assert_eq!(malformed_line(&format!("SHA256 () = {A}\n")), 1);
        assert_eq!(malformed_line(&format!("\\{A}  bad\\escape\n")), 1);
        let err = Sums::parse("# c\n\nnot a line\n").unwrap_err();
        assert!(err.to_string().starts_with("line 3: "), "{err}");
        assert!(err.to_string().contains("\"not a line\""), "{err}");
    }

    #[test]
    fn digests_must_be_sha256() {
        // A SHA-512 (as sha512sum writes) and a short digest: wrong length.
        let long = Sums::parse(&format!("{A}{A}  a\n")).unwrap_err();
        assert!(long.to_string().contains("128 hex digits"), "{long}");
        assert_eq!(malformed_line("abc123  a\n"), 1);
        assert_eq!(malformed_line(&format!("SHA256 (a) = {}\n", &A[1..])), 1);
        let not_hex = Sums::parse(&format!("SHA256 (a) = {}\n", "z".repeat(64))).unwrap_err();
        assert!(
            not_hex.to_string().contains("not a hex digest"),
            "{not_hex}"
        );
    }

    #[test]
    fn conflicting_entries_are_refused() {
        let s = Sums::parse(&format!("{A}  a\n{B}  ./a\n")).unwrap();
        assert_eq!(
            s.sha256_of("a").unwrap_err(),
            SumsError::Conflict {
                name: "a".into(),
                first: 1,
                second: 2
            }
        );
        let same = Sums::parse(&format!("{A}  a\n{A} *a\n")).unwrap();
        assert_eq!(same.sha256_of("a").unwrap().as_deref(), Some(A));
        assert_eq!(same.into_map().unwrap().len(), 1);
        let twice = Sums::parse(&format!("{A}  a\n{B}  b\n{B}  a\n")).unwrap();
        assert!(matches!(
            twice.into_map(),
            Err(SumsError::Conflict {
                first: 1,
                second: 3,
                ..
            })
        ));
    }
}
