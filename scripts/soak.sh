#!/usr/bin/env bash
# soak.sh: is the suite stable? Runs the unit and integration tests (`go
# test -race ./...`, as `make test` does, without the fuzzing) SOAK_N times
# in a row (default 5) on a fresh clone of this repository's HEAD, then
# once more with every CPU kept busy by other processes (busy loops, one
# per CPU), and lists every failing test of every run by its name. Exits 1
# if any run failed. `make soak` runs it (as root, like `make test`).
#
# The clone, each run's `go test -json` output and the summary stay in
# SOAK_DIR (default: a new directory below /var/tmp), for reading a
# failure's whole log afterwards.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
n=${SOAK_N:-5}
go=${GO:-go}
if ((EUID != 0)); then
	echo "soak: run it as root: the integration tests need root (and fail without it under CI=true)" >&2
	exit 2
fi
if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 1)); then
	echo "soak: SOAK_N=$n: want a count of runs, 1 or more" >&2
	exit 2
fi
dir=${SOAK_DIR:-$(mktemp -d /var/tmp/phaul-soak.XXXXXX)}
mkdir -p "$dir"
rm -rf "$dir/phaul"
git clone -q "$src" "$dir/phaul"
cd "$dir/phaul"
echo "soak: $n runs plus one loaded, of $(git log -1 --format='%h %s' | cut -c1-72), in $dir"
make -s deps >/dev/null

busy=()
stop_busy() {
	((${#busy[@]} == 0)) || kill "${busy[@]}" 2>/dev/null || true
	busy=()
}
trap stop_busy EXIT

summary=$dir/summary.txt
: >"$summary"
failed=0
# run NAME: one run of the suite; its failures go to the summary.
run() {
	local name=$1 out=$dir/$1.json t0=$SECONDS rc=0
	CI=true "$go" test -race -count=1 -timeout 15m -json ./... >"$out" 2>"$dir/$name.stderr" || rc=$?
	# test2json: {"Time":..,"Action":"fail","Package":"P","Test":"T",..};
	# a line without "Test" is the package's own (a build failure, a
	# panic, a timeout).
	local fails
	fails=$(sed -n 's/.*"Action":"fail","Package":"\([^"]*\)"\(,"Test":"\([^"]*\)"\)\{0,1\}.*/\1 \3/p' "$out" | sort -u)
	if ((rc == 0)) && [[ -z $fails ]]; then
		echo "$name: pass ($((SECONDS - t0)) s)" | tee -a "$summary"
		return
	fi
	failed=$((failed + 1))
	echo "$name: FAIL ($((SECONDS - t0)) s, go test exit $rc)" | tee -a "$summary"
	if [[ -z $fails ]]; then
		echo "    (no test named: see $dir/$name.stderr)" | tee -a "$summary"
	fi
	while read -r pkg test; do
		[[ -n $pkg ]] || continue
		echo "    ${pkg#github.com/phaul/phaul/} ${test:-(the package itself)}" | tee -a "$summary"
	done <<<"$fails"
}

for i in $(seq 1 "$n"); do
	run "run-$i"
done
for _ in $(seq 1 "$(nproc)"); do
	(while :; do :; done) &
	busy+=($!)
done
run "loaded"
stop_busy

total=$((n + 1))
echo "soak: $((total - failed)) of $total runs passed; summary in $summary"
((failed == 0))
