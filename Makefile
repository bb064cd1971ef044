# thaw: build, demo and test targets. `make help` lists them.
GO      ?= go
BIN     ?= bin/thaw
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# Fuzz each target briefly in `make test`; `make fuzz FUZZTIME=5m` for longer.
FUZZTIME ?= 10s

.PHONY: help build demo test unit fuzz e2e bench bench-burst clean

help:
	@echo "make demo   build thaw and run the self-contained demo (no internet needed)"
	@echo "make test   vet, unit and in-process integration tests with -race, short fuzzing"
	@echo "make e2e    as root: real containerd, runc and registry end-to-end tests"
	@echo "make bench  the mirror benchmarks of README"
	@echo "make bench-burst  as root: the peer network's burst benchmark of README"

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/thaw

demo: build
	./$(BIN) demo

test: unit fuzz

unit:
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

# Every Fuzz* target, each for FUZZTIME, on top of its seed corpus (which
# `unit` already runs as ordinary tests).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg >/dev/null || \
				{ echo "fuzzing $$f in $$pkg failed; the failing input is in that package's testdata/fuzz"; exit 1; }; \
		done; \
	done

# Real containerd, runc and registry (integration/e2e), and the multi-node
# harness: nodes in network namespaces with shaped links (integration/cluster).
e2e:
	bash integration/e2e-deps.sh
	$(GO) test -p 1 -tags e2e -count=1 -v -timeout 40m ./integration/...

# The burst benchmark of README (as root, several minutes).
bench-burst:
	bash integration/e2e-deps.sh
	THAW_BURST=1 $(GO) test -tags e2e -count=1 -run TestBurstBenchmark -v -timeout 60m ./integration/cluster/

bench:
	$(GO) test -run '^$$' -bench 'BenchmarkServeCachedBlob|BenchmarkBurstOneBlob' -benchtime 5x ./puller/mirror

clean:
	rm -rf bin
