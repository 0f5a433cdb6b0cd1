# The two commands that matter: `make run` and `make test`. Both first make
# sure PostgreSQL and Redis answer on 127.0.0.1 (scripts/services.sh installs
# and starts them when they do not).

BINARY ?= zenspa
GO ?= go

# Stamped into `make build` binaries; `zenspa version` prints them.
VERSION ?= 0.1.0
COMMIT ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
DATE ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -s -w -X main.buildVersion=$(VERSION) -X main.buildCommit=$(COMMIT) -X main.buildDate=$(DATE)

.PHONY: run test services services-test build vet fmt-check clean tools lint-openapi test-browser fuzz bench

## run: start the services, write .env if missing, build and serve on :8000
run: services .env build
	./$(BINARY)

## test: the service check, gofmt, go vet, the OpenAPI lint, and every test
## (the browser test of /docs and /redoc included) with the race detector
test: services-test tools fmt-check vet lint-openapi
	$(GO) test -race -count=1 -timeout 15m ./...

## services: PostgreSQL and Redis running, the zenspa role and database
services:
	@bash scripts/services.sh

## services-test: the same plus the zenspa_test role and the test tools
services-test:
	@bash scripts/services.sh --test

.env:
	cp .env.example .env

## build: a static release binary with version, commit and date stamped in
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BINARY) .

fmt-check:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# Redocly must not phone home: no usage telemetry, no update check.
REDOCLY := REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true tools/node_modules/.bin/redocly

## tools: the npm packages pinned in tools/package-lock.json (the OpenAPI
## linter, and the Swagger UI and ReDoc files the browser test serves),
## installed when missing or when the lock file changes. No install scripts:
## none of them needs one, and one would send install analytics.
tools: tools/node_modules/.installed

tools/node_modules/.installed: tools/package.json tools/package-lock.json | services-test
	npm ci --prefix tools --ignore-scripts --no-audit --no-fund
	@touch $@

## lint-openapi: openapi.json through the pinned linter; a warning fails too
lint-openapi: tools
	$(REDOCLY) lint --extends recommended-strict openapi.json

## test-browser: only the headless Chromium test of /docs and /redoc
test-browser: services-test tools
	$(GO) test -race -count=1 -v -run 'TestDocsBrowser' .

## fuzz: every Go fuzz target (found with go test -list) for FUZZTIME each
FUZZTIME ?= 60s
fuzz:
	@targets=$$($(GO) test -list '^Fuzz' . | grep '^Fuzz'); \
	if [ -z "$$targets" ]; then echo "fuzz: no fuzz targets found"; exit 1; fi; \
	for f in $$targets; do \
		echo "fuzz: $$f for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) . || exit 1; \
	done

## bench: the load benchmark in BENCHMARKS.md, not part of `make test`: wrk
## against a `make build` binary and the net/http baselines of bench/ (a Go
## module of its own), about sixteen minutes. BENCH_ARGS go to bench/run, for
## example BENCH_ARGS='-rounds 1'.
BENCH_ARGS ?=
bench:
	@bash scripts/services.sh --bench
	@bash bench/bench.sh $(BENCH_ARGS)

clean:
	rm -f $(BINARY)
