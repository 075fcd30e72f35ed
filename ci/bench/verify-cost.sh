#!/usr/bin/env bash
# Verification cost: every build checks each cache entry it uses by its content digest
# (src/base/digest.rs). This times that digest, and a full SHA-256 for comparison, over
# the newest real entry of each kind in a cache, and sets the sum an overlay-edit
# rebuild pays (base, provisioned and packed layers) beside the warm-rebuild budget.
# It only reads the cache, and needs no root when the entries are readable.
#
#   ci/bench/verify-cost.sh [CACHE_DIR]    default: $MESOBAKE_CACHE_DIR, else target/e2e-cache
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${1:-${MESOBAKE_CACHE_DIR:-target/e2e-cache}}
budget=10
[ -d "$cache/layers" ] || { echo "verify-cost: no cache at $cache (build once, or give a cache dir)" >&2; exit 1; }
newest() { ls -t $1 2>/dev/null | head -1 || true; }
args=()
add() { [ -n "$2" ] && args+=("$1=$2") || echo "verify-cost: no $1 entry in $cache" >&2; }
add base "$(newest "$cache/layers/base/*/disk.qcow2")"
add blob "$(newest "$cache/blobs/sha256/[0-9a-f]*[0-9a-f]")"
add provisioned "$(newest "$cache/layers/provisioned/*/disk.raw")"
add packed "$(newest "$cache/layers/packed/*/disk.qcow2")"
add configured "$(newest "$cache/layers/configured/*/delta.bin")"
[ ${#args[@]} -gt 0 ] || exit 1
cargo build --release -q --example verify-cost
echo "verify-cost: $cache on $(nproc) cores"
target/release/examples/verify-cost "${args[@]}"
echo "budget: the warm rebuild (one overlay file edited) must stay within ${budget} s end to end; it took about 7 s before digest verification (sudo ci/bench/run.sh measures it)"
