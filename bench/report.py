"""The table, the targets of issues 5 and 11, and the JSON written next to them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import CaseResult, ratio


@dataclass(frozen=True)
class Target:
    name: str
    want: str
    got: float | None
    met: bool | None
    # A figure printed beside the targets to explain them, not a target.
    info: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "want": self.want,
            "got": self.got,
            "met": self.met,
            "info": self.info,
        }


def _fmt(value: float | None, width: int, digits: int = 1) -> str:
    if value is None:
        return "-".rjust(width)
    if abs(value) >= 100:
        digits = 0
    elif abs(value) < 1:
        digits = 3
    return f"{value:{width}.{digits}f}"


def _ratio(value: float | None, width: int) -> str:
    return ("-" if value is None else f"{value:.2f}x").rjust(width + 1)


def table(results: list[CaseResult]) -> tuple[list[str], list[str]]:
    """Lines of the table, and footnotes for rows that did not run."""
    head = (
        f"{'case':<54} {'unit':<6} {'ours':>9} {'theirs':>9} {'ratio':>7}"
        f"  {'CPU s/GiB ours':>14} {'theirs':>7} {'ratio':>6}"
    )
    lines = [head, "-" * len(head)]
    notes: list[str] = []
    for r in results:
        for i, m in enumerate(r.case.metrics):
            cells = []
            for side_name in ("ours", "theirs"):
                side = r.sides[side_name]
                if side.status != "ok":
                    cells.append(("n/a" if side.status.startswith("n/a") else "FAILED").rjust(9))
                    note = f"{m.name} [{side_name}]: {side.status}"
                    if i == 0 and note not in notes:
                        notes.append(note)
                else:
                    cells.append(_fmt(side.median(m.name), 9))
            rat = ratio(r, m.name, "ours", "theirs")
            line = f"{m.name:<54.54} {m.unit:<6} {cells[0]} {cells[1]} {_ratio(rat, 6)}"
            if i == 0 and r.case.moved:
                co, ct = r.sides["ours"].cpu(), r.sides["theirs"].cpu()
                cr = co / ct if co is not None and ct else None
                line += f"  {_fmt(co, 14, 2)} {_fmt(ct, 7, 2)} {_ratio(cr, 6)}"
            lines.append(line)
    return lines, notes


def targets(results: list[CaseResult], physical: dict[str, float]) -> list[Target]:
    out: list[Target] = []

    def check(name: str, want: str, got: float | None, ok: Callable[[float], bool]) -> None:
        out.append(Target(name, want, got, None if got is None else ok(got)))

    for r in results:
        cid, m0 = r.case.id, r.case.metrics[0].name
        rat = ratio(r, m0, "ours", "theirs")
        ours = r.sides["ours"].median(m0)
        if cid.startswith("client-"):
            _client_targets(r, check)
            continue
        if cid.startswith("download-unix") or cid == "nbd-download-unix-curl":
            check(f"{m0}: ours/theirs", ">= 1.5", rat, lambda v: v >= 1.5)
        elif cid.startswith("download-tls"):
            check(f"{m0}: ours/theirs", ">= 1.3", rat, lambda v: v >= 1.3)
            tls = physical.get("python TLS loopback")
            check(
                f"{m0}: ours/Python TLS loopback",
                ">= 0.8",
                ours / tls if ours is not None and tls else None,
                lambda v: v >= 0.8,
            )
        elif "upload" in cid:
            check(f"{m0}: ours/theirs", ">= 1.0", rat, lambda v: v >= 1.0)
            dd = physical.get("dd O_DIRECT write (fsync)")
            check(
                f"{m0}: ours/dd write",
                ">= 0.9",
                ours / dd if ours is not None and dd else None,
                lambda v: v >= 0.9,
            )
            sink = physical.get("curl upload to a discarding unix server")
            if "curl" in cid and sink:
                # Not an issue target: how close we are to the client's own limit.
                out.append(
                    Target(
                        f"{m0}: ours/curl into a discarding server",
                        "",
                        ours / sink if ours is not None else None,
                        None,
                        info=True,
                    )
                )
        elif cid == "sparse-download-client":
            check(f"{m0}: ours/theirs", ">= 3.0", rat, lambda v: v >= 3.0)
        elif cid == "random-4k-reads":
            check(f"{m0}: ours/theirs", ">= 1.5", rat, lambda v: v >= 1.5)
        elif cid == "checksum-sparse":
            check(f"{m0}: ours/theirs", ">= 2.0", rat, lambda v: v >= 2.0)
        elif cid == "checksum-full":
            check(f"{m0}: ours/theirs", ">= 1.3", rat, lambda v: v >= 1.3)
        elif cid == "peak-rss":
            check(m0, "<= 256 MiB", ours, lambda v: v <= 256)
        elif cid == "lifecycle":
            check(m0, "<= 1 s", ours, lambda v: v <= 1.0)
        if cid == "download-unix-curl":
            m1 = r.case.metrics[1].name
            check(f"{m1} (ours)", "< 5 %", r.sides["ours"].median(m1), lambda v: v < 5)
        if r.case.moved and r.case.transport in ("unix", "tls"):
            co, ct = r.sides["ours"].cpu(), r.sides["theirs"].cpu()
            if r.case.transport == "unix":
                check(
                    f"{m0}: CPU/GiB ours/theirs",
                    "<= 0.7",
                    co / ct if co is not None and ct else None,
                    lambda v: v <= 0.7,
                )
            else:
                check(
                    f"{m0}: CPU/GiB ours/theirs",
                    "<= 1.0",
                    co / ct if co is not None and ct else None,
                    lambda v: v <= 1.0,
                )
    return out


def _client_targets(r: CaseResult, check: Callable[..., None]) -> None:
    """Issue 14: >= 1.5x on full images, >= 2x on sparse, no more client CPU."""
    m0 = r.case.metrics[0].name
    want = 2.0 if "sparse" in r.case.id else 1.5
    check(f"{m0}: ours/theirs", f">= {want:g}", ratio(r, m0, "ours", "theirs"), lambda v: v >= want)
    co, ct = r.sides["ours"].cpu(), r.sides["theirs"].cpu()
    check(
        f"{m0}: client CPU/GiB ours/theirs",
        "<= 1.0",
        co / ct if co is not None and ct else None,
        lambda v: v <= 1.0,
    )


def target_lines(found: list[Target]) -> list[str]:
    lines = []
    for t in found:
        state = "info" if t.info else {True: "met", False: "MISSED", None: "not measured"}[t.met]
        want = f" {t.want}" if t.want else ""
        lines.append(f"  {state:<12} {t.name}{want}: {_fmt(t.got, 0, 2).strip()}")
    return lines


def write_json(
    path: Path,
    meta: dict[str, Any],
    physical: dict[str, float],
    results: list[CaseResult],
    found: list[Target],
) -> None:
    doc = {
        **meta,
        "physical": physical,
        "cases": [r.to_json() for r in results],
        "targets": [t.to_json() for t in found],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
