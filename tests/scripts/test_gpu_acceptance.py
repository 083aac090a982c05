"""scripts/gpu_acceptance.py: the CPU dry run of the GPU plan, its budget cut-off, and the report logic."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts/gpu_acceptance.py"
sys.path.insert(0, str(ROOT / "scripts"))

from acceptance import report  # noqa: E402
from acceptance.context import read_partial  # noqa: E402
from acceptance.plan import PLAN  # noqa: E402

FIELDS = {"step", "group", "title", "mode", "status", "reason", "started_s", "wall_s", "cpu_s", "budget_left_s",
          "figures", "checks", "notes"}
STATUSES = {"ok", "fail", "error", "timeout", "skipped"}
# figures each step must leave when it runs in the dry run
EXPECTED = {
    "env": {"packages", "device"},
    "step_checks": {"graph_breaks_dense", "graph_breaks_moe", "graph_breaks_mtp4", "host_syncs_dense",
                    "host_syncs_moe", "host_syncs_mtp4"},
    "moe_grouped": {"native_out_rel_err", "native_grad_rel_err", "fallback_out_rel_err"},
    "train": {"losses", "tokens_per_s", "compile_warmup_s"},
    "resume": {"max_abs_loss_diff"},
    "export": {"fp32_top1_agreement", "hf_class"},
    "bench_125m": {"rows"}, "bench_moe": {"rows"}, "bench_mtp4": {"rows"},
    "dist_ddp": {"losses"},
    "compile_warmup": {"blocks_default_first_step_s", "model_default_first_step_s"},
    "offload_capacity": {"table"},
    "mup_transfer": {"best_lr"},
}
DRY_RUN_SKIPS = {"dist_zero2_offload": "DeepSpeed", "dist_zero3": "DeepSpeed", "dist_fsdp2": "FSDP2",
                 "bench_350m": "dry run", "bench_1b": "dry run", "bench_eager": "dry run"}


def dry_run(tmp_path: Path, *args: str) -> tuple[list[dict], str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"),
               TORCH_EXTENSIONS_DIR=str(tmp_path / "no_ops"))  # DeepSpeed ops unbuilt: its steps skip
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--work",
                           str(tmp_path / "work"), *args], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for rec in records:
        assert set(rec) == FIELDS and rec["status"] in STATUSES and rec["mode"] == "dry-run", rec
    return records, (out / "results.md").read_text()


@pytest.mark.slow
def test_dry_run_covers_the_whole_plan(tmp_path):
    """Every step of the GPU plan runs (or is skipped for a stated CPU reason) and leaves its figures.
    About 1.5-2 min on 2 cores."""
    records, md = dry_run(tmp_path, "--budget", "900")
    assert [r["step"] for r in records] == [s.name for s in PLAN]
    for rec in records:
        if rec["step"] in DRY_RUN_SKIPS:
            assert rec["status"] == "skipped" and DRY_RUN_SKIPS[rec["step"]] in rec["reason"], rec
            continue
        assert rec["status"] == "ok", rec
        assert EXPECTED[rec["step"]] <= rec["figures"].keys(), (rec["step"], rec["figures"].keys())
        assert all(c["pass"] is not False for c in rec["checks"])
    steps = {r["step"]: r for r in records}
    assert steps["step_checks"]["figures"]["graph_breaks_dense"]["breaks"] == 0
    assert steps["resume"]["figures"]["max_abs_loss_diff"] == 0  # CPU fp32: exact
    assert "| MFU 125m | >= 50% |" in md and "<!-- gpu_acceptance:begin -->" in md


def test_budget_cut_off_keeps_earlier_figures_and_records_skips(tmp_path):
    """A budget too small for the plan: the first step's figures are kept, the step running when the
    budget ends is cut off (or finishes), and every later step is recorded as skipped with the reason."""
    chosen = ["env", "step_checks", "train", "resume", "bench_125m"]
    records, md = dry_run(tmp_path, "--budget", "12", "--only", ",".join(chosen))
    assert [r["step"] for r in records] == chosen
    env = records[0]
    assert env["status"] == "ok" and EXPECTED["env"] <= env["figures"].keys()
    assert records[-1]["status"] == "skipped" and records[-1]["reason"].startswith("budget:")
    assert records[-2]["status"] == "skipped" and records[-2]["reason"]  # budget, or needs train
    for rec in records[1:]:
        assert rec["status"] in ("ok", "timeout", "skipped") and (rec["status"] == "ok" or rec["reason"])
    assert "owed" in md


# ----------------------------------------------------------------------------- report logic (in-process)


def test_partial_records_survive_a_cut_off_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"figure": "a", "value": 1}\n{"check": "c", "measured": 2, "target": "<= 3", "pass": true}\n'
                    '{"figure": "b", "val')  # killed mid-write
    got = read_partial(path)
    assert got["figures"] == {"a": 1} and got["checks"][0]["pass"] is True and got["skip"] is None


def test_targets_table_marks_owed_failed_and_passed():
    records = [{"step": "bench_125m", "status": "ok", "reason": None,
                "checks": [{"name": "MFU 125m", "measured": 0.41, "target": ">= 50%", "pass": False}]},
               {"step": "bench_moe", "status": "skipped", "reason": "budget: needs ~80 s, 3 s left", "checks": []}]
    table = report.targets_table(records)
    assert "| MFU 125m | >= 50% | 0.41 | **FAIL** |" in table
    assert "| MFU moe | >= 35% | owed (bench_moe skipped: budget: needs ~80 s, 3 s left) | owed |" in table
    assert "| MFU 1b | >= 55% | owed (bench_1b not run) | owed |" in table


def test_docs_block_is_replaced_in_place(tmp_path):
    class Args:
        dry_run, budget = True, 60.0

    doc = tmp_path / "b.md"
    doc.write_text(f"# B\n\nbefore\n\n{report.BEGIN}\nold\n{report.END}\n\nafter\n")
    report.write_docs(doc, [], Args)
    text = doc.read_text()
    assert "old" not in text and text.count(report.BEGIN) == 1 and text.endswith("after\n")
    assert "| MFU 125m | >= 50% | owed" in text


def test_status_names_the_error_and_the_skip():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    part = {"checks": [], "notes": ["error: RuntimeError: windtunnel train exited 1"], "skip": None}
    assert driver.status_of(1, False, dict(part)) == ("error", "error: RuntimeError: windtunnel train exited 1")
    assert driver.status_of(0, False, dict(part, skip="no CUDA")) == ("skipped", "no CUDA")
    assert driver.status_of(-15, True, dict(part))[0] == "timeout"
    failed = dict(part, notes=[], checks=[{"name": "x", "measured": 1, "target": "0", "pass": False}])
    assert driver.status_of(0, False, failed) == ("fail", "a check failed")


def test_gpu_run_also_fills_the_bench_and_offload_blocks(tmp_path):
    class Args:
        dry_run, budget = False, 540.0

    row = {"preset": "125m", "impl": "windtunnel", "compile": True, "status": "ok", "batch": 32, "seq": 2048,
           "tokens_per_s": 500000.0, "mfu": 0.52, "peak_mem_gib": 20.0, "speed_ratio": 1.4, "mem_ratio": 0.6}
    records = [{"step": "env", "status": "ok", "figures": {"device": "NVIDIA H200"}, "checks": [], "started_s": 0,
                "wall_s": 1, "cpu_s": 1, "group": "setup", "reason": None},
               {"step": "bench_125m", "status": "ok", "figures": {"rows": [row]}, "checks": [], "started_s": 1,
                "wall_s": 90, "cpu_s": 80, "group": "b", "reason": None}]
    doc = tmp_path / "b.md"
    doc.write_text("<!-- bench:gpu:begin -->\n(not measured yet)\n<!-- bench:gpu:end -->\n"
                   "<!-- bench_offload:begin -->\n(not measured yet)\n<!-- bench_offload:end -->\n")
    report.write_docs(doc, records, Args)
    text = doc.read_text()
    assert "| 125m | windtunnel | yes | 32×2048 | 500,000 | 52.0% | 20 | 1.4 | 0.6 |" in text
    assert "NVIDIA H200" in text and text.count("(not measured yet)") == 1  # no offload table measured
    assert report.BEGIN in text
