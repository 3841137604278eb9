"""Newline-delimited JSON-RPC 2.0 messages: one request line to one reply line.

A pure core with no sockets: ``respond`` takes the bytes of one line and
returns the line to send back (None for a notification or a batch of
notifications). Dispatch, request validation and the standard error codes
are jsonrpcserver's; this module adds what the wire needs: UTF-8 checks,
strict JSON (no NaN), and a reply that always serializes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from jsonrpcserver import dispatch_to_serializable

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603

Methods = dict[str, Callable[..., Any]]


def respond(line: bytes, methods: Methods, context: Any) -> str | None:
    """The reply to one request line, without the newline."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return error_line(PARSE_ERROR, "Parse error", f"request is not UTF-8: {e}")
    response = dispatch_to_serializable(
        text, methods, context=context, deserializer=_loads, validator=validate
    )
    if response is None:
        return None
    return _encode(response)


_REQUEST_KEYS = frozenset({"jsonrpc", "method", "params", "id"})


def validate(request: Any) -> Any:
    """The JSON-RPC 2.0 request shape, checked in plain Python.

    Same rules as jsonrpcserver's JSON schema (section 4 of the spec; no
    extra members), at a fraction of the cost: the schema check was most
    of a ticket verb's latency. Raising makes the request -32600.
    """
    if isinstance(request, list):
        if not request:
            raise ValueError("empty batch")
        for item in request:
            _validate_one(item)
    else:
        _validate_one(request)
    return request


def _validate_one(request: Any) -> None:
    if not isinstance(request, dict) or not request.keys() <= _REQUEST_KEYS:
        raise ValueError("not a request object")
    if request.get("jsonrpc") != "2.0" or not isinstance(request.get("method"), str):
        raise ValueError("jsonrpc must be 2.0 and method a string")
    if "params" in request and not isinstance(request["params"], (list, dict)):
        raise ValueError("params must be an array or an object")
    ident = request.get("id")
    if isinstance(ident, bool) or not isinstance(ident, (str, int, float, type(None))):
        raise ValueError("id must be a string, a number or null")


def error_line(code: int, message: str, data: Any = None) -> str:
    """An error reply to a request whose id could not be read."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return json.dumps({"jsonrpc": "2.0", "error": error, "id": None})


def notification_line(method: str, params: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": params}, allow_nan=False)


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def _reject_constant(name: str) -> Any:
    # json accepts NaN and Infinity, RFC 8259 does not.
    raise ValueError(f"invalid JSON constant {name}")


def _encode(response: dict[str, Any] | list[dict[str, Any]]) -> str:
    try:
        return json.dumps(response, allow_nan=False)
    except (TypeError, ValueError):
        pass
    # A verb returned something JSON cannot carry: a bug in the verb. Keep
    # the other replies of a batch and fail only the broken ones.
    if isinstance(response, list):
        return "[" + ",".join(_encode_one(r) for r in response) + "]"
    return _encode_one(response)


def _encode_one(response: dict[str, Any]) -> str:
    try:
        return json.dumps(response, allow_nan=False)
    except (TypeError, ValueError):
        log.exception("UNSERIALIZABLE reply id=%r", response.get("id"))
        return json.dumps(
            {
                "jsonrpc": "2.0",
                "error": {"code": INTERNAL_ERROR, "message": "Internal error, see the log"},
                "id": response.get("id"),
            }
        )
