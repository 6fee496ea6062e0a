#!/usr/bin/env bash
# fuzz.sh: runs every fuzz target of the module for FUZZTIME each (default 10s).
# go test -fuzz takes one package and one target at a time, so the targets are
# found by name (func FuzzXxx in *_test.go) and run one by one. A failure stops
# the run; its input is kept in the package's testdata/fuzz/ for replay.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-10s}
GO=${GO:-go}
found=0
while IFS=: read -r file _ rest; do
	name=$(sed -E 's/^func (Fuzz[A-Za-z0-9_]+)\(.*/\1/' <<<"$rest")
	pkg=./$(dirname "$file")
	echo "== $pkg $name ($FUZZTIME)"
	"$GO" test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$pkg"
	found=$((found + 1))
done < <(git ls-files '*_test.go' | xargs grep -n '^func Fuzz' | sort)
echo "$found fuzz targets ran for $FUZZTIME each"
