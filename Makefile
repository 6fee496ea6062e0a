GO ?= go
PROTOC_GEN_GO_VERSION = v1.36.12
PROTOC_GEN_GO_GRPC_VERSION = v1.5.1

.PHONY: build test test-short proto bench fuzz soak faults bench-compare bench-watch bench-history-bytes bench-ranges bench-election browser-deps test-browser docker-image docker-smoke

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/pando ./cmd/pando

test:
	$(GO) vet ./...
	$(GO) test -race -timeout 14m ./...

# test-short: the suite without the race detector, with -short (shorter fault runs): a quick check.
test-short:
	$(GO) test -short -timeout 10m ./...

# bench: the Go benchmarks (go test -bench); `make bench-compare` and `make bench-ranges`
# measure whole clusters.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# fuzz: every fuzz target for FUZZTIME each (default 10s; scripts/fuzz.sh).
fuzz:
	FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

# soak: the linearizability checks under faults SOAK_RUNS times (default 20), each run
# with a new seed (a failure logs its seed; PANDO_SEED=N replays it), about 10-20 s a run.
SOAK_RUNS ?= 20
FUZZTIME ?= 10s
soak:
	$(GO) test -count=$(SOAK_RUNS) -timeout 60m -run 'TestLinearizable' ./internal/cluster/

# faults: over real processes in network namespaces (root, ip, nft, tc): the partition test
# for cuts of 5 s, 30 s and 120 s (PANDO_PARTITIONS overrides), and the network nemesis
# PANDO_NEMESIS_RUNS times (default 5; about 55 s a run); docs/reliability.md.
faults:
	PANDO_PARTITIONS=$${PANDO_PARTITIONS:-5s,30s,120s} PANDO_NEMESIS_RUNS=$${PANDO_NEMESIS_RUNS:-5} \
		$(GO) test -count=1 -timeout 60m -v -run 'TestPartitionedLeaderRecoversAfterHeal|TestRealNetworkNemesis' ./cmd/pando/

# proto regenerates api/pandopb; needs protoc (Debian: protobuf-compiler).
proto:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH="$$($(GO) env GOPATH)/bin:$$PATH" protoc -I api --go_out=api/pandopb --go_opt=paths=source_relative \
		--go-grpc_out=api/pandopb --go-grpc_opt=paths=source_relative api/pando.proto

# bench-ranges: put throughput of one range against 64 ranges (three local processes);
# NODE_CPU=0.5 make bench-ranges gives each node its own CPU budget (cgroup quota, root).
# NODE_CPUSETS="0-1 2-3 4-5" LOADGEN_CPUSET=6-7 pins each node to cores of its own (8+ cores).
bench-ranges:
	bash scripts/bench-ranges.sh

# bench-compare runs pando and etcd side by side on this machine (DURATION=15s per run, ROUNDS=1 by default;
# ROUNDS=3 reports medians of three interleaved rounds).
bench-compare:
	bash bench/compare.sh
# bench-watch: the same side by side for the watch workload (events delivered a second,
# delivery latency to a node that does not lead the keys).
bench-watch:
	COMPARE=watch bash bench/compare.sh
# bench-history-bytes: history's bytes on disk per revision, one pando server against one etcd
# member, the same overwrites with random values (REVISIONS=200000 KEYS=1000 VALUE_SIZE=256 by
# default); about a minute.
bench-history-bytes:
	bash bench/history-bytes.sh
# bench-election: ten takeovers after a SIGKILL of the leading worker process
# (examples/election, TTL 2s, three candidates on a three-node cluster); prints the worst.
bench-election:
	PANDO_BENCH_ELECTION=1 $(GO) test ./examples/election -run TestElectionFailoverWorstOf10 -count=1 -v
# browser-deps installs Debian's chromium for the dashboard's browser test
# (TestDashboardShowsFailoverInBrowser skips without it).
browser-deps:
	bash scripts/install-chromium.sh

# test-browser runs the dashboard in headless chromium against a real demo;
# the screenshot lands in artifacts/.
test-browser: browser-deps
	PANDO_BROWSER_TESTS=1 $(GO) test -count=1 -timeout 5m -run TestDashboard -v ./cmd/pando

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS = -s -w -X main.version=$(VERSION)

# docker-image builds the static binary here and copies it into an empty
# (scratch) image: no base image, no registry.
docker-image:
	rm -rf .docker-ctx && mkdir -p .docker-ctx/data
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o .docker-ctx/pando ./cmd/pando
	cp Dockerfile .docker-ctx/
	docker build -t pando:dev .docker-ctx

# docker-smoke runs three containers, stops the leader's, keeps writing,
# restarts it and reads everything back (scripts/docker-smoke.sh).
docker-smoke: docker-image
	bash scripts/docker-smoke.sh
