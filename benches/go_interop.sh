#!/usr/bin/env bash
# Runs rejoin's echo examples against a real Go snet peer through the cutting
# proxy, in every combination, and prints how many runs verified every byte.
# The Go peer against itself, under the same cuts, is the baseline.
#
#   benches/go_interop.sh V2_PEER V1_PEER [RUNS] [TIMEOUT_S]
#
# V2_PEER and V1_PEER are the `snet-peer` programs built as docs/interop.md
# shows (from the Go library's head and from its last v1 commit). Each run
# echoes 8 MiB; a run that takes longer than TIMEOUT_S (default 60) counts as
# failed. PAIRS picks the pairings (default "go rejoin go-go": Go client →
# rejoin server, rejoin client → Go server, Go against itself). Loopback
# only; every port is picked by the system.
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
peer_v2=$(realpath "$1")
peer_v1=$(realpath "$2")
runs=${3:-10}
limit=${4:-60}
cd "$(dirname "$0")/.."
cargo build --release --examples --quiet
ex=target/release/examples
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# The first HOST:PORT a program printed (each prints where it listens).
address_in() {
    for _ in $(seq 1 100); do
        if grep -qo '127\.0\.0\.1:[0-9]*' "$1" 2>/dev/null; then
            grep -o '127\.0\.0\.1:[0-9]*' "$1" | head -1
            return
        fi
        sleep 0.05
    done
    echo "no address in $1" >&2
    return 1
}

# One run: prints "ok SECONDS CUTS" or "failed SECONDS CUTS".
one_run() {
    local client=$1 version=$2 rc4=$3 every=$4 seed=$5
    local peer=$peer_v2 rejoin_flags=() go_flags=()
    if [ "$version" = v1 ]; then peer=$peer_v1; rejoin_flags+=(--v1); fi
    if [ "$rc4" = off ]; then rejoin_flags+=(--plain); go_flags+=(-crypt=false); fi
    rm -f "$work/server" "$work/proxy" "$work/client"
    if [ "$client" = go ]; then
        "$ex/echo_server" --listen 127.0.0.1:0 "${rejoin_flags[@]}" >"$work/server" 2>&1 &
    else # rejoin's client, or the Go baseline
        "$peer" -listen 127.0.0.1:0 "${go_flags[@]}" >"$work/server" 2>&1 &
    fi
    local server=$! to
    to=$(address_in "$work/server")
    "$ex/cut_proxy" --listen 127.0.0.1:0 --to "$to" \
        --every "$every" --seed "$seed" >"$work/proxy" 2>&1 &
    local proxy=$!
    local target start end status=failed
    target=$(address_in "$work/proxy")
    start=$(date +%s.%N)
    if [ "$client" != rejoin ]; then
        timeout "$limit" "$peer" -connect "$target" "${go_flags[@]}" >"$work/client" 2>&1 \
            && status=ok
    else
        timeout "$limit" "$ex/echo_client" --connect "$target" --bytes 8388608 \
            "${rejoin_flags[@]}" >"$work/client" 2>&1 && status=ok
    fi
    end=$(date +%s.%N)
    sleep 0.2 # the proxy reports its cuts every 100 ms
    local cuts
    cuts=$(grep -o '[0-9]* resets' "$work/proxy" | tail -1 | cut -d' ' -f1 || true)
    kill "$server" "$proxy" 2>/dev/null || true
    wait "$server" "$proxy" 2>/dev/null || true
    echo "$status $(echo "$end - $start" | bc) ${cuts:-0}"
}

printf '%-14s %-3s %-4s %-22s %6s %9s %9s %6s\n' client ver rc4 cuts ok median_s max_s resets
for every in 1230000-1350000 60000-2600000; do
    case $every in
        1230000-1350000) pattern="every ~645 KB" ;;
        *) pattern="inside resends too" ;;
    esac
    for client in ${PAIRS:-go rejoin go-go}; do
        for version in v2 v1; do
            for rc4 in on off; do
                : >"$work/results"
                for seed in $(seq 1 "$runs"); do
                    one_run "$client" "$version" "$rc4" "$every" "$seed" >>"$work/results"
                done
                ok=$(grep -c '^ok' "$work/results" || true)
                median=$(cut -d' ' -f2 "$work/results" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
                max=$(cut -d' ' -f2 "$work/results" | sort -n | tail -1)
                resets=$(awk '{s+=$3} END {print int(s/NR)}' "$work/results")
                case $client in
                    go) who="Go -> rejoin" ;;
                    rejoin) who="rejoin -> Go" ;;
                    *) who="Go -> Go" ;;
                esac
                printf '%-14s %-3s %-4s %-22s %3s/%-2s %9.2f %9.2f %6s\n' \
                    "$who" "$version" "$rc4" "$pattern" "$ok" "$runs" "$median" "$max" "$resets"
            done
        done
    done
done
