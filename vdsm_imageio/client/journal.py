"""The journal of a transfer: which byte ranges are safely done.

``--resume`` continues an interrupted transfer from its journal and sends
only what is missing. A range goes into the journal only once it is
durable where it goes: an upload's ranges after a flush on the server
covering them, a download's after a flush of the local image. So a client
killed at any moment leaves a journal that claims nothing that is not
stored.

Format: text, one JSON object per line. The first line names the
transfer (``identity``: the source, the disk, a digest of the URL, never
the URL itself, which holds the ticket); each later line is one commit,
``{"done": [[start, end], ...]}``, written whole and fsynced. A line cut
off by a crash (no newline at its end) is ignored; anything else that is
not a journal is an error, never a guess.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import ResumeMismatch, UsageError
from .ranges import Ranges

log = logging.getLogger(__name__)

VERSION = 1
MAGIC = "vdsm-imageio-journal"

Identity = Mapping[str, str | int | bool | None]


class JournalError(ValueError):
    pass


# The pure core.


def header(identity: Identity) -> str:
    return json.dumps({MAGIC: VERSION, "identity": dict(identity)}, sort_keys=True) + "\n"


def commit_line(ranges: Iterable[tuple[int, int]]) -> str:
    return json.dumps({"done": [[s, e] for s, e in ranges]}) + "\n"


def parse(text: str) -> tuple[dict[str, object], Ranges]:
    """The identity and the done ranges of a journal's text."""
    lines = text.split("\n")
    # The last element is "" after a final newline, or a line cut short.
    complete = lines[:-1]
    if not complete:
        raise JournalError("no header")
    try:
        head = json.loads(complete[0])
    except ValueError:
        raise JournalError("the first line is not JSON") from None
    if not isinstance(head, dict) or head.get(MAGIC) != VERSION:
        raise JournalError(f"not a version {VERSION} journal")
    identity = head.get("identity")
    if not isinstance(identity, dict):
        raise JournalError("no identity")
    done = Ranges()
    for n, line in enumerate(complete[1:], start=2):
        for start, end in _ranges(line, n):
            done.add(start, end)
    return identity, done


def _ranges(line: str, n: int) -> list[tuple[int, int]]:
    try:
        doc = json.loads(line)
        pairs = doc["done"]
        out = []
        for start, end in pairs:
            if not (_is_int(start) and _is_int(end) and 0 <= start <= end):
                raise ValueError(f"bad range {start!r}, {end!r}")
            out.append((start, end))
        return out
    except (ValueError, KeyError, TypeError) as e:
        raise JournalError(f"line {n}: {e}") from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def first_difference(recorded: Mapping[str, object], current: Identity) -> str | None:
    for key in sorted(set(recorded) | set(current)):
        if recorded.get(key) != current.get(key):
            return key
    return None


def url_digest(url: str) -> str:
    """Names the transfer without keeping its secret."""
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def upload_path(state_dir: Path, source: str, url: str) -> Path:
    key = hashlib.sha256(f"{os.path.realpath(source)}\0{url}".encode()).hexdigest()[:16]
    return state_dir / f"upload-{key}.journal"


def download_path(target: str) -> Path:
    return Path(f"{target}.journal")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "vdsm-imageio"


# The file.


class Journal:
    """An open journal; ``commit`` may be called from any thread."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._lock = threading.Lock()

    @classmethod
    def create(cls, path: Path, identity: Identity) -> Journal:
        """A new, empty journal, replacing any other at path."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
            try:
                _write(fd, header(identity))
                os.rename(tmp, path)
                _sync_dir(path.parent)
            except BaseException:
                os.close(fd)
                raise
        except OSError as e:
            raise UsageError(reason=f"cannot write the journal {path}: {e.strerror}") from None
        log.info("JOURNAL new path=%s", path)
        return cls(path, fd)

    @classmethod
    def resume(cls, path: Path, identity: Identity) -> tuple[Journal, Ranges]:
        """The journal at path and what it says is done; it must be this transfer's."""
        try:
            text = path.read_text()
        except OSError as e:
            raise UsageError(reason=f"cannot read the journal {path}: {e.strerror}") from None
        try:
            recorded, done = parse(text)
        except JournalError as e:
            raise UsageError(reason=f"{path} is not a usable journal: {e}") from None
        field = first_difference(recorded, identity)
        if field is not None:
            raise ResumeMismatch(journal=path, field=field)
        try:
            if not text.endswith("\n"):
                # Drop the line a crash cut short, so the next one starts clean.
                with open(path, "r+") as f:
                    f.truncate(text.rfind("\n") + 1)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise UsageError(reason=f"cannot write the journal {path}: {e.strerror}") from None
        log.info("JOURNAL resume path=%s done=%d", path, done.total)
        return cls(path, fd), done

    def commit(self, ranges: Iterable[tuple[int, int]]) -> None:
        line = commit_line(ranges)
        with self._lock:
            if self._fd < 0:
                raise ValueError("commit to a closed journal")
            _write(self._fd, line)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def remove(self) -> None:
        """The transfer is complete: nothing to resume."""
        self.close()
        self.path.unlink(missing_ok=True)
        log.info("JOURNAL removed path=%s", self.path)


def _write(fd: int, text: str) -> None:
    data = text.encode()
    while data:
        n = os.write(fd, data)
        data = data[n:]
    os.fsync(fd)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
