"""The data pipeline: documents -> tokenizer -> memmap shards (cached) -> packed, resumable batches.

    tok = build_tokenizer(recipe)
    data = build_data(recipe, tok)
    data.train.batch(step, micro=0, rank=0, world=1)  # LongTensor [batch_size, seq_len + 1]
    data.val.batches(n=None, rank=0, world=1)         # list of such tensors
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..recipe import Recipe
from .sampler import TrainSampler, ValSampler
from .shards import build_shards, open_split
from .tokenizers import ByteTokenizer, HFTokenizer, Tokenizer, build_tokenizer, train_tokenizer

__all__ = ["DataBundle", "build_data", "build_tokenizer", "train_tokenizer", "Tokenizer", "ByteTokenizer",
           "HFTokenizer"]


@dataclass
class DataBundle:
    train: TrainSampler  # or a mixture.MixtureSampler
    val: ValSampler  # or a mixture.MixtureVal
    manifest: dict
    path: Path  # the shard folder


def build_data(recipe: Recipe, tok: Tokenizer) -> DataBundle:
    """Tokenize the recipe's corpus once (or reuse the cache) and return train/val samplers."""
    if recipe.data.sources:  # a mixture of named sources (data/mixture.py)
        from .mixture import build_mixture
        return DataBundle(*build_mixture(recipe, tok))
    root, manifest = build_shards(recipe.data, tok)
    t = recipe.train
    train = TrainSampler(open_split(root, manifest, "train"), t.seq_len, t.batch_size, t.grad_accum, t.seed)
    val = ValSampler(open_split(root, manifest, "val"), t.seq_len, t.batch_size, t.eval_batches)
    return DataBundle(train=train, val=val, manifest=manifest, path=root)
