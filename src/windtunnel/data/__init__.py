"""The data pipeline: documents -> tokenizer -> memmap shards (cached) -> packed, resumable batches.

    tok = build_tokenizer(recipe)
    data = build_data(recipe, tok)
    data.train.batch(step, micro=0, rank=0, world=1)  # LongTensor [batch_size, seq_len + 1]
    data.val.batches(n=None, rank=0, world=1)         # list of such tensors
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, RecipeError
from ..recipe import Recipe
from .sampler import TrainSampler, ValSampler
from .shards import build_shards, open_split
from .tokenizers import ByteTokenizer, HFTokenizer, Tokenizer, build_tokenizer, train_tokenizer

__all__ = ["DataBundle", "build_data", "build_tokenizer", "train_tokenizer", "check_model_fits", "Tokenizer",
           "ByteTokenizer", "HFTokenizer"]


@dataclass
class DataBundle:
    train: TrainSampler  # or a mixture.MixtureSampler
    val: ValSampler  # or a mixture.MixtureVal
    manifest: dict
    path: Path  # the shard folder


def build_data(recipe: Recipe, tok: Tokenizer) -> DataBundle:
    """Tokenize the recipe's corpus once (or reuse the cache) and return train/val samplers.

    Refuses, before any training step, a model vocabulary smaller than the tokenizer's and a train
    split too small for one sequence (one-line RecipeError/DataError naming the key).
    """
    check_model_fits(recipe, tok)
    if recipe.data.sources:  # a mixture of named sources (data/mixture.py)
        from .mixture import build_mixture
        return DataBundle(*build_mixture(recipe, tok))
    root, manifest = build_shards(recipe.data, tok)
    check_train_size(recipe, manifest)
    t = recipe.train
    train = TrainSampler(open_split(root, manifest, "train"), t.seq_len, t.batch_size, t.grad_accum, t.seed)
    val = ValSampler(open_split(root, manifest, "val"), t.seq_len, t.batch_size, t.eval_batches)
    return DataBundle(train=train, val=val, manifest=manifest, path=root)


def check_model_fits(recipe: Recipe, tok: Tokenizer) -> None:
    """model.vocab_size must cover every id the tokenizer produces, model.max_seq_len a sequence (when set).

    Checked here, not in recipe validation: a model fed user batches may use any vocabulary/length.
    """
    m = recipe.model
    if m.max_seq_len and m.max_seq_len < recipe.train.seq_len:
        raise RecipeError(f"model.max_seq_len: {m.max_seq_len} is shorter than train.seq_len={recipe.train.seq_len}")
    vocab = m.vocab_size
    if vocab and vocab < tok.vocab_size:
        raise RecipeError(f"model.vocab_size: {vocab} is smaller than the tokenizer's vocabulary "
                          f"({tok.vocab_size} ids, tokenizer.kind={recipe.tokenizer.kind}); "
                          f"set it >= {tok.vocab_size} or 0 to take it from the tokenizer")


def check_train_size(recipe: Recipe, manifest: dict) -> None:
    """The train split must hold at least one sequence of train.seq_len + 1 tokens."""
    seq_len = recipe.train.seq_len
    split = manifest["splits"]["train"]
    if any((f["tokens"] - 1) // seq_len > 0 for f in split["files"]):
        return
    d = recipe.data
    what = {"files": f"data.paths={d.paths}", "hf": f"data.dataset={d.dataset!r}"}.get(d.source, "data.source=stdlib")
    cap = f", data.max_documents={d.max_documents}" if d.max_documents is not None else ""
    held = f", data.val_fraction={d.val_fraction} held out" if d.val_fraction else ""
    raise DataError(f"{what}: the train split holds {split['tokens']} tokens in {split['documents']} documents"
                    f"{cap}{held}, too few for one sequence of train.seq_len+1 = {seq_len + 1} tokens "
                    f"(add data or lower train.seq_len)")
