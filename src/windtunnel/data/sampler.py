"""Packed fixed-length sequences over memmap shards, in an order that is a pure function of (seed, step).

Sequence j of a shard is tokens[j*L : j*L + L + 1] (L = seq_len): input = [:-1], target = [1:],
so consecutive sequences share one boundary token and every token is a target once. Sequences
never cross shard files. Training slot i = ((step*grad_accum + micro)*world + rank)*batch_size + b
reads sequence perm_epoch[i % n_seqs] with epoch = i // n_seqs and perm_epoch a permutation drawn
from numpy default_rng([seed, epoch]): resuming at any step gives the batches an uninterrupted run
would, ranks read disjoint slots, and each epoch visits every sequence exactly once.

The sequence in a slot depends on (seed, global slot index) only, and step s covers the slots
[s*G, (s+1)*G) with G = batch_size * grad_accum * world (the global batch): how those G sequences
split over ranks and micro-batches does not change what a step trains on. So a run may resume on
another number of processes with batch_size or grad_accum adjusted to keep G (rundir.check_resume
enforces that), and its data order stays the same.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import DataError


def global_slots(step: int, micro: int, rank: int, world: int, batch_size: int, grad_accum: int) -> np.ndarray:
    """Global slot indices of one micro-batch: inside [step*G, (step+1)*G), G the global batch."""
    global_batch = batch_size * grad_accum * world
    first = step * global_batch + (micro * world + rank) * batch_size
    return np.arange(first, first + batch_size, dtype=np.int64)


class PackedSequences:
    """Fixed-length (seq_len + 1)-token windows over a list of token arrays (memmaps)."""

    def __init__(self, shards: list[np.ndarray], seq_len: int, batch_size: int):
        self.shards = shards
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.n_tokens = int(sum(len(s) for s in shards))
        counts = np.array([max(0, (len(s) - 1) // seq_len) for s in shards], dtype=np.int64)
        self._ends = np.cumsum(counts)  # sequence index where each shard's sequences end
        self._starts = self._ends - counts
        self.n_seqs = int(self._ends[-1]) if len(shards) else 0

    def gather(self, seq_ids: np.ndarray) -> torch.Tensor:
        """LongTensor [len(seq_ids), seq_len + 1] of the given global sequence indices."""
        shard_of = np.searchsorted(self._ends, seq_ids, side="right")
        width = self.seq_len + 1
        out = np.empty((len(seq_ids), width), dtype=np.int64)
        for row, (shard, seq) in enumerate(zip(shard_of, seq_ids)):
            start = int(seq - self._starts[shard]) * self.seq_len
            out[row] = self.shards[shard][start:start + width]
        return torch.from_numpy(out)


class TrainSampler(PackedSequences):
    """Training batches addressed by (step, micro, rank, world); no hidden iteration state."""

    def __init__(self, shards: list[np.ndarray], seq_len: int, batch_size: int, grad_accum: int, seed: int):
        super().__init__(shards, seq_len, batch_size)
        if self.n_seqs == 0:
            raise DataError(f"train split has {self.n_tokens} tokens, too few for one sequence of "
                             f"train.seq_len+1 = {seq_len + 1} tokens (add data or lower train.seq_len)")
        self.grad_accum = grad_accum
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}  # the current epoch (and the previous one at a boundary)

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> torch.Tensor:
        """LongTensor [batch_size, seq_len + 1] for one micro-batch of one rank."""
        if not 0 <= micro < self.grad_accum:
            raise ValueError(f"micro={micro} outside [0, train.grad_accum={self.grad_accum})")
        if not 0 <= rank < world:
            raise ValueError(f"rank={rank} outside [0, world={world})")
        if step < 0:
            raise ValueError(f"step={step} must be >= 0")
        return self.gather(self.sequence_ids(self.slots(step, micro, rank, world)))

    def slots(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> np.ndarray:
        return global_slots(step, micro, rank, world, self.batch_size, self.grad_accum)

    def sequence_ids(self, slots: np.ndarray) -> np.ndarray:
        """The sequence read in each global slot: a function of (seed, slot) only."""
        epochs, positions = np.divmod(slots, self.n_seqs)
        seq_ids = np.empty_like(positions)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            seq_ids[mask] = self.permutation(int(epoch))[positions[mask]]
        return seq_ids

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of sequences in `epoch`, a function of (seed, epoch) only."""
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_seqs)
            self._perms[epoch] = perm.astype(np.uint32) if self.n_seqs < 1 << 32 else perm
        return self._perms[epoch]


class ValSampler(PackedSequences):
    """Held-out sequences in file order: the same batches at every evaluation."""

    def __init__(self, shards: list[np.ndarray], seq_len: int, batch_size: int, eval_batches: int):
        super().__init__(shards, seq_len, batch_size)
        self.eval_batches = eval_batches

    def batches(self, n: int | None = None, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
        """Up to n (default train.eval_batches) batches [batch_size, seq_len + 1], split across ranks.

        Fewer when val is small (never more batches than needed to see every sequence once; the
        last batch wraps around to the start). With world > 1 every rank gets the same number of
        batches (wrapping again if needed), so collective ops stay in step.
        """
        if not 0 <= rank < world:
            raise ValueError(f"rank={rank} outside [0, world={world})")
        n = self.eval_batches if n is None else n
        if self.n_seqs == 0 or n <= 0:
            return []
        total = min(n, math.ceil(self.n_seqs / self.batch_size))
        per_rank = math.ceil(total / world)
        out = []
        for k in range(rank, per_rank * world, world):
            ids = np.arange(k * self.batch_size, (k + 1) * self.batch_size, dtype=np.int64) % self.n_seqs
            out.append(self.gather(ids))
        return out
