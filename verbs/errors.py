"""The one table from domain errors to JSON-RPC error codes.

A verb raises a domain error from ``vdsm_imageio.errors``; ``verb()`` turns
a plain function into a jsonrpcserver method and maps what it raises here.
Anything not in the table is a bug or an unexpected failure: the caller
gets -32603 "see the log" and the traceback goes to the log, so internals
never leak to the control channel.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from jsonrpcserver import Error, Success

from vdsm_imageio import errors

from .params import bind

log = logging.getLogger(__name__)

# JSON-RPC 2.0 section 5.1.
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# Invalid params put {"field", "reason"} in data; application errors put
# their structured fields there (the LVM message, the hook's stderr).
CODES: dict[type[errors.ImageioError], int] = {
    errors.InvalidTicket: INVALID_PARAMS,
    errors.InvalidParam: INVALID_PARAMS,
    errors.TicketNotFound: 100,
    errors.TicketConflict: 101,
    errors.TicketBusy: 102,
    errors.VolumeNotFound: 200,
    errors.VolumeError: 201,
    errors.LeaseBusy: 202,
    errors.LockspaceUnavailable: 203,
    errors.HookFailed: 300,
}

# What jsonrpcserver expects a method to return: an Either of its results.
Result = Any
Method = Callable[..., Result]


class RpcError:
    """A JSON-RPC error object: code, message and optional data; unexpected
    when it stands for a bug, whose traceback the log gets."""

    __slots__ = ("code", "data", "message", "unexpected")

    def __init__(
        self, code: int, message: str, data: Any = None, *, unexpected: bool = False
    ) -> None:
        self.code = code
        self.message = message
        self.data = data
        self.unexpected = unexpected

    def result(self) -> Result:
        if self.data is None:
            return Error(self.code, self.message)
        return Error(self.code, self.message, self.data)


def code_of(exc: BaseException) -> int | None:
    """The code of exc's nearest class in the table, None if not mapped."""
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]
    return None


def translate(exc: Exception) -> RpcError:
    code = code_of(exc)
    if code is None or not isinstance(exc, errors.ImageioError):
        return RpcError(INTERNAL_ERROR, "Internal error, see the log", unexpected=True)
    if code == INVALID_PARAMS:
        data = {"field": exc.fields.get("field"), "reason": exc.fields.get("reason")}
        return RpcError(code, exc.message, data)
    return RpcError(code, exc.message, dict(exc.fields))


Translate = Callable[[Exception], RpcError]


def verb(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    pass_connection: bool = False,
    errors_of: Translate = translate,
) -> Method:
    """Make fn a jsonrpcserver method called with the connection as context.

    The params of the request are bound to fn's signature here, so a
    missing or unknown param is -32602 naming it. With pass_connection,
    fn gets the connection as its first argument (Events.subscribe uses it
    to push notifications); it is not a param the client can send.
    errors_of turns what fn raises into the error sent: this module's
    table, or vdsm's for the verbs with vdsm's names (``verbs.vdsm_errors``).
    """
    signature = inspect.signature(fn)
    if pass_connection:
        params = list(signature.parameters.values())[1:]
        signature = signature.replace(parameters=params)
    label = name or str(getattr(fn, "__qualname__", repr(fn)))

    def method(connection: Any, *args: Any, **kwargs: Any) -> Result:
        try:
            bound = bind(signature, args, kwargs)
        except Exception as e:
            # Params that do not bind are a JSON-RPC matter in every namespace.
            return _refused(label, e, translate(e))
        lead = (connection,) if pass_connection else ()
        try:
            return Success(fn(*lead, *bound.args, **bound.kwargs))
        except Exception as e:
            return _refused(label, e, errors_of(e))

    method.__name__ = method.__qualname__ = f"verb({label})"
    # jsonrpcserver checks every call's arguments against the method's
    # signature; computed once here, not by inspect at every request.
    method.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return method


def _refused(name: str, exc: Exception, error: RpcError) -> Result:
    if error.unexpected:
        log.exception("FAILED verb=%s", name)
    else:
        log.info("REFUSED verb=%s code=%d error=%s", name, error.code, type(exc).__name__)
    return error.result()
