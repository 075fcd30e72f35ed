//! SHA256SUMS files: finding one file's digest in the formats distributions publish.

use anyhow::{bail, Context, Result};

use super::cache::normalize_sha256;
use super::fetch::FetchError;

/// Finds the SHA256 of `file_name` in the text of a SHA256SUMS file.
///
/// Understands GNU lines (`<hex>  name`, and `<hex> *name` with the binary marker, including
/// backslash-escaped names) and BSD lines (`SHA256 (name) = <hex>`, as `sha256sum --tag`,
/// `shasum --tag` and Fedora's CHECKSUM files write them). Blank lines, `#` comments and
/// lines for other files or algorithms are skipped; a malformed digest on the file's own
/// line, or two different digests for it, is an error.
pub fn parse_sha256sums(text: &str, file_name: &str) -> Result<String> {
    let mut found: Option<String> = None;
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((digest, name)) = parse_sums_line(line) else {
            continue;
        };
        if name != file_name && name.strip_prefix("./") != Some(file_name) {
            continue;
        }
        let lineno = idx + 1;
        let hex = normalize_sha256(digest).with_context(|| {
            format!("line {lineno} for {file_name:?} has a malformed SHA256 {digest:?}")
        })?;
        match &found {
            Some(prev) if *prev != hex => {
                bail!("two different SHA256 entries for {file_name:?}: {prev} and {hex} (line {lineno})")
            }
            _ => found = Some(hex),
        }
    }
    found.ok_or_else(|| {
        FetchError::MissingSum {
            file_name: file_name.to_string(),
        }
        .into()
    })
}

/// Splits one checksum line into (digest, file name), or `None` if it is not one.
fn parse_sums_line(line: &str) -> Option<(&str, String)> {
    for prefix in ["SHA256 (", "SHA256(", "SHA2-256 (", "SHA2-256("] {
        if let Some(rest) = line.strip_prefix(prefix) {
            let (name, tail) = rest.rsplit_once(')')?;
            let digest = tail.trim_start().strip_prefix('=')?.trim();
            return Some((digest, name.to_string()));
        }
    }
    // GNU coreutils prefixes the line with a backslash when the name contains a newline or
    // a backslash, and escapes those in the name.
    let (escaped, line) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let (digest, rest) = line.split_once(' ')?;
    // Standard form is one space and then ' ' (text) or '*' (binary); one bare space is
    // accepted too since some tools write that.
    let name = rest
        .strip_prefix(' ')
        .or_else(|| rest.strip_prefix('*'))
        .unwrap_or(rest);
    if name.is_empty() {
        return None;
    }
    let name = if escaped {
        unescape_gnu(name)
    } else {
        name.to_string()
    };
    Some((digest, name))
}

fn unescape_gnu(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn gnu_text_and_binary_lines() {
        let text = format!("{A}  other.img\n{B} *noble.img\n");
        assert_eq!(parse_sha256sums(&text, "noble.img").unwrap(), B);
        assert_eq!(parse_sha256sums(&text, "other.img").unwrap(), A);
    }

    #[test]
    fn bsd_and_openssl_lines_with_comments_and_crlf() {
        let upper = B.to_uppercase();
        let text = format!(
            "# Fedora-Cloud CHECKSUM\r\nSHA512 (x.qcow2) = {A}{A}\r\nSHA256 (x.qcow2) = {upper}\r\nSHA256(y.img)= {A}\n"
        );
        assert_eq!(parse_sha256sums(&text, "x.qcow2").unwrap(), B);
        assert_eq!(parse_sha256sums(&text, "y.img").unwrap(), A);
    }

    #[test]
    fn leading_dot_slash_and_escaped_names() {
        let text = format!("{A}  ./base.img\n\\{B}  we\\\\ird\\nname\n");
        assert_eq!(parse_sha256sums(&text, "base.img").unwrap(), A);
        assert_eq!(parse_sha256sums(&text, "we\\ird\nname").unwrap(), B);
    }

    #[test]
    fn missing_entry_names_the_file() {
        let err = parse_sha256sums(&format!("{A}  other.img\n"), "noble.img").unwrap_err();
        assert!(format!("{err:#}").contains("\"noble.img\""), "{err:#}");
        assert!(matches!(
            err.downcast_ref::<FetchError>(),
            Some(FetchError::MissingSum { .. })
        ));
    }

    #[test]
    fn malformed_or_conflicting_digest_is_rejected() {
        let short = parse_sha256sums("abc123  noble.img\n", "noble.img").unwrap_err();
        assert!(format!("{short:#}").contains("malformed"), "{short:#}");
        let bad = format!("{}  noble.img\n", "z".repeat(64));
        assert!(parse_sha256sums(&bad, "noble.img").is_err());
        let twice = format!("{A}  noble.img\n{B}  noble.img\n");
        assert!(
            format!("{:#}", parse_sha256sums(&twice, "noble.img").unwrap_err())
                .contains("two different")
        );
        let same_twice = format!("{A}  noble.img\n{A} *noble.img\n");
        assert_eq!(parse_sha256sums(&same_twice, "noble.img").unwrap(), A);
        // Malformed lines for other files do not matter.
        let noise = format!("garbage\nxyz  other\n{A}  noble.img\n");
        assert_eq!(parse_sha256sums(&noise, "noble.img").unwrap(), A);
    }
}
