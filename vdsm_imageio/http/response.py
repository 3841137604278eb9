"""Writing the response to one request: status line, headers, body.

Every response carries ``Server``, ``Date`` and ``Content-Length``, the
CORS headers when the request came with ``Origin``
(``vdsm_imageio.http.cors``), and ``Connection: close`` when the connection
closes after it. A response to HEAD has no content, whatever its status.
Errors are one ``text/plain`` line, the message of the domain error, with
the headers the status table gives (``vdsm_imageio.http.errors``).

Once the head is on the wire the status cannot change: an error after it is
told by a short body and a closed connection (``head_sent``).
"""

from __future__ import annotations

import json
import socket
from email.utils import formatdate
from typing import Any

from ..errors import PeerClosed
from . import cors
from .errors import Reply
from .message import Request

REASONS = {
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    507: "Insufficient Storage",
}
TEXT = "text/plain; charset=utf-8"


def peer_closed(e: OSError) -> PeerClosed:
    """What a failed send or receive on the client's socket means to us."""
    return PeerClosed(reason=e.strerror or type(e).__name__)


class Response:
    """The response to request (None: its head was refused) on sock."""

    def __init__(self, sock: socket.socket, request: Request | None, *, close: bool) -> None:
        self._sock = sock
        self._request = request
        # Whether the connection closes after this response.
        self.close = close
        self.head_sent = False

    def close_after(self) -> None:
        """Close the connection after this response (say so in its head, if not sent yet)."""
        self.close = True

    def send_head(self, status: int, headers: dict[str, str], length: int) -> None:
        lines = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
            "Server: vdsm-imageio",
            f"Date: {formatdate(usegmt=True)}",
            f"Content-Length: {length}",
        ]
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        lines.extend(f"{k}: {v}" for k, v in cors.headers(self._request).items())
        if self.close:
            lines.append("Connection: close")
        self.head_sent = True
        self.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def send_continue(self) -> None:
        """The interim 100 to a request that expects it (RFC 9110 section 10.1.1)."""
        self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def write(self, data: bytes | memoryview) -> None:
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise peer_closed(e) from e

    def reply(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = TEXT,
        headers: dict[str, str] | None = None,
    ) -> None:
        all_headers = dict(headers or {})
        if body:
            all_headers.setdefault("Content-Type", content_type)
        self.send_head(status, all_headers, len(body))
        # RFC 9110 section 9.3.2: a reply to HEAD has no content, whatever
        # its status (HEAD is refused here, with 405); bytes after the head
        # would be read as the start of the next reply.
        if body and not (self._request is not None and self._request.method == "HEAD"):
            self.write(body)

    def reply_json(
        self, obj: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(obj).encode() + b"\n"
        self.reply(status, body, "application/json", headers)

    def error(self, reply: Reply) -> None:
        """The error reply: its status, headers and message as one line."""
        if reply.close:
            self.close = True
        self.reply(reply.status, (reply.message + "\n").encode(), TEXT, reply.headers)
