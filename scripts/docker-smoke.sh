#!/usr/bin/env bash
# Container smoke test: start three nodes from the pando image on a private
# network, write, stop the leader's container, keep writing, restart it,
# read everything back from every node, tear down. Needs Docker and
# docker-compose (v1) or the compose plugin; the image must exist
# (make docker-image).
set -euo pipefail
cd "$(dirname "$0")/.."
export PANDO_PROJECT="pando-smoke-$$"
export PANDO_IMAGE="${PANDO_IMAGE:-pando:dev}"
if docker compose version >/dev/null 2>&1; then
	compose=(docker compose -p "$PANDO_PROJECT" -f deploy/compose.yaml)
elif command -v docker-compose >/dev/null; then
	compose=(docker-compose -p "$PANDO_PROJECT" -f deploy/compose.yaml)
else
	echo "docker-smoke: needs docker compose or docker-compose (Debian: apt-get install docker-compose)" >&2
	exit 1
fi
cleanup() {
	status=$?
	if [ $status -ne 0 ]; then
		for i in 1 2 3; do echo "--- logs of node $i"; docker logs --tail 30 "$PANDO_PROJECT-$i" 2>&1 || true; done
	fi
	"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
	exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM
eps="pando-1:7001,pando-2:7001,pando-3:7001"
pando() { # pando NODE ARGS...: run the CLI inside a node's container
	local n=$1; shift
	timeout 20 docker exec "$PANDO_PROJECT-$n" /pando "$@"
}
leader() { # the ID of range 1's leader as node $1 sees it
	pando "$1" status --json --timeout 2s --endpoints "pando-$1:7001" 2>/dev/null |
		tr -d ' \n' | sed -n 's/.*"ranges":\[{[^}]*"leader_id":\([0-9]*\).*/\1/p'
}
wait_leader() { # wait until node $1 knows a leader other than $2
	for _ in $(seq 1 150); do
		l=$(leader "$1" || true)
		if [ -n "$l" ] && [ "$l" != 0 ] && [ "$l" != "${2:-}" ]; then echo "$l"; return 0; fi
		sleep 0.2
	done
	echo "no leader seen by node $1" >&2
	return 1
}

echo "docker-smoke: starting 3 nodes ($PANDO_IMAGE)"
"${compose[@]}" up -d
lead=$(wait_leader 1)
echo "docker-smoke: leader is node $lead"
for i in $(seq 1 20); do pando 1 put "smoke/$i" "value-$i" --endpoints "$eps" >/dev/null; done
echo "docker-smoke: wrote 20 keys; stopping the leader's container"
"${compose[@]}" stop "pando-$lead" >/dev/null
other=1; [ "$lead" = 1 ] && other=2
new=$(wait_leader "$other" "$lead")
echo "docker-smoke: node $new leads now"
for i in $(seq 21 40); do pando "$other" put "smoke/$i" "value-$i" --endpoints "$eps" >/dev/null; done
echo "docker-smoke: wrote 20 more without node $lead; restarting it"
"${compose[@]}" start "pando-$lead" >/dev/null
wait_leader "$lead" >/dev/null
# The restarted node catches up: its own replica (stale read) has the last key.
for _ in $(seq 1 100); do
	if [ "$(pando "$lead" get smoke/40 --stale --endpoints "pando-$lead:7001" 2>/dev/null)" = value-40 ]; then break; fi
	sleep 0.2
done
for n in 1 2 3; do
	for i in $(seq 1 40); do
		got=$(pando "$n" get "smoke/$i" --stale --endpoints "pando-$n:7001")
		if [ "$got" != "value-$i" ]; then echo "docker-smoke: node $n has smoke/$i = '$got'" >&2; exit 1; fi
	done
	pando "$n" get smoke/40 --endpoints "pando-$n:7001" >/dev/null
done
echo "docker-smoke: every node has all 40 keys; ok"
