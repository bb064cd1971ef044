# thaw: build, demo and test targets. `make help` lists them.
GO      ?= go
BIN     ?= bin/thaw
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# Fuzz each target briefly in `make test`; `make fuzz FUZZTIME=5m` for longer.
FUZZTIME ?= 10s

.PHONY: help build demo test unit fuzz e2e bench bench-burst bench-lazy bench-lazy-cluster clean

help:
	@echo "make demo   build thaw and run the self-contained demo (no internet needed)"
	@echo "make test   vet, unit and in-process integration tests with -race, short fuzzing"
	@echo "make e2e    as root: real containerd, runc and registry end-to-end tests"
	@echo "make bench  the mirror benchmarks of README"
	@echo "make bench-burst  as root: the peer network's burst benchmark of README"
	@echo "make bench-lazy   as root: the lazy loading (eStargz) cold-start benchmark of README"
	@echo "make bench-lazy-cluster  as root: the same on four nodes of the multi-node harness at once"

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/thaw

demo: build
	./$(BIN) demo

test: unit fuzz

unit:
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

# Every Fuzz* target, each for FUZZTIME, on top of its seed corpus (which
# `unit` already runs as ordinary tests). A failure that left a new input in
# testdata/fuzz is a finding and fails at once; one that left none (the fuzz
# engine losing a worker on a loaded machine) is retried once, with its log.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
			for try in 1 2; do \
				before=$$(ls $$dir/testdata/fuzz/$$f 2>/dev/null | wc -l); \
				if $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg >/tmp/thaw-fuzz.log 2>&1; then break; fi; \
				tail -n 40 /tmp/thaw-fuzz.log; \
				after=$$(ls $$dir/testdata/fuzz/$$f 2>/dev/null | wc -l); \
				if [ "$$after" != "$$before" ] || [ $$try = 2 ]; then \
					echo "fuzzing $$f in $$pkg failed; a failing input, if any, is in $$dir/testdata/fuzz/$$f"; exit 1; \
				fi; \
				echo "fuzzing $$f stopped without a finding; retrying once"; \
			done; \
		done; \
	done

e2e:
	bash integration/e2e-deps.sh
	$(GO) test -p 1 -tags e2e -count=1 -v -timeout 40m ./integration/...

# The burst benchmark of README (as root, several minutes).
bench-burst:
	bash integration/e2e-deps.sh
	THAW_BURST=1 $(GO) test -tags e2e -count=1 -run TestBurstBenchmark -v -timeout 60m ./integration/cluster/

# The lazy loading cold-start benchmark of README (as root, several minutes).
bench-lazy:
	bash integration/e2e-deps.sh
	THAW_LAZY_BENCH=1 $(GO) test -tags e2e -count=1 -run TestLazyBenchmark -v -timeout 60m ./integration/lazy/

# The eStargz cold start on four nodes of the multi-node harness at once,
# against the plain image through the peer network (as root, several minutes).
bench-lazy-cluster:
	bash integration/e2e-deps.sh
	THAW_CLUSTER_LAZY=1 $(GO) test -tags e2e -count=1 -run TestClusterLazyBenchmark -v -timeout 60m ./integration/cluster/

bench:
	$(GO) test -run '^$$' -bench 'BenchmarkServeCachedBlob|BenchmarkBurstOneBlob|BenchmarkTailRangeOfAbsentBlob' -benchtime 5x ./puller/mirror

clean:
	rm -rf bin
