# The two commands that matter: `make run` and `make test`. Both first make
# sure PostgreSQL and Redis answer on 127.0.0.1 (scripts/services.sh installs
# and starts them when they do not).

BINARY ?= zenspa
GO ?= go

# sudo resets PATH to its secure_path, which lacks /usr/local/go/bin, where Go
# is usually installed: look there when PATH has no go (for go and gofmt).
ifeq ($(shell command -v $(GO) 2>/dev/null),)
export PATH := /usr/local/go/bin:$(PATH)
endif

# staticcheck runs at a pinned release through `go run`, so that it never
# enters go.mod: v0.8.2 (2026.2.2), the newest release, supports Go 1.26.
STATICCHECK_VERSION := v0.8.2

# Stamped into `make build` binaries; `zenspa version` prints them.
VERSION ?= 0.1.0
COMMIT ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
DATE ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -s -w -X main.buildVersion=$(VERSION) -X main.buildCommit=$(COMMIT) -X main.buildDate=$(DATE)

.PHONY: soak run dev test services services-test build lint vet fmt-check staticcheck preflight clean tools lint-openapi test-browser fuzz bench

## run: start the services, write .env if missing, build, apply the
## migrations and serve on :8000
run: preflight services .env build
	./$(BINARY) migrate up
	./$(BINARY)

## dev: like run, and rebuild and restart the server whenever a .go, .sql or
## .env file changes (scripts/dev.sh); Ctrl-C stops both
dev: preflight .env
	@bash scripts/services.sh --dev
	@exec env GO='$(GO)' BINARY='$(BINARY)' bash scripts/dev.sh

## test: the service check, the linters, the OpenAPI lint, and every test
## (the browser test of /docs and /redoc included) with the race detector.
## ZENSPA_REQUIRE_TOOLS=1 makes a test fail where a plain `go test ./...`
## skips it for a missing tool.
test: preflight services-test tools lint lint-openapi
	ZENSPA_REQUIRE_TOOLS=1 $(GO) test -race -count=1 -timeout 15m ./...

## services: PostgreSQL and Redis running, the zenspa role and database, and
## the zenspa_test role: what a plain `go test ./...` needs
services:
	@bash scripts/services.sh

## services-test: the same plus the tools the other tests need
services-test:
	@bash scripts/services.sh --test

# preflight stops at once, saying what to do, where make cannot go on: no Go,
# or `sudo make ...` in a checkout of the user who ran sudo, which would leave
# files there that only root may change (services.sh asks for the password
# itself when it must install something).
preflight:
	@command -v $(GO) >/dev/null 2>&1 || { \
		echo "make: $(GO) is not on PATH nor in /usr/local/go/bin: install Go, or put its bin directory on PATH" >&2; exit 1; }
	@if [ "$$(id -u)" = 0 ] && [ -n "$${SUDO_USER:-}" ] && [ "$$(stat -c %U .)" = "$$SUDO_USER" ]; then \
		echo "make: do not run make through sudo here: run \`make $(MAKECMDGOALS)\` as $$SUDO_USER;" >&2; \
		echo "make: it asks for the sudo password itself when it must install something, and as root it would leave files $$SUDO_USER cannot change" >&2; \
		exit 1; fi

.env:
	cp .env.example .env

## build: a static release binary with version, commit and date stamped in
build: preflight
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BINARY) .

## lint: gofmt (listing the files it would change), go vet and staticcheck
lint: fmt-check vet staticcheck

# Each check fails when its tool is missing: a check that cannot run must not pass.
fmt-check: preflight
	@out=$$(gofmt -l .) || { echo "fmt-check: gofmt did not run (see above)" >&2; exit 1; }; \
	if [ -n "$$out" ]; then echo "gofmt needed:" >&2; echo "$$out" >&2; exit 1; fi

vet: preflight
	$(GO) vet ./...

staticcheck: preflight
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

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
test-browser: preflight services-test tools
	ZENSPA_REQUIRE_TOOLS=1 $(GO) test -race -count=1 -v -run 'TestDocsBrowser' .

## fuzz: every Go fuzz target (found with go test -list) for FUZZTIME each
FUZZTIME ?= 60s
fuzz: preflight
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

## soak: three instances behind HAProxy under a fault every ~20 s for SOAK
## (5m; SOAK=60s make soak for a short one), judged by a table of
## invariants (RELIABILITY.md); not part of `make test`, and without -race:
## it is a load test
SOAK ?= 5m
soak: preflight services-test
	ZENSPA_REQUIRE_TOOLS=1 ZENSPA_SOAK=$(SOAK) $(GO) test -count=1 -run '^TestSoak$$' -v -timeout 60m .

clean:
	rm -f $(BINARY)
