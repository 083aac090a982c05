"""Sweep files -> a list of planned runs (validated recipes with their params, tokens and FLOPs).

    spec = load_sweep("recipes/sweeps/lr_smoke.yaml")
    runs = expand(spec)          # [PlannedRun], each recipe checked by Recipe.from_dict
    print(report.plan_table(runs, spec.estimate))

The axes `grid` (cartesian product), `zip` (parallel lists), `list` (explicit points) and `scale`
(a model-size family with token budgets) multiply: every combination is one run. The format is
documented in docs/sweeps.md. Like recipe.py this module does not import torch.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from ..accounting import ParamCounts, count_params, flops_per_token
from ..recipe import Recipe, RecipeError, build_dataclass, deep_merge, load_yaml_tree
from ..validation import POSITIVE, Bound, check_numbers
from . import families
from .mixture_axis import mixture_points

AXES = ("grid", "zip", "list", "scale", "mixture")


# ----------------------------------------------------------------------------- sweep file


@dataclass
class ScaleAxis:
    widths: list[int] | None = None  # d_model values ...
    params: list[float] | None = None  # ... or parameter targets (see `count`)
    aspect: float | None = None  # d_model / n_layers; None = the base model's
    head_dim: int | None = None  # None = the base model's
    depth: int | None = None  # fixed n_layers instead of the aspect rule
    count: Literal["non_embedding", "active_non_embedding", "total", "active"] = "non_embedding"
    tokens_per_param: list[float] | None = None  # token budget D = r * N for each r ...
    flops: list[float] | None = None  # ... or isoFLOP budgets C: D = C / (FLOPs per token) ...
    tokens: list[float] | None = None  # ... or explicit token counts (an N x D grid)
    # Caps each run's tokens so its main run stays within this many counted FLOPs: an N x D grid whose
    # widest members train fewer tokens (a ladder), keeping the largest proxy a set fraction of the target.
    max_flops: float | None = None
    branch_fracs: list[float] = field(default_factory=list)  # WSD branches at these fractions of D


@dataclass
class ExecutorConfig:
    kind: Literal["local", "slurm"] = "local"
    gpus: int | None = None  # local: runs in parallel, one per GPU; None = all visible, 0 = CPU
    gpus_per_run: int = 1  # slurm: processes per run (accelerate launch --num_processes)
    cluster: Literal["slurm", "local", "debug"] = "slurm"  # submitit backend; local/debug test it
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 24 * 60
    cpus_per_task: int = 8
    mem_gb: float | None = None
    max_parallel: int = 64  # Slurm array throttle
    setup: list[str] = field(default_factory=list)  # shell lines run before each job (module load ...)
    wait: bool = False  # slurm: block until the jobs end


@dataclass
class EstimateConfig:
    mfu: float = 0.4  # model FLOPs utilization assumed for the GPU-hour estimate
    gpu: str = "H100"  # looked up in accounting.PEAK_TFLOPS
    peak_tflops: float | None = None  # overrides the lookup


@dataclass
class SweepSpec:
    name: str
    path: Path
    base: dict  # the base recipe tree (extends resolved, overrides applied)
    axes: dict
    executor: ExecutorConfig
    estimate: EstimateConfig
    out_dir: Path


@dataclass
class PlannedRun:
    name: str
    overrides: dict  # dotted key -> value chosen by the axes
    recipe: Recipe
    params: ParamCounts
    tokens: int  # main run tokens (steps * global batch tokens)
    flops: float  # main run + decay branches
    world: int

    @property
    def fingerprint(self) -> str:
        blob = json.dumps(self.recipe.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Numeric bounds of the sweep file's own sections (unlisted numbers must be >= 0; all must be finite).
SWEEP_BOUNDS: dict[str, Bound] = {
    **dict.fromkeys(["executor.gpus_per_run", "executor.time_min", "executor.cpus_per_task", "executor.mem_gb",
                     "executor.max_parallel", "estimate.peak_tflops", "sweep.scale.widths", "sweep.scale.params",
                     "sweep.scale.aspect", "sweep.scale.head_dim", "sweep.scale.depth",
                     "sweep.scale.tokens_per_param", "sweep.scale.flops", "sweep.scale.tokens",
                     "sweep.scale.max_flops"], POSITIVE),
    "estimate.mfu": Bound(0, 1, low_open=True),
    "sweep.scale.branch_fracs": Bound(0, 1, low_open=True, high_open=True),
}

TOP_KEYS = ("name", "base", "recipe", "overrides", "sweep", "executor", "estimate", "out_dir")


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Read and check a sweep file; `overrides` are `key.path=value` strings applied to the base."""
    path = Path(path)
    src = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise RecipeError(f"{src}: cannot read sweep file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{src}: not a YAML text file (byte {e.start} is not UTF-8)") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{src}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{src}: top level must be a mapping")
    for key in raw:
        if key not in TOP_KEYS:
            close = difflib.get_close_matches(str(key), TOP_KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(TOP_KEYS)})"
            raise RecipeError(f"{src}: unknown key {key}{hint}")
    base = _base_tree(raw, path)
    for key, value in _mapping(raw.get("overrides"), src, "overrides").items():
        set_key(base, str(key), value)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise RecipeError(f"--set: expected key.path=value, got {item!r}")
        set_key(base, key.strip(), yaml.safe_load(text) if text.strip() else None)
    name = str(raw.get("name") or path.stem)
    for key in ("name", "out_dir"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise RecipeError(f"{src}: {key}: expected a string, got {raw[key]!r}")
    axes = _check_axes(_mapping(raw.get("sweep"), src, "sweep"), src)
    spec = SweepSpec(
        name=name, path=path, base=base, axes=axes,
        executor=build_dataclass(ExecutorConfig, raw.get("executor"), src, "executor."),
        estimate=build_dataclass(EstimateConfig, raw.get("estimate"), src, "estimate."),
        out_dir=Path(raw.get("out_dir") or Path("sweeps") / name))
    check_spec(spec)
    return spec


def check_spec(spec: SweepSpec) -> None:
    """Numbers of the executor and estimate sections (run again after command-line flags change them)."""
    def fail(key: str, msg: str) -> None:
        raise RecipeError(f"{spec.path}: {key}: {msg}")

    check_numbers(spec.executor, SWEEP_BOUNDS, fail, "executor.")
    check_numbers(spec.estimate, SWEEP_BOUNDS, fail, "estimate.")


def _base_tree(raw: dict, path: Path) -> dict:
    if ("base" in raw) == ("recipe" in raw):
        raise RecipeError(f"{path}: set exactly one of base (a recipe file) and recipe (an inline recipe)")
    if "base" in raw:
        return load_yaml_tree(path.parent / str(raw["base"]))
    inline = copy.deepcopy(_mapping(raw["recipe"], str(path), "recipe"))
    parent = inline.pop("extends", None)
    return deep_merge(load_yaml_tree(path.parent / str(parent)), inline) if parent else inline


def _mapping(value: Any, src: str, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"{src}: {key}: expected a mapping, got {value!r}")
    return value


def set_key(tree: dict, key: str, value: Any) -> None:
    """Set dotted `key` in a nested dict; a mapping value is merged into an existing section."""
    *parents, leaf = key.split(".")
    node = tree
    for p in parents:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise RecipeError(f"{key}: {p} is not a section")
        node = child
    old = node.get(leaf)
    node[leaf] = deep_merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value


def _check_axes(sweep: dict, src: str) -> dict:
    for key in sweep:
        if key not in AXES:
            close = difflib.get_close_matches(str(key), AXES, n=1)
            hint = f" (did you mean sweep.{close[0]}?)" if close else f" (known: {', '.join(AXES)})"
            raise RecipeError(f"{src}: unknown axis sweep.{key}{hint}")
    grid = _mapping(sweep.get("grid"), src, "sweep.grid")
    zipped = _mapping(sweep.get("zip"), src, "sweep.zip")
    for axis, values in [*(("grid", kv) for kv in grid.items()), *(("zip", kv) for kv in zipped.items())]:
        key, vals = values
        if not isinstance(vals, list) or not vals:
            raise RecipeError(f"{src}: sweep.{axis}.{key}: expected a non-empty list, got {vals!r}")
    lengths = {k: len(v) for k, v in zipped.items()}
    if len(set(lengths.values())) > 1:
        raise RecipeError(f"{src}: sweep.zip: lists differ in length ({lengths})")
    points = sweep.get("list") or []
    if not isinstance(points, list) or not all(isinstance(p, dict) and p for p in points):
        raise RecipeError(f"{src}: sweep.list: expected a list of non-empty mappings")
    scale = None
    if sweep.get("scale") is not None:
        scale = _check_scale(_mapping(sweep["scale"], src, "sweep.scale"), src)
    seen: dict[str, str] = {}
    for axis, keys in (("grid", grid), ("zip", zipped), ("list", {k for p in points for k in p})):
        for k in keys:
            if seen.get(k, axis) != axis:
                raise RecipeError(f"{src}: sweep: key {k} is set by both sweep.{seen[k]} and sweep.{axis}")
            seen[k] = axis
    mixes = mixture_points(sweep.get("mixture"), src)  # sweep.mixture: data.mix points (mixture_axis.py)
    if mixes and "data.mix" in seen:
        raise RecipeError(f"{src}: sweep: key data.mix is set by both sweep.{seen['data.mix']} and sweep.mixture")
    return {"grid": grid, "zip": zipped, "list": points, "scale": scale, "mixture": mixes}


def _check_scale(raw: dict, src: str) -> ScaleAxis:
    raw = {k: [v] if k in ("widths", "params", "tokens_per_param", "flops", "tokens") and
           not isinstance(v, list) else v for k, v in raw.items()}
    s = build_dataclass(ScaleAxis, raw, src, "sweep.scale.")

    def fail(key: str, msg: str) -> None:
        raise RecipeError(f"{src}: {key}: {msg}")

    check_numbers(s, SWEEP_BOUNDS, fail, "sweep.scale.")
    if (s.widths is None) == (s.params is None):
        raise RecipeError(f"{src}: sweep.scale: set exactly one of widths and params")
    budgets = [k for k in ("tokens_per_param", "flops", "tokens") if getattr(s, k) is not None]
    if len(budgets) > 1:
        raise RecipeError(f"{src}: sweep.scale: set at most one of {', '.join(budgets)}")
    if s.max_flops is not None and not (s.tokens or s.tokens_per_param):
        raise RecipeError(f"{src}: sweep.scale.max_flops: caps a tokens or tokens_per_param budget; "
                          "set one of them (flops is already a compute budget)")
    for key in [k for k in ("widths", "params") if getattr(s, k) is not None] + budgets:
        if not getattr(s, key):
            raise RecipeError(f"{src}: sweep.scale.{key}: expected positive values, got {getattr(s, key)}")
    return s


# ----------------------------------------------------------------------------- expansion


def axis_points(axes: dict) -> list[dict]:
    """The cartesian product of the non-scale axes, each point a {dotted key: value} dict."""
    grid = axes["grid"]
    grid_pts = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    zipped = axes["zip"]
    zip_pts = [dict(zip(zipped, combo)) for combo in zip(*zipped.values())] or [{}]
    list_pts = axes["list"] or [{}]
    mix_pts = axes.get("mixture") or [{}]
    return [{**g, **z, **p, **m} for g in grid_pts for z in zip_pts for p in list_pts for m in mix_pts]


def scale_points(scale: ScaleAxis | None, tree: dict) -> list[tuple[dict, str]]:
    """(overrides, label) per model size x token budget, for one run tree."""
    if scale is None:
        return [({}, "")]
    base_model = tree.get("model") or {}
    rules = dict(aspect=scale.aspect, head_dim=scale.head_dim, depth=scale.depth)
    if scale.widths is not None:
        shapes = [(families.shape_for_width(w, base_model, **rules), f"w{w}") for w in scale.widths]
    else:
        shapes = [(families.shape_for_params(n, base_model, count=scale.count, **rules), f"N{human(n)}")
                  for n in scale.params]
    seq = (tree.get("train") or {}).get("seq_len") or 256
    vocab = planning_vocab(tree)
    out = []
    for shape, label in shapes:
        counted = {**shape, "vocab_size": shape.get("vocab_size") or vocab}
        budgets: list[tuple[int | None, str]] = [(None, "")]
        if scale.tokens_per_param:
            budgets = [(families.tokens_for(counted, seq, tokens_per_param=r, count=scale.count), f"r{r:g}")
                       for r in scale.tokens_per_param]
        elif scale.flops:
            budgets = [(families.tokens_for(counted, seq, flops=c), f"C{c:.0e}") for c in scale.flops]
        elif scale.tokens:
            budgets = [(int(d), f"D{human(d)}") for d in scale.tokens]
        if scale.max_flops:
            budgets = capped(budgets, families.tokens_for(counted, seq, flops=scale.max_flops))
        for tokens, tag in budgets:
            over = {"model": shape}
            if tokens is not None:
                over.update({"train.tokens": tokens, "train.steps": None})
                if scale.branch_fracs:
                    over["schedule.wsd.branches"] = [int(f * tokens) for f in scale.branch_fracs]
            out.append((over, "_".join(x for x in (label, tag) if x)))
    return out


def capped(budgets: list[tuple[int | None, str]], cap: int) -> list[tuple[int | None, str]]:
    """Budgets above `cap` tokens become `cap` (tagged with it); budgets that collapse onto it run once."""
    out: list[tuple[int | None, str]] = []
    for tokens, tag in budgets:
        item = (cap, f"D{human(cap)}") if tokens is not None and tokens > cap else (tokens, tag)
        if item not in out:
            out.append(item)
    return out


def expand(spec: SweepSpec) -> list[PlannedRun]:
    """Every run of the sweep, validated; names are stable across re-runs of the same file."""
    world = spec.executor.gpus_per_run if spec.executor.kind == "slurm" else 1
    runs: list[PlannedRun] = []
    for point in axis_points(spec.axes):
        tree = copy.deepcopy(spec.base)
        for key, value in point.items():
            set_key(tree, key, copy.deepcopy(value))
        for scale_over, scale_label in scale_points(spec.axes["scale"], tree):
            run_tree = copy.deepcopy(tree)
            for key, value in scale_over.items():
                if key == "model":  # the family's shape replaces the section (no merge)
                    run_tree["model"] = value
                else:
                    set_key(run_tree, key, value)
            name = run_name(point, scale_label)
            recipe = Recipe.from_dict(run_tree, source=f"{spec.path} [run {name}]")
            runs.append(_account(name, {**point, **_flat(scale_over)}, recipe, world))
    return _dedupe(runs, spec.path)


def _account(name: str, overrides: dict, recipe: Recipe, world: int) -> PlannedRun:
    model = replace(recipe.model, vocab_size=recipe.model.vocab_size or planning_vocab(recipe.to_dict()))
    per_token = flops_per_token(model, recipe.train.seq_len)
    batch = recipe.global_tokens_per_step(world)
    tokens = recipe.total_steps(world) * batch
    w = recipe.schedule.wsd
    branch_tokens = sum(round(w.decay_frac * b / batch) * batch for b in w.branches) \
        if recipe.schedule.name == "wsd" else 0
    return PlannedRun(name=name, overrides=overrides, recipe=recipe, params=count_params(model),
                      tokens=tokens, flops=per_token * (tokens + branch_tokens), world=world)


def planning_vocab(tree: dict) -> int:
    """Vocabulary for counting: the model's, else the tokenizer's (byte: 258, bpe: its target size)."""
    vocab = (tree.get("model") or {}).get("vocab_size")
    if vocab:
        return int(vocab)
    tok = tree.get("tokenizer") or {}
    kind = tok.get("kind", "byte")
    if kind == "byte":
        return 258  # windtunnel.data.ByteTokenizer: 256 bytes + end of document + padding
    if kind == "bpe":
        return int(tok.get("vocab_size") or 4096)
    raise RecipeError("model.vocab_size: set it in the sweep when tokenizer.kind=hf "
                      "(the planner does not load tokenizers)")


def _flat(over: dict) -> dict:
    out = {k: v for k, v in over.items() if k != "model"}
    for k in ("d_model", "n_layers", "n_heads"):
        if k in over.get("model", {}):
            out[f"model.{k}"] = over["model"][k]
    return out


def run_name(point: dict, scale_label: str) -> str:
    parts = [f"{key.split('.')[-1]}{_fmt(value)}" for key, value in point.items()]
    if scale_label:
        parts.append(scale_label)
    name = re.sub(r"[^A-Za-z0-9._+=-]+", "-", "_".join(parts)) or "run"
    if len(name) > 80:
        name = name[:71] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict) and len(value) <= 3 and all(isinstance(v, float) for v in value.values()):
        return "-".join(f"{k}{v:g}" for k, v in value.items())  # a mixture: mixcode0.3-prose0.7
    if isinstance(value, (dict, list)):
        return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:6]
    return str(value)


def _dedupe(runs: list[PlannedRun], path: Path) -> list[PlannedRun]:
    seen: dict[str, PlannedRun] = {}
    for run in runs:
        if run.name in seen:
            if seen[run.name].fingerprint == run.fingerprint:
                raise RecipeError(f"{path}: run {run.name} appears twice with the same recipe")
            run.name = f"{run.name}_{run.fingerprint[:6]}"
        seen[run.name] = run
    return runs


# ----------------------------------------------------------------------------- reporting


def human(x: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"
