#!/usr/bin/env bash
# fuzz.sh: run every fuzz target of the repository (each `func FuzzX` in a
# _test.go file: one per decoder of network input) for about FUZZTIME
# (default 20s) each. `make test` runs it, so CI fuzzes every target on
# every run. A crash fails the run and leaves its input in the package's
# testdata/fuzz/FuzzX/: commit it with the fix, and `go test` replays it
# from then on as a regression test.
#
# The budget is spent in rounds of `-fuzztime Nx` (a count of executions),
# never as a wall-clock `-fuzztime 20s`: Go's fuzz coordinator before 1.27
# can fail a target with a bare "context deadline exceeded" when its
# deadline races a worker still running an input (golang/go#75804), which
# is no crash of ours. A count has no deadline to race. Rounds start at
# FUZZ_FIRST executions and grow until two of them measure the target's
# rate and a round's fixed cost; the last is sized from those to fill
# what is left. The coverage
# corpus lives in Go's cache, so each round goes on where the last stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-20s}
first=${FUZZ_FIRST:-5000}
go=${GO:-go}
if [[ $fuzztime =~ ^([0-9]+)s$ ]]; then
	budget=${BASH_REMATCH[1]}
else
	echo "fuzz: FUZZTIME=$fuzztime: want whole seconds such as 20s" >&2
	exit 2
fi
n=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# run_round NAME PKG EXECS: one `go test -fuzz` for EXECS executions.
run_round() {
	if ! "$go" test -run '^$' -fuzz "^$1\$" -fuzztime "${3}x" "$2" >"$log" 2>&1; then
		cat "$log"
		echo "fuzz: $1 FAILED (its input, if it found one, is in $2/testdata/fuzz/$1/)" >&2
		exit 1
	fi
}

while IFS=: read -r file name; do
	pkg=./$(dirname "${file#./}")
	echo "fuzz: $name in $pkg for about ${budget}s"
	# Build the instrumented test once, outside the budget.
	run_round "$name" "$pkg" 1
	start=$(date +%s.%N)
	execs=$first total=0 rounds=0 prev_e=0 prev_d=0
	while :; do
		t0=$(date +%s.%N)
		run_round "$name" "$pkg" "$execs"
		t1=$(date +%s.%N)
		total=$((total + execs)) rounds=$((rounds + 1))
		# A round costs a fixed start (workers, baseline coverage of
		# the corpus) plus its executions. Grow rounds fourfold until
		# two differ by a second, fit rate and start to them, and size
		# the last to fill the budget. Stop when too little is left.
		read -r execs prev_e prev_d < <(awk -v s="$start" -v a="$t0" -v b="$t1" -v e="$execs" \
			-v pe="$prev_e" -v pd="$prev_d" -v B="$budget" 'BEGIN {
			d = b - a; left = B - (b - s)
			if (pe > 0 && d - pd >= 1) {
				r = (e - pe) / (d - pd); o = d - e / r; if (o < 0) o = 0
				n = int(r * (left - o))
			} else {
				n = e * 4; if (d * 4 > left) n = int(n * left / (d * 4))
			}
			if (left < 1.5 || n < 100) n = 0
			print n, e, d }')
		[ "$execs" -gt 0 ] || break
	done
	elapsed=$(awk -v s="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - s }')
	echo "fuzz: $name: $total executions in $rounds rounds, ${elapsed}s, no crash"
	n=$((n + 1))
done < <(grep -r --include='*_test.go' -o '^func Fuzz[A-Za-z0-9_]*' . | sed 's/func //' | sort)
[ "$n" -gt 0 ] || { echo "fuzz: no fuzz targets found" >&2; exit 1; }
echo "fuzz: $n targets, about $fuzztime each: no crash"
