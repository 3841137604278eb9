# vdsm-imageio: the two commands of a fresh machine are `make run` and `make test`.

SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the service and its tests need (gcc and python3-dev build
# ovirt-imageio's C extension for the compatibility lane).
APT_PACKAGES := python3-venv python3-pip python3-sanlock python3-libnbd python3-pyudev \
	qemu-utils curl util-linux e2fsprogs openssl \
	gcc python3-dev
# Proxy mode's tests and bench: ip netns and veth pairs (two machines in
# one), ss (which connections the proxy holds).
APT_PACKAGES += iproute2
PIP_PACKAGES := pytest pytest-timeout hypothesis mypy ruff py-spy
# Browser lane: tests/browser drives Debian's Chromium headless through
# Playwright (its Python package only: the browser is the system's, never
# `playwright install`); certutil trusts the daemon's CA in the NSS database.
APT_PACKAGES += chromium libnss3-tools
PIP_PACKAGES += playwright
# VM lane: tests/vm run inside one virtme-ng guest (tests/vm/runner.py) with
# Debian's kernel, real LVM, device-mapper, udevd and sanlock.
VM_APT_PACKAGES := qemu-system-x86 linux-image-amd64 lvm2 sanlock udev busybox-static
APT_PACKAGES += $(VM_APT_PACKAGES)
PIP_PACKAGES += virtme-ng
LOCAL_DIR ?= ./var

.PHONY: deps apt-deps run test test-vm bench lint typecheck clean

deps: apt-deps $(VENV)/.installed

# Installs only what is missing, so a second run takes a second.
apt-deps:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(PIP_PACKAGES)
	$(PY) -m pip install -q --disable-pip-version-check -e .
	touch $@

run: deps
	$(VENV)/bin/vdsm-imageio serve --local $(LOCAL_DIR)

lint: deps
	$(VENV)/bin/ruff check vdsm_imageio verbs storage bench tests
	$(VENV)/bin/ruff format --check vdsm_imageio verbs storage bench tests

typecheck: deps
	$(VENV)/bin/mypy

test: deps lint typecheck
	$(PY) -m pytest tests

# Only the VM lane, with the guest's output streamed live.
test-vm: deps
	$(PY) tests/vm/runner.py -ra

# Side by side with ovirt-imageio 2.5.1 from PyPI (its own venv under .cache),
# on the disk and fast (RAM-backed ext4, needs root) storage profiles;
# BENCH_PROFILES, BENCH_SIZE, BENCH_RUNS, BENCH_CASES override. One JSON per
# profile in bench/results/ (bench/README.md).
bench: deps
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) var build *.egg-info
