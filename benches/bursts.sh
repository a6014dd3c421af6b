#!/usr/bin/env bash
# A tunnel server's memory when its clients take turns at bursts, on
# loopback (127.0.0.1) only.
#
# One `rejoin server` and CLIENTS `rejoin client`s (each its own name and
# link), every client publishing the same iperf3 server. Then, one client
# after another: a burst each way through that client's public port
# (iperf3 -n SIZE, then -R), and a quiet pause of GAP seconds. The script
# prints the server's resident memory (VmRSS) at the start, after each
# burst and after each pause. A session lets go of what a burst left behind
# once it has been quiet for 10-20 s (docs/stream.md), so the server's
# memory should follow the links busy now, not every link that once was.
#
# Usage:   bash benches/bursts.sh
# Env:     CLIENTS=6             clients, each bursting once
#          SIZE=512M             bytes per iperf3 run (each way)
#          GAP=25                seconds of quiet after each burst
#          REJOIN_BIN=path       use this rejoin binary instead of building one
# The allocator's own settings pass through the environment, e.g.
# MIMALLOC_PURGE_DELAY=0 (freed memory back to the system at once).
#
# Needs iperf3 and python3 (free ports). Every port is chosen free at run
# time.
set -euo pipefail

CLIENTS=${CLIENTS:-6}
SIZE=${SIZE:-512M}
GAP=${GAP:-25}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

die() {
    echo "bursts.sh: $*" >&2
    exit 1
}
command -v iperf3 >/dev/null || die "iperf3 is needed (apt-get install iperf3)"
command -v python3 >/dev/null || die "python3 is needed (free ports)"

if [[ -n ${REJOIN_BIN:-} ]]; then
    REJOIN=$REJOIN_BIN
else
    (cd "$ROOT" && cargo build --release --bin rejoin >&2) || die "cargo build --release failed"
    target=${CARGO_TARGET_DIR:-$ROOT/target}
    [[ $target == /* ]] || target=$ROOT/$target
    REJOIN=$target/release/rejoin
fi
[[ -x $REJOIN ]] || die "no rejoin binary at $REJOIN"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# wait_for FILE PATTERN: the first match of PATTERN in FILE, within 10 s.
wait_for() {
    for _ in $(seq 100); do
        if grep -o -m1 "$2" "$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "no '$2' in $1: $(tail -n 3 "$1")"
}

IPERF_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >"$WORK/iperf.log" 2>&1 &
PIDS+=($!)
TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
"$REJOIN" server --listen 127.0.0.1:0 --token "$TOKEN" >"$WORK/server.log" 2>&1 &
SERVER=$!
PIDS+=("$SERVER")
ADDR=$(wait_for "$WORK/server.log" 'listening on [0-9.:]*' | awk '{print $3}')
for k in $(seq "$CLIENTS"); do
    "$REJOIN" client --server "$ADDR" --token "$TOKEN" --name "burst$k" \
        --tcp "127.0.0.1:$IPERF_PORT" >"$WORK/client$k.log" 2>&1 &
    PIDS+=($!)
done
rss() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }

echo "rejoin: $REJOIN; $CLIENTS clients, $SIZE each way per burst, $GAP s apart"
echo "server VmRSS at the start: $(rss) KiB"
for k in $(seq "$CLIENTS"); do
    public=$(wait_for "$WORK/client$k.log" 'published at [0-9.:]*' | awk '{print $3}')
    port=${public##*:}
    iperf3 -c 127.0.0.1 -p "$port" -n "$SIZE" >/dev/null || die "iperf3 through client $k failed"
    iperf3 -c 127.0.0.1 -p "$port" -n "$SIZE" -R >/dev/null || die "iperf3 -R through client $k failed"
    after=$(rss)
    sleep "$GAP"
    echo "client $k: after its burst $after KiB, $GAP s later $(rss) KiB"
done
