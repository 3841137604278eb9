"""Runs ovirt-imageio's client library against a server; run by the python
of the ovirt-imageio virtual environment, never by the project's.

    driver.py upload FILE URL --cafile CA [--no-unix]
    driver.py download URL FILE --cafile CA [--no-unix]

Prints one JSON object on stdout: how many HTTPS and unix-socket
connections the client opened and the options the server advertised, so
the test can tell which transport carried the data. The client's debug log
goes to stderr.

--no-unix makes the client behave as on another host: ovirt-imageio
switches to the advertised unix socket whenever the server's address equals
its own, which on loopback is always.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ovirt_imageio import client
from ovirt_imageio._internal.backends import http

counts = {"https_connections": 0, "unix_connections": 0}
advertised: dict[str, Any] = {}


def count_connects(cls: Any, key: str) -> None:
    connect = cls.connect

    def counting_connect(self: Any) -> None:
        connect(self)
        counts[key] += 1

    cls.connect = counting_connect


def record_options() -> None:
    options = http.Backend._options

    def recording_options(self: Any) -> dict[str, Any]:
        result: dict[str, Any] = options(self)
        advertised.setdefault("options", result)
        return result

    http.Backend._options = recording_options


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("op", choices=["upload", "download"])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--no-unix", action="store_true")
    args = parser.parse_args()

    logging.basicConfig(
        level=logging.DEBUG,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s (%(threadName)s) [%(name)s] %(message)s",
    )
    count_connects(http.HTTPSConnection, "https_connections")
    count_connects(http.UnixHTTPConnection, "unix_connections")
    record_options()
    if args.no_unix:
        http.ConnectionMixin.is_local = lambda self: False

    if args.op == "upload":
        client.upload(args.src, args.dst, args.cafile)
    else:
        client.download(args.src, args.dst, args.cafile, fmt="raw")

    json.dump({**counts, **advertised}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
