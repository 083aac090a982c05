import subprocess
import sys

import pytest
import yaml

from windtunnel.recipe import Recipe, RecipeError


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {"train": {"steps": 10}}


def test_defaults_and_round_trip(tmp_path):
    r = Recipe.load(write(tmp_path / "r.yaml", BASE))
    r.dump(tmp_path / "resolved.yaml")
    again = Recipe.load(tmp_path / "resolved.yaml")
    assert again == r
    assert r.model.kv_heads == r.model.n_heads


def test_extends_deep_merges_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", {"model": {"d_model": 128, "n_heads": 4}, "train": {"steps": 5, "seed": 3}})
    write(tmp_path / "child.yaml", {"extends": "base.yaml", "model": {"n_layers": 7}})
    r = Recipe.load(tmp_path / "child.yaml", overrides=["train.seed=9", "optim.lr=1e-3", "optim.betas=[0.8,0.9]"])
    assert (r.model.d_model, r.model.n_layers, r.train.steps) == (128, 7, 5)
    assert r.train.seed == 9 and r.optim.lr == pytest.approx(1e-3) and r.optim.betas == [0.8, 0.9]


def test_scientific_notation_strings_are_numbers(tmp_path):
    r = Recipe.load(write(tmp_path / "r.yaml", {"train": {"tokens": "2e6"}, "optim": {"lr": "3e-4"}}))
    assert r.train.tokens == 2_000_000 and isinstance(r.train.tokens, int)
    assert r.optim.lr == pytest.approx(3e-4)


@pytest.mark.parametrize("data,expected", [
    ({"model": {"n_head": 4}}, "unknown key model.n_head (did you mean model.n_heads?)"),
    ({"trian": {}}, "unknown key trian (did you mean train?)"),
    ({"model": {"d_model": "wide"}}, "model.d_model: expected int, got 'wide'"),
    ({"model": {"n_layers": 0}}, "model.n_layers: must be positive, got 0"),
    ({"model": {"n_heads": 6, "n_kv_heads": 4, "d_model": 96}}, "model.n_heads: 6 is not divisible by model.n_kv_heads=4"),
    ({"model": {"d_model": 100, "n_heads": 3}}, "model.d_model: 100 is not divisible by model.n_heads=3"),
    ({"schedule": {"wsd": {"decay_frac": 1.5}}}, "schedule.wsd.decay_frac: must be in [0, 1], got 1.5"),
    ({"schedule": {"name": "linear"}}, "schedule.name: 'linear' is not one of"),
    ({"train": {"steps": 10, "tokens": 100}}, "set exactly one of train.steps and train.tokens"),
    ({"model": {"qk_norm": "yes"}}, "model.qk_norm: expected bool"),
])
def test_validation_errors_name_file_and_key(tmp_path, data, expected):
    merged = {**data, "train": {**BASE["train"], **data.get("train", {})}}
    if "trian" in data:
        merged = {**BASE, **data}
    path = write(tmp_path / "bad.yaml", merged)
    with pytest.raises(RecipeError) as e:
        Recipe.load(path)
    msg = str(e.value)
    assert "\n" not in msg and "bad.yaml" in msg and expected in msg


def test_override_errors(tmp_path):
    path = write(tmp_path / "r.yaml", BASE)
    with pytest.raises(RecipeError, match="--set: expected key.path=value"):
        Recipe.load(path, ["train.steps"])
    with pytest.raises(RecipeError, match="unknown key train.stpes"):
        Recipe.load(path, ["train.stpes=3"])


def test_extends_cycle_and_missing_file(tmp_path):
    write(tmp_path / "a.yaml", {"extends": "b.yaml"})
    write(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(RecipeError, match="cycle"):
        Recipe.load(tmp_path / "a.yaml")
    with pytest.raises(RecipeError, match="cannot read recipe"):
        Recipe.load(tmp_path / "nope.yaml")


def test_recipe_module_does_not_import_torch():
    code = "import sys, windtunnel.recipe; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shipped_recipes_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes"
    files = [p for p in root.glob("*.yaml")]
    assert any(p.name == "smoke.yaml" for p in files)
    for p in files:
        Recipe.load(p)


# ----------------------------------------------------------------------------- every number is checked


def number_kind(tp) -> tuple[str, bool] | None:
    """('int' | 'float', is_list) when the annotation holds a number, else None."""
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        inner = number_kind(args[0])
        return (inner[0], True) if inner else None
    if origin in (typing.Union, types.UnionType):
        return next((k for k in map(number_kind, args) if k), None)
    return {float: ("float", False), int: ("int", False)}.get(tp)


def numeric_keys(cls=Recipe, prefix=""):
    """(dotted key, 'int' | 'float', is_list) for every number field of the recipe tree."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from numeric_keys(tp, f"{prefix}{f.name}.")
        elif kind := number_kind(tp):
            yield f"{prefix}{f.name}", *kind


NUMERIC = list(numeric_keys())


def test_numeric_keys_found_and_every_bound_names_a_real_key():
    from windtunnel.validation import RECIPE_BOUNDS

    keys = {k for k, _, _ in NUMERIC}
    assert {"optim.lr", "train.threads", "model.mup.input_mult", "schedule.wsd.branches", "optim.betas"} <= keys
    assert set(RECIPE_BOUNDS) <= keys, set(RECIPE_BOUNDS) - keys  # a typo there would check nothing


@pytest.mark.parametrize("key, kind, is_list", NUMERIC, ids=[k for k, _, _ in NUMERIC])
def test_every_number_refuses_nan_inf_and_negatives(tmp_path, key, kind, is_list):
    from windtunnel.recipe import apply_override

    bad_values = ([".nan", ".inf", "-.inf"] if kind == "float" else []) + \
        (["-1"] if key != "schedule.power.b" else [])
    for bad in bad_values:
        raw = {"train": {"steps": 10}}
        apply_override(raw, f"{key}=[{bad}]" if is_list else f"{key}={bad}")
        if key in ("train.steps", "train.tokens"):
            raw["train"] = {key.split(".")[1]: raw["train"][key.split(".")[1]]}
        with pytest.raises(RecipeError) as e:
            Recipe.from_dict(raw, source="r.yaml")
        assert str(e.value).startswith(f"r.yaml: {key}"), (bad, str(e.value))


def test_a_number_field_without_a_listed_bound_must_be_non_negative_and_finite():
    from dataclasses import dataclass

    from windtunnel.validation import check_numbers

    @dataclass
    class Later:  # a field added after the bounds table was written
        new_knob: float = 1.0

    def fail(key, msg):
        raise RecipeError(f"{key}: {msg}")

    check_numbers(Later(), {}, fail)
    for value, msg in [(-0.5, "new_knob: must be >= 0, got -0.5"), (float("nan"), "new_knob: must be finite")]:
        with pytest.raises(RecipeError, match=msg):
            check_numbers(Later(value), {}, fail)
