"""ovirt-imageio 2.5.1's client library, timed; run by the python of the
ovirt-imageio virtual environment (never the project's), by file path.

    imageio_driver.py download URL FILE --cafile CA [--tls] [--workers N]
    imageio_driver.py upload FILE URL --cafile CA [--tls] [--workers N]

Prints one JSON object: the seconds the transfer call took and how many
HTTPS and unix-socket connections the client opened, so the harness can
check which transport carried the data. On loopback the client always
switches to the advertised unix socket; --tls keeps it on HTTPS, as a
client on another host would be.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

# Installed only in the ovirt-imageio virtual environment.
from ovirt_imageio import client
from ovirt_imageio._internal.backends import http

counts = {"https_connections": 0, "unix_connections": 0}


def count_connects(cls: Any, key: str) -> None:
    connect = cls.connect

    def counting_connect(self: Any) -> None:
        connect(self)
        counts[key] += 1

    cls.connect = counting_connect


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("op", choices=["upload", "download"])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    count_connects(http.HTTPSConnection, "https_connections")
    count_connects(http.UnixHTTPConnection, "unix_connections")
    if args.tls:
        http.ConnectionMixin.is_local = lambda self: False

    started = time.monotonic()
    if args.op == "upload":
        client.upload(args.src, args.dst, args.cafile, max_workers=args.workers)
    else:
        client.download(args.src, args.dst, args.cafile, fmt="raw", max_workers=args.workers)
    seconds = time.monotonic() - started
    json.dump({"seconds": seconds, **counts}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
