GO ?= go
PROTOC_GEN_GO_VERSION = v1.36.12
PROTOC_GEN_GO_GRPC_VERSION = v1.5.1

.PHONY: build test test-short proto bench fuzz soak bench-compare

build:
	$(GO) build -o bin/pando ./cmd/pando

test:
	$(GO) vet ./...
	$(GO) test -race -timeout 14m ./...

# proto regenerates api/pandopb; needs protoc (Debian: protobuf-compiler).
proto:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH="$$($(GO) env GOPATH)/bin:$$PATH" protoc -I api --go_out=api/pandopb --go_opt=paths=source_relative \
		--go-grpc_out=api/pandopb --go-grpc_opt=paths=source_relative api/pando.proto

# bench-compare runs pando and etcd side by side on this machine (DURATION=15s per run by default).
bench-compare:
	bash bench/compare.sh
