"""``vdsm-imageio call``: send one JSON-RPC request to the control socket.

    vdsm-imageio call [--socket PATH] [-f FILE|-] METHOD [name=value ...]
    vdsm-imageio call [--socket PATH] --subscribe [EVENT ...]

A value that parses as JSON is sent as JSON (``timeout=300`` is a number,
``ops='["read"]'`` a list); anything else is a string. Quote a string that
looks like JSON: ``uuid='"123"'``. ``-f`` reads a JSON object of params
from a file or stdin; name=value pairs override its keys.

``--subscribe`` calls ``Events.subscribe`` and prints each notification
as one JSON line until interrupted (SIGINT exits 0).

``--help`` lists the verbs from ``VERBS`` below, a copy of the control
plane's method table kept as data: help must work while the service is
down, and this package never imports ``verbs`` (the dependency points the
other way). A test holds the copy equal to the methods and signatures the
control plane registers.

Exit status: 0 with the result as JSON on stdout, 1 with ``error CODE:
MESSAGE`` on stderr when the service answers with an error, 2 when the
command line is wrong or the service cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from dataclasses import dataclass
from typing import Any, TextIO

DEFAULT_SOCKET = "/run/vdsm-imageio/control.sock"
# Ticket.remove may wait for running requests to drain.
REPLY_TIMEOUT = 300.0
MAX_REPLY = 64 * 1024**2

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 2


@dataclass(frozen=True)
class Verb:
    method: str
    params: tuple[str, ...]
    summary: str
    optional: tuple[str, ...] = ()

    def usage(self) -> str:
        names = [*self.params, *(f"[{p}]" for p in self.optional)]
        return " ".join([self.method, *names])


VERBS = (
    Verb("Ticket.add", ("ticket",), "add a ticket (a JSON object); its status"),
    Verb("Ticket.extend", ("uuid", "timeout"), "new timeout in seconds, also when expired; status"),
    Verb("Ticket.remove", ("uuid",), "cancel running requests, remove; true (also if unknown)"),
    Verb("Ticket.status", ("uuid",), "the ticket's status"),
    Verb("Ticket.list", (), "the status of every ticket"),
    Verb("Host.add_image_ticket", ("ticket",), "add or replace, as vdsm does; true"),
    Verb("Host.extend_image_ticket", ("uuid", "timeout"), "vdsm's Ticket.extend; true"),
    Verb("Host.get_image_ticket", ("uuid",), "vdsm's Ticket.status"),
    Verb("Host.remove_image_ticket", ("uuid",), "vdsm's Ticket.remove; true"),
    Verb("Service.info", (), "version, features, data URL, unix socket, uptime, counts"),
    Verb(
        "Events.subscribe",
        (),
        "notifications on this connection (see --subscribe)",
        optional=("events",),
    ),
)
EVENTS = (
    ("Ticket.progress", "uuid, transfer_id, transferred, size, active"),
    ("Ticket.inactive", "uuid, idle_time"),
    ("Ticket.expired", "uuid, transfer_id"),
    ("Ticket.removed", "uuid, transfer_id"),
    ("Volume.lost", "uuid, device, action"),
)


class UsageError(Exception):
    pass


class ProtocolError(Exception):
    """The service answered something that is not our reply."""


@dataclass(frozen=True)
class Call:
    socket: str
    method: str
    params: dict[str, Any]
    # Keep reading notifications after the reply (--subscribe).
    stream: bool = False


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pair(arg: str) -> tuple[str, Any]:
    name, sep, value = arg.partition("=")
    if not sep or not name:
        raise UsageError(f"expected name=value, got {arg!r}")
    return name, parse_value(value)


def parse_args(
    argv: list[str],
    stdin: TextIO,
    default_socket: str = DEFAULT_SOCKET,
) -> Call:
    args = _parser(default_socket).parse_args(argv)
    if args.subscribe is not None:
        if args.method or args.params or args.file:
            raise UsageError("--subscribe takes no METHOD, params or -f")
        params = {"events": args.subscribe} if args.subscribe else {}
        return Call(socket=args.socket, method="Events.subscribe", params=params, stream=True)
    if args.method is None:
        raise UsageError("METHOD is required (see --help)")
    params = _read_params(args.file, stdin) if args.file else {}
    given: set[str] = set()
    for arg in args.params:
        name, value = parse_pair(arg)
        if name in given:
            raise UsageError(f"parameter {name!r} given twice")
        given.add(name)
        params[name] = value
    return Call(socket=args.socket, method=args.method, params=params)


def request_line(call: Call, request_id: int = 1) -> bytes:
    request = {"jsonrpc": "2.0", "id": request_id, "method": call.method, "params": call.params}
    return json.dumps(request).encode("utf-8") + b"\n"


def send(call: Call, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
    """Send call and return the decoded response object."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(call.socket)
        sock.sendall(request_line(call))
        with sock.makefile("rb") as reader:
            reply = reader.readline(MAX_REPLY)
    if not reply.endswith(b"\n"):
        raise ProtocolError("the service closed the connection without a reply")
    try:
        response = json.loads(reply)
    except ValueError as e:
        raise ProtocolError(f"reply is not JSON: {e}") from None
    if not isinstance(response, dict) or response.get("id") != 1:
        raise ProtocolError(f"unexpected reply: {reply[:200]!r}")
    return response


def stream(call: Call, out: TextIO, err: TextIO, timeout: float = REPLY_TIMEOUT) -> int:
    """Send call, then print every notification as a JSON line until EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(call.socket)
        sock.sendall(request_line(call))
        with sock.makefile("rb") as reader:
            while line := reader.readline(MAX_REPLY):
                if not line.endswith(b"\n"):
                    raise ProtocolError("notification too long or cut short")
                try:
                    message = json.loads(line)
                except ValueError as e:
                    raise ProtocolError(f"not JSON: {e}") from None
                if not isinstance(message, dict):
                    raise ProtocolError(f"unexpected message: {line[:200]!r}")
                if "id" not in message:
                    # Notifications may come before the reply.
                    print(json.dumps(message), file=out, flush=True)
                elif "error" in message:
                    return report(message, out, err)
                else:
                    sock.settimeout(None)  # subscribed: wait for events forever
    raise ProtocolError("the service closed the connection")


def report(response: dict[str, Any], out: TextIO, err: TextIO) -> int:
    if "error" in response:
        error = response["error"]
        if not isinstance(error, dict):
            raise ProtocolError(f"malformed error: {error!r}")
        print(f"error {error.get('code')}: {error.get('message')}", file=err)
        if "data" in error:
            print(json.dumps(error["data"], indent=4), file=err)
        return EXIT_ERROR
    if "result" not in response:
        raise ProtocolError("reply has neither result nor error")
    print(json.dumps(response["result"], indent=4), file=out)
    return EXIT_OK


def main(
    argv: list[str],
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    default_socket: str = DEFAULT_SOCKET,
) -> int:
    """Run ``call`` with argv, the arguments after the ``call`` word."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        call = parse_args(argv, stdin, default_socket)
    except UsageError as e:
        print(f"vdsm-imageio call: {e}", file=stderr)
        return EXIT_USAGE
    except SystemExit as e:  # argparse printed the usage
        return EXIT_USAGE if e.code else EXIT_OK
    try:
        if call.stream:
            return stream(call, stdout, stderr)
        return report(send(call), stdout, stderr)
    except KeyboardInterrupt:
        return EXIT_OK  # how a subscriber stops listening
    except (OSError, ProtocolError) as e:
        print(f"vdsm-imageio call: cannot call {call.method} on {call.socket}: {e}", file=stderr)
        return EXIT_UNREACHABLE


def _parser(default_socket: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vdsm-imageio call",
        description="Call a method of the vdsm-imageio control channel.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_verbs_help(),
    )
    parser.add_argument(
        "--socket", default=default_socket, help="control socket (default %(default)s)"
    )
    parser.add_argument(
        "-f",
        dest="file",
        metavar="FILE",
        help="read a JSON object of params from FILE, or stdin for '-'",
    )
    parser.add_argument(
        "--subscribe",
        nargs="*",
        metavar="EVENT",
        help="print notifications (all, or the EVENTs named) as JSON lines until ^C",
    )
    parser.add_argument("method", metavar="METHOD", nargs="?", help="e.g. Ticket.status")
    parser.add_argument(
        "params",
        metavar="name=value",
        nargs="*",
        help="a param; a value that parses as JSON is sent as JSON",
    )
    return parser


def _verbs_help() -> str:
    width = max(len(v.usage()) for v in VERBS) + 2
    lines = ["methods (params as name=value):"]
    lines += [f"  {v.usage():<{width}}{v.summary}" for v in VERBS]
    lines += ["", "events (--subscribe EVENT ...; params):"]
    lines += [f"  {name:<{width}}{fields}" for name, fields in EVENTS]
    return "\n".join(lines)


def _read_params(path: str, stdin: TextIO) -> dict[str, Any]:
    try:
        if path == "-":
            text = stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    try:
        params = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{path} is not JSON: {e}") from None
    if not isinstance(params, dict):
        raise UsageError(f"{path} must hold a JSON object of params")
    return params
