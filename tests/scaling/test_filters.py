"""`--min-steps K`: points trained for fewer than K optimizer steps (D / batch) are dropped."""
import json

import numpy as np
import pytest

from windtunnel.errors import DataError, RecipeError
from windtunnel.scaling import load_points
from windtunnel.scaling.filters import drop_short_runs
from windtunnel.scaling.points import Points

from .conftest import run_fit, write_run


def short_and_long(batch=(1024.0,) * 4) -> Points:
    """Steps 100, 400, 1000, 3000 at 1,024 tokens per step (a batch of 2,048 halves a point's steps)."""
    D = np.array([100, 400, 1000, 3000]) * 1024.0
    return Points.from_arrays([1e5, 1e5, 2e5, 3e5], D, [3.0, 2.5, 2.2, 2.0], batch=list(batch))


def test_min_steps_drops_exactly_the_short_points():
    pts = short_and_long()
    kept = drop_short_runs(pts, 400)
    assert list(kept.D / 1024) == [400, 1000, 3000] and kept.labels == ["#1", "#2", "#3"]
    assert kept.notes == ["kept 3 of 4 points (steps >= 400)"] and pts.notes == []
    assert list(drop_short_runs(pts, 1001).labels) == ["#3"]


def test_min_steps_counts_steps_with_each_points_batch():
    pts = short_and_long(batch=(1024.0, 1024.0, 1024.0, 2048.0))  # the last: 1,500 steps
    assert drop_short_runs(pts, 1500).labels == ["#3"]
    with pytest.raises(DataError, match=r"--min-steps 1600: no points left \(the longest trained 1500 steps\)"):
        drop_short_runs(pts, 1600)


def test_min_steps_refuses_points_without_a_batch():
    no_batch = Points.from_arrays([1e5, 2e5], [1e6, 2e6], [3.0, 2.0])
    with pytest.raises(RecipeError, match="--min-steps 400: no point has a batch size .*--columns batch=NAME"):
        drop_short_runs(no_batch, 400)
    some = short_and_long(batch=(1024.0, np.nan, 1024.0, 1024.0))
    with pytest.raises(RecipeError, match=r"1 of 4 points have no batch size \(e.g. #1\).*--where 'batch>0'"):
        drop_short_runs(some, 400)


def test_load_points_min_steps_and_the_cli_note(tmp_path, capsys):
    root = tmp_path / "sweep"
    for i, (n, steps) in enumerate([(1e5, 50), (1e5, 800), (2e5, 800), (4e5, 800), (8e5, 900), (8e5, 2000)]):
        write_run(root, f"r{i}", n, steps * 1024.0, 1.5 + 30 / n ** 0.3 + 40 / (steps * 1024) ** 0.3, batch=1024)
    assert len(load_points(root, min_steps=800)) == 5
    assert run_fit([str(root), "--min-steps", "800", "--bootstrap", "0", "--json", str(tmp_path / "r.json")]) == 0
    assert "data: kept 5 of 6 points (steps >= 800)" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["data"]["D_range"][0] == 800 * 1024.0
    csv = tmp_path / "p.csv"
    csv.write_text("N,D,loss\n1e5,1e6,3.0\n2e5,2e6,2.5\n")
    assert run_fit([str(csv), "--min-steps", "10"]) == 2
    assert "--min-steps 10: no point has a batch size" in capsys.readouterr().err


def test_min_steps_is_refused_where_it_would_be_ignored(tmp_path, capsys):
    csv = tmp_path / "cb.csv"
    csv.write_text("N,batch,steps\n1e8,1e5,1000\n")
    for law in ("critical-batch", "mixture"):
        assert run_fit([str(csv), "--law", law, "--min-steps", "400"]) == 2
        assert f"--min-steps: not for --law {law}" in capsys.readouterr().err
