#!/bin/sh
# Creates the compatibility lane's own virtual environment with ovirt-imageio
# 2.5.1 from PyPI, outside the project venv so its packages never leak into
# ours. Idempotent: a second run only checks that the client imports.
#
# ovirt-imageio ships as an sdist with a C extension (ioutil), so pip builds
# it here: it needs gcc and the Python headers (Debian: gcc, python3-dev),
# and the client drives qemu-img and qemu-nbd (Debian: qemu-utils).
#
# Usage: tests/compat/setup-ovirt-imageio.sh [VENV_DIR]
# VENV_DIR defaults to .cache/ovirt-imageio-venv under the repository root.
set -eu

VERSION=2.5.1
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${1:-$ROOT/.cache/ovirt-imageio-venv}
PY=$VENV/bin/python
STAMP=$VENV/.ovirt-imageio-$VERSION

ready() {
    [ -f "$STAMP" ] && "$PY" -c 'import ovirt_imageio.client' 2>/dev/null
}

if ready; then
    exit 0
fi

missing=""
for p in gcc python3-dev python3-venv qemu-utils; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing Debian packages:$missing" >&2
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >&2
fi

mkdir -p "$(dirname "$VENV")"
# Serialize concurrent runs (two test sessions on one checkout).
exec 9>"$VENV.lock"
flock 9
if ready; then
    exit 0
fi

if [ ! -x "$PY" ]; then
    /usr/bin/python3 -m venv "$VENV"
fi
"$PY" -m pip install -q --disable-pip-version-check "ovirt-imageio==$VERSION" >&2
"$PY" -c 'import ovirt_imageio.client' >&2
touch "$STAMP"
echo "ovirt-imageio $VERSION ready in $VENV" >&2
