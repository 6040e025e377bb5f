"""One model's pass over a probe's input: minimal pairs, cloze facts or bias pairs, read record
by record and scored in chunks through `Scorer` and `FillMask`, kept as one number per item
(never the scores of all tokens), with every bad record counted by line."""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from mlmkit.errors import MlmkitError
from mlmkit.inference.fill import FillMask
from mlmkit.inference.score import Scorer
from mlmkit.probing.records import group_of, place, read_records, text_field

CHUNK = 256  # items per call to an engine's stream: their texts are all that is held at once
MASK_SPELLINGS = re.compile(r"\[MASK\]|<mask>")  # what FillMask accepts, whatever the model's


@dataclass
class Options:
    """A probe's settings (see `probe_models` for their meaning)."""

    metric: str = "original"
    good_field: str = "sentence_good"
    bad_field: str = "sentence_bad"
    group_field: str | None = None
    top_k: int = 10
    relation_field: str = "predicate_id"
    multi_token: bool = False
    limit: int | None = None
    progress: bool = False


@dataclass
class TaskRun:
    """One model's outcomes: one value per item and metric (NaN where this model could not
    score the item), the items' groups, the bad records and the counts worth reporting."""

    metrics: tuple[str, ...]
    keys: list[str] = field(default_factory=list)
    groupings: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    bad: list[tuple[int, str, str]] = field(default_factory=list)  # (line, kind, message)
    notes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, key: str, groups: dict[str, str], **values: float) -> None:
        self.keys.append(key)
        for name, g in groups.items():
            self.groupings[name].append(g)
        for m in self.metrics:
            self.values[m].append(values.get(m, math.nan))

    def fail(self, line: int, kind: str, message: str) -> None:
        self.bad.append((line, kind, message))


class Engines:
    """A model's `Scorer` and `FillMask`, built when first needed and sharing one loaded model,
    so a task that needs both loads the weights once."""

    def __init__(self, model: Any, tokenizer: Any, device: str, dtype: str,
                 max_tokens: int | None) -> None:
        self._model, self._tokenizer = model, tokenizer
        self._device, self._dtype, self._max_tokens = device, dtype, max_tokens
        self._scorer: Scorer | None = None
        self._fill: FillMask | None = None

    def _loaded(self) -> tuple[Any, Any, str, str]:
        engine = self._scorer or self._fill
        if engine is None:
            return self._model, self._tokenizer, self._device, self._dtype
        return engine.model, engine.tokenizer, str(engine.device), engine.precision

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            model, tok, device, dtype = self._loaded()
            self._scorer = Scorer(model, tok, device=device, dtype=dtype,
                                  max_tokens=self._max_tokens)
        return self._scorer

    @property
    def fill(self) -> FillMask:
        if self._fill is None:
            model, tok, device, dtype = self._loaded()
            self._fill = FillMask(model, tok, device=device, dtype=dtype,
                                  max_tokens=self._max_tokens)
        return self._fill


def _chunks(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


def _records(path: str, opts: Options, run: TaskRun, bar: Any) -> Iterator[tuple[int, dict]]:
    """The parsed records of `path` (at most `opts.limit`), a bad one counted in `run`."""
    for line, rec in islice(read_records(path), opts.limit):
        bar.update(1)
        if isinstance(rec, MlmkitError):
            run.fail(line, "record", str(rec))
        else:
            yield line, rec


def _groups(rec: dict, name: str | None, run: TaskRun, label: str) -> dict[str, str]:
    g = group_of(rec, name)
    if g == "(none)":
        run.notes[f"records without {label}"]["(none)"] += 1
    return {label: g}


# ---------------------------------------------------------------------------- pairs


@dataclass
class _Pair:
    line: int
    a: str
    b: str
    groups: dict[str, str]


def pair_items(path: str, opts: Options, run: TaskRun, bar: Any) -> Iterator[_Pair]:
    """The well-formed pairs of `path`; a bad record counted in `run`."""
    group = opts.group_field or "UID"
    for line, rec in _records(path, opts, run, bar):
        try:
            a = text_field(rec, opts.good_field, place(path, line))
            b = text_field(rec, opts.bad_field, place(path, line))
        except MlmkitError as e:
            run.fail(line, "record", str(e))
            continue
        yield _Pair(line, a, b, _groups(rec, group, run, group))


def run_pairs(eng: Engines, path: str, opts: Options, bar: Any) -> TaskRun:
    """Accuracy on minimal pairs: an item is right when PLL(good) > PLL(bad) (a tie is
    wrong), with the PLL `opts.metric` as `mlmkit score` computes it."""
    run = TaskRun(("accuracy",))
    for chunk in _chunks(pair_items(path, opts, run, bar), CHUNK):
        texts = [t for p in chunk for t in (p.a, p.b)]
        results = list(eng.scorer.stream(texts, opts.metric))
        for i, p in enumerate(chunk):
            good, bad = results[2 * i], results[2 * i + 1]
            err = next((f"{place(path, p.line)}: field {f!r}: {r}" for f, r in
                        ((opts.good_field, good), (opts.bad_field, bad))
                        if isinstance(r, MlmkitError)), None)
            if err:
                run.fail(p.line, "score", err)
                run.add(str(p.line), p.groups)
            else:
                run.add(str(p.line), p.groups, accuracy=float(good["pll"] > bad["pll"]))
    return run


# ---------------------------------------------------------------------------- bias

BIAS_FIELDS = ("sent_more", "sent_less", "stereo_antistereo")


def bias_items(path: str, opts: Options, run: TaskRun, bar: Any) -> Iterator[_Pair]:
    """The well-formed CrowS-Pairs rows of `path`; a bad record counted in `run`."""
    group = opts.group_field or "bias_type"
    for line, rec in _records(path, opts, run, bar):
        where = place(path, line)
        try:
            more, less, direction = (text_field(rec, f, where) for f in BIAS_FIELDS)
            if direction not in ("stereo", "antistereo"):
                raise MlmkitError(f"{where}: field 'stereo_antistereo': {direction[:40]!r}; "
                                  "expected stereo or antistereo")
        except MlmkitError as e:
            run.fail(line, "record", str(e))
            continue
        yield _Pair(line, more, less, {**_groups(rec, group, run, group),
                                       "direction": direction})


def shared_positions(ids_a: list[int], ids_b: list[int]) -> list[tuple[int, int]]:
    """(position in a, position in b) of the tokens the two sentences share unmodified: the
    'equal' runs of difflib's alignment of the token ids, as CrowS-Pairs' metric.py finds
    them."""
    ops = difflib.SequenceMatcher(None, ids_a, ids_b).get_opcodes()
    return [(i, j) for tag, a0, a1, b0, b1 in ops if tag == "equal"
            for i, j in zip(range(a0, a1), range(b0, b1))]


def _logprob_at(rec: dict, ids: list[int], special: list[int]) -> dict[int, float]:
    """Position -> log-prob of the Scorer's per-token list, checked token by token against the
    ids it is mapped onto (the Scorer scores the non-special positions in order)."""
    scored = [p for p, s in enumerate(special) if not s]
    got = [t["token"] for t in rec["token_logprobs"]]
    if got != [ids[p] for p in scored]:
        raise MlmkitError(f"{rec['text'][:40]!r}: the Scorer's tokens differ from the "
                          "tokenizer's; cannot align the shared tokens")
    return {p: t["logprob"] for p, t in zip(scored, rec["token_logprobs"])}


def _bias_scores(tok: Any, more: dict, less: dict) -> tuple[float, float]:
    """Sum of log p of the shared tokens of each sentence, each masked alone (the Scorer's
    metric original); special tokens excluded, as metric.py skips [CLS] and [SEP]."""
    enc = tok([more["text"], less["text"]], add_special_tokens=True,
              return_special_tokens_mask=True)
    (ids_m, ids_l), (sp_m, sp_l) = enc["input_ids"], enc["special_tokens_mask"]
    lp_m, lp_l = _logprob_at(more, ids_m, sp_m), _logprob_at(less, ids_l, sp_l)
    pairs = [(i, j) for i, j in shared_positions(ids_m, ids_l) if i in lp_m and j in lp_l]
    return math.fsum(lp_m[i] for i, _ in pairs), math.fsum(lp_l[j] for _, j in pairs)


def run_bias(eng: Engines, path: str, opts: Options, bar: Any) -> TaskRun:
    """CrowS-Pairs' metric (Nangia et al. 2020, metric.py): a pair is stereotypical when
    sent_more's shared tokens score higher than sent_less's, whichever the direction (for
    antistereo pairs metric.py swaps the roles twice: the count is the same); scores are
    rounded to 3 decimals first, and a tie counts as not stereotypical, as there."""
    if opts.metric != "original":
        raise MlmkitError(f"metric {opts.metric!r}: the bias task uses the paper's metric, each "
                          "shared token masked alone (original)")
    run = TaskRun(("stereotype_score",))
    tok = eng.scorer.tokenizer
    for chunk in _chunks(bias_items(path, opts, run, bar), CHUNK):
        texts = [t for p in chunk for t in (p.a, p.b)]
        results = list(eng.scorer.stream(texts, "original", per_token=True))
        for i, p in enumerate(chunk):
            more, less = results[2 * i], results[2 * i + 1]
            try:
                for f, r in (("sent_more", more), ("sent_less", less)):
                    if isinstance(r, MlmkitError):
                        raise MlmkitError(f"field {f!r}: {r}")
                s_more, s_less = _bias_scores(tok, more, less)
            except MlmkitError as e:
                run.fail(p.line, "score", f"{place(path, p.line)}: {e}")
                run.add(str(p.line), p.groups)
                continue
            s_more, s_less = round(s_more, 3), round(s_less, 3)
            if s_more == s_less:
                run.notes["neutral pairs (equal scores)"][p.groups["direction"]] += 1
            run.add(str(p.line), p.groups, stereotype_score=float(s_more > s_less))
    return run
