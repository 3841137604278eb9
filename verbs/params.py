"""Binding and checking the params of a control request.

Rules:
- A param that is missing, unknown or of the wrong type is an InvalidParam
  naming it (-32602); nothing falls back to a default for a value sent.
- Params come by name (an object) or by position (an array), never both
  (JSON-RPC 2.0 section 4.2).
- ``bool`` is not an ``int`` here, although Python says it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from vdsm_imageio.errors import InvalidParam
from vdsm_imageio.ticketspec import show


def bind(
    signature: inspect.Signature,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> inspect.BoundArguments:
    params = list(signature.parameters.values())
    if len(args) > len(params):
        raise InvalidParam(
            field="params",
            reason=f"takes at most {len(params)} positional params, got {len(args)}",
        )
    names = {p.name for p in params}
    for key in kwargs:
        if key not in names:
            raise InvalidParam(field=key, reason="is not a parameter of this method")
    for p in params[len(args) :]:
        if p.name not in kwargs and p.default is inspect.Parameter.empty:
            raise InvalidParam(field=p.name, reason="is required")
    return signature.bind(*args, **kwargs)


def string(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidParam(field=name, reason=f"must be a non-empty string, got {show(value)}")
    return value


def integer(name: str, value: object, *, minimum: int = 0, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParam(field=name, reason=f"must be an integer, got {show(value)}")
    # The value is not rendered: a 4,000-digit integer takes time to print.
    if not minimum <= value <= maximum:
        raise InvalidParam(field=name, reason=f"must be between {minimum} and {maximum}")
    return value


def strings(name: str, value: object) -> list[str]:
    if not isinstance(value, list):
        raise InvalidParam(field=name, reason=f"must be a list of strings, got {show(value)}")
    for item in value:
        if not isinstance(item, str):
            raise InvalidParam(field=name, reason=f"must contain strings, got {show(item)}")
    return list(value)
