# pbkv — build, test and run. `make run` and `make test` install what is missing first.
SHELL := /bin/bash
SWIFT ?= swift
DEB_PACKAGES := protobuf-c-compiler libprotobuf-c-dev zlib1g-dev libdeflate-dev libssl-dev openssl pkg-config etcd-server python3 python3-venv
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)
PROTO_OUT := Sources/CPBKVProto
SWIFT_TEST_FLAGS ?= --no-parallel
# The Python client (clients/python): its tests run in a venv kept under .venv-test (git-ignored).
PYTHON ?= python3
VENV := .venv-test
PY_CLIENT := clients/python
PY_PROTO_OUT := $(PY_CLIENT)/src/pbkv
# Pinned: the generated pbkv_pb2.py depends on the protoc inside grpcio-tools (its protobuf
# gencode version is what pyproject.toml requires of the runtime).
GRPCIO_TOOLS := grpcio-tools==1.85.1
PY_PROTOC = $(VENV)/bin/python -m grpc_tools.protoc -I proto --python_out=$(1) --pyi_out=$(1) proto/pbkv.proto
# The Swift message layer: protoc-c writes the schema as a FileDescriptorSet, scripts/generate_swift.py
# (the venv's protobuf package reads it) writes the codec and services into $(2), the messages into $(3).
SWIFT_GEN_OUT := Sources/PBKVWire/Generated
SWIFT_GEN_CORE_OUT := Sources/PBKVCore/Generated
SWIFT_GEN = protoc-c --descriptor_set_out=$(1)/pbkv.desc --include_imports --include_source_info -Iproto proto/pbkv.proto && \
  PYTHONDONTWRITEBYTECODE=1 $(VENV)/bin/python scripts/generate_swift.py $(1)/pbkv.desc $(2) --messages-dir $(3) --proto proto/pbkv.proto

.PHONY: deps build release test test-scenarios run proto proto-check clean chaos chaos-short bench bench-report-test python-venv python-proto-check python-test
SECONDS ?= 60
SEEDS ?= 1
# ETCD=1: chaos against the replicated view service (three view services on a three-member etcd).
ETCD ?=

## deps: install the Debian packages pbkv needs, only those missing (apt-get update first).
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	else echo "deps: all Debian packages present"; fi

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

## test: every test of every module (unit, end to end over loopback; SWIFTNIO_STRICT=1: work handed
## to an event loop that has shut down crashes the test instead of printing an error, as NIO plans
## to make it do everywhere), a short chaos run, the
## Python client's tests against the built `pbkv` (first: the committed generated Python is current,
## and the bench report generator's tests, under a second), and 30 s of fuzzing.
test: deps
	$(MAKE) --no-print-directory -j2 test-checks test-build
	$(MAKE) --no-print-directory chaos-short
	SWIFTNIO_STRICT=1 $(SWIFT) test --skip-build $(SWIFT_TEST_FLAGS) --skip ReplicatedKVEndToEndTests
	$(MAKE) --no-print-directory test-scenarios
	$(MAKE) --no-print-directory python-test
	$(MAKE) --no-print-directory fuzz FUZZ_CONFIG=debug FUZZ_BUILD_PATH=.build SECONDS=30

## test-checks, test-build: what `make test` does first, side by side (the checks mostly wait on
## pip and the network while the build keeps both cores busy).
.PHONY: test-checks test-build
test-checks: proto-check python-proto-check bench-report-test
test-build:
	$(SWIFT) build --build-tests

## test-scenarios: the replicated KV scenarios (12, each on every view service and transport). Each
## case has its own cluster and mostly waits on timers, so eight run at once (Swift Testing's
## experimental width setting; the other suites run one at a time, above).
SCENARIO_WIDTH ?= 8
test-scenarios:
	SWIFTNIO_STRICT=1 SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH=$(SCENARIO_WIDTH) $(SWIFT) test --skip-build --parallel --filter ReplicatedKVEndToEndTests

## python-venv: the test venv (created once, again when pyproject.toml changes; network needed
## only then), with this checkout's client installed into it (offline, every time).
$(VENV)/.installed: $(PY_CLIENT)/pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check 'setuptools>=64' pytest pytest-timeout $(GRPCIO_TOOLS) ./$(PY_CLIENT)
	touch $@

python-venv: $(VENV)/.installed
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation --no-index ./$(PY_CLIENT)
	@rm -rf $(PY_CLIENT)/build $(PY_CLIENT)/src/pbkv.egg-info

## python-proto-check: fails when the committed generated Python differs from what `make proto` makes.
python-proto-check: $(VENV)/.installed
	@tmp=$$(mktemp -d) && $(call PY_PROTOC,$$tmp) && \
	  if diff -u $(PY_PROTO_OUT)/pbkv_pb2.py $$tmp/pbkv_pb2.py && diff -u $(PY_PROTO_OUT)/pbkv_pb2.pyi $$tmp/pbkv_pb2.pyi; then \
	    rm -rf $$tmp; echo "python-proto-check: $(PY_PROTO_OUT)/pbkv_pb2.py is current"; \
	  else rm -rf $$tmp; echo "python-proto-check: $(PY_PROTO_OUT)/pbkv_pb2.py(i) is stale: run make proto and commit it" >&2; exit 1; fi

## proto-check: the generator's tests; fails when the committed protoc-c output or generated Swift differs
## from what `make proto` makes.
proto-check: deps $(VENV)/.installed
	PYTHONDONTWRITEBYTECODE=1 $(VENV)/bin/python -m unittest discover -q -s scripts -p 'test_generate*.py'
	@tmp=$$(mktemp -d) && (cd proto && protoc-c --c_out=$$tmp *.proto) && $(call SWIFT_GEN,$$tmp,$$tmp/swift,$$tmp/core) && \
	  if diff -q $$tmp/pbkv.pb-c.c $(PROTO_OUT)/pbkv.pb-c.c >/dev/null && diff -q $$tmp/pbkv.pb-c.h $(PROTO_OUT)/include/pbkv.pb-c.h >/dev/null \
	    && diff -ru $(SWIFT_GEN_OUT) $$tmp/swift && diff -ru $(SWIFT_GEN_CORE_OUT) $$tmp/core; then \
	    rm -rf $$tmp; echo "proto-check: $(PROTO_OUT), $(SWIFT_GEN_OUT) and $(SWIFT_GEN_CORE_OUT) are current"; \
	  else rm -rf $$tmp; echo "proto-check: $(PROTO_OUT), $(SWIFT_GEN_OUT) or $(SWIFT_GEN_CORE_OUT) is stale: run make proto and commit it" >&2; exit 1; fi

## python-test: the Python client's tests (pytest) against a cluster of the debug `pbkv` build.
python-test: python-venv
	PBKV_INSECURE=1 PBKV_BIN=$$($(SWIFT) build --show-bin-path)/pbkv $(VENV)/bin/python -m pytest -q -p no:cacheprovider $(PY_CLIENT)/tests

## chaos-short: three seeds of 20 s each against a multi-process cluster with a file-store view
## service (the third with pipelined clients), and one with the view service replicated on etcd
## (part of `make test`).
chaos-short:
	$$($(SWIFT) build --show-bin-path)/pbkv chaos --seconds 20 --seeds 1,2
	$$($(SWIFT) build --show-bin-path)/pbkv chaos --seconds 20 --seeds 3 --pipeline 4
	$$($(SWIFT) build --show-bin-path)/pbkv chaos --seconds 20 --seeds 4 --etcd

## chaos: a long randomized fault run, e.g. `make chaos SECONDS=600 SEEDS=1,2`; with the view
## service replicated on etcd (etcd members killed too): `make chaos SECONDS=300 SEEDS=21 ETCD=1`.
chaos: deps
	$(SWIFT) build -c release --product pbkv && $(SWIFT) build -c release --product pbkv-tools
	$$($(SWIFT) build -c release --show-bin-path)/pbkv chaos --seconds $(SECONDS) --seeds $(SEEDS) $(if $(filter 1 yes true,$(ETCD)),--etcd)

## fuzz: libFuzzer with ASan over frame decoding, inflation, Envelope decoding and a server
## connection (Sources/PBKVFuzz) for SECONDS (default 60), from the seeds in Fuzz/corpus; new
## inputs go to .fuzz/corpus, a crash, leak or timeout to .fuzz/crashes (and the run fails).
## Built in release in .build/fuzz; `make test` builds it in debug in .build, reusing the tests' build.
.PHONY: fuzz
FUZZ_CONFIG ?= release
FUZZ_BUILD_PATH ?= .build/fuzz
FUZZ_BUILD = PBKV_FUZZ=1 $(SWIFT) build -c $(FUZZ_CONFIG) --build-path $(FUZZ_BUILD_PATH) --product pbkv-fuzz
fuzz: deps
	$(FUZZ_BUILD)
	@mkdir -p .fuzz/corpus .fuzz/crashes
	SWIFT_BACKTRACE=enable=no $$($(FUZZ_BUILD) --show-bin-path)/pbkv-fuzz -max_total_time=$(SECONDS) -max_len=16384 -rss_limit_mb=2048 \
	  -timeout=10 -print_final_stats=1 -artifact_prefix=.fuzz/crashes/ .fuzz/corpus Fuzz/corpus

## run: start a local cluster, show it surviving a primary kill.
run: deps
	$(SWIFT) build -c release --product pbkv && $(SWIFT) build -c release --product pbkv-tools
	$$($(SWIFT) build -c release --show-bin-path)/pbkv local

## bench: pbkv next to Redis (installs redis-server), TLS cost, failover, transfer, memory; writes
## bench/results/latest.{md,svg,jsonl}; see scripts/bench.sh.
bench: deps
	bash scripts/bench.sh

## bench-report-test: tests of scripts/bench_report.py (the markdown and SVG of `make bench`).
bench-report-test:
	PYTHONDONTWRITEBYTECODE=1 $(PYTHON) -m unittest discover -q -s scripts -p 'test_bench*.py'

## proto: regenerate the committed code from proto/*.proto: C with protoc-c, then the Swift message
## layer from protoc-c's descriptor set with scripts/generate_swift.py, Python with grpcio-tools.
proto: deps $(VENV)/.installed
	@tmp=$$(mktemp -d) && (cd proto && protoc-c --c_out=$$tmp *.proto) && \
	  mv $$tmp/*.pb-c.h $(PROTO_OUT)/include/ && mv $$tmp/*.pb-c.c $(PROTO_OUT)/ && rmdir $$tmp
	@echo "regenerated $(PROTO_OUT)"
	@tmp=$$(mktemp -d) && $(call SWIFT_GEN,$$tmp,$(SWIFT_GEN_OUT),$(SWIFT_GEN_CORE_OUT)) && rm -rf $$tmp
	@echo "regenerated $(SWIFT_GEN_OUT) and $(SWIFT_GEN_CORE_OUT)"
	$(call PY_PROTOC,$(PY_PROTO_OUT))
	@echo "regenerated $(PY_PROTO_OUT)/pbkv_pb2.py and pbkv_pb2.pyi"
	$(PYTHON) $(PY_CLIENT)/tests/proto/make_variants.py proto $(PY_CLIENT)/tests/proto
	@echo "regenerated the newer schema variants in $(PY_CLIENT)/tests/proto"

clean:
	$(SWIFT) package clean
