#!/usr/bin/env bash
# bench-ranges: put throughput of one range against 64 ranges on a fresh
# three-node cluster of real processes on 127.0.0.1 (docs/benchmarks.md).
# DURATION (default 8s), CLIENTS (64), CONNS (8), RANGES (64), BASE_PORT (7101).
# ROUNDS (default 1): run the pair that many times, alternating, and print
# each round's ratio and their median (single runs on a shared machine vary
# by 20% and more).
#
# NODE_CPU (e.g. 0.5): give each node its own CPU budget of that many cores
# (a cgroup CPU quota per node, as if each ran on its own machine) instead
# of letting all three share the machine's cores. Needs root and a writable
# cgroup file system (v2, or v1's cpu controller).
#
# Besides op/s it prints the CPU time the three servers spent per put, and
# that of the load generator (with NODE_CPU it gets what the nodes leave).
# RATE (e.g. 4000): cap the load at that many puts a second (pando bench
# --rate). Then both layouts do the same work, and the servers' CPU per put
# compares what a put costs them without the noise of a saturated machine.
#
# Load-based splits and merges are off, so that "one range" stays one range
# and the 64 stay 64 (the load would split the one range within seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8s}; CLIENTS=${CLIENTS:-64}; CONNS=${CONNS:-8}; RANGES=${RANGES:-64}; BASE_PORT=${BASE_PORT:-7101}
NODE_CPU=${NODE_CPU:-}
RATE=${RATE:-0}
ROUNDS=${ROUNDS:-1}
bin=$(mktemp -d)/pando
go build -o "$bin" ./cmd/pando
work=$(mktemp -d)
pids=()
cgroups=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
cleanup() { stop; for d in "${cgroups[@]}"; do rmdir "$d" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
p1=$BASE_PORT; p2=$((BASE_PORT+1)); p3=$((BASE_PORT+2))
ic="1=127.0.0.1:$p1,2=127.0.0.1:$p2,3=127.0.0.1:$p3"
eps="127.0.0.1:$p1,127.0.0.1:$p2,127.0.0.1:$p3"

# cap PID N: put node N's process into its own cgroup with a CPU quota.
cap() {
  local pid=$1 n=$2 quota
  quota=$(awk -v c="$NODE_CPU" 'BEGIN { printf "%d", c * 100000 }')
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then # cgroup v2
    local d=/sys/fs/cgroup/pando-bench-$n
    echo +cpu > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    mkdir -p "$d"; echo "$quota 100000" > "$d/cpu.max"
  else # cgroup v1
    local d=/sys/fs/cgroup/cpu/pando-bench-$n
    mkdir -p "$d"; echo 100000 > "$d/cpu.cfs_period_us"; echo "$quota" > "$d/cpu.cfs_quota_us"
  fi
  echo "$pid" > "$d/cgroup.procs"
  cgroups+=("$d")
}

start() {
  rm -rf "$work"/d*
  for i in 1 2 3; do
    "$bin" server --id $i --data-dir "$work/d$i" --addr 127.0.0.1:$((BASE_PORT+i-1)) --initial-cluster "$ic" --log-level error \
      --split-load-qps 1e12 --merge-max-bytes -1 >/dev/null &
    pids+=($!)
    if [ -n "$NODE_CPU" ]; then cap $! $i; fi
  done
  for _ in $(seq 100); do "$bin" status --endpoints "$eps" >/dev/null 2>&1 && break; sleep 0.1; done
}

# CPU ticks (user+system) the servers used so far.
ticks() { local t=0 p; for p in "${pids[@]}"; do t=$((t + $(awk '{print $14+$15}' /proc/"$p"/stat))); done; echo $t; }

run() {
  local t0 t1 out ops lg
  t0=$(ticks)
  # bash's time keyword: the load generator's user and system CPU seconds.
  lg=$( { TIMEFORMAT='%U %S'; time "$bin" bench --workload put --clients "$CLIENTS" --conns "$CONNS" --rate "$RATE" --duration "$DURATION" --endpoints "$eps" > "$work/bench.out"; } 2>&1 | tail -1)
  t1=$(ticks)
  out=$(cat "$work/bench.out")
  echo "$out"
  ops=$(echo "$out" | tail -1 | grep -o '[0-9]* ops in' | cut -d' ' -f1)
  last=$(echo "$out" | tail -1 | grep -o '= [0-9]* op/s' | tr -dc '0-9')
  echo "servers' CPU per put: $(( (t1 - t0) * 1000000 / $(getconf CLK_TCK) / ops )) µs"
  echo "load generator's CPU per put: $(echo "$lg" | awk -v n="$ops" '{ printf "%d", ($1 + $2) * 1000000 / n }') µs"
}

[ -n "$NODE_CPU" ] && echo "each node limited to $NODE_CPU cores"
[ "$RATE" != 0 ] && echo "load capped at $RATE puts a second"
ratios=()
for round in $(seq "$ROUNDS"); do
  [ "$ROUNDS" -gt 1 ] && echo "=== round $round of $ROUNDS"
  echo "== one range"
  start
  run
  one=$last
  stop
  echo "== $RANGES ranges"
  start
  "$bin" bench --workload put --clients "$CLIENTS" --conns "$CONNS" --duration 2s --endpoints "$eps" --ranges "$RANGES" >/dev/null
  sleep 8 # the controller spreads the leaders
  "$bin" ranges --json --endpoints "$eps" | grep -o '"leader_id": *[0-9]*' | sort | uniq -c | sed 's/^/leaders: /'
  run
  stop
  ratios+=("$(awk -v a="$last" -v b="$one" 'BEGIN { printf "%.2f", a / b }')")
  echo "ratio ($RANGES ranges / one range): ${ratios[-1]}"
done
if [ "$ROUNDS" -gt 1 ]; then
  echo "ratios: ${ratios[*]}; median $(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
fi
