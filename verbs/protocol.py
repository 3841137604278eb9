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
        text, methods, context=context, deserializer=_loads)
    if response is None:
        return None
    return _encode(response)


def error_line(code: int, message: str, data: Any = None) -> str:
    """An error reply to a request whose id could not be read."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return json.dumps({"jsonrpc": "2.0", "error": error, "id": None})


def notification_line(method: str, params: Any) -> str:
    return json.dumps(
        {"jsonrpc": "2.0", "method": method, "params": params}, allow_nan=False)


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
        return json.dumps({
            "jsonrpc": "2.0",
            "error": {"code": INTERNAL_ERROR, "message": "Internal error, see the log"},
            "id": response.get("id"),
        })
