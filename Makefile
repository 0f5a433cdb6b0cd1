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

.PHONY: run test services build vet fmt-check clean

## run: start the services, write .env if missing, build and serve on :8000
run: services .env build
	./$(BINARY)

## test: the service check, gofmt, go vet, and every test with the race detector
test: services fmt-check vet
	$(GO) test -race -count=1 -timeout 15m ./...

services:
	@bash scripts/services.sh

.env:
	cp .env.example .env

## build: a static release binary with version, commit and date stamped in
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BINARY) .

fmt-check:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

clean:
	rm -f $(BINARY)
