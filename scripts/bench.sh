#!/usr/bin/env bash
# bench.sh is `make bench`: it builds the release binary the way `make build`
# does and the bare net/http baseline (bench/baseline), then bench/run drives
# both with wrk and prints the report BENCHMARKS.md shows. Extra arguments go
# to bench/run (for example -rounds 3). PostgreSQL, Redis, wrk and psql must
# be there: `make bench` runs scripts/services.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

make -s build BINARY="$dir/zenspa"
CGO_ENABLED=0 "$GO" build -trimpath -ldflags '-s -w' -o "$dir/baseline" ./bench/baseline
CGO_ENABLED=0 "$GO" build -o "$dir/run" ./bench/run
"$dir/run" -zenspa "$dir/zenspa" -baseline "$dir/baseline" "$@"
