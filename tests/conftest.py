"""Session-wide test environment and the fixtures shared across test files.

Nothing may reach the network; wandb stays offline. Every test runs on one CPU thread (tiny models are
far faster that way on the shared 2-core CI box) and gets the thread count back afterwards; the
accelerate singletons a Trainer creates are reset after each test, so no state leaks between tests.
Builders are handed out as fixtures (tests run with --import-mode=importlib, so they cannot import this
file): `tiny_model_config(**model)`, `tiny_recipe(model=..., train=..., ...)`, `token_batches(...)`.
"""
import os
import sys

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_MODEL = {"vocab_size": 61, "max_seq_len": 32, "d_model": 32, "n_heads": 4, "n_layers": 2}
TINY_TRAIN = {"steps": 2, "batch_size": 2, "seq_len": 16, "threads": 1}
QUIET_LOGGING = {"log_every": 1, "progress": False}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test, restored afterwards (torch is imported only by tests that use it)."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(1)
    yield
    torch = sys.modules.get("torch")
    if torch and before:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def reset_accelerate_state():
    """A Trainer leaves accelerate's process-wide singletons set; clear them for the next test."""
    yield
    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(reset_partial_state=True)
        state.GradientState._reset_state()


@pytest.fixture
def model_registry():
    """`register_model` for this test only: the default registry is restored afterwards."""
    from windtunnel.models import registry

    saved = dict(registry.BUILDERS)
    yield registry.register_model
    registry.BUILDERS.clear()
    registry.BUILDERS.update(saved)


def _merge(base: dict, over: dict) -> dict:
    from windtunnel.recipe import deep_merge

    return deep_merge(base, over)


@pytest.fixture
def tiny_recipe():
    """tiny_recipe(model={...}, train={...}, **sections) -> a validated Recipe: a 2-layer d=32 model,
    2 steps of 2x16 tokens on one thread, quiet logging; given sections are deep-merged over these."""
    from windtunnel.recipe import Recipe

    def make(model: dict | None = None, train: dict | None = None, **sections) -> Recipe:
        raw = {"model": _merge(TINY_MODEL, model or {}), "train": {**TINY_TRAIN, **(train or {})},
               "logging": {**QUIET_LOGGING, **sections.pop("logging", {})}, **sections}
        return Recipe.from_dict(raw)

    return make


@pytest.fixture
def tiny_model_config(tiny_recipe):
    """tiny_model_config(**model) -> the ModelConfig of tiny_recipe(model=model) (vocab 61, d=32, 2 layers)."""
    return lambda **model: tiny_recipe(model=model).model


@pytest.fixture
def token_batches():
    """token_batches(vocab, n=1, batch=2, seq_len=16, seed=0) -> n seeded [batch, seq_len + 1] id tensors
    (inputs and shifted targets in one: x = b[:, :-1], y = b[:, 1:])."""
    import torch

    def make(vocab: int, n: int = 1, batch: int = 2, seq_len: int = 16, seed: int = 0) -> list:
        g = torch.Generator().manual_seed(seed)
        return [torch.randint(0, vocab, (batch, seq_len + 1), generator=g) for _ in range(n)]

    return make


@pytest.fixture
def word_corpus(tmp_path):
    """word_corpus(n_docs, words) -> a folder of n_docs text files of `words` space-separated words each,
    drawn from 17 distinct ones (enough structure for a tokenizer and a few training steps)."""
    def make(n_docs: int = 12, words: int = 300):
        root = tmp_path / "corpus"
        root.mkdir()
        for i in range(n_docs):
            (root / f"d{i}.txt").write_text(" ".join(f"word{(i * j) % 17}" for j in range(words)))
        return root
    return make


@pytest.fixture
def crash_at():
    """crash_at(step) -> a callback that raises KeyboardInterrupt once the run reaches `step` (after that
    step's checkpoint would have been due): a kill in the middle of a run, for resume tests."""
    from windtunnel import Callback

    class CrashAt(Callback):
        def __init__(self, step: int):
            self.step = step

        def post_step(self, state) -> None:
            if state.step == self.step:
                raise KeyboardInterrupt

    return CrashAt
