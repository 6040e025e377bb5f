"""Dynamic masking (BERT's 80/10/10), whole-word masking for any tokenizer, fixed eval masks.

Masking runs in numpy on the CPU side of the data loader. Every batch draws from a generator
seeded by (seed, epoch, block indices), so masks do not depend on worker count or process
count, and a resumed run sees exactly the masks the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlmkit.config import MaskConfig

IGNORE_INDEX = -100


def _vocab_size(tokenizer: Any) -> int:
    return max(len(tokenizer), tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True))


def special_token_table(tokenizer: Any) -> np.ndarray:
    """True for every id that must never be selected: specials, padding, added control tokens."""
    table = np.zeros(_vocab_size(tokenizer), dtype=bool)
    ids = [i for i in tokenizer.all_special_ids if i is not None]
    if tokenizer.pad_token_id is not None:
        ids.append(tokenizer.pad_token_id)
    table[ids] = True
    return table


def word_start_table(tokenizer: Any) -> np.ndarray:
    """True for ids that begin a word, for WordPiece ('##' marks continuations), byte-level BPE
    ('Ġ' marks a leading space) and SentencePiece ('▁' marks a leading space)."""
    n = _vocab_size(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    model = json.loads(tokenizer.backend_tokenizer.to_str()).get("model", {})
    if model.get("type") == "WordPiece":
        prefix = model.get("continuing_subword_prefix") or "##"
        return np.array([t is not None and not t.startswith(prefix) for t in tokens], dtype=bool)
    suffix = model.get("end_of_word_suffix")
    if suffix:  # BPE with word-end markers (e.g. '</w>'): a word starts after such a token
        ends = np.array([t is not None and t.endswith(suffix) for t in tokens], dtype=bool)
        return ends  # interpreted by the masker as "previous token ended a word"
    marker = "Ġ" if sum(t.startswith("Ġ") for t in tokens if t) >= sum(
        t.startswith("▁") for t in tokens if t) else "▁"
    return np.array([t is not None and t.startswith(marker) for t in tokens], dtype=bool)


class Masker:
    """Applies the masking recipe of a `MaskConfig` to integer blocks of shape [batch, length]."""

    def __init__(self, tokenizer: Any, cfg: MaskConfig) -> None:
        self.cfg = cfg
        self.mask_id = tokenizer.mask_token_id
        self.special = special_token_table(tokenizer)
        self.replacements = np.flatnonzero(~self.special[: len(tokenizer)])
        self.word_start = word_start_table(tokenizer) if cfg.whole_word_mask else None
        model = json.loads(tokenizer.backend_tokenizer.to_str()).get("model", {})
        self.marks_word_end = bool(model.get("end_of_word_suffix")) and model.get("type") != \
            "WordPiece"

    def select(self, ids: np.ndarray, rng: np.random.Generator | np.ndarray) -> np.ndarray:
        """Boolean [B, L]: positions chosen for prediction (`rng` may be uniform noise [B, L])."""
        special = self.special[ids]
        u = rng.random(ids.shape) if isinstance(rng, np.random.Generator) else rng
        if self.word_start is not None:
            starts = self.word_start[ids]
            if self.marks_word_end:
                starts = np.concatenate([np.ones_like(starts[:, :1]), starts[:, :-1]], axis=1)
            starts = starts | special
            starts[:, 1:] |= special[:, :-1]  # the token after <s>/[SEP] begins a word
            starts[:, 0] = True
            pos = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
            word_of = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
            u = np.take_along_axis(u, word_of, axis=1)
        return (u < self.cfg.mlm_probability) & ~special

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) as int64; labels are IGNORE_INDEX where nothing is predicted."""
        ids = np.asarray(ids, dtype=np.int64)
        # One draw, row by row: masking blocks in chunks consumes the generator exactly as
        # masking them at once, so the fixed eval masks do not depend on the chunk size.
        noise = rng.random((ids.shape[0], 3, ids.shape[1]))
        selected = self.select(ids, noise[:, 0])
        labels = np.where(selected, ids, IGNORE_INDEX)
        r = noise[:, 1]
        to_mask = selected & (r < self.cfg.mask_replace_prob)
        to_random = selected & ~to_mask & (
            r < self.cfg.mask_replace_prob + self.cfg.random_replace_prob)
        inputs = ids.copy()
        inputs[to_mask] = self.mask_id
        pick = (noise[:, 2][to_random] * len(self.replacements)).astype(np.int64)
        inputs[to_random] = self.replacements[pick]
        return inputs, labels

    def fixed(self, blocks: np.ndarray, seed: int, chunk: int = 4096) -> tuple[np.ndarray,
                                                                                np.ndarray]:
        """Masks for evaluation, fixed by `seed`: the same blocks always get the same masks,
        whatever the batch size, device or number of processes. Kept as int32 (token ids and
        -100 fit), half the memory of the int64 the model takes batch by batch."""
        rng = np.random.default_rng(seed)
        outs = [tuple(a.astype(np.int32) for a in self(blocks[i:i + chunk], rng))
                for i in range(0, len(blocks), chunk)]
        if not outs:
            empty = np.zeros((0, blocks.shape[1]), dtype=np.int32)
            return empty, empty.copy()
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def sparse_targets(labels: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices of the predicted positions of `labels` [B, L], their labels), padded with
    index 0 / label IGNORE_INDEX to a multiple of `multiple`.

    Computed here, on the data-loader side, so the training step needs no data-dependent shape:
    `hidden[labels != -100]` on a GPU is a nonzero() that waits for the device every step and
    breaks a compiled graph. Padding to a few sizes keeps the shapes a run sees few (CUDA graphs
    record one per size; the padded rows cost a little head compute, no loss).
    """
    flat = np.flatnonzero(labels.reshape(-1) != IGNORE_INDEX)
    size = max(multiple, -(-len(flat) // multiple) * multiple)
    index = np.zeros(size, dtype=np.int64)
    targets = np.full(size, IGNORE_INDEX, dtype=np.int64)
    index[: len(flat)] = flat
    targets[: len(flat)] = labels.reshape(-1)[flat]
    return index, targets


class MaskingCollator:
    """Data-loader collate function: (epoch, index, block) triples -> masked torch batch.

    The epoch travels with each item rather than living on the collator, so worker processes
    (which hold copies of the collator) always mask with the right epoch's generator.

    The batch has `input_ids` and `labels` [B, L]; `attention_mask` only when a block has
    padding (without one, SDPA may use its fastest kernels, and transformers need not check the
    mask on the device); with `sparse_multiple`, also `masked_index` and `masked_labels` (see
    `sparse_targets`) for the sparse prediction head.
    """

    def __init__(self, masker: Masker, seed: int, pad_id: int, sparse_multiple: int = 0) -> None:
        self.masker, self.seed, self.pad_id = masker, seed, pad_id
        self.sparse_multiple = sparse_multiple

    def __call__(self, items: Sequence[tuple[int, int, np.ndarray]]) -> dict[str, Any]:
        import torch

        epoch = int(items[0][0])
        idx = [int(i) for _, i, _ in items]
        blocks = np.stack([b for _, _, b in items])
        rng = np.random.default_rng([self.seed, epoch, *idx])
        inputs, labels = self.masker(blocks, rng)
        batch = {"input_ids": torch.from_numpy(inputs), "labels": torch.from_numpy(labels)}
        padding = blocks == self.pad_id
        if padding.any():
            batch["attention_mask"] = torch.from_numpy((~padding).astype(np.int64))
        if self.sparse_multiple:
            index, targets = sparse_targets(labels, self.sparse_multiple)
            batch["masked_index"] = torch.from_numpy(index)
            batch["masked_labels"] = torch.from_numpy(targets)
        return batch
