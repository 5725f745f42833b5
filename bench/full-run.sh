#!/usr/bin/env bash
# Every scenario at the sizes of issue 7's bars, one after the other, each under its own time
# limit, for a machine that is lent for a few minutes (or any machine with more cores and a
# higher open-file limit than a laptop). Records the machine first, then writes each run's
# JSON, SVG and terminal output to OUT_DIR.
#
#   bench/full-run.sh [BIN_DIR] [OUT_DIR] [PHASE_SECONDS]
#
# BIN_DIR holds `switchboard`, `switchboard-bench` and, optionally, `nats-server` (default:
# target/release, with nats-server from PATH). OUT_DIR defaults to bench/out/full-<time>.
# PHASE_SECONDS is each fan-out and posts phase (default 10).
#
# Order: what only a large machine can measure first (50,000 idle sessions needs an open-file
# limit above 50,512), then the two fan-out shapes with the limit server and NATS, then posts,
# then the store's writers alone (a shard per workspace against spread channels, and 16 shards),
# then the experiments (dev's roles over QUIC instead of in-process calls; the mesh's
# initial congestion window; the gateways' session threads
# at 1 x 1,000; fewer worker threads per
# Switchboard process, with NATS at 1,000 x 10;
# 1,000 x 10 at half of peak again, and on eight store shards; 1,000 x 10 with a window of
# 1,024).
# A step that runs past its limit is killed, noted, and the next one starts.
set -uo pipefail

cd "$(dirname "$0")/.."
BIN_DIR="${1:-target/release}"
OUT_DIR="${2:-bench/out/full-$(date -u +%Y%m%d-%H%M%S)}"
D="${3:-10}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/full-run.log"
B="$BIN_DIR/switchboard-bench"
NATS=()
[ -x "$BIN_DIR/nats-server" ] && NATS=(--nats-server-bin "$BIN_DIR/nats-server")

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

{
    echo "## machine"
    date -u
    uname -a
    nproc
    grep -m1 'model name' /proc/cpuinfo || true
    free -g | head -2
    echo "open files: soft $(ulimit -Sn), hard $(ulimit -Hn)"
    echo "ephemeral ports: $(cat /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null)"
    echo "somaxconn: $(cat /proc/sys/net/core/somaxconn 2>/dev/null)"
    git rev-parse HEAD 2>/dev/null || true
} 2>&1 | tee "$LOG"

step() {
    local limit="$1"
    shift
    echo "## $(date -u +%H:%M:%S) $* (limit ${limit}s)" | tee -a "$LOG"
    timeout --kill-after=5 "$limit" "$B" "$@" --out "$OUT_DIR" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "## exit $rc" | tee -a "$LOG"
}

if [ "$(ulimit -n)" -gt 50600 ]; then
    step 150 connections -n 50000 --users 500
else
    step 90 connections -n "$(($(ulimit -n) - 600))" --users 100
fi
step 150 fanout --with-limit --with-nats --half-peak -d "$D" "${NATS[@]}"
step 240 fanout -c 1000 -s 10 --with-limit --with-nats --half-peak -d "$D" "${NATS[@]}"
step 60 posts -d "$D"
step 60 posts -p 128 -c 128 -d "$D"
step 60 posts -p 256 -c 64 -d "$D"
step 60 posts -p 256 -c 256 -d "$D"
step 60 store -d "$D"
step 60 store --shards 16 --keys channel -d "$D"
# First of the experiments: dev's roles calling each other over QUIC, as before
# mesh.local_calls (on in every run above), alternated with the default.
echo "## mesh.local_calls false, true, false, true: 1,000 x 10 with NATS, then posts" | tee -a "$LOG"
for local in false true false true; do
    SWITCHBOARD_MESH__LOCAL_CALLS=$local step 120 fanout -c 1000 -s 10 --with-nats -d "$D" "${NATS[@]}"
done
for local in false true false true; do
    SWITCHBOARD_MESH__LOCAL_CALLS=$local step 60 posts -d "$D"
done
# Experiments for what the bars' runs above leave open, last so they cannot crowd them out:
# fewer tokio workers per Switchboard process (three processes and the bench share the
# cores), and the store's writers.
# First, whether QUIC's congestion window holds the hops at 1,000 x 10: the same run with
# the usual initial window and with 1 MiB (compare the "mesh paths" lines' busiest cwnd and
# the hops in the "inside dev" lines).
echo "## 1,000 x 10, mesh initial window 14,720 then 1 MiB" | tee -a "$LOG"
step 120 fanout -c 1000 -s 10 -d "$D"
SWITCHBOARD_MESH__INITIAL_WINDOW_BYTES=1048576 step 120 fanout -c 1000 -s 10 -d "$D"
# Whether the gateways' session threads, on by themselves from 8 cores ("auto": half the
# cores), keep their tenth off 1 x 1,000's half-peak tail: 0 (the shared runtime) and auto,
# alternated (the twenty-third session's runs, bench/RESULTS.md).
echo "## 1 x 1,000 at half of peak, gateway session threads 0, auto, 0, auto" | tee -a "$LOG"
for t in 0 auto 0 auto; do
    SWITCHBOARD_GATEWAY__SESSION_THREADS=$t step 90 fanout --half-peak -d "$D"
done
THREADS=$(( $(nproc) / 4 > 1 ? $(nproc) / 4 : 1 ))
echo "## TOKIO_WORKER_THREADS=$THREADS for the Switchboard processes" | tee -a "$LOG"
TOKIO_WORKER_THREADS=$THREADS step 150 fanout --half-peak -d "$D"
TOKIO_WORKER_THREADS=$THREADS step 150 fanout -c 1000 -s 10 --with-nats -d "$D" "${NATS[@]}"
TOKIO_WORKER_THREADS=$THREADS step 60 posts -p 256 -c 64 -d "$D"
# 1,000 x 10 at half of peak once more with the defaults: single runs of that p99 have ranged
# from 7 to 66 ms on these machines (bench/RESULTS.md), so the bar wants repeats.
echo "## repeat: 1,000 x 10 at half of peak" | tee -a "$LOG"
step 120 fanout -c 1000 -s 10 --half-peak -d "$D"
# The store's shard count follows the cores (16 here); 8 writers batch more posts per commit.
echo "## SWITCHBOARD_STORE__SHARDS=8" | tee -a "$LOG"
SWITCHBOARD_STORE__SHARDS=8 step 120 fanout -c 1000 -s 10 --half-peak -d "$D"
# 1,000 x 10 with four times the messages in flight, for every system alike: whether the
# window of 256 (each in flight until durable and delivered) or the servers bound it.
step 240 fanout -c 1000 -s 10 --window 1024 --with-nats -d "$D" "${NATS[@]}"
echo "## done $(date -u +%H:%M:%S)" | tee -a "$LOG"
