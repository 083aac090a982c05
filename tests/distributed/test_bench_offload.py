"""windtunnel.benchmarks.offload (scripts/bench_offload.py): bisection, the markdown section, and a tiny real CPU run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts/bench_offload.py"


@pytest.fixture(scope="module")
def bench():
    from windtunnel.benchmarks import offload

    return offload


@pytest.mark.parametrize("limit, hi", [(5, 8), (0, 8), (8, 8), (1, 1), (37, 64)])
def test_bisection_finds_the_largest_fitting_size(bench, limit, hi):
    tried = []

    def fits(n):
        tried.append(n)
        return n <= limit, {"n": n}

    best, info = bench.largest_fitting(fits, hi)
    assert best == min(limit, hi) and (info == {"n": best} if best else info is None)
    assert len(tried) <= hi.bit_length() + 1 and len(set(tried)) == len(tried)


def test_section_is_replaced_between_markers(bench, tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text("# Benchmarks\n\nother text\n")
    bench.write_section(doc, "first\n")
    bench.write_section(doc, "second\n")
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nother text\n") and "second" in text and "first" not in text
    assert text.count(bench.BEGIN) == 1


def test_table_rows(bench):
    args = bench.parse_args(["--cpu"])
    info = {"params": 2_500_000, "d_model": 64, "tokens_per_s": 1234.5, "device_peak_gb": None,
            "host_peak_gb": 1.25, "optimizer_share": 0.31}
    text = bench.table({"zero2_cpu": (4, info), "none": (0, None)}, args)
    assert "| zero2_cpu | 2.50M | 4 x 64 | 1,234 | - | 1.2 | 31% |" in text
    assert "| none | none fits (up to 4 layers tried)" in text


@pytest.mark.slow
def test_dry_run_plans_every_config(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--dry-run", "--nvme-path", str(tmp_path),
                           "--configs", "none,zero2_cpu,zero3_cpu,zero3_nvme"],
                          capture_output=True, text=True, check=True)
    plans = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [p["config"] for p in plans] == ["none", "zero2_cpu", "zero3_cpu", "zero3_nvme"]
    assert plans[0]["zero_optimization"] is None
    assert plans[3]["zero_optimization"]["offload_param"]["nvme_path"] == str(tmp_path)


@pytest.mark.slow
def test_tiny_cpu_run_writes_the_table(launch_env, tmp_path):
    out = tmp_path / "bench.md"
    subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--configs", "zero2_cpu", "--layers-max", "1",
                    "--steps", "2", "--out", str(out)], env=launch_env, check=True, capture_output=True, text=True)
    row = next(line for line in out.read_text().splitlines() if line.startswith("| zero2_cpu"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "1 x 16" and float(cells[3].replace(",", "")) > 0 and cells[6].endswith("%")
