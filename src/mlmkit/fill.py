"""The fill-mask inference engine behind `FillMask`, `mlmkit fill` and `mlmkit serve`.

Returns exactly the records of `transformers.pipeline("fill-mask")` (score, token, token_str,
sequence; one list per mask when a text has several), but tokenizes a whole batch in one call,
sorts by length to pad little, runs the vocabulary projection and softmax only at mask
positions, and takes the top-k for the whole batch at once with one device-to-host copy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .config import MlmkitError
from .model import load_model, load_tokenizer, masked_logits, max_block_size, pick_device

MASK_SPELLINGS = re.compile(r"<mask>|\[MASK\]")  # accepted whatever the model's own
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class FillMask:
    """Fill `<mask>` (or `[MASK]`) in texts with a masked LM.

    `FillMask(path_or_hub_id)(texts, top_k=5, targets=None)` -> the pipeline's records for one
    text, or a list of them for a list of texts.
    """

    def __init__(self, model: Any, tokenizer: Any = None, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 32) -> None:
        if isinstance(model, str):
            tokenizer = tokenizer or load_tokenizer(model)
            model = load_model(model)
        elif tokenizer is None:
            raise MlmkitError("FillMask: pass a tokenizer along with a model object")
        self.device = pick_device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        if dtype not in _DTYPES:
            raise MlmkitError(f"dtype {dtype!r}: expected auto, float32, bfloat16 or float16")
        self.model = model.to(device=self.device, dtype=_DTYPES[dtype]).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.mask_id = tokenizer.mask_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.max_length = max_block_size(model.config, tokenizer)
        self._token_str = lru_cache(maxsize=200_000)(lambda i: tokenizer.decode([i]))

    # ------------------------------------------------------------------ public API

    def __call__(self, texts: str | list[str], top_k: int = 5,
                 targets: str | list[str] | None = None) -> list:
        single = isinstance(texts, str)
        results = list(self.stream([texts] if single else texts, top_k, targets))
        for r in results:
            if isinstance(r, MlmkitError):
                raise r
        return results[0] if single else results

    def stream(self, texts: Iterable[str], top_k: int = 5, targets: str | list[str] | None = None,
               chunk: int = 1024) -> Iterator[list | MlmkitError]:
        """Results in input order for any number of texts with constant memory; a text that
        cannot be filled yields an `MlmkitError` in its place instead of stopping the rest."""
        if top_k < 1:
            raise MlmkitError(f"top_k {top_k}: expected a positive integer")
        target_ids = self.target_ids(targets) if targets is not None else None
        buf: list[str] = []
        for t in texts:
            buf.append(t)
            if len(buf) == chunk:
                yield from self._fill_chunk(buf, top_k, target_ids)
                buf = []
        if buf:
            yield from self._fill_chunk(buf, top_k, target_ids)

    def target_ids(self, targets: str | list[str]) -> np.ndarray:
        """Vocabulary ids of `targets`, resolved as the pipeline does (first sub-token of a
        word that is not itself in the vocabulary)."""
        if isinstance(targets, str):
            targets = [targets]
        vocab = self.tokenizer.get_vocab()
        ids = []
        for t in targets:
            i = vocab.get(t)
            if i is None:
                enc = self.tokenizer(t, add_special_tokens=False)["input_ids"]
                if not enc:
                    continue
                i = enc[0]
            ids.append(i)
        if not ids:
            raise MlmkitError(f"targets {targets!r}: none is in the model's vocabulary")
        return np.array(sorted(set(ids)))

    # ------------------------------------------------------------------ engine

    def _fill_chunk(self, texts: list[str], top_k: int,
                    target_ids: np.ndarray | None) -> list[list | MlmkitError]:
        results: list[list | MlmkitError] = [None] * len(texts)  # type: ignore[list-item]
        normalized = [MASK_SPELLINGS.sub(self.tokenizer.mask_token, t) if isinstance(t, str)
                      else t for t in texts]
        ok: list[int] = []
        for i, t in enumerate(normalized):
            if not isinstance(t, str):
                results[i] = MlmkitError(f"input {i + 1}: expected a string, got "
                                         f"{type(t).__name__}")
            else:
                ok.append(i)
        enc = self.tokenizer([normalized[i] for i in ok], add_special_tokens=True)["input_ids"]
        ids_of: dict[int, np.ndarray] = {}
        for i, ids in zip(ok, enc):
            arr = np.asarray(ids, dtype=np.int64)
            if not (arr == self.mask_id).any():
                results[i] = MlmkitError(f"no mask token in {clip(texts[i])!r}: expected <mask> "
                                         f"or [MASK] ({self.tokenizer.mask_token})")
            elif len(arr) > self.max_length:
                results[i] = MlmkitError(f"{clip(texts[i])!r}: {len(arr)} tokens, more than the "
                                         f"{self.max_length} the model accepts")
            else:
                ids_of[i] = arr
        order = sorted(ids_of, key=lambda i: len(ids_of[i]))  # length-sorted: little padding
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            for i, rec in zip(idx, self._fill_batch([ids_of[i] for i in idx], top_k,
                                                    target_ids)):
                results[i] = rec
        return results

    @torch.inference_mode()
    def _fill_batch(self, seqs: list[np.ndarray], top_k: int,
                    target_ids: np.ndarray | None) -> list[list]:
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        attn = np.zeros((len(seqs), width), dtype=np.int64)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = s
            attn[r, : len(s)] = 1
        pin = self.device.type == "cuda"
        t_ids = torch.from_numpy(ids)
        t_attn = torch.from_numpy(attn)
        if pin:
            t_ids, t_attn = t_ids.pin_memory(), t_attn.pin_memory()
        t_ids = t_ids.to(self.device, non_blocking=True)
        t_attn = t_attn.to(self.device, non_blocking=True)
        positions = t_ids == self.mask_id
        probs = masked_logits(self.model, t_ids, t_attn, positions).float().softmax(dim=-1)
        k = top_k
        if target_ids is not None:
            probs = probs[:, torch.from_numpy(target_ids).to(self.device)]
            k = min(k, len(target_ids))
        values, indices = probs.topk(k, dim=-1)
        values, indices = values.cpu().numpy(), indices.cpu().numpy()
        if target_ids is not None:
            indices = target_ids[indices]
        # Rows of `values` follow the row-major order of `positions`: sequence, then position.
        out: list[list] = []
        row = 0
        for s in seqs:
            mask_pos = np.flatnonzero(s == self.mask_id)
            single = len(mask_pos) == 1
            per_mask = []
            for p in mask_pos:
                per_mask.append(self._records(s, p, values[row], indices[row], single))
                row += 1
            out.append(per_mask[0] if single else per_mask)
        return out

    def _records(self, seq: np.ndarray, pos: int, scores: np.ndarray, cands: np.ndarray,
                 single: bool) -> list[dict[str, Any]]:
        recs = []
        for score, cand in zip(scores.tolist(), cands.tolist()):
            # As the pipeline: fill one mask, drop padding (a pad candidate included), decode.
            filled = seq.copy()
            filled[pos] = cand
            filled = filled[filled != self.pad_id]
            recs.append({"score": score, "token": cand, "token_str": self._token_str(cand),
                         "sequence": self.tokenizer.decode(filled, skip_special_tokens=single)})
        return recs


def clip(text: str, n: int = 60) -> str:
    """`text` cut to `n` characters for an error message."""
    return text if len(text) <= n else text[: n - 3] + "..."
