"""Tokenize a corpus's texts, group them into fixed-size blocks, and cache the blocks on disk.

Blocks are written to flat binary files and memory-mapped, so a second run with the same
corpus, tokenizer and settings skips tokenization entirely; it checks the files' sizes and sha256
digests first, and rebuilds an entry that fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import DataConfig, MlmkitError
from .data import Source, TextStats, is_eval_record, iter_records, record_texts
from .files import cache_dir, check_entries, file_entries, read_sealed_json, write_sealed_json

log = logging.getLogger("mlmkit")

# Part of every cache key: 2 added the sizes and digests of the block files to meta.json, so
# entries from 1, which have none, are rebuilt rather than trusted.
CACHE_VERSION = "2"
_TOKENIZE_BATCH = 1000

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
    source = iter_records(cfg)
    corpus = _load_entry(cfg, source, tokenizer, progress)
    corpus.stats["source"] = source.description
    return corpus


def _load_entry(cfg: DataConfig, source: Source, tokenizer: Any, progress: bool) -> Corpus:
    key_src = json.dumps([CACHE_VERSION, source.ident, tokenizer_fingerprint(tokenizer),
                          cfg.text_field, cfg.limit, cfg.block_size, cfg.eval_fraction,
                          cfg.pad_last_block, cfg.seed])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    if cfg.no_cache:
        tmp = tempfile.TemporaryDirectory(prefix="mlmkit-blocks-")
        try:
            meta = _tokenize_into(Path(tmp.name), source, cfg, tokenizer, progress)
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
        meta = _tokenize_into(Path(work), source, cfg, tokenizer, progress)
        _install(Path(work), final)
    return _open_corpus(final, meta)


def _tokenize_into(work: Path, source: Source, cfg: DataConfig, tokenizer: Any,
                   progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    backend = _backend(tokenizer)
    dtype = np.dtype(np.uint16 if backend.get_vocab_size() <= 65535 else np.int32)
    writers = {s: _BlockWriter(work / f"{s}.bin", cfg.block_size, dtype) for s in ("train", "eval")}
    stats = TextStats()
    bar = tqdm(total=source.total, desc="tokenizing", unit=" records", disable=not progress)

    try:
        for batch in _batched(record_texts(source.records, cfg.text_field, stats), _TOKENIZE_BATCH):
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
        raise MlmkitError(f"{source.label}: the corpus holds no records")
    if stats.records == stats.empty:
        raise MlmkitError(f"{source.label}: all {stats.records:,} records have empty text in "
                          f"field(s) {', '.join(stats.fields)}")
    if writers["train"].blocks == 0:
        raise MlmkitError(f"{source.label}: the training part holds {writers['train'].tokens:,} "
                          f"tokens, less than one block of {cfg.block_size}; add text, lower "
                          "--block-size or pass --pad-last-block")
    if cfg.eval_fraction > 0 and writers["eval"].blocks == 0:
        raise MlmkitError(f"{source.label}: the held-out part ({cfg.eval_fraction:.0%} of records) "
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
