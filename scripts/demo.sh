#!/usr/bin/env bash
# demo.sh: a live migration between two hosts on this machine. Host a and
# host b are network namespaces joined by a veth pair (scripts/two-hosts.sh);
# phaul-service runs on b, a workload (a counter, a child process, a TCP
# server holding a random token and 256 MiB of verifiable memory) runs on a,
# and `phaul migrate` moves it to b. Then a second workload moves with
# `phaul migrate --postcopy`: it runs on b before its memory has crossed.
# Run by `make demo` (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/bin
name=phauldemo
work=$(mktemp -d /tmp/phaul-demo.XXXXXX)
svc=
cleanup() {
	set +e
	[ -n "$svc" ] && kill "$svc" 2>/dev/null && wait "$svc" 2>/dev/null
	for pid in $(pgrep -f "phaul-workload --state $work/" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
	scripts/two-hosts.sh down "$name"
	for c in memory cpu cpuacct pids blkio systemd; do
		find "/sys/fs/cgroup/$c/$name" -depth -type d -exec rmdir {} + 2>/dev/null
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
on() { local host=$1; shift; scripts/two-hosts.sh "$host" "$name" "$@"; }
ask() { on "$1" bash -c "exec 3<>/dev/tcp/$2/9000 && echo $3 >&3 && timeout 5 head -n1 <&3"; }

scripts/two-hosts.sh down "$name" >/dev/null 2>&1 || true
echo "== two hosts: a = 10.77.0.1, b = 10.77.0.2 (network namespaces $name-a, $name-b)"
scripts/two-hosts.sh up "$name" >/dev/null
"$bin/phaul" certs "$work/tls" >/dev/null
echo "== phaul-service on b"
on b "$bin/phaul-service" --config "" --listen 10.77.0.2:7070 --tls-dir "$work/tls" --work-dir "$work/service" \
	--cgroup-root "/$name" >"$work/service.log" 2>&1 &
svc=$!
for _ in $(seq 100); do grep -q msg=listening "$work/service.log" && break; sleep 0.05; done

# workload STATE: starts a workload on a, prints its pid.
workload() {
	on a setsid unshare -p -f setsid "$bin/phaul-workload" --state "$1" --interval 20ms \
		--child --listen 0.0.0.0:9000 --mem 256 --dirty 2000 </dev/null >/dev/null 2>&1 &
	for _ in $(seq 200); do [ -s "$1" ] && break; sleep 0.05; done
	sleep 0.5
	pgrep -f "phaul-workload --state $1 --interval" | while read -r p; do
		grep -qE '^NSpid:\s+[0-9]+\s+1$' "/proc/$p/status" && echo "$p"; done | head -n1
}

# moved PID: checks that PID left a and answers on b with its memory.
moved() {
	echo "== after the migration"
	if [ -e "/proc/$1" ]; then echo "   the source process still exists!" >&2; exit 1; fi
	echo "   pid $1 is gone from a"
	echo "   asked on b's address:  $(ask b 10.77.0.2 GET)"
	echo "   its own memory check:  $(ask b 10.77.0.2 SUM)"
	echo "   (same token: the same process, with its memory, now on host b)"
}

echo "== a workload on a: counter, child, TCP server on 0.0.0.0:9000, 256 MiB"
pid=$(workload "$work/state")
echo "   pid $pid; asked from a: $(ask a 10.77.0.1 GET)"

echo "== phaul migrate $pid 10.77.0.2:7070   (run on a)"
on a "$bin/phaul" migrate --tls-dir "$work/tls" --work-dir "$work/source" "$pid" 10.77.0.2:7070
moved "$pid"
pkill -9 -f "phaul-workload --state $work/state " || true
sleep 0.5

echo
echo "== again with post-copy: a second workload, restored on b before its memory crosses"
pid=$(workload "$work/state2")
echo "   pid $pid; asked from a: $(ask a 10.77.0.1 GET)"
echo "== phaul migrate --postcopy $pid 10.77.0.2:7070   (run on a)"
on a "$bin/phaul" migrate --postcopy --tls-dir "$work/tls" --work-dir "$work/source" "$pid" 10.77.0.2:7070
moved "$pid"
