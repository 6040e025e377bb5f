"""The block cache: where an entry lives (its key: every setting that shapes the blocks, and
the corpus files' bytes by their sha256), and its integrity. An entry is <cache>/blocks/<key>/
holding exactly the block files and a sealed meta.json with their sizes and sha256 digests;
it is built in a temporary directory beside it and renamed into place whole, so readers
never see half of one, and what does not verify is rebuilt (never anything mlmkit did not
write)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from mlmkit.config import DataConfig
from mlmkit.errors import MlmkitError
from mlmkit.io.files import cache_dir, check_entries, read_sealed_json, sha256_file
from mlmkit.io.sources import Source
from mlmkit.settings import named

# Part of every cache key, with every setting that shapes the blocks (line by line or
# concatenated among them, so neither kind of entry is ever served for the other). 2 added the
# sizes and digests of the block files to meta.json, so entries from 1, which have none, are
# rebuilt rather than trusted.
CACHE_VERSION = "2"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def cache_root(cfg: DataConfig) -> Path:
    return cache_dir(cfg.cache_dir) / "blocks"


def cache_key(cfg: DataConfig, source: Source, tokenizer: Any) -> str:
    """The entry's name: a digest of everything that shapes the blocks. Local files count by
    their bytes, hashed on every load: a size and a modification time can both be restored
    after an edit (`os.utime`, a copy with `-p`), and sha256 reads ~650 MB/s, seconds per GB
    against minutes per GB to tokenize."""
    f = cfg.eval_fraction
    split = [f, cfg.seed] if 0 < f < 1 else [f]  # all or none held out: the seed changes nothing
    layout = ["lines"] if cfg.line_by_line else ["concatenated", cfg.pad_last_block]
    contents = [sha256_file(p) for p in source.files]
    key_src = json.dumps([CACHE_VERSION, source.ident, contents, tokenizer_fingerprint(tokenizer),
                          cfg.text_field, cfg.limit, cfg.block_size, layout, split])
    return hashlib.sha256(key_src.encode()).hexdigest()[:24]


def entry_layout(cfg: DataConfig) -> dict[str, Any]:
    """What the blocks of an entry for `cfg` must be: meta.json says it, and loading checks it."""
    return {"block_size": cfg.block_size, "line_by_line": cfg.line_by_line}


# --------------------------------------------------------------------------- cache integrity
# An entry is <cache>/blocks/<key>/ holding exactly _ENTRY_FILES. It is built in a temporary
# directory beside it and renamed into place whole, so readers never see half of one.

BLOCK_FILES = ("train.bin", "eval.bin")
_ENTRY_FILES = (*BLOCK_FILES, "meta.json")
_META_COUNTS = ("records", "empty_records", "train_records", "eval_records", "block_size",
                "train_blocks", "eval_blocks", "train_tokens", "eval_tokens", "dropped_tokens",
                "lines", "blank_lines", "truncated_lines")


def entry_problems(path: Path, layout: dict[str, Any]) -> tuple[dict[str, Any] | None,
                                                                 list[str]]:
    """The meta of the cache entry at `path`, or None and what is wrong with the entry, one
    phrase per fault; `layout` is what its blocks must be (see `entry_layout`). The block files are
    hashed whole: about 1 s per GB, against minutes per GB for tokenizing, buys never training
    on a flipped byte."""
    meta, problem = read_sealed_json(path / "meta.json")
    if meta is None:
        return None, [problem]
    problems = _meta_problems(meta) or _layout_problems(meta, layout) or check_entries(
        path, {n: meta["files"][n] for n in BLOCK_FILES})
    return (None, problems) if problems else (meta, [])


def _meta_problems(meta: dict[str, Any]) -> list[str]:
    """Whether a meta.json that matches its own digest still describes blocks that fit the
    sizes it records: the memory maps are shaped from it, so a wrong writer must not get by."""
    bad = [k for k in _META_COUNTS if not (type(meta.get(k)) is int and meta[k] >= 0)]
    if meta.get("block_size") == 0:
        bad.append("block_size")
    if meta.get("dtype") not in ("uint16", "int32"):
        bad.append("dtype")
    if type(meta.get("line_by_line")) is not bool:
        bad.append("line_by_line")
    files = meta.get("files")
    if not (isinstance(files, dict) and all(isinstance(files.get(n), dict) for n in BLOCK_FILES)):
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


def _layout_problems(meta: dict[str, Any], layout: dict[str, Any]) -> list[str]:
    # The key already tells the layouts apart; this catches an entry put under another's name.
    def kind(d: dict[str, Any]) -> str:
        return (f"{'line-by-line' if d['line_by_line'] else 'concatenated'} blocks of "
                f"{d['block_size']}")

    if all(meta[k] == v for k, v in layout.items()):
        return []
    return [f"meta.json describes {kind(meta)} tokens, not the {kind(layout)} asked for"]


def refuse_foreign(final: Path, problems: list[str]) -> None:
    """Stop before rebuilding over a path that holds what mlmkit did not write there: such a
    thing is never deleted."""
    fix = f"move it away or pass {named('no_cache', True)}"
    if final.is_symlink() or not final.is_dir():
        raise MlmkitError(f"block cache {final}: not a directory mlmkit made; {fix}")
    try:
        foreign = sorted(set(os.listdir(final)) - set(_ENTRY_FILES))
    except OSError as e:
        raise MlmkitError(f"block cache {final}: cannot list it: {e.strerror}; {fix}") from None
    if foreign:
        raise MlmkitError(f"block cache {final}: {'; '.join(problems)}, and it holds "
                          f"{', '.join(foreign)}, which mlmkit did not write; {fix}")


def install_entry(work: Path, final: Path, layout: dict[str, Any]) -> None:
    """Move the finished entry `work` to `final`. A broken entry there is renamed aside first and
    deleted only once the new one is in place, so `final` is always absent, the old entry or a
    whole new one; processes racing here all end up with identical blocks at `final`."""
    try:
        os.rename(work, final)
        return
    except OSError:
        pass  # `final` exists: the broken entry, or one another process has just installed
    if entry_problems(final, layout)[0] is not None:
        return  # another process won the race; its blocks are identical to ours
    aside = final.with_name(f".broken-{final.name}-{secrets.token_hex(4)}")
    with contextlib.suppress(OSError):  # a racing process may have moved it aside already
        os.rename(final, aside)
    try:
        os.rename(work, final)
    except OSError as e:
        if entry_problems(final, layout)[0] is None:  # not another process's identical entry
            raise MlmkitError(f"block cache {final}: cannot replace the damaged entry: "
                              f"{e.strerror}") from None
    finally:
        discard_entry(aside)


def discard_entry(path: Path) -> None:
    # Only the files an entry is made of; anything else stays, and with it the directory.
    for name in _ENTRY_FILES:
        with contextlib.suppress(OSError):
            (path / name).unlink()
    with contextlib.suppress(OSError):
        path.rmdir()
