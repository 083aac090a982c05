"""Data mixtures: weights, decay-phase mix, purity/resume, repetition accounting, HF streaming sources."""
import json
import warnings

import numpy as np
import pytest
import torch

from windtunnel.data import build_data, build_tokenizer
from windtunnel.data.mixture import MixtureSampler, decay_phase, source_counts
from windtunnel.data.sampler import PackedSequences
from windtunnel.recipe import Recipe, RecipeError

L = 8
SIZES = {"a": 40, "b": 25, "c": 10}  # sequences per source


def _recipe(weights: dict, decay_mix: dict | None = None, steps: int = 50, batch: int = 4, **data) -> Recipe:
    sources = [{"name": n, "source": "files", "paths": ["unused"], "weight": w} for n, w in weights.items()]
    return Recipe.from_dict({
        "data": {"sources": sources, **data},
        "schedule": {"name": "wsd", "warmup_frac": 0.0, "wsd": {"decay_frac": 0.2, "decay_mix": decay_mix}},
        "train": {"steps": steps, "batch_size": batch, "seq_len": L},
    })


def _sampler(recipe: Recipe) -> MixtureSampler:
    """Sources whose tokens identify them: source k's sequences start at multiples of L from k * 10_000."""
    names = [s.name for s in recipe.data.sources]
    sources = [PackedSequences([np.arange(k * 10_000, k * 10_000 + SIZES[n] * L + 1, dtype=np.uint32)], L,
                               recipe.train.batch_size) for k, n in enumerate(names)]
    return MixtureSampler(names, sources, recipe)


def _rows(sampler: MixtureSampler, steps, world: int = 1) -> list[tuple[int, int]]:
    """(source index, sequence index) of every row of the given steps, all ranks."""
    out = []
    for step in steps:
        for rank in range(world):
            first = sampler.batch(step, 0, rank, world)[:, 0].tolist()
            out += [(t // 10_000, (t % 10_000) // L) for t in first]
    return out


def test_counts_are_exact_and_each_slot_has_one_source():
    w = np.array([0.5, 0.3, 0.2])
    ends = np.arange(0, 1001)
    counts = source_counts(ends, w, w, 0)
    assert (counts.sum(axis=1) == ends).all()
    assert (np.abs(counts - ends[:, None] * w) <= 1).all()  # within one slot of weight * slots, everywhere
    assert set(np.diff(counts, axis=0).sum(axis=1)) == {1} and np.diff(counts, axis=0).min() == 0


def test_source_frequencies_match_weights_and_sources_read_without_repeats():
    s = _sampler(_recipe({"a": 0.6, "b": 0.3, "c": 0.1}))
    rows = _rows(s, range(25))  # 100 slots, before the decay (which has the same mix here anyway)
    freq = np.bincount([src for src, _ in rows], minlength=3) / len(rows)
    assert np.allclose(freq, [0.6, 0.3, 0.1], atol=0.011)
    a_seqs = [seq for src, seq in rows if src == 0]
    assert len(a_seqs) == len(set(a_seqs)) == 60 or len(set(a_seqs[:40])) == 40  # one epoch of a: no repeats
    assert len(set(a_seqs[:40])) == 40


@pytest.mark.filterwarnings("ignore:data source")
def test_zero_weight_source_is_never_read_and_data_mix_overrides_weights():
    s = _sampler(_recipe({"a": 1.0, "b": 1.0, "c": 1.0}, mix={"a": 1.0, "c": 3.0}))
    assert s.stable == {"a": 0.25, "b": 0.0, "c": 0.75}
    sources = [src for src, _ in _rows(s, range(10))]
    assert 1 not in sources and sources.count(2) == 30


def test_decay_mix_applies_from_the_decay_start():
    recipe = _recipe({"a": 0.8, "b": 0.2}, decay_mix={"b": 1.0}, steps=50)  # decay: the last 10 steps
    s = _sampler(recipe)
    before, after = _rows(s, range(30, 40)), _rows(s, range(40, 50))
    assert {src for src, _ in after} == {1}
    assert np.mean([src == 0 for src, _ in before]) == pytest.approx(0.8, abs=0.03)
    assert s.decay_start(1) == 40
    with decay_phase(s, 20):  # a decay branch starting at step 20 reads the decay mix from there
        assert {src for src, _ in _rows(s, range(20, 25))} == {1}
    assert {src for src, _ in _rows(s, range(20, 25))} == {0, 1}  # the main run is unchanged afterwards


@pytest.mark.filterwarnings("ignore:data source")
def test_batches_are_pure_functions_of_step_rank_and_world():
    recipe = _recipe({"a": 0.5, "b": 0.3, "c": 0.2}, decay_mix={"a": 0.1, "c": 0.9})
    ordered = [_sampler(recipe).batch(s) for s in range(50)]
    resumed = _sampler(recipe)
    for step in [47, 3, 41, 0, 19, 19]:  # any order, any start: what an uninterrupted run reads
        assert torch.equal(resumed.batch(step), ordered[step])
    # two ranks of 2 rows read exactly the global slots one process with 4 rows reads
    half = _sampler(_recipe({"a": 0.5, "b": 0.3, "c": 0.2}, decay_mix={"a": 0.1, "c": 0.9}, batch=2))
    for step in [0, 39, 40, 49]:
        assert torch.equal(torch.cat([half.batch(step, 0, r, 2) for r in range(2)]), ordered[step])


def test_usage_counts_epochs_and_repetition_warns_or_is_capped():
    recipe = _recipe({"a": 0.5, "c": 0.5}, steps=50)  # 200 slots: 100 each; c has 10 sequences -> 10 epochs
    use = _sampler(recipe).usage(50)
    assert use["c"] == {"sequences": 100, "tokens": 100 * L, "epochs": 10.0} and use["a"]["epochs"] == 2.5
    with pytest.warns(UserWarning, match="'c' will be repeated 10.0 times"):
        _sampler(recipe).batch(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _sampler(_recipe({"a": 0.5, "c": 0.5}, warn_epochs=12)).batch(0)
    with pytest.raises(RecipeError, match=r"data.max_epochs: source 'c' would be read 10.00 times \(cap 4\)"):
        _sampler(_recipe({"a": 0.5, "c": 0.5}, max_epochs=4)).batch(0)


@pytest.mark.parametrize("data, message", [
    ({"mix": {"z": 1.0}}, "data.mix: unknown source 'z'"),
    ({"text_field": "body"}, "data.text_field: set it on each entry of data.sources"),
    ({"mix": {"a": 0.0}}, "data.mix: weights must be >= 0 and sum to more than 0"),
])
def test_bad_mixture_recipes_name_the_key(data, message):
    with pytest.raises(RecipeError, match=message):
        _recipe({"a": 1.0, "b": 1.0}, **data)


def test_duplicate_names_and_decay_mix_without_sources_are_refused():
    with pytest.raises(RecipeError, match="source names must be unique"):
        Recipe.from_dict({"data": {"sources": [{"name": "a"}, {"name": "a"}]}, "train": {"steps": 1}})
    with pytest.raises(RecipeError, match="schedule.wsd.decay_mix: needs data.sources"):
        Recipe.from_dict({"schedule": {"wsd": {"decay_mix": {"a": 1}}}, "train": {"steps": 1}})


def test_files_and_streaming_hf_sources_build_offline(tmp_path, monkeypatch):
    """Each source is tokenized into its own cached shards; an hf source may be a streamed local file."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    prose = tmp_path / "prose.jsonl"
    prose.write_text("".join(json.dumps({"text": f"a sentence about topic {i}. " * 4}) + "\n" for i in range(30)))
    code = tmp_path / "code"
    code.mkdir()
    for i in range(30):
        (code / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 3)
    recipe = Recipe.from_dict({
        "data": {"cache_dir": str(tmp_path / "cache"), "val_fraction": 0.2, "sources": [
            {"name": "code", "source": "files", "paths": [str(code)], "weight": 0.5},
            {"name": "prose", "source": "hf", "dataset": str(prose), "streaming": True, "weight": 0.5}]},
        "train": {"steps": 4, "seq_len": 16, "batch_size": 4, "eval_batches": 2}})
    tok = build_tokenizer(recipe)
    data = build_data(recipe, tok)
    names = data.train.source_of(0)
    assert sorted(names) == ["code", "code", "prose", "prose"]
    for name, row in zip(names, data.train.batch(0)):
        text = tok.decode(row.tolist())
        assert any(c in text for c in "*():\n") == (name == "code"), text  # prose has none of these
    assert set(data.val.sources) == {"code", "prose"} and all(v.n_seqs for v in data.val.sources.values())
    assert set(data.manifest["sources"]) == {"code", "prose"}


# ----------------------------------------------------------------------------- in a training run


@pytest.fixture
def mixture_run(tmp_path, tiny_recipe):
    """tiny_recipe for a two-source mixture (code files, prose files); decay mix all prose."""
    for name, line in (("code", "def f{i}(x):\n    return x * {i}\n"), ("prose", "A sentence about topic {i}. ")):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(20):
            (folder / f"{i}.txt").write_text(line.format(i=i) * 8)

    def make(**train):
        return tiny_recipe(model={"vocab_size": 0}, train={"steps": 6, "eval_every": 3, "eval_batches": 1, **train},
                           data={"cache_dir": str(tmp_path / "cache"), "val_fraction": 0.2, "sources": [
                               {"name": n, "source": "files", "paths": [str(tmp_path / n)]}
                               for n in ("code", "prose")]},
                           schedule={"name": "wsd", "warmup_frac": 0.0,
                                     "wsd": {"decay_frac": 0.5, "decay_mix": {"prose": 1.0}, "branches": [128]}})
    return make


def test_run_logs_per_source_losses_usage_and_branch_mix(mixture_run, tmp_path):
    from windtunnel.trainer import Trainer

    summary = Trainer(mixture_run(), out_dir=tmp_path / "run").fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss/code" in r and "branch_tokens" not in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert evals[-1]["val_loss"] == pytest.approx((evals[-1]["val_loss/code"] + evals[-1]["val_loss/prose"]) / 2)
    mix = summary["mixture"]
    assert mix["weights"] == {"code": 0.5, "prose": 0.5} and mix["decay_start_step"] == 3
    # 6 steps x 2 slots: 3 stable steps split 3/3, then 3 decay steps all prose
    assert mix["sources"]["code"]["sequences"] == 3 and mix["sources"]["prose"]["sequences"] == 9
    assert mix["sources"]["prose"]["tokens"] == 9 * 16
    assert set(summary["val_loss_by_source"]) == {"code", "prose"}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["mixture"] == mix
    (branch,) = json.loads((tmp_path / "run" / "branches.json").read_text())
    assert branch["mix"] == {"code": 0.0, "prose": 1.0} and set(branch["val_loss_by_source"]) == {"code", "prose"}


def test_resume_gives_the_uninterrupted_run(mixture_run, tmp_path):
    from windtunnel.callbacks import Callback
    from windtunnel.trainer import Trainer

    class StopAt(Callback):
        def post_step(self, state):
            state.should_stop = state.step == 4

    full = Trainer(mixture_run(ckpt_every=2), out_dir=tmp_path / "a").fit()
    Trainer(mixture_run(ckpt_every=2), out_dir=tmp_path / "b", callbacks=[StopAt()]).fit()
    resumed = Trainer(mixture_run(ckpt_every=2), out_dir=tmp_path / "b", resume=True).fit()
    assert resumed["final_val_loss"] == full["final_val_loss"]
    assert resumed["val_loss_by_source"] == full["val_loss_by_source"]
    assert resumed["mixture"] == full["mixture"]


def test_stdlib_domains_split_code_from_its_docstrings_and_comments():
    from windtunnel.data.stdlib_domains import split_module

    code, prose = split_module('"""Module doc."""\nimport os  # why os\n\n\ndef f(x):\n    """Say hi.\n\n    More."""\n'
                               '    # a comment\n    return x + 1\n')
    assert code == "import os\ndef f(x):\n    return x + 1\n"
    assert prose == "Module doc.\nwhy os\nSay hi.\n\nMore.\na comment\n"
    assert split_module("def (:\n") is None
