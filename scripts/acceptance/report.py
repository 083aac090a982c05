"""results.md: the targets next to what was measured (pass/fail), each step's status, and the blocks that
go into docs/benchmarks.md. Rewritten after every step, so it is complete up to the last step that ran."""
from __future__ import annotations

import json
import re
from pathlib import Path

from .plan import MEM_RATIO, MFU_TARGETS, MTP_MFU_RATIO

# (step, check name, target in words): the performance targets, listed even while owed
TARGETS = [(f"bench_{p}", f"MFU {p}", f">= {t:.0%}") for p, t in MFU_TARGETS.items()] + [
    ("bench_mtp4", "MFU mtp4 / mtp1", f">= {MTP_MFU_RATIO}"),
    *[(f"bench_{p}", f"peak memory {p} vs HF compiled", f"<= {MEM_RATIO}") for p in ("125m", "350m", "1b", "moe")],
]
BEGIN, END = "<!-- gpu_acceptance:begin -->", "<!-- gpu_acceptance:end -->"
BENCH_MARKERS = ("<!-- bench:gpu:begin -->", "<!-- bench:gpu:end -->")  # windtunnel bench --docs on a GPU
OFFLOAD_MARKERS = ("<!-- bench_offload:begin -->", "<!-- bench_offload:end -->")  # scripts/bench_offload.py


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))[:160].replace("|", "/")
    return str(v).replace("|", "/")[:160]


def _verdict(ok) -> str:
    return {True: "pass", False: "**FAIL**", None: "n/a"}[ok]


def targets_table(records: list[dict]) -> str:
    by_step = {r["step"]: r for r in records}
    lines = ["| target | goal | measured | result |", "|---|---|---|---|"]
    for step, name, goal in TARGETS:
        rec = by_step.get(step)
        check = next((c for c in (rec or {}).get("checks", []) if c["name"] == name), None)
        if check:
            lines.append(f"| {name} | {goal} | {_fmt(check['measured'])} | {_verdict(check['pass'])} |")
        else:
            why = f"{step} {rec['status']}" + (f": {rec['reason']}" if rec.get("reason") else "") if rec else f"{step} not run"
            lines.append(f"| {name} | {goal} | owed ({_fmt(why)}) | owed |")
    return "\n".join(lines)


def steps_table(records: list[dict]) -> str:
    lines = ["| step | group | status | wall s | CPU s | checks | reason |", "|---|---|---|---|---|---|---|"]
    for r in records:
        checks = ", ".join(f"{c['name']}: {_verdict(c['pass'])}" for c in r.get("checks") or [])
        lines.append(f"| {r['step']} | {r['group']} | {r['status']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {checks or '–'} "
                     f"| {_fmt(r.get('reason'))} |")
    return "\n".join(lines)


def checks_table(records: list[dict]) -> str:
    lines = ["| step | check | measured | target | result |", "|---|---|---|---|---|"]
    for r in records:
        for c in r.get("checks") or []:
            lines.append(f"| {r['step']} | {c['name']} | {_fmt(c['measured'])} | {c['target']} | {_verdict(c['pass'])} |")
    return "\n".join(lines)


def bench_table(records: list[dict]) -> str:
    """Every `windtunnel bench` row measured, in one table (the GPU block of docs/benchmarks.md)."""
    rows = [row for r in records for row in (r.get("figures") or {}).get("rows", [])]
    if not rows:
        return "(no bench rows measured)"
    lines = ["| preset | impl | compile | B×T | tokens/s | MFU | peak mem (GiB) | speed vs ref | mem vs ref |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row.get("status") != "ok":
            lines.append(f"| {row.get('preset')} | {row.get('impl')} | {row.get('compile')} | {row.get('status')}: "
                         f"{_fmt(row.get('reason'))} ||||||")
            continue
        mfu = "–" if row.get("mfu") is None else f"{row['mfu']:.1%}"
        lines.append(f"| {row['preset']} | {row['impl']} | {'yes' if row['compile'] else 'no'} | {row['batch']}×{row['seq']} "
                     f"| {row['tokens_per_s']:,.0f} | {mfu} | {_fmt(row.get('peak_mem_gib'))} "
                     f"| {_fmt(row.get('speed_ratio'))} | {_fmt(row.get('mem_ratio'))} |")
    return "\n".join(lines)


def block(records: list[dict], args) -> str:
    mode = "CPU dry run (tiny shapes: figures prove the plan, not the speed)" if args.dry_run else "GPU"
    device = next((r["figures"].get("device") for r in records if r["step"] == "env" and r.get("figures")), None)
    spent = max((r["started_s"] + r["wall_s"] for r in records), default=0.0)
    offload = next((r["figures"]["table"] for r in records if "table" in (r.get("figures") or {})), None)
    offload = f"\nOffload capacity (bench_offload.py, cut to fit):\n\n{strip_markers(offload)}\n" if offload else ""
    return (f"{mode}; device: {device or 'unknown'}; budget {args.budget:.0f} s, used {spent:.0f} s.\n\n"
            f"Targets:\n\n{targets_table(records)}\n\nSteps:\n\n{steps_table(records)}\n\n"
            f"Throughput rows:\n\n{bench_table(records)}\n{offload}")


def strip_markers(text: str) -> str:
    """bench_offload.py's table without its own <!-- --> markers (they would nest inside ours)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("<!--")).strip()


def doc_blocks(records: list[dict], args) -> dict[tuple[str, str], str]:
    """Marker pair -> body for docs/benchmarks.md: the acceptance block always; on the GPU also the blocks
    `windtunnel bench --docs` and bench_offload.py fill (all rows of this run / the offload table)."""
    blocks = {(BEGIN, END): block(records, args)}
    if not args.dry_run:
        device = next((r["figures"].get("device") for r in records if r["step"] == "env" and r.get("figures")), "GPU")
        if any((r.get("figures") or {}).get("rows") for r in records):
            blocks[BENCH_MARKERS] = f"{device}; scripts/gpu_acceptance.py.\n\n{bench_table(records)}\n"
        offload = next((r["figures"]["table"] for r in records if "table" in (r.get("figures") or {})), None)
        if offload:
            blocks[OFFLOAD_MARKERS] = f"{device}; scripts/gpu_acceptance.py (cut to fit).\n\n{strip_markers(offload)}\n"
    return blocks


def render(records: list[dict], args) -> str:
    figures = "\n".join(f"- **{r['step']}**: {_fmt_figures(r.get('figures') or {})}" for r in records)
    pasted = "\n\n".join(f"{b}\n{body}{e}" for (b, e), body in doc_blocks(records, args).items())
    return (f"# GPU acceptance results\n\n{block(records, args)}\nChecks:\n\n{checks_table(records)}\n\n"
            f"Figures:\n\n{figures}\n\nFor docs/benchmarks.md (each block replaces the one between the same "
            f"markers there):\n\n{pasted}\n")


def _fmt_figures(figures: dict) -> str:
    return "; ".join(f"{k} = {_fmt(v)}" for k, v in figures.items() if k not in ("rows", "table")) or "–"


def write_docs(path: Path, records: list[dict], args) -> None:
    """Replace each of this run's blocks in `path` (appended when its markers are absent)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    for (begin, end), body in doc_blocks(records, args).items():
        full = f"{begin}\n{body}{end}"
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
        text = pattern.sub(lambda _: full, text) if pattern.search(text) else f"{text.rstrip()}\n\n{full}\n"
    path.write_text(text)


def summary_lines(records: list[dict]) -> list[str]:
    """The short table printed last (the device tool returns the end of the output)."""
    out = ["", "step                 status    wall s   cpu s  reason"]
    for r in records:
        out.append(f"{r['step']:<20} {r['status']:<9} {r['wall_s']:>6.1f} {r['cpu_s']:>7.1f}  {r.get('reason') or ''}")
    out += ["", "target                               goal      measured      result"]
    by_step = {r["step"]: r for r in records}
    for step, name, goal in TARGETS:
        check = next((c for c in (by_step.get(step) or {}).get("checks", []) if c["name"] == name), None)
        measured = _fmt(check["measured"]) if check else "owed"
        out.append(f"{name:<36} {goal:<9} {measured:<13} {_verdict(check['pass']) if check else 'owed'}")
    return out
