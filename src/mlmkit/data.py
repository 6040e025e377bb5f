"""Load a corpus, pick and join its text fields, tokenize, group into blocks, cache on disk.

Local files are read by our own streaming readers rather than `datasets.load_dataset`: they
start in milliseconds instead of building an Arrow cache, keep memory flat on corpora larger
than RAM, and let errors name the exact file and line. Hub datasets go through `datasets`.
Blocks are written to flat binary files and memory-mapped, so a second run with the same
corpus, tokenizer and settings skips tokenization entirely; it checks the files' sizes and sha256
digests first, and rebuilds an entry that fails.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import gzip
import hashlib
import io
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import DataConfig, MlmkitError
from .files import cache_dir, check_entries, file_entries, read_sealed_json, write_sealed_json

log = logging.getLogger("mlmkit")

FORMATS = (".txt", ".jsonl", ".json", ".csv", ".parquet")
# Part of every cache key: 2 added the sizes and digests of the block files to meta.json, so
# entries from 1, which have none, are rebuilt rather than trusted.
CACHE_VERSION = "2"
_TOKENIZE_BATCH = 1000

# --------------------------------------------------------------------------- reading records


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for fmt in FORMATS:
        if name.endswith(fmt):
            return fmt
    return ""


def _looks_local(source: str) -> bool:
    return (
        any(c in source for c in "*?[")
        or source.startswith((".", "/", "~"))
        or _format_of(Path(source)) != ""
        or source.endswith(".gz")
    )


def resolve_files(source: str) -> list[Path] | None:
    """Local files named by a path, directory or glob; None when `source` is a Hub id."""
    expanded = os.path.expanduser(source)
    p = Path(expanded)
    if p.is_file():
        if not _format_of(p):
            raise MlmkitError(f"{source}: unsupported file type; expected one of "
                              f"{', '.join(FORMATS)} (optionally .gz)")
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and _format_of(f))
        if not files:
            raise MlmkitError(f"{source}: directory holds no {', '.join(FORMATS)} files")
        return files
    if any(c in expanded for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(expanded, recursive=True)
                       if Path(f).is_file() and _format_of(Path(f)))
        if not files:
            raise MlmkitError(f"{source}: the pattern matches no {', '.join(FORMATS)} files")
        return files
    if _looks_local(source):
        raise MlmkitError(f"{source}: file or directory not found")
    return None


def _open_bytes(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _open_text(path: Path) -> io.TextIOBase:
    return io.TextIOWrapper(_open_bytes(path), encoding="utf-8")


def _not_utf8(path: Path, e: UnicodeDecodeError) -> str:
    """Where a file's first invalid UTF-8 byte is, by line. The decoder's own position counts
    from the start of its read buffer, not of the file, so the file is decoded again line by
    line (UTF-8 never puts a newline byte inside a character); only this error path pays."""
    offset = 0
    try:
        with _open_bytes(path) as fh:
            for lineno, line in enumerate(fh, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    where = f"offset {offset + bad.start:,}" + (
                        " of the decompressed data" if path.name.lower().endswith(".gz") else "")
                    hint = (" (it looks like UTF-16)"
                            if lineno == 1 and line[:2] in (b"\xff\xfe", b"\xfe\xff") else "")
                    return (f"{path}: line {lineno}: byte {line[bad.start]:#04x} at {where} is "
                            f"not UTF-8; expected UTF-8 text{hint}")
                offset += len(line)
    except (OSError, EOFError):
        pass
    return f"{path}: cannot read: {e}; expected UTF-8 text"


# A record comes with its place: (file, line or element number, kind of number).
Where = tuple[str, int, str]


def _read_file(path: Path) -> Iterator[tuple[Where, dict[str, Any]]]:
    fmt = _format_of(path)
    name = str(path)
    try:
        if fmt == ".parquet":
            import pyarrow.parquet as pq

            n = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
                for rec in batch.to_pylist():
                    n += 1
                    yield (name, n, "row"), rec
            return
        with _open_text(path) as fh:
            if fmt == ".txt":
                for i, line in enumerate(fh, 1):
                    yield (name, i, "line"), {"text": line.rstrip("\n")}
            elif fmt == ".csv":
                reader = csv.DictReader(fh)
                for rec in reader:
                    yield (name, reader.line_num, "line"), rec
            else:
                head = fh.read(1)
                while head and head.isspace():
                    head = fh.read(1)
                if fmt == ".json" and head == "[":
                    for i, rec in enumerate(_iter_json_array(fh, name), 1):
                        yield (name, i, "record"), rec
                    return
                first = head + fh.readline()
                for i, line in enumerate([first] if head else [], 1):
                    yield (name, i, "line"), _parse_json_line(line, name, i)
                for i, line in enumerate(fh, 2):
                    if line.strip():
                        yield (name, i, "line"), _parse_json_line(line, name, i)
    except MlmkitError:
        raise
    except UnicodeDecodeError as e:
        raise MlmkitError(_not_utf8(path, e)) from None
    except (OSError, EOFError, csv.Error) as e:
        raise MlmkitError(f"{name}: cannot read: {e}") from None
    except Exception as e:  # pyarrow and friends: still one line, naming the file
        raise MlmkitError(f"{name}: cannot read as {fmt}: {str(e).splitlines()[0]}") from None


def _iter_json_array(fh: io.TextIOBase, name: str, chunk: int = 1 << 20) -> Iterator[Any]:
    """The elements of a top-level JSON array (its '[' already read), decoded one at a time from
    a buffer of about one element plus `chunk` characters: a corpus stored as one multi-GB array
    never sits in memory whole, which `json.load` would need."""
    decoder = json.JSONDecoder()
    buf, pos, eof, n = "", 0, False, 0

    def more() -> None:
        nonlocal buf, pos, eof
        data = fh.read(chunk)
        eof = not data
        buf, pos = buf[pos:] + data, 0

    def next_char() -> str:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos].isspace():
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if eof:
                raise MlmkitError(f"{name}: the JSON array ends after element {n} without ']'")
            more()

    if next_char() == "]":
        return
    while True:
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
                if end < len(buf) or eof:  # a number at the buffer's end may continue
                    break
            except json.JSONDecodeError as e:
                if eof:
                    raise MlmkitError(f"{name}: element {n + 1} of the JSON array: invalid JSON "
                                      f"({e.msg})") from None
            more()
        pos, n = end, n + 1
        yield value
        c = next_char()
        pos += 1
        if c == "]":
            return
        if c != ",":
            raise MlmkitError(f"{name}: after element {n} of the JSON array: expected ',' or "
                              f"']', found {c!r}")
        next_char()


def _parse_json_line(line: str, name: str, lineno: int) -> dict[str, Any]:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise MlmkitError(f"{name}: line {lineno}: invalid JSON ({e.msg}); expected one JSON "
                          "object per line") from None


def _load_hub(cfg: DataConfig) -> Any:
    import datasets

    def load(**kw: Any) -> Any:
        return datasets.load_dataset(cfg.data, cfg.data_config, split=cfg.split, **kw)

    try:
        try:
            return load()
        except Exception as e:
            if "scripts are no longer supported" not in str(e):
                raise
            # datasets >= 4 refuses loading scripts (eli5_category is one); the Hub keeps an
            # automatic parquet conversion of such datasets on a special revision.
            log.warning("%s is a script-based dataset, which datasets>=4 no longer runs; "
                        "using the Hub's parquet conversion (revision refs/convert/parquet)",
                        cfg.data)
            return load(revision="refs/convert/parquet")
    except MlmkitError:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        offline = isinstance(e, (ConnectionError, TimeoutError)) or any(
            w in msg.lower() for w in ("connect", "offline", "resolve", "network", "reach",
                                       "max retries", "timed out"))
        hint = (" The Hub is unreachable: pass a local file, directory or glob with --data, "
                "or set HF_HUB_OFFLINE=1 to use datasets already in the local cache."
                if offline else "")
        raise MlmkitError(f"dataset {cfg.data!r} (split {cfg.split!r}): cannot load: {msg}.{hint}"
                          ) from None


def iter_records(cfg: DataConfig) -> tuple[Iterator[tuple[Where, dict[str, Any]]], int | None, str]:
    """All records of the corpus in order, the count when known, and a fingerprint of the source."""
    if not cfg.data:
        raise MlmkitError("--data: no corpus given; expected a Hub dataset id or local files")
    files = resolve_files(cfg.data)
    if files is not None:
        ident = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        gen = (r for f in files for r in _read_file(f))
        return _take(gen, cfg.limit), None, json.dumps(ident)
    ds = _load_hub(cfg)
    n = len(ds) if cfg.limit is None else min(cfg.limit, len(ds))

    def rows() -> Iterator[tuple[Where, dict[str, Any]]]:
        i = 0
        for batch in ds.iter(batch_size=1000):
            keys = list(batch)
            for values in zip(*(batch[k] for k in keys)):
                i += 1
                yield (f"{cfg.data}[{cfg.split}]", i, "record"), dict(zip(keys, values))

    return _take(rows(), cfg.limit), n, json.dumps([cfg.data, cfg.data_config, cfg.split,
                                                    getattr(ds, "_fingerprint", None)])


def _take(it: Iterator, limit: int | None) -> Iterator:
    for i, x in enumerate(it):
        if limit is not None and i >= limit:
            return
        yield x


# --------------------------------------------------------------------------- picking text


def _paths(rec: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(rec, dict):
        for k, v in rec.items():
            out.append(f"{prefix}{k}")
            if isinstance(v, dict):
                out.extend(_paths(v, f"{prefix}{k}."))
    return out


def _where(w: Where) -> str:
    return f"{w[0]}: {w[2]} {w[1]}"


def get_field(rec: dict[str, Any], path: str, where: Where) -> str:
    """The text at a dotted path; lists of strings are joined with a space, as the guide does."""
    value: Any = rec
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value) and value:
            if not all(part in v for v in value):
                value = None
                break
            value = [v[part] for v in value]
        else:
            fields_ = ", ".join(_paths(rec)) or "(none: the record is not an object)"
            raise MlmkitError(f"{_where(where)}: no field {path!r}; fields here: {fields_}")
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    kind = type(value).__name__
    if isinstance(value, list):
        kind = "list of " + ", ".join(sorted({type(v).__name__ for v in value if
                                                not isinstance(v, str)}))
    raise MlmkitError(f"{_where(where)}: field {path!r} holds a {kind}; expected text or a list "
                      "of text")


def default_text_field(rec: dict[str, Any], where: Where) -> str:
    if not isinstance(rec, dict):
        raise MlmkitError(f"{_where(where)}: expected an object with text fields, got "
                          f"{type(rec).__name__}")
    if "text" in rec:
        return "text"
    strings = [k for k, v in rec.items() if isinstance(v, str)]
    if len(strings) == 1:
        return strings[0]
    raise MlmkitError(f"{_where(where)}: no 'text' field and no single text field to pick; name "
                      f"one with --text-field (fields here: {', '.join(_paths(rec))})")


@dataclass
class TextStats:
    records: int = 0
    empty: int = 0
    fields: list[str] = field(default_factory=list)


def iter_texts(cfg: DataConfig, stats: TextStats | None = None) -> Iterator[tuple[int, str]]:
    """(record number, text) for every non-empty record; empty ones are counted in `stats`."""
    return _texts(iter_records(cfg)[0], cfg.text_field, stats or TextStats())


def _texts(records: Iterator[tuple[Where, Any]], text_fields: list[str],
           stats: TextStats) -> Iterator[tuple[int, str]]:
    stats.fields = list(text_fields)
    for i, (where, rec) in enumerate(records):
        if not isinstance(rec, dict):
            raise MlmkitError(f"{_where(where)}: expected an object, got {type(rec).__name__}")
        if not stats.fields:
            stats.fields = [default_text_field(rec, where)]
        stats.records += 1
        text = " ".join(t for t in (get_field(rec, f, where) for f in stats.fields) if t)
        if text.strip():
            yield i, text
        else:
            stats.empty += 1


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


# --------------------------------------------------------------------------- blocks


class _BlockWriter:
    """Appends token ids and writes every full block to a flat binary file."""

    def __init__(self, path: Path, block_size: int, dtype: np.dtype) -> None:
        self.fh = open(path, "wb")
        self.block_size, self.dtype = block_size, dtype
        self.pending: list[np.ndarray] = []
        self.pending_len = 0
        self.blocks = 0
        self.tokens = 0

    def add(self, ids: np.ndarray) -> None:
        self.pending.append(ids)
        self.pending_len += len(ids)
        self.tokens += len(ids)
        if self.pending_len >= self.block_size:
            flat = np.concatenate(self.pending)
            n = len(flat) // self.block_size * self.block_size
            self.fh.write(flat[:n].astype(self.dtype, copy=False).tobytes())
            self.blocks += n // self.block_size
            self.pending, self.pending_len = [flat[n:]], len(flat) - n

    def close(self, pad_id: int | None) -> int:
        """Finish the file; returns the number of tokens dropped (the final partial block)."""
        dropped = self.pending_len
        if pad_id is not None and self.pending_len:
            tail = np.full(self.block_size, pad_id, dtype=self.dtype)
            tail[: self.pending_len] = np.concatenate(self.pending)
            self.fh.write(tail.tobytes())
            self.blocks += 1
            dropped = 0
        self.fh.flush()
        os.fsync(self.fh.fileno())  # on disk before meta.json, written after it, vouches for it
        self.fh.close()
        return dropped


@dataclass
class Corpus:
    """Tokenized blocks of the training and held-out records, memory-mapped from disk."""

    train: np.ndarray
    eval: np.ndarray
    stats: dict[str, Any]
    cache_path: Path | None = None
    _tmp: Any = None  # keeps an uncached corpus's temporary directory alive

    def describe(self) -> str:
        s = self.stats
        parts = [f"{s['records']:,} records", f"{s['train_blocks']:,} train / "
                 f"{s['eval_blocks']:,} eval blocks of {s['block_size']} tokens"]
        if s["empty_records"]:
            parts.append(f"{s['empty_records']:,} empty records skipped")
        if s["dropped_tokens"]:
            parts.append(f"{s['dropped_tokens']:,} tokens of final partial blocks dropped "
                         "(--pad-last-block keeps them)")
        return ", ".join(parts)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def cache_root(cfg: DataConfig) -> Path:
    return cache_dir(cfg.cache_dir) / "blocks"


def _backend(tokenizer: Any) -> Any:
    from tokenizers import Tokenizer

    if not getattr(tokenizer, "is_fast", False):
        raise MlmkitError(f"tokenizer of {getattr(tokenizer, 'name_or_path', '?')}: a fast "
                          "(Rust) tokenizer is required; none could be built for this model")
    # A private copy: a tokenizer.json may carry truncation or padding settings we must not use.
    tok = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    return tok


def _batched(it: Iterable, n: int) -> Iterator[list]:
    batch: list = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def load_blocks(cfg: DataConfig, tokenizer: Any, progress: bool = True) -> Corpus:
    """Tokenize the corpus once into train/eval blocks, or reuse the cached blocks when their
    meta.json, sizes and sha256 digests check out; a damaged entry is rebuilt, with a warning."""
    records, total, source_id = iter_records(cfg)
    key_src = json.dumps([CACHE_VERSION, source_id, tokenizer_fingerprint(tokenizer),
                          cfg.text_field, cfg.limit, cfg.block_size, cfg.eval_fraction,
                          cfg.pad_last_block, cfg.seed])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    if cfg.no_cache:
        tmp = tempfile.TemporaryDirectory(prefix="mlmkit-blocks-")
        try:
            meta = _tokenize_into(Path(tmp.name), records, total, cfg, tokenizer, progress)
        except BaseException:
            tmp.cleanup()
            raise
        corpus = _open_corpus(Path(tmp.name), meta)
        corpus._tmp = tmp
        return corpus

    final = cache_root(cfg) / key
    if os.path.lexists(final):
        meta, problems = _entry_problems(final)
        if meta is not None:
            return _open_corpus(final, meta)
        _refuse_foreign(final, problems)
        log.warning("block cache %s: %s; rebuilding", final, "; ".join(problems))
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".tmp-") as work:
        meta = _tokenize_into(Path(work), records, total, cfg, tokenizer, progress)
        _install(Path(work), final)
    return _open_corpus(final, meta)


def _tokenize_into(work: Path, records: Iterator, total: int | None, cfg: DataConfig,
                   tokenizer: Any, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    backend = _backend(tokenizer)
    dtype = np.dtype(np.uint16 if backend.get_vocab_size() <= 65535 else np.int32)
    writers = {s: _BlockWriter(work / f"{s}.bin", cfg.block_size, dtype) for s in ("train", "eval")}
    stats = TextStats()
    bar = tqdm(total=total, desc="tokenizing", unit=" records", disable=not progress)

    try:
        for batch in _batched(_texts(records, cfg.text_field, stats), _TOKENIZE_BATCH):
            idx = np.fromiter((i for i, _ in batch), dtype=np.int64, count=len(batch))
            held = is_eval_record(idx, cfg.seed, cfg.eval_fraction)
            encs = backend.encode_batch_fast([t for _, t in batch], add_special_tokens=True)
            for split, sel in (("train", ~held), ("eval", held)):
                chosen = [encs[j].ids for j in np.flatnonzero(sel)]
                if chosen:
                    writers[split].add(np.concatenate([np.asarray(ids, dtype=np.int64)
                                                       for ids in chosen]))
            bar.update(stats.records - bar.n)
    except BaseException:
        # Clear the bar, so the one-line error that follows starts its own line.
        bar.leave = False
        bar.close()
        raise
    bar.close()
    pad_id = tokenizer.pad_token_id if cfg.pad_last_block else None
    dropped = sum(w.close(pad_id) for w in writers.values())

    if stats.records == 0:
        raise MlmkitError(f"{cfg.data}: the corpus holds no records")
    if stats.records == stats.empty:
        raise MlmkitError(f"{cfg.data}: all {stats.records:,} records have empty text in "
                          f"field(s) {', '.join(stats.fields)}")
    if writers["train"].blocks == 0:
        raise MlmkitError(f"{cfg.data}: the training part holds {writers['train'].tokens:,} "
                          f"tokens, less than one block of {cfg.block_size}; add text, lower "
                          "--block-size or pass --pad-last-block")
    if cfg.eval_fraction > 0 and writers["eval"].blocks == 0:
        raise MlmkitError(f"{cfg.data}: the held-out part ({cfg.eval_fraction:.0%} of records) "
                          f"holds {writers['eval'].tokens:,} tokens, less than one block of "
                          f"{cfg.block_size}; add text, raise --eval-fraction or lower "
                          "--block-size")
    meta = {
        "records": stats.records, "empty_records": stats.empty, "text_field": stats.fields,
        "block_size": cfg.block_size, "dtype": dtype.name,
        "train_blocks": writers["train"].blocks, "eval_blocks": writers["eval"].blocks,
        "train_tokens": writers["train"].tokens, "eval_tokens": writers["eval"].tokens,
        "dropped_tokens": dropped, "files": file_entries(work, _BLOCK_FILES),
    }
    # Last, and atomically: a directory without a valid meta.json is never trusted.
    write_sealed_json(work / "meta.json", meta)
    return meta


def _open_corpus(path: Path, meta: dict[str, Any]) -> Corpus:
    arrays = {}
    for split in ("train", "eval"):
        n = meta[f"{split}_blocks"]
        arrays[split] = (np.memmap(path / f"{split}.bin", dtype=meta["dtype"], mode="r",
                                   shape=(n, meta["block_size"]))
                         if n else np.zeros((0, meta["block_size"]), dtype=meta["dtype"]))
    stats = {k: v for k, v in meta.items() if k != "files"}  # digests are the cache's business
    return Corpus(train=arrays["train"], eval=arrays["eval"], stats=stats, cache_path=path)


# --------------------------------------------------------------------------- cache integrity
# An entry is <cache>/blocks/<key>/ holding exactly _ENTRY_FILES. It is built in a temporary
# directory beside it and renamed into place whole, so readers never see half of one.

_BLOCK_FILES = ("train.bin", "eval.bin")
_ENTRY_FILES = (*_BLOCK_FILES, "meta.json")
_META_COUNTS = ("records", "empty_records", "block_size", "train_blocks", "eval_blocks",
                "train_tokens", "eval_tokens", "dropped_tokens")


def _entry_problems(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The meta of the cache entry at `path`, or None and what is wrong with the entry, one
    phrase per fault. The block files are hashed whole: about 1 s per GB, against minutes per
    GB for tokenizing, buys never training on a flipped byte."""
    meta, problem = read_sealed_json(path / "meta.json")
    if meta is None:
        return None, [problem]
    problems = _meta_problems(meta) or check_entries(
        path, {n: meta["files"][n] for n in _BLOCK_FILES})
    return (None, problems) if problems else (meta, [])


def _meta_problems(meta: dict[str, Any]) -> list[str]:
    """Whether a meta.json that matches its own digest still describes blocks that fit the
    sizes it records: the memory maps are shaped from it, so a wrong writer must not get by."""
    bad = [k for k in _META_COUNTS if not (type(meta.get(k)) is int and meta[k] >= 0)]
    if meta.get("block_size") == 0:
        bad.append("block_size")
    if meta.get("dtype") not in ("uint16", "int32"):
        bad.append("dtype")
    files = meta.get("files")
    if not (isinstance(files, dict) and all(isinstance(files.get(n), dict) for n in _BLOCK_FILES)):
        bad.append("files")
    if bad:
        return [f"meta.json has no valid {', '.join(bad)}"]
    problems = []
    for split in ("train", "eval"):
        n, size = meta[f"{split}_blocks"], files[f"{split}.bin"].get("size")
        want = n * meta["block_size"] * np.dtype(meta["dtype"]).itemsize
        if size != want:
            problems.append(f"meta.json records {size} bytes for {split}.bin, but {n:,} blocks "
                            f"of {meta['block_size']} {meta['dtype']} take {want:,}")
    return problems


def _refuse_foreign(final: Path, problems: list[str]) -> None:
    """Stop before rebuilding over a path that holds what mlmkit did not write there: such a
    thing is never deleted."""
    fix = "move it away or pass --no-cache"
    if final.is_symlink() or not final.is_dir():
        raise MlmkitError(f"block cache {final}: not a directory mlmkit made; {fix}")
    try:
        foreign = sorted(set(os.listdir(final)) - set(_ENTRY_FILES))
    except OSError as e:
        raise MlmkitError(f"block cache {final}: cannot list it: {e.strerror}; {fix}") from None
    if foreign:
        raise MlmkitError(f"block cache {final}: {'; '.join(problems)}, and it holds "
                          f"{', '.join(foreign)}, which mlmkit did not write; {fix}")


def _install(work: Path, final: Path) -> None:
    """Move the finished entry `work` to `final`. A broken entry there is renamed aside first and
    deleted only once the new one is in place, so `final` is always absent, the old entry or a
    whole new one; processes racing here all end up with identical blocks at `final`."""
    try:
        os.rename(work, final)
        return
    except OSError:
        pass  # `final` exists: the broken entry, or one another process has just installed
    if _entry_problems(final)[0] is not None:
        return  # another process won the race; its blocks are identical to ours
    aside = final.with_name(f".broken-{final.name}-{secrets.token_hex(4)}")
    with contextlib.suppress(OSError):  # a racing process may have moved it aside already
        os.rename(final, aside)
    try:
        os.rename(work, final)
    except OSError as e:
        if _entry_problems(final)[0] is None:  # not another process's identical entry
            raise MlmkitError(f"block cache {final}: cannot replace the damaged entry: "
                              f"{e.strerror}") from None
    finally:
        _discard_entry(aside)


def _discard_entry(path: Path) -> None:
    # Only the files an entry is made of; anything else stays, and with it the directory.
    for name in _ENTRY_FILES:
        with contextlib.suppress(OSError):
            (path / name).unlink()
    with contextlib.suppress(OSError):
        path.rmdir()
