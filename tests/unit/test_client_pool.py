"""The client's worker pool, journal file, progress and error table.

The pool is tested with handlers that record what they are given (no
network: the pool's rules are about ordering, checkpoints and failures).
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clock import FakeClock
from vdsm_imageio.client import errors
from vdsm_imageio.client.cli import size_arg
from vdsm_imageio.client.http import parse_url
from vdsm_imageio.client.journal import Identity, Journal
from vdsm_imageio.client.plan import Item, Op
from vdsm_imageio.client.progress import JsonLines
from vdsm_imageio.client.workers import Pool


class Recorder:
    """A handler that remembers its items and flushes; fails on demand."""

    def __init__(self, log: list[tuple[str, int, tuple[int, int] | None]], n: int) -> None:
        self.log = log
        self.n = n
        self.items: list[Item] = []
        self.fail_at: int | None = None
        self.aborted = False
        self.closed = False
        self.gate: threading.Event | None = None

    def run(self, item: Item) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_at is not None and len(self.items) == self.fail_at:
            raise RuntimeError(f"failed at item {self.fail_at}")
        self.items.append(item)
        self.log.append(("run", self.n, (item.start, item.end)))

    def flush(self) -> None:
        self.log.append(("flush", self.n, None))

    def abort(self) -> None:
        self.aborted = True
        if self.gate is not None:
            self.gate.set()

    def close(self) -> None:
        self.closed = True


def items(count: int, length: int = 10) -> list[Item]:
    return [Item(Op.COPY, i * length, length) for i in range(count)]


def test_each_worker_gets_its_items_in_image_order() -> None:
    log: list[tuple[str, int, tuple[int, int] | None]] = []
    handlers = [Recorder(log, n) for n in range(3)]
    commits: list[list[tuple[int, int]]] = []
    Pool(list(handlers), commit=lambda r: commits.append(list(r)), progress=lambda n: None).run(
        items(30)
    )
    starts = sorted(i.start for h in handlers for i in h.items)
    assert starts == [i * 10 for i in range(30)]
    for h in handlers:
        mine = [i.start for i in h.items]
        assert mine == sorted(mine)
    committed = sorted(r for c in commits for r in c)
    assert committed == [(i * 10, i * 10 + 10) for i in range(30)]


def test_a_range_is_committed_only_after_its_worker_flushed() -> None:
    log: list[tuple[str, int, tuple[int, int] | None]] = []
    commits: list[tuple[int, list[tuple[int, int]]]] = []

    def commit(ranges: list[tuple[int, int]]) -> None:
        commits.append((len(log), list(ranges)))

    Pool([Recorder(log, 0)], commit=commit, progress=lambda n: None).run(items(5))
    for at, ranges in commits:
        for r in ranges:
            ran = next(i for i, e in enumerate(log) if e[2] == r)
            flushed = [i for i, e in enumerate(log[:at]) if e[0] == "flush" and i > ran]
            assert flushed, f"{r} committed before a flush"


def test_checkpoints_follow_the_clock() -> None:
    clock = FakeClock(now=0.0)
    log: list[tuple[str, int, tuple[int, int] | None]] = []
    commits: list[list[tuple[int, int]]] = []

    class Ticking(Recorder):
        def run(self, item: Item) -> None:
            super().run(item)
            clock.now += 0.3

    t = Ticking(log, 0)
    Pool(
        [t],
        commit=lambda r: commits.append(list(r)),
        progress=lambda n: None,
        checkpoint=0.5,
        clock=clock,
    ).run(items(6))
    # Every second item passes 0.5 s; the rest at the end.
    assert [len(c) for c in commits] == [2, 2, 2]


def test_a_slow_flush_spaces_the_checkpoints_out() -> None:
    clock = FakeClock(now=0.0)
    log: list[tuple[str, int, tuple[int, int] | None]] = []
    commits: list[list[tuple[int, int]]] = []

    class SlowFlush(Recorder):
        def run(self, item: Item) -> None:
            super().run(item)
            clock.now += 0.5

        def flush(self) -> None:
            super().flush()
            clock.now += 0.125  # 20 times that: 2.5 s between checkpoints

    Pool(
        [SlowFlush(log, 0)],
        commit=lambda r: commits.append(list(r)),
        progress=lambda n: None,
        checkpoint=0.5,
        clock=clock,
    ).run(items(10))
    # The first checkpoint after 0.5 s, then after 2.5 s of items (5 of
    # them); the rest at the end.
    assert [len(c) for c in commits] == [1, 5, 4]


def test_skips_count_as_progress_and_reach_no_handler() -> None:
    log: list[tuple[str, int, tuple[int, int] | None]] = []
    h = Recorder(log, 0)
    moved: list[int] = []
    Pool([h], commit=lambda r: None, progress=moved.append).run(
        [Item(Op.SKIP, 0, 100), Item(Op.COPY, 100, 5)]
    )
    assert moved == [100]
    assert [i.start for i in h.items] == [100]


def test_a_failed_worker_stops_the_pool_and_the_others_keep_their_work() -> None:
    log: list[tuple[str, int, tuple[int, int] | None]] = []
    good, bad = Recorder(log, 0), Recorder(log, 1)
    bad.fail_at = 3
    commits: list[tuple[int, int]] = []
    with pytest.raises(RuntimeError, match="failed at item 3"):
        Pool([good, bad], commit=commits.extend, progress=lambda n: None).run(items(1000))
    done = {(i.start, i.end) for h in (good, bad) for i in h.items}
    assert set(commits) == done, "everything done was flushed and committed"
    assert len(done) < 1000, "the pool stopped"


def test_cancel_aborts_every_handler_and_commits_nothing_more() -> None:
    log: list[tuple[str, int, tuple[int, int] | None]] = []
    handlers = [Recorder(log, n) for n in range(2)]
    gate = threading.Event()
    for h in handlers:
        h.gate = gate
    commits: list[tuple[int, int]] = []
    pool = Pool(list(handlers), commit=commits.extend, progress=lambda n: None)

    def interrupted() -> Iterator[Item]:
        yield from items(3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pool.run(interrupted())
    assert all(h.aborted for h in handlers)
    assert commits == []


# The journal file.


def test_journal_survives_a_restart_and_refuses_another_transfer(tmp_path: Path) -> None:
    path = tmp_path / "state" / "x.journal"
    identity: Identity = {"op": "download", "size": 100}
    j = Journal.create(path, identity)
    j.commit([(0, 10)])
    j.commit([(50, 60)])
    j.close()
    with open(path, "a") as f:
        f.write('{"done": [[10')  # a crash in the middle of a commit
    again, done = Journal.resume(path, identity)
    assert list(done) == [(0, 10), (50, 60)]
    again.commit([(10, 50)])
    again.close()
    assert list(Journal.resume(path, identity)[1]) == [(0, 60)]
    with pytest.raises(errors.ResumeMismatch, match="size differs"):
        Journal.resume(path, {"op": "download", "size": 200})
    Journal.resume(path, identity)[0].remove()
    assert not path.exists()


# Progress.


def test_json_progress_lines_are_throttled_and_end_at_the_size() -> None:
    clock = FakeClock(now=0.0)
    out = io.StringIO()
    p = JsonLines(out, clock=clock, interval=1.0)
    p.start(100, 20)
    for _ in range(8):
        clock.now += 0.4
        p.update(10)
    p.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["transferred"] for line in lines] == [20, 50, 80, 100]
    assert lines[-1] == {"transferred": 100, "size": 100, "elapsed": 3.2, "rate": 25}


# Errors, URLs, sizes.


def test_every_error_has_one_exit_code_and_a_line_with_advice() -> None:
    assert errors.exit_code(errors.ReadOnlyTransfer()) == errors.REFUSED
    assert errors.exit_code(errors.ConnectionLost(server="h:1", reason="reset")) == (
        errors.UNREACHABLE
    )
    assert errors.exit_code(errors.ResumeMismatch(journal="j", field="url")) == errors.USAGE
    assert errors.exit_code(errors.ServerError(status=500, message="boom")) == errors.FAILED
    text = str(errors.DoesNotFit(size=10, what="", disk=5))
    assert "\n" not in text and ": extend the disk" in text
    codes = [code for _, code, _ in errors.EXIT_CODES]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize(
    "text",
    [
        "ftp://host/images/t",
        "https://host/tickets/t",
        "https://host/images/",
        "https://host/images/t/extents",
        "https://:54322/images/t",
        "https://host:99999/images/t",
    ],
)
def test_a_url_that_is_no_transfer_url_is_a_usage_error(text: str) -> None:
    with pytest.raises(errors.UsageError):
        parse_url(text)


def test_transfer_url_parts_and_the_printable_server() -> None:
    u = parse_url("https://[::1]:54322/images/secret")
    assert (u.host, u.port, u.path, u.server) == ("::1", 54322, "/images/secret", "[::1]:54322")
    assert "secret" not in u.server
    assert parse_url("https://host/images/t").port == 443


def test_sizes_take_units() -> None:
    assert size_arg("4M") == 4 * 1024**2
    assert size_arg("256KiB") == 256 * 1024
    assert size_arg("65536") == 65536
    for bad in ("4X", "", "1K", "1G", "-4M"):
        with pytest.raises(Exception, match="expected"):
            size_arg(bad)
