"""Fixtures that start a real ``vdsm-imageio serve --local`` daemon.

The daemon and its clients are in tests/support/daemon.py; here a test
module shares one daemon with the default configuration, or a test starts
its own with conf.d options.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, MakeDaemon, finish, ini, new_directory


def _stop(d: Daemon) -> None:
    problem = finish(d)
    if problem is not None:
        pytest.fail(problem)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """A daemon with the default configuration, shared by a test module."""
    d = Daemon(new_directory())
    try:
        yield d
    finally:
        _stop(d)


@pytest.fixture
def make_daemon() -> Iterator[MakeDaemon]:
    """Start daemons with conf.d options: make_daemon(http={"max_writers": 1});
    make_daemon(directory=killed.dir) restarts on a killed daemon's directory;
    make_daemon(directory=host.dir, proxy=True) starts a proxy beside host."""
    started: list[Daemon] = []

    def make(
        directory: Path | None = None,
        *,
        proxy: bool = False,
        port: int = 0,
        **conf: dict[str, Any],
    ) -> Daemon:
        d = Daemon(directory or new_directory(), ini(conf) if conf else "", proxy=proxy, port=port)
        started.append(d)
        return d

    yield make
    # Last started first: a proxy lives in the directory of its host daemon.
    for d in reversed(started):
        if not d.killed:  # a killed one has nothing left to stop
            _stop(d)
