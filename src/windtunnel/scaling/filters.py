"""Row filters for `windtunnel fit --where/--exclude`: `COL=VALUE`, `COL!=VALUE`, `COL>X`, `COL>=X`,
`COL<X`, `COL<=X` (numbers accept K/M/B/T). Several `COL=VALUE` on one column are alternatives (OR:
`--where config=a --where config=b`); every other condition must also hold (AND: `--where 'N>1e8'
--where 'N<5e9'` is a range). A row matching any --exclude is dropped. `--min-steps K` drops points
trained for fewer than K optimizer steps."""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..errors import DataError, RecipeError

SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
OPS: dict[str, Callable] = {">=": operator.ge, "<=": operator.le, "!=": operator.ne, ">": operator.gt,
                            "<": operator.lt, "=": operator.eq}
PATTERN = re.compile(r"^\s*([^<>=!]+?)\s*(>=|<=|!=|>|<|=)\s*(.*?)\s*$")


def parse_number(text: str) -> float | None:
    t = str(text).strip().replace("_", "")
    scale = SUFFIXES.get(t[-1:].upper()) if t[-1:].isalpha() else None
    try:
        return float(t[:-1]) * scale if scale else float(t)
    except ValueError:
        return None


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: str

    def holds(self, cell) -> bool:
        """Numbers compare as numbers (1e7 = 10M); anything else compares as text (= and != only)."""
        a, b = (cell if isinstance(cell, float) else parse_number(cell)), parse_number(self.value)
        if a is not None and b is not None:
            return bool(OPS[self.op](a, b))
        if self.op not in ("=", "!="):
            return False  # a text cell is never > a number
        return (str(cell).strip() == self.value) == (self.op == "=")


def parse(items: list[str], flag: str) -> list[Condition]:
    out = []
    for item in items:
        m = PATTERN.match(item)
        if not m or not m.group(1):
            raise RecipeError(f"{flag}: expected COL=VALUE, COL!=VALUE or COL>X (>=, <, <=), got {item!r}")
        cond = Condition(*m.groups())
        if cond.op not in ("=", "!=") and parse_number(cond.value) is None:
            raise RecipeError(f"{flag} {item!r}: {cond.op} needs a number, got {cond.value!r}")
        out.append(cond)
    return out


def keep_row(get: Callable[[str], object], where: list[Condition], exclude: list[Condition]) -> bool:
    """`get(column)` returns the row's cell. Equalities on one column: OR; everything else: AND."""
    equal: dict[str, list[Condition]] = {}
    for c in where:
        if c.op == "=":
            equal.setdefault(c.column, []).append(c)
        elif not c.holds(get(c.column)):
            return False
    if not all(any(c.holds(get(col)) for c in conds) for col, conds in equal.items()):
        return False
    return not any(c.holds(get(c.column)) for c in exclude)


def describe(where: list[Condition], exclude: list[Condition]) -> str:
    parts = [f"{c.column}{c.op}{c.value}" for c in where] + [f"not {c.column}{c.op}{c.value}" for c in exclude]
    return ", ".join(parts)


def drop_short_runs(points, min_steps: float):
    """`--min-steps K`: keep the points trained for at least K optimizer steps (D / batch, batch in
    tokens per step). Short runs sit above the law long runs follow (docs/scaling.md, the CPU
    end-to-end run); a point without a batch cannot be judged, so it is refused rather than kept."""
    steps = points.steps
    unknown = ~np.isfinite(steps)
    if unknown.all():
        raise RecipeError(f"--min-steps {min_steps:g}: no point has a batch size (tokens per step), so steps "
                          "= D / batch are unknown; map a batch column with --columns batch=NAME")
    if unknown.any():
        raise RecipeError(f"--min-steps {min_steps:g}: {int(unknown.sum())} of {len(points)} points have no batch "
                          f"size (e.g. {points.labels[int(np.flatnonzero(unknown)[0])]}), so their steps are "
                          "unknown; drop them with --where 'batch>0' or fill in their batch")
    keep = points.trained_for(min_steps)
    if not keep.any():
        raise DataError(f"--min-steps {min_steps:g}: no points left (the longest trained "
                        f"{int(steps.max())} steps)")
    kept = points.subset(keep)
    return replace(kept, notes=list(points.notes) + [f"kept {int(keep.sum())} of {len(points)} points "
                                                     f"(steps >= {min_steps:g})"])
