"""Tokenizers behind one small interface: built-in bytes, any HF tokenizer, or a locally trained BPE.

Interface: `.vocab_size`, `.eos_id`, `.encode(text)`, `.decode(ids)`, `.encode_batch(texts)` (numpy
arrays, for sharding), `.fingerprint` (hash of the exact vocabulary/merges) and `.save_hf(dir)`,
which writes files that `transformers.AutoTokenizer.from_pretrained(dir)` loads into a tokenizer
producing the same ids (the HF export relies on it).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
from filelock import FileLock

from ..recipe import Recipe, RecipeError
from .sources import fingerprint, iter_documents, source_stamp, split_documents

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int
    fingerprint: str

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...
    def save_hf(self, directory: str | Path) -> None: ...


# ----------------------------------------------------------------------------- bytes


class ByteTokenizer:
    """ids 0..255 are the UTF-8 bytes themselves; 256 = end of document, 257 = padding."""

    vocab_size = 258
    eos_id = 256
    pad_id = 257
    fingerprint = "byte-v1"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def save_hf(self, directory: str | Path) -> None:
        """A fast HF tokenizer with the same ids: byte-level BPE over the 256 byte symbols, no merges."""
        from tokenizers import Tokenizer as RustTokenizer, decoders, models, pre_tokenizers
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        vocab = {char: byte for byte, char in bytes_to_unicode().items()}
        rust = RustTokenizer(models.BPE(vocab=vocab, merges=[]))
        rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        rust.decoder = decoders.ByteLevel()
        # split_special_tokens: a literal "<|endoftext|>" in text stays bytes, exactly as in encode().
        _wrap_fast(rust, split_special_tokens=True).save_pretrained(str(directory))


# ----------------------------------------------------------------------------- HF


class HFTokenizer:
    """Any `transformers` tokenizer (name or local path); ids never include BOS/EOS added by HF."""

    def __init__(self, hf_tokenizer, name: str):
        self.hf = hf_tokenizer
        self.name = name
        self.vocab_size = len(hf_tokenizer)
        eos = hf_tokenizer.eos_token_id
        if eos is None:
            eos = hf_tokenizer.sep_token_id
        if eos is None:
            raise RecipeError(f"tokenizer.path: {name!r} has no eos (or sep) token to separate documents")
        self.eos_id = int(eos)
        self.fingerprint = _hf_fingerprint(hf_tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> "HFTokenizer":
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RecipeError(f"tokenizer.path: cannot load HF tokenizer {str(path)!r} ({first})") from None
        return cls(tok, str(path))

    def encode(self, text: str) -> list[int]:
        return list(self.encode_batch([text])[0])

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(list(ids))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if self.hf.is_fast:  # the Rust batch API: parallel, and no "sequence too long" warnings
            backend = self.hf.backend_tokenizer
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # fast = without offsets
            return [np.asarray(e.ids, dtype=np.int64) for e in encode(texts, add_special_tokens=False)]
        out = self.hf(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return [np.asarray(ids, dtype=np.int64) for ids in out]

    def save_hf(self, directory: str | Path) -> None:
        self.hf.save_pretrained(str(directory))


def _hf_fingerprint(hf_tokenizer) -> str:
    if hf_tokenizer.is_fast:
        return "hf-" + fingerprint(hf_tokenizer.backend_tokenizer.to_str())
    vocab = sorted(hf_tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return "hf-" + fingerprint([type(hf_tokenizer).__name__, vocab])


def _wrap_fast(rust_tokenizer, split_special_tokens: bool = False):
    """Register eos/pad as special tokens and wrap for `save_pretrained`/AutoTokenizer."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    rust_tokenizer.add_special_tokens([AddedToken(EOS_TOKEN, special=True), AddedToken(PAD_TOKEN, special=True)])
    return PreTrainedTokenizerFast(tokenizer_object=rust_tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                   split_special_tokens=split_special_tokens)


# ----------------------------------------------------------------------------- locally trained BPE


def bpe_dir(recipe: Recipe) -> Path:
    """Where the recipe's BPE lives: tokenizer.path, or a cache folder named by its training inputs."""
    if recipe.tokenizer.path:
        return Path(recipe.tokenizer.path).expanduser()
    d = recipe.data
    inputs = {"source": source_stamp(d), "max_documents": d.max_documents, "stdlib_tests": d.stdlib_tests,
              "val_fraction": d.val_fraction, "vocab_size": recipe.tokenizer.vocab_size, "version": 1}
    return Path(d.cache_dir).expanduser() / f"bpe-{fingerprint(inputs)}"


def train_tokenizer(recipe: Recipe) -> Path:
    """Train a byte-level BPE of `tokenizer.vocab_size` on the train documents; return its folder."""
    from tokenizers import Tokenizer as RustTokenizer, decoders, models, pre_tokenizers, trainers

    if recipe.tokenizer.kind != "bpe":
        raise RecipeError(f"tokenizer.kind: {recipe.tokenizer.kind!r} is not trainable (set tokenizer.kind=bpe)")
    size = recipe.tokenizer.vocab_size  # >= 258 for kind=bpe (checked by recipe validation)
    target = bpe_dir(recipe)
    _check_overwritable(target)
    rust = RustTokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=[EOS_TOKEN, PAD_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rust.train_from_iterator(_train_texts(recipe), trainer=trainer)
    _save_atomically(_wrap_fast(rust), target)
    return target


def _train_texts(recipe: Recipe) -> Iterator[str]:
    docs = split_documents(iter_documents(recipe.data), recipe.data.val_fraction)
    return (doc.text for doc, is_val in docs if not is_val)


def _check_overwritable(target: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier tokenizer (tokenizer.path typos)."""
    foreign = target.is_dir() and any(target.iterdir()) and not (target / "tokenizer.json").exists()
    if target.is_file() or foreign:
        raise RecipeError(f"tokenizer.path: {target} exists and is not a tokenizer folder; refusing to overwrite it")


def _save_atomically(hf_tokenizer, target: Path) -> None:
    """Write to a temp folder then rename, so a killed run never leaves half a tokenizer."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        hf_tokenizer.save_pretrained(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- factory


def build_tokenizer(recipe: Recipe) -> Tokenizer:
    """The recipe's tokenizer; kind=bpe trains one first when none exists yet."""
    kind = recipe.tokenizer.kind
    if kind == "byte":
        return ByteTokenizer()
    if kind == "hf":
        return HFTokenizer.load(recipe.tokenizer.path)
    folder = bpe_dir(recipe)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{folder.name}.lock")):  # one trainer when several processes start
        if not (folder / "tokenizer.json").exists():
            print(f"windtunnel: training a {recipe.tokenizer.vocab_size}-token BPE tokenizer on "
                  f"data.source={recipe.data.source} -> {folder}", flush=True)
            train_tokenizer(recipe)
    return HFTokenizer.load(folder)
