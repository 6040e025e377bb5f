"""Pseudo-log-likelihood (PLL) scoring of sentences with a masked LM, the engine behind
`Scorer`, `mlmkit score` and the server's `POST /score`.

A sentence is scored by masking its tokens in turn, one masked copy of the sentence per scored
token (or word), and summing the log-probabilities of the true tokens (Salazar et al., ACL
2020, "Masked Language Model Scoring"); pseudo-perplexity PPPL = exp(-PLL / tokens). Metrics:

- ``original``: each copy masks one token (Salazar et al.);
- ``word-l2r``: a token's copy also masks the later tokens of its word, so a word split into
  pieces is not scored with its own later pieces in view (Kauf & Ivanova, ACL 2023,
  PLL-word-l2r; minicons' ``within_word_l2r``);
- ``whole-word``: one copy per word masks all of the word's tokens and scores each of them.

Why not minicons' way (one row per token of a sentence in one forward pass, with the
vocabulary logits at every position of every row): the copies of many sentences are packed
under a token budget after sorting by length, and the head and log-softmax run only at the
scored positions (the sparse head training uses), so memory is bounded by the budget whatever
a sentence's length. bench/score_speed.py measures the difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mlmkit.errors import MlmkitError
from mlmkit.inference.engine import Engine, clip
from mlmkit.inference.params import RescoreParams, ScoreParams
from mlmkit.modeling.load import masked_logits


def plan_copies(word_ids: list[int | None], scored: list[int], metric: str
                ) -> tuple[list[list[int]], list[list[int]]]:
    """(masked positions, scored positions) of each masked copy of one sentence.

    `word_ids`: the word of each position (None for special tokens and tokens of no word);
    `scored`: the positions to score, in order. Every scored position is scored in exactly one
    copy, whatever the metric."""
    if metric == "original":
        return [[p] for p in scored], [[p] for p in scored]
    if metric == "word-l2r":
        masked = [[p] + ([q for q in scored if q > p and word_ids[q] == word_ids[p]]
                         if word_ids[p] is not None else []) for p in scored]
        return masked, [[p] for p in scored]
    groups: dict[Any, list[int]] = {}
    for p in scored:  # a token of no word is a word of its own
        groups.setdefault(word_ids[p] if word_ids[p] is not None else ("pos", p), []).append(p)
    words = list(groups.values())
    return words, words


def count_words(word_ids: list[int | None], scored: list[int]) -> int:
    """Words among the scored positions, counted as `plan_copies` groups them for whole-word
    scoring (a token of no word counts as one)."""
    return len({word_ids[p] if word_ids[p] is not None else ("pos", p) for p in scored})


@dataclass
class _Sentence:
    """One sentence to score: its tokens, the masked copies to run, and the log-probabilities
    of its scored positions as the batches come back."""

    slot: int  # index in the chunk
    ids: np.ndarray  # [L] token ids, special tokens included
    masked: list[list[int]]  # per copy
    scored: list[list[int]]  # per copy
    words: int
    logprobs: dict[int, float]  # position -> log p(true token)


class Scorer(Engine):
    """Score sentences by pseudo-log-likelihood with a masked LM.

    `Scorer(path_or_hub_id)(texts, metric="original", per_token=False)` -> one record (dict)
    for a text, or a list of them for a list of texts: ``text``, ``metric``, ``pll`` (natural
    log), ``pppl``, ``tokens`` (scored tokens), ``words``, and with `per_token` the
    ``token_logprobs`` of each scored token.
    """

    default_max_tokens = (2_048, 32_768)
    chunk_size = 512

    def __init__(self, model: Any, tokenizer: Any = None, device: str = "auto",
                 dtype: str = "auto", max_tokens: int | None = None,
                 runtime: str = "torch") -> None:
        """`max_tokens`: most tokens per forward pass, counted after padding (default 2,048 on
        a CPU, 32,768 on a GPU); the memory a batch needs is bounded by it, whatever the
        length of the sentences. `dtype`: as `FillMask`'s ("bfloat16" or "int8" the fastest
        on a CPU, "float32" the exact default there); `runtime`: as `FillMask`'s."""
        super().__init__(model, tokenizer, device, dtype, max_tokens=max_tokens,
                         runtime=runtime)

    def __call__(self, texts: str | list[str], metric: str = "original",
                 per_token: bool = False) -> dict | list[dict]:
        """The pseudo-log-likelihood of `texts` (one text, or a list of them).

        `metric`: "original" (mask each token alone, Salazar et al. 2020), "word-l2r" (also
        mask the later pieces of the same word, Kauf & Ivanova 2023) or "whole-word" (mask a
        word's pieces together); `per_token`: add each scored token's log-probability.
        Returns one record for one text, a list of records for a list; a bad text or value
        raises MlmkitError naming it."""
        return self._answer(texts, ScoreParams(metric, per_token))

    def stream(self, texts: Iterable[str], metric: str = "original", per_token: bool = False,
               chunk: int = 512) -> Iterator[dict | MlmkitError]:
        """Records in input order for any number of texts, with memory bounded by `chunk`
        texts; a text that cannot be scored yields an `MlmkitError` in its place instead of
        stopping the rest."""
        yield from self.results(texts, ScoreParams(metric, per_token), chunk)

    # ------------------------------------------------------------------ the task

    def _check_tokenizer(self) -> None:
        if self.tokenizer.mask_token_id is None:
            raise MlmkitError("the model's tokenizer has no mask token; PLL scoring needs one")
        if not getattr(self.tokenizer, "is_fast", False):
            raise MlmkitError("PLL scoring needs a fast tokenizer (tokenizer.json) for the word "
                              "boundaries of word-l2r and whole-word")

    def _refusal(self, text: str, enc: Any, row: int) -> str | None:
        if all(enc["special_tokens_mask"][row]):
            return f"{clip(text)!r}: no tokens to score; expected a non-empty text"
        return None

    def _chunk_runner(self, params: ScoreParams) -> Callable[[list[Any]], list]:
        return lambda texts: self._score_chunk(texts, params.metric, params.per_token)

    def _score_chunk(self, texts: list[Any], metric: str, per_token: bool
                     ) -> list[dict | MlmkitError]:
        results: list[dict | MlmkitError | None] = [None] * len(texts)
        sentences = self._plan(texts, metric, results)
        sentences.sort(key=lambda s: len(s.ids))  # similar lengths together: little padding
        for batch in self._batches(sentences):
            self._run(batch)
        for s in sentences:
            results[s.slot] = self._record(texts[s.slot], s, metric, per_token)
        return results  # type: ignore[return-value]

    def _plan(self, texts: list[Any], metric: str, results: list) -> list[_Sentence]:
        """Tokenize the texts and plan their copies; a text that cannot be scored gets its
        error in `results` now."""
        admitted, enc = self._admit(texts, results, return_special_tokens_mask=True)
        sentences = []
        for i, row in admitted:
            scored = [p for p, s in enumerate(enc["special_tokens_mask"][row]) if not s]
            word_ids = enc.word_ids(row)
            masked, score_at = plan_copies(word_ids, scored, metric)
            sentences.append(_Sentence(i, np.asarray(enc["input_ids"][row], dtype=np.int64),
                                       masked, score_at, count_words(word_ids, scored), {}))
        return sentences

    def _batches(self, sentences: list[_Sentence]
                 ) -> Iterator[list[tuple[_Sentence, int, int]]]:
        """Runs of copies, (sentence, first copy, end copy) pieces, with rows x width (the
        longest sentence in the batch) at most `max_tokens`; a sentence's copies may span
        batches. `sentences` must be sorted by length."""
        batch: list[tuple[_Sentence, int, int]] = []
        rows = 0
        for s in sentences:
            start, n = 0, len(s.masked)
            while start < n:
                room = self.max_tokens // len(s.ids) - rows
                if room <= 0 and rows:
                    yield batch
                    batch, rows = [], 0
                    continue
                take = min(n - start, max(room, 1))
                batch.append((s, start, start + take))
                rows += take
                start += take
        if batch:
            yield batch

    @torch.inference_mode()
    def _run(self, batch: list[tuple[_Sentence, int, int]]) -> None:
        """One forward pass over a batch's copies; the head and log-softmax at the scored
        positions only."""
        width = max(len(s.ids) for s, _, _ in batch)
        n_rows = sum(b - a for _, a, b in batch)
        ids = np.full((n_rows, width), self.pad_id, dtype=np.int64)
        lengths = np.empty(n_rows, dtype=np.int64)
        m_rows, m_cols, s_rows, s_cols, owners = [], [], [], [], []
        row = 0
        for s, a, b in batch:
            ids[row:row + b - a, :len(s.ids)] = s.ids
            lengths[row:row + b - a] = len(s.ids)
            for c in range(a, b):
                m_rows += [row] * len(s.masked[c])
                m_cols += s.masked[c]
                s_rows += [row] * len(s.scored[c])
                s_cols += s.scored[c]
                owners += [s] * len(s.scored[c])
                row += 1
        targets = torch.from_numpy(ids[s_rows, s_cols])
        ids[m_rows, m_cols] = self.mask_id
        t_ids = torch.from_numpy(ids).to(self.device)
        attn = None if lengths.min() == width else (
            torch.arange(width)[None, :] < torch.from_numpy(lengths)[:, None]).long().to(
                self.device)
        flat = torch.from_numpy(np.asarray(s_rows) * width + np.asarray(s_cols)).to(self.device)
        logits = masked_logits(self.model, t_ids, attn, flat).float()
        # log p(true) = logit(true) - logsumexp(logits): no [n, V] log-softmax tensor is kept.
        true = logits.gather(1, targets.to(self.device)[:, None]).squeeze(1)
        lp = (true - torch.logsumexp(logits, dim=-1)).cpu().tolist()
        for s, col, v in zip(owners, s_cols, lp):
            s.logprobs[col] = v

    def _record(self, text: str, s: _Sentence, metric: str, per_token: bool) -> dict:
        positions = sorted(s.logprobs)
        pll = math.fsum(s.logprobs[p] for p in positions)
        rec = {"text": text, "metric": metric, "pll": pll,
               "pppl": math.exp(-pll / len(positions)), "tokens": len(positions),
               "words": s.words}
        if per_token:
            rec["token_logprobs"] = [
                {"token": int(s.ids[p]), "token_str": self._token_str(int(s.ids[p])),
                 "logprob": s.logprobs[p]} for p in positions]
        return rec


def _candidates(rec: Any) -> list[tuple[str, float]]:
    """(text, prior score) of each candidate of an n-best record, checked field by field."""
    if not isinstance(rec, dict) or not isinstance(rec.get("candidates"), list):
        raise MlmkitError('expected a JSON object with a "candidates" list of '
                          '{"text": ..., "score": ...} (or of texts)')
    if not rec["candidates"]:
        raise MlmkitError('"candidates": empty; expected at least one')
    out = []
    for j, c in enumerate(rec["candidates"]):
        if isinstance(c, str):
            out.append((c, 0.0))
            continue
        text = c.get("text") if isinstance(c, dict) else None
        prior = c.get("score", 0.0) if isinstance(c, dict) else None
        if not isinstance(text, str):
            raise MlmkitError(f'candidates[{j}].text: expected a string, got '
                              f'{type(text).__name__}')
        if isinstance(prior, bool) or not isinstance(prior, (int, float)) or not math.isfinite(
                prior):
            raise MlmkitError(f"candidates[{j}].score: {prior!r}; expected a finite number "
                              "(the prior score, e.g. the acoustic or translation model's)")
        out.append((text, float(prior)))
    return out


def rescore(scorer: Scorer, records: Iterable[Any], weight: float = 1.0,
            metric: str = "original", per_token: bool = False) -> Iterator[dict | MlmkitError]:
    """Re-rank n-best lists, as mlm-scoring's `rescore`: each record's candidates get their
    ``pll`` and ``total = score + weight * pll`` and are sorted best first; the record (its
    other fields kept) gains ``best``, the text of the top candidate. A record that cannot be
    read, or with a candidate that cannot be scored, yields an `MlmkitError` in its place;
    all the candidates of all records go through the scorer's batches together."""
    params = RescoreParams(weight, metric, per_token)
    pending: list[tuple[Any, list[tuple[str, float]] | MlmkitError]] = []

    def texts() -> Iterator[str]:
        for rec in records:
            try:
                cands = _candidates(rec)
            except MlmkitError as e:
                pending.append((rec, e))
                continue
            pending.append((rec, cands))
            yield from (t for t, _ in cands)

    scored = scorer.results(texts(), params.scoring)
    while True:
        try:
            first = next(scored)
        except StopIteration:
            first = None
        # Records read before this result came back: errors are answered in order.
        while pending and isinstance(pending[0][1], MlmkitError):
            yield pending.pop(0)[1]
        if first is None:
            return
        rec, cands = pending.pop(0)
        results = [first] + [next(scored) for _ in range(len(cands) - 1)]
        yield _ranked(rec, cands, results, params.weight)


def _ranked(rec: dict, cands: list[tuple[str, float]], results: list, weight: float
            ) -> dict | MlmkitError:
    for j, r in enumerate(results):
        if isinstance(r, MlmkitError):
            return MlmkitError(f"candidates[{j}]: {r}")
    out = []
    for j, ((_, prior), r) in enumerate(zip(cands, results)):
        c = dict(rec["candidates"][j]) if isinstance(rec["candidates"][j], dict) else {
            "text": r["text"]}
        c.update(score=prior, pll=r["pll"], total=prior + weight * r["pll"])
        if "token_logprobs" in r:
            c["token_logprobs"] = r["token_logprobs"]
        out.append(c)
    out.sort(key=lambda c: -c["total"])
    return {**rec, "candidates": out, "best": out[0]["text"]}
