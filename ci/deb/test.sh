#!/usr/bin/env bash
# Installs the mesobake .deb (ci/deb/build.sh) on this machine and uses it as a user
# would, from / with no checkout around: profiles, init, a --dry-run build by name,
# completions and the man page. Purges the package afterwards (unless it was installed
# before). Needs root.
#   ci/deb/test.sh [path/to/mesobake_<ver>_amd64.deb]
set -euo pipefail
cd "$(dirname "$0")/../.."
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
deb=${1:-target/deb/mesobake_${version}_amd64.deb}
if [ ! -f "$deb" ]; then
  echo "no $deb: run ci/deb/build.sh first" >&2
  exit 1
fi
deb=$(realpath "$deb")
[ "$(id -u)" -eq 0 ] || { echo "ci/deb/test.sh needs root (apt-get install)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

work=$(mktemp -d)
was_installed=0
dpkg -s mesobake >/dev/null 2>&1 && was_installed=1
cleanup() {
  rm -rf "$work"
  if [ "$was_installed" = 0 ]; then apt-get purge -y -qq mesobake >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
apt-get install -y -qq --no-install-recommends "$deb" >/dev/null

passed=0
failed=0
check() { # check NAME COMMAND...: runs the command from /, counts it
  local name=$1; shift
  if (cd / && "$@") >"$work/out" 2>&1; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name"; sed 's/^/     /' "$work/out"
  fi
}
# A private cache and config: nothing of this machine's user leaks in.
export MESOBAKE_CACHE_DIR=$work/cache XDG_CONFIG_HOME=$work/config HOME=$work/home
mkdir -p "$HOME"
# A real build needs AVENTER's apt key in $XDG_CONFIG_HOME/mesobake/keys (README); a
# dry run checks that it is one. A key made here stands for it.
mkdir -p "$work/gnupg" "$XDG_CONFIG_HOME/mesobake/keys" && chmod 700 "$work/gnupg"
GNUPGHOME=$work/gnupg gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
  --quick-gen-key 'mesobake test <test@invalid>' ed25519 sign never
GNUPGHOME=$work/gnupg gpg --batch --armor --export test@invalid >"$XDG_CONFIG_HOME/mesobake/keys/aventer.asc"

check "installed in /usr/bin" test "$(command -v mesobake)" = /usr/bin/mesobake
check "declares its runtime dependencies" sh -c \
  "dpkg-query -W -f='\${Depends}' mesobake | grep -q 'qemu-utils' && dpkg-query -W -f='\${Depends}' mesobake | grep -q mmdebstrap"
check "profiles lists the built-ins" sh -c \
  'mesobake profiles | grep -E "^master-slave +built-in " && mesobake profiles | grep -E "^slave-only +built-in "'
check "profiles --json" sh -c \
  "mesobake profiles --json | python3 -c 'import json,sys; v=json.load(sys.stdin); assert sorted(r[\"name\"] for r in v)==[\"master\",\"master-slave\",\"slave-only\"], v'"
check "build by name --dry-run from /" sh -c \
  'mesobake build master-slave --dry-run | grep -E "^services +zookeeper master marathon agent"'
check "init" mesobake init "$work/x"
# What the project's README asks for: its key, and for the offline variant its .debs.
cp "$XDG_CONFIG_HOME/mesobake/keys/aventer.asc" "$work/x/keys/aventer.asc"
mkdir -p "$work/pkg/DEBIAN"
printf 'Package: mesobake-test\nVersion: 1\nArchitecture: all\nMaintainer: t <t@invalid>\nDescription: test\n' >"$work/pkg/DEBIAN/control"
dpkg-deb --build --root-owner-group "$work/pkg" "$work/x/debs/mesobake-test_1_all.deb" >/dev/null
check "the project builds as it is (--profiles)" sh -c \
  "mesobake build master-slave --dry-run --profiles '$work/x/profiles' | grep -F 'overlay     $work/x/overlays/common'"
check "the project builds as it is (in it)" sh -c \
  "cd '$work/x' && mesobake build slave-only --with offline-standins --dry-run | grep -F 'local debs  $work/x/debs'"
check "seed from the example topology" sh -c "cd '$work/x' && mesobake seed cluster.toml --out '$work/seeds'"
check "completions bash" sh -c 'mesobake completions bash | grep -q "complete -F" && test -s /usr/share/bash-completion/completions/mesobake'
check "completions zsh and fish installed" test -s /usr/share/zsh/vendor-completions/_mesobake -a -s /usr/share/fish/vendor_completions.d/mesobake.fish
check "man page" sh -c 'man -w mesobake && zcat /usr/share/man/man1/mesobake.1.gz | grep -q "^.TH mesobake 1"'
check "README in /usr/share/doc" test -s /usr/share/doc/mesobake/README.md

# validate, from /, on a profile that names each kind of missing file: every problem
# with its file and line, exit status 1; the same as one JSON object with --json.
mkdir -p "$work/bad"
cat >"$work/bad/p.toml" <<'TOML'
overlays = ["no-such-overlay"]
[role]
services = ["agent"]
[packages]
install = ["mesos"]
debs = ["missing.deb"]
[base]
name = "debian-12"
[[apt.sources]]
name = "x"
uri = "http://example.invalid/"
suites = ["bookworm"]
key = "missing.asc"
TOML
check "validate names each missing file with file:line (absolute paths from /)" sh -c "
  mesobake validate '$work/bad/p.toml' >'$work/v' 2>&1; test \$? = 1 || exit 1
  grep -F '$work/bad/p.toml:1:' '$work/v' | grep -q no-such-overlay &&
  grep -F 'p.toml:6:' '$work/v' | grep -q missing.deb &&
  grep -F 'p.toml:13:' '$work/v' | grep -q 'missing.asc: not found'"
check "--json validate: the problems as JSON, exit status 1" sh -c "
  mesobake --json validate '$work/bad/p.toml' >'$work/v' 2>/dev/null; test \$? = 1 || exit 1
  python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); assert v[\"valid\"] is False, v' '$work/v'"
check "--json error: one object on stdout, not a panic's status" sh -c "
  mesobake --json build no-such-profile --dry-run >'$work/e' 2>/dev/null; s=\$?; test \$s -ne 0 -a \$s -ne 101 || exit 1
  python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); assert v[\"error\"][\"message\"], v' '$work/e'"
# A reader that leaves at once (| true, like | head on long output): no panic, no 101.
check "closed stdout: no panic" sh -c "
  for i in 1 2 3 4 5; do
    mesobake completions bash 2>>'$work/p' | true
    mesobake profiles 2>>'$work/p' | true
  done
  ! grep -q panicked '$work/p'"

echo "deb: $passed passed, $failed failed"
[ "$failed" = 0 ]
