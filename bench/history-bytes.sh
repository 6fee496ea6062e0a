#!/usr/bin/env bash
# History's cost on disk per revision, pando against etcd, for the same workload (issue 16).
#
#   bash bench/history-bytes.sh                   # or: make bench-history-bytes
#   VALUE_SIZE=1024 bash bench/history-bytes.sh
#
# Builds bin/pando and bin/etcdbench, then, one system after the other (never both at once):
#
#   pando: one server on 127.0.0.1:7201 with --history-retention 0 (nothing is compacted) and
#     splits off (one range); the get workload's preload puts each of KEYS keys once; the server
#     stops; `pando debug disk-usage` measures the stopped database ("before"); the server
#     starts again, `pando bench --workload put` overwrites the keys REVISIONS times; it stops
#     and is measured again ("after"). disk-usage flushes the memtable and compacts the whole key
#     space first (overwritten and deleted records dropped), and splits the tables by kind of
#     key; the figure compared is the live tables less the Raft log's share (the log lives in
#     the same Pebble database, truncated to 10,000-20,000 entries; etcd keeps its log apart).
#   etcd: one embedded member (etcdbench member, v3.6) on 127.0.0.1:2479/2480, auto-compaction
#     off; the same preload and puts through clientv3; its backend (bbolt) size in use from the
#     Maintenance Status API before and after, each time as it is and after a Defragment (the
#     figure compared: dbSizeInUse after the Defragment).
#
# Values are fresh random bytes (--random-values: incompressible, so Pebble's block compression
# cannot shrink them; bbolt does not compress). Bytes per revision = (after - before) / the
# revisions the load wrote: pando's new history entries (each overwrite moves one record into
# history), etcd's revision delta. Progress goes to stderr, the results (markdown) to stdout.
# Everything runs on loopback only.
#
# Environment: REVISIONS (default 200000), KEYS (default 1000), VALUE_SIZE (default 256),
# CLIENTS (default 64), CONNS (default 8), KEEP_LOGS=1 keeps the temp dir (data, logs, JSON).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
REVISIONS=${REVISIONS:-200000}
KEYS=${KEYS:-1000}
VALUE_SIZE=${VALUE_SIZE:-256}
CLIENTS=${CLIENTS:-64}
CONNS=${CONNS:-8}
GO=${GO:-go}

PANDO_ADDR=127.0.0.1:7201
ETCD_CLIENT_PORT=2479
ETCD_PEER_PORT=2480
ETCD_ADDR=127.0.0.1:$ETCD_CLIENT_PORT

log() { printf '[history-bytes %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pando-history-bytes.XXXXXX")
PID=

# stop_server: SIGTERM the running server and wait up to 60 s for it to exit (then SIGKILL).
stop_server() {
	[[ -n $PID ]] || return 0
	local i rc=0
	kill -TERM "$PID" 2>/dev/null || true
	for ((i = 0; i < 600; i++)); do
		kill -0 "$PID" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$PID" 2>/dev/null; then
		log "process $PID did not stop in 60 s; killing it"
		kill -KILL "$PID" 2>/dev/null || true
	fi
	wait "$PID" 2>/dev/null || rc=$?
	PID=
	return "$rc"
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_server || true
	if [[ "${KEEP_LOGS:-0}" == 1 ]]; then
		log "data, logs and results kept in $WORK"
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

# wait_url URL PATTERN SECONDS LOG: wait until URL answers 2xx with a body matching PATTERN.
wait_url() {
	local url=$1 pat=$2 secs=$3 logf=$4 i body
	for ((i = 0; i < secs * 5; i++)); do
		if body=$(curl -sf --max-time 2 "$url" 2>/dev/null) && grep -q "$pat" <<<"$body"; then
			return 0
		fi
		if ! kill -0 "$PID" 2>/dev/null; then
			log "the server exited early:"
			tail -n 20 "$logf" >&2 || true
			return 1
		fi
		sleep 0.2
	done
	log "$url not ready after ${secs}s"
	return 1
}

# jget FILE NAME: a number from indented JSON; NAME is a top-level field or OBJECT.FIELD.
jget() {
	awk -v want="$2" '
		/^ *"[a-z_]+": \{/ { match($0, /"[a-z_]+"/); obj = substr($0, RSTART + 1, RLENGTH - 2); next }
		/^ *\}/ { obj = ""; next }
		/^ *"[a-z_]+": / {
			match($0, /"[a-z_]+"/); k = substr($0, RSTART + 1, RLENGTH - 2)
			v = $2; gsub(/[,"]/, "", v)
			if ((obj == "" ? k : obj "." k) == want) { print v; exit }
		}' "$1"
}

# check_load FILE WHAT: fail unless the bench JSON in FILE reports ops.
check_load() {
	local ops errs
	ops=$(jget "$1" ops) errs=$(jget "$1" errors)
	log "$2: $ops requests, $errs errors, $(printf %.0f "$(jget "$1" ops_per_sec)") op/s"
	[[ -n $ops && $ops -gt 0 ]] || {
		log "$2 did not run"
		return 1
	}
}

# dubytes DIR: the bytes allocated to DIR's files (du), logs included.
dubytes() { du -s -B1 "$1" | cut -f1; }

log "building bin/pando and bin/etcdbench"
mkdir -p bin
"$GO" build -o bin/pando ./cmd/pando
(cd bench && "$GO" build -o "$ROOT/bin/etcdbench" ./etcdbench)
wait_ports_free 7201 "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT"
LOADFLAGS=(--keys "$KEYS" --value-size "$VALUE_SIZE" --random-values --clients "$CLIENTS" --conns "$CONNS" --json)

# --- pando ---
PDATA=$WORK/pando-data
mkdir -p "$PDATA"
start_pando() {
	bin/pando server --id 1 --data-dir "$PDATA" --addr "$PANDO_ADDR" --initial-cluster "1=$PANDO_ADDR" \
		--history-retention 0 --split-max-bytes 1099511627776 --split-load-qps 1e12 \
		--log-level warn >>"$WORK/pando.log" 2>&1 &
	PID=$!
	wait_url "http://$PANDO_ADDR/readyz" ready 60 "$WORK/pando.log"
}
log "pando: starting one server on $PANDO_ADDR (--history-retention 0)"
start_pando
log "pando: preloading $KEYS keys with random ${VALUE_SIZE}-byte values"
bin/pando bench --endpoints "$PANDO_ADDR" --workload get --total 1 "${LOADFLAGS[@]}" >"$WORK/pando-preload.json" 2>"$WORK/pando-preload.log"
log "pando: stopping the server"
stop_server
dubytes "$PDATA" >"$WORK/pando-before.du"
bin/pando debug disk-usage --data-dir "$PDATA" --json >"$WORK/pando-before.json"
log "pando: before: $(jget "$WORK/pando-before.json" state_bytes) state bytes ($(jget "$WORK/pando-before.json" latest.keys) latest records)"
log "pando: restarting the server; $REVISIONS puts over $KEYS keys"
start_pando
bin/pando bench --endpoints "$PANDO_ADDR" --workload put --total "$REVISIONS" "${LOADFLAGS[@]}" >"$WORK/pando-load.json" 2>"$WORK/pando-load.log"
check_load "$WORK/pando-load.json" "pando: puts"
bin/pando status --endpoints "$PANDO_ADDR" --json >"$WORK/pando-status.json"
log "pando: stopping the server"
stop_server
dubytes "$PDATA" >"$WORK/pando-after.du"
bin/pando debug disk-usage --data-dir "$PDATA" --json >"$WORK/pando-after.json"
log "pando: after: $(jget "$WORK/pando-after.json" state_bytes) state bytes ($(jget "$WORK/pando-after.json" history.keys) history entries)"

# --- etcd ---
EDATA=$WORK/etcd-data
log "etcd: starting one member on $ETCD_ADDR (auto-compaction off)"
bin/etcdbench member --name h1 --data-dir "$EDATA" --client-url "http://$ETCD_ADDR" \
	--peer-url "http://127.0.0.1:$ETCD_PEER_PORT" --auto-compaction-retention 0 >"$WORK/etcd.log" 2>&1 &
PID=$!
wait_url "http://$ETCD_ADDR/health" '"health":"true"' 60 "$WORK/etcd.log"
log "etcd: preloading $KEYS keys with random ${VALUE_SIZE}-byte values"
bin/etcdbench load --endpoints "$ETCD_ADDR" --workload get --total 1 "${LOADFLAGS[@]}" >"$WORK/etcd-preload.json" 2>"$WORK/etcd-preload.log"
estatus() { bin/etcdbench status --endpoint "$ETCD_ADDR" --db-file "$EDATA/member/snap/db" "$@"; }
estatus >"$WORK/etcd-before-raw.json"
dubytes "$EDATA" >"$WORK/etcd-before.du"
estatus --defrag >"$WORK/etcd-before.json"
log "etcd: before: $(jget "$WORK/etcd-before.json" db_size_in_use_bytes) bytes in use (defragmented), revision $(jget "$WORK/etcd-before.json" revision)"
log "etcd: $REVISIONS puts over $KEYS keys"
bin/etcdbench load --endpoints "$ETCD_ADDR" --workload put --total "$REVISIONS" "${LOADFLAGS[@]}" >"$WORK/etcd-load.json" 2>"$WORK/etcd-load.log"
check_load "$WORK/etcd-load.json" "etcd: puts"
estatus >"$WORK/etcd-after-raw.json"
dubytes "$EDATA" >"$WORK/etcd-after.du"
estatus --defrag >"$WORK/etcd-after.json"
log "etcd: after: $(jget "$WORK/etcd-after.json" db_size_in_use_bytes) bytes in use (defragmented), revision $(jget "$WORK/etcd-after.json" revision)"
log "etcd: stopping the member"
stop_server

# --- results ---
pb=$WORK/pando-before.json pa=$WORK/pando-after.json
eb=$WORK/etcd-before.json ea=$WORK/etcd-after.json
ebr=$WORK/etcd-before-raw.json ear=$WORK/etcd-after-raw.json
p_revs=$(($(jget "$pa" history.keys) - $(jget "$pb" history.keys)))
e_revs=$(($(jget "$ea" revision) - $(jget "$eb" revision)))
p_puts=$(($(jget "$WORK/pando-load.json" ops) - $(jget "$WORK/pando-load.json" errors)))
e_puts=$(($(jget "$WORK/etcd-load.json" ops) - $(jget "$WORK/etcd-load.json" errors)))
p_ranges=$(grep -c '"start_key"' "$WORK/pando-status.json" || true)
((p_revs > 0 && e_revs > 0)) || {
	log "no revisions written (pando $p_revs, etcd $e_revs)"
	exit 1
}

# per BEFORE AFTER REVS: bytes per revision, one decimal.
per() { awk -v b="$1" -v a="$2" -v n="$3" 'BEGIN { printf "%.1f", (a - b) / n }'; }
ratio() { awk -v p="$1" -v e="$2" 'BEGIN { if (e > 0) printf "%.2f", p / e; else print "n/a" }'; }
mib() { awk -v x="$1" 'BEGIN { printf "%.1f", x / 1048576 }'; }
# row NAME BEFORE AFTER REVS: one table row (bytes, MiB in brackets).
row() { printf '| %s | %s (%s MiB) | %s (%s MiB) | %s | %s |\n' "$1" "$2" "$(mib "$2")" "$3" "$(mib "$3")" "$(per "$2" "$3" "$4")" "${5:-}"; }

p_state=$(per "$(jget "$pb" state_bytes)" "$(jget "$pa" state_bytes)" "$p_revs")
e_inuse=$(per "$(jget "$eb" db_size_in_use_bytes)" "$(jget "$ea" db_size_in_use_bytes)" "$e_revs")
e_inuse_raw=$(per "$(jget "$ebr" db_size_in_use_bytes)" "$(jget "$ear" db_size_in_use_bytes)" "$e_revs")

echo
echo "$REVISIONS puts ($CLIENTS clients, $CONNS connections) over $KEYS keys preloaded once each, random (incompressible) ${VALUE_SIZE}-byte values;"
echo "one pando server (--history-retention 0, $p_ranges range(s)) and one etcd member (auto-compaction off), one after the other; $(nproc) cores."
echo "Revisions written: pando $p_revs (new history entries; $p_puts puts acknowledged), etcd $e_revs (revision delta; $e_puts puts acknowledged)."
echo
echo "| system | figure | bytes before | bytes after | bytes per revision | ratio pando/etcd |"
echo "|---|---|---:|---:|---:|---:|"
row "pando | state: live tables after flush + full compaction, less the Raft log" "$(jget "$pb" state_bytes)" "$(jget "$pa" state_bytes)" "$p_revs" "**$(ratio "$p_state" "$e_inuse")**"
row "etcd | bbolt in use after Defragment" "$(jget "$eb" db_size_in_use_bytes)" "$(jget "$ea" db_size_in_use_bytes)" "$e_revs"
row "etcd | bbolt in use, not defragmented" "$(jget "$ebr" db_size_in_use_bytes)" "$(jget "$ear" db_size_in_use_bytes)" "$e_revs" "$(ratio "$p_state" "$e_inuse_raw") (against this)"
row "etcd | bbolt size (dbSize: pages to the high-water mark), not defragmented" "$(jget "$ebr" db_size_bytes)" "$(jget "$ear" db_size_bytes)" "$e_revs"
row "etcd | member/snap/db file: size, not defragmented" "$(jget "$ebr" db_file_bytes)" "$(jget "$ear" db_file_bytes)" "$e_revs"
row "etcd | member/snap/db file: blocks allocated, not defragmented" "$(jget "$ebr" db_file_allocated_bytes)" "$(jget "$ear" db_file_allocated_bytes)" "$e_revs"
row "pando | history only (Pebble's estimate of the history span)" "$(jget "$pb" history.disk_bytes)" "$(jget "$pa" history.disk_bytes)" "$p_revs"
row "pando | live tables with the Raft log" "$(jget "$pb" tables_bytes)" "$(jget "$pa" tables_bytes)" "$p_revs"
row "pando | files as the server left them: tables + write-ahead log" "$(($(jget "$pb" files_sst_bytes) + $(jget "$pb" files_wal_bytes)))" "$(($(jget "$pa" files_sst_bytes) + $(jget "$pa" files_wal_bytes)))" "$p_revs"
row "pando | whole data directory as the server left it (du), logs included" "$(cat "$WORK/pando-before.du")" "$(cat "$WORK/pando-after.du")" "$p_revs"
row "etcd | whole data directory (du), not defragmented, WAL and snapshots included" "$(cat "$WORK/etcd-before.du")" "$(cat "$WORK/etcd-after.du")" "$e_revs"
echo
echo "pando after, by kind (compacted): $(jget "$pa" history.keys) history entries of $(per 0 "$(jget "$pa" history.logical_bytes)" "$(jget "$pa" history.keys)") key+value bytes each;" \
	"Raft log $(jget "$pa" raft_log.keys) entries, ~$(jget "$pa" raft_log.disk_bytes) bytes on disk (subtracted);" \
	"latest $(jget "$pa" latest.keys) records, ~$(jget "$pa" latest.disk_bytes) bytes; other range-local $(jget "$pa" range_local.keys) records, ~$(jget "$pa" range_local.disk_bytes) bytes." \
	"As the server left them: table files $(jget "$pa" files_sst_bytes) bytes, write-ahead log files $(jget "$pa" files_wal_bytes) bytes."
notes=()
((p_revs == p_puts)) || notes+=("pando: $p_revs history entries for $p_puts acknowledged puts")
((e_revs == e_puts)) || notes+=("etcd: $e_revs revisions for $e_puts acknowledged puts")
((p_ranges == 1)) || notes+=("pando ran $p_ranges ranges")
if ((${#notes[@]} > 0)); then
	echo
	for note in "${notes[@]}"; do echo "- $note"; done
fi
