#!/usr/bin/env bash
# Side-by-side benchmark of pando and etcd on this machine, in one run.
#
#   bash bench/compare.sh              # or: make bench-compare
#   DURATION=10s bash bench/compare.sh
#
# Builds bin/pando and bin/etcdbench, starts three pando servers on 127.0.0.1:7001-7003
# and three etcd members (v3.6, embedded, one process each) on 127.0.0.1:2379/2380,
# 22379/22380, 32379/32380, runs each workload of the performance anchors (../shared/BASELINE.md) against pando and
# then against etcd (the idle cluster waits), ROUNDS times, and prints a markdown table
# of the medians over the rounds. Running the two systems back to back, workload by
# workload, keeps the machine's drift (disk latency varies by the minute here) out of
# the ratio. Progress goes to stderr, the table to stdout. Everything runs on loopback only.
#
# Environment: DURATION (each run, default 15s), ROUNDS (default 1), KEYS (default
# 100000), VALUE_SIZE (default 256), KEEP_LOGS=1 keeps the temp dir with logs and JSON
# results.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-15s}
ROUNDS=${ROUNDS:-1}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-256}
GO=${GO:-go}

PANDO_PORTS=(7001 7002 7003)
ETCD_CLIENT_PORTS=(2379 22379 32379)
ETCD_PEER_PORTS=(2380 22380 32380)
PANDO_ENDPOINTS=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
ETCD_ENDPOINTS=127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379

# name | workload | clients | conns | extra pando flags | extra etcd flags
WORKLOADS=(
	"put|put|1|1||"
	"put|put|64|8||"
	"put|put|256|16||"
	"linearizable get|get|64|8||"
	"stale get|get|64|8|--stale|--serializable"
	"txn: 2 compares, 2 puts|txn|64|8||"
)
# COMPARE=watch (make bench-watch): the watch workload instead. Watchers of the whole
# key space through one node that does not lead it; op/s are events delivered a
# second, the latencies those of delivery (from the put's start to the watcher).
if [[ ${COMPARE:-kv} == watch ]]; then
	WORKLOADS=(
		"watch, idle: 1 watcher, 50 puts/s|watch|1|1|--watchers 1 --rate 50|--watchers 1 --rate 50"
		"watch fan-out: 1000 watchers, 100 puts/s|watch|16|8|--watchers 1000 --rate 100|--watchers 1000 --rate 100"
		"watch fan-out: 1000 watchers, puts flat out|watch|16|8|--watchers 1000|--watchers 1000"
	)
fi

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pando-compare.XXXXXX")
PIDS=()

stop_all() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		# Give each process up to 30 s to stop, then kill it.
		local i
		for ((i = 0; i < 300; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	PIDS=()
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_all
	if [[ "${KEEP_LOGS:-0}" == 1 ]]; then
		log "logs and results kept in $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_busy() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }

# wait_ports_free PORT...: wait up to 30 s for every port to be free.
wait_ports_free() {
	local p i
	for p in "$@"; do
		for ((i = 0; i < 60; i++)); do
			port_busy "$p" || continue 2
			((i == 0)) && log "port $p is busy; waiting up to 30 s"
			sleep 0.5
		done
		log "port $p still busy after 30 s; giving up"
		return 1
	done
}

# wait_url URL PATTERN SECONDS: wait until URL answers 2xx with a body matching PATTERN.
wait_url() {
	local url=$1 pat=$2 secs=$3 i body
	for ((i = 0; i < secs * 5; i++)); do
		if body=$(curl -sf --max-time 2 "$url" 2>/dev/null) && grep -q "$pat" <<<"$body"; then
			return 0
		fi
		local pid
		for pid in "${PIDS[@]}"; do
			if ! kill -0 "$pid" 2>/dev/null; then
				log "a server exited early; logs in $WORK"
				tail -n 20 "$WORK"/*.log >&2 || true
				return 1
			fi
		done
		sleep 0.2
	done
	log "$url not ready after ${secs}s"
	return 1
}

# field FILE NAME: a number from the indented JSON that the bench commands print.
field() { awk -v k="\"$2\":" '$1 == k { gsub(/,/, "", $2); print $2; exit }' "$1" 2>/dev/null || true; }

# run_one SYSTEM I ROUND: run workload I against SYSTEM (pando or etcd).
run_one() {
	local sys=$1 i=$2 r=$3 name wl c n pextra eextra out rc
	IFS='|' read -r name wl c n pextra eextra <<<"${WORKLOADS[$i]}"
	out="$WORK/$sys-$i-$r.json"
	log "round $r, $sys: $name, $c clients / $n conns, $DURATION"
	local -a cmd
	if [[ $sys == pando ]]; then
		cmd=(bin/pando bench --endpoints "$PANDO_ENDPOINTS")
		read -ra extra <<<"$pextra"
	else
		cmd=(bin/etcdbench load --endpoints "$ETCD_ENDPOINTS")
		read -ra extra <<<"$eextra"
	fi
	cmd+=("${extra[@]}")
	cmd+=(--workload "$wl" --clients "$c" --conns "$n" --keys "$KEYS" --value-size "$VALUE_SIZE"
		--duration "$DURATION" --json)
	rc=0
	"${cmd[@]}" >"$out" 2>"$WORK/$sys-$i-$r.log" || rc=$?
	if ((rc != 0)); then
		log "$sys: $name failed (exit $rc):"
		tail -n 5 "$WORK/$sys-$i-$r.log" >&2 || true
		: >"$out"
	else
		log "$sys: $name: $(printf %.0f "$(field "$out" ops_per_sec)") op/s, p50 $(field "$out" p50_ms) ms, p99 $(field "$out" p99_ms) ms, $(field "$out" errors) errors"
	fi
}

# median SYSTEM I NAME: the median over the rounds of one figure (empty if none).
median() {
	local r v
	for ((r = 1; r <= ROUNDS; r++)); do
		v=$(field "$WORK/$1-$2-$r.json" "$3")
		[[ -n $v ]] && echo "$v"
	done | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# ratios I: the per-round ratios pando/etcd of op/s, lowest to highest.
ratios() {
	local r p e
	for ((r = 1; r <= ROUNDS; r++)); do
		p=$(field "$WORK/pando-$1-$r.json" ops_per_sec)
		e=$(field "$WORK/etcd-$1-$r.json" ops_per_sec)
		[[ -n $p && -n $e ]] && awk -v a="$p" -v b="$e" 'BEGIN { if (b > 0) printf "%.2f\n", a / b }'
	done | sort -g | paste -sd' ' -
}

log "building bin/pando and bin/etcdbench"
mkdir -p bin
"$GO" build -o bin/pando ./cmd/pando
(cd bench && "$GO" build -o "$ROOT/bin/etcdbench" ./etcdbench)

# --- both clusters ---
wait_ports_free "${PANDO_PORTS[@]}" "${ETCD_CLIENT_PORTS[@]}" "${ETCD_PEER_PORTS[@]}"
CLUSTER="1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
for id in 1 2 3; do
	mkdir -p "$WORK/pando-data/$id"
	bin/pando server --id "$id" --data-dir "$WORK/pando-data/$id" --addr "127.0.0.1:700$id" \
		--initial-cluster "$CLUSTER" --log-level warn >"$WORK/pando-$id.log" 2>&1 &
	PIDS+=($!)
done
ECLUSTER="m1=http://127.0.0.1:2380,m2=http://127.0.0.1:22380,m3=http://127.0.0.1:32380"
for i in 0 1 2; do
	name="m$((i + 1))"
	mkdir -p "$WORK/etcd-data"
	bin/etcdbench member --name "$name" --data-dir "$WORK/etcd-data/$name" \
		--client-url "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
		--peer-url "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
		--initial-cluster "$ECLUSTER" >"$WORK/etcd-$name.log" 2>&1 &
	PIDS+=($!)
done
log "waiting for pando and etcd to be ready"
for p in "${PANDO_PORTS[@]}"; do
	wait_url "http://127.0.0.1:$p/readyz" ready 60
done
for p in "${ETCD_CLIENT_PORTS[@]}"; do
	wait_url "http://127.0.0.1:$p/health" '"health":"true"' 60
done
for ((round = 1; round <= ROUNDS; round++)); do
	for i in "${!WORKLOADS[@]}"; do
		run_one pando "$i" "$round"
		run_one etcd "$i" "$round"
	done
done
log "stopping pando and etcd"
stop_all

# --- table ---
fmt_num() { [[ -n $1 ]] && awk -v x="$1" "BEGIN { printf \"$2\", x }" || printf 'n/a'; }
echo
echo "Each run ${DURATION}; ${KEYS} keys, ${VALUE_SIZE}-byte values; three nodes on 127.0.0.1, fsync on; $(nproc) cores."
if ((ROUNDS > 1)); then
	echo "Medians over ${ROUNDS} rounds (each workload ran on pando, then on etcd, in every round); per-round ratios in the last column."
fi
if [[ ${COMPARE:-kv} == watch ]]; then
	echo "Watch workload: op/s = events delivered a second (every put reaches every watcher); latencies from the put's start to its event at the watcher, on a node that does not lead the keys."
fi
echo "ratio = pando op/s ÷ etcd op/s. Gets are linearizable unless stale (pando --stale, etcd --serializable)."
echo
if ((ROUNDS > 1)); then
	echo "| workload | clients/conns | pando op/s | pando p50 ms | pando p99 ms | etcd op/s | etcd p50 ms | etcd p99 ms | ratio | per round |"
	echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
else
	echo "| workload | clients/conns | pando op/s | pando p50 ms | pando p99 ms | etcd op/s | etcd p50 ms | etcd p99 ms | ratio |"
	echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
fi
notes=()
for i in "${!WORKLOADS[@]}"; do
	IFS='|' read -r name wl c n _ _ <<<"${WORKLOADS[$i]}"
	pt=$(median pando "$i" ops_per_sec) et=$(median etcd "$i" ops_per_sec)
	ratio=n/a
	if [[ -n $pt && -n $et ]]; then
		ratio=$(awk -v a="$pt" -v b="$et" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }')
	fi
	row=$(printf '| %s | %s/%s | %s | %s | %s | %s | %s | %s | %s |' "$name" "$c" "$n" \
		"$(fmt_num "$pt" %.0f)" "$(fmt_num "$(median pando "$i" p50_ms)" %.2f)" "$(fmt_num "$(median pando "$i" p99_ms)" %.2f)" \
		"$(fmt_num "$et" %.0f)" "$(fmt_num "$(median etcd "$i" p50_ms)" %.2f)" "$(fmt_num "$(median etcd "$i" p99_ms)" %.2f)" "$ratio")
	if ((ROUNDS > 1)); then
		row+=" $(ratios "$i") |"
	fi
	echo "$row"
	for sys in pando etcd; do
		for ((r = 1; r <= ROUNDS; r++)); do
			e=$(field "$WORK/$sys-$i-$r.json" errors)
			if [[ -z $e ]]; then
				notes+=("$sys, $name $c/$n, round $r: run failed")
			elif [[ $e != 0 ]]; then
				notes+=("$sys, $name $c/$n, round $r: $e errors")
			fi
			m=$(field "$WORK/$sys-$i-$r.json" missed_watchers)
			if [[ -n $m && $m != 0 ]]; then
				notes+=("$sys, $name, round $r: $m watchers missed events")
			fi
		done
	done
done
if ((${#notes[@]} > 0)); then
	echo
	for note in "${notes[@]}"; do echo "- $note"; done
fi
