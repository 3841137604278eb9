"""Fixtures of the hostile-input corpora (helpers in corpus.py).

One daemon per module (the module-scoped ``daemon`` of tests/integration)
and in it one ``scene``: a writable ticket on one image, a read-only ticket
on another, and a file that no ticket names. A case takes ``guard``; after
the case it asserts that

- the daemon is alive, answers on its control channel, and has logged no
  traceback since the previous check;
- the two images and the unrelated file hold what they held before, unless
  the case declared a valid write with ``guard.expect_write(offset, data)``:
  then exactly that range changed (the image is restored for the next case);
- the tickets are those the scene added, with the same content.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.integration.hostile.corpus import Guard, Scene

if TYPE_CHECKING:
    from tests.support.daemon import Daemon


@pytest.fixture(scope="module")
def scene(daemon: Daemon) -> Scene:
    return Scene(daemon)


@pytest.fixture
def guard(scene: Scene) -> Iterator[Guard]:
    g = Guard(scene)
    yield g
    g.check()
