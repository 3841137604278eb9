"""Physical references measured in the same run as the daemons.

- Python socket throughput with the daemons' buffer size: a process that
  sends from one buffer (the daemon's role) to a separate process that
  receives into one buffer (the client's role), over an abstract unix
  socket and over TLS on loopback with the daemons' certificates;
- dd with O_DIRECT: read of the full image, write of the same size with a
  final fsync (what a flushed upload must wait for);
- curl uploading the image to a server that only receives and drops the
  body (one ``recv`` with MSG_WAITALL per buffer) over an abstract unix
  socket: the fastest a single-connection curl upload can be here, whatever
  the daemon does.

The receiving process runs this module: ``python -m bench.physical recv
unix|tls ADDRESS SIZE BUFSIZE [CA]``; it prints the seconds from its first
to its last byte.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

MiB = 1024**2


def loopback(kind: str, size: int, buffer_size: int, pki: Path) -> float:
    """MiB/s of one connection over 'unix' or 'tls'."""
    if kind == "unix":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address = f"\0vdsm-bench-loopback-{os.getpid()}"
        listener.bind(address)
        arg = address.lstrip("\0")
    else:
        listener = socket.create_server(("127.0.0.1", 0))
        arg = str(listener.getsockname()[1])
    listener.listen(1)
    with listener:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.physical",
                "recv",
                kind,
                arg,
                str(size),
                str(buffer_size),
                str(pki / "ca.pem"),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        try:
            listener.settimeout(30)
            conn, _ = listener.accept()
            if kind == "tls":
                ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
                conn = ctx.wrap_socket(conn, server_side=True)
            with conn:
                _send(conn, size, buffer_size)
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"loopback receiver failed ({proc.returncode})")
    return size / MiB / float(out)


def _send(conn: socket.socket, size: int, buffer_size: int) -> None:
    buf = memoryview(os.urandom(buffer_size))
    left = size
    while left:
        n = min(left, buffer_size)
        conn.sendall(buf[:n])
        left -= n


def _receive(kind: str, arg: str, size: int, buffer_size: int, ca: str) -> float:
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect("\0" + arg)
    else:
        tcp = socket.create_connection(("127.0.0.1", int(arg)))
        ctx = ssl.create_default_context(cafile=ca)
        sock = ctx.wrap_socket(tcp, server_hostname="127.0.0.1")
    buf = memoryview(bytearray(buffer_size))
    got = 0
    with sock:
        started = 0.0
        while got < size:
            n = sock.recv_into(buf)
            if n == 0:
                raise RuntimeError(f"sender stopped after {got} bytes")
            if not got:
                started = time.monotonic()
            got += n
        return time.monotonic() - started


def curl_upload_sink(source: Path, buffer_size: int) -> float:
    """MiB/s of curl uploading source to a discarding HTTP server (unix socket)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"vdsm-bench-sink-{os.getpid()}"
    listener.bind("\0" + name)
    listener.listen(1)
    listener.settimeout(30)
    size = source.stat().st_size
    received: list[int] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(60)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            rest = head.partition(b"\r\n\r\n")[2]
            got = len(rest)
            buf = memoryview(bytearray(buffer_size))
            conn.settimeout(None)
            while got < size:
                n = conn.recv_into(buf[: min(buffer_size, size - got)], 0, socket.MSG_WAITALL)
                if n == 0:
                    break
                got += n
            received.append(got)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    server = threading.Thread(target=serve, daemon=True)
    with listener:
        server.start()
        started = time.monotonic()
        subprocess.run(
            [
                "curl",
                "--silent",
                "--show-error",
                "--output",
                "/dev/null",
                "--upload-file",
                str(source),
                "--header",
                "Expect:",
                "--abstract-unix-socket",
                name,
                "http://localhost/sink",
            ],
            check=True,
            timeout=600,
        )
        seconds = time.monotonic() - started
        server.join(30)
    if received != [size]:
        raise RuntimeError(f"sink received {received} of {size} bytes")
    return size / MiB / seconds


def dd_read(path: Path, buffer_size: int) -> float:
    started = time.monotonic()
    subprocess.run(
        ["dd", f"if={path}", "of=/dev/null", f"bs={buffer_size}", "iflag=direct", "status=none"],
        check=True,
    )
    return path.stat().st_size / MiB / (time.monotonic() - started)


def dd_write(path: Path, size: int, buffer_size: int) -> float:
    path.unlink(missing_ok=True)
    started = time.monotonic()
    try:
        subprocess.run(
            [
                "dd",
                "if=/dev/zero",
                f"of={path}",
                f"bs={buffer_size}",
                f"count={size // buffer_size}",
                "oflag=direct",
                "conv=fsync",
                "status=none",
            ],
            check=True,
        )
        return size / MiB / (time.monotonic() - started)
    finally:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    if len(sys.argv) != 7 or sys.argv[1] != "recv":
        sys.exit("usage: python -m bench.physical recv unix|tls ADDRESS SIZE BUFSIZE CA")
    _, _, kind_, arg_, size_, bufsize_, ca_ = sys.argv
    print(_receive(kind_, arg_, int(size_), int(bufsize_), ca_))
