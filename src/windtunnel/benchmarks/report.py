"""The throughput benchmark's table: ratios against the reference rows, markdown, the docs block."""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
from pathlib import Path


def add_ratios(rows: list[dict]) -> None:
    """windtunnel / reference tokens/s and peak memory, per preset and compile setting."""
    for row in rows:
        if row["impl"].startswith("windtunnel") and row["status"] == "ok":
            ref = next((r for r in rows if r["preset"] == row["preset"] and r["compile"] == row["compile"]
                        and r["impl"].startswith(("hf", "mtp1")) and r["status"] == "ok"), None)
            if ref:
                row["speed_ratio"] = row["tokens_per_s"] / ref["tokens_per_s"]
                if row.get("peak_mem_gib") and ref.get("peak_mem_gib"):
                    row["mem_ratio"] = row["peak_mem_gib"] / ref["peak_mem_gib"]


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    head = ("| preset | impl | compile | B×T | params (M) | tokens/s | TFLOP/s | MFU | peak mem (GiB) "
            "| speed vs ref | mem vs ref |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['preset']} | {r['impl']} | {'yes' if r['compile'] else 'no'} "
                         f"| {r['status']}: {r.get('reason', '')} |||||||")
            continue
        lines.append(
            f"| {r['preset']} | {r['impl']} | {'yes' if r['compile'] else 'no'} | {r['batch']}×{r['seq']} "
            f"| {r['params_m']:.1f} | {r['tokens_per_s']:,.0f} | {r['tflops']:.3g} | {_fmt(r['mfu'], '.1%')} "
            f"| {_fmt(r['peak_mem_gib'], '.2f')} | {_fmt(r.get('speed_ratio'), '.2f')} "
            f"| {_fmt(r.get('mem_ratio'), '.2f')} |")
    return "\n".join(lines)


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def report(rows: list[dict], device: str, command: str) -> str:
    import torch
    import transformers

    threads = f", torch threads: {torch.get_num_threads()}" if device == "cpu" else ""
    return (f"{device_name(device)}{threads}; torch {torch.__version__}, transformers "
            f"{transformers.__version__}; {datetime.date.today().isoformat()}.\n"
            f"Command: `{command}`\n\n{table(rows)}\n")


def write_docs(path: Path, key: str, body: str) -> None:
    """Replace the block between `<!-- bench:KEY:begin/end -->` markers (appended when absent)."""
    begin, end = f"<!-- bench:{key}:begin -->", f"<!-- bench:{key}:end -->"
    block = f"{begin}\n{body}{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    path.write_text(text)


def summary_line(row: dict) -> str:
    head = f"{row['preset']} {row['impl']}{' compiled' if row['compile'] else ''}:"
    if row["status"] != "ok":
        return f"{head} {row['status']}: {row.get('reason', '')}"
    mem = _fmt(row["peak_mem_gib"], ".2f")
    return (f"{head} {row['tokens_per_s']:,.0f} tok/s, {row['tflops']:.3g} TFLOP/s, MFU {_fmt(row['mfu'], '.1%')}, "
            f"peak {mem} GiB, loss {row['loss']:.3f}")
