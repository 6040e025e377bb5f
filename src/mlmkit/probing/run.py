"""Probe masked LMs on minimal pairs (BLiMP), cloze facts (LAMA) and bias pairs (CrowS-Pairs),
one model or a base and its tuned versions side by side, with the paired difference's
uncertainty: `probe_models` for a table, `run_probes` for the training loop's hook."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlmkit.config import PROBE_TASKS, parse_probe_spec
from mlmkit.errors import MlmkitError
from mlmkit.modeling.precision import precision_of
from mlmkit.probing.cloze import NOT_ONE_TOKEN, count_facts, fact_records, run_cloze
from mlmkit.probing.spec import guess_task
from mlmkit.probing.stats import compare, summarize
from mlmkit.probing.table import format_report
from mlmkit.probing.tasks import (
    Engines,
    Options,
    TaskRun,
    bias_items,
    pair_items,
    run_bias,
    run_pairs,
)

TASKS: dict[str, Callable[..., TaskRun]] = dict(zip(PROBE_TASKS, (run_pairs, run_cloze,
                                                                 run_bias)))
# Each task's reader of its records, without a model (`check_records`).
_READERS = dict(zip(PROBE_TASKS, (pair_items, fact_records, bias_items)))
BIAS_CAVEAT = (
    "CrowS-Pairs' authors warn that the dataset is unreliable as a measure of bias: Blodgett "
    "et al. (ACL 2021) found many pairs that do not test a coherent stereotype, or that change "
    "more than the group mentioned; read the score as a rough signal, not a measurement of "
    "harm.")
MAX_LISTED = 100  # bad records listed in a report (all are counted)

ModelLike = Any  # a path or Hub id, a (model, tokenizer) pair, or a model object


@dataclass
class ProbeReport:
    """What `probe_models` found: per model, each metric overall, macro over groups and per
    group; model 2 onwards compared with model 1 (the base) on the items both scored."""

    task: str
    input: str
    models: list[str]
    options: dict[str, Any]
    items: int
    results: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    bad_count: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_LISTED
    measures: str = ""
    caveat: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able data."""
        return {"task": self.task, "input": self.input, "models": self.models,
                "options": self.options, "items": self.items, "measures": self.measures,
                "caveat": self.caveat, "results": self.results,
                "comparisons": self.comparisons, "bad_count": self.bad_count, "bad": self.bad}

    def format_table(self) -> str:
        """The report as a table for people: models side by side, differences with their
        95% interval and McNemar's p."""
        return format_report(self)


def _describe(task: str, opts: Options, group: str) -> str:
    k = opts.top_k
    if task == "pairs":
        return (f"accuracy: share of pairs whose {opts.good_field} has a higher PLL (metric "
                f"{opts.metric}) than {opts.bad_field}; a tie counts as wrong; macro: mean "
                f"over the {group} groups")
    if task == "bias":
        return ("stereotype_score: share of pairs where sent_more's shared tokens (difflib "
                "alignment of the token ids; each masked alone, the rest in view) have a higher "
                "summed log-probability than sent_less's, sums rounded to 3 decimals, a tie "
                "not stereotypical (Nangia et al. 2020, metric.py); 50% = no preference")
    text = (f"p@1, p@{k}: share of masked sentences whose object is the fill-mask top 1 / in "
            f"its top {k}; mrr: mean of 1/rank of the object among the whole vocabulary at the "
            "mask; all over objects that are one token of the model's vocabulary (others are "
            "counted, not scored)")
    if opts.multi_token:
        text += (f"; mt_*: for the other objects, the rank of the sentence with the object "
                 f"among it and the sentences of the top {k} single tokens, by PLL (metric "
                 f"{opts.metric}; PLL sums one term per token, so longer objects are "
                 "disadvantaged), not comparable with p@k")
    return text


def _name(model: ModelLike, i: int) -> str:
    if isinstance(model, (str, Path)):
        return str(model)
    obj = model[0] if isinstance(model, tuple) else model
    return getattr(obj, "name_or_path", "") or f"model {i + 1}"


def _engines(model: ModelLike, tokenizer: Any, device: str, dtype: str,
             max_tokens: int | None) -> Engines:
    """Engines for one model; a model object keeps its own device and dtype unless told."""
    if isinstance(model, tuple):
        model, tokenizer = model
    if isinstance(model, Path):
        model = str(model)
    if not isinstance(model, str):
        param = next(model.parameters())
        device = str(param.device) if device == "auto" else device
        dtype = precision_of(model) if dtype == "auto" else dtype
    return Engines(model, tokenizer, device, dtype, max_tokens)


def _run_one(task: str, model: ModelLike, tokenizer: Any, path: str, opts: Options,
             engine_kw: dict[str, Any], label: str) -> TaskRun:
    from tqdm.auto import tqdm

    obj = model[0] if isinstance(model, tuple) else model
    training = getattr(obj, "training", None)
    eng = _engines(model, tokenizer, **engine_kw)
    with tqdm(desc=label, unit=" records", disable=not opts.progress) as bar:
        try:
            return TASKS[task](eng, path, opts, bar)
        finally:
            if training:  # a model in training gets its mode back (the engines set eval)
                obj.train()


def probe_models(models: Sequence[ModelLike] | ModelLike, task: str | None, input: str | Path,
                 *, metric: str = "original", group_field: str | None = None,
                 good_field: str = "sentence_good", bad_field: str = "sentence_bad",
                 top_k: int = 10, relation_field: str = "predicate_id",
                 multi_token: bool = False, limit: int | None = None,
                 tokenizer: Any = None, device: str = "auto", dtype: str = "auto",
                 max_tokens: int | None = None, progress: bool = False,
                 resamples: int = 1000, seed: int = 0, keep_items: bool = False
                 ) -> ProbeReport:
    """Probe each of `models` (paths, Hub ids, (model, tokenizer) pairs, or model objects with
    `tokenizer`) on `input`; model 1 is the base the others are compared with.

    task "pairs": JSON lines (or CSV/TSV, gzipped or not) with `good_field` and `bad_field`
    (BLiMP's sentence_good, sentence_bad), grouped by `group_field` (default UID): accuracy,
    PLL(good) > PLL(bad) by `metric` (original, word-l2r, whole-word).
    task "cloze": LAMA JSON lines (masked_sentences with one [MASK] each, obj_label, the
    relation in `relation_field`): P@1, P@`top_k` and MRR over single-token objects; with
    `multi_token`, the other objects ranked by PLL against the top-k (mt_*; see `measures`).
    task "bias": CrowS-Pairs CSV (sent_more, sent_less, stereo_antistereo, bias_type): the
    share of pairs preferring the stereotype, by the paper's metric.
    task None: guessed from the first record's fields. `limit`: first records only.
    `keep_items`: each model's result also lists every item's outcome (key: line, or
    line.sentence for cloze; None where not scored) and group, e.g. to see which pairs changed.
    Differences: bootstrap 95% interval (`resamples`, `seed`) and, for 0/1 outcomes,
    McNemar's exact p. Models run one after the other, each loaded once."""
    if isinstance(models, (str, Path, tuple)) or not isinstance(models, Sequence):
        models = [models]
    if not models:
        raise MlmkitError("models: expected at least one model")
    path = str(input)
    task = task or guess_task(path)
    if task not in TASKS:
        raise MlmkitError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    if limit is not None and limit < 1:
        raise MlmkitError(f"limit {limit}: expected a positive integer")
    opts = Options(metric, good_field, bad_field, group_field, top_k, relation_field,
                   multi_token, limit, progress)
    engine_kw = {"device": device, "dtype": dtype, "max_tokens": max_tokens}
    names = [_name(m, i) for i, m in enumerate(models)]
    runs: list[TaskRun] = []
    for i, m in enumerate(models):
        runs.append(_run_one(task, m, tokenizer, path, opts, engine_kw,
                             f"{task} [{i + 1}] {Path(names[i]).name}"))
        if not runs[0].keys:  # nothing to score: no use loading the other models
            break
    report = _report(task, path, names, runs, opts, resamples, seed)
    if keep_items:
        for res, run in zip(report.results, runs):
            groups = next(iter(run.groupings.values()))
            res["items"] = {"keys": run.keys, "groups": groups, **{
                m: [None if math.isnan(v) else v for v in run.values[m]] for m in run.metrics}}
    return report


def _bad_list(names: list[str], runs: list[TaskRun]) -> list[dict[str, Any]]:
    """Records that could not be read (the same for every model: listed once) and items a
    model could not score (listed with the model)."""
    bad = [{"line": ln, "model": None, "error": msg} for ln, kind, msg in runs[0].bad
           if kind == "record"]
    for name, run in zip(names, runs):
        bad += [{"line": ln, "model": name, "error": msg} for ln, kind, msg in run.bad
                if kind == "score"]
    return sorted(bad, key=lambda b: b["line"])


def _summaries(run: TaskRun) -> dict[str, Any]:
    groupings = {g: np.asarray(v, dtype=object) for g, v in run.groupings.items()}
    out: dict[str, Any] = {}
    for m in run.metrics:
        vals = np.asarray(run.values[m], dtype=np.float64)
        first = next(iter(groupings))
        s = summarize(vals, groupings[first])
        s["groups"] = {first: s["groups"], **{g: summarize(vals, v)["groups"]
                                              for g, v in groupings.items() if g != first}}
        out[m] = s
    return out


def _compare_values(metrics: Sequence[str], base: dict[str, Any], other: dict[str, Any],
                    groups: Sequence[str], resamples: int, seed: int) -> dict[str, Any]:
    """Each metric's per-item values of `other` against `base` (NaN or None: not scored),
    overall and per group."""
    groups = np.asarray(groups, dtype=object)
    out = {}
    for m in metrics:
        b = np.asarray(base[m], dtype=np.float64)
        o = np.asarray(other[m], dtype=np.float64)
        binary = not m.endswith("mrr")
        c = compare(b, o, binary, resamples, seed)
        c["groups"] = {g: compare(b[groups == g], o[groups == g], binary, resamples, seed)
                       for g in sorted(set(groups.tolist()))}
        out[m] = c
    return out


def _compare_runs(base: TaskRun, other: TaskRun, resamples: int, seed: int) -> dict[str, Any]:
    first = next(iter(base.groupings))
    return _compare_values(base.metrics, base.values, other.values, base.groupings[first],
                           resamples, seed)


def _report(task: str, path: str, names: list[str], runs: list[TaskRun], opts: Options,
            resamples: int, seed: int) -> ProbeReport:
    bad = _bad_list(names, runs)
    if not runs[0].keys:
        if bad:
            raise MlmkitError(f"{bad[0]['error']} (and all {len(bad)} records of {path} are "
                              "bad)")
        raise MlmkitError(f"{path}: no records; expected at least one")
    for name, run in zip(names[1:], runs[1:]):
        if run.keys != runs[0].keys:  # the file changed while it was read
            raise MlmkitError(f"{path}: read differently for {name}; was it being written?")
    results = []
    for name, run in zip(names, runs):
        notes = {k: {"total": sum(c.values()), "groups": dict(c)} for k, c in run.notes.items()}
        if task == "cloze":
            notes["facts"] = {"total": count_facts(run)}
        results.append({"model": name, "metrics": _summaries(run), "notes": notes})
    comparisons = [{"base": names[0], "model": name,
                    "metrics": _compare_runs(runs[0], run, resamples, seed)}
                   for name, run in zip(names[1:], runs[1:])]
    group = next(iter(runs[0].groupings))
    options = {k: v for k, v in vars(opts).items() if k != "progress"}
    options.update(group_field=group, resamples=resamples, seed=seed)
    return ProbeReport(task, path, names, options, len(runs[0].keys), results, comparisons,
                       len(bad), bad[:MAX_LISTED], _describe(task, opts, group),
                       BIAS_CAVEAT if task == "bias" else None)


def run_probes(model: ModelLike, specs: Sequence[str], tokenizer: Any = None,
               name: str | None = None, **options: Any) -> dict[str, Any]:
    """The probes of `specs` (each FILE or FILE:task; the task guessed from the file's fields
    when not named) on one model (a path, or an in-memory model with `tokenizer`; its
    training mode is given back), as JSON-able data: {spec: report dict}. `name`: what the
    reports call the model (default: its path or `name_or_path`). `options` as
    `probe_models`'s. For `mlmkit train --probe`: once before training, once after."""
    out = {}
    if isinstance(model, (str, Path)):
        # Load once for all the specs rather than once per spec.
        eng = _engines(str(model), None, options.pop("device", "auto"),
                       options.pop("dtype", "auto"), options.get("max_tokens"))
        model, tokenizer = eng.scorer.model, eng.scorer.tokenizer
    for spec in specs:
        path, task = parse_probe_spec(spec)
        report = probe_models([model], task, path, tokenizer=tokenizer, **options)
        if name is not None:
            report.models, report.results[0]["model"] = [name], name
        out[spec] = report.to_dict()
    return out


def compare_results(base: dict[str, Any], other: dict[str, Any], resamples: int = 1000,
                    seed: int = 0) -> dict[str, Any]:
    """Per metric, `other` against `base`: two report dicts of one model each, made with
    `keep_items` on the same input (e.g. `run_probes` before and after training), compared
    as `probe_models` compares models side by side (its comparisons' "metrics")."""
    items = [r["results"][0].get("items") for r in (base, other)]
    if any(i is None or "groups" not in i for i in items):
        raise MlmkitError("compare_results: expected reports made with keep_items=True")
    if items[0]["keys"] != items[1]["keys"]:
        raise MlmkitError(f"{other['input']}: not the items of the base's report "
                          f"({base['input']}); was the file changed in between?")
    metrics = list(base["results"][0]["metrics"])
    return _compare_values(metrics, items[0], items[1], items[0]["groups"], resamples, seed)


class _NoBar:
    def update(self, n: int) -> None:
        pass


def check_records(path: str | Path, task: str, **options: Any) -> int:
    """Read every record of a probe's input as `task` reads it, without a model (`options`
    as `probe_models`'s field names): the number of items. The first bad record raises, with
    the count of bad ones, and so does a file without records: `train --probe` calls this
    before training, not hours later."""
    run = TaskRun(())
    n = sum(1 for _ in _READERS[task](str(path), Options(**options), run, _NoBar()))
    if run.bad:
        raise MlmkitError(f"{run.bad[0][2]} ({len(run.bad)} bad record"
                          f"{'s' * (len(run.bad) > 1)} in {path})")
    if not n:
        raise MlmkitError(f"{path}: no records; expected at least one")
    return n


__all__ = ["ProbeReport", "guess_task", "probe_models", "run_probes", "compare_results",
           "check_records", "NOT_ONE_TOKEN"]
