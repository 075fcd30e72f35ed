//! Debian package version order, as dpkg has it (`dpkg --compare-versions`), for
//! `mesobake diff` and for choices made from a base's package versions (the seed's
//! network-config). A module of its own, beside both, so neither imports the other.

use std::cmp::Ordering;

/// Compares two Debian package versions as dpkg does (`dpkg --compare-versions`):
/// epoch numerically, then upstream version and revision, each as alternating runs of
/// non-digits (letters before other characters, `~` before everything, even the end)
/// and numbers.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split_version(a);
    let (eb, ub, rb) = split_version(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

/// `[epoch:]upstream[-revision]`: the epoch (0 when absent), upstream, revision.
fn split_version(v: &str) -> (u64, &str, &str) {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), rest)
        }
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((up, rev)) => (epoch, up, rev),
        None => (epoch, rest, ""),
    }
}

/// The sort weight of a character in a non-digit run (0 for the end of the run).
fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// Compares an upstream version or a revision.
fn compare_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        // The non-digit run, character by character.
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (wa, wb) = (weight(a.get(i).copied()), weight(b.get(j).copied()));
            if wa != wb {
                return wa.cmp(&wb);
            }
            i += usize::from(i < a.len());
            j += usize::from(j < b.len());
        }
        // The number: leading zeros do not count, then the longer is larger, then
        // the first differing digit decides.
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let (si, sj) = (i, j);
        while digit(a, i) {
            i += 1;
        }
        while digit(b, j) {
            j += 1;
        }
        let (na, nb) = (&a[si..i], &b[sj..j]);
        let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_as_dpkg_sorts_them() {
        use Ordering::*;
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1.0", "1.0-0", Equal),
            ("1.0", "1.00", Equal),
            ("1.0", "1.1", Less),
            ("1.9", "1.10", Less),
            ("1:1.0", "2.0", Greater),
            ("1:2.3-4", "1:2.3-4+b1", Less),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0~", "1.0~~", Greater),
            ("1.0a", "1.0", Greater),
            ("1.0a", "1.0+", Less),
            ("1.0-1", "1.0-1ubuntu1", Less),
            ("2.36-9+deb12u4", "2.36-9+deb12u14", Less),
            ("3.8.0-11", "3.8.4-1", Less),
            ("0:1.0", "1.0", Equal),
            ("1.2.3-1-2", "1.2.3-1-10", Less),
        ] {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    /// The same pairs through dpkg itself, where dpkg is installed.
    #[test]
    fn versions_agree_with_dpkg() {
        if crate::run::Cmd::new("dpkg")
            .arg("--version")
            .read()
            .is_err()
        {
            eprintln!("SKIPPED: dpkg is not installed");
            return;
        }
        let vs = [
            "1.0",
            "1.0-0",
            "1.0-1",
            "1:0.9",
            "1.0~rc1",
            "1.0a",
            "1.0+",
            "1.0.1",
            "1.00",
            "2.36-9+deb12u4",
            "2.36-9+deb12u14",
            "1.0-1ubuntu1",
            "1.0~~",
            "1.0~",
            "0.9+git1~a",
        ];
        for a in vs {
            for b in vs {
                let op = match compare_versions(a, b) {
                    Ordering::Less => "lt",
                    Ordering::Equal => "eq",
                    Ordering::Greater => "gt",
                };
                crate::run::Cmd::new("dpkg")
                    .args(["--compare-versions", a, op, b])
                    .run()
                    .unwrap_or_else(|_| panic!("dpkg disagrees: {a} {op} {b}"));
            }
        }
    }
}
