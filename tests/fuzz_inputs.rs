//! Mutation fuzzing of the inputs users write: the profile loader, the topology loader,
//! the user cloud-configs a topology names, and seed generation. Each target starts from the checked-in corpus (`tests/fuzz/`),
//! applies a few random mutations (byte flips, cuts, interesting tokens, boundary
//! numbers, repeated blocks, splices from other entries) and runs the loader on the
//! result. An error is a fine answer; a panic fails the test, and the input that caused
//! it is saved under `target/fuzz-failures/` and printed.
//!
//! It runs under plain `cargo test` for a bounded time: `MESOBAKE_FUZZ_SECS` (default 4
//! per target) and `MESOBAKE_FUZZ_SEED` (default fixed, so a failure reproduces; CI can
//! pass a fresh one) change that.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mesobake::cluster::{self, Target};

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

const TOKENS: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "256",
    "257",
    "65535",
    "4294967295",
    "4294967296",
    "99999999999999999999",
    "1e400",
    "/0",
    "/1",
    "/31",
    "/32",
    "/33",
    "0.0.0.0",
    "255.255.255.255",
    "\"\"",
    "[]",
    "{}",
    "'",
    "\\",
    "$(",
    "`",
    ";",
    "=",
    "\n",
    "#",
    "\u{e9}",
    "\u{0}",
    "\u{7}",
    "..",
    "../",
    "/dev/zero",
    "?no-",
    "?",
    "\n[[node]]\nname = \"x\"\nrole = \"master\"\n",
    "\n[[node]]\nname = \"y\"\nrole = \"slave-only\"\nip = \"10.20.0.99\"\n",
    "\n[[group]]\nname = \"g2\"\nrole = \"slave-only\"\nlab-count = 4294967295\n",
    "\nzk-id = 0\n",
    "\nzk-id = 256\n",
    "\ninclude = [\"/dev/zero\"]\n",
    "\ninclude = [\"p.toml\"]\n",
    "\n[overlay-policy]\nallow-setuid = true\n",
    "\n[boot]\ncgroup = \"v3\"\n",
    "\n[base]\ndisk-size = \"99999999T\"\n",
    "\n[mesos]\nmaster-flags = { Quorum = \"2\" }\n",
    "\n[network]\ncidr = \"0.0.0.0/0\"\n",
    "\ndhcp = true\n",
];

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "31",
    "32",
    "33",
    "254",
    "255",
    "256",
    "257",
    "4294967295",
    "4294967296",
    "18446744073709551616",
];

/// Applies one to four random mutations.
fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 if !v.is_empty() => {
                let end = (at + 1 + rng.below(24)).min(v.len());
                v.drain(at.min(end)..end);
            }
            2 => {
                let t = rng.pick(TOKENS).as_bytes();
                v.splice(at..at, t.iter().copied());
            }
            3 => {
                // A number becomes a boundary value.
                let starts: Vec<usize> = (0..v.len())
                    .filter(|&i| v[i].is_ascii_digit() && (i == 0 || !v[i - 1].is_ascii_digit()))
                    .collect();
                if !starts.is_empty() {
                    let s = *rng.pick(&starts);
                    let e = (s..v.len())
                        .find(|&i| !v[i].is_ascii_digit())
                        .unwrap_or(v.len());
                    v.splice(s..e, rng.pick(NUMBERS).bytes());
                }
            }
            4 => {
                // A block of lines repeated: many nodes, many keys, duplicates.
                let text = String::from_utf8_lossy(&v).into_owned();
                let lines: Vec<&str> = text.split_inclusive('\n').collect();
                if !lines.is_empty() {
                    let s = rng.below(lines.len());
                    let e = (s + 1 + rng.below(6)).min(lines.len());
                    let block: String = lines[s..e].concat();
                    let times = *rng.pick(&[2usize, 3, 17, 260]);
                    let mut out: String = lines[..e].concat();
                    for i in 0..times {
                        // Keep names apart sometimes, so that it is not only duplicates.
                        if rng.below(2) == 0 {
                            out += &block.replace("name = \"", &format!("name = \"r{i}"));
                        } else {
                            out += &block;
                        }
                    }
                    out += &lines[e..].concat();
                    v = out.into_bytes();
                }
            }
            5 => {
                // A splice from another corpus entry.
                let other = rng.pick(corpus);
                if !other.is_empty() {
                    let s = rng.below(other.len());
                    let e = (s + 1 + rng.below(200)).min(other.len());
                    v.splice(at..at, other[s..e].iter().copied());
                }
            }
            _ => {
                // Two lines swap places (a key moves into another table).
                let text = String::from_utf8_lossy(&v).into_owned();
                let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
                if lines.len() > 1 {
                    let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                    lines.swap(a, b);
                    v = lines.concat().into_bytes();
                }
            }
        }
    }
    v
}

fn corpus(dir: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest().join("tests/fuzz").join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml" || x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus in tests/fuzz/{dir}");
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn budget() -> Duration {
    let secs = std::env::var("MESOBAKE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(4.0);
    Duration::from_secs_f64(secs)
}

fn seed(target: &str) -> u64 {
    let base: u64 = std::env::var("MESOBAKE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6d65_736f_6261_6b65);
    // Distinct per target; never zero (xorshift's fixed point).
    target
        .bytes()
        .fold(base, |h, b| h.rotate_left(5) ^ u64::from(b))
        | 1
}

/// Runs `check` on mutated inputs until the budget is spent; panics with every input
/// that made it panic.
fn fuzz(target: &str, corpus: &[Vec<u8>], mut check: impl FnMut(&[u8])) {
    // Every corpus entry as it is must not panic either.
    for c in corpus {
        check(c);
    }
    let mut rng = Rng(seed(target));
    let started = Instant::now();
    let mut runs = 0u64;
    let mut failures = Vec::new();
    while started.elapsed() < budget() {
        let start = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, start, corpus);
        runs += 1;
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let dir = manifest().join("target/fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{target}-{runs}.toml"));
            std::fs::write(&path, &input).unwrap();
            failures.push(format!("{}: {msg}", path.display()));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    eprintln!(
        "fuzz {target}: {runs} inputs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{target}: {} input(s) panicked (seed {}):\n{}",
        failures.len(),
        seed(target),
        failures.join("\n")
    );
}

#[test]
fn profile_loader_never_panics() {
    let corpus = corpus("profile");
    let dir = tempfile::tempdir().unwrap();
    let inc = dir.path().join("include");
    std::fs::create_dir_all(&inc).unwrap();
    let src_inc = manifest().join("tests/fuzz/profile/include");
    let includes: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&src_inc)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let data = std::fs::read(&p).unwrap();
            (inc.join(p.file_name().unwrap()), data)
        })
        .collect();
    let p = dir.path().join("p.toml");
    let mut n = 0u64;
    fuzz("profile", &corpus, |input| {
        n += 1;
        // Now and then the mutation goes into an include instead of the profile.
        for (path, data) in &includes {
            std::fs::write(path, data).unwrap();
        }
        if n.is_multiple_of(5) {
            let (path, _) = &includes[(n as usize / 5) % includes.len()];
            std::fs::write(path, input).unwrap();
            std::fs::write(&p, &corpus[0]).unwrap();
        } else {
            std::fs::write(&p, input).unwrap();
        }
        if let Ok(prof) = mesobake::profile::load(&p, &[]) {
            let _ = prof.plan();
        }
    });
}

#[test]
fn topology_loader_and_seeds_never_panic() {
    let corpus = corpus("cluster");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cluster.toml");
    let profiles = manifest().join("profiles");
    fuzz("cluster", &corpus, |input| {
        std::fs::write(&p, input).unwrap();
        let Ok(c) = cluster::load(&p, &profiles) else {
            return;
        };
        let d = c.derive();
        for n in &c.nodes {
            for t in [Target::NoCloud, Target::Ec2] {
                let s = c.node_seed(&d, n, t);
                let _ = (s.user_data(), s.meta_data(), s.network_config(), s.digest());
            }
        }
        for g in &c.groups {
            let s = c.group_seed(&d, g);
            let _ = (s.user_data(), s.meta_data(), s.network_config());
        }
        if let Ok(members) = c.lab_members() {
            for m in members {
                let _ = m.seed.user_data();
            }
        }
    });
}

#[test]
fn user_cloud_config_checks_and_multipart_seeds_never_panic() {
    let corpus = corpus("cloud-config");
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("cluster.toml");
    std::fs::write(
        &topo,
        "name = \"c\"\ncloud-config = [\"user.yaml\"]\n[network]\ncidr = \"10.1.0.0/24\"\ngateway = \"10.1.0.1\"\n[[node]]\nname = \"m1\"\nrole = \"master\"\nip = \"10.1.0.11\"\ncloud-config = [\"node.yaml\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("node.yaml"),
        "#cloud-config\ntimezone: Europe/Paris\nruncmd: [ls]\n",
    )
    .unwrap();
    let profiles = manifest().join("profiles");
    fuzz("cloud-config", &corpus, |input| {
        std::fs::write(dir.path().join("user.yaml"), input).unwrap();
        if let Ok(text) = std::str::from_utf8(input) {
            let _ = mesobake::seed::user_config::check(text);
        }
        let Ok(c) = cluster::load(&topo, &profiles) else {
            return;
        };
        let d = c.derive();
        let s = c.node_seed(&d, &c.nodes[0], Target::NoCloud);
        let ud = s.user_data();
        assert!(ud.starts_with("Content-Type: multipart/mixed"), "{ud}");
    });
}
