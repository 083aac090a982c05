"""docs/architecture.md: its python examples run, in order, in one namespace (tiny recipe, 1 thread)."""
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs/architecture.md"


def test_architecture_examples_run(tmp_path, monkeypatch, model_registry):
    # model_registry (tests/conftest.py) restores the registry: the doc registers "bigram"
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 4  # the shared recipe, a model, a callback, a schedule
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102  (our own documentation)
    assert {"runs/bigram", "runs/stop", "runs/isqrt"} <= {str(p.relative_to(tmp_path)) for p in tmp_path.glob("runs/*")}
