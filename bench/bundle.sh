#!/usr/bin/env bash
# Packs what bench/full-run.sh needs on another machine into one small file: the release
# `switchboard` and `switchboard-bench`, stripped, and nats-server. A lent machine has a copy
# of the work tree but may lack Rust, Debian's packages or the time to build; this is built
# here, carried there, and unpacked:
#
#   bench/bundle.sh                  # writes bench/out/bundle.tar.xz
#   # there:
#   mkdir -p /tmp/b && tar -xJf bench/out/bundle.tar.xz -C /tmp/b
#   bench/full-run.sh /tmp/b /tmp/full 8
#
#   bench/bundle.sh [OUT_FILE]
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-bench/out/bundle.tar.xz}"
cargo build --release --locked -p switchboard -p bench
NATS="$(command -v nats-server || echo /usr/sbin/nats-server)"
if [ ! -x "$NATS" ]; then
    bash bench/nats/start.sh install
    NATS="$(command -v nats-server || echo /usr/sbin/nats-server)"
fi
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
strip -o "$STAGE/switchboard" target/release/switchboard
strip -o "$STAGE/switchboard-bench" target/release/switchboard-bench
cp "$NATS" "$STAGE/nats-server"
git rev-parse HEAD > "$STAGE/COMMIT"
if git status --porcelain --untracked-files=no | grep -q .; then echo "dirty" >> "$STAGE/COMMIT"; fi
mkdir -p "$(dirname "$OUT")"
tar -C "$STAGE" -cJf "$OUT" switchboard switchboard-bench nats-server COMMIT
echo "wrote $OUT ($(du -h "$OUT" | cut -f1)), binaries at $(head -1 "$STAGE/COMMIT")"
