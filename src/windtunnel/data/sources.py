"""Document sources: the embedded stdlib corpus, local files, and `datasets` datasets.

Every source yields `Document(id, text)` in a deterministic order; the id is stable across runs
(a path, `path#line`, or a row index) because the validation split is a hash of it.
`source_stamp(cfg)` describes what would be read (paths with sizes and mtimes, or a dataset name)
so the shard cache can tell when the corpus changed without reading it.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from ..errors import DataError, RecipeError, one_line
from ..recipe import DataConfig

EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}  # third-party code differs per machine
TEST_DIRS = {"test", "tests"}
HF_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
ROW_BATCH = 1024


@dataclass(frozen=True)
class Document:
    id: str
    text: str


def fingerprint(obj: object, length: int = 16) -> str:
    """A short stable hash of a JSON-able object."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


# ----------------------------------------------------------------------------- public entry points


def iter_documents(cfg: DataConfig) -> Iterator[Document]:
    """All documents of the recipe's source, in a fixed order, capped at `data.max_documents`."""
    if cfg.source == "stdlib":
        docs = _stdlib_documents(cfg)
    elif cfg.source == "files":
        docs = _file_documents(cfg)
    else:
        docs = _hf_documents(cfg)
    return islice(docs, cfg.max_documents) if cfg.max_documents is not None else docs


def source_stamp(cfg: DataConfig) -> dict:
    """What the source is, precisely enough that any change to the corpus changes the stamp."""
    if cfg.source == "stdlib":
        root = stdlib_root()
        files = [_stat_entry(p, p.relative_to(root).as_posix()) for p in stdlib_files(cfg.stdlib_tests)]
        return {"kind": "stdlib", "root": str(root), "python": sys.version.split()[0], "files": files}
    if cfg.source == "files":
        files = [_stat_entry(p, str(p.resolve())) for p in resolve_paths(cfg.paths)]
        return {"kind": "files", "paths": list(cfg.paths), "text_field": cfg.text_field, "files": files}
    local = Path(cfg.dataset).expanduser()
    files = [_stat_entry(p, str(p.resolve())) for p in _walk(local)] if local.exists() else []
    return {"kind": "hf", "dataset": cfg.dataset, "config": cfg.dataset_config, "split": cfg.split,
            "text_field": cfg.text_field, "files": files}


def describe_source(stamp: dict) -> dict:
    """The stamp without its per-file list (which can be long), plus file count and bytes."""
    desc = {k: v for k, v in stamp.items() if k != "files"}
    desc["n_files"] = len(stamp["files"])
    desc["bytes"] = sum(f[1] for f in stamp["files"])
    return desc


# ----------------------------------------------------------------------------- validation split


def val_score(doc_id: str) -> float:
    """A uniform number in [0, 1) from the document id: the split is stable and order-free."""
    digest = hashlib.blake2b(doc_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_documents(docs: Iterator[Document], val_fraction: float) -> Iterator[tuple[Document, bool]]:
    """Yield (document, is_val). A document is held out when its id hashes below val_fraction.

    With val_fraction > 0 and >= 2 documents, at least one goes to val: the last train document is
    held back one step and sent to val if none was chosen by hash (only happens on tiny corpora).
    """
    pending: Document | None = None
    any_val = False
    n_train = 0
    for doc in docs:
        if val_score(doc.id) < val_fraction:
            any_val = True
            yield doc, True
            continue
        if pending is not None:
            yield pending, False
        pending = doc
        n_train += 1
    if pending is not None:
        to_val = not any_val and val_fraction > 0 and n_train >= 2
        yield pending, to_val


# ----------------------------------------------------------------------------- stdlib


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(include_tests: bool = True) -> list[Path]:
    """The interpreter's standard-library .py files in sorted order, without site-packages."""
    root = stdlib_root()
    skip = EXCLUDED_DIRS if include_tests else EXCLUDED_DIRS | TEST_DIRS
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        out += [Path(folder, f) for f in files if f.endswith(".py")]
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _stdlib_documents(cfg: DataConfig) -> Iterator[Document]:
    root = stdlib_root()
    for path in stdlib_files(cfg.stdlib_tests):
        yield Document(path.relative_to(root).as_posix(), _read_text(path))


# ----------------------------------------------------------------------------- local files


def resolve_paths(patterns: list[str]) -> list[Path]:
    """Files named by paths, directories (recursive, hidden entries skipped) or globs, in order."""
    seen: dict[Path, None] = {}
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = _walk(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True) if Path(m).is_file())
        if not matches:
            raise RecipeError(f"data.paths: {pattern!r} matches no file")
        seen.update(dict.fromkeys(matches))
    return list(seen)


def _walk(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [Path(folder, f) for f in files if not f.startswith(".")]
    return sorted(out)


def _file_documents(cfg: DataConfig) -> Iterator[Document]:
    for path in resolve_paths(cfg.paths):
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            yield from _json_documents(path, cfg.text_field)
        elif suffix == ".parquet":
            yield from _parquet_documents(path, cfg.text_field)
        else:
            yield Document(str(path), _read_text(path))


def _json_documents(path: Path, field: str) -> Iterator[Document]:
    """JSON lines (one object per line); a .json file holding one array of objects also works."""
    text = _read_text(path)
    if text.lstrip().startswith("["):
        rows = _parse_json(text, path)
        for i, row in enumerate(rows):
            yield from _text_of(row, field, f"{path}#{i}")
        return
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            yield from _text_of(_parse_json(line, f"{path}:{i + 1}"), field, f"{path}#{i}")


def _parse_json(text: str, where: object) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg})") from None


def _text_of(row: object, field: str, doc_id: str) -> Iterator[Document]:
    if not isinstance(row, dict) or field not in row:
        raise DataError(f"{doc_id}: no field {field!r} (set data.text_field)")
    value = row[field]
    if value is None:
        return
    if not isinstance(value, str):
        raise DataError(f"{doc_id}: field {field!r} is {type(value).__name__}, expected text")
    yield Document(doc_id, value)


def _parquet_documents(path: Path, field: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid / ArrowIOError
        raise DataError(f"{path}: not a readable Parquet file ({one_line(str(e))})") from None
    if field not in table.schema_arrow.names:
        raise DataError(f"{path}: no column {field!r} (set data.text_field; columns: "
                         f"{', '.join(table.schema_arrow.names)})")
    row = 0
    for batch in table.iter_batches(batch_size=ROW_BATCH, columns=[field]):
        for value in batch.column(0).to_pylist():
            if value is not None:
                yield Document(f"{path}#{row}", value)
            row += 1


# ----------------------------------------------------------------------------- datasets


def load_hf_dataset(cfg: DataConfig):
    """A `datasets` Dataset/IterableDataset: saved dir -> load_from_disk; data file -> its builder.

    A dataset that cannot be found or reached (offline, no cache, bad config or split name) is a
    DataError naming data.dataset, not a traceback from deep inside `datasets`.
    """
    try:
        return _load_hf_dataset(cfg)
    except RecipeError:
        raise
    except (ConnectionError, FileNotFoundError, ValueError) as e:
        offline = os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0") or \
            os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
        hint = "; offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE), only local or cached datasets load" if offline else ""
        reason = one_line(str(e)) or type(e).__name__
        raise DataError(f"data.dataset: cannot load {cfg.dataset!r} ({reason}){hint}") from None


def _load_hf_dataset(cfg: DataConfig):
    import datasets

    local = Path(cfg.dataset).expanduser()
    if local.is_dir() and any((local / n).exists() for n in ("state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if cfg.split not in ds:
                raise RecipeError(f"data.split: {cfg.split!r} not in {cfg.dataset} (has {', '.join(ds)})")
            ds = ds[cfg.split]
        return ds.to_iterable_dataset() if cfg.streaming else ds
    if local.is_file() and local.suffix.lower() in HF_FILE_BUILDERS:
        builder = HF_FILE_BUILDERS[local.suffix.lower()]
        return datasets.load_dataset(builder, data_files=str(local), split="train", streaming=cfg.streaming)
    return datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=cfg.split, streaming=cfg.streaming)


def _hf_documents(cfg: DataConfig) -> Iterator[Document]:
    ds = load_hf_dataset(cfg)
    columns = ds.column_names
    if columns is not None and cfg.text_field not in columns:
        raise DataError(f"data.text_field: no column {cfg.text_field!r} in {cfg.dataset} "
                         f"(columns: {', '.join(columns)})")
    if columns is not None:
        ds = ds.select_columns([cfg.text_field])
    index = 0
    for batch in ds.iter(batch_size=ROW_BATCH):
        if cfg.text_field not in batch:
            raise DataError(f"data.text_field: no column {cfg.text_field!r} in {cfg.dataset}")
        for value in batch[cfg.text_field]:
            if value is not None:
                yield Document(str(index), value)
            index += 1


# ----------------------------------------------------------------------------- helpers


def _read_text(path: Path) -> str:
    # errors="replace": a stray latin-1 byte should not stop a pretraining run.
    return path.read_bytes().decode("utf-8", errors="replace")


def _stat_entry(path: Path, name: str) -> list:
    st = path.stat()
    return [name, st.st_size, st.st_mtime_ns]
