"""Two bench results of one profile side by side: what changed.

    python -m bench.compare OLD.json NEW.json

For every row in both files: our median before and after and their
ratio, our ratio to ovirt-imageio before and after (the figure that
survives a busier machine best), and our CPU seconds per GiB after over
before. The physical references are compared too: when they moved, the
machine changed, not only the code. Files of different profiles, image
sizes or run counts are compared anyway, under a warning.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFERENCE = "theirs"


@dataclass(frozen=True)
class Row:
    label: str
    unit: str
    higher_better: bool
    old: float | None
    new: float | None
    old_ratio: float | None
    new_ratio: float | None
    old_cpu: float | None
    new_cpu: float | None

    @property
    def change(self) -> float | None:
        return _div(self.new, self.old)

    @property
    def cpu_change(self) -> float | None:
        return _div(self.new_cpu, self.old_cpu)


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def rows(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(case id, row label) -> the row's figures; a third daemon's figures
    make a row "[name]" of their own, as in the bench's table."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for case in doc.get("cases", []):
        for metric in case["metrics"]:
            theirs = metric.get(REFERENCE, {})
            for side, entry in metric.items():
                if not isinstance(entry, dict) or "median" not in entry or side == REFERENCE:
                    continue
                label = metric["name"] if side == "ours" else f"{metric['name']} [{side}]"
                out[(case["id"], label)] = {
                    "unit": metric["unit"],
                    "higher_better": metric.get("higher_better", True),
                    "median": entry["median"] if entry.get("status") == "ok" else None,
                    "ratio": _div(entry["median"], theirs.get("median")),
                    "cpu": entry.get("cpu_s_per_gib"),
                }
    return out


def compare(old: dict[str, Any], new: dict[str, Any]) -> Iterator[Row]:
    before, after = rows(old), rows(new)
    for key, a in after.items():
        b = before.get(key)
        if b is None:
            continue
        yield Row(
            label=key[1],
            unit=a["unit"],
            higher_better=a["higher_better"],
            old=b["median"],
            new=a["median"],
            old_ratio=b["ratio"],
            new_ratio=a["ratio"],
            old_cpu=b["cpu"],
            new_cpu=a["cpu"],
        )


# What makes two runs alike: (name, section or None for the top level, key).
ALIKE = (
    ("profile", None, "profile"),
    ("image size", "config", "size"),
    ("runs", "config", "runs"),
    ("tuned buffer", "config", "tuned_buffer_size"),
)


def warnings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for what, section, key in ALIKE:
        a, b = (doc.get(section, {}) if section else doc for doc in (old, new))
        if a.get(key) != b.get(key):
            out.append(f"{what} differs: {a.get(key)} -> {b.get(key)}")
    return out


def _num(value: float | None, width: int) -> str:
    if value is None:
        return "-".rjust(width)
    digits = 0 if abs(value) >= 100 else 3 if abs(value) < 1 else 1
    return f"{value:{width}.{digits}f}"


def _x(value: float | None, width: int) -> str:
    return ("-" if value is None else f"{value:.2f}x").rjust(width)


def lines(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = [f"old: {_describe(old)}", f"new: {_describe(new)}"]
    out += [f"WARNING: {w}" for w in warnings(old, new)]
    head = (
        f"{'case':<54} {'unit':<7} {'old':>9} {'new':>9} {'new/old':>8}"
        f"  {'ours/theirs old':>15} {'new':>6}  {'CPU/GiB new/old':>15}"
    )
    out += ["", head, "-" * len(head)]
    for r in compare(old, new):
        unit = r.unit if r.higher_better else r.unit + "*"
        out.append(
            f"{r.label:<54.54} {unit:<7} {_num(r.old, 9)} {_num(r.new, 9)} {_x(r.change, 8)}"
            f"  {_x(r.old_ratio, 15)} {_x(r.new_ratio, 6)}  {_x(r.cpu_change, 15)}"
        )
    out.append("  * lower is better")
    refs_old, refs_new = old.get("physical", {}), new.get("physical", {})
    shared = [name for name in refs_new if name in refs_old]
    if shared:
        out += ["", "physical references (MiB/s): a change here is the machine, not the code"]
        for name in shared:
            out.append(
                f"  {name:<40} {_num(refs_old[name], 9)} {_num(refs_new[name], 9)}"
                f" {_x(_div(refs_new[name], refs_old[name]), 8)}"
            )
    return out


def _describe(doc: dict[str, Any]) -> str:
    code = doc.get("code") or {}
    commit = (code.get("commit") or "?")[:10] + ("+dirty" if code.get("dirty") else "")
    load = doc.get("host", {}).get("load_start", ["?"])[0]
    return (
        f"{doc.get('stamp')} profile={doc.get('profile')} size={doc.get('config', {}).get('size')}"
        f" runs={doc.get('config', {}).get('runs')} commit={commit} load={load}"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bench.compare OLD.json NEW.json", file=sys.stderr)
        return 2
    old, new = (json.loads(Path(p).read_text()) for p in argv)
    if old.get("skipped") or new.get("skipped"):
        print(f"nothing to compare: skipped ({old.get('skipped') or new.get('skipped')})")
        return 1
    print("\n".join(lines(old, new)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
