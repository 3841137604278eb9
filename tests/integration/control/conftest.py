"""A real ControlServer on a unix socket over a real Registry, and a raw
client connected to it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.control.rawcontrol import INFO, Client
from tests.support.clock import FakeClock
from vdsm_imageio.registry import Registry
from verbs import create_control
from verbs.server import ControlServer


@pytest.fixture
def sock_dir(tmp_path: Path) -> Iterator[str]:
    # sun_path holds 108 bytes; pytest's tmp_path can be longer.
    if len(str(tmp_path)) < 80:
        yield str(tmp_path)
        return
    short = tempfile.mkdtemp(prefix="ctl-")
    try:
        yield short
    finally:
        shutil.rmtree(short)


@pytest.fixture
def sock_path(sock_dir: str) -> str:
    return os.path.join(sock_dir, "control.sock")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(clock=clock, remove_timeout=0.2, default_inactivity_timeout=60)


@pytest.fixture
def server(registry: Registry, sock_path: str) -> Iterator[ControlServer]:
    with create_control(registry, sock_path, lambda: INFO) as srv:
        yield srv


@pytest.fixture
def client(server: ControlServer) -> Iterator[Client]:
    c = Client(server.path)
    yield c
    c.close()
