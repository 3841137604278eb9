"""The clients that drive both daemons: curl, ovirt-imageio's client, and
small raw-socket clients for request rates and connection counts.

Every function takes a started daemon and ticket ids, moves data, checks
that the daemon did what was asked (status, byte counts, transport) and
returns what it measured. A failure raises ClientError: a case that did
not run is never reported with a number.
"""

from __future__ import annotations

import io
import json
import random
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from .daemons import Daemon

HERE = Path(__file__).resolve().parent
CURL_TIMEOUT = 600.0


class ClientError(Exception):
    pass


def _curl(args: list[str]) -> tuple[int, int]:
    """Run curl; returns (http_code, bytes moved) from its -w report."""
    cmd = [
        "curl",
        "--silent",
        "--show-error",
        "--write-out",
        "%{http_code} %{size_download} %{size_upload}",
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=CURL_TIMEOUT)
    fields = out.stdout.split()
    if out.returncode != 0 or len(fields) != 3:
        raise ClientError(f"curl failed ({out.returncode}): {out.stderr.strip()[:300]}")
    code, down, up = (int(float(f)) for f in fields)
    return code, down + up


def _curl_target(daemon: Daemon, ticket_id: str, transport: str) -> list[str]:
    if transport == "unix":
        return [
            "--abstract-unix-socket",
            daemon.unix_socket.lstrip("\0"),
            f"http://localhost/images/{ticket_id}",
        ]
    return ["--cacert", str(daemon.ca), f"{daemon.data_url}{ticket_id}"]


def curl_download(
    daemon: Daemon, ticket_id: str, transport: str, length: int, start: int = 0
) -> None:
    args = ["--output", "/dev/null", *_curl_target(daemon, ticket_id, transport)]
    if start:
        args[:0] = ["--range", f"{start}-{start + length - 1}"]
    code, moved = _curl(args)
    if code not in (200, 206) or moved != length:
        raise ClientError(f"download: status {code}, {moved} of {length} bytes")


# Clients of the concurrent cases arrive this far apart: ovirt-imageio's
# unix listener has a backlog of 5 and refuses a burst of connects at once
# (EAGAIN, which curl does not retry).
ARRIVAL_INTERVAL = 0.005


def curl_download_many(daemon: Daemon, jobs: list[tuple[str, int, int]]) -> None:
    """Concurrent curl downloads over the unix socket: (ticket, start, length)."""
    procs: list[tuple[subprocess.Popen[str], int]] = []
    for ticket_id, start, length in jobs:
        if procs:
            time.sleep(ARRIVAL_INTERVAL)
        cmd = [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--output",
            "/dev/null",
            "--write-out",
            "%{size_download}",
            "--range",
            f"{start}-{start + length - 1}",
            *_curl_target(daemon, ticket_id, "unix"),
        ]
        procs.append(
            (
                subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                length,
            )
        )
    errors = []
    for proc, length in procs:
        out, err = proc.communicate(timeout=CURL_TIMEOUT)
        if proc.returncode != 0 or int(out or 0) != length:
            errors.append(f"rc={proc.returncode} got={out!r} {err.strip()[:200]}")
    if errors:
        raise ClientError(f"{len(errors)} of {len(jobs)} downloads failed: {errors[0]}")


def curl_upload(daemon: Daemon, ticket_id: str, transport: str, source: Path) -> None:
    # No "Expect: 100-continue": curl would wait a second for an answer
    # from a server that does not send one.
    args = [
        "--upload-file",
        str(source),
        "--header",
        "Expect:",
        *_curl_target(daemon, ticket_id, transport),
    ]
    code, moved = _curl(args)
    size = source.stat().st_size
    if code != 200 or moved != size:
        raise ClientError(f"upload: status {code}, {moved} of {size} bytes")


class ImageioClient:
    """ovirt-imageio's client library, run from its own virtual environment."""

    def __init__(self, python: Path) -> None:
        self.python = python

    def run(
        self, op: str, src: str, dst: str, daemon: Daemon, transport: str, workers: int = 4
    ) -> float:
        cmd = [
            str(self.python),
            str(HERE / "imageio_driver.py"),
            op,
            src,
            dst,
            "--cafile",
            str(daemon.ca),
            "--workers",
            str(workers),
        ]
        if transport == "tls":
            cmd.append("--tls")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=CURL_TIMEOUT)
        if out.returncode != 0:
            raise ClientError(f"ovirt-imageio client {op} failed: {out.stderr.strip()[-500:]}")
        report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        used_unix = report["unix_connections"] > 0
        if used_unix != (transport == "unix"):
            raise ClientError(f"client used the wrong transport: {report}")
        return float(report["seconds"])

    def download(self, daemon: Daemon, ticket_id: str, transport: str, dst: Path) -> float:
        return self.run("download", daemon.data_url + ticket_id, str(dst), daemon, transport)

    def upload(self, daemon: Daemon, ticket_id: str, transport: str, src: Path) -> float:
        return self.run("upload", str(src), daemon.data_url + ticket_id, daemon, transport)


def _unix_socket(daemon: Daemon, timeout: float = 60.0) -> socket.socket:
    # A unix socket whose listen backlog is full refuses at once (EAGAIN)
    # instead of waiting like TCP: retry until the daemon accepts.
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(daemon.unix_socket)
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
        except BaseException:
            sock.close()
            raise


def _read_head(reader: io.IOBase) -> tuple[int, int]:
    """Status and Content-Length of one response head."""
    status_line = reader.readline()
    if not status_line:
        raise ClientError("connection closed before a response")
    status = int(status_line.split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, length


def random_reads(
    daemon: Daemon,
    ticket_id: str,
    size: int,
    *,
    count: int,
    seconds: float,
    block: int = 4096,
    seed: int = 1,
) -> float:
    """Requests/s of block-sized ranged GETs at random aligned offsets,
    one keep-alive connection over the unix socket."""
    rng = random.Random(seed)
    blocks = size // block
    sock = _unix_socket(daemon)
    reader = sock.makefile("rb", buffering=65536)
    done = 0
    started = time.monotonic()
    deadline = started + seconds
    try:
        while done < count and time.monotonic() < deadline:
            offset = rng.randrange(blocks) * block
            sock.sendall(
                f"GET /images/{ticket_id} HTTP/1.1\r\nHost: localhost\r\n"
                f"Range: bytes={offset}-{offset + block - 1}\r\n\r\n".encode()
            )
            status, length = _read_head(reader)
            body = reader.read(length)
            if status != 206 or len(body) != block:
                raise ClientError(f"random read: status {status}, {len(body)} bytes")
            done += 1
    finally:
        reader.close()
        sock.close()
    return done / (time.monotonic() - started)


def checksum(daemon: Daemon, ticket_id: str) -> tuple[float, str]:
    """Seconds of one GET /images/<ticket>/checksum (defaults: blake2b, 4 MiB
    blocks) over the unix socket, and the digest."""
    conn = daemon.unix(timeout=CURL_TIMEOUT)
    started = time.monotonic()
    try:
        conn.request("GET", f"/images/{ticket_id}/checksum")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    seconds = time.monotonic() - started
    if resp.status != 200:
        raise ClientError(f"checksum: status {resp.status}: {body[:200]!r}")
    reply = json.loads(body)
    if (reply.get("algorithm"), reply.get("block_size")) != ("blake2b", 4 * 1024**2):
        raise ClientError(f"checksum: unexpected defaults {reply}")
    return seconds, str(reply["checksum"])
