"""Fixtures of the VM lane; these tests run only inside its guest."""

from __future__ import annotations

import os

import pytest

IN_GUEST = os.environ.get("VDSM_IMAGEIO_VM") == "1"


def pytest_collection_modifyitems(config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    if IN_GUEST:
        return
    # They create volume groups and start daemons: never on the host.
    skip = pytest.mark.skip(reason="runs inside the VM lane guest: make test-vm")
    for item in items:
        if "tests/vm/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(skip)
