"""The cloze probe (LAMA-style facts): P@1, P@k and mean reciprocal rank of the object at the
mask, with objects that are not one token of the model's vocabulary counted, and optionally
ranked by PLL instead."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from mlmkit.errors import MlmkitError
from mlmkit.inference.fill import FillMask
from mlmkit.probing.records import place, text_field
from mlmkit.probing.tasks import (
    CHUNK,
    MASK_SPELLINGS,
    Engines,
    Options,
    TaskRun,
    _chunks,
    _groups,
    _records,
)

_LOGIT_BUDGET = 1 << 24  # floats of whole-vocabulary logits one rank pass may hold (64 MB)
NOT_ONE_TOKEN = "objects not one token of the vocabulary"


@dataclass
class _Fact:
    key: str  # line.sentence
    line: int
    text: str  # the masked sentence, the mask in the model's spelling
    gold: int | None  # the object's token id; None: not one token
    gold_text: str  # the sentence with the object filled in, decoded as FillMask decodes
    groups: dict[str, str]


def object_token(tok: Any, masked: str, obj: str) -> tuple[int | None, str]:
    """(the object's token id, or None when it is not exactly one known token in this
    context; the sentence with the object in place of the mask, decoded).

    The object is tokenized in its sentence, not alone, so that a BPE model's 'ĠParis' is
    found where the mask follows a space."""
    ids_m = tok(masked)["input_ids"]
    ids_f = tok(masked.replace(tok.mask_token, obj))["input_ids"]
    filled = tok.decode(ids_f, skip_special_tokens=True)
    j = ids_m.index(tok.mask_token_id)
    extra = len(ids_f) - len(ids_m)
    if (extra == 0 and ids_f[:j] == ids_m[:j] and ids_f[j + 1:] == ids_m[j + 1:]
            and ids_f[j] != tok.unk_token_id):
        return ids_f[j], filled
    return None, filled


def fact_records(path: str, opts: Options, run: TaskRun, bar: Any
                 ) -> Iterator[tuple[int, str, list[str], dict[str, str]]]:
    """(line, object, masked sentences, groups) of each well-formed LAMA record of `path`;
    a bad one counted in `run`. No tokenizer needed: `train --probe` checks files with it."""
    for line, rec in _records(path, opts, run, bar):
        where = place(path, line)
        sents = rec.get("masked_sentences")
        try:
            obj = text_field(rec, "obj_label", where).strip()
            if not isinstance(sents, list) or not sents:
                raise MlmkitError(f"{where}: field 'masked_sentences': expected a non-empty "
                                  "list of sentences with one [MASK] each")
            for j, s in enumerate(sents):
                if not isinstance(s, str) or len(MASK_SPELLINGS.findall(s)) != 1:
                    raise MlmkitError(f"{where}: field 'masked_sentences[{j}]': "
                                      f"{str(s)[:50]!r}; expected a string with one [MASK]")
        except MlmkitError as e:
            run.fail(line, "record", str(e))
            continue
        yield line, obj, sents, _groups(rec, opts.relation_field, run, "relation")


def _fact_items(path: str, opts: Options, run: TaskRun, bar: Any, tok: Any
                ) -> Iterator[_Fact]:
    for line, obj, sents, groups in fact_records(path, opts, run, bar):
        for j, s in enumerate(sents):
            masked = MASK_SPELLINGS.sub(tok.mask_token, s)
            gold, filled = object_token(tok, masked, obj)
            if gold is None:
                run.notes[NOT_ONE_TOKEN][groups["relation"]] += 1
            yield _Fact(f"{line}.{j}", line, masked, gold, filled, groups)


@torch.inference_mode()
def vocab_ranks(fill: FillMask, texts: list[str], gold: list[int]) -> list[int]:
    """Rank of each `gold` token among the whole vocabulary at its text's mask: 1 + the tokens
    with a strictly higher logit.

    FillMask returns only the top k; the rest of the ranking needs the logits over the whole
    vocabulary, which this pass computes in batches of at most _LOGIT_BUDGET floats."""
    tok, model = fill.tokenizer, fill.model
    enc = tok(texts)["input_ids"]
    vocab = getattr(model.config, "vocab_size", None) or len(tok)
    budget = max(1, _LOGIT_BUDGET // vocab)
    order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
    ranks = [0] * len(texts)
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end - start + 1) * len(enc[order[end]]) <= budget:
            end += 1
        idx = order[start:end]
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), fill.pad_id, dtype=torch.long)
        attn = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(enc[i])] = torch.tensor(enc[i])
            attn[r, :len(enc[i])] = 1
        logits = model(input_ids=ids.to(fill.device),
                       attention_mask=attn.to(fill.device)).logits.float()
        rows, cols = (ids == tok.mask_token_id).nonzero(as_tuple=True)
        at_mask = logits[rows.to(fill.device), cols.to(fill.device)]
        g = torch.tensor([gold[idx[r]] for r in rows.tolist()], device=fill.device)
        above = (at_mask > at_mask.gather(1, g[:, None])).sum(dim=1) + 1
        for r, rank in zip(rows.tolist(), above.tolist()):
            ranks[idx[r]] = rank
        start = end
    return ranks


def _score_single(fill: FillMask, facts: list[_Fact], tops: list[list[dict]], k: int
                  ) -> list[dict[str, float]]:
    """P@1, P@k (membership in FillMask's top k, as the pipeline ranks) and the reciprocal
    rank among the whole vocabulary."""
    preds = [[r["token"] for r in top] for top in tops]
    outside = [i for i, f in enumerate(facts) if f.gold not in preds[i]]
    deep = vocab_ranks(fill, [facts[i].text for i in outside], [facts[i].gold for i in outside])
    ranks = {i: preds[i].index(f.gold) + 1 for i, f in enumerate(facts) if i not in outside}
    # A tie at the k-th place may rank a token FillMask left out at k or above: k + 1.
    ranks.update({i: max(r, k + 1) for i, r in zip(outside, deep)})
    return [{"p@1": float(ranks[i] == 1), f"p@{k}": float(ranks[i] <= k),
             "mrr": 1.0 / ranks[i]} for i in range(len(facts))]


def _score_multi(eng: Engines, facts: list[_Fact], tops: list[list[dict]], k: int, metric: str
                 ) -> list[dict[str, float] | MlmkitError]:
    """For objects of several tokens: the rank of the sentence with the gold object among
    itself and the k sentences of FillMask's top-k single tokens, by PLL (`metric`)."""
    texts = [t for f, top in zip(facts, tops) for t in (f.gold_text, *(r["sequence"]
                                                                      for r in top))]
    results = iter(eng.scorer.stream(texts, metric))
    out: list[dict[str, float] | MlmkitError] = []
    for top in tops:
        recs = [next(results) for _ in range(len(top) + 1)]
        err = next((r for r in recs if isinstance(r, MlmkitError)), None)
        if err is not None:
            out.append(err)
            continue
        rank = 1 + sum(r["pll"] > recs[0]["pll"] for r in recs[1:])
        out.append({"mt_p@1": float(rank == 1), f"mt_p@{k}": float(rank <= k),
                    "mt_mrr": 1.0 / rank})
    return out


def run_cloze(eng: Engines, path: str, opts: Options, bar: Any) -> TaskRun:
    """LAMA-style facts, one item per masked sentence (a fact with several sentences counts
    once per sentence); see `probe_models` for the metrics."""
    k = opts.top_k
    if k < 1:
        raise MlmkitError(f"top_k {k}: expected a positive integer")
    metrics = ("p@1", f"p@{k}", "mrr")
    if opts.multi_token:
        metrics += ("mt_p@1", f"mt_p@{k}", "mt_mrr")
    run = TaskRun(metrics)
    fill = eng.fill
    if fill.tokenizer.mask_token is None:
        raise MlmkitError("the model's tokenizer has no mask token; the cloze probe needs one")
    for chunk in _chunks(_fact_items(path, opts, run, bar, fill.tokenizer), CHUNK):
        tops = list(fill.stream([f.text for f in chunk], top_k=k))
        ok = [i for i, t in enumerate(tops) if not isinstance(t, MlmkitError)]
        single = [i for i in ok if chunk[i].gold is not None]
        multi = [i for i in ok if chunk[i].gold is None] if opts.multi_token else []
        values: dict[int, dict[str, float]] = {}
        if single:
            scored = _score_single(fill, [chunk[i] for i in single], [tops[i] for i in single], k)
            values.update(zip(single, scored))
        if multi:
            mt = _score_multi(eng, [chunk[i] for i in multi], [tops[i] for i in multi], k,
                              opts.metric)
            for i, v in zip(multi, mt):
                if isinstance(v, MlmkitError):
                    tops[i] = v
                else:
                    values[i] = v
        for i, f in enumerate(chunk):
            if isinstance(tops[i], MlmkitError):
                run.fail(f.line, "score", f"{place(path, f.line)}: sentence {f.key}: {tops[i]}")
            run.add(f.key, f.groups, **values.get(i, {}))
    return run


def count_facts(run: TaskRun) -> int:
    """Distinct facts (records) behind the run's sentences."""
    return len({k.split(".")[0] for k in run.keys})
