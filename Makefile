# pbkv — build, test and run. `make run` and `make test` install what is missing first.
SHELL := /bin/bash
SWIFT ?= swift
DEB_PACKAGES := protobuf-c-compiler libprotobuf-c-dev zlib1g-dev pkg-config etcd-server
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)
PROTO_OUT := Sources/CPBKVProto
SWIFT_TEST_FLAGS ?= --no-parallel

.PHONY: deps build release test run proto clean chaos chaos-short bench
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

## test: every test of every module (unit, end to end over loopback), and a short chaos run.
test: deps
	$(SWIFT) build --build-tests
	$(MAKE) --no-print-directory chaos-short
	$(SWIFT) test --skip-build $(SWIFT_TEST_FLAGS)

## chaos-short: three seeds of 20 s each against a multi-process cluster with a file-store view
## service, and one with the view service replicated on etcd (part of `make test`).
chaos-short:
	$$($(SWIFT) build --show-bin-path)/pbkv chaos --seconds 20 --seeds 1,2,3
	$$($(SWIFT) build --show-bin-path)/pbkv chaos --seconds 20 --seeds 4 --etcd

## chaos: a long randomized fault run, e.g. `make chaos SECONDS=600 SEEDS=1,2`; with the view
## service replicated on etcd (etcd members killed too): `make chaos SECONDS=300 SEEDS=21 ETCD=1`.
chaos: deps
	$(SWIFT) build -c release --product pbkv
	$$($(SWIFT) build -c release --show-bin-path)/pbkv chaos --seconds $(SECONDS) --seeds $(SEEDS) $(if $(filter 1 yes true,$(ETCD)),--etcd)

## run: start a local cluster, show it surviving a primary kill.
run: deps
	$(SWIFT) build -c release --product pbkv
	$$($(SWIFT) build -c release --show-bin-path)/pbkv local

## bench: pbkv next to Redis (installs redis-server), failover, transfer, memory; see scripts/bench.sh.
bench: deps
	bash scripts/bench.sh

## proto: regenerate the committed C code from proto/*.proto with protoc-c.
proto: deps
	@tmp=$$(mktemp -d) && (cd proto && protoc-c --c_out=$$tmp *.proto) && \
	  mv $$tmp/*.pb-c.h $(PROTO_OUT)/include/ && mv $$tmp/*.pb-c.c $(PROTO_OUT)/ && rmdir $$tmp
	@echo "regenerated $(PROTO_OUT)"

clean:
	$(SWIFT) package clean
