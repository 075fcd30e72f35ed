//! Times the digests the cache checks before every use, over real cache entries, for
//! `ci/bench/verify-cost.sh`: the extent digest (BLAKE3 over the data extents) that
//! builds compute, and a full SHA-256 of the same file for comparison. Each argument is
//! `KIND=FILE`; the last line sums what an overlay-edit rebuild verifies (base,
//! provisioned and packed; the configured layer misses on an edit).
//!
//!   cargo run --release --example verify-cost -- provisioned=PATH packed=PATH ...

use std::path::Path;
use std::time::Instant;

/// Bytes the file really holds (a sparse disk holds much less than its size).
fn data_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

fn time(f: impl FnOnce() -> anyhow::Result<String>) -> anyhow::Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        anyhow::bail!("usage: verify-cost KIND=FILE...");
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "{:<12} {:>9} {:>9}  {:>12} {:>12} {:>12}",
        "layer", "size MiB", "data MiB", "blake3 cold", "blake3 warm", "sha256 warm"
    );
    let (mut edit, mut edit_sha, mut base_sha) = (0.0, 0.0, 0.0);
    for a in &args {
        let (kind, file) = a.split_once('=').unwrap_or(("?", a));
        let p = Path::new(file);
        let size = std::fs::metadata(p)?.len();
        // The first pass may read from the disk; the second is what a build sees right
        // after the build that made or used the layer, with the file in the page cache.
        let cold = time(|| mesobake::base::digest::extent_digest(p))?;
        let warm = time(|| mesobake::base::digest::extent_digest(p))?;
        let sha = time(|| mesobake::base::cache::sha256_file(p))?;
        println!(
            "{kind:<12} {:>9.0} {:>9.0}  {cold:>10.2} s {warm:>10.2} s {sha:>10.2} s",
            mib(size),
            mib(data_bytes(p).min(size))
        );
        if ["base", "provisioned", "packed"].contains(&kind) {
            edit += warm;
            edit_sha += sha;
        }
        if kind == "base" {
            base_sha = sha;
        }
    }
    println!(
        "overlay-edit rebuild verifies base + provisioned + packed: {edit:.2} s with BLAKE3 \
         extents ({edit_sha:.2} s if it were SHA-256)"
    );
    // Before digest verification a bootstrapped base was already SHA-256'd on every build
    // (to name it); that pass is gone, so the rebuild grows by the difference.
    println!(
        "net change to the rebuild (the base's old SHA-256 pass, {base_sha:.2} s, is gone): {:+.2} s",
        edit - base_sha
    );
    Ok(())
}
