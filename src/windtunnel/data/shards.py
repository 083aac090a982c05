"""Tokenize once into memmap shards under `<data.cache_dir>/<fingerprint>/`, with a manifest.

Layout: manifest.json plus `train-00000.bin`, `val-00000.bin`, ... (raw uint16/uint32 token ids,
documents packed back to back, each followed by eos). The folder name is a hash of everything that
decides its content (source files with sizes/mtimes or dataset name, max_documents, stdlib_tests,
val_fraction, text_field, tokenizer fingerprint, format version), so a changed input simply maps
to a new folder. A build happens in a temp folder renamed into place (a killed build leaves no
cache) under a file lock (concurrent callers wait, then reuse).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from filelock import FileLock

from ..errors import check_writable
from ..recipe import DataConfig
from .sources import Document, describe_source, fingerprint, iter_documents, source_stamp, split_documents
from .tokenizers import Tokenizer

FORMAT_VERSION = 1
SHARD_TOKENS = 1 << 30  # tokens per shard file (2 GiB as uint16)
ENCODE_BATCH_CHARS = 8 << 20  # documents are tokenized in batches of about this much text
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def cache_key(cfg: DataConfig, tok: Tokenizer) -> tuple[str, dict]:
    """(fingerprint, source stamp) of the shards this config and tokenizer produce."""
    stamp = source_stamp(cfg)
    inputs = {"version": FORMAT_VERSION, "source": stamp, "max_documents": cfg.max_documents,
              "stdlib_tests": cfg.stdlib_tests, "val_fraction": cfg.val_fraction,
              "text_field": cfg.text_field, "tokenizer": tok.fingerprint}
    return fingerprint(inputs), stamp


def build_shards(cfg: DataConfig, tok: Tokenizer, shard_tokens: int = SHARD_TOKENS) -> tuple[Path, dict]:
    """Return (folder, manifest) of the tokenized corpus, building it only if no valid cache exists."""
    key, stamp = cache_key(cfg, tok)
    cache = Path(cfg.cache_dir).expanduser()
    root = cache / key
    check_writable(cache, "data.cache_dir")
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f".{key}.lock")):
        manifest = read_manifest(root, key)
        if manifest is not None:
            return root, manifest
        print(f"windtunnel: tokenizing data.source={cfg.source} into {root}", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=cache))
        try:
            manifest = _write_shards(tmp, cfg, tok, key, stamp, shard_tokens)
            if root.exists():  # an invalid leftover (e.g. older format): replace it
                shutil.rmtree(root)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root, manifest


def read_manifest(root: Path, key: str) -> dict | None:
    """The manifest if `root` holds a complete cache for `key`, else None."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("fingerprint") != key:
        return None
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split in manifest["splits"].values():
        for f in split["files"]:
            path = root / f["name"]
            if not path.is_file() or path.stat().st_size != f["tokens"] * itemsize:
                return None
    return manifest


# ----------------------------------------------------------------------------- writing


class _SplitWriter:
    """Appends token arrays to `<split>-NNNNN.bin` files of at most `shard_tokens` tokens."""

    def __init__(self, root: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.root, self.split, self.dtype, self.shard_tokens = root, split, dtype, shard_tokens
        self.files: list[dict] = []
        self.documents = 0

    def write(self, tokens: np.ndarray) -> None:
        tokens = tokens.astype(self.dtype, copy=False)
        while tokens.size:
            if not self.files or self.files[-1]["tokens"] >= self.shard_tokens:
                self.files.append({"name": f"{self.split}-{len(self.files):05d}.bin", "tokens": 0})
            current = self.files[-1]
            part = tokens[: self.shard_tokens - current["tokens"]]
            with open(self.root / current["name"], "ab") as fh:
                fh.write(part.tobytes())
            current["tokens"] += int(part.size)
            tokens = tokens[part.size:]

    def summary(self) -> dict:
        return {"tokens": sum(f["tokens"] for f in self.files), "documents": self.documents, "files": self.files}


def _write_shards(root: Path, cfg: DataConfig, tok: Tokenizer, key: str, stamp: dict, shard_tokens: int) -> dict:
    dtype = token_dtype(tok.vocab_size)
    writers = {s: _SplitWriter(root, s, dtype, shard_tokens) for s in SPLITS}
    eos = np.array([tok.eos_id], dtype=np.int64)
    start = time.perf_counter()
    docs = split_documents(iter_documents(cfg), cfg.val_fraction)
    for batch in _text_batches(docs):
        encoded = tok.encode_batch([doc.text for doc, _ in batch])
        for split in SPLITS:
            parts = []
            for (_, is_val), ids in zip(batch, encoded):
                if is_val == (split == "val"):
                    parts += [ids, eos]
            if parts:
                tokens = np.concatenate(parts)
                _check_range(tokens, tok.vocab_size)
                writers[split].write(tokens)
                writers[split].documents += len(parts) // 2
    manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": key,
        "source": describe_source(stamp),
        "max_documents": cfg.max_documents,
        "stdlib_tests": cfg.stdlib_tests,
        "val_fraction": cfg.val_fraction,
        "tokenizer": {"fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id},
        "dtype": dtype.name,
        "splits": {s: w.summary() for s, w in writers.items()},
        "build_seconds": round(time.perf_counter() - start, 3),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))  # written last: marks completion
    return manifest


def _text_batches(docs: Iterator[tuple[Document, bool]]) -> Iterator[list[tuple[Document, bool]]]:
    """Group documents into batches of about ENCODE_BATCH_CHARS characters (for the batch encoders)."""
    batch, chars = [], 0
    for item in docs:
        batch.append(item)
        chars += len(item[0].text)
        if chars >= ENCODE_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _check_range(tokens: np.ndarray, vocab_size: int) -> None:
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"tokenizer produced id {int(tokens.max())} outside its vocab_size {vocab_size}")


def open_split(root: Path, manifest: dict, split: str) -> list[np.memmap]:
    """Read-only memmaps of one split's shard files (empty files are skipped: mmap refuses them)."""
    dtype = np.dtype(manifest["dtype"])
    return [np.memmap(root / f["name"], dtype=dtype, mode="r")
            for f in manifest["splits"][split]["files"] if f["tokens"] > 0]

