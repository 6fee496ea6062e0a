GO ?= go
PROTOC_GEN_GO_VERSION = v1.36.12
PROTOC_GEN_GO_GRPC_VERSION = v1.5.1

.PHONY: build test test-short proto bench fuzz soak browser-deps test-browser

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

# browser-deps installs Debian's chromium for the dashboard's browser test
# (TestDashboardShowsFailoverInBrowser skips without it).
browser-deps:
	bash scripts/install-chromium.sh

# test-browser runs the dashboard in headless chromium against a real demo;
# the screenshot lands in artifacts/.
test-browser: browser-deps
	PANDO_BROWSER_TESTS=1 $(GO) test -count=1 -timeout 5m -run TestDashboard -v ./cmd/pando
