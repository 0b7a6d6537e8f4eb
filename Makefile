# The two set-up commands are `make run` and `make test`; each installs what it needs first.
SWIFT ?= swift
# Debian packages the build needs beyond the Swift toolchain: TOMLKit compiles toml++ (C++);
# libsystemd-dev and pkg-config for the libsystemd target.
APT_PACKAGES := libstdc++-12-dev libsystemd-dev pkg-config
# The tests run the real systemd tools: systemd-analyze, systemd-socket-activate,
# systemd-journald and journalctl (all in Debian's systemd package), and make for `make install`.
TEST_APT_PACKAGES := $(APT_PACKAGES) systemd make
# The admin-socket tests use the real QMP client (qemu.qmp, which also installs qmp-shell)
# and parse the metrics with prometheus_client: python module:PyPI package.
TEST_PYTHON_PACKAGES := qemu.qmp:qemu.qmp prometheus_client:prometheus_client

# Where `make install` puts things. DESTDIR is prepended to every path (for packaging); the
# installed units and catalog name the paths without it.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
CATALOGDIR ?= $(PREFIX)/lib/systemd/catalog
DOCDIR ?= $(PREFIX)/share/doc/iommu-policyd
# A directory that already holds built iommu-policyd and iommu-policyctl binaries, such as
# .build/debug: `make install` then installs those instead of building release binaries (the
# tests use this). Empty: build release binaries first.
BINDIR_SOURCE ?=
# The installed daemon must not depend on where the Swift toolchain lives (its runtime
# libraries are otherwise found through a RUNPATH into the toolchain).
RELEASE_FLAGS ?= --static-swift-stdlib

UNITS := iommu-policyd.service iommu-policyd.socket iommu-policyd-admin.socket
SUBSTITUTE := sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g'

.PHONY: all deps build run test lint release install uninstall
all: build

deps:
	@scripts/ensure-packages $(APT_PACKAGES)

build: deps
	$(SWIFT) build

# The embedded default: the daemon on ./iommu-policyd.sock with the built-in x86-intel profile
# and the simulated backend; no sysfs or privileges needed.
run: deps
	$(SWIFT) run iommu-policyd

# The Swift tests, the benchmark in its short mode (so it cannot rot; its figures are not
# judged), then the kernel backends against a real kernel in a QEMU guest (Tests/vm,
# VFIO type1; it installs QEMU itself). VM_IOMMUFD=1 also runs the iommufd scenario, which
# builds a small 6.12 kernel once (about 5 minutes, then cached).
test:
	@scripts/ensure-packages $(TEST_APT_PACKAGES)
	@scripts/ensure-python-packages $(TEST_PYTHON_PACKAGES)
	$(SWIFT) test
	$(SWIFT) run -c release iommu-policyd-bench --short
	Tests/vm/run --backend vfio
	@if [ "$(VM_IOMMUFD)" = 1 ]; then Tests/vm/run --backend iommufd; \
	else echo "make test: the iommufd VM scenario is skipped: run with VM_IOMMUFD=1 (builds a 6.12 kernel once, about 5 min)"; fi

lint:
	$(SWIFT) format lint --recursive Sources Tests

release: deps
	$(SWIFT) build -c release $(RELEASE_FLAGS) --product iommu-policyd
	$(SWIFT) build -c release $(RELEASE_FLAGS) --product iommu-policyctl

# The policy file is the administrator's: on a live system (no DESTDIR) an existing
# $(SYSCONFDIR)/iommu-policyd/policy.toml is kept; into a DESTDIR it is always installed.
install: $(if $(BINDIR_SOURCE),,release)
	@set -e; \
	source="$(BINDIR_SOURCE)"; \
	if [ -z "$$source" ]; then source="$$($(SWIFT) build -c release $(RELEASE_FLAGS) --show-bin-path)"; fi; \
	install -d -m 0755 "$(DESTDIR)$(BINDIR)"; \
	install -m 0755 "$$source/iommu-policyd" "$$source/iommu-policyctl" "$(DESTDIR)$(BINDIR)/"
	install -d -m 0755 "$(DESTDIR)$(UNITDIR)"
	for unit in $(UNITS); do \
	    $(SUBSTITUTE) "systemd/$$unit" > "$(DESTDIR)$(UNITDIR)/$$unit" && chmod 0644 "$(DESTDIR)$(UNITDIR)/$$unit" || exit 1; \
	done
	install -D -m 0644 systemd/sysusers.d/iommu-policyd.conf "$(DESTDIR)$(SYSUSERSDIR)/iommu-policyd.conf"
	install -D -m 0644 systemd/tmpfiles.d/iommu-policyd.conf "$(DESTDIR)$(TMPFILESDIR)/iommu-policyd.conf"
	install -d -m 0755 "$(DESTDIR)$(CATALOGDIR)"
	$(SUBSTITUTE) systemd/catalog/iommu-policyd.catalog > "$(DESTDIR)$(CATALOGDIR)/iommu-policyd.catalog"
	chmod 0644 "$(DESTDIR)$(CATALOGDIR)/iommu-policyd.catalog"
	install -D -m 0644 README.md "$(DESTDIR)$(DOCDIR)/README.md"
	install -D -m 0644 docs/PROTOCOL.md "$(DESTDIR)$(DOCDIR)/PROTOCOL.md"
	install -D -m 0644 docs/ADMIN.md "$(DESTDIR)$(DOCDIR)/ADMIN.md"
	install -d -m 0755 "$(DESTDIR)$(SYSCONFDIR)/iommu-policyd"
	@if [ -z "$(DESTDIR)" ] && [ -e "$(SYSCONFDIR)/iommu-policyd/policy.toml" ]; then \
	    echo "keeping $(SYSCONFDIR)/iommu-policyd/policy.toml (the default is Config/policy.toml)"; \
	else \
	    echo install -m 0644 Config/policy.toml "$(DESTDIR)$(SYSCONFDIR)/iommu-policyd/policy.toml"; \
	    install -m 0644 Config/policy.toml "$(DESTDIR)$(SYSCONFDIR)/iommu-policyd/policy.toml"; \
	fi

# Removes what `make install` installed, except the policy file and the directory holding it.
uninstall:
	rm -f "$(DESTDIR)$(BINDIR)/iommu-policyd" "$(DESTDIR)$(BINDIR)/iommu-policyctl"
	for unit in $(UNITS); do rm -f "$(DESTDIR)$(UNITDIR)/$$unit"; done
	rm -f "$(DESTDIR)$(SYSUSERSDIR)/iommu-policyd.conf" "$(DESTDIR)$(TMPFILESDIR)/iommu-policyd.conf"
	rm -f "$(DESTDIR)$(CATALOGDIR)/iommu-policyd.catalog"
	rm -f "$(DESTDIR)$(DOCDIR)/README.md" "$(DESTDIR)$(DOCDIR)/PROTOCOL.md" "$(DESTDIR)$(DOCDIR)/ADMIN.md"
	-rmdir "$(DESTDIR)$(DOCDIR)"
