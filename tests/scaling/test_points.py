import json

import numpy as np
import pytest

from windtunnel.errors import DataError, RecipeError
from windtunnel.scaling import collect_sweep, load_points, read_csv
from windtunnel.scaling.points import Points, parse_columns

from .conftest import write_run


def test_sweep_collects_runs_and_decay_branches(sweep_dir):
    pts = collect_sweep(sweep_dir)
    assert len(pts) == 30  # 18 runs + 12 WSD branches; the failed run is skipped
    assert any("crashed" in s and "failed" in s for s in pts.skipped)
    branch = [i for i, label in enumerate(pts.labels) if "@" in label]
    assert len(branch) == 12
    i = branch[0]
    run = pts.labels[i].split("@")[0]
    j = pts.labels.index(run)
    assert pts.N[i] == pts.N[j] and pts.D[i] == pts.D[j] / 2 and pts.lr[i] == pts.lr[j]
    assert set(pts.recipes) == {label for label in pts.labels if "@" not in label}


def test_sweep_n_kind_picks_the_summary_key(sweep_dir):
    ne = collect_sweep(sweep_dir, "non_embedding")
    total = collect_sweep(sweep_dir, "total")
    assert np.allclose(total.N, 1.2 * ne.N)
    with pytest.raises(RecipeError, match="--n-kind"):
        collect_sweep(sweep_dir, "embedding")


def test_sweep_without_completed_runs_is_an_error(tmp_path):
    write_run(tmp_path, "a", 1e6, 1e8, 3.0, status="failed")
    with pytest.raises(DataError, match="no completed run"):
        collect_sweep(tmp_path)


def test_unreadable_summary_is_skipped_with_reason(sweep_dir):
    (sweep_dir / "broken").mkdir()
    (sweep_dir / "broken" / "summary.json").write_text("{not json")
    pts = collect_sweep(sweep_dir)
    assert any(s.startswith("broken") and "unreadable" in s for s in pts.skipped)


def test_csv_column_mapping_and_D_from_flops(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("Model Size,Training FLOP,final,cfg\n1e8,6e17,3.1,a\n2e8,2.4e18,2.9,a\n4e8,,2.8,a\n1e8,6e17,9,b\n")
    pts = read_csv(path, parse_columns("N=Model Size,C=Training FLOP,loss=final"), where={"cfg": "a"})
    assert len(pts) == 2  # the row without FLOPs is dropped, the cfg=b row filtered out
    assert np.allclose(pts.D, [1e9, 2e9])  # D = C / 6N
    assert np.allclose(pts.loss, [3.1, 2.9])
    assert "1 rows" in pts.skipped[0]


def test_csv_default_column_names(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("params,tokens,val_loss,lr\n1e8,2e9,3.0,0.001\n2e8,4e9,2.8,0.002\n")
    pts = load_points(path)
    assert np.allclose(pts.C, 6 * pts.N * pts.D) and np.allclose(pts.lr, [1e-3, 2e-3])
    assert np.isnan(pts.batch).all()


@pytest.mark.parametrize("spec, content, error, message", [
    ("N=size", "params,tokens,loss\n1,2,3\n", RecipeError, "no such column"),
    ("X=params", "params,tokens,loss\n1,2,3\n", RecipeError, "bad item"),
    ("", "params,loss\n1,3\n", DataError, "tokens \\(D\\) or FLOPs"),
    ("", "params,tokens,loss\n1,2,abc\n", DataError, "line 2, column 'loss'"),
])
def test_csv_errors_name_the_problem(tmp_path, spec, content, error, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(error, match=message):
        read_csv(path, parse_columns(spec))


def test_missing_source_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no such sweep directory or CSV"):
        load_points(tmp_path / "nope")


def test_best_per_cell_keeps_the_lowest_loss():
    pts = Points.from_arrays(N=[1e6, 1e6, 1e6, 2e6], D=[1e8, 1e8, 1e8, 1e8], loss=[3.0, 2.5, 2.7, 2.4],
                             lr=[1e-3, 3e-3, 1e-2, 1e-3])
    best = pts.best_per_cell()
    assert len(best) == 2 and sorted(best.loss) == [2.4, 2.5] and 3e-3 in best.lr
    assert pts.has_hparam_axes() and not best.has_hparam_axes()


def test_from_arrays_rejects_bad_values():
    with pytest.raises(DataError, match="loss: all values must be finite and positive"):
        Points.from_arrays(N=[1, 2], D=[1, 2], loss=[1, -1])
    with pytest.raises(DataError, match="D: has 1 values but N has 2"):
        Points.from_arrays(N=[1, 2], D=[1], loss=[1, 1])


def test_summary_is_json_serialisable(sweep_dir):
    json.dumps(collect_sweep(sweep_dir).summary())
