"""Tokenize a corpus's texts into fixed-size blocks of token ids, and cache the blocks on disk.

Texts are concatenated and cut into full blocks, as the masked-language-modeling guide's
group_texts does, or with --line-by-line each non-blank line is a block of its own, as
run_mlm.py's --line_by_line. Blocks are written to flat binary files and memory-mapped, so a
second run with the same corpus (by content), tokenizer and settings skips tokenization; it checks
the files' sizes and sha256 digests first (corpus/cache.py), and rebuilds an entry that fails.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlmkit.config import DataConfig
from mlmkit.corpus.cache import (
    BLOCK_FILES,
    cache_key,
    cache_root,
    entry_layout,
    entry_problems,
    install_entry,
    refuse_foreign,
)
from mlmkit.errors import MlmkitError
from mlmkit.io.fields import TextStats, record_pieces, record_texts
from mlmkit.io.files import (
    file_entries,
    write_sealed_json,
)
from mlmkit.io.sources import Source, is_eval_record, iter_records
from mlmkit.settings import named

log = logging.getLogger("mlmkit")

_TOKENIZE_BATCH = 1000  # records


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

    def add_blocks(self, blocks: np.ndarray, tokens: int) -> None:
        """Whole blocks as they are (line by line: a padded line each) holding `tokens` tokens."""
        self.fh.write(blocks.astype(self.dtype, copy=False).tobytes())
        self.blocks += len(blocks)
        self.tokens += tokens

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
    """Tokenized blocks for training and for evaluation, memory-mapped from disk.

    `eval` holds the records held out of the corpus (stats['eval_held_out']), or with
    `eval_data` every record of that corpus; stats['source'] and stats['eval_source'] name
    them. With `eval_data` the two sides are separate cache entries, `cache_path` and
    `eval_cache_path`; otherwise both name the one entry (None with no_cache).
    """

    train: np.ndarray
    eval: np.ndarray
    stats: dict[str, Any]
    cache_path: Path | None = None
    eval_cache_path: Path | None = None
    _tmp: Any = None  # keeps an uncached corpus's temporary directories alive

    def describe(self) -> str:
        s = self.stats
        if s["eval_held_out"]:
            parts = [f"{s['records']:,} records: {s['train_records']:,} for training, "
                     f"{s['eval_records']:,} held out for evaluation"]
        else:
            parts = [f"{s['train_records']:,} records of {s['source']} for training, "
                     f"{s['eval_records']:,} of {s['eval_source']} for evaluation"]
        parts.append(f"{s['train_blocks']:,} train / {s['eval_blocks']:,} eval blocks of "
                     f"{s['block_size']} tokens")
        if s["line_by_line"]:
            parts.append(f"one block per line: {s['lines']:,} lines, {s['truncated_lines']:,} "
                         f"truncated to {s['block_size']} tokens, {s['blank_lines']:,} blank "
                         "lines skipped")
        if s["empty_records"]:
            parts.append(f"{s['empty_records']:,} empty records skipped")
        if s["dropped_tokens"]:
            parts.append(f"{s['dropped_tokens']:,} tokens of final partial blocks dropped "
                         f"({named('pad_last_block', True)} keeps them)")
        for side in ("train", "eval"):
            if f"{side}_blocks_available" in s:
                parts.append(f"the first {s[f'{side}_blocks']:,} of {side}'s "
                             f"{s[f'{side}_blocks_available']:,} blocks used "
                             f"({named(f'max_{side}_blocks', s[f'{side}_blocks'])})")
        return "; ".join(parts)

    def first(self, train: int | None, eval: int | None, pad_id: int | None) -> Corpus:
        """The corpus of only the first `train` training and `eval` held-out blocks (None: all
        of them), as run_mlm.py's --max_train_samples / --max_eval_samples take them; its stats
        count the blocks and tokens used, and the blocks there were (`*_blocks_available`)."""
        arrays, stats = {"train": self.train, "eval": self.eval}, dict(self.stats)
        for side, most in (("train", train), ("eval", eval)):
            if most is not None and most < len(arrays[side]):
                taken = arrays[side][:most]
                # Padding is no token (the collator masks it out of attention): not counted.
                tokens = taken.size if pad_id is None else int(np.count_nonzero(taken != pad_id))
                stats.update({f"{side}_blocks_available": len(arrays[side]),
                              f"{side}_blocks": most, f"{side}_tokens": tokens})
                arrays[side] = taken
        return dataclasses.replace(self, train=arrays["train"], eval=arrays["eval"], stats=stats)


def _backend(tokenizer: Any, truncate_to: int | None = None) -> Any:
    from tokenizers import Tokenizer

    if not getattr(tokenizer, "is_fast", False):
        raise MlmkitError(f"tokenizer of {getattr(tokenizer, 'name_or_path', '?')}: a fast "
                          "(Rust) tokenizer is required; none could be built for this model")
    # A private copy: a tokenizer.json may carry truncation or padding settings we must not use.
    tok = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    if truncate_to is not None:
        # As tokenizer(..., truncation=True, max_length=n) sets it: the special tokens are kept
        # and the text between them cut, from the right.
        tok.enable_truncation(max_length=truncate_to)
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
    """Tokenize the corpus once into train and eval blocks, or reuse the cached blocks when
    their meta.json, sizes and sha256 digests check out; a damaged entry is rebuilt, with a
    warning.

    Eval is the records `is_eval_record` holds out of `cfg.data` (a `cfg.eval_fraction` of
    them), or with `cfg.eval_data` every record of that corpus: train is then every record of
    `cfg.data`, `cfg.eval_fraction` is ignored, `cfg.limit` applies to `cfg.data` only, and each
    side is its own cache entry. Blocks are texts concatenated and cut into `cfg.block_size`
    tokens, or with `cfg.line_by_line` one per non-blank line (see `_add_lines`; no block is
    then partial, so `cfg.pad_last_block` changes nothing).
    """
    if cfg.eval_data is None:
        source = iter_records(cfg)
        corpus = _load_entry(cfg, source, tokenizer, progress)
        corpus.eval_cache_path = corpus.cache_path
        f = cfg.eval_fraction
        seed = f", seed {cfg.seed}" if 0 < f < 1 else ""
        held = f"records held out of {source.description} (eval_fraction {f:g}{seed})"
        corpus.stats = _public_stats(corpus.stats, source.description, held, True)
        return corpus
    # The data settings alone: a TrainConfig refuses eval_fraction 1, which holds out all of
    # --eval-data here, as it should.
    data = DataConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DataConfig)})
    train_cfg = dataclasses.replace(data, eval_fraction=0.0)
    # Every record held out, and all of the file: --split and --limit choose training data.
    eval_cfg = dataclasses.replace(data, data=cfg.eval_data, eval_data=None, limit=None,
                                   eval_fraction=1.0, split="train")
    train_source = iter_records(train_cfg)
    eval_source = iter_records(eval_cfg, "eval_data")
    train = _load_entry(train_cfg, train_source, tokenizer, progress)
    held = _load_entry(eval_cfg, eval_source, tokenizer, progress)
    t, e = train.stats, held.stats
    stats = {**t, **{k: t[k] + e[k] for k in _SUMMED}, "eval_text_field": e["text_field"],
             **{k: e[k] for k in ("eval_records", "eval_blocks", "eval_tokens")}}
    return Corpus(train=train.train, eval=held.eval,
                  stats=_public_stats(stats, train_source.description,
                                      eval_source.description, False),
                  cache_path=train.cache_path, eval_cache_path=held.cache_path,
                  _tmp=(train._tmp, held._tmp))


# Counts of a corpus with eval_data that are the sums of its two sides' counts.
_SUMMED = ("records", "empty_records", "dropped_tokens", "lines", "blank_lines",
           "truncated_lines")
_LINE_COUNTS = ("lines", "blank_lines", "truncated_lines")


def _public_stats(stats: dict[str, Any], source: str, eval_source: str, held_out: bool
                  ) -> dict[str, Any]:
    """The stats a Corpus reports: where train and eval come from, then the entries' counts
    (the line counts only line by line: there is nothing to count otherwise)."""
    drop = () if stats["line_by_line"] else _LINE_COUNTS
    return {"source": source, "eval_source": eval_source, "eval_held_out": held_out,
            **{k: v for k, v in stats.items() if k not in drop}}


def _load_entry(cfg: DataConfig, source: Source, tokenizer: Any, progress: bool) -> Corpus:
    """One cache entry: the blocks of `source`, split by `cfg.eval_fraction` (0: all for
    training, 1: all for evaluation)."""
    if cfg.no_cache:
        tmp = tempfile.TemporaryDirectory(prefix="mlmkit-blocks-")
        try:
            meta = _tokenize_into(Path(tmp.name), source, cfg, tokenizer, progress)
        except BaseException:
            tmp.cleanup()
            raise
        corpus = _open_corpus(Path(tmp.name), meta)
        corpus.cache_path, corpus._tmp = None, tmp
        return corpus

    final = cache_root(cfg) / cache_key(cfg, source, tokenizer)
    layout = entry_layout(cfg)
    if os.path.lexists(final):
        meta, problems = entry_problems(final, layout)
        if meta is not None:
            return _open_corpus(final, meta)
        refuse_foreign(final, problems)
        log.warning("block cache %s: %s; rebuilding", final, "; ".join(problems))
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".tmp-") as work:
        meta = _tokenize_into(Path(work), source, cfg, tokenizer, progress)
        if source.files and cache_key(cfg, source, tokenizer) != final.name:
            # Hashed before the read: an edit since would file these blocks under the old text.
            raise MlmkitError(f"{source.label}: changed while it was being tokenized; run "
                              "again once it is written")
        install_entry(Path(work), final, layout)
    return _open_corpus(final, meta)


@dataclass
class _Counts:
    train_records: int = 0
    eval_records: int = 0
    lines: int = 0
    blank_lines: int = 0
    truncated_lines: int = 0


def _tokenize_into(work: Path, source: Source, cfg: DataConfig, tokenizer: Any,
                   progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    pad_id = tokenizer.pad_token_id
    if cfg.line_by_line and pad_id is None:
        raise MlmkitError(f"{named('line_by_line', True)}: the tokenizer of "
                          f"{tokenizer.name_or_path} has no pad token to fill the lines with")
    backend = _backend(tokenizer, cfg.block_size if cfg.line_by_line else None)
    dtype = np.dtype(np.uint16 if backend.get_vocab_size() <= 65535 else np.int32)
    writers = {s: _BlockWriter(work / f"{s}.bin", cfg.block_size, dtype) for s in ("train", "eval")}
    stats, counts = TextStats(), _Counts()
    texts = (record_pieces if cfg.line_by_line else record_texts)(source.records,
                                                                    cfg.text_field, stats)
    bar = tqdm(total=source.total, desc="tokenizing", unit=" records", disable=not progress)
    try:
        for batch in _batched(texts, _TOKENIZE_BATCH):
            idx = np.fromiter((i for i, _ in batch), dtype=np.int64, count=len(batch))
            held = is_eval_record(idx, cfg.seed, cfg.eval_fraction)
            counts.eval_records += int(held.sum())
            counts.train_records += len(batch) - int(held.sum())
            if cfg.line_by_line:
                _add_lines(batch, held, backend, writers, counts, pad_id)
            else:
                _add_texts(batch, held, backend, writers)
            bar.update(stats.records - bar.n)
    except BaseException:
        # Clear the bar, so the one-line error that follows starts its own line.
        bar.leave = False
        bar.close()
        raise
    bar.close()
    dropped = sum(w.close(pad_id if cfg.pad_last_block else None) for w in writers.values())
    _check_enough(source, cfg, stats, writers)
    meta = {
        "records": stats.records, "empty_records": stats.empty, "text_field": stats.fields,
        "block_size": cfg.block_size, "dtype": dtype.name, "line_by_line": cfg.line_by_line,
        **dataclasses.asdict(counts),
        "train_blocks": writers["train"].blocks, "eval_blocks": writers["eval"].blocks,
        "train_tokens": writers["train"].tokens, "eval_tokens": writers["eval"].tokens,
        "dropped_tokens": dropped, "files": file_entries(work, BLOCK_FILES),
    }
    # Last, and atomically: a directory without a valid meta.json is never trusted.
    write_sealed_json(work / "meta.json", meta)
    return meta


def _add_texts(batch: list[tuple[int, str]], held: np.ndarray, backend: Any,
               writers: dict[str, _BlockWriter]) -> None:
    encs = backend.encode_batch_fast([t for _, t in batch], add_special_tokens=True)
    for split, sel in (("train", ~held), ("eval", held)):
        chosen = [encs[j].ids for j in np.flatnonzero(sel)]
        if chosen:
            writers[split].add(np.concatenate([np.asarray(ids, dtype=np.int64)
                                               for ids in chosen]))


def _add_lines(batch: list[tuple[int, list[str]]], held: np.ndarray, backend: Any,
               writers: dict[str, _BlockWriter], counts: _Counts, pad_id: int) -> None:
    """One block per non-blank line of each of the records' strings, as run_mlm.py's
    --line_by_line: tokenized with special tokens, truncated to the block size and padded to
    it with `pad_id`. Lines stay on their record's side of the held-out split. Every blank line
    skipped and every line truncated is counted."""
    lines, side = [], []
    for (_, pieces), h in zip(batch, held):
        for piece in pieces:
            for line in piece.splitlines():  # the line breaks datasets' text loader splits at
                if line.strip():
                    lines.append(line)
                    side.append(h)
                else:
                    counts.blank_lines += 1
    if not lines:
        return
    encs = backend.encode_batch_fast(lines, add_special_tokens=True)
    block_size = writers["train"].block_size
    blocks = np.full((len(encs), block_size), pad_id, dtype=np.int64)
    lengths = np.zeros(len(encs), dtype=np.int64)
    for j, enc in enumerate(encs):
        ids = enc.ids
        blocks[j, : len(ids)] = ids
        lengths[j] = len(ids)
        counts.truncated_lines += bool(enc.overflowing)  # what truncation cut off
    counts.lines += len(lines)
    side_ = np.array(side, dtype=bool)
    for split, sel in (("train", ~side_), ("eval", side_)):
        if sel.any():
            writers[split].add_blocks(blocks[sel], int(lengths[sel].sum()))


def _check_enough(source: Source, cfg: DataConfig, stats: TextStats,
                  writers: dict[str, _BlockWriter]) -> None:
    """Every side that should have blocks has at least one, or one error saying what to do."""
    if stats.records == 0:
        raise MlmkitError(f"{source.label}: the corpus holds no records")
    if stats.records == stats.empty:
        raise MlmkitError(f"{source.label}: all {stats.records:,} records have empty text in "
                          f"field(s) {', '.join(stats.fields)}")
    f = cfg.eval_fraction
    for split, wanted in (("train", f < 1), ("eval", f > 0)):
        w = writers[split]
        if not wanted or w.blocks:
            continue
        what = ("the corpus" if f in (0, 1) else "the training part" if split == "train"
                else f"the held-out part ({f:.0%} of records)")
        if cfg.line_by_line:
            raise MlmkitError(f"{source.label}: {what} holds no non-blank line")
        fix = (f"pass {named('pad_last_block', True)}" if split == "train" or f == 1
               else f"raise {named('eval_fraction')}")
        raise MlmkitError(f"{source.label}: {what} holds {w.tokens:,} tokens, less than one "
                          f"block of {cfg.block_size}; add text, lower {named('block_size')} "
                          f"or {fix}")


def check_block_fits(block_size: int, limit: int, model: str) -> None:
    """Refuse a block size above the `limit` positions `model` accepts, before any text is
    tokenized."""
    if block_size > limit:
        raise MlmkitError(f"{named('block_size', block_size)}: above the {limit} positions "
                          f"model {model} accepts")


def _open_corpus(path: Path, meta: dict[str, Any]) -> Corpus:
    arrays = {}
    for split in ("train", "eval"):
        n = meta[f"{split}_blocks"]
        arrays[split] = (np.memmap(path / f"{split}.bin", dtype=meta["dtype"], mode="r",
                                   shape=(n, meta["block_size"]))
                         if n else np.zeros((0, meta["block_size"]), dtype=meta["dtype"]))
    stats = {k: v for k, v in meta.items() if k != "files"}  # digests are the cache's business
    return Corpus(train=arrays["train"], eval=arrays["eval"], stats=stats, cache_path=path)


