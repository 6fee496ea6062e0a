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
# cgroup file system (v2, or v1's cpu controller). NODE_CPU_PERIOD (in µs,
# default 100000) is the quota's period: the kernel stops a node that used its
# budget until the period ends, so a long period throttles in bursts of tens
# of milliseconds, which a machine of its own would not do; 5000 keeps the
# stalls under a few milliseconds.
#
# NODE_CPUSETS (e.g. "0-1 2-3 4-5") pins node N to the Nth CPU list and
# LOADGEN_CPUSET (e.g. "6-7") the load generator: on a machine with cores
# enough, each node then has cores of its own without a quota's throttling,
# the nearest thing to three machines that one machine gives.
#
# Besides op/s it prints the CPU time the three servers spent per put, each
# node's share, and that of the load generator (with NODE_CPU it gets what
# the nodes leave). Each round also compares the busiest node's CPU per put
# of the two layouts: on machines of their own, the busiest node is the one
# that runs out of CPU first, so at the same offered load (RATE) one
# range's busiest / 64 ranges' busiest is how much more load 64 ranges
# would carry before their busiest node saturated. That is an estimate from
# CPU accounting, not a throughput measured on separate machines.
#
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
NODE_CPU_PERIOD=${NODE_CPU_PERIOD:-100000}
read -r -a node_cpusets <<< "${NODE_CPUSETS:-}"
if [ "${#node_cpusets[@]}" -ne 0 ] && [ "${#node_cpusets[@]}" -ne 3 ]; then
  echo "NODE_CPUSETS needs three CPU lists, one per node, not '${NODE_CPUSETS}'" >&2; exit 2
fi
LOADGEN_CPUSET=${LOADGEN_CPUSET:-}
# pinned SET: the command prefix that runs a program on the CPUs of SET, in
# the array pin (empty when SET is: any CPU). taskset execs the program, so
# $! of a pinned server is the server's PID.
pinned() { pin=(); if [ -n "$1" ]; then pin=(taskset -c "$1"); fi; }
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
  quota=$(awk -v c="$NODE_CPU" -v p="$NODE_CPU_PERIOD" 'BEGIN { printf "%d", c * p }')
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then # cgroup v2
    local d=/sys/fs/cgroup/pando-bench-$n
    echo +cpu > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    mkdir -p "$d"; echo "$quota $NODE_CPU_PERIOD" > "$d/cpu.max"
  else # cgroup v1
    local d=/sys/fs/cgroup/cpu/pando-bench-$n
    mkdir -p "$d"; echo "$NODE_CPU_PERIOD" > "$d/cpu.cfs_period_us"; echo "$quota" > "$d/cpu.cfs_quota_us"
  fi
  echo "$pid" > "$d/cgroup.procs"
  cgroups+=("$d")
}

start() {
  rm -rf "$work"/d*
  for i in 1 2 3; do
    pinned "${node_cpusets[$((i-1))]:-}"
    "${pin[@]}" "$bin" server --id $i --data-dir "$work/d$i" --addr 127.0.0.1:$((BASE_PORT+i-1)) --initial-cluster "$ic" --log-level error \
      --split-load-qps 1e12 --merge-max-bytes -1 >/dev/null &
    pids+=($!)
    if [ -n "$NODE_CPU" ]; then cap $! $i; fi
  done
  for _ in $(seq 100); do "$bin" status --endpoints "$eps" >/dev/null 2>&1 && break; sleep 0.1; done
}

# CPU ticks (user+system) each server used so far, space-separated.
ticks() { local p; for p in "${pids[@]}"; do awk '{printf "%d ", $14+$15}' /proc/"$p"/stat; done; }

run() {
  local t0 t1 out ops lg
  pinned "$LOADGEN_CPUSET"
  t0=$(ticks)
  # bash's time keyword: the load generator's user and system CPU seconds.
  lg=$( { TIMEFORMAT='%U %S'; time "${pin[@]}" "$bin" bench --workload put --clients "$CLIENTS" --conns "$CONNS" --rate "$RATE" --duration "$DURATION" --endpoints "$eps" > "$work/bench.out"; } 2>&1 | tail -1)
  t1=$(ticks)
  out=$(cat "$work/bench.out")
  echo "$out"
  ops=$(echo "$out" | tail -1 | grep -o '[0-9]* ops in' | cut -d' ' -f1)
  last=$(echo "$out" | tail -1 | grep -o '= [0-9]* op/s' | tr -dc '0-9')
  # Per node too: on machines of their own, the busiest node would bound
  # the throughput (with one range, the leader). awk prints the busiest
  # node's figure on its first line, the report on its second.
  local cpu
  cpu=$(echo "$t0" "$t1" | awk -v n="$ops" -v hz="$(getconf CLK_TCK)" '{
    k = NF / 2; tot = 0; top = 0; per = ""
    for (i = 1; i <= k; i++) { d = ($(i + k) - $i) * 1e6 / hz / n; tot += d; top = d > top ? d : top; per = per sprintf(" %d", d) }
    printf "%d\nservers'"'"' CPU per put: %d µs (nodes:%s)\n", top, tot, per }')
  busiest=${cpu%%$'\n'*}
  echo "${cpu#*$'\n'}"
  echo "load generator's CPU per put: $(echo "$lg" | awk -v n="$ops" '{ printf "%d", ($1 + $2) * 1000000 / n }') µs"
}

[ -n "$NODE_CPU" ] && echo "each node limited to $NODE_CPU cores (period $NODE_CPU_PERIOD µs)"
[ -n "${NODE_CPUSETS:-}" ] && echo "nodes pinned to CPUs ${node_cpusets[*]}; load generator to ${LOADGEN_CPUSET:-any}"
[ "$RATE" != 0 ] && echo "load capped at $RATE puts a second"
ratios=(); bratios=()
for round in $(seq "$ROUNDS"); do
  [ "$ROUNDS" -gt 1 ] && echo "=== round $round of $ROUNDS"
  echo "== one range"
  start
  run
  one=$last; one_busiest=$busiest
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
  bratios+=("$(awk -v a="$one_busiest" -v b="$busiest" 'BEGIN { printf "%.2f", a / b }')")
  echo "busiest node's CPU per put: one range $one_busiest µs, $RANGES ranges $busiest µs; one / $RANGES: ${bratios[-1]}"
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
if [ "$ROUNDS" -gt 1 ]; then
  echo "ratios: ${ratios[*]}; median $(median "${ratios[@]}")"
  echo "busiest node's CPU per put, one range / $RANGES ranges: ${bratios[*]}; median $(median "${bratios[@]}")"
fi
