"""The A B A B loop: every case runs alternately against its daemons
(both, or A B C for a case with a third side).

Before each run the page cache is dropped (for cases that read or write
images) and the daemon's CPU time is read before and after ``run`` only,
so ticket setup is not charged to the transfer. A run that fails is
recorded as failed with its reason; it is never replaced by a number.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procs
from .cases import Case
from .daemons import BEFORE, Daemon

log = logging.getLogger(__name__)

GiB = 1024**3


@dataclass
class Side:
    """One daemon's results for one case."""

    values: dict[str, list[float]] = field(default_factory=dict)
    cpu_per_gib: list[float] = field(default_factory=list)
    status: str = "ok"

    def median(self, metric: str) -> float | None:
        vals = self.values.get(metric)
        return statistics.median(vals) if vals else None

    def cpu(self) -> float | None:
        return statistics.median(self.cpu_per_gib) if self.cpu_per_gib else None


@dataclass
class CaseResult:
    case: Case
    sides: dict[str, Side]
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.case.id,
            "transport": self.case.transport,
            "seconds": round(self.seconds, 1),
            "metrics": [],
        }
        for i, m in enumerate(self.case.metrics):
            row: dict[str, Any] = {"name": m.name, "unit": m.unit, "higher_better": m.higher_better}
            for name, side in self.sides.items():
                entry: dict[str, Any] = {
                    "status": side.status,
                    "median": side.median(m.name),
                    "runs": side.values.get(m.name, []),
                }
                if i == 0 and self.case.moved:
                    entry["cpu_s_per_gib"] = side.cpu()
                    entry["cpu_runs"] = side.cpu_per_gib
                row[name] = entry
            row["ratio"] = ratio(self, m.name, "ours", "theirs")
            if i == 0 and self.case.moved:
                co, ct = self.sides["ours"].cpu(), self.sides["theirs"].cpu()
                row["cpu_ratio"] = co / ct if co is not None and ct else None
            out["metrics"].append(row)
        return out


def ratio(result: CaseResult, metric: str, a: str, b: str) -> float | None:
    x, y = result.sides[a].median(metric), result.sides[b].median(metric)
    if x is None or y is None or y == 0:
        return None
    return x / y


def measure(
    case: Case, daemons: list[Daemon], runs: int, cache: procs.PageCache, files: list[Path]
) -> CaseResult:
    started = time.monotonic()
    # An earlier checkout (BEFORE) takes its turn in every case.
    daemons = [d for d in daemons if d.name in case.sides or d.name == BEFORE]
    sides = {d.name: Side() for d in daemons}
    for d in daemons:
        reason = case.unsupported(d)
        if reason:
            sides[d.name].status = reason
    for i in range(runs):
        for d in daemons:
            side = sides[d.name]
            if side.status != "ok":
                continue
            log.info("RUN case=%s daemon=%s run=%d/%d", case.id, d.name, i + 1, runs)
            try:
                _run_once(case, d, side, cache, files)
            except Exception as e:
                log.error("FAILED case=%s daemon=%s reason=%s", case.id, d.name, e)
                side.status = f"failed: {str(e)[:120]}"
                _revive(d)
    return CaseResult(case, sides, time.monotonic() - started)


def _run_once(case: Case, d: Daemon, side: Side, cache: procs.PageCache, files: list[Path]) -> None:
    tickets = case.prepare(d)
    try:
        if case.drop_cache:
            cache.drop(files)
        cpu0 = procs.cpu_seconds(d.pid)
        values = case.run(d, tickets)
        if case.moved:
            side.cpu_per_gib.append((procs.cpu_seconds(d.pid) - cpu0) / (case.moved / GiB))
    finally:
        case.cleanup(d, tickets)
    for name, value in values.items():
        side.values.setdefault(name, []).append(value)


def _revive(d: Daemon) -> None:
    """A daemon that died in a failed run is restarted for the next cases."""
    if d.proc is not None and d.proc.poll() is None:
        return
    log.warning("RESTART daemon=%s after it exited", d.name)
    d.stop()
    d.start()
