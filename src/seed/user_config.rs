//! The user's own cloud-config files, which cluster.toml names cluster-wide, per node and
//! per group, and which a seed carries beside mesobake's own cloud-config.
//!
//! cloud-init merges them itself: the seed's user-data becomes a MIME multipart message
//! (`multipart/mixed`), one `text/cloud-config` part each, in order: mesobake's, then the
//! cluster-wide files, then the group's or the node's. Every part carries the header
//! `Merge-Type: list(append)+dict(no_replace,recurse_list)+str()`. cloud-init merges each
//! part into what the parts before it gave, by that part's own merge type, so:
//!
//! - lists (`write_files`, `runcmd`, `packages`, `ssh_authorized_keys`) are appended, in
//!   part order: mesobake's `write_files` come first, and a user's `runcmd` runs after
//!   the cluster-wide ones;
//! - mappings merge key by key, recursively;
//! - a scalar that two parts set keeps the first part's value (`no_replace`: cloud-init
//!   has no merge option that both replaces scalars and appends lists inside mappings).
//!   The topology check warns when that happens.
//!
//! A file is checked when the topology is loaded, so that `validate` and `seed` find the
//! same problems: it must begin with a `#cloud-config` line and be one YAML mapping;
//! keys mesobake owns are refused (`merge_how`/`merge_type`: mesobake sets how the parts
//! merge; `hostname`, `fqdn`, `manage_etc_hosts`: a node's name in cluster.toml is its
//! hostname and the configurator writes /etc/hosts), and so are `write_files` entries
//! under the configurator's own directories.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// How every part of a multipart user-data merges into the parts before it.
pub const MERGE_TYPE: &str = "list(append)+dict(no_replace,recurse_list)+str()";

/// The first line of a cloud-config.
pub const HEADER: &str = "#cloud-config";

/// Top-level keys a user's cloud-config may not set, and why.
const OWNED_KEYS: &[(&str, &str)] = &[
    ("merge_how", "mesobake sets how the parts merge (Merge-Type: list(append)+dict(no_replace,recurse_list)+str())"),
    ("merge_type", "mesobake sets how the parts merge (Merge-Type: list(append)+dict(no_replace,recurse_list)+str())"),
    ("hostname", "the node's name in cluster.toml is its hostname (a group's instances name themselves from their address)"),
    ("fqdn", "the node's name in cluster.toml is its hostname (a group's instances name themselves from their address)"),
    ("manage_etc_hosts", "the first-boot configurator writes /etc/hosts from the topology"),
];

/// Directories that belong to the first-boot configurator: `write_files` may not write
/// there (node.env and secrets.env come from mesobake's own part).
const OWNED_DIRS: &[&str] = &["/etc/mesobake", "/var/lib/mesobake"];

/// One user cloud-config, as a seed carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPart {
    /// The path as cluster.toml gives it (the part's file name in the MIME message).
    pub name: String,
    /// The file's text, `#cloud-config` first.
    pub text: String,
}

/// A problem in a user cloud-config, at a line of it (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// A scalar a cloud-config sets, by its key path (`a.b.c`): where, and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The line.
    pub line: usize,
    /// The value as written.
    pub value: String,
}

/// A YAML node with the line it starts on.
#[derive(Debug)]
struct Marked {
    line: usize,
    node: Node,
}

#[derive(Debug)]
enum Node {
    Map(Vec<(Marked, Marked)>),
    Seq(Vec<Marked>),
    Scalar(String),
    Alias,
}

/// Builds [`Marked`] trees from the parser's events.
#[derive(Default)]
struct Builder {
    /// Open containers; a map's pending key waits beside it.
    stack: Vec<(Marked, Option<Marked>)>,
    docs: Vec<Marked>,
    /// The line each document starts on (its `---`, when it has one).
    doc_lines: Vec<usize>,
}

impl Builder {
    fn push(&mut self, m: Marked) {
        match self.stack.last_mut() {
            None => self.docs.push(m),
            Some((parent, key)) => match &mut parent.node {
                Node::Seq(items) => items.push(m),
                Node::Map(pairs) => match key.take() {
                    None => *key = Some(m),
                    Some(k) => pairs.push((k, m)),
                },
                _ => unreachable!("only containers are stacked"),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::MappingStart(..) => self.stack.push((
                Marked {
                    line,
                    node: Node::Map(Vec::new()),
                },
                None,
            )),
            Event::SequenceStart(..) => self.stack.push((
                Marked {
                    line,
                    node: Node::Seq(Vec::new()),
                },
                None,
            )),
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some((m, _)) = self.stack.pop() {
                    self.push(m);
                }
            }
            Event::Scalar(v, ..) => self.push(Marked {
                line,
                node: Node::Scalar(v),
            }),
            Event::Alias(_) => self.push(Marked {
                line,
                node: Node::Alias,
            }),
            Event::DocumentStart => self.doc_lines.push(line),
            _ => {}
        }
    }
}

/// `path` without `.`, `..` and repeated slashes, as the guest's kernel would resolve it
/// (symlinks aside).
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Checks a user cloud-config; on success, the scalars it sets by key path (lists are
/// appended when parts merge, so only scalars can collide).
pub fn check(text: &str) -> Result<BTreeMap<String, Setting>, Problem> {
    let problem = |line: usize, message: String| Problem { line, message };
    let first = text.lines().next().unwrap_or("");
    if first.trim_end() != HEADER {
        return Err(problem(
            1,
            format!("must begin with a \"{HEADER}\" line, cloud-init's mark of a cloud-config (found {:?})", first.chars().take(40).collect::<String>()),
        ));
    }
    let mut b = Builder::default();
    Parser::new_from_str(text).load(&mut b, true).map_err(|e| {
        problem(
            e.marker().line().max(1),
            format!("not valid YAML: {}", e.info()),
        )
    })?;
    let root = match b.docs.as_slice() {
        [] => {
            return Err(problem(
                1,
                "holds no settings: a cloud-config is one YAML mapping (key: value lines)".into(),
            ))
        }
        [one] => one,
        [_, second, ..] => {
            return Err(problem(
                b.doc_lines.get(1).copied().unwrap_or(second.line),
                "a second YAML document: a cloud-config is one document".into(),
            ))
        }
    };
    let Node::Map(pairs) = &root.node else {
        return Err(problem(
            root.line,
            "not a YAML mapping: a cloud-config is key: value lines at the top level".into(),
        ));
    };
    if pairs.is_empty() {
        return Err(problem(root.line, "holds no settings".into()));
    }
    for (k, v) in pairs {
        let Node::Scalar(key) = &k.node else {
            return Err(problem(k.line, "a top-level key must be a name".into()));
        };
        if let Some((_, why)) = OWNED_KEYS.iter().find(|(o, _)| o == key) {
            return Err(problem(
                k.line,
                format!("key \"{key}\" is mesobake's: {why}"),
            ));
        }
        if key == "write_files" {
            check_write_files(v)?;
        }
    }
    let mut out = BTreeMap::new();
    settings(root, "", &mut out);
    Ok(out)
}

/// `write_files` paths outside the configurator's directories.
fn check_write_files(v: &Marked) -> Result<(), Problem> {
    let Node::Seq(items) = &v.node else {
        return Ok(());
    };
    for item in items {
        let Node::Map(pairs) = &item.node else {
            continue;
        };
        for (k, p) in pairs {
            let (Node::Scalar(k), Node::Scalar(path)) = (&k.node, &p.node) else {
                continue;
            };
            if k != "path" {
                continue;
            }
            let n = normalize(path);
            if let Some(dir) = OWNED_DIRS
                .iter()
                .find(|d| n == **d || n.starts_with(&format!("{d}/")))
            {
                return Err(Problem {
                    line: p.line,
                    message: format!("write_files path {path}: {dir} belongs to mesobake's first-boot configurator (node.env and secrets.env come from the seed); write elsewhere"),
                });
            }
        }
    }
    Ok(())
}

/// Every scalar under `m`, by dotted key path.
fn settings(m: &Marked, prefix: &str, out: &mut BTreeMap<String, Setting>) {
    let Node::Map(pairs) = &m.node else {
        return;
    };
    for (k, v) in pairs {
        let Node::Scalar(key) = &k.node else {
            continue;
        };
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match &v.node {
            Node::Map(_) => settings(v, &path, out),
            Node::Scalar(s) => {
                out.insert(
                    path,
                    Setting {
                        line: k.line,
                        value: s.clone(),
                    },
                );
            }
            Node::Seq(_) | Node::Alias => {}
        }
    }
}

/// A MIME multipart user-data: `own` (mesobake's cloud-config) first, then `parts`, each a
/// `text/cloud-config` part with the [`MERGE_TYPE`] header. ASCII parts are written as
/// they are (7bit), so the seed stays readable; a part with other characters is base64
/// (cloud-init 22.4 turns an 8bit part's `é` into the surrogate escape `\udce9`: it
/// re-encodes the text it parsed the message into before decoding it as UTF-8). The
/// boundary is derived from the content, so the same parts give the same bytes (and the
/// same instance id).
pub fn multipart(own: &str, parts: &[UserPart]) -> String {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    let all: Vec<(&str, &str)> = std::iter::once(("mesobake.cfg", own))
        .chain(parts.iter().map(|p| (p.name.as_str(), p.text.as_str())))
        .collect();
    let mut h = Sha256::new();
    for (_, t) in &all {
        h.update(t.as_bytes());
        h.update([0]);
    }
    let digest = hex::encode(h.finalize());
    let mut boundary = format!("==mesobake-{}==", &digest[..24]);
    while all.iter().any(|(_, t)| t.contains(&boundary)) {
        boundary.insert(0, '=');
    }
    let mut s =
        format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n");
    for (name, text) in all {
        // A file name is only a label (cloud-init logs it); keep it a safe token.
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-/".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let ascii = text.is_ascii();
        let _ = write!(
            s,
            "--{boundary}\nContent-Type: text/cloud-config; charset=\"{}\"\nMIME-Version: 1.0\nContent-Transfer-Encoding: {}\nContent-Disposition: attachment; filename=\"{name}\"\nMerge-Type: {MERGE_TYPE}\n\n",
            if ascii { "us-ascii" } else { "utf-8" },
            if ascii { "7bit" } else { "base64" },
        );
        if ascii {
            s += text;
            if !text.ends_with('\n') {
                s.push('\n');
            }
        } else {
            let b = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
            for chunk in b.as_bytes().chunks(76) {
                s += std::str::from_utf8(chunk).expect("base64 is ASCII");
                s.push('\n');
            }
        }
    }
    let _ = writeln!(s, "--{boundary}--");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> Problem {
        check(text).unwrap_err()
    }

    #[test]
    fn a_cloud_config_is_one_mapping_after_its_header() {
        let ok =
            check("#cloud-config\nruncmd:\n  - echo hi\ntimezone: UTC\napt:\n  conf: x\n").unwrap();
        assert_eq!(
            ok.keys().collect::<Vec<_>>(),
            ["apt.conf", "timezone"],
            "scalars by path; lists are appended, never collide"
        );
        assert_eq!(ok["timezone"].line, 4);
        assert_eq!(ok["apt.conf"].line, 6);

        let p = problem("runcmd: [ls]\n");
        assert_eq!(p.line, 1);
        assert!(p.message.contains("#cloud-config"), "{p:?}");
        let p = problem("#cloud-config-archive\n- a\n");
        assert!(p.message.contains("must begin with"), "{p:?}");
        let p = problem("#cloud-config\n");
        assert!(p.message.contains("no settings"), "{p:?}");
        let p = problem("#cloud-config\n- a\n");
        assert_eq!(p.line, 2);
        assert!(p.message.contains("not a YAML mapping"), "{p:?}");
        let p = problem("#cloud-config\nruncmd:\n  - ls\n---\na: 1\n");
        assert_eq!(p.line, 4);
        assert!(p.message.contains("second YAML document"), "{p:?}");
    }

    #[test]
    fn yaml_errors_name_their_line() {
        let p = problem("#cloud-config\nruncmd:\n  - ls\n bad: [\n");
        assert!(p.message.starts_with("not valid YAML"), "{p:?}");
        assert!((4..=5).contains(&p.line), "{p:?}");
        let p = problem("#cloud-config\na: 1\nb: \"open\n");
        assert!(p.message.starts_with("not valid YAML"), "{p:?}");
        assert!(p.line >= 3, "{p:?}");
    }

    #[test]
    fn keys_and_paths_mesobake_owns_are_refused() {
        for (text, line, want) in [
            ("#cloud-config\nmerge_how: list()\n", 2, "how the parts merge"),
            ("#cloud-config\nruncmd: [ls]\nhostname: x\n", 3, "its hostname"),
            ("#cloud-config\nmanage_etc_hosts: true\n", 2, "/etc/hosts"),
            (
                "#cloud-config\nwrite_files:\n  - path: /etc/motd\n    content: hi\n  - content: x\n    path: /etc//mesobake/./node.env\n",
                6,
                "write_files path /etc//mesobake/./node.env: /etc/mesobake belongs to",
            ),
            (
                "#cloud-config\nwrite_files:\n- path: /var/lib/mesobake\n",
                3,
                "/var/lib/mesobake belongs",
            ),
            (
                "#cloud-config\nwrite_files:\n- path: /etc/x/../mesobake/secrets.env\n",
                3,
                "/etc/mesobake belongs",
            ),
        ] {
            let p = problem(text);
            assert_eq!(p.line, line, "{text}: {p:?}");
            assert!(p.message.contains(want), "{text}: {p:?}");
        }
        // Neighbours of those directories are the user's.
        check("#cloud-config\nwrite_files:\n- path: /etc/mesobake-lab/f\n  content: x\n").unwrap();
    }

    #[test]
    fn multipart_puts_mesobake_first_and_every_part_merges_by_appending() {
        let own = "#cloud-config\nwrite_files: []\n";
        let parts = [
            UserPart {
                name: "site.yaml".into(),
                text: "#cloud-config\nruncmd: [a]\n".into(),
            },
            UserPart {
                name: "n\"ode.yaml".into(),
                text: "#cloud-config\nruncmd: [\"é\"]".into(),
            },
        ];
        let m = multipart(own, &parts);
        assert!(m.starts_with("Content-Type: multipart/mixed; boundary=\"==mesobake-"));
        assert!(m.lines().nth(1) == Some("MIME-Version: 1.0"), "{m}");
        assert_eq!(m.matches(&format!("Merge-Type: {MERGE_TYPE}\n")).count(), 3);
        let at = |needle: &str| m.find(needle).unwrap_or_else(|| panic!("{needle}: {m}"));
        assert!(at("filename=\"mesobake.cfg\"") < at("filename=\"site.yaml\""));
        assert!(at("filename=\"site.yaml\"") < at("filename=\"n_ode.yaml\""));
        assert!(m.contains("\n\n#cloud-config\nruncmd: [a]\n--"), "{m}");
        // The non-ASCII part travels as base64, the others as they are.
        assert!(
            m.contains("charset=\"utf-8\"\nMIME-Version: 1.0\nContent-Transfer-Encoding: base64")
        );
        assert!(!m.contains('é'));
        assert!(m.trim_end().ends_with("==--"), "{m}");
        assert_eq!(m, multipart(own, &parts), "reproducible");
        assert_ne!(m, multipart(own, &parts[..1]));
    }
}
