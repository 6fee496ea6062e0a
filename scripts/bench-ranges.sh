#!/usr/bin/env bash
# bench-ranges: put throughput of one range against 64 ranges on a fresh
# three-node cluster of real processes on 127.0.0.1 (docs/benchmarks.md).
# DURATION (default 8s), CLIENTS (64), CONNS (8), RANGES (64), BASE_PORT (7101).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8s}; CLIENTS=${CLIENTS:-64}; CONNS=${CONNS:-8}; RANGES=${RANGES:-64}; BASE_PORT=${BASE_PORT:-7101}
bin=$(mktemp -d)/pando
go build -o "$bin" ./cmd/pando
work=$(mktemp -d)
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'stop; rm -rf "$work"' EXIT
p1=$BASE_PORT; p2=$((BASE_PORT+1)); p3=$((BASE_PORT+2))
ic="1=127.0.0.1:$p1,2=127.0.0.1:$p2,3=127.0.0.1:$p3"
eps="127.0.0.1:$p1,127.0.0.1:$p2,127.0.0.1:$p3"
start() {
  rm -rf "$work"/d*
  for i in 1 2 3; do
    "$bin" server --id $i --data-dir "$work/d$i" --addr 127.0.0.1:$((BASE_PORT+i-1)) --initial-cluster "$ic" --log-level error >/dev/null &
    pids+=($!)
  done
  for _ in $(seq 100); do "$bin" status --endpoints "$eps" >/dev/null 2>&1 && break; sleep 0.1; done
}
echo "== one range"
start
"$bin" bench --workload put --clients "$CLIENTS" --conns "$CONNS" --duration "$DURATION" --endpoints "$eps"
stop
echo "== $RANGES ranges"
start
"$bin" bench --workload put --clients "$CLIENTS" --conns "$CONNS" --duration 2s --endpoints "$eps" --ranges "$RANGES" >/dev/null
sleep 8 # the controller spreads the leaders
"$bin" ranges --json --endpoints "$eps" | grep -o '"leader_id": *[0-9]*' | sort | uniq -c | sed 's/^/leaders: /'
"$bin" bench --workload put --clients "$CLIENTS" --conns "$CONNS" --duration "$DURATION" --endpoints "$eps"
