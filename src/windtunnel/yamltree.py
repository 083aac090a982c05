"""YAML recipe trees: `extends:` inheritance, `key.path=value` overrides, and the typed build that turns a
plain tree into a dataclass tree (checking every key and type, one-line RecipeError naming the path).

Kept apart from recipe.py (the dataclass sections) so that each stays short; no torch here either.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from .errors import RecipeError


# ----------------------------------------------------------------------------- YAML


def load_yaml_tree(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML recipe, resolving `extends:` (relative to the file) by deep merge."""
    path = path.resolve()
    if path in _seen:
        raise RecipeError(f"{path}: extends: cycle through {' -> '.join(map(str, _seen))}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RecipeError(f"{path}: cannot read recipe ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not a YAML text file (byte {e.start} is not UTF-8)") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}:{where} invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base = load_yaml_tree(path.parent / str(parent), _seen + (path,))
    return deep_merge(base, raw)


def deep_merge(base: dict, over: dict, keep_base: Callable[[Any], bool] = lambda value: False) -> dict:
    """`over` merged into `base` (nested mappings merged, other values replaced), except values for which
    `keep_base(value)` holds where `base` has the key (e.g. DeepSpeed's "auto")."""
    out = dict(base)
    for k, v in over.items():
        if k in out and keep_base(v):
            continue
        out[k] = deep_merge(out[k], v, keep_base) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_override(raw: dict, item: str, source: str = "--set") -> None:
    """Apply `a.b.c=value` to a nested dict; the value is parsed as YAML (so 1e-3, true, [1,2])."""
    if "=" not in item:
        raise RecipeError(f"{source}: expected key.path=value, got {item!r}")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise RecipeError(f"{source}: {key}: {p} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        node[parts[-1]] = text


# ----------------------------------------------------------------------------- typed build


def build_dataclass(cls: type, raw: Any, source: str, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: {prefix or '<root>'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(names)})"
            raise RecipeError(f"{source}: unknown key {path}{hint}")
        kwargs[key] = coerce(hints[key], value, source, path)
    return cls(**kwargs)


def coerce(tp: Any, value: Any, source: str, path: str) -> Any:
    """Check `value` against the annotation `tp`, converting the few safe cases (int->float, '1e-3')."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, source, path + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, source, path)
            except RecipeError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise RecipeError(f"{source}: {path}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{source}: {path}: expected a mapping, got {value!r}")
        key_tp, value_tp = typing.get_args(tp)
        return {coerce(key_tp, k, source, path): coerce(value_tp, v, source, f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{source}: {path}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [coerce(item, v, source, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, str):
            value = _number(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str):
            value = _number(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise RecipeError(f"{source}: {path}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _number(text: str) -> Any:
    try:
        return float(text.replace("_", ""))
    except ValueError:
        return text
