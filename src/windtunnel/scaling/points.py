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
    "loss": ("loss", "val_loss", "final_val_loss"),
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

    @classmethod
    def from_arrays(cls, N, D=None, loss=None, C=None, lr=None, batch=None, n_kind: str = "non_embedding",
                    labels: list[str] | None = None) -> "Points":
        """Build from array-likes; D or C may be omitted (C = 6ND, Kaplan et al. 2020)."""
        N = _array("N", N)
        if loss is None:
            raise ValueError("loss: values are required")
        if D is None and C is None:
            raise ValueError("D: give tokens D or training FLOPs C (then D = C / 6N)")
        D = _array("D", D) if D is not None else _array("C", C) / (6.0 * N)
        C = _array("C", C) if C is not None else 6.0 * N * D
        n = len(N)
        cols = {"D": D, "C": C, "loss": _array("loss", loss),
                "lr": _array("lr", lr) if lr is not None else np.full(n, np.nan),
                "batch": _array("batch", batch) if batch is not None else np.full(n, np.nan)}
        for name, col in cols.items():
            if len(col) != n:
                raise ValueError(f"{name}: has {len(col)} values but N has {n}")
        for name, col in {"N": N, "D": D, "C": C, "loss": cols["loss"]}.items():
            if not np.all(np.isfinite(col) & (col > 0)):
                raise ValueError(f"{name}: all values must be finite and positive")
        return cls(N=N, D=D, C=C, loss=cols["loss"], lr=cols["lr"], batch=cols["batch"],
                   labels=list(labels) if labels else [f"#{i}" for i in range(n)], n_kind=n_kind)

    def __len__(self) -> int:
        return len(self.N)

    def subset(self, index) -> "Points":
        """Rows selected by a boolean mask or an index array (repeats allowed: bootstrap)."""
        idx = np.arange(len(self))[index]
        return Points(self.N[idx], self.D[idx], self.C[idx], self.loss[idx], self.lr[idx], self.batch[idx],
                      [self.labels[i] for i in idx], self.n_kind, self.recipes, self.skipped)

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
                "skipped": list(self.skipped)}


def _array(name: str, values) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: values must be numbers") from None
    return arr


# ----------------------------------------------------------------------------- sweep directories


def collect_sweep(root: str | Path, n_kind: str = "non_embedding") -> Points:
    """One point per completed run under `root` (summary.json), plus one per WSD decay branch."""
    root = Path(root)
    if n_kind not in N_KINDS:
        raise ValueError(f"--n-kind: {n_kind!r} is not one of {', '.join(N_KINDS)}")
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
        raise ValueError(f"{root}: no completed run with summary.json found ({len(skipped)} skipped)")
    cols = {k: [r[k] for r in rows] for k in COLUMNS}
    pts = Points.from_arrays(cols["N"], cols["D"], cols["loss"], C=cols["C"], lr=cols["lr"], batch=cols["batch"],
                             n_kind=n_kind, labels=[r["label"] for r in rows])
    pts.recipes, pts.skipped = recipes, skipped
    return pts


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


def parse_columns(spec: str | None) -> dict[str, str]:
    """`N=Model Size,loss=loss` -> {"N": "Model Size", "loss": "loss"}."""
    if not spec:
        return {}
    out = {}
    for item in spec.split(","):
        key, sep, name = item.partition("=")
        key = key.strip()
        if not sep or key not in COLUMNS or not name.strip():
            raise ValueError(f"--columns: bad item {item!r} (expected KEY=CSV_COLUMN, KEY in {', '.join(COLUMNS)})")
        out[key] = name.strip()
    return out


def read_csv(path: str | Path, columns: dict[str, str] | None = None, n_kind: str = "non_embedding",
             where: dict[str, str] | None = None) -> Points:
    """Points from a CSV. `where={"config_id": "..."}` keeps only rows with those exact values."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            table = list(reader)
    except OSError as e:
        raise ValueError(f"{path}: cannot read CSV ({e.strerror})") from None
    mapping = _resolve_columns(path, header, columns or {})
    for col, value in (where or {}).items():
        if col not in header:
            raise ValueError(f"{path}: --where column {col!r} not in the header")
        table = [row for row in table if row[col] == value]
    if not table:
        raise ValueError(f"{path}: no rows (after --where filters)")
    values = {key: np.array([_cell(path, i, row[name], name) for i, row in enumerate(table)])
              for key, name in mapping.items()}
    required = [values[k] for k in ("N", "loss", "D" if "D" in values else "C")]
    usable = np.all([np.isfinite(v) & (v > 0) for v in required], axis=0)
    if not usable.any():
        raise ValueError(f"{path}: no row has positive, finite N, loss and D (or C)")
    values = {k: v[usable] for k, v in values.items()}
    pts = Points.from_arrays(values["N"], values.get("D"), values.get("loss"), C=values.get("C"),
                             lr=values.get("lr"), batch=values.get("batch"), n_kind=n_kind,
                             labels=[f"{path.name}:{i + 2}" for i in np.flatnonzero(usable)])
    if not usable.all():
        pts.skipped = [f"{path.name}: {int((~usable).sum())} rows with missing or non-positive N/loss/D"]
    return pts


def _resolve_columns(path: Path, header: list[str], columns: dict[str, str]) -> dict[str, str]:
    lower = {h.lower().strip(): h for h in header}
    mapping = {}
    for key in COLUMNS:
        if key in columns:
            if columns[key] not in header:
                raise ValueError(f"{path}: --columns {key}={columns[key]!r}: no such column "
                                 f"(have: {', '.join(header)})")
            mapping[key] = columns[key]
            continue
        found = next((lower[c] for c in CSV_DEFAULTS[key] if c in lower), None)
        if found:
            mapping[key] = found
    for key in ("N", "loss"):
        if key not in mapping:
            raise ValueError(f"{path}: no {key} column; map it with --columns {key}=NAME")
    if "D" not in mapping and "C" not in mapping:
        raise ValueError(f"{path}: need a tokens (D) or FLOPs (C) column; map one with --columns D=NAME")
    return mapping


def _cell(path: Path, i: int, text: str, column: str) -> float:
    if text is None or text.strip() == "":
        return np.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}: line {i + 2}, column {column!r}: {text!r} is not a number") from None


def load_points(source: str | Path, n_kind: str = "non_embedding", columns: dict[str, str] | None = None,
                where: dict[str, str] | None = None) -> Points:
    """A sweep directory or a CSV file."""
    source = Path(source)
    if source.is_dir():
        return collect_sweep(source, n_kind)
    if source.is_file():
        return read_csv(source, columns, n_kind, where)
    raise ValueError(f"{source}: no such sweep directory or CSV file")
