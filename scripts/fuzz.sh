#!/usr/bin/env bash
# fuzz.sh: run every fuzz target of the repository (each `func FuzzX` in a
# _test.go file: one per decoder of network input) for FUZZTIME (default
# 20s) each. `make test` runs it, so CI fuzzes every target on every run.
# A crash fails the run and leaves its input in the package's
# testdata/fuzz/FuzzX/: commit it with the fix, and `go test` replays it
# from then on as a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-20s}
go=${GO:-go}
n=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
while IFS=: read -r file name; do
	pkg=./$(dirname "${file#./}")
	echo "fuzz: $name in $pkg for $fuzztime"
	if ! "$go" test -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" "$pkg" >"$log" 2>&1; then
		cat "$log"
		echo "fuzz: $name FAILED (its input, if it found one, is in $pkg/testdata/fuzz/$name/)" >&2
		exit 1
	fi
	tail -n 3 "$log"
	n=$((n + 1))
done < <(grep -r --include='*_test.go' -o '^func Fuzz[A-Za-z0-9_]*' . | sed 's/func //' | sort)
[ "$n" -gt 0 ] || { echo "fuzz: no fuzz targets found" >&2; exit 1; }
echo "fuzz: $n targets, $fuzztime each: no crash"
