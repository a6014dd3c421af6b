#!/usr/bin/env bash
# Tunnel throughput, side by side, on loopback (127.0.0.1) only:
#
#   direct TCP (the baseline, measured first and again last),
#   rathole (plain TCP transport, then its Noise transport),
#   bore,
#   rejoin (this checkout, `cargo build --release --bin rejoin`),
#   two chained relays that only copy bytes (examples/relay.rs, built from
#   this checkout): the fastest any two-process tunnel could be here.
#
# Every tool runs through its own CLI with its defaults. For each path iperf3
# measures visitor -> service (`iperf3 -c` through the published port) and
# service -> visitor (`-R`), DURATION seconds each. The whole sequence of
# paths runs ROUNDS times, so that every tool meets the machine's slow and
# fast moments alike; ratios are taken within a round, then their median.
# The script prints one table with MB/s (10^6 bytes/s, iperf3's receiver
# figure, median and range over the rounds), the ratio to direct TCP (the
# mean of the round's two direct runs) and the CPU time the tunnel's server
# and client spent per MiB moved (utime + stime from /proc, both processes:
# what the tunnel costs, less moved by other load than throughput is); then
# rejoin against rathole's two transports round by round (the targets of
# issue 9: at least 2x its Noise transport, at least 0.8x its plain one);
# then the resident memory (VmRSS) of each tunnel's server and client right
# after its last run.
#
# Usage:   bash benches/compare.sh
# Env:     DURATION=5            seconds per iperf3 run
#          ROUNDS=3              times the whole sequence of paths runs
#          REJOIN_BIN=path       use this rejoin binary instead of building one
#          REJOIN_BENCH_CACHE=…  where rathole and bore are installed
#                                (default $HOME/.cache/rejoin-bench, binaries in bin/)
#          KEEP_LOGS=1           keep the temporary directory with every log
#
# Missing tools are installed: rathole and bore with `cargo install --locked
# --root $REJOIN_BENCH_CACHE` (rathole 0.5.0's lock file pins `time` 0.3.29,
# which no longer compiles on current Rust; if the locked install fails the
# script retries without --locked), iperf3 with apt-get (`apt-get update`
# only if the first install attempt fails).
#
# Ports: every port is chosen free at run time (python binds port 0), except
# bore's control port: bore 0.6 hard-codes 7835 (`bore server` has no option
# for it and `bore local` always dials it). bore runs only if 127.0.0.1:7835
# is free; otherwise its row says so. bore's public port is picked by the bore
# server itself at run time. rejoin's server listens on 127.0.0.1:0 and the
# script reads the port it printed.
#
# Noise: loopback throughput on a shared machine moves a lot between runs
# (see docs/benchmarks.md); only the ratios measured in the same run mean
# much, and even they move by tens of percent.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: DURATION must be a whole number of seconds" >&2; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: ROUNDS must be a whole number, 1 or more" >&2; exit 1; }
ROUND=1 # the round running now
CACHE=${REJOIN_BENCH_CACHE:-$HOME/.cache/rejoin-bench}
START_WAIT=20 # seconds any tool may take to come up
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rejoin-compare.XXXXXX")
CHILD=        # the path subshell running right now, if any

say() { printf '%s\n' "$*" >&2; }
die() {
    say "compare.sh: error: $*"
    exit 1
}

# --- processes ---------------------------------------------------------------

# True while PID runs (a zombie counts as gone).
alive() {
    [[ -r /proc/$1/stat ]] || return 1
    local state
    state=$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $state != Z && $state != X ]]
}

# Kills every PID listed in FILE: TERM, up to 3 s, then KILL.
kill_listed() {
    local file=$1 pid deadline
    [[ -f $file ]] || return 0
    local pids=()
    mapfile -t pids <"$file"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + 3))
    for pid in "${pids[@]}"; do
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    rm -f "$file"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $CHILD ]] && alive "$CHILD"; then
        kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    local f
    for f in "$WORK"/pids.*; do [[ -e $f ]] && kill_listed "$f"; done
    if [[ ${KEEP_LOGS:-0} == 1 ]]; then
        say "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start LOG CMD...: runs CMD in the background, output to LOG (stderr to
# LOG.err), and records its PID in the current path's pid file. Sets PID.
start() {
    local log=$1
    shift
    "$@" >"$log" 2>"$log.err" </dev/null &
    PID=$!
    echo "$PID" >>"$PIDFILE"
}

# wait_until WHAT PID CMD...: polls CMD every 0.1 s for up to START_WAIT s,
# failing early, with the process's last output, if PID dies.
wait_until() {
    local what=$1 pid=$2 deadline=$((SECONDS + START_WAIT))
    shift 2
    until "$@"; do
        if ! alive "$pid"; then
            say "--- last output of the process:"
            tail -n 15 "$LOGOF" "$LOGOF.err" >&2 2>/dev/null || true
            die "$what: the process exited"
        fi
        if ((SECONDS >= deadline)); then
            say "--- last output of the process:"
            tail -n 15 "$LOGOF" "$LOGOF.err" >&2 2>/dev/null || true
            die "$what: not ready within ${START_WAIT}s"
        fi
        sleep 0.1
    done
}

# --- ports ---------------------------------------------------------------------

# free_ports N: N distinct ports free on 127.0.0.1 right now.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# port_bindable PORT: nothing holds 127.0.0.1:PORT.
port_bindable() {
    # SO_REUSEADDR, as tokio (so bore) sets it: connections in TIME_WAIT
    # from an earlier run must not count as the port being in use, a
    # listener must.
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

# listening PORT: some socket listens on PORT (IPv4 or IPv6, any address).
listening() {
    local hex
    hex=$(printf '%04X' "$1")
    grep -qE "^ *[0-9]+: [0-9A-F]+:$hex [0-9A-F]+:0000 0A " /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# --- tools ---------------------------------------------------------------------

strip_ansi() { sed -E 's/\x1b\[[0-9;]*[A-Za-z]//g' "$@"; }

# cargo_tool CRATE BIN: prints the path of BIN, installing CRATE if missing.
cargo_tool() {
    local crate=$1 bin=$2
    if [[ -x $CACHE/bin/$bin ]]; then
        echo "$CACHE/bin/$bin"
        return
    fi
    command -v cargo >/dev/null || die "cargo is needed to install $crate"
    say "installing $crate into $CACHE (cargo install --locked; a few minutes)"
    if ! nice cargo install --locked --root "$CACHE" "$crate" >&2; then
        say "the locked install of $crate failed; retrying without --locked"
        nice cargo install --root "$CACHE" "$crate" >&2 || die "cannot install $crate"
    fi
    [[ -x $CACHE/bin/$bin ]] || die "$crate installed no $CACHE/bin/$bin"
    echo "$CACHE/bin/$bin"
}

# scrape OUT SED_EXPR FILE...: the first match of SED_EXPR (sed -E) in the
# logs, written to OUT; fails (so wait_until keeps waiting) if none yet.
scrape() {
    local out=$1 expr=$2 found
    shift 2
    found=$(strip_ansi "$@" | sed -nE "$expr" | head -n 1)
    [[ -n $found ]] && echo "$found" >"$out"
}

ensure_iperf3() {
    command -v iperf3 >/dev/null && return
    local sudo=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || die "iperf3 is missing and there is no sudo to install it"
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null || die "iperf3 is missing and apt-get is not available: install iperf3"
    say "installing iperf3 with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y iperf3 >&2; then
        "${sudo[@]}" apt-get update >&2 || die "apt-get update failed"
        "${sudo[@]}" apt-get install -y iperf3 >&2 || die "cannot install iperf3"
    fi
    command -v iperf3 >/dev/null || die "iperf3 still missing after apt-get"
}

# --- measuring -----------------------------------------------------------------

# start_iperf_server: a fresh iperf3 server for the current path; sets IPORT.
start_iperf_server() {
    IPORT=$(free_ports 1)
    LOGOF=$DIR/iperf3-server.log
    start "$LOGOF" iperf3 -s -B 127.0.0.1 -p "$IPORT"
    wait_until "iperf3 server" "$PID" listening "$IPORT"
}

# iperf_mbps PORT NAME [-R]: MB/s received and bytes received, or dies
# with iperf3's error.
iperf_mbps() {
    local port=$1 name=$2
    shift 2
    local json=$DIR/iperf-$name.json
    timeout -k 5 $((DURATION + 30)) \
        iperf3 -c 127.0.0.1 -p "$port" -t "$DURATION" -J "$@" >"$json" 2>"$json.err" || true
    python3 - "$json" <<'EOF' || die "iperf3 $name through port $port failed: $(strip_ansi "$json.err" | tail -n 3)"
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print("no JSON from iperf3:", e, file=sys.stderr)
    sys.exit(1)
if "error" in d:
    print(d["error"], file=sys.stderr)
    sys.exit(1)
r = d["end"]["sum_received"]
print("%.1f %d" % (r["bits_per_second"] / 8e6, r["bytes"]))
EOF
}

rss_kib() {
    local v
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null) || true
    echo "${v:-?}"
}

# cpu_ticks PID...: user + system CPU time of the processes, in clock ticks.
cpu_ticks() {
    local total=0 pid t
    for pid in "$@"; do
        # Fields 14 and 15 of /proc/PID/stat, counted after the ")" that
        # ends the command name (which may hold spaces).
        t=$(sed -E 's/^.*\) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || t=
        [[ -n $t ]] || die "process $pid is gone"
        total=$((total + t))
    done
    echo "$total"
}

# cpu_per_mib TICKS BYTES: milliseconds of CPU per MiB moved.
cpu_per_mib() {
    python3 -c 'import sys; t, b, hz = map(float, sys.argv[1:]); print("%.2f" % (t * 1000 / hz / (b / 1048576)))' \
        "$1" "$2" "$(getconf CLK_TCK)"
}

# measure NAME PUBLIC_PORT SERVER_PID CLIENT_PID: writes the path's result
# for this round.
measure() {
    local name=$1 port=$2 spid=$3 cpid=$4 up down cpu_up cpu_down
    local pids=()
    if [[ -n $spid ]]; then pids=("$spid" "$cpid"); fi
    say "  $name: visitor -> service, ${DURATION}s"
    read -r up cpu_up < <(iperf_cpu "$port" up "${pids[@]}")
    [[ -n $cpu_up ]] || die "no result from iperf3"
    say "  $name: service -> visitor, ${DURATION}s"
    read -r down cpu_down < <(iperf_cpu "$port" down "${pids[@]}")
    [[ -n $cpu_down ]] || die "no result from iperf3"
    local srss=- crss=-
    if [[ -n $spid ]]; then srss=$(rss_kib "$spid"); fi
    if [[ -n $cpid ]]; then crss=$(rss_kib "$cpid"); fi
    echo "$up $down $srss $crss $cpu_up $cpu_down" >"$WORK/result.$name.$ROUND"
    say "  $name: $up MB/s up, $down MB/s down; CPU per MiB $cpu_up / $cpu_down ms"
}

# iperf_cpu PORT up|down PID...: "MB/s CPU", CPU being the ms per MiB moved
# that the PIDs spent during the run ("-" without PIDs).
iperf_cpu() {
    local port=$1 dir=$2 before mbps bytes cpu=-
    shift 2
    local flags=()
    [[ $dir == down ]] && flags=(-R)
    (($#)) && before=$(cpu_ticks "$@")
    read -r mbps bytes < <(iperf_mbps "$port" "$dir" "${flags[@]}")
    [[ -n $bytes ]] || exit 1
    (($#)) && cpu=$(cpu_per_mib $(($(cpu_ticks "$@") - before)) "$bytes")
    echo "$mbps $cpu"
}

# --- the paths -------------------------------------------------------------------

path_direct() {
    start_iperf_server
    measure "$1" "$IPORT" "" ""
}

# path_rathole NAME tcp|noise
path_rathole() {
    local name=$1 transport=$2 ctrl pub token
    start_iperf_server
    read -r ctrl pub < <(free_ports 2)
    token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    local stransport="" ctransport=""
    if [[ $transport == noise ]]; then
        local keys priv pubkey
        keys=$("$RATHOLE" --genkey) || die "rathole --genkey failed"
        priv=$(awk '/^Private Key:/ {getline; print; exit}' <<<"$keys")
        pubkey=$(awk '/^Public Key:/ {getline; print; exit}' <<<"$keys")
        [[ -n $priv && -n $pubkey ]] || die "cannot parse rathole --genkey output: $keys"
        stransport=$(printf '[server.transport]\ntype = "noise"\n[server.transport.noise]\nlocal_private_key = "%s"\n' "$priv")
        ctransport=$(printf '[client.transport]\ntype = "noise"\n[client.transport.noise]\nremote_public_key = "%s"\n' "$pubkey")
    fi
    cat >"$DIR/server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$ctrl"
$stransport
[server.services.bench]
token = "$token"
bind_addr = "127.0.0.1:$pub"
EOF
    cat >"$DIR/client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$ctrl"
$ctransport
[client.services.bench]
token = "$token"
local_addr = "127.0.0.1:$IPORT"
EOF
    LOGOF=$DIR/rathole-server.log
    start "$LOGOF" "$RATHOLE" --server "$DIR/server.toml"
    local spid=$PID
    wait_until "rathole server" "$spid" listening "$ctrl"
    LOGOF=$DIR/rathole-client.log
    start "$LOGOF" "$RATHOLE" --client "$DIR/client.toml"
    local cpid=$PID
    # The server binds the service's port once the client's control channel
    # is up.
    wait_until "rathole client (service port $pub)" "$cpid" listening "$pub"
    alive "$spid" || die "rathole server exited"
    measure "$name" "$pub" "$spid" "$cpid"
}

path_bore() {
    local name=$1
    if ! port_bindable 7835; then
        echo "skipped: bore's fixed control port 7835 is in use" >"$WORK/result.$name.$ROUND.skip"
        say "  $name: skipped, 127.0.0.1:7835 (bore's fixed control port) is in use"
        return 0
    fi
    start_iperf_server
    LOGOF=$DIR/bore-server.log
    start "$LOGOF" "$BORE" server --bind-addr 127.0.0.1
    local spid=$PID
    wait_until "bore server (control port 7835)" "$spid" listening 7835
    LOGOF=$DIR/bore-local.log
    start "$LOGOF" "$BORE" local "$IPORT" --local-host 127.0.0.1 --to 127.0.0.1
    local cpid=$PID
    bore_port() {
        scrape "$DIR/bore-port" 's/.*listening at 127\.0\.0\.1:([0-9]+).*/\1/p' \
            "$DIR/bore-local.log" "$DIR/bore-local.log.err"
    }
    wait_until "bore local (its 'listening at' line)" "$cpid" bore_port
    local pub
    pub=$(cat "$DIR/bore-port")
    wait_until "bore server (public port $pub)" "$spid" listening "$pub"
    measure "$name" "$pub" "$spid" "$cpid"
}

# Two relays that only copy (examples/relay.rs): visitor -> relay ->
# relay -> service, the two processes standing for a tunnel's server and
# client.
path_relay() {
    local name=$1
    start_iperf_server
    relay_at() {
        scrape "$DIR/relay-$1" 's/^relaying .*:([0-9]+) to .*$/\1/p' "$DIR/relay-$1.log"
    }
    LOGOF=$DIR/relay-client.log
    start "$LOGOF" "$RELAY" --listen 127.0.0.1:0 --to "127.0.0.1:$IPORT"
    local cpid=$PID
    wait_until "relay (its 'relaying' line)" "$cpid" relay_at client
    LOGOF=$DIR/relay-server.log
    start "$LOGOF" "$RELAY" --listen 127.0.0.1:0 --to "127.0.0.1:$(cat "$DIR/relay-client")"
    local spid=$PID
    wait_until "relay (its 'relaying' line)" "$spid" relay_at server
    measure "$name" "$(cat "$DIR/relay-server")" "$spid" "$cpid"
}

path_rejoin() {
    local name=$1 token
    start_iperf_server
    token=$("$REJOIN" token) || die "rejoin token failed"
    export REJOIN_TOKEN=$token # not --token: keeps it out of ps
    LOGOF=$DIR/rejoin-server.log
    start "$LOGOF" "$REJOIN" server --listen 127.0.0.1:0
    local spid=$PID
    rejoin_listen() {
        scrape "$DIR/rejoin-listen" 's/^listening on (.*:[0-9]+)$/\1/p' "$DIR/rejoin-server.log"
    }
    wait_until "rejoin server (its 'listening on' line)" "$spid" rejoin_listen
    local listen
    listen=$(cat "$DIR/rejoin-listen")
    LOGOF=$DIR/rejoin-client.log
    start "$LOGOF" "$REJOIN" client --server "$listen" --tcp "127.0.0.1:$IPORT"
    local cpid=$PID
    rejoin_public() {
        scrape "$DIR/rejoin-port" 's/.*published at .*:([0-9]+)[[:space:]]*$/\1/p' \
            "$DIR/rejoin-client.log" "$DIR/rejoin-client.log.err"
    }
    wait_until "rejoin client (its 'published at' line)" "$cpid" rejoin_public
    local pub
    pub=$(cat "$DIR/rejoin-port")
    wait_until "rejoin server (public port $pub)" "$spid" listening "$pub"
    say "  rejoin: server listening on $listen; client: $(strip_ansi "$DIR/rejoin-client.log" | grep -m1 'published at')"
    measure "$name" "$pub" "$spid" "$cpid"
}

# run_path NAME FUNC ARGS...: runs FUNC NAME ARGS... (one path) in its own
# subshell, whose processes are all killed when it ends (a background
# subshell ignores SIGINT, so the main shell's trap stops it with SIGTERM).
# A failure is reported and the other paths still run.
FAILED=()
run_path() {
    local name=$1
    shift
    say "== $name (round $ROUND of $ROUNDS)"
    set +e
    (
        set -euo pipefail
        PIDFILE=$WORK/pids.$name
        DIR=$WORK/$name.$ROUND
        mkdir -p "$DIR"
        trap 'kill_listed "$PIDFILE"' EXIT
        trap 'exit 143' TERM
        func=$1
        shift
        "$func" "$name" "$@"
    ) &
    CHILD=$!
    wait "$CHILD"
    local rc=$?
    CHILD=
    set -e
    if ((rc != 0)); then
        FAILED+=("$name (round $ROUND)")
        echo "failed (see the error above)" >"$WORK/result.$name.$ROUND.skip"
    fi
}

# --- main ------------------------------------------------------------------------

command -v python3 >/dev/null || die "python3 is needed (free ports, JSON)"
command -v timeout >/dev/null || die "timeout (coreutils) is needed"
ensure_iperf3
RATHOLE=$(cargo_tool rathole rathole)
BORE=$(cargo_tool bore-cli bore)

if [[ -n ${REJOIN_BIN:-} ]]; then
    REJOIN=$REJOIN_BIN
    REJOIN_FROM="REJOIN_BIN"
else
    say "building rejoin in $ROOT (cargo build --release --bin rejoin)"
    (cd "$ROOT" && nice cargo build --release --bin rejoin >&2) ||
        die "cargo build --release failed in $ROOT (set REJOIN_BIN to use another binary)"
    target=${CARGO_TARGET_DIR:-$ROOT/target}
    [[ $target == /* ]] || target=$ROOT/$target
    REJOIN=$target/release/rejoin
    REJOIN_FROM="checkout $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')"
fi
[[ -x $REJOIN ]] || die "no rejoin binary at $REJOIN"
say "building the relay example in $ROOT (cargo build --release --example relay)"
(cd "$ROOT" && nice cargo build --release --example relay >&2) ||
    die "cargo build --release --example relay failed in $ROOT"
RELAY=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $RELAY == /* ]] || RELAY=$ROOT/$RELAY
RELAY=$RELAY/release/examples/relay
[[ -x $RELAY ]] || die "no relay example at $RELAY"

say "iperf3:  $(iperf3 --version | head -n 1)"
say "rathole: $("$RATHOLE" --version 2>&1 | awk '/^Build Version:/ {print $3}')"
say "bore:    $("$BORE" --version 2>&1 | head -n 1)"
say "rejoin:  $("$REJOIN" --version 2>&1 | head -n 1) ($REJOIN, $REJOIN_FROM)"
say "each direction: ${DURATION}s of iperf3, one stream; $ROUNDS rounds of every path"

PATHS=(direct rathole rathole-noise bore rejoin relay direct-again)
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    run_path direct path_direct
    run_path rathole path_rathole tcp
    run_path rathole-noise path_rathole noise
    run_path bore path_bore
    run_path rejoin path_rejoin
    run_path relay path_relay
    run_path direct-again path_direct
done

# --- the tables --------------------------------------------------------------------

python3 - "$WORK" "$ROUNDS" "${PATHS[@]}" <<'EOF'
import os, statistics, sys
work, rounds, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
# res[name][round] = (up, down, server rss, client rss, cpu up, cpu down)
res, notes = {n: {} for n in names}, {n: [] for n in names}
for n in names:
    for r in range(1, rounds + 1):
        p = os.path.join(work, "result.%s.%d" % (n, r))
        if os.path.exists(p):
            up, down, srss, crss, cup, cdown = open(p).read().split()
            res[n][r] = (float(up), float(down), srss, crss, cup, cdown)
        elif os.path.exists(p + ".skip"):
            notes[n].append("round %d %s" % (r, open(p + ".skip").read().strip()))
        else:
            notes[n].append("round %d: no result" % r)
label = {
    "direct": "direct TCP",
    "direct-again": "direct TCP (again, last)",
    "rathole": "rathole (tcp)",
    "rathole-noise": "rathole (noise)",
    "bore": "bore",
    "rejoin": "rejoin",
    "relay": "two relays that only copy",
}
def direct(r, d):
    v = [res[n][r][d] for n in ("direct", "direct-again") if r in res[n]]
    return sum(v) / len(v) if v else None
def spread(v, fmt):
    if not v:
        return "-"
    m = fmt % statistics.median(v)
    return m if len(v) == 1 else "%s (%s–%s)" % (m, fmt % min(v), fmt % max(v))
def ratios(a, b, d):
    """a's figure over b's (a path, or None for direct TCP), in each round both ran."""
    out = []
    for r in sorted(res[a]):
        base = direct(r, d) if b is None else (res[b][r][d] if r in res[b] else None)
        if base:
            out.append(res[a][r][d] / base)
    return out
def cpu(n, d):
    return [float(x[4 + d]) for x in res[n].values() if x[4 + d] != "-"]
print()
print("%d round(s); MB/s and CPU ms per MiB: median (min–max) over the rounds" % rounds)
print()
print("path | visitor→service MB/s | service→visitor MB/s | ratio to direct (v→s / s→v) | CPU ms per MiB, server + client (v→s / s→v)")
print("---|---|---|---|---")
for n in names:
    if not res[n]:
        print("%s | - | - | - | %s" % (label[n], "; ".join(notes[n])))
        continue
    up = [x[0] for x in res[n].values()]
    down = [x[1] for x in res[n].values()]
    cols = [label[n], spread(up, "%.0f"), spread(down, "%.0f"),
            "%s / %s" % (spread(ratios(n, None, 0), "%.2f"), spread(ratios(n, None, 1), "%.2f"))]
    cols.append("-" if n.startswith("direct") else
                "%s / %s" % (spread(cpu(n, 0), "%.2f"), spread(cpu(n, 1), "%.2f")))
    print(" | ".join(cols))
    if notes[n]:
        print("(%s: %s)" % (label[n], "; ".join(notes[n])))
print()
print("direct TCP baseline for the ratios: the mean of the round's two direct runs")
print()
print("rejoin against rathole, round by round (issue 9's targets) | visitor→service | service→visitor | met")
print("---|---|---|---")
for other, target in (("rathole-noise", 2.0), ("rathole", 0.8)):
    per = [ratios("rejoin", other, d) for d in (0, 1)]
    shown = ["-" if not v else "%s; median %.2f" % (", ".join("%.2f" % x for x in v), statistics.median(v))
             for v in per]
    both = per[0] + per[1]
    met = sum(1 for x in both if x >= target)
    print("rejoin ÷ %s (target ≥ %.1f) | %s | %s | %d of %d directions" %
          (label[other], target, shown[0], shown[1], met, len(both)))
print()
per = [ratios("rejoin", "relay", d) for d in (0, 1)]
if per[0] or per[1]:
    print("rejoin ÷ two relays that only copy (the most a two-process tunnel could do here): %s / %s" %
          tuple("-" if not v else "%s; median %.2f" % (", ".join("%.2f" % x for x in v), statistics.median(v))
                for v in per))
    print()
print("tunnel | server VmRSS KiB | client VmRSS KiB (after its last run)")
print("---|---|---")
for n in names:
    if res[n] and not n.startswith("direct"):
        last = res[n][max(res[n])]
        print("%s | %s | %s" % (label[n], last[2], last[3]))
EOF

if ((${#FAILED[@]})); then
    die "failed paths: ${FAILED[*]}"
fi
