"""Two local data domains from the Python standard library, for mixture experiments without a download.

    python -m windtunnel.data.stdlib_domains --out .windtunnel_cache/stdlib_domains

writes `code.jsonl` (each module with its docstrings and comments removed) and `prose.jsonl` (the same
module's docstrings and comments: English text), one JSON line {"id", "text"} per stdlib module (tests
left out), in sorted path order, so a `files` source of a mixture can read each. Deterministic for a
given Python build: same input files, same output bytes. Modules that do not parse are skipped.
"""
from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import tokenize
from pathlib import Path

from .sources import stdlib_files, stdlib_root

DOMAINS = ("code", "prose")


def split_module(source: str) -> tuple[str, str] | None:
    """(code without docstrings and comments, the docstrings and comments as text); None if unparsable."""
    try:
        tree = ast.parse(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (SyntaxError, ValueError, tokenize.TokenError):
        return None
    lines = source.splitlines()
    drop: set[int] = set()  # 0-based line numbers of docstrings
    prose: list[tuple[int, str]] = []  # (line, text) in source order
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                first = node.body[0]
                drop.update(range(first.lineno - 1, first.end_lineno))
                prose.append((first.lineno, inspect.cleandoc(doc)))
    cut: dict[int, int] = {}  # line -> column where its comment starts
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            line, col = tok.start
            cut[line - 1] = col
            text = tok.string.lstrip("#").strip()
            if text and not text.startswith("!"):  # not a shebang or encoding line
                prose.append((line, text))
    code = []
    for i, line in enumerate(lines):
        if i in drop:
            continue
        line = line[:cut[i]].rstrip() if i in cut else line
        if line.strip():
            code.append(line)
    return "\n".join(code) + "\n", "\n".join(text for _, text in sorted(prose, key=lambda p: p[0])) + "\n"


def write_stdlib_domains(out: str | Path) -> dict[str, Path]:
    """Write code.jsonl and prose.jsonl under `out` (kept when already complete); {domain: path}."""
    out = Path(out).expanduser()
    paths = {d: out / f"{d}.jsonl" for d in DOMAINS}
    done = out / "done.json"
    if done.exists() and all(p.exists() for p in paths.values()):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    root = stdlib_root()
    counts = dict.fromkeys(DOMAINS, 0)
    with paths["code"].open("w") as code_f, paths["prose"].open("w") as prose_f:
        for path in stdlib_files(include_tests=False):
            parts = split_module(path.read_bytes().decode("utf-8", errors="replace"))
            if parts is None:
                continue
            doc_id = path.relative_to(root).as_posix()
            for f, text, name in ((code_f, parts[0], "code"), (prose_f, parts[1], "prose")):
                if text.strip():
                    f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
                    counts[name] += 1
    done.write_text(json.dumps({"documents": counts, "stdlib": str(root)}))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".windtunnel_cache/stdlib_domains")
    args = p.parse_args(argv)
    for domain, path in write_stdlib_domains(args.out).items():
        print(f"{domain}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
