"""Newline-delimited JSON-RPC 2.0 messages: one request line to one reply line.

A pure core with no sockets: ``respond`` takes the bytes of one line and
returns the line to send back (None for a notification or a batch of
notifications). Dispatch and the replies of the methods are jsonrpcserver's;
parsing, the request shape and batches are checked here, strictly, because
its own lenient path let Python's recursion limit and float overflow reach
the reply.

Rules:
- A line is UTF-8 JSON text per RFC 8259: no NaN or Infinity, no number
  too large for a float (``1e400``), nesting at most ``MAX_DEPTH`` deep
  (RFC 8259 section 9 lets a parser limit depth; Python's recursion limit
  would otherwise decide, differently per call stack). Anything else is a
  parse error (-32700) with a null id.
- A batch holds 1 to ``MAX_BATCH`` requests; an empty or larger batch is
  one -32600 error. Each member is checked on its own (JSON-RPC 2.0
  section 6): a member that is not a request gets its own -32600 in the
  reply array, the others are answered, replies in request order.
- The reply always serializes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

from jsonrpcserver import dispatch_to_serializable

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603

# A ticket request nests 6 levels (batch, request, params, ticket, volume,
# lease); the engine's extra keys add a few.
MAX_DEPTH = 64
# vdsm sends one request per line; a batch is a convenience, not a way to
# run thousands of verbs behind one line.
MAX_BATCH = 100

Methods = dict[str, Callable[..., Any]]


class ParseError(ValueError):
    """The line is not JSON text this channel accepts."""


def respond(line: bytes, methods: Methods, context: Any) -> str | None:
    """The reply to one request line, without the newline."""
    try:
        message = parse(line)
    except ParseError as e:
        return error_line(PARSE_ERROR, "Parse error", str(e))
    if not isinstance(message, list):
        response = _dispatch(message, methods, context)
        return None if response is None else _encode(response)
    if not message:
        return error_line(INVALID_REQUEST, "Invalid request", "empty batch")
    if len(message) > MAX_BATCH:
        return error_line(
            INVALID_REQUEST,
            "Invalid request",
            f"batch of {len(message)} requests exceeds the limit of {MAX_BATCH}",
        )
    replies = [r for r in (_dispatch(m, methods, context) for m in message) if r is not None]
    return _encode(replies) if replies else None


def parse(line: bytes) -> Any:
    """The JSON value of one line, or ParseError."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(f"request is not UTF-8: {e}") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ParseError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        # Also int() past Python's digit limit: a 5,000-digit number.
        raise ParseError(str(e)) from None
    if _too_deep(value, MAX_DEPTH):
        raise ParseError(f"JSON nested deeper than {MAX_DEPTH} levels")
    return value


def _too_deep(value: Any, limit: int) -> bool:
    # Level by level, containers only: no recursion, linear in the size.
    level = [value] if isinstance(value, (dict, list)) else []
    for _ in range(limit):
        if not level:
            return False
        below: list[Any] = []
        for container in level:
            items = container.values() if isinstance(container, dict) else container
            below.extend(v for v in items if isinstance(v, (dict, list)))
        level = below
    return bool(level)


def _dispatch(request: Any, methods: Methods, context: Any) -> Any:
    """The reply object to one parsed request (None for a notification)."""
    try:
        validate(request)
    except ValueError as e:
        # JSON-RPC 2.0 section 5: the id of an invalid request is null.
        return _error(INVALID_REQUEST, "Invalid request", str(e))
    return dispatch_to_serializable(
        "", methods, context=context, deserializer=lambda _: request, validator=_checked
    )


_REQUEST_KEYS = frozenset({"jsonrpc", "method", "params", "id"})


def validate(request: Any) -> Any:
    """The JSON-RPC 2.0 request shape, checked in plain Python.

    Same rules as jsonrpcserver's JSON schema (section 4 of the spec; no
    extra members), at a fraction of the cost: the schema check was most
    of a ticket verb's latency. Raising makes the request -32600.
    """
    if not isinstance(request, dict):
        raise ValueError("a request must be a JSON object")
    if not request.keys() <= _REQUEST_KEYS:
        raise ValueError("a request has only the members jsonrpc, method, params and id")
    if request.get("jsonrpc") != "2.0":
        raise ValueError('jsonrpc must be "2.0"')
    if not isinstance(request.get("method"), str):
        raise ValueError("method must be a string")
    if "params" in request and not isinstance(request["params"], (list, dict)):
        raise ValueError("params must be an array or an object")
    ident = request.get("id")
    if isinstance(ident, bool) or not isinstance(ident, (str, int, float, type(None))):
        raise ValueError("id must be a string, a number or null")
    return request


def _checked(request: Any) -> Any:
    return request  # validate() ran before dispatch


def _error(code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "error": error, "id": None}


def error_line(code: int, message: str, data: Any = None) -> str:
    """An error reply to a request whose id could not be read."""
    return json.dumps(_error(code, message, data))


def notification_line(method: str, params: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": params}, allow_nan=False)


def _reject_constant(name: str) -> Any:
    # json accepts NaN and Infinity, RFC 8259 does not.
    raise ValueError(f"invalid JSON constant {name}")


def _finite_float(text: str) -> float:
    # 1e400 parses to inf, which no reply could echo as JSON (an id).
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _encode(response: dict[str, Any] | list[dict[str, Any]]) -> str:
    try:
        return json.dumps(response, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        pass
    # A verb returned something JSON cannot carry: a bug in the verb. Keep
    # the other replies of a batch and fail only the broken ones.
    if isinstance(response, list):
        return "[" + ",".join(_encode_one(r) for r in response) + "]"
    return _encode_one(response)


def _encode_one(response: dict[str, Any]) -> str:
    try:
        return json.dumps(response, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        log.exception("UNSERIALIZABLE reply id=%r", response.get("id"))
        return json.dumps(
            {
                "jsonrpc": "2.0",
                "error": {"code": INTERNAL_ERROR, "message": "Internal error, see the log"},
                "id": response.get("id"),
            }
        )
