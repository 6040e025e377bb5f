"""A corpus for training, record by record: local files, a Hub dataset or in-memory data;
slices of its split, its identity for the cache, and the held-out records.

Local files are read by our own streaming readers (formats.py) rather than
`datasets.load_dataset`: they start in milliseconds instead of building an Arrow cache, keep
memory flat on corpora larger than RAM, and let errors name the exact file and line. Hub
datasets go through `datasets`. In the Python API a corpus may also be in memory: a list of
texts or records, or a `datasets.Dataset`. Turning the texts into blocks of token ids is
blocks.py's business.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlmkit.config import DataConfig
from mlmkit.errors import MlmkitError
from mlmkit.io.fields import TextStats, Where, record_texts
from mlmkit.io.formats import BLANK, read_entries
from mlmkit.io.hub import OFFLINE, first_line, offline, reach
from mlmkit.io.locate import format_of, is_pattern, list_files
from mlmkit.settings import named

log = logging.getLogger("mlmkit")


# --------------------------------------------------------------------------- local files


def resolve_files(source: Any) -> list[Path] | None:
    """Local files named by a path, directory (its subdirectories too) or glob; None when
    `source` is a Hub id, in-memory data or None."""
    if source is None or is_in_memory(source):
        return None
    source = os.fspath(source)
    if not _looks_local(source) and not os.path.exists(os.path.expanduser(source)):
        return None
    return [Path(f.uri) for f in list_files(source, recursive=True, known_only=True, flag="")]


def _looks_local(source: str) -> bool:
    return (is_pattern(source) or source.startswith((".", "/", "~"))
            or format_of(source) != "" or source.endswith(".gz"))


def _read_file(path: Path) -> Iterator[tuple[Where, dict[str, Any]]]:
    """The records of a file for training: the first one that cannot be read stops the run,
    with its place; blank JSON lines are no records, blank text lines are (empty ones)."""
    name, fmt = str(path), format_of(str(path))
    for e in read_entries(name, fmt):
        if e.problem is not None:
            raise MlmkitError(f"{name}: {e.unit} {e.number}: {e.problem.detail}" if e.unit
                              else e.problem.detail)
        if fmt == ".txt":
            yield (name, e.number, "line"), {"text": "" if e.value is BLANK else e.value}
        elif e.value is not BLANK:
            yield (name, e.number, e.unit), e.value


def _load_hub(cfg: DataConfig) -> Any:
    import datasets

    def load(**kw: Any) -> Any:
        return datasets.load_dataset(cfg.data, cfg.data_config, split=cfg.split, **kw)

    unreachable = reach(cfg.data, "dataset")
    try:
        with offline(unreachable is not None):
            try:
                ds = load()
            except Exception as e:
                if "scripts are no longer supported" not in str(e):
                    raise
                # datasets >= 4 refuses loading scripts (eli5_category is one); the Hub keeps
                # an automatic parquet conversion of such datasets on a special revision.
                log.warning("%s is a script-based dataset, which datasets>=4 no longer runs; "
                            "using the Hub's parquet conversion (revision refs/convert/parquet)",
                            cfg.data)
                ds = load(revision="refs/convert/parquet")
    except MlmkitError:
        raise
    except Exception as e:
        what = f"dataset {cfg.data!r} (split {cfg.split!r})"
        if unreachable is not None and isinstance(e, ConnectionError):  # not in the cache
            if unreachable == OFFLINE:
                raise MlmkitError(f"{what}: not in the local cache, the only place "
                                  "HF_HUB_OFFLINE=1 lets datasets load from; pass a local "
                                  f"file, directory or glob as {named('data', ...)}, or unset "
                                  "HF_HUB_OFFLINE to download it") from None
            raise MlmkitError(f"{what}: the Hugging Face Hub cannot be reached ({unreachable}) "
                              "and the dataset is not in the local cache; pass a local file, "
                              f"directory or glob as {named('data', ...)}, or set HF_HUB_OFFLINE=1 "
                              "to use datasets already in the local cache") from None
        raise MlmkitError(f"{what}: cannot load: {first_line(e)}") from None
    if unreachable is not None and unreachable != OFFLINE:
        log.warning("the Hugging Face Hub cannot be reached (%s); using the cached copy of "
                    "dataset %s", unreachable, cfg.data)
    return ds


@dataclass
class Source:
    """A corpus opened for reading: its records in order, and what names and identifies it."""

    records: Iterator[tuple[Where, dict[str, Any]]]
    total: int | None  # how many records `records` will give, when known
    ident: str  # changes whenever the records may have: the cache key is built on it
    label: str  # how messages name it: the path or Hub id, or 'data' for in-memory data
    description: str  # printable and JSON-safe, as describe_source gives it
    files: tuple[Path, ...] = ()  # the local files read: the cache key hashes their bytes


def iter_records(cfg: DataConfig, name: str = "data") -> Source:
    """The first `cfg.limit` records of `cfg.data` in order; `name` is the setting it came from,
    which messages about in-memory data use ('data[12]: ...')."""
    data = cfg.data
    if data is None or (isinstance(data, str) and not data):
        raise MlmkitError(f"{named(name)}: no corpus given; expected a Hub dataset "
                          "id or local files")
    if is_in_memory(data):
        if cfg.split != "train":
            raise MlmkitError(f"{named('split', cfg.split)}: in-memory data is not split; "
                              "slice it yourself (texts[:1000], dataset.select(range(1000)))")
        return _memory_source(data, name, cfg.limit)
    files = resolve_files(data)
    if files is not None:
        ident: Any = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        slices = local_slices(cfg.split)
        gen = (r for f in files for r in _read_file(f))
        description = str(data)
        if slices is not None:
            gen = _sliced(lambda: (r for f in files for r in _read_file(f)), slices)
            ident, description = [ident, cfg.split], f"{data} (split {cfg.split})"
        return Source(_take(gen, cfg.limit), None, json.dumps(ident), str(data), description,
                      tuple(files))
    ds = _load_hub(cfg)
    n = len(ds) if cfg.limit is None else min(cfg.limit, len(ds))
    where = f"{data}[{cfg.split}]"
    rows = (((where, i, "record"), rec) for i, rec in enumerate(_dataset_rows(ds), 1))
    ident = json.dumps([data, cfg.data_config, cfg.split, getattr(ds, "_fingerprint", None)])
    return Source(_take(rows, cfg.limit), n, ident, data, data)


# A slice of a split as datasets writes one: train, train[:1000], train[10%:], train[-500:].
_SLICE = re.compile(r"(?P<split>[\w.-]+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?")


def local_slices(split: str) -> list[tuple[str | None, str | None]] | None:
    """The (start, stop) bounds of `split` for local files, None for all their records.

    datasets reads local files as one split named 'train'; so does mlmkit, and slices it the
    way datasets does (absolute or percent bounds, negative from the end, parts joined with
    '+'). Any other split name is refused: local files have no test split of their own, the
    held-out records come from --eval-fraction."""
    if split == "train":
        return None
    parts = []
    for part in split.split("+"):
        m = _SLICE.fullmatch(part.strip())
        if m is None:
            raise MlmkitError(f"{named('split', split)}: expected 'train' or a slice of it, "
                              "such as 'train[:1000]', 'train[10%:]' or 'train[:5%]+train[-5%:]'")
        if m["split"] != "train":
            raise MlmkitError(f"{named('split', split)}: local files are one split, 'train' "
                              "(as datasets reads them), which can be sliced ('train[:90%]'); "
                              f"{named('eval_fraction')} holds records out for evaluation, and "
                              "eval scores those by default")
        parts.append((m["start"], m["stop"]))
    return parts


def _sliced(records: Callable[[], Iterator], slices: list[tuple[str | None, str | None]]
            ) -> Iterator:
    """The records of each slice in turn, read again for each; counted first only when a
    bound needs the total (a percent or a negative bound)."""
    total = None
    if any(b is not None and (b.endswith("%") or b.startswith("-"))
           for bounds in slices for b in bounds):
        total = sum(1 for _ in records())
    for start, stop in slices:
        lo, hi = _bound(start, total), _bound(stop, total)
        yield from itertools.islice(records(), lo or 0, hi)


def _bound(b: str | None, total: int | None) -> int | None:
    """A slice bound as a record index, rounded and clipped as datasets does."""
    if b is None:
        return None
    if b.endswith("%"):
        i = int(round(int(b[:-1]) * total / 100))  # type: ignore[operator]
    else:
        i = int(b)
    if i < 0:
        i = max(total + i, 0)  # type: ignore[operator]
    return i if total is None else min(i, total)


def _dataset_rows(ds: Any) -> Iterator[dict[str, Any]]:
    # Python objects whatever format the caller set on the dataset (torch, numpy, ...).
    for batch in ds.with_format(None).iter(batch_size=1000):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            yield dict(zip(keys, values))


def _take(it: Iterator, limit: int | None) -> Iterator:
    for i, x in enumerate(it):
        if limit is not None and i >= limit:
            return
        yield x


# --------------------------------------------------------------------------- texts


def iter_texts(cfg: DataConfig, stats: TextStats | None = None) -> Iterator[tuple[int, str]]:
    """(record number, text) for every non-empty record; empty ones are counted in `stats`."""
    return record_texts(iter_records(cfg).records, cfg.text_field, stats or TextStats())


# --------------------------------------------------------------------------- in-memory data


def is_in_memory(data: Any) -> bool:
    """Whether `data` is a corpus itself (a list of texts or records, a Dataset), not its name."""
    return data is not None and not isinstance(data, (str, os.PathLike))


def describe_source(data: Any) -> str | None:
    """How a corpus is named in train_config.json and logs: a path or Hub id as given; in-memory
    data as '<in-memory: 1,000 texts, sha256 0123456789abcdef…>', printable and JSON-safe."""
    if data is None or not is_in_memory(data):
        return None if data is None else os.fspath(data)
    return _describe_memory(data, *_digest_rows(_memory_rows(data, "data")))


def _memory_source(data: Any, name: str, limit: int | None) -> Source:
    # Cached like a file, keyed by a sha256 of the records used: one extra pass over the data,
    # a small cost beside tokenizing it, and the cache then works (and is verified) as for
    # files. A digest of the records rather than of the texts they give: the same one that
    # names the data, and no text field needs resolving first.
    n, digest, texts_only = _digest_rows(_take(_memory_rows(data, name), limit))
    rows = _take(_memory_rows(data, name), limit)
    records = (((name, i, "index"), _as_record(rec, name, i)) for i, rec in enumerate(rows))
    return Source(records, n, json.dumps(["in-memory", n, digest]), name,
                  _describe_memory(data, n, digest, texts_only))


def _memory_rows(data: Any, name: str) -> Iterator[Any]:
    datasets = sys.modules.get("datasets")  # data cannot be a Dataset if it was never imported
    if datasets is not None and isinstance(data, datasets.IterableDataset):
        raise MlmkitError(f"{name}: a streaming datasets.IterableDataset cannot be read twice "
                          "(once to identify it, once to tokenize); pass a datasets.Dataset or "
                          "files")
    if datasets is not None and isinstance(data, datasets.Dataset):
        return _dataset_rows(data)
    if isinstance(data, (list, tuple)):
        return iter(data)
    raise MlmkitError(f"{name}: expected a Hub dataset id, a path, a list of texts or records, "
                      f"or a datasets.Dataset; got a {type(data).__name__}")


def _as_record(rec: Any, name: str, i: int) -> dict[str, Any]:
    if isinstance(rec, str):
        return {"text": rec}
    if isinstance(rec, dict):
        return rec
    raise MlmkitError(f"{name}[{i}]: expected a text (str) or a record (dict), got "
                      f"{type(rec).__name__}")


def _digest_rows(rows: Iterable[Any]) -> tuple[int, str, bool]:
    """(count, sha256 of the rows as canonical JSON, one a line; whether all are texts). A value
    JSON cannot write counts by its repr: an unstable repr costs a cache miss at most, since
    strings, the only values blocks are made of, are always written exactly."""
    h, n, texts_only = hashlib.sha256(), 0, True
    for rec in rows:
        try:
            line = json.dumps(rec, sort_keys=True, default=_plain)
        except TypeError:  # keys of mixed types cannot be sorted
            line = repr(rec)
        h.update(line.encode())
        h.update(b"\n")
        n += 1
        texts_only = texts_only and isinstance(rec, str)
    return n, h.hexdigest(), texts_only and n > 0


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    return f"<{type(value).__qualname__}: {value!r}>"


def _describe_memory(data: Any, n: int, digest: str, texts_only: bool) -> str:
    what = "texts" if texts_only else "records"
    kind = "in-memory Dataset" if not isinstance(data, (list, tuple)) else "in-memory"
    return f"<{kind}: {n:,} {what}, sha256 {digest[:16]}…>"


# --------------------------------------------------------------------------- held-out split


def is_eval_record(index: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Deterministic per-record split by a splitmix64 hash of (seed, index).

    A hash instead of a shuffled permutation lets a streamed corpus of unknown length be split
    in one pass, identically on every machine.
    """
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53) < fraction
