"""Points: the only thing the fitter reads. One row per finished run (or WSD decay branch).

Collected from a sweep directory (run dirs with summary.json, written by the trainer) or from a CSV
whose columns are mapped with `columns={"N": "params", "loss": "val_loss", ...}`.
Canonical columns: N (parameters, convention `n_kind`), D (tokens), C (training FLOPs), loss,
lr (peak learning rate) and batch (global tokens per optimizer step); lr/batch may be NaN.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, RecipeError
from . import filters

N_KINDS = {  # --n-kind -> summary.json key ("active" is the MoE analogue of non-embedding)
    "non_embedding": "non_embedding_params",
    "total": "params",
    "active": "active_non_embedding_params",
}
COLUMNS = ("N", "D", "C", "loss", "lr", "batch")
CSV_DEFAULTS = {  # canonical column -> names tried (case-insensitive) when --columns does not map it
    "N": ("n", "params", "model size", "n_params"),
    "D": ("d", "tokens", "t_tokens"),
    "C": ("c", "flops", "training flop", "compute"),
    # a smoothed loss first: Step Law's grid has both, and its fits use "smooth loss" (Li et al. 2025)
    "loss": ("smooth loss", "smooth_loss", "smoothed_loss", "loss", "val_loss", "final_val_loss"),
    "lr": ("lr", "learning_rate"),
    "batch": ("batch", "batch_tokens", "bs"),
}


@dataclass
class Points:
    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    loss: np.ndarray
    lr: np.ndarray
    batch: np.ndarray
    labels: list[str] = field(default_factory=list)  # run name (+ "@branch" for decay branches)
    n_kind: str = "non_embedding"
    recipes: dict[str, str] = field(default_factory=dict)  # label -> recipe.yaml of that run
    skipped: list[str] = field(default_factory=list)  # why runs were left out
    notes: list[str] = field(default_factory=list)  # what the reader chose or dropped (text output too)
    warnings: list[str] = field(default_factory=list)  # e.g. a column that splits the rows into groups

    @classmethod
    def from_arrays(cls, N, D=None, loss=None, C=None, lr=None, batch=None, n_kind: str = "non_embedding",
                    labels: list[str] | None = None) -> "Points":
        """Build from array-likes; D or C may be omitted (C = 6ND, Kaplan et al. 2020)."""
        N = _array("N", N)
        if loss is None:
            raise DataError("loss: values are required")
        if D is None and C is None:
            raise DataError("D: give tokens D or training FLOPs C (then D = C / 6N)")
        D = _array("D", D) if D is not None else _array("C", C) / (6.0 * N)
        C = _array("C", C) if C is not None else 6.0 * N * D
        n = len(N)
        cols = {"D": D, "C": C, "loss": _array("loss", loss),
                "lr": _array("lr", lr) if lr is not None else np.full(n, np.nan),
                "batch": _array("batch", batch) if batch is not None else np.full(n, np.nan)}
        for name, col in cols.items():
            if len(col) != n:
                raise DataError(f"{name}: has {len(col)} values but N has {n}")
        for name, col in {"N": N, "D": D, "C": C, "loss": cols["loss"]}.items():
            if not np.all(np.isfinite(col) & (col > 0)):
                raise DataError(f"{name}: all values must be finite and positive")
        for name in ("lr", "batch"):  # may be missing (NaN), but a value is a positive number
            bad = cols[name][np.isfinite(cols[name]) & (cols[name] <= 0)]
            if len(bad):
                raise DataError(f"{name}: values must be positive (or missing), got {bad[0]:g}")
        return cls(N=N, D=D, C=C, loss=cols["loss"], lr=cols["lr"], batch=cols["batch"],
                   labels=list(labels) if labels else [f"#{i}" for i in range(n)], n_kind=n_kind)

    def __len__(self) -> int:
        return len(self.N)

    @property
    def steps(self) -> np.ndarray:
        """Optimizer steps D / batch (NaN where the batch is unknown)."""
        return self.D / self.batch

    def trained_for(self, min_steps: float) -> np.ndarray:
        """Mask of the points with >= min_steps steps (D / batch may miss a whole count by a rounding error)."""
        return self.steps >= min_steps * (1 - 1e-9)

    def subset(self, index) -> "Points":
        """Rows selected by a boolean mask or an index array (repeats allowed: bootstrap)."""
        idx = np.arange(len(self))[index]
        return Points(self.N[idx], self.D[idx], self.C[idx], self.loss[idx], self.lr[idx], self.batch[idx],
                      [self.labels[i] for i in idx], self.n_kind, self.recipes, self.skipped, self.notes,
                      self.warnings)

    def best_per_cell(self) -> "Points":
        """Keep the lowest-loss row of each (N, D) cell: with LR/batch axes in a sweep, the loss laws
        must see each model at its best hyperparameters, not an average over bad ones."""
        keys = np.round(np.column_stack([np.log(self.N), np.log(self.D)]), 6)
        best: dict[tuple, int] = {}
        for i, key in enumerate(map(tuple, keys)):
            if key not in best or self.loss[i] < self.loss[best[key]]:
                best[key] = i
        return self.subset(np.array(sorted(best.values()), dtype=int))

    def has_hparam_axes(self) -> bool:
        """True when some (N, D) cell was trained at more than one learning rate."""
        ok = np.isfinite(self.lr)
        cells: dict[tuple, set] = {}
        for n, d, lr in zip(self.N[ok], self.D[ok], self.lr[ok]):
            cells.setdefault((round(float(np.log(n)), 6), round(float(np.log(d)), 6)), set()).add(lr)
        return any(len(v) > 1 for v in cells.values())

    def summary(self) -> dict:
        return {"points": len(self), "distinct_N": int(len(np.unique(self.N))),
                "N_range": [float(self.N.min()), float(self.N.max())],
                "D_range": [float(self.D.min()), float(self.D.max())],
                "C_range": [float(self.C.min()), float(self.C.max())],
                "loss_range": [float(self.loss.min()), float(self.loss.max())], "n_kind": self.n_kind,
                "skipped": list(self.skipped), "notes": list(self.notes)}

    def duplicates(self) -> int:
        """Rows repeating an earlier row's (N, D, loss) exactly."""
        return len(self) - len({(n, d, l) for n, d, l in zip(self.N, self.D, self.loss)})


def _array(name: str, values) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{name}: values must be numbers") from None
    return arr


# ----------------------------------------------------------------------------- sweep directories


def collect_sweep(root: str | Path, n_kind: str = "non_embedding", where=None, exclude=None) -> Points:
    """One point per completed run under `root` (summary.json), plus one per WSD decay branch.
    `where`/`exclude` (filters.Condition lists) see the columns N, D, C, loss, lr, batch and run."""
    root = Path(root)
    if n_kind not in N_KINDS:
        raise RecipeError(f"--n-kind: {n_kind!r} is not one of {', '.join(N_KINDS)}")
    rows, recipes, skipped = [], {}, []
    for summary_path in sorted(root.rglob("summary.json")):
        run = summary_path.parent
        label = str(run.relative_to(root)) if run != root else run.name
        try:
            s = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            skipped.append(f"{label}: unreadable summary.json ({e})")
            continue
        reason = _skip_reason(s, n_kind)
        if reason:
            skipped.append(f"{label}: {reason}")
            continue
        if (run / "recipe.yaml").exists():
            recipes[label] = str(run / "recipe.yaml")
        rows.extend(_rows_of_run(label, s, n_kind))
    if not rows:
        raise DataError(f"{root}: no completed run with summary.json found ({len(skipped)} skipped)")
    conds, drops = _conditions(where), list(exclude or [])
    for c in conds + drops:
        if c.column not in SWEEP_COLUMNS:
            raise RecipeError(f"--where/--exclude: column {c.column!r} is not one of {', '.join(SWEEP_COLUMNS)}")
    n_read = len(rows)
    rows = [r for r in rows if filters.keep_row(lambda col, r=r: r["label"].split("@")[0] if col == "run" else r[col],
                                                conds, drops)]
    if not rows:
        raise DataError(f"{root}: no points left after --where/--exclude ({filters.describe(conds, drops)})")
    cols = {k: [r[k] for r in rows] for k in COLUMNS}
    pts = Points.from_arrays(cols["N"], cols["D"], cols["loss"], C=cols["C"], lr=cols["lr"], batch=cols["batch"],
                             n_kind=n_kind, labels=[r["label"] for r in rows])
    pts.recipes, pts.skipped = recipes, skipped
    pts.notes = ([f"kept {len(rows)} of {n_read} points ({filters.describe(conds, drops)})"]
                 if conds or drops else []) + [f"skipped {s}" for s in skipped]
    return pts


SWEEP_COLUMNS = ("N", "D", "C", "loss", "lr", "batch", "run")


def _skip_reason(s: dict, n_kind: str) -> str | None:
    if s.get("status") != "completed":
        return f"status {s.get('status')!r}"
    if s.get("final_val_loss") is None:
        return "no final_val_loss"
    for key in (N_KINDS[n_kind], "tokens"):
        if not s.get(key):
            return f"no {key}"
    return None


def _rows_of_run(label: str, s: dict, n_kind: str) -> list[dict]:
    N = float(s[N_KINDS[n_kind]])
    common = {"N": N, "lr": s.get("lr") or np.nan, "batch": s.get("batch_tokens") or np.nan}
    rows = [{**common, "label": label, "D": float(s["tokens"]), "loss": float(s["final_val_loss"]),
             "C": float(s.get("flops") or 6.0 * N * float(s["tokens"]))}]
    for b in s.get("branches") or []:
        if b.get("val_loss") is None or not b.get("tokens"):
            continue
        D = float(b["tokens"])
        rows.append({**common, "label": f"{label}@{int(D)}", "D": D, "loss": float(b["val_loss"]),
                     "C": float(b.get("flops") or 6.0 * N * D)})
    return rows


# ----------------------------------------------------------------------------- CSV


def parse_columns(spec: str | None, keys=COLUMNS) -> dict[str, str]:
    """`N=Model Size,loss=loss` -> {"N": "Model Size", "loss": "loss"}."""
    if not spec:
        return {}
    out = {}
    for item in spec.split(","):
        key, sep, name = item.partition("=")
        key = key.strip()
        if not sep or key not in keys or not name.strip():
            raise RecipeError(f"--columns: bad item {item!r} (expected KEY=CSV_COLUMN, KEY in {', '.join(keys)})")
        out[key] = name.strip()
    return out


def read_csv(path: str | Path, columns: dict[str, str] | None = None, n_kind: str = "non_embedding",
             where: dict[str, str] | list | None = None, exclude: list | None = None,
             batch_unit: str | None = None, seq_len: float | None = None) -> Points:
    """Points from a CSV. `where`: {"config_id": "..."} or filters.Condition list (--where);
    `exclude`: Conditions whose matching rows are dropped; `batch_unit`: "tokens" or "sequences"
    (then the batch column is multiplied by `seq_len` or a seq_len column)."""
    path = Path(path)
    header, table = _read_table(path)
    mapping = _resolve_columns(path, header, columns or {})
    conds, drops = _conditions(where), list(exclude or [])
    for c in conds + drops:
        if c.column not in header and c.column not in mapping:
            raise RecipeError(f"{path}: --where/--exclude column {c.column!r} not in the header "
                             f"(have: {', '.join(header)})")
    n_read = len(table)
    table = [row for row in table if filters.keep_row(lambda col, row=row: row.get(col, row.get(mapping.get(col))),
                                                      conds, drops)]
    if not table:
        raise DataError(f"{path}: no rows (after --where/--exclude filters)")
    values = {key: np.array([_cell(path, i, row[name], name) for i, row in enumerate(table)])
              for key, name in mapping.items()}
    notes = [f"{path.name}: kept {len(table)} of {n_read} rows ({filters.describe(conds, drops)})"] \
        if conds or drops else []
    if "batch" in values:
        values["batch"], note = _batch_tokens(path, values["batch"], mapping["batch"], table, header,
                                              batch_unit, seq_len)
        notes.append(note)
    required = {k: values[k] for k in ("N", "loss", "D" if "D" in values else "C")}
    finite = np.all([np.isfinite(v) for v in required.values()], axis=0)
    positive = np.all([~np.isfinite(v) | (v > 0) for v in required.values()], axis=0)
    usable = finite & positive
    if not usable.any():
        raise DataError(f"{path}: no row has positive, finite N, loss and D (or C)")
    values = {k: v[usable] for k, v in values.items()}
    pts = Points.from_arrays(values["N"], values.get("D"), values.get("loss"), C=values.get("C"),
                             lr=values.get("lr"), batch=values.get("batch"), n_kind=n_kind,
                             labels=[f"{path.name}:{i + 2}" for i in np.flatnonzero(usable)])
    names = "/".join(mapping[k] for k in required)
    for count, why in ((int((~finite).sum()), "a missing or non-finite (NaN, inf)"),
                       (int((finite & ~positive).sum()), "a zero or negative")):
        if count:
            pts.skipped.append(f"{path.name}: {count} rows dropped: {why} value in {names}")
    if mapping["loss"].lower() != "loss" and "loss" in {h.lower() for h in header}:
        notes.append(f"{path.name}: loss read from column {mapping['loss']!r}, not the raw 'loss' column")
    pts.notes = notes + pts.skipped
    pts.warnings = group_warnings(path, header, table, mapping, conds)
    return pts


def _read_table(path: Path) -> tuple[list[str], list[dict]]:
    """Header and rows; utf-8-sig so that a BOM does not become part of the first column's name."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            return [h.strip() for h in reader.fieldnames or []], [
                {k.strip() if isinstance(k, str) else k: v for k, v in row.items()} for row in reader]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text CSV ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read CSV ({e.strerror})") from None


def _conditions(where) -> list:
    if isinstance(where, dict):  # the older {column: value} form
        return [filters.Condition(k, "=", str(v)) for k, v in where.items()]
    return list(where or [])


BATCH_UNITS = ("tokens", "sequences")


def _batch_tokens(path: Path, batch: np.ndarray, column: str, table: list[dict], header: list[str],
                  unit: str | None, seq_len: float | None) -> tuple[np.ndarray, str]:
    """The batch column in tokens per optimizer step (the fitter's unit)."""
    if unit is None:
        return batch, (f"{path.name}: batch column {column!r} read as tokens per step; if it counts "
                       "sequences pass --batch-unit sequences (with --seq-len or a seq_len column)")
    if unit not in BATCH_UNITS:
        raise RecipeError(f"--batch-unit: {unit!r} is not one of {', '.join(BATCH_UNITS)}")
    if unit == "tokens":
        return batch, f"{path.name}: batch column {column!r} in tokens"
    if seq_len is None:
        col = next((h for h in header if h.lower() in ("seq_len", "seq_length", "context_length")), None)
        if col is None:
            raise RecipeError(f"{path}: --batch-unit sequences needs --seq-len or a seq_len column")
        lengths = np.array([_cell(path, i, row[col], col) for i, row in enumerate(table)])
        return batch * lengths, f"{path.name}: batch column {column!r} in sequences x column {col!r}"
    if not np.isfinite(seq_len) or seq_len <= 0:
        raise RecipeError(f"--seq-len: must be a positive number, got {seq_len}")
    return batch * seq_len, f"{path.name}: batch column {column!r} in sequences x --seq-len {seq_len:g}"


MAX_GROUPS = 30


def group_warnings(path: Path, header: list[str], table: list[dict], mapping: dict, where: list) -> list[str]:
    """Text columns that split the rows into a few distinct groups (several configurations, datasets,
    as in Porian et al.'s data): one law over all of them mixes different curves."""
    used = set(mapping.values()) | {c.column for c in where}
    splits = []
    for col in header:
        if col in used:
            continue
        values = [row[col] for row in table]
        if any(filters.parse_number(v) is not None for v in values if v):
            continue
        distinct = sorted(set(values))
        if 2 <= len(distinct) <= min(MAX_GROUPS, len(values) // 2):
            shown = ", ".join(distinct[:3]) + (", ..." if len(distinct) > 3 else "")
            splits.append(f"{col} ({len(distinct)}: {shown})")
    if not splits:
        return []
    return [f"{path.name}: columns split the rows into distinct groups, fitted as one law: {'; '.join(splits)}; "
            f"select one with --where COL=VALUE"]


def _resolve_columns(path: Path, header: list[str], columns: dict[str, str]) -> dict[str, str]:
    lower = {h.lower().strip(): h for h in header}
    mapping = {}
    for key in COLUMNS:
        if key in columns:
            if columns[key] not in header:
                raise RecipeError(f"{path}: --columns {key}={columns[key]!r}: no such column "
                                 f"(have: {', '.join(header)})")
            mapping[key] = columns[key]
            continue
        found = next((lower[c] for c in CSV_DEFAULTS[key] if c in lower), None)
        if found:
            mapping[key] = found
    for key in ("N", "loss"):
        if key not in mapping:
            raise DataError(f"{path}: no {key} column; map it with --columns {key}=NAME")
    if "D" not in mapping and "C" not in mapping:
        raise DataError(f"{path}: need a tokens (D) or FLOPs (C) column; map one with --columns D=NAME")
    return mapping


def _cell(path: Path, i: int, text: str, column: str) -> float:
    if text is None or text.strip() == "":
        return np.nan
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path}: line {i + 2}, column {column!r}: {text!r} is not a number") from None


def load_points(source: str | Path, n_kind: str = "non_embedding", columns: dict[str, str] | None = None,
                where: dict[str, str] | list | None = None, exclude: list | None = None,
                batch_unit: str | None = None, seq_len: float | None = None,
                min_steps: float | None = None) -> Points:
    """A sweep directory or a CSV file; `min_steps` drops points trained for fewer optimizer steps
    (D / batch, after the batch is in tokens)."""
    source = Path(source)
    if source.is_dir():
        pts = collect_sweep(source, n_kind, where, exclude)
    elif source.is_file():
        pts = read_csv(source, columns, n_kind, where, exclude, batch_unit, seq_len)
    else:
        raise DataError(f"{source}: no such sweep directory or CSV file")
    return filters.drop_short_runs(pts, min_steps) if min_steps else pts
