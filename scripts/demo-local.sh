#!/usr/bin/env bash
# demo-local.sh: checkpoint a live process with phaul and restore it, showing that
# it carries on counting from where it was. Run by `make demo-local` (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/bin
work=$(mktemp -d /tmp/phaul-demo.XXXXXX)
pid=
cleanup() {
	[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

state=$work/state
count() { cut -d' ' -f1 "$state"; }

echo "== starting a workload that counts every 20 ms"
setsid "$bin/phaul-workload" --state "$state" --interval 20ms --mem 64 </dev/null >/dev/null 2>&1 &
pid=$!
disown "$pid"
sleep 1
echo "   pid $pid, counter at $(count)"

echo "== phaul dump $pid $work/images"
"$bin/phaul" dump "$pid" "$work/images"
while [ -e "/proc/$pid" ]; do sleep 0.02; done # reaped: its PID is free again
at_dump=$(count)
echo "   the process is gone; its counter stopped at $at_dump"

echo "== phaul restore $work/images"
"$bin/phaul" restore "$work/images"
sleep 1
now=$(count)
echo "   counter now at $now (dumped at $at_dump)"
kill -USR1 "$pid"; sleep 0.5
echo "   memory check by the workload itself: $(cat "$state.sum")"
[ "$now" -gt "$at_dump" ] || { echo "demo: the restored process does not count on" >&2; exit 1; }
echo "== the process carried on from where it was"
