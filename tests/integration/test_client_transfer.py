"""``vdsm-imageio upload`` and ``download`` against a real daemon: formats,
holes, transports, workers, incremental backup, progress."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from storage.qemu_nbd import QemuNbd
from tests.integration.clientrun import (
    CLIENT,
    MiB,
    allocated,
    progress_lines,
    qcow2_with_runs,
    run,
    run_client,
    same_guest_data,
    start_client,
    stop,
    write_runs,
)
from tests.integration.relay import Relay

if TYPE_CHECKING:
    from tests.support.daemon import Daemon, MakeDaemon

KiB = 1024
SIZE = 64 * MiB
# Data runs with holes between them: unaligned ends, one longer than a
# request, data at both ends of the image.
RUNS = [
    (0, 4096),
    (MiB + 512, 3 * MiB - 1000),
    (9 * MiB, 20 * MiB + 7),
    (40 * MiB, 64 * KiB),
    (SIZE - 2 * MiB, 2 * MiB),
]


def url(daemon: Daemon, ticket_id: str, port: int | None = None) -> str:
    return f"https://127.0.0.1:{port or daemon.port}/images/{ticket_id}"


def ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr}"


class Nbd:
    """Images next to the daemon's, served by qemu-nbd, with tickets."""

    def __init__(self, daemon: Daemon, stack: contextlib.ExitStack) -> None:
        self.daemon = daemon
        self._stack = stack
        self.dir = Path(tempfile.mkdtemp(prefix="client-nbd-", dir=daemon.dir))
        stack.callback(shutil.rmtree, self.dir)

    def serve(self, image: Path, fmt: str, **kw: Any) -> QemuNbd:
        sock = str(self.dir / f"{uuidlib.uuid4().hex[:8]}.sock")
        return self._stack.enter_context(QemuNbd(str(image), fmt, sock, **kw))

    def ticket(self, server: QemuNbd, size: int, ops: tuple[str, ...], **extra: Any) -> str:
        ticket_id = str(uuidlib.uuid4())
        ticket = {
            "uuid": ticket_id,
            "size": size,
            "ops": list(ops),
            "timeout": 300,
            "url": server.url,
            "transfer_id": f"client-{ticket_id[:8]}",
            "sparse": True,
            **extra,
        }
        self.daemon.result("Ticket.add", ticket=ticket)
        self._stack.callback(self.daemon.result, "Ticket.remove", uuid=ticket_id)
        return ticket_id


@pytest.fixture
def nbd(daemon: Daemon) -> Iterator[Nbd]:
    with contextlib.ExitStack() as stack:
        yield Nbd(daemon, stack)


def common(daemon: Daemon, tmp_path: Path) -> list[str]:
    """Options of every upload: the CA, and the journal out of the user's home."""
    return ["--cafile", str(daemon.ca), "--state-dir", str(tmp_path / "state")]


def ca(daemon: Daemon) -> list[str]:
    return ["--cafile", str(daemon.ca)]


# Uploads.


@pytest.mark.parametrize("transport", ["unix", "tls"])
def test_upload_raw_with_holes_zeroes_the_holes_of_a_used_disk(
    daemon: Daemon, tmp_path: Path, transport: str
) -> None:
    src = tmp_path / "src.raw"
    write_runs(src, SIZE, RUNS, seed=1)
    # A used disk: every byte that is a hole in the source must be zeroed.
    ticket_id, disk = daemon.add_ticket(size=SIZE, data=b"\xff" * SIZE)
    args: list[str | Path] = [src, url(daemon, ticket_id), *common(daemon, tmp_path), "-v"]
    if transport == "tls":
        args.append("--no-unix-socket")
    done = run_client("upload", *args)
    ok(done)
    assert f"transport={transport}" in done.stderr
    assert same_guest_data(src, disk)
    # Zeroing punched the holes again (a sparse ticket).
    assert allocated(disk) < SIZE // 2
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_upload_qcow2_with_backing_file_sends_guest_data(daemon: Daemon, tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    write_runs(base, SIZE, [(0, 8 * MiB), (30 * MiB, 4 * MiB)], seed=2)
    top = tmp_path / "top.qcow2"
    # Over the base's data and in its holes, unaligned to clusters.
    qcow2_with_runs(top, SIZE, [(4 * MiB + 4096, 6 * MiB), (50 * MiB, 1 * MiB + 512)], backing=base)
    run("qemu-io", "-f", "qcow2", "-c", f"write -z {31 * MiB} {MiB}", top)
    ticket_id, disk = daemon.add_ticket(size=SIZE, data=b"\xee" * SIZE)
    ok(run_client("upload", top, url(daemon, ticket_id), *common(daemon, tmp_path)))
    assert same_guest_data(top, disk)
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_upload_with_disk_format_qcow2_sends_the_file_itself(
    daemon: Daemon, tmp_path: Path
) -> None:
    src = tmp_path / "src.qcow2"
    qcow2_with_runs(src, SIZE, [(MiB, 2 * MiB), (20 * MiB, 3 * MiB)])
    file_size = src.stat().st_size
    ticket_id, disk = daemon.add_ticket(size=8 * MiB, data=b"\xaa" * 8 * MiB)
    ok(
        run_client(
            "upload",
            src,
            url(daemon, ticket_id),
            "--disk-format",
            "qcow2",
            *common(daemon, tmp_path),
        )
    )
    stored = disk.read_bytes()
    assert stored[:file_size] == src.read_bytes()
    assert stored[file_size:] == bytes(len(stored) - file_size)
    assert json.loads(run("qemu-img", "info", "--output=json", disk))["format"] == "qcow2"
    assert same_guest_data(src, disk)
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_workers_never_exceed_what_the_server_allows(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    # The daemon refuses a third writer (503): a client that opened its
    # four connections anyway would fail.
    daemon = make_daemon(http={"max_writers": 2})
    src = tmp_path / "src.raw"
    write_runs(src, SIZE, [(0, SIZE)], seed=3)
    ticket_id, disk = daemon.add_ticket(size=SIZE)
    done = run_client(
        "upload", src, url(daemon, ticket_id), "--workers", "4", "-v", *common(daemon, tmp_path)
    )
    ok(done)
    assert "workers=2" in done.stderr
    assert same_guest_data(src, disk)
    daemon.result("Ticket.remove", uuid=ticket_id)


# Downloads.


@pytest.mark.parametrize("transport", ["unix", "tls"])
def test_download_raw_leaves_holes(daemon: Daemon, tmp_path: Path, transport: str) -> None:
    ticket_id, image = daemon.add_ticket(size=SIZE, ops=("read",))
    write_runs(image, SIZE, RUNS, seed=4)
    target = tmp_path / "out.raw"
    args: list[str | Path] = [url(daemon, ticket_id), target, *ca(daemon), "-v"]
    if transport == "tls":
        args.append("--no-unix-socket")
    done = run_client("download", *args)
    ok(done)
    assert f"transport={transport}" in done.stderr
    assert target.read_bytes() == image.read_bytes()
    data = sum(length for _, length in RUNS)
    assert allocated(target) < data + 4 * MiB
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_download_qcow2(daemon: Daemon, tmp_path: Path) -> None:
    ticket_id, image = daemon.add_ticket(size=SIZE, ops=("read",))
    write_runs(image, SIZE, RUNS, seed=5)
    target = tmp_path / "out.qcow2"
    ok(run_client("download", url(daemon, ticket_id), target, "--format", "qcow2", *ca(daemon)))
    info = json.loads(run("qemu-img", "info", "--output=json", target))
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == SIZE
    assert same_guest_data(image, target)
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_download_qcow2_on_a_backing_file(daemon: Daemon, nbd: Nbd, tmp_path: Path) -> None:
    # The host's disk: a qcow2 layer on a base; the backup keeps a copy of
    # the base and downloads the disk on top of it.
    base = nbd.dir / "base.raw"
    write_runs(base, SIZE, [(0, 8 * MiB), (32 * MiB, 8 * MiB)], seed=6)
    top = nbd.dir / "top.qcow2"
    qcow2_with_runs(top, SIZE, [(2 * MiB, MiB), (48 * MiB, 2 * MiB)], backing=base)
    # Zeros over the base's data must hide it in the download too.
    run("qemu-io", "-f", "qcow2", "-c", f"write -z {33 * MiB} {2 * MiB}", top)
    ticket_id = nbd.ticket(nbd.serve(top, "qcow2", read_only=True), SIZE, ("read",))
    local_base = tmp_path / "base.raw"
    shutil.copyfile(base, local_base)
    target = tmp_path / "backup.qcow2"
    ok(
        run_client(
            "download",
            url(daemon, ticket_id),
            target,
            "--format",
            "qcow2",
            "--backing-file",
            local_base,
            *ca(daemon),
        )
    )
    info = json.loads(run("qemu-img", "info", "--output=json", target))
    assert info["full-backing-filename"] == str(local_base)
    assert same_guest_data(top, target)


def test_incremental_download_gets_only_dirty_extents(
    daemon: Daemon, nbd: Nbd, tmp_path: Path
) -> None:
    disk = nbd.dir / "disk.qcow2"
    qcow2_with_runs(disk, SIZE, [(0, 16 * MiB), (40 * MiB, 8 * MiB)])
    # The full backup at the checkpoint, then the bitmap records changes.
    full = tmp_path / "full.qcow2"
    run("qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", disk, full)
    run("qemu-img", "bitmap", "--add", disk, "checkpoint-1")
    changed = [(4 * MiB, 2 * MiB), (30 * MiB, MiB)]
    for offset, length in changed:
        run("qemu-io", "-f", "qcow2", "-c", f"write -P 9 {offset} {length}", disk)
    # A zeroed range over old data: dirty zeros must hide the backup's data.
    run("qemu-io", "-f", "qcow2", "-c", f"write -z {42 * MiB} {MiB}", disk)
    server = nbd.serve(disk, "qcow2", read_only=True, bitmap="checkpoint-1")
    ticket_id = nbd.ticket(server, SIZE, ("read",), dirty=True)
    target = tmp_path / "incr.qcow2"
    done = run_client(
        "download",
        url(daemon, ticket_id),
        target,
        "--format",
        "qcow2",
        "--incremental",
        "--backing-file",
        full,
        *ca(daemon),
    )
    ok(done)
    assert same_guest_data(disk, target)
    received = int(done.stderr.split(" received")[0].rsplit(" ", 1)[1])
    assert received == sum(length for _, length in changed)
    # Only the changes are stored in the incremental image.
    assert allocated(target) < 8 * MiB


def test_json_progress_increases_and_ends_at_the_size(daemon: Daemon, tmp_path: Path) -> None:
    ticket_id, image = daemon.add_ticket(size=SIZE, ops=("read",))
    write_runs(image, SIZE, [(0, SIZE // 2), (SIZE // 2 + MiB, SIZE // 4)], seed=7)
    target = tmp_path / "out.raw"
    # Slow enough for several lines however fast the machine. A download's
    # progress counts bytes received, which the relay's pace bounds.
    with Relay(daemon.port, rate=32 * MiB) as relay:
        proc = start_client(
            "download",
            url(daemon, ticket_id, relay.port),
            target,
            "--no-unix-socket",
            "--progress",
            "json",
            *ca(daemon),
        )
        try:
            proc.wait(120)
        finally:
            out, err = stop(proc)
    assert proc.returncode == 0, err
    lines = progress_lines(out)
    assert len(lines) >= 3, lines
    for line in lines:
        assert set(line) == {"transferred", "size", "elapsed", "rate"}
        assert line["size"] == SIZE
    sizes = [line["transferred"] for line in lines]
    assert sizes == sorted(set(sizes)), "transferred must grow with every line"
    assert sizes[-1] == SIZE
    elapsed = [line["elapsed"] for line in lines]
    assert elapsed == sorted(elapsed)
    assert all(line["rate"] > 0 for line in lines[1:])
    assert target.read_bytes() == image.read_bytes()
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_checksum_of_a_file_equals_for_raw_and_qcow2(tmp_path: Path) -> None:
    raw = tmp_path / "a.raw"
    write_runs(raw, SIZE, RUNS, seed=8)
    qcow2 = tmp_path / "a.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2)
    sums = [json.loads(run_client("checksum", path).stdout) for path in (raw, qcow2)]
    assert sums[0] == sums[1]
    assert sums[0]["algorithm"] == "blake2b" and sums[0]["block_size"] == 4 * MiB
    os.truncate(raw, SIZE - 4096)
    assert json.loads(run_client("checksum", raw).stdout) != sums[0]


def test_checksum_of_a_transfer_url_equals_the_file_s(daemon: Daemon, tmp_path: Path) -> None:
    ticket_id, image = daemon.add_ticket(size=SIZE, ops=("read",))
    write_runs(image, SIZE, RUNS, seed=9)
    remote = json.loads(run_client("checksum", url(daemon, ticket_id), *ca(daemon)).stdout)
    local = json.loads(run_client("checksum", image).stdout)
    assert remote == local
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_progress_bar_shows_rate_and_reaches_100_percent(daemon: Daemon, tmp_path: Path) -> None:
    ticket_id, image = daemon.add_ticket(size=SIZE, ops=("read",))
    write_runs(image, SIZE, RUNS, seed=10)
    done = run_client(
        "download", url(daemon, ticket_id), tmp_path / "out.raw", "--progress", "bar", *ca(daemon)
    )
    ok(done)
    final = done.stderr.replace("\r", "\n").strip().splitlines()
    bar = [line for line in final if line.startswith("download:")][-1]
    assert "100%" in bar and "64.0M/64.0M" in bar and "/s" in bar, bar
    # -q: nothing but errors.
    quiet = run_client("download", url(daemon, ticket_id), tmp_path / "q.raw", "-q", *ca(daemon))
    ok(quiet)
    assert quiet.stderr == "" and quiet.stdout == ""
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_target_is_zero_skips_the_zero_ranges(daemon: Daemon, tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    write_runs(src, SIZE, RUNS, seed=11)
    # The user's promise is taken: what was in the holes stays.
    ticket_id, disk = daemon.add_ticket(size=SIZE, data=b"\xff" * SIZE)
    ok(
        run_client(
            "upload",
            src,
            url(daemon, ticket_id),
            "--target-is-zero",
            "--no-verify",
            *common(daemon, tmp_path),
        )
    )
    stored, data = disk.read_bytes(), src.read_bytes()
    for offset, length in RUNS:
        assert stored[offset : offset + length] == data[offset : offset + length]
    # The source's first hole, as the file system reports it (whole blocks).
    hole = RUNS[0][1], MiB
    assert stored[hole[0] : hole[1]] == b"\xff" * (hole[1] - hole[0])
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_json_progress_to_a_file_descriptor(daemon: Daemon, tmp_path: Path) -> None:
    ticket_id, image = daemon.add_ticket(size=SIZE, ops=("read",))
    write_runs(image, SIZE, RUNS, seed=12)
    log = tmp_path / "progress.jsonl"
    with open(log, "w") as f:
        done = subprocess.run(
            [
                str(CLIENT),
                "download",
                url(daemon, ticket_id),
                str(tmp_path / "out.raw"),
                "--progress-fd",
                str(f.fileno()),
                *ca(daemon),
            ],
            pass_fds=[f.fileno()],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    ok(done)
    assert done.stdout == ""
    lines = progress_lines(log.read_text())
    assert lines and lines[-1]["transferred"] == SIZE
    daemon.result("Ticket.remove", uuid=ticket_id)
