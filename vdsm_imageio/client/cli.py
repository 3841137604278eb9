"""``vdsm-imageio upload|download|checksum``: the command line of the client.

Every failure ends as one line on stderr (``vdsm-imageio upload: ...``)
and an exit code from ``errors.EXIT_CODES``, which ``--help`` lists.
Ctrl-C and SIGTERM stop the transfer: connections are closed, qemu-nbd is
stopped, the journal keeps what is stored, and the exit code is 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO

from . import local
from .errors import FAILED, ClientError, Interrupted, UsageError, exit_code, exit_code_help
from .progress import Bar, JsonLines, Progress, Quiet
from .session import DEFAULT_BUFFER_SIZE, DEFAULT_WORKERS, Settings

log = logging.getLogger(__name__)

COMMANDS = ("upload", "download", "checksum")
# vdsm_imageio.checksum's defaults, without importing it (and hashlib's
# OpenSSL) for every command.
CHECKSUM_ALGORITHM = "blake2b"
CHECKSUM_BLOCK_SIZE = 4 * 1024**2
MiB = 1024**2
MAX_BUFFER_SIZE = 32 * MiB
MAX_WORKERS = 16
_UNITS = {"": 1, "K": 1024, "M": MiB, "G": 1024**3}


def main(command: str, argv: list[str]) -> int:
    parser = build_parser(command)
    ns = parser.parse_args(argv)
    name = f"vdsm-imageio {command}"
    _setup_logging(ns.verbose, name)
    try:
        with _signals_interrupt():
            if command == "upload":
                return _upload(ns)
            if command == "download":
                return _download(ns)
            return _checksum(ns)
    except KeyboardInterrupt:
        error: ClientError = Interrupted(how=_resume_hint(command))
    except ClientError as e:
        error = e
    except Exception as e:
        # A bug of ours: one line, the traceback with -v.
        log.debug("Unexpected error", exc_info=True)
        print(
            f"{name}: internal error: {type(e).__name__}: {e} (run with -v for details)",
            file=sys.stderr,
            flush=True,
        )
        return FAILED
    print(f"{name}: {error}", file=sys.stderr, flush=True)
    return exit_code(error)


def _resume_hint(command: str) -> str:
    if command == "checksum":
        return "nothing was changed"
    return "the journal keeps what was stored; run the same command with --resume to continue"


# The commands.


def _upload(ns: argparse.Namespace) -> int:
    from .upload import upload

    settings = _settings(ns, "upload")
    result = upload(
        ns.file,
        ns.url,
        settings,
        fmt=ns.format,
        disk_format=ns.disk_format,
        target_is_zero=ns.target_is_zero,
    )
    _summary(ns, f"uploaded {ns.file}: {result.size} bytes, {result.sent} sent", result.checksum)
    return 0


def _download(ns: argparse.Namespace) -> int:
    from .download import download

    settings = _settings(ns, "download")
    result = download(
        ns.url,
        ns.file,
        settings,
        fmt=ns.format,
        backing=ns.backing_file,
        incremental=ns.incremental,
        overwrite=ns.overwrite,
    )
    _summary(
        ns,
        f"downloaded {ns.file}: {result.size} bytes, {result.received} received",
        result.checksum,
    )
    return 0


def _checksum(ns: argparse.Namespace) -> int:
    from . import checksum
    from .http import parse_url
    from .images import ImageConnection
    from .session import Session

    checksum.check_algorithm(ns.algorithm)
    if ns.target.startswith(("https://", "http://")):
        settings = Settings(
            cafile=ns.cafile, insecure=ns.insecure, unix_socket=not ns.no_unix_socket
        )
        parse_url(ns.target)
        with Session(ns.target, settings) as session, ImageConnection(session.endpoint) as conn:
            doc = conn.checksum(ns.algorithm, ns.block_size)
    else:
        info = local.inspect(ns.target)
        with local.LocalImage(ns.target, ns.format or info.format, writable=False) as image:
            digest = checksum.compute(
                image,
                algorithm=ns.algorithm,
                block_size=ns.block_size,
                workers=DEFAULT_WORKERS,
            )
        doc = {"algorithm": ns.algorithm, "block_size": ns.block_size, "checksum": digest}
    print(json.dumps(doc))
    return 0


def _settings(ns: argparse.Namespace, what: str) -> Settings:
    return Settings(
        cafile=ns.cafile,
        insecure=ns.insecure,
        workers=ns.workers,
        buffer_size=ns.buffer_size,
        unix_socket=not ns.no_unix_socket,
        verify=ns.verify,
        resume=ns.resume,
        state_dir=ns.state_dir,
        progress=_progress(ns, what),
    )


def _progress(ns: argparse.Namespace, what: str) -> Progress:
    if ns.progress_fd is not None:
        try:
            out: IO[str] = os.fdopen(ns.progress_fd, "w", closefd=False)
        except OSError as e:
            raise UsageError(reason=f"--progress-fd {ns.progress_fd}: {e.strerror}") from None
        return JsonLines(out)
    mode = ns.progress
    if mode == "auto":
        mode = "none" if ns.quiet or not sys.stderr.isatty() else "bar"
    if mode == "json":
        return JsonLines(sys.stdout)
    if mode == "bar":
        return Bar(sys.stderr, what)
    return Quiet()


def _summary(ns: argparse.Namespace, text: str, digest: str | None) -> None:
    if ns.quiet or ns.progress == "json":
        return
    if digest is not None:
        text += f", verified {CHECKSUM_ALGORITHM} {digest}"
    print(text, file=sys.stderr)


# Parsing.


def build_parser(command: str) -> argparse.ArgumentParser:
    description = {
        "upload": "Upload FILE (raw or qcow2, sent as guest data) to the disk of a transfer URL.",
        "download": "Download the disk of a transfer URL to FILE (raw, or qcow2 with --format).",
        "checksum": "Print the block checksum of FILE (guest data) or of a transfer URL's disk.",
    }[command]
    p = argparse.ArgumentParser(
        prog=f"vdsm-imageio {command}",
        description=description,
        epilog=exit_code_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if command == "upload":
        p.add_argument("file", metavar="FILE")
        p.add_argument("url", metavar="TRANSFER_URL")
    elif command == "download":
        p.add_argument("url", metavar="TRANSFER_URL")
        p.add_argument("file", metavar="FILE")
    else:
        p.add_argument("target", metavar="FILE|TRANSFER_URL")
    p.add_argument("--cafile", metavar="CA", help="CA certificate that signed the server's")
    p.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    p.add_argument(
        "--no-unix-socket",
        action="store_true",
        help="stay on TCP even on the daemon's host (where its unix socket is faster)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens to stderr")
    if command == "checksum":
        p.add_argument("--format", choices=local.FORMATS, help="FILE's format (default: detected)")
        p.add_argument("--algorithm", default=CHECKSUM_ALGORITHM, help="hashlib algorithm")
        p.add_argument("--block-size", type=size_arg, default=CHECKSUM_BLOCK_SIZE, metavar="SIZE")
        return p
    _transfer_options(p)
    if command == "upload":
        p.add_argument("--format", choices=local.FORMATS, help="FILE's format (default: detected)")
        p.add_argument(
            "--disk-format",
            choices=local.FORMATS,
            default="raw",
            help="qcow2: send FILE's own bytes to a qcow2 disk (default raw: guest data)",
        )
        p.add_argument(
            "--target-is-zero",
            action="store_true",
            help="the disk reads as zeros (new): skip zero ranges instead of zeroing them",
        )
        p.add_argument(
            "--state-dir",
            type=Path,
            metavar="DIR",
            help="where upload journals live (default $XDG_STATE_HOME/vdsm-imageio)",
        )
    else:
        p.add_argument("--format", choices=local.FORMATS, default="raw", help="FILE's format")
        p.add_argument(
            "--backing-file", metavar="BACKING", help="qcow2 FILE on top of BACKING (incremental)"
        )
        p.add_argument(
            "--incremental", action="store_true", help="only the dirty extents (needs qcow2)"
        )
        p.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
        p.set_defaults(state_dir=None)
    return p


def _transfer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        choices=range(1, MAX_WORKERS + 1),
        metavar="N",
        help=f"connections at once (default {DEFAULT_WORKERS}, never more than the server allows)",
    )
    p.add_argument(
        "--buffer-size",
        type=size_arg,
        default=DEFAULT_BUFFER_SIZE,
        metavar="SIZE",
        help="I/O buffer per worker, e.g. 4M (default)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted transfer from its journal",
    )
    verify = p.add_mutually_exclusive_group()
    verify.add_argument(
        "--verify",
        action="store_true",
        default=None,
        help="compare checksums after the transfer (default: when the server computes them)",
    )
    verify.add_argument("--no-verify", dest="verify", action="store_false")
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "json", "none"),
        default="auto",
        help="a bar (on a terminal), JSON lines on stdout, or nothing",
    )
    p.add_argument(
        "--progress-fd", type=int, metavar="FD", help="JSON progress lines to this descriptor"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def size_arg(text: str) -> int:
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    number = t[: len(t) - len(unit)]
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"expected a size like 4M, got {text!r}")
    value = int(number) * _UNITS[unit]
    if not 4096 <= value <= MAX_BUFFER_SIZE:
        raise argparse.ArgumentTypeError(f"expected 4K to {MAX_BUFFER_SIZE // MiB}M, got {text!r}")
    return value


# Process plumbing.


def _setup_logging(verbose: bool, name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(f"{name}: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        # The backends' warnings speak of a server's storage ("without
        # direct I/O"); for a local file they are noise. Our errors say
        # what failed.
        for name in ("vdsm_imageio.backends", "storage"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM stops a transfer as Ctrl-C does."""

    def interrupt(signo: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous: Callable[[int, FrameType | None], object] | int | None = signal.signal(
        signal.SIGTERM, interrupt
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
