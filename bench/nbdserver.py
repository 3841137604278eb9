"""A qemu-nbd serving the qcow2 test image on a unix socket, shared by
both daemons for the nbd rows (one client at a time, so sharing is fair)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

EXPORT = "bench"


class QemuNbd:
    def __init__(self, image: Path, socket_path: Path) -> None:
        self.socket = socket_path
        socket_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                "qemu-nbd",
                "--socket",
                str(socket_path),
                "--format",
                "qcow2",
                "--export-name",
                EXPORT,
                "--persistent",
                "--shared",
                "16",
                "--cache",
                "none",
                "--aio",
                "native",
                "--discard",
                "unmap",
                str(image),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("qemu-nbd did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"nbd:unix:{self.socket}:exportname={EXPORT}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.socket.unlink(missing_ok=True)
