# The two set-up commands are `make run` and `make test`; each installs what it needs first.
SWIFT ?= swift
# Debian packages the build needs beyond the Swift toolchain: TOMLKit compiles toml++ (C++).
APT_PACKAGES := libstdc++-12-dev

.PHONY: all deps build run test lint
all: build

deps:
	@scripts/ensure-packages $(APT_PACKAGES)

build: deps
	$(SWIFT) build

# The embedded default: the daemon on ./iommu-policyd.sock with the built-in x86-intel profile
# and the simulated backend; no sysfs or privileges needed.
run: deps
	$(SWIFT) run iommu-policyd

test: deps
	$(SWIFT) test

lint:
	$(SWIFT) format lint --recursive Sources Tests
