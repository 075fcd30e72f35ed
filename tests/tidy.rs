//! Repository rules, checked under plain `cargo test` (rust-analyzer's `tidy` test):
//!
//! - every external command goes through the runner: no `Command::new` outside
//!   `src/run.rs` and the QEMU launcher (`src/vm/qemu.rs`, which keeps QEMU running
//!   beside the build and so cannot use the runner's run-to-completion API);
//! - every top-level `src/` module appears in the README's layout block;
//! - public items and fields have doc comments;
//! - no function runs past 100 lines without a comment that says why it is long;
//! - the top-level modules import each other without a cycle (in particular, `stage`
//!   and `export` do not both import the other).
//!
//! Test modules (`#[cfg(test)]` to the end of a file) are exempt from all rules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `src/`, with its path relative to the repository.
fn sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![repo().join("src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p
                    .strip_prefix(repo())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The file's lines before its test module, with their 1-based numbers.
fn non_test_lines(text: &str) -> Vec<(usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim() == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            break;
        }
        out.push((i + 1, *l));
    }
    out
}

/// Code without comments: `//` to the end of the line (strings holding `//` are rare
/// enough in this repository not to matter for these rules).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

#[test]
fn external_commands_go_through_the_runner() {
    let allowed = ["src/run.rs", "src/vm/qemu.rs"];
    let mut bad = Vec::new();
    for (path, text) in sources() {
        // `tests.rs` files are `#[cfg(test)] mod tests;` of their parent: test code.
        if allowed.contains(&path.as_str()) || path.ends_with("/tests.rs") {
            continue;
        }
        for (n, l) in non_test_lines(&text) {
            if code(l).contains("Command::new") {
                bad.push(format!("{path}:{n}: {}", l.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "run external commands through crate::run::Cmd:\n{}",
        bad.join("\n")
    );
}

/// The top-level modules: `src/NAME.rs` and `src/NAME/`.
fn top_modules() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(repo().join("src")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if p.is_dir() || (p.extension().is_some_and(|x| x == "rs") && name != "lib") {
            out.insert(name);
        }
    }
    out
}

#[test]
fn every_module_is_in_the_readme_layout() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let layout = readme
        .split("## Layout")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("README.md has a ## Layout section with a code block");
    let missing: Vec<String> = top_modules()
        .into_iter()
        .filter(|m| {
            let (file, dir) = (format!("src/{m}.rs"), format!("src/{m}/"));
            !layout.contains(&file) && !layout.contains(&dir)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "add these modules to the README's layout block: {missing:?}"
    );
}

/// Whether `line` declares a public item or field that needs a doc comment.
fn is_public_item(line: &str) -> bool {
    let t = line.trim_start();
    let Some(rest) = t.strip_prefix("pub ") else {
        return false;
    };
    // `pub use` re-exports carry the docs of what they export.
    if rest.starts_with("use ") {
        return false;
    }
    let kw = [
        "fn ", "struct ", "enum ", "const ", "static ", "trait ", "type ", "mod ", "unsafe ",
        "async ",
    ];
    if kw.iter().any(|k| rest.starts_with(k)) {
        return true;
    }
    // A field: `pub name: Type,`.
    let ident: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    !ident.is_empty() && rest[ident.len()..].trim_start().starts_with(':')
}

/// Whether the item on line `i` (0-based) has a `///` doc comment above its attributes.
fn has_doc(lines: &[&str], i: usize) -> bool {
    let mut j = i;
    while j > 0 {
        j -= 1;
        let t = lines[j].trim_start();
        if t.starts_with("///") || t.starts_with("#[doc") {
            return true;
        }
        if t.starts_with("#[") {
            continue;
        }
        // The last line of an attribute spread over several lines: skip to its start.
        if t.trim_end().ends_with(")]") {
            while j > 0 && !lines[j].trim_start().starts_with("#[") {
                j -= 1;
            }
            continue;
        }
        return false;
    }
    false
}

#[test]
fn public_items_have_docs() {
    let mut bad = Vec::new();
    for (path, text) in sources() {
        let lines: Vec<&str> = text.lines().collect();
        let body = non_test_lines(&text);
        // A module's own docs are its file's `//!` lines; `tests.rs` files are test modules.
        if path.ends_with("/tests.rs") {
            continue;
        }
        if !text.trim_start().starts_with("//!") && !path.ends_with("main.rs") {
            bad.push(format!("{path}: no //! module doc"));
        }
        for (n, l) in body {
            if is_public_item(l)
                && !l.trim_start().starts_with("pub mod ")
                && !has_doc(&lines, n - 1)
            {
                bad.push(format!("{path}:{n}: {}", l.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "document these public items:\n{}",
        bad.join("\n")
    );
}

/// The top-level module a source file belongs to.
fn module_of(path: &str) -> String {
    let rest = path.strip_prefix("src/").unwrap();
    let first = rest.split('/').next().unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules a piece of code names through `crate::`: paths
/// (`crate::base::cache`), and groups (`use crate::{base, export::Output}`).
fn crate_refs(code: &str, out: &mut BTreeSet<String>) {
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names in the group: the first segment of each comma-separated
            // path at brace depth 0.
            let mut depth = 0;
            let mut start = true;
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[k..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_alphanumeric() || c == '_') => {
                        let name: String = group[k..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        out.insert(name);
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
}

/// Which top-level modules each top-level module imports.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources() {
        let m = module_of(&path);
        if m == "lib" || m == "main" {
            continue;
        }
        // `use` statements may span lines; join the file's code first.
        let joined: String = non_test_lines(&text)
            .into_iter()
            .map(|(_, l)| code(l))
            .collect::<Vec<_>>()
            .join(" ");
        let mut refs = BTreeSet::new();
        crate_refs(&joined, &mut refs);
        refs.remove(&m);
        graph.entry(m).or_default().extend(refs);
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == start {
                let mut p = path.clone();
                p.push(next.clone());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let graph = import_graph();
    // The parser must see the imports it is meant to judge.
    assert!(graph["build"].contains("stage") && graph["build"].contains("export"));
    assert!(graph["export"].contains("context"));
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_from(&graph, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles between top-level modules:\n{}\n\ngraph: {graph:#?}",
        cycles.join("\n")
    );
    assert!(
        !(graph["stage"].contains("export") && graph["export"].contains("stage")),
        "stage and export import each other"
    );
}

#[test]
fn the_cycle_check_sees_groups_and_paths() {
    let mut refs = BTreeSet::new();
    crate_refs(
        "use crate::{base::{self, cache::Cache}, export::Output}; let x = crate::run::verbose();",
        &mut refs,
    );
    let want: BTreeSet<String> = ["base", "export", "run"].map(String::from).into();
    assert_eq!(refs, want);
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycle_from(&g, "a").unwrap(), ["a", "b", "a"]);
    assert!(Path::new(&repo()).join("src/run.rs").exists());
}

/// Functions over the limit in files that other changes own right now; each is reported,
/// not failed. Split them (or say why they are long) and remove them here.
const KNOWN_LONG: &[(&str, &str)] = &[];

/// Every function with its name, first line (1-based) and length in lines.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = non_test_lines(text).into_iter().map(|(_, l)| l).collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = code(l).trim_start();
        let t = t.strip_prefix("pub ").unwrap_or(t);
        let t = t.strip_prefix("pub(crate) ").unwrap_or(t);
        let Some(rest) = t.strip_prefix("fn ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let (mut depth, mut opened) = (0i32, false);
        for (j, l) in lines.iter().enumerate().skip(i) {
            let c = code(l);
            if !opened && c.trim_end().ends_with(';') {
                break;
            }
            for ch in c.chars() {
                match ch {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if opened && depth == 0 {
                out.push((name, i + 1, j - i + 1));
                break;
            }
        }
    }
    out
}

/// Whether the doc comment above line `first` (1-based), or a comment in the first lines
/// of the body, says why the function is long.
fn says_why_long(lines: &[&str], first: usize) -> bool {
    let mut above = Vec::new();
    let mut j = first - 1;
    while j > 0 && {
        let t = lines[j - 1].trim_start();
        t.starts_with("///") || t.starts_with("#[")
    } {
        above.push(lines[j - 1]);
        j -= 1;
    }
    let body = lines
        .iter()
        .skip(first)
        .take(4)
        .filter(|l| l.trim_start().starts_with("//"));
    above
        .into_iter()
        .chain(body.copied())
        .any(|l| l.to_lowercase().contains("long"))
}

#[test]
fn long_functions_say_why() {
    let mut bad = Vec::new();
    for (path, text) in sources() {
        if path.ends_with("/tests.rs") {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        for (name, first, len) in functions(&text) {
            if len <= 100 || says_why_long(&lines, first) {
                continue;
            }
            if KNOWN_LONG.contains(&(path.as_str(), name.as_str())) {
                eprintln!("tidy: {path}:{first}: {name} is {len} lines (known; owned elsewhere)");
                continue;
            }
            bad.push(format!("{path}:{first}: {name} is {len} lines"));
        }
    }
    assert!(
        bad.is_empty(),
        "split these functions along their seams, or say in a comment why they are long:\n{}",
        bad.join("\n")
    );
}
