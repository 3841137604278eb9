"""The tables, the targets of issues 5 and 11, the nbdwire verdict, and the
JSON written next to them (schema in bench/README.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cases import NBDWIRE_CASE
from .daemons import LIBNBD_ONLY
from .harness import CaseResult, ratio

# Bumped when a field changes meaning or goes away (bench/README.md).
SCHEMA = 1
# DESIGN section 3, issue 12: the hand-written NBD reader stays only if it
# gains at least 10% throughput, or saves at least 10% CPU per GiB.
NBDWIRE_MIN_GAIN = 1.10
NBDWIRE_MAX_CPU = 0.90
REFERENCE = ("ours", "theirs")


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


def _cpu_ratio(result: CaseResult, a: str, b: str) -> float | None:
    ca, cb = result.sides[a].cpu(), result.sides[b].cpu()
    return ca / cb if ca is not None and cb else None


def extra_sides(result: CaseResult) -> list[str]:
    """Daemons of a case besides ours and the reference (LIBNBD_ONLY)."""
    return [name for name in result.sides if name not in REFERENCE]


def table(results: list[CaseResult]) -> tuple[list[str], list[str]]:
    """Lines of the table, and footnotes for rows that did not run. A third
    daemon gets a row of its own, "[name]", in the "ours" column."""
    head = (
        f"{'case':<54} {'unit':<6} {'ours':>9} {'theirs':>9} {'ratio':>7}"
        f"  {'CPU s/GiB ours':>14} {'theirs':>7} {'ratio':>6}"
    )
    lines = [head, "-" * len(head)]
    notes: list[str] = []
    for r in results:
        for i, m in enumerate(r.case.metrics):
            rows = [("ours", m.name)]
            if i == 0:
                rows += [(extra, f"{m.name} [{extra}]") for extra in extra_sides(r)]
            for mine, label in rows:
                cells = []
                for side_name in (mine, "theirs"):
                    side = r.sides[side_name]
                    if side.status != "ok":
                        cells.append(
                            ("n/a" if side.status.startswith("n/a") else "FAILED").rjust(9)
                        )
                        note = f"{m.name} [{side_name}]: {side.status}"
                        if i == 0 and note not in notes:
                            notes.append(note)
                    else:
                        cells.append(_fmt(side.median(m.name), 9))
                rat = ratio(r, m.name, mine, "theirs")
                line = f"{label:<54.54} {m.unit:<6} {cells[0]} {cells[1]} {_ratio(rat, 6)}"
                if i == 0 and r.case.moved:
                    co, ct = r.sides[mine].cpu(), r.sides["theirs"].cpu()
                    cr = _cpu_ratio(r, mine, "theirs")
                    line += f"  {_fmt(co, 14, 2)} {_fmt(ct, 7, 2)} {_ratio(cr, 6)}"
                lines.append(line)
    return lines, notes


def profiles_table(runs: list[tuple[str, list[CaseResult]]]) -> list[str]:
    """Every row on every profile side by side: ours, ours/theirs and CPU
    per GiB ours/theirs ("[name]" rows: that daemon in place of ours)."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    units: dict[tuple[str, str], str] = {}
    for profile, results in runs:
        for r in results:
            for i, m in enumerate(r.case.metrics):
                rows = [("ours", m.name)]
                if i == 0:
                    rows += [(extra, f"{m.name} [{extra}]") for extra in extra_sides(r)]
                for mine, label in rows:
                    key = (r.case.id, label)
                    units[key] = m.unit
                    value = r.sides[mine].median(m.name) if r.sides[mine].status == "ok" else None
                    cpu = _cpu_ratio(r, mine, "theirs") if i == 0 and r.case.moved else None
                    cells.setdefault(key, {})[profile] = (
                        f"{_fmt(value, 9)} {_ratio(ratio(r, m.name, mine, 'theirs'), 6)}"
                        f" {_ratio(cpu, 6)}"
                    )
    names = [profile for profile, _ in runs]
    head = f"{'case':<54} {'unit':<6}" + "".join(
        f" | {name + ': ours':>9} {'ratio':>7} {'CPU':>7}" for name in names
    )
    lines = [head, "-" * len(head)]
    empty = f"{'-':>9} {'-':>7} {'-':>7}"
    for key, per_profile in cells.items():
        line = f"{key[1]:<54.54} {units[key]:<6}"
        line += "".join(f" | {per_profile.get(name, empty)}" for name in names)
        lines.append(line)
    return lines


@dataclass(frozen=True)
class NbdwireVerdict:
    """The same nbd download with nbdwire (ours) and with libnbd alone."""

    throughput: float | None
    cpu: float | None

    @property
    def keep(self) -> bool | None:
        if self.throughput is None or self.cpu is None:
            return None
        return self.throughput >= NBDWIRE_MIN_GAIN or self.cpu <= NBDWIRE_MAX_CPU

    def line(self) -> str:
        verdict = {
            True: "keep nbdwire (gains at least 10%)",
            False: "remove nbdwire, keep libnbd alone (gains under 10%: DESIGN section 3)",
            None: "not measured",
        }[self.keep]
        thr = "-" if self.throughput is None else f"{self.throughput:.2f}x"
        cpu = "-" if self.cpu is None else f"{self.cpu:.2f}x"
        return (
            f"nbdwire vs libnbd alone ({NBDWIRE_CASE}): throughput {thr}, CPU/GiB {cpu}: {verdict}"
        )

    def to_json(self) -> dict[str, Any]:
        return {"throughput_ratio": self.throughput, "cpu_ratio": self.cpu, "keep": self.keep}


def nbdwire(results: list[CaseResult]) -> NbdwireVerdict | None:
    for r in results:
        if r.case.id == NBDWIRE_CASE and LIBNBD_ONLY in r.sides:
            m0 = r.case.metrics[0].name
            return NbdwireVerdict(
                ratio(r, m0, "ours", LIBNBD_ONLY), _cpu_ratio(r, "ours", LIBNBD_ONLY)
            )
    return None


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


def document(
    meta: dict[str, Any],
    physical: dict[str, float],
    results: list[CaseResult],
    found: list[Target],
) -> dict[str, Any]:
    verdict = nbdwire(results)
    return {
        "schema": SCHEMA,
        **meta,
        "physical": physical,
        "cases": [r.to_json() for r in results],
        "targets": [t.to_json() for t in found],
        "nbdwire": verdict.to_json() if verdict else None,
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
