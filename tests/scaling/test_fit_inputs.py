"""`windtunnel fit` on awkward input (issue 11 D): every case is either refused with one line (exit 2)
or fitted with what was dropped or chosen said in the text output."""
import json

import pytest


from .conftest import grid_points, run_fit


def write_csv(path, rows, header="N,D,loss", prefix=""):
    path.write_text(prefix + header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("windtunnel fit: error:"), err
    for f in fragments:
        assert f in err, err
    return err


@pytest.fixture
def grid_csv(tmp_path):
    return write_csv(tmp_path / "grid.csv", zip(*grid_points()))


def test_a_single_point_is_refused(tmp_path, capsys):
    path = write_csv(tmp_path / "one.csv", [(1e8, 2e9, 3.1)])
    assert run_fit([str(path), "--bootstrap", "20"]) == 2
    one_line_error(capsys, "1 distinct (N, D) point(s) for 5 parameters")
    assert run_fit([str(path), "--law", "isoflop", "--bootstrap", "0"]) == 2


def test_dropped_and_duplicate_rows_are_reported_in_the_text(tmp_path, capsys):
    rows = list(zip(*grid_points()))
    bad = [(1e8, 2e9, "nan"), (1e8, "", 3.0), (-1e8, 2e9, 3.0), (1e8, 0, 3.0)]
    path = write_csv(tmp_path / "g.csv", rows + rows[:3] + bad)
    assert run_fit([str(path), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "g.csv: 2 rows dropped: a missing or non-finite (NaN, inf) value in N/loss/D" in out
    assert "g.csv: 2 rows dropped: a zero or negative value in N/loss/D" in out
    assert "33 runs reduced to 30 (N, D) cells by best loss (3 exact duplicate rows collapsed)" in out


def test_repeated_where_on_one_column_is_an_or(shared_data, capsys, tmp_path):
    src = str(shared_data / "porian_resolving" / "isoflop_runs.csv")
    common = [src, "--columns", "N=N,D=T_tokens,C=flops", "--law", "isoflop", "--bootstrap", "0"]
    counts = {}
    for name, where in {"a": ["rw|tuned|short|const|standard|val"], "b": ["owt2|tuned|short|const|standard|val"],
                        "ab": ["rw|tuned|short|const|standard|val", "owt2|tuned|short|const|standard|val"]}.items():
        args = common + [a for w in where for a in ("--where", f"config_id={w}")] + ["--json", str(tmp_path / name)]
        assert run_fit(args) == 0
        note = json.loads((tmp_path / name).read_text())["data"]["notes"][0]  # "...: kept K of 1745 rows (...)"
        counts[name] = int(note.split("kept ")[1].split(" of")[0])
    assert counts["ab"] == counts["a"] + counts["b"] and counts["a"] > 0 and counts["b"] > 0
    # two datasets pooled into one law: said, with the column that separates them
    assert "dataset (2: owt2, rw)" in capsys.readouterr().out


def test_bom_header_is_recognised(tmp_path, capsys):
    path = write_csv(tmp_path / "bom.csv", zip(*grid_points()), prefix="\ufeff")
    assert run_fit([str(path), "--bootstrap", "0"]) == 0


def test_decode_and_os_errors_name_the_file_and_the_flag(tmp_path, capsys, grid_csv):
    png = tmp_path / "notcsv.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    assert run_fit([str(png)]) == 2
    one_line_error(capsys, "notcsv.png", "not a UTF-8 text CSV")
    assert run_fit([str(grid_csv), "--bootstrap", "0", "--json", str(tmp_path)]) == 2
    one_line_error(capsys, "--json", "is a directory")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_fit([str(grid_csv), "--bootstrap", "0", "--json", str(blocker / "r.json")]) == 2
    one_line_error(capsys, "--json", "cannot write")


@pytest.mark.parametrize("flag, value", [("--neighbours", "-1"), ("--group-tolerance", "-0.5"),
                                         ("--max-extrapolation", "-5"), ("--bootstrap", "-3"),
                                         ("--huber-delta", "0"), ("--seq-len", "-2")])
def test_negative_options_are_refused(grid_csv, capsys, flag, value):
    assert run_fit([str(grid_csv), flag, value]) == 2
    one_line_error(capsys, flag)


def test_emit_without_a_base_fails_before_fitting(grid_csv, tmp_path, capsys):
    plots = tmp_path / "plots"
    assert run_fit([str(grid_csv), "--target-flops", "1e21", "--emit", str(tmp_path / "t.yaml"),
                    "--plots", str(plots)]) == 2
    one_line_error(capsys, "no run recipe.yaml found", "--base")
    assert not plots.exists()  # refused before the fit and the plots
    assert run_fit([str(grid_csv), "--target-flops", "1e21", "--emit", str(tmp_path / "t.yaml"),
                    "--base", str(tmp_path / "missing.yaml")]) == 2
    one_line_error(capsys, "--base", "missing.yaml")
