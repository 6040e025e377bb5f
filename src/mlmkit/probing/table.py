"""A probe report as a table for people: one row per metric and group, the models side by
side, and each model's difference from the base with its 95% interval and McNemar's p."""

from __future__ import annotations

import textwrap
from typing import Any

_SHOWN_BAD = 5  # bad records printed under the table (the JSON lists more)


def format_value(metric: str, v: float | None) -> str:
    """A metric's value as the tables show it: 63.1% (an MRR: 0.412); '-' for none."""
    if v is None:
        return "-"
    return f"{v:.3f}" if metric.endswith("mrr") else f"{100 * v:.1f}%"


def format_diff(metric: str, d: float | None) -> str:
    """A difference of a metric: +0.4 (percentage points; an MRR: +0.012); '-' for none."""
    if d is None:
        return "-"
    return f"{d:+.3f}" if metric.endswith("mrr") else f"{100 * d:+.1f}"


def format_ci(metric: str, ci: list[float] | None) -> str:
    """An interval of a difference: [-0.7, +1.5]; '' for none."""
    if not ci:
        return ""
    return f"[{format_diff(metric, ci[0])}, {format_diff(metric, ci[1])}]"


def format_p(c: dict[str, Any]) -> str:
    """McNemar's p of a comparison: 0.529 or <0.001; '' where there is none."""
    if "mcnemar" not in c:
        return ""
    p = c["mcnemar"]["p"]
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _rows(report: Any, metric: str) -> list[list[str]]:
    """The rows of one metric: overall, macro, then each group of each grouping."""
    res = [r["metrics"][metric] for r in report.results]
    cmp = [c["metrics"][metric] for c in report.comparisons]
    rows = [[metric, str(res[0]["n"]), format_value(metric, res[0]["value"])]]
    for r, c in zip(res[1:], cmp):
        rows[0] += [format_value(metric, r["value"]), format_diff(metric, c["diff"]),
                    format_ci(metric, c["ci95"]), format_p(c)]
    groupings = res[0]["groups"]
    first = next(iter(groupings))
    if len(groupings[first]) > 1:
        row = [f"{metric}, macro over {first}", "", format_value(metric, res[0]["macro"])]
        for r in res[1:]:
            d = (None if r["macro"] is None or res[0]["macro"] is None
                 else r["macro"] - res[0]["macro"])
            row += [format_value(metric, r["macro"]), format_diff(metric, d), "", ""]
        rows.append(row)
    for name, groups in groupings.items():
        if len(groups) < 2 and name == first:
            continue
        for g, s in groups.items():
            if s["n"] == 0 and all(r["groups"][name][g]["n"] == 0 for r in res[1:]):
                continue  # e.g. a relation with no multi-token object: nothing to show
            row = [f"  {name} {g}", str(s["n"]), format_value(metric, s["value"])]
            for r, c in zip(res[1:], cmp):
                cg = c["groups"].get(g, {}) if name == first else {}
                row += [format_value(metric, r["groups"][name][g]["value"]),
                        format_diff(metric, cg.get("diff")), format_ci(metric, cg.get("ci95")),
                        format_p(cg)]
            rows.append(row)
    return rows


def _grid(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                      enumerate(zip(r, widths))).rstrip() for r in rows]


def _notes(report: Any) -> list[str]:
    lines = []
    for i, r in enumerate(report.results):
        for name, note in r["notes"].items():
            groups = {g: n for g, n in note.get("groups", {}).items() if g != "(none)"}
            shown = ", ".join(f"{g}: {n}" for g, n in list(groups.items())[:8])
            more = ", ..." if len(groups) > 8 else ""
            lines.append(f"[{i + 1}] {name}: {note['total']:,}"
                         + (f" ({shown}{more})" if shown else ""))
    return lines


def format_report(report: Any) -> str:
    """`report` (a ProbeReport) as text."""
    out = [f"probe {report.task} on {report.input}: {report.items:,} items, "
           f"{report.bad_count:,} bad records"]
    base = len(report.models) > 1
    out += [f"  [{i + 1}] {'base' if base and i == 0 else '    ' if base else ''} {m}"
            for i, m in enumerate(report.models)]
    head = ["metric / group", "n", "[1]"]
    for i in range(2, len(report.models) + 1):
        head += [f"[{i}]", f"[{i}]-[1]", "95% CI", "McNemar p"]
    rows = [head]
    for metric in report.results[0]["metrics"]:
        rows += _rows(report, metric)
    out += [""] + _grid(rows) + [""]
    notes = _notes(report)
    if notes:
        out += ["notes:"] + [f"  {n}" for n in notes]
    if report.bad_count:
        out.append(f"bad records: {report.bad_count:,} (counted, not scored; the first "
                   f"{_SHOWN_BAD} below, up to 100 in --json)")
        for b in report.bad[:_SHOWN_BAD]:
            out.append(f"  {b['error']}" + (f" [{b['model']}]" if b["model"] else ""))
    out += textwrap.wrap("measures: " + report.measures, 100)
    if report.caveat:
        out += textwrap.wrap("caveat: " + report.caveat, 100)
    return "\n".join(out)
