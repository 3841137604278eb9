#!/bin/sh
# The guest half of the VM lane (see runner.py): prepare the guest like an
# oVirt host, run tests/vm, print the marker line the host looks for.
# Shell rather than Python: every Python start costs seconds here (the
# root file system is 9p and the CPU is emulated).
# Usage: guest.sh PYTHON [PYTEST-ARGS...]   (cwd: the repository)

python=$1
shift
start=$(date +%s)

setup() {
    modprobe dm_mod && modprobe loop || return 1
    # As on an oVirt host, udev must not auto-activate LVs of shared storage
    # when a PV changes. /etc is the guest's own overlay.
    printf 'global {\n    event_activation = 0\n}\n' >> /etc/lvm/lvmlocal.conf
    /lib/systemd/systemd-udevd --daemon || return 1
    udevadm trigger --action=add --subsystem-match=block
    udevadm settle --timeout=60 || return 1
    mkdir -p /run/sanlock
    # -w 0: the guest has no watchdog device; leases work without it.
    sanlock daemon -w 0 || return 1
    # The daemon forks before it listens; its answer is the readiness signal.
    for _ in $(seq 150); do
        sanlock client status >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

teardown() {
    sanlock shutdown -f 1 >/dev/null 2>&1
    udevadm control --exit >/dev/null 2>&1
}

if setup; then
    echo "VM lane: guest ready in $(( $(date +%s) - start ))s (kernel $(uname -r))"
    # The shared root is read-only: no bytecode or cache writes.
    VDSM_IMAGEIO_VM=1 PYTHONDONTWRITEBYTECODE=1 LVM_SUPPRESS_FD_WARNINGS=1 \
        "$python" -m pytest tests/vm -p no:cacheprovider "$@"
    rc=$?
else
    echo "VM lane: guest setup failed"
    rc=101
fi
teardown
echo "VM-LANE-EXIT rc=$rc"
exit $rc
