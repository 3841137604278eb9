"""A domain error's details as a test reads them.

``ImageioError.fields`` holds objects (each error class types its own
keyword arguments); a test that compares a detail with text or a number
first checks that it is one.
"""

from __future__ import annotations

from typing import TypeVar

from vdsm_imageio.errors import ImageioError

T = TypeVar("T")


def detail(error: ImageioError, name: str, kind: type[T]) -> T:
    """error.fields[name], which must be of kind."""
    value = error.fields[name]
    assert isinstance(value, kind), f"{name}={value!r} is not {kind.__name__}"
    return value
