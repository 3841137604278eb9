"""Cross-origin access for browser uploads (the CORS protocol of the Fetch
standard).

The engine's admin portal is served from another origin and sends the image
with XMLHttpRequest straight to the transfer URL. The ticket id in the URL
is the only credential: no cookies, no Authorization header. So every
origin may read our responses ("*"), and a browser never sends credentials
to a "*" resource anyway.

Rules:
- Every response to a request that carries ``Origin`` carries the CORS
  headers, errors included: without them the browser hides a 403 and its
  reason behind a network error, and a page cannot tell an expired ticket
  from a broken network.
- A preflight (``OPTIONS`` with ``Origin`` and
  ``Access-Control-Request-Method``) is answered 200 without looking at the
  ticket. The browser sends it without credentials and treats any non-2xx
  answer as a network error; the real request that follows is authorized
  as usual. A preflight neither attaches to the ticket nor counts as its
  activity: it proves nothing about the client.
- ``Access-Control-Max-Age`` goes on every response with ``Origin``, so a
  browser keeps its preflight result whatever answer taught it the policy.
"""

from __future__ import annotations

from .message import Request

ALLOW_METHODS = "OPTIONS, GET, PUT, PATCH"
# Content-Range and Range tell an uploading page what the server holds;
# Allow is how OPTIONS answers; Content-Length sizes a download.
EXPOSE_HEADERS = "Content-Range, Content-Length, Allow, Range"
# Browsers cap it lower (Chromium at 2 hours); the policy never changes
# while the daemon runs, so the longest cache is right.
MAX_AGE = "86400"


def is_preflight(req: Request) -> bool:
    return (
        req.method == "OPTIONS"
        and req.header("Origin") is not None
        and req.header("Access-Control-Request-Method") is not None
    )


def headers(req: Request | None) -> dict[str, str]:
    """The CORS headers of the response to req (none without Origin)."""
    if req is None or not req.header("Origin"):
        return {}
    out = {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Expose-Headers": EXPOSE_HEADERS,
        "Access-Control-Max-Age": MAX_AGE,
    }
    if is_preflight(req):
        out["Access-Control-Allow-Methods"] = ALLOW_METHODS
        # "*" admits any header of a request without credentials (Fetch
        # standard, CORS-preflight fetch): Content-Range, Cache-Control and
        # Content-Type from the portal, whatever a newer page adds.
        out["Access-Control-Allow-Headers"] = "*"
    return out
