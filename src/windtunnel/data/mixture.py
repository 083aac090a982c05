"""Data mixtures: several named sources, each tokenized into its own shards, mixed by weight.

    data:
      sources:
        - {name: code, source: stdlib, weight: 0.7}
        - {name: prose, source: files, paths: [prose.jsonl], weight: 0.3}

Which source fills global sample slot i is a pure function of i (no RNG state, no iteration): the
slots are split by stick-breaking, source 0 against the rest, then source 1 against what remains, ...,
and at each split a Bresenham (Sturmian) rounding takes floor(n * r + 1/2) of the n slots that reach
it, r being that source's share of the remaining weight. So among slots [0, i) source s has exactly
count_s(i) slots, within one of weight_s * i, count_s is closed-form (any step is O(sources)), and
the k-th slot of source s reads position k of that source's own stream: sequence perm_e[k % n_s]
with e = k // n_s, perm_e a permutation from default_rng([seed, crc32(name), e]). Each source is
therefore read epoch by epoch without repeats inside an epoch, whatever the weights, and the epoch
count is exact (count_s / n_s). Weights can change at a slot boundary P (the WSD decay, or a decay
branch's start): the counts before P use the stable mix, those after use the decay mix.
A global slot is ((step * grad_accum + micro) * world + rank) * batch_size + b, as for one source.
"""
from __future__ import annotations

import dataclasses
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from ..errors import DataError, RecipeError
from ..recipe import DataConfig, Recipe, SourceFields
from ..schedules import Schedule
from .sampler import PackedSequences, ValSampler, global_slots
from .shards import build_shards, open_split

if TYPE_CHECKING:
    from .tokenizers import Tokenizer

NO_PHASE = 0  # boundary slot when the mix never changes (every slot uses the stable weights)


# ----------------------------------------------------------------------------- weights and counts


def mix_weights(cfg: DataConfig) -> dict[str, float]:
    """The training mix {name: weight}, normalised: data.mix when given (missing names get 0), else the
    sources' own weights."""
    raw = cfg.mix if cfg.mix is not None else {s.name: s.weight for s in cfg.sources}
    return normalise(raw, [s.name for s in cfg.sources])


def normalise(weights: dict[str, float], names: list[str]) -> dict[str, float]:
    total = sum(weights.get(n, 0.0) for n in names)
    if total <= 0:
        raise RecipeError(f"mixture weights sum to 0: {weights}")
    return {n: weights.get(n, 0.0) / total for n in names}


def _shares(weights: np.ndarray) -> np.ndarray:
    """Stick-breaking: each source's share of the weight left after the sources before it."""
    rest = np.cumsum(weights[::-1])[::-1]
    return np.divide(weights, rest, out=np.ones_like(weights), where=rest > 0)


def _take(n: np.ndarray, share: float) -> np.ndarray:
    return np.floor(n * share + 0.5).astype(np.int64)  # monotone in n, +0 or +1 per extra slot


def source_counts(ends: np.ndarray, stable: np.ndarray, decay: np.ndarray, boundary: int) -> np.ndarray:
    """[len(ends), n_sources] slots each source received among global slots [0, end), with the stable
    weights before slot `boundary` and the decay weights from it on."""
    points = np.append(np.asarray(ends, dtype=np.int64), np.int64(boundary))
    node = points.copy()  # slots that reach the current split (not taken by earlier sources)
    out = np.zeros((len(points), len(stable)), dtype=np.int64)
    stable_share, decay_share = _shares(stable), _shares(decay)
    for s in range(len(stable) - 1):
        cut = node[-1]  # slots reaching this split before the boundary (node is monotone in the slot)
        taken = _take(np.minimum(node, cut), stable_share[s]) + _take(np.maximum(node - cut, 0), decay_share[s])
        out[:, s] = taken
        node = node - taken
    out[:, -1] = node
    return out[:-1]


# ----------------------------------------------------------------------------- training batches


class MixtureSampler:
    """Training batches addressed by (step, micro, rank, world), like TrainSampler, over several sources."""

    def __init__(self, names: list[str], sources: list[PackedSequences], recipe: Recipe):
        t = recipe.train
        self.names, self.sources, self.recipe = names, sources, recipe
        self.seq_len, self.batch_size, self.grad_accum, self.seed = t.seq_len, t.batch_size, t.grad_accum, t.seed
        for name, src in zip(names, sources):
            if src.n_seqs == 0:
                raise DataError(f"data.sources: {name!r} has {src.n_tokens} train tokens, too few for one "
                                  f"sequence of train.seq_len+1 = {t.seq_len + 1} tokens")
        self.stable = mix_weights(recipe.data)
        decay = recipe.schedule.wsd.decay_mix
        self.decay = normalise(decay, names) if decay is not None else dict(self.stable)
        self.decay_from: int | None = None  # a decay branch's start step (see `decay_phase`)
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        self._checked: set[int] = set()

    @property
    def n_seqs(self) -> dict[str, int]:
        return {n: s.n_seqs for n, s in zip(self.names, self.sources)}

    def slots_per_step(self, world: int) -> int:
        return self.batch_size * self.grad_accum * world

    def decay_start(self, world: int) -> int | None:
        """The step from which the decay mix applies: a branch's start, else the main run's WSD decay."""
        if self.recipe.schedule.wsd.decay_mix is None:
            return None
        if self.decay_from is not None:
            return self.decay_from
        schedule = Schedule.from_recipe(self.recipe, world)
        return schedule.total_steps - schedule.decay_steps()

    def counts(self, ends: np.ndarray, world: int = 1) -> np.ndarray:
        """Slots of each source among [0, end) for each end (see source_counts)."""
        start = self.decay_start(world)
        boundary = NO_PHASE if start is None else start * self.slots_per_step(world)
        stable = np.array([self.stable[n] for n in self.names])
        decay = np.array([self.decay[n] for n in self.names])
        return source_counts(ends, stable, decay, boundary)

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> torch.Tensor:
        """LongTensor [batch_size, seq_len + 1] for one micro-batch of one rank."""
        if not (0 <= micro < self.grad_accum and 0 <= rank < world and step >= 0):
            raise ValueError(f"step={step}, micro={micro}, rank={rank} outside the run "
                             f"(grad_accum={self.grad_accum}, world={world})")
        if world not in self._checked:
            self._checked.add(world)
            check_repetition(self, world)
        counts = self._slot_counts(step, micro, rank, world)
        owner = np.argmax(np.diff(counts, axis=0), axis=1)  # exactly one source gains each slot
        position = counts[np.arange(self.batch_size), owner]
        out = torch.empty((self.batch_size, self.seq_len + 1), dtype=torch.int64)
        for s in np.unique(owner):
            rows = owner == s
            out[torch.from_numpy(rows)] = self.sources[s].gather(self._sequence_ids(int(s), position[rows]))
        return out

    def source_of(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> list[str]:
        """The source name of each row of batch(step, micro, rank, world)."""
        counts = self._slot_counts(step, micro, rank, world)
        return [self.names[i] for i in np.argmax(np.diff(counts, axis=0), axis=1)]

    def _slot_counts(self, step: int, micro: int, rank: int, world: int) -> np.ndarray:
        """Per-source counts at each slot boundary of this micro-batch (one more row than slots)."""
        slots = global_slots(step, micro, rank, world, self.batch_size, self.grad_accum)
        return self.counts(np.append(slots, slots[-1] + 1), world)

    def _sequence_ids(self, s: int, positions: np.ndarray) -> np.ndarray:
        n = self.sources[s].n_seqs
        epochs, offsets = np.divmod(positions, n)
        out = np.empty_like(positions)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self.permutation(s, int(epoch))[offsets[mask]]
        return out

    def permutation(self, s: int, epoch: int) -> np.ndarray:
        """Source s's order in `epoch`: a function of (seed, source name, epoch) only."""
        key = (s, epoch)
        if key not in self._perms:
            if len(self._perms) >= 2 * len(self.names):
                self._perms.pop(next(iter(self._perms)))
            rng = np.random.default_rng([self.seed, zlib.crc32(self.names[s].encode()), epoch])
            self._perms[key] = rng.permutation(self.sources[s].n_seqs)
        return self._perms[key]

    # ------------------------------------------------------------------ accounting
    def usage(self, steps: int, world: int = 1) -> dict[str, dict]:
        """{name: {sequences, tokens, epochs}} read by the first `steps` optimizer steps."""
        counts = self.counts(np.array([steps * self.slots_per_step(world)]), world)[0]
        return {n: {"sequences": int(c), "tokens": int(c) * self.seq_len, "epochs": float(c) / src.n_seqs}
                for n, c, src in zip(self.names, counts, self.sources)}


def check_repetition(sampler: MixtureSampler, world: int) -> None:
    """Warn when a source is planned to repeat more than data.warn_epochs times; refuse more than
    data.max_epochs (Muennighoff et al. 2023: up to ~4 epochs are worth about as much as unique data)."""
    d = sampler.recipe.data
    planned = sampler.usage(sampler.recipe.total_steps(world), world)
    for name, use in planned.items():
        if d.max_epochs is not None and use["epochs"] > d.max_epochs:
            raise RecipeError(f"data.max_epochs: source {name!r} would be read {use['epochs']:.2f} times "
                              f"(cap {d.max_epochs:g}); lower its weight, add data or train shorter")
        if use["epochs"] > d.warn_epochs:
            warnings.warn(f"data source {name!r} will be repeated {use['epochs']:.1f} times "
                          f"(> data.warn_epochs={d.warn_epochs:g}); repeated data is worth less", stacklevel=2)


@contextmanager
def decay_phase(sampler: object, start_step: int) -> Iterator[None]:
    """Within the block, a mixture sampler uses its decay mix from `start_step` on (a decay branch)."""
    if not isinstance(sampler, MixtureSampler):
        yield
        return
    before, sampler.decay_from = sampler.decay_from, start_step
    try:
        yield
    finally:
        sampler.decay_from = before


# ----------------------------------------------------------------------------- validation


class MixtureVal:
    """Each source's held-out sequences; `batches` concatenates them (every source's, in order)."""

    def __init__(self, sources: dict[str, ValSampler]):
        self.sources = sources

    def batches(self, n: int | None = None, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
        return [b for val in self.sources.values() for b in val.batches(n, rank, world)]


def evaluate_sources(trainer) -> dict[str, float]:
    """{name: val loss} of each source of a mixture run; {} for other runs."""
    data = getattr(trainer, "data", None)
    if data is None or not isinstance(data.val, MixtureVal):
        return {}
    out = {}
    for name, val in data.val.sources.items():
        loss = trainer.evaluate(val.batches(trainer.recipe.train.eval_batches, trainer.rank, trainer.world))
        if loss is not None:
            out[name] = loss
    return out


def mixture_record(sampler: object, steps: int, world: int) -> dict:
    """What a run's summary says about its mixture: weights, decay weights, per-source use."""
    if not isinstance(sampler, MixtureSampler):
        return {}
    start = sampler.decay_start(world)
    return {"mixture": {"weights": sampler.stable, "decay_mix": sampler.decay if start is not None else None,
                        "decay_start_step": start, "sources": sampler.usage(steps, world)}}


# ----------------------------------------------------------------------------- building


def source_config(data: DataConfig, name: str) -> DataConfig:
    """The one-source DataConfig of source `name` (its own fields, the mixture's split and cache)."""
    src = next(s for s in data.sources if s.name == name)
    fields = {f.name: getattr(src, f.name) for f in dataclasses.fields(SourceFields)}
    return dataclasses.replace(data, sources=[], mix=None, **fields)


def build_mixture(recipe: Recipe, tok: "Tokenizer") -> tuple[MixtureSampler, MixtureVal, dict, Path]:
    """Tokenize each source into its own cached shards: (train, val, manifest, cache folder) of a DataBundle."""
    t, names = recipe.train, [s.name for s in recipe.data.sources]
    train, val, manifests = [], {}, {}
    for name in names:
        root, manifest = build_shards(source_config(recipe.data, name), tok)
        train.append(PackedSequences(open_split(root, manifest, "train"), t.seq_len, t.batch_size))
        val[name] = ValSampler(open_split(root, manifest, "val"), t.seq_len, t.batch_size, t.eval_batches)
        manifests[name] = {**manifest, "path": str(root)}
    return MixtureSampler(names, train, recipe), MixtureVal(val), {"sources": manifests}, \
        Path(recipe.data.cache_dir).expanduser()
