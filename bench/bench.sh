#!/usr/bin/env bash
# bench.sh is `make bench`: it builds zenspa's release binary the way
# `make build` does, builds this module's baseline and harness, and runs the
# harness, which drives both servers with wrk and prints the report
# BENCHMARKS.md shows. Extra arguments go to the harness (bench/run), for
# example -rounds 1. PostgreSQL, Redis, wrk and psql must be there: `make
# bench` runs scripts/services.sh --bench first.
set -euo pipefail
cd "$(dirname "$0")" # the bench module; wrk scripts are found from here

GO=${GO:-go}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

make -s --no-print-directory -C .. build BINARY="$dir/zenspa"
CGO_ENABLED=0 "$GO" build -trimpath -ldflags '-s -w' -o "$dir/baseline" ./baseline
CGO_ENABLED=0 "$GO" build -o "$dir/run" ./run
"$dir/run" -zenspa "$dir/zenspa" -baseline "$dir/baseline" "$@"
