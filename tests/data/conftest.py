"""Shared helpers for the data-pipeline tests: small recipes and corpora written under tmp_path.
(The root tests/conftest.py keeps the Hub offline before `datasets` is imported.)"""
from pathlib import Path

import pytest

from windtunnel.recipe import Recipe


@pytest.fixture
def make_recipe(tmp_path):
    """Recipe with a tmp cache dir; sections given as dicts override the small defaults."""

    def make(data: dict | None = None, tokenizer: dict | None = None, train: dict | None = None) -> Recipe:
        return Recipe.from_dict({
            "data": {"cache_dir": str(tmp_path / "cache"), **(data or {})},
            "tokenizer": tokenizer or {},
            "train": {"steps": 1, "seq_len": 16, "batch_size": 2, "eval_batches": 2, **(train or {})},
        })

    return make


@pytest.fixture
def text_dir(tmp_path) -> Path:
    """A folder of 12 small text documents with distinct, recognisable contents."""
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(12):
        (root / f"doc{i:02d}.txt").write_text(f"document {i}: " + f"word{i} " * (10 + i) + "ünïcødé ✓\n")
    return root
