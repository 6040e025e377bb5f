"""`train --probe`: mlmkit.probing's probes on the base model before training and on the
trained model after, their paired difference, and the rows the model card and the command
line show of them. Scoring and statistics are the probing package's; this only schedules."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from mlmkit.errors import MlmkitError
from mlmkit.probing.table import format_ci, format_diff, format_p, format_value
from mlmkit.settings import named

log = logging.getLogger("mlmkit")


def probe_specs(specs: Sequence[str]) -> list[tuple[str, str, str]]:
    """(FILE:TASK, file, task) of each --probe, the task named or guessed from the file."""
    from mlmkit.probing.spec import resolve_spec

    out = []
    for spec in specs:
        path, task = resolve_spec(spec, named("probe", spec, quoted=True))
        out.append((f"{path}:{task}", path, task))
    return out


def check_probe_inputs(specs: Sequence[str]) -> None:
    """Read every record of every --probe file as its task reads them: a bad record is one
    error now, before training, not after it."""
    from mlmkit.probing.run import check_records

    for spec, (_, path, task) in zip(specs, probe_specs(specs)):
        try:
            check_records(path, task)
        except MlmkitError as e:
            raise MlmkitError(f"{named('probe', spec, quoted=True)}: {e}") from None


def run_training_probes(model: Any, tokenizer: Any, specs: Sequence[str], name: str,
                        progress: bool = False) -> dict[str, Any]:
    """{FILE:TASK: report dict, with every item's outcome} of the --probe files on an in-memory
    model (a transformers model; its training mode is kept), which the reports call `name`.
    The engines' default token budgets apply; the model keeps its device and dtype."""
    from mlmkit.probing.run import run_probes

    keys = [key for key, _, _ in probe_specs(specs)]
    log.info("probing %s on %s", name, ", ".join(keys))
    return run_probes(model, keys, tokenizer=tokenizer, name=name, keep_items=True,
                      progress=progress)


def _without_items(report: dict[str, Any]) -> dict[str, Any]:
    return {**report, "results": [{k: v for k, v in r.items() if k != "items"}
                                  for r in report["results"]]}


def probe_section(base: dict[str, Any] | None, tuned: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's "probe": per FILE:TASK, the task, the file, the base's and the trained
    model's reports (as `run_probes` gives them, less the per-item outcomes) and the trained
    model's difference from the base on the same items (`compare_results`: the paired
    bootstrap 95% interval and McNemar's p, overall and per group); None where the base was
    not probed."""
    from mlmkit.probing.run import compare_results

    out = {}
    for key, report in tuned.items():
        before = (base or {}).get(key)
        out[key] = {"task": report["task"], "file": report["input"],
                    "base": _without_items(before) if before else None,
                    "tuned": _without_items(report),
                    "difference": compare_results(before, report) if before else None}
    return out


PROBE_HEADER = ["Task", "File", "Metric", "Base", "Tuned", "Difference (95% CI)", "McNemar p"]


def probe_rows(section: dict[str, Any]) -> list[list[str]]:
    """One row per probe and metric of metrics.json's "probe" (overall values):
    PROBE_HEADER's columns, as `mlmkit probe`'s table formats them."""
    rows = []
    for p in section.values():
        base = p["base"]["results"][0]["metrics"] if p["base"] else {}
        for metric, tuned in p["tuned"]["results"][0]["metrics"].items():
            d = (p["difference"] or {}).get(metric)
            change = (f"{format_diff(metric, d['diff'])} {format_ci(metric, d['ci95'])}".strip()
                      if d else "-")
            rows.append([p["task"], p["file"], metric,
                         format_value(metric, (base.get(metric) or {}).get("value")),
                         format_value(metric, tuned["value"]), change,
                         format_p(d) if d else ""])
    return rows
