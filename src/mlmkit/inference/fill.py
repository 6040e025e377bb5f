"""The fill-mask inference engine behind `FillMask`, `mlmkit fill` and `mlmkit serve`.

Returns exactly the records of `transformers.pipeline("fill-mask")` (score, token, token_str,
sequence; one list per mask when a text has several), but tokenizes many texts in one call,
sorts them by length to pad little, runs the vocabulary projection and softmax only at mask
positions, takes the top-k for a whole batch at once with one device-to-host copy, and decodes
all of a batch's candidate sequences in one call. On a GPU the next batch runs while the host
builds the records of the previous one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from mlmkit.errors import MlmkitError
from mlmkit.inference.engine import Engine, clip
from mlmkit.inference.params import FillParams
from mlmkit.modeling.load import masked_logits

log = logging.getLogger("mlmkit")

MASK_SPELLINGS = re.compile(r"<mask>|\[MASK\]")  # accepted whatever the model's own


def count_masks(text: str, mask_token: str | None = None) -> int:
    """The masks in `text` as the engine will find them: <mask>, [MASK] and the model's own
    `mask_token`, counted before tokenizing (what the server checks a request with)."""
    return len(_mask_pattern(mask_token).findall(text))


@lru_cache(maxsize=8)
def _mask_pattern(mask_token: str | None) -> re.Pattern:
    spellings = {"<mask>", "[MASK]", *([mask_token] if mask_token else [])}
    return re.compile("|".join(re.escape(m) for m in sorted(spellings, key=len, reverse=True)))


class FillMask(Engine):
    """Fill `<mask>` (or `[MASK]`) in texts with a masked LM.

    `FillMask(path_or_hub_id)(texts, top_k=5, targets=None)` -> the pipeline's records for one
    text, or a list of them for a list of texts.
    """

    default_batch_size = (32, 256)  # more texts per pass is no faster on a CPU
    default_max_tokens = (None, 16_384)

    def __init__(self, model: Any, tokenizer: Any = None, device: str = "auto",
                 dtype: str = "auto", batch_size: int | None = None,
                 max_tokens: int | None = None, runtime: str = "torch") -> None:
        """`batch_size`: most texts per forward pass; `max_tokens`: most tokens per forward
        pass, counted after padding to the batch's longest text (None: no limit). By default
        32 texts on a CPU (more is no faster there) and up to 256 texts or 16,384 tokens on a
        GPU. `dtype`: "auto" (bfloat16 on a GPU, float32 otherwise: the pipeline's records),
        "float32", "bfloat16", "float16" or, on a CPU, "int8" (`self.precision` says which
        runs; see the docs' "Precision on a CPU"). `runtime`: "torch", or "openvino" on a CPU
        (the extra mlmkit[openvino]: OpenVINO compiles the model; faster one text at a
        time)."""
        super().__init__(model, tokenizer, device, dtype, batch_size, max_tokens, runtime)
        self._decode_batch = batch_decoder(self.tokenizer)
        self._warned_targets: set[str] = set()
        self._vocab = lru_cache(maxsize=1)(self.tokenizer.get_vocab)  # once, not per request

    # ------------------------------------------------------------------ public API

    def __call__(self, texts: str | list[str], top_k: int = 5,
                 targets: str | list[str] | None = None,
                 max_candidates: int = FillParams.max_candidates) -> list:
        """Fill the masks of `texts` (one text, or a list of them).

        `top_k`: candidates per mask; `targets`: score only these words (one string or a
        list) instead of the whole vocabulary; `max_candidates`: most candidates one text may
        get (masks x top_k). Returns `transformers.pipeline("fill-mask")`'s records: for one
        text with one mask a list of {"score", "token", "token_str", "sequence"}, a list of
        such lists for several masks, and a list of those for a list of texts. A bad text or
        value raises MlmkitError naming it."""
        return self._answer(texts, FillParams(top_k, targets, max_candidates))

    def stream(self, texts: Iterable[str], top_k: int = 5, targets: str | list[str] | None = None,
               chunk: int = 1024, max_candidates: int = FillParams.max_candidates
               ) -> Iterator[list | MlmkitError]:
        """Results in input order for any number of texts with constant memory; a text that
        cannot be filled (no mask, too long, more than `max_candidates` masks x top_k) yields
        an `MlmkitError` in its place instead of stopping the rest."""
        yield from self.results(texts, FillParams(top_k, targets, max_candidates), chunk)

    def target_ids(self, targets: str | list[str]) -> np.ndarray:
        """Vocabulary ids of `targets`, resolved as the pipeline does: a target that is not
        itself in the vocabulary counts as its first sub-token, with a warning naming that
        token (one with no token at all is dropped, with a warning too); each target is warned
        about once per engine, not once per request."""
        return self._resolve_targets(targets)[0]

    def _resolve_targets(self, targets: str | list[str]) -> tuple[np.ndarray, dict[int, str]]:
        """`target_ids`, and for each stand-in token the target word it replaced (the output
        records say it: "target")."""
        stand_ins: dict[int, str] = {}
        targets = [targets] if isinstance(targets, str) else list(targets)
        vocab = self._vocab()
        ids = []
        for t in targets:
            i = vocab.get(t)
            if i is None:
                enc = self.tokenizer(t, add_special_tokens=False)["input_ids"]
                i = enc[0] if enc else None
                if t not in self._warned_targets:
                    self._warned_targets.add(t)
                    if i is None:
                        log.warning("target %r is not in the model's vocabulary and has no "
                                    "token; ignoring it", t)
                    else:
                        log.warning("target %r is not in the model's vocabulary; using its "
                                    "first token %r instead (as transformers' fill-mask "
                                    "pipeline does)", t, self.tokenizer.convert_ids_to_tokens(i))
            if i is not None:
                ids.append(i)
                if vocab.get(t) is None and t not in vocab:
                    stand_ins[i] = t
        if not ids:
            raise MlmkitError(f"targets {targets!r}: none is in the model's vocabulary")
        # A token asked for by name is itself, even if it also stands in for another target.
        stand_ins = {i: w for i, w in stand_ins.items() if self.tokenizer.convert_ids_to_tokens(i)
                     not in targets}
        return np.array(sorted(set(ids))), stand_ins

    # ------------------------------------------------------------------ the task

    def _chunk_runner(self, params: FillParams) -> Callable[[list[Any]], list]:
        target_ids, stand_ins = (self._resolve_targets(params.targets)
                                 if params.targets is not None else (None, {}))
        return lambda texts: self._fill_chunk(texts, params, target_ids, stand_ins)

    def _normalize(self, text: str) -> str:
        return MASK_SPELLINGS.sub(self.tokenizer.mask_token, text)

    def _refusal(self, text: str, enc: Any, row: int) -> str | None:
        if self.mask_id not in enc["input_ids"][row]:
            return (f"no mask token in {clip(text)!r}: expected <mask> or [MASK] "
                    f"({self.tokenizer.mask_token})")
        return None

    def _fill_chunk(self, texts: list[Any], params: FillParams, target_ids: np.ndarray | None,
                    stand_ins: dict[int, str]) -> list[list | MlmkitError]:
        results: list[list | MlmkitError] = [None] * len(texts)  # type: ignore[list-item]
        admitted, enc = self._admit(texts, results)
        choices = self.model.config.vocab_size if target_ids is None else len(target_ids)
        ids_of: dict[int, np.ndarray] = {}
        for i, row in admitted:
            ids = np.asarray(enc["input_ids"][row], dtype=np.int64)
            # Before any work: the cost of a text is its candidates, each decoded and sent.
            problem = params.over_budget(int((ids == self.mask_id).sum()), choices)
            if problem is None:
                ids_of[i] = ids
            else:
                results[i] = MlmkitError(f"{clip(texts[i])!r}: {problem}")
        order = sorted(ids_of, key=lambda i: len(ids_of[i]))  # length-sorted: little padding
        targets = None if target_ids is None else torch.from_numpy(target_ids).to(self.device)
        # Software pipeline: batch i+1 is queued on the device before batch i's records are
        # built on the host, so on a GPU the two overlap. On a CPU `_launch` computes at once.
        pending: _Batch | None = None
        for idx in self._batches(order, [len(ids_of[i]) for i in order]):
            batch = self._launch(idx, [ids_of[i] for i in idx], params.top_k, targets)
            if pending is not None:
                self._collect(pending, results, target_ids, stand_ins)
            pending = batch
        if pending is not None:
            self._collect(pending, results, target_ids, stand_ins)
        return results

    def _batches(self, order: list[int], lengths: list[int]) -> Iterator[list[int]]:
        """Consecutive runs of the length-sorted `order`: at most `batch_size` texts and, with
        `max_tokens`, at most that many tokens once padded to the longest."""
        start = 0
        while start < len(order):
            end = start + 1
            while (end < len(order) and end - start < self.batch_size
                   and (self.max_tokens is None
                        or (end - start + 1) * lengths[end] <= self.max_tokens)):
                end += 1
            yield order[start:end]
            start = end

    @torch.inference_mode()
    def _launch(self, idx: list[int], seqs: list[np.ndarray], top_k: int,
                targets: torch.Tensor | None) -> _Batch:
        """Queue one batch on the device: one host-to-device copy, the encoder, the head at the
        mask positions only, softmax and top-k, and one copy of the top-k back to the host."""
        lengths = np.array([len(s) for s in seqs])
        n, width = len(seqs), int(lengths.max())
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        ids[np.arange(width) < lengths[:, None]] = np.concatenate(seqs)
        rows, cols = np.nonzero(ids == self.mask_id)  # row-major: sentence, then position
        packed = torch.from_numpy(np.concatenate([ids.ravel(), lengths, rows * width + cols]))
        if self.device.type == "cuda":
            packed = packed.pin_memory()
        packed = packed.to(self.device, non_blocking=True)
        t_ids, t_lengths, t_masks = packed.split([n * width, n, len(rows)])
        t_ids = t_ids.view(n, width)
        # No mask when nothing is padded: the same numbers, and no mask to build or apply.
        attn = None if lengths.min() == width else (
            torch.arange(width, device=self.device) < t_lengths[:, None]).long()
        # Host-known flat indices of the masks: no boolean-mask sync on the device.
        logits = masked_logits(self.model, t_ids, attn, t_masks)
        probs = logits.float().softmax(dim=-1)
        if targets is not None:
            probs = probs[:, targets]
        values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        done = None
        if self.device.type == "cuda":
            values, indices = _pinned_copy(values), _pinned_copy(indices)
            done = torch.cuda.Event()
            done.record()
        else:
            values, indices = values.cpu(), indices.cpu()
        return _Batch(idx, ids, rows, cols, values, indices, done)

    def _collect(self, batch: _Batch, results: list, target_ids: np.ndarray | None,
                 stand_ins: dict[int, str]) -> None:
        """Wait for a batch's top-k and turn it into the pipeline's records, decoding all its
        candidate sequences in one call."""
        if batch.done is not None:
            batch.done.synchronize()
        values, cands = batch.values.numpy(), batch.indices.numpy()
        if target_ids is not None:
            cands = target_ids[cands]
        n_rows, k = cands.shape
        # As the pipeline: each candidate fills its own mask only; padding (a pad candidate
        # included) is dropped before decoding.
        filled = np.repeat(batch.ids[batch.rows], k, axis=0)
        filled[np.arange(n_rows * k), np.repeat(batch.cols, k)] = cands.ravel()
        keep = filled != self.pad_id
        flat = filled[keep].tolist()
        ends = np.cumsum(keep.sum(axis=1)).tolist()
        seqs = [flat[a:b] for a, b in zip([0, *ends[:-1]], ends)]
        masks_in = np.bincount(batch.rows, minlength=len(batch.idx))
        # The pipeline skips special tokens only for texts with a single mask.
        single = np.repeat(masks_in[batch.rows] == 1, k)
        sequences = self._decode(seqs, single)
        tokens = cands.ravel().tolist()
        recs = [{"score": s, "token": t, "token_str": self._token_str(t), "sequence": q}
                for s, t, q in zip(values.ravel().tolist(), tokens, sequences)]
        if stand_ins:
            # The pipeline's fields stay as they are; a stand-in says which target it replaced.
            for r in recs:
                if r["token"] in stand_ins:
                    r["target"] = stand_ins[r["token"]]
        row = 0
        for i, m in zip(batch.idx, masks_in.tolist()):
            per_mask = [recs[(row + j) * k:(row + j + 1) * k] for j in range(m)]
            results[i] = per_mask[0] if m == 1 else per_mask
            row += m

    def _decode(self, seqs: list[list[int]], skip_special: np.ndarray) -> list[str]:
        """`tokenizer.decode(seq, skip_special_tokens=flag)` for each sequence, in one call per
        flag value."""
        if skip_special.all() or not skip_special.any():
            return self._decode_batch(seqs, bool(skip_special[0]))
        out: list[str] = [""] * len(seqs)
        for flag in (True, False):
            where = np.flatnonzero(skip_special == flag).tolist()
            for j, text in zip(where, self._decode_batch([seqs[j] for j in where], flag)):
                out[j] = text
        return out


@dataclass
class _Batch:
    """A batch in flight: what the host needs to build its records, and its top-k (in pinned
    host memory on a GPU, valid once `done` has completed)."""

    idx: list[int]  # result slots, one per text
    ids: np.ndarray  # [texts, width] token ids, padded
    rows: np.ndarray  # text of each mask, in order
    cols: np.ndarray  # position of each mask
    values: torch.Tensor  # [masks, k] probabilities
    indices: torch.Tensor  # [masks, k] candidate ids (indices into the targets if any)
    done: Any  # torch.cuda.Event on a GPU, else None


def _pinned_copy(t: torch.Tensor) -> torch.Tensor:
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t, non_blocking=True)


def batch_decoder(tokenizer: Any) -> Callable[[list[list[int]], bool], list[str]]:
    """A function decoding many sequences at once, with exactly `tokenizer.decode`'s strings.

    transformers' `batch_decode` loops over `decode` in Python; a fast tokenizer's `decode` is
    its Rust decoder plus, where the tokenizer asks for it, a Python clean-up of spaces before
    punctuation (which transformers 5 skips for BPE models). We make the same choice, check it
    against `decode` on probe texts, and fall back to `decode` per sequence if they differ."""
    from transformers import PreTrainedTokenizerFast

    def one_by_one(seqs: list[list[int]], skip: bool) -> list[str]:
        return [tokenizer.decode(s, skip_special_tokens=skip) for s in seqs]

    cls = type(tokenizer)
    if (not isinstance(tokenizer, PreTrainedTokenizerFast)
            or cls.decode is not PreTrainedTokenizerFast.decode
            or cls._decode is not PreTrainedTokenizerFast._decode):
        return one_by_one
    backend = tokenizer.backend_tokenizer
    clean = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
    if clean and type(backend.model).__name__ == "BPE" and not getattr(
            tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output",
            True):
        clean = False

    def batched(seqs: list[list[int]], skip: bool) -> list[str]:
        texts = backend.decode_batch(seqs, skip_special_tokens=skip)
        return [tokenizer.clean_up_tokenization(t) for t in texts] if clean else texts

    probes = [tokenizer(t.replace("<mask>", tokenizer.mask_token))["input_ids"]
              for t in _PROBES]
    for skip in (True, False):
        if batched(probes, skip) != one_by_one(probes, skip):
            return one_by_one
    return batched


# Spaces before punctuation and contractions (what clean-up changes), accents and an emoji
# (bytes split across tokens), special tokens inside the text.
_PROBES = ["Hello , world ! It is n't a café ; he 's here ?", "<mask> . 🙂 <mask> 're ' s",
           "They 've said \"no\" ... (really ?) <mask>"]
