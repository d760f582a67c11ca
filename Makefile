# Postamt: `make run` starts the suite on this machine, `make test` runs every check CI runs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
GO ?= go
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)

# Every Go module of the workspace; each also builds on its own (GOWORK=off).
MODULES := proto internal services/mailbox services/outbox services/tracker services/calendar gateway cmd/postamt deploy faults bench
# The buf image the API is checked against for breaking changes; refresh with `make baseline` when
# a release is cut.
BASELINE := proto/baseline.binpb

.PHONY: all run test prereqs tools generate lint fmt vet staticcheck golangci-lint breaking check-generated \
	tidy-check build-modules go-test test-cluster promtool-test bench baseline fuzz clean

all: test

## run: the whole suite in one process (embedded NATS, Redis from REDIS_URL or a spawned one),
## with bin/grpcurl (pinned in tools/go.mod) for the printed quick start.
run: $(BIN)/grpcurl
	$(GO) run ./cmd/postamt up

$(BIN)/grpcurl: tools/go.mod tools/go.sum
	cd tools && GOWORK=off GOBIN=$(BIN) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl

## test: everything CI checks; first, what it needs beyond Go (tools/prereqs.sh says what is
## missing and how to install it).
test: prereqs lint breaking check-generated tidy-check build-modules vet staticcheck golangci-lint promtool-test go-test

## prereqs: the programs the tests run beside Go (redis-server, radicale, and promtool and a
## Chromium once tests use them), each missing one named with how to install it.
prereqs:
	@tools/prereqs.sh

## tools: the pinned code generators, buf and the linters, built from tools/go.mod,
## tools/buf/go.mod and tools/lint/go.mod.
tools: $(BIN)/.tools-stamp
$(BIN)/.tools-stamp: tools/go.mod tools/go.sum tools/buf/go.mod tools/buf/go.sum tools/lint/go.mod tools/lint/go.sum
	cd tools && GOWORK=off GOBIN=$(BIN) $(GO) install tool
	cd tools/buf && GOWORK=off GOBIN=$(BIN) $(GO) install tool
	cd tools/lint && GOWORK=off GOBIN=$(BIN) $(GO) install tool
	touch $@

## generate: regenerate proto/gen from proto/ with the local plugins.
generate: tools
	buf generate

## lint: buf lint and format, gofmt.
lint: tools
	buf lint
	buf format --diff --exit-code
	@out=$$(git ls-files '*.go' | grep -v '^proto/gen/' | xargs gofmt -l); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

fmt: tools
	buf format -w
	git ls-files '*.go' | grep -v '^proto/gen/' | xargs gofmt -w

## breaking: the API against the committed baseline image.
breaking: tools
	buf breaking --against $(BASELINE)

baseline: tools
	buf build -o $(BASELINE)

## check-generated: the committed generated code is what the protos generate.
check-generated: generate
	@if [ -n "$$(git status --porcelain -- proto/gen)" ]; then \
		echo "proto/gen differs from the protos: run 'make generate' and commit"; \
		git status --porcelain -- proto/gen; exit 1; fi

## tidy-check: every go.mod is tidy.
tidy-check:
	@for m in $(MODULES) tools tools/lint; do \
		(cd $$m && GOWORK=off $(GO) mod tidy -diff) || { echo "go.mod of $$m is not tidy: run go mod tidy there"; exit 1; }; \
	done

## build-modules: every module builds on its own, without the workspace.
build-modules:
	@for m in $(MODULES); do (cd $$m && GOWORK=off $(GO) build ./...) || exit 1; done

vet:
	@for m in $(MODULES); do (cd $$m && $(GO) vet ./...) || exit 1; done

## staticcheck: staticcheck (tools/lint/go.mod) over every module; its default checks. A finding
## that is wrong for its line is silenced there with `//lint:ignore CHECK reason`.
staticcheck: tools
	@for m in $(MODULES); do (cd $$m && staticcheck ./...) || exit 1; done

## golangci-lint: golangci-lint (tools/lint/go.mod) over every module, with the linters and the
## justified exclusions of .golangci.yml.
golangci-lint: tools
	@for m in $(MODULES); do (cd $$m && golangci-lint run -c $(CURDIR)/.golangci.yml ./...) || exit 1; done

## promtool-test: the alert rules (deploy/prometheus/rules.yml) are valid and pass their unit
## tests (rules_test.yml). promtool comes with Debian's `prometheus` package; without it CI fails
## (CI is set) and a developer's run skips with a note.
promtool-test:
	@if ! command -v promtool >/dev/null 2>&1; then \
		if [ -n "$${CI:-}" ]; then echo "promtool-test: promtool is missing: apt-get install -y prometheus (.ci/run installs it)" >&2; exit 1; fi; \
		echo "promtool-test: SKIPPED: promtool is not installed (apt-get install -y prometheus); CI runs it"; exit 0; \
	fi; \
	cd deploy/prometheus && promtool check rules rules.yml && promtool test rules rules_test.yml

# bench holds benchmarks only (run by `make bench`); vet and build-modules compile it.
TEST_MODULES := $(filter-out bench,$(MODULES))

# The fault suite (faults/) runs for about 9 minutes on 2 CPUs, near go test's default limit of
# 10 minutes per test binary: every module gets 25.
go-test: test-cluster
	@for m in $(TEST_MODULES); do (cd $$m && $(GO) test -race -count=1 -timeout 25m ./...) || exit 1; done

# The services whose end-to-end tests take their Redis from redistest.Suite.
CLUSTER_TEST_PACKAGES := services/outbox/app services/mailbox/app services/tracker/app

## test-cluster: the services' end-to-end tests again on a 6-node Redis Cluster (3 masters, 3
## replicas) spawned by the tests, so a command, script or transaction that spans two slots fails.
test-cluster:
	@for p in $(CLUSTER_TEST_PACKAGES); do \
		(cd $$(dirname $$p) && POSTAMT_TEST_REDIS=cluster $(GO) test -race -count=1 ./$$(basename $$p)/) || exit 1; \
	done

## bench: the benchmark harness (see docs/BENCHMARKS.md); prints its figures. BENCH selects
## benchmarks (a regexp, default all; the 1,000,000-email backlogs take minutes per run).
bench:
	cd bench && $(GO) test -run '^$$' -bench '$(or $(BENCH),.)' -benchtime 1x -count $(or $(COUNT),3) -timeout 3h $(BENCHFLAGS)

# The fuzz targets, one "module:package:FuzzName" each (the package relative to its module); a
# new target is one more line. Their seed corpora (f.Add and testdata/fuzz/<FuzzName>/) are
# replayed by every go test, so by `make test` too.
FUZZ_TARGETS := \
	internal:./paging:FuzzCursor \
	internal:./paging:FuzzTokenRoundTrip \
	internal:./mailaddr:FuzzCheck \
	internal:./mailaddr:FuzzFormat \
	services/mailbox:./internal/mailbox:FuzzSenderAddress \
	services/outbox:./internal/message:FuzzBuild \
	services/outbox:./internal/smtp:FuzzSend \
	services/outbox:./internal/smtp:FuzzReplyRoundTrip \
	services/tracker:./internal/tracker:FuzzTokens \
	services/tracker:./internal/tracker:FuzzParseHeaders \
	services/tracker:./internal/journal:FuzzReadCopy \
	services/calendar:./internal/ical:FuzzValidateRRule \
	services/calendar:./internal/ical:FuzzReadFields \
	services/calendar:./internal/ical:FuzzBuild \
	services/calendar:./internal/ical:FuzzVTimezone \
	services/calendar:./internal/caldav:FuzzServerAnswers
FUZZTIME ?= 30s

## fuzz: run every fuzz target for FUZZTIME each (default 30s; FUZZ, a regexp, selects targets by
## their "module:package:FuzzName" entry). Not part of test. A failing input is written to the
## package's testdata/fuzz/<FuzzName>/: fix the code and commit the input as a regression seed.
## A bare "context deadline exceeded" as the time runs out, with no input written, is Go's own
## race (go.dev/issue/75804, fixed in Go 1.27), not a finding: it is reported and passed over.
fuzz:
	@failed=""; log=$$(mktemp); trap 'rm -f "$$log"' EXIT; \
	for t in $(FUZZ_TARGETS); do \
		if ! grep -Eq -- '$(or $(FUZZ),.)' <<< "$$t"; then continue; fi; \
		IFS=: read -r mod pkg name <<< "$$t"; \
		echo "== fuzz $$mod $$pkg $$name for $(FUZZTIME)"; \
		if (cd $$mod && $(GO) test $$pkg -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME)) 2>&1 | tee "$$log"; then :; \
		elif grep -qx '    context deadline exceeded' "$$log" && ! grep -q 'Failing input written' "$$log"; then \
			echo "fuzz: $$name: no input found; the deadline error is go.dev/issue/75804, not a failure"; \
		else failed="$$failed $$t"; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failed:$$failed"; exit 1; fi

clean:
	rm -rf $(BIN) data
