import threading

import numpy as np
import pytest

from windtunnel.data import ByteTokenizer, build_data
from windtunnel.data.shards import build_shards, open_split


class CountingTokenizer(ByteTokenizer):
    """Byte tokenizer that counts how often it is asked to tokenize."""

    def __init__(self, fingerprint: str = "byte-v1"):
        self.calls = 0
        self.fingerprint = fingerprint

    def encode_batch(self, texts):
        self.calls += 1
        return super().encode_batch(texts)


class WideTokenizer(ByteTokenizer):
    """Ids shifted above 65535, to exercise uint32 shards."""

    vocab_size = 70_000
    eos_id = 69_999
    fingerprint = "wide"

    def encode_batch(self, texts):
        return [a.astype(np.int64) + 66_000 for a in super().encode_batch(texts)]


def _files_cfg(make_recipe, text_dir, **data):
    return make_recipe({"source": "files", "paths": [str(text_dir)], **data}).data


def _split_tokens(root, manifest, split):
    arrays = open_split(root, manifest, split)
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)


def _documents(tokens, eos):
    """Split packed tokens back into document texts (each document ends with eos)."""
    ends = np.flatnonzero(tokens == eos)
    starts = np.r_[0, ends[:-1] + 1]
    return [bytes(tokens[s:e].astype(np.uint8)).decode() for s, e in zip(starts, ends)]


def test_manifest_and_packing(make_recipe, text_dir):
    cfg = _files_cfg(make_recipe, text_dir, val_fraction=0.2)
    root, m = build_shards(cfg, ByteTokenizer())
    assert root.parent == text_dir.parent / "cache" and root.name == m["fingerprint"]
    assert (m["format_version"], m["dtype"], m["tokenizer"]["fingerprint"]) == (1, "uint16", "byte-v1")
    assert m["source"]["kind"] == "files" and m["source"]["n_files"] == 12
    texts = {p.read_text() for p in text_dir.iterdir()}
    train, val = (_documents(_split_tokens(root, m, s), 256) for s in ("train", "val"))
    assert set(train) | set(val) == texts and not set(train) & set(val)  # val disjoint from train
    assert len(val) >= 1 and m["splits"]["val"]["documents"] == len(val)
    for split, docs in (("train", train), ("val", val)):
        expected = sum(len(t.encode()) + 1 for t in docs)  # one eos after each document
        assert m["splits"][split]["tokens"] == expected == (root / f"{split}-00000.bin").stat().st_size // 2


def test_second_build_reuses_cache(make_recipe, text_dir):
    cfg = _files_cfg(make_recipe, text_dir)
    tok = CountingTokenizer()
    root1, m1 = build_shards(cfg, tok)
    calls = tok.calls
    root2, m2 = build_shards(cfg, tok)
    assert calls > 0 and tok.calls == calls and (root1, m1) == (root2, m2)


def test_changed_tokenizer_or_file_rebuilds(make_recipe, text_dir):
    cfg = _files_cfg(make_recipe, text_dir)
    tok = CountingTokenizer()
    root, m = build_shards(cfg, tok)
    other = CountingTokenizer(fingerprint="byte-other")
    root_tok, _ = build_shards(cfg, other)
    assert other.calls > 0 and root_tok != root
    (text_dir / "doc03.txt").write_text("an edited document\n")
    calls = tok.calls
    root_edit, m_edit = build_shards(cfg, tok)
    assert tok.calls > calls and root_edit != root
    assert m_edit["splits"]["train"]["tokens"] + m_edit["splits"]["val"]["tokens"] != \
        m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]


def test_broken_cache_is_rebuilt(make_recipe, text_dir):
    cfg = _files_cfg(make_recipe, text_dir)
    root, m = build_shards(cfg, ByteTokenizer())
    (root / "train-00000.bin").write_bytes(b"\0\0")
    tok = CountingTokenizer()
    root2, m2 = build_shards(cfg, tok)
    assert tok.calls > 0 and root2 == root and m2["splits"] == m["splits"]
    assert (root / "train-00000.bin").stat().st_size == 2 * m["splits"]["train"]["tokens"]


def test_failed_build_leaves_no_cache(make_recipe, text_dir):
    class Exploding(ByteTokenizer):
        def encode_batch(self, texts):
            raise RuntimeError("killed")

    cfg = _files_cfg(make_recipe, text_dir)
    with pytest.raises(RuntimeError, match="killed"):
        build_shards(cfg, Exploding())
    cache = text_dir.parent / "cache"
    assert [p for p in cache.iterdir() if p.is_dir()] == []
    root, m = build_shards(cfg, ByteTokenizer())
    assert m["splits"]["train"]["tokens"] > 0


def test_concurrent_builds_tokenize_once(make_recipe, text_dir):
    cfg = _files_cfg(make_recipe, text_dir)
    tok = CountingTokenizer()
    results = []
    threads = [threading.Thread(target=lambda: results.append(build_shards(cfg, tok))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(r == results[0] for r in results)
    assert tok.calls == 1  # 12 small documents fit one encode batch


def test_small_shards_split_the_same_tokens(make_recipe, text_dir):
    root, m = build_shards(_files_cfg(make_recipe, text_dir), ByteTokenizer())
    small, ms = build_shards(_files_cfg(make_recipe, text_dir, cache_dir=str(text_dir.parent / "c2")),
                             ByteTokenizer(), shard_tokens=100)
    files = ms["splits"]["train"]["files"]
    assert len(files) > 2 and all(f["tokens"] <= 100 for f in files)
    assert np.array_equal(_split_tokens(root, m, "train"), _split_tokens(small, ms, "train"))


def test_large_vocab_uses_uint32(make_recipe, text_dir):
    root, m = build_shards(_files_cfg(make_recipe, text_dir), WideTokenizer())
    tokens = _split_tokens(root, m, "train")
    assert m["dtype"] == "uint32" and tokens.dtype == np.uint32
    assert tokens.max() == 69_999 and tokens.min() >= 66_000


def test_build_data_rejects_corpus_smaller_than_one_sequence(make_recipe, text_dir):
    recipe = make_recipe({"source": "files", "paths": [str(text_dir / "doc00.txt")]}, train={"seq_len": 4096})
    with pytest.raises(ValueError, match="too few for one sequence of train.seq_len\\+1 = 4097"):
        build_data(recipe, ByteTokenizer())


def test_build_data_on_stdlib(make_recipe):
    recipe = make_recipe({"max_documents": 30}, train={"seq_len": 64, "batch_size": 4, "eval_batches": 3})
    data = build_data(recipe, ByteTokenizer())
    batch = data.train.batch(0)
    assert batch.shape == (4, 65) and str(batch.dtype) == "torch.int64" and int(batch.max()) < 258
    assert data.train.n_tokens + data.val.n_tokens == sum(
        s["tokens"] for s in data.manifest["splits"].values())
    assert data.val.n_tokens > 0 and 1 <= len(data.val.batches()) <= 3
    assert data.manifest["source"]["kind"] == "stdlib" and data.manifest["max_documents"] == 30
