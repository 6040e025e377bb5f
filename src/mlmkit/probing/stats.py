"""The statistics of the probes: per-item outcomes summarized overall, per group and macro over
groups, and two models compared on the same items (McNemar's exact test, a paired bootstrap
interval of the difference), so that "58.2% -> 58.6%" says whether it is noise."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def summarize(values: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """Mean of `values` over the items that have one (NaN: not scored), overall, per group
    and macro (the mean of the groups' means), with the counts behind each."""
    ok = ~np.isnan(values)
    per_group = {}
    for g in sorted(set(groups.tolist())):
        sel = ok & (groups == g)
        per_group[g] = {"value": float(values[sel].mean()) if sel.any() else None,
                        "n": int(sel.sum())}
    means = [v["value"] for v in per_group.values() if v["value"] is not None]
    return {"value": float(values[ok].mean()) if ok.any() else None, "n": int(ok.sum()),
            "macro": float(np.mean(means)) if means else None, "groups": per_group}


def mcnemar_exact(base: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test on paired 0/1 outcomes: b = items only `base` gets right, c = items
    only `other` gets right; two-sided p = P(min(b, c) or fewer of b + c fair coin flips
    land on one side), doubled and capped at 1 (the conditional binomial test)."""
    b = int(((base == 1) & (other == 0)).sum())
    c = int(((base == 0) & (other == 1)).sum())
    n = b + c
    if n == 0:
        return {"base_only": b, "other_only": c, "p": 1.0}
    # Exact integer arithmetic: float binomial terms underflow for thousands of items.
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return {"base_only": b, "other_only": c, "p": min(1.0, 2 * tail / 2**n)}


def paired_bootstrap(base: np.ndarray, other: np.ndarray, resamples: int = 1000,
                     seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of mean(other) - mean(base) over `resamples` resamplings of
    the items with replacement (the same items for both: the pairing is kept)."""
    d = (other - base).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = []
    # A few hundred resamples at a time: memory is bounded whatever the number of items.
    step = max(1, min(resamples, 2_000_000 // max(1, len(d))))
    for start in range(0, resamples, step):
        idx = rng.integers(0, len(d), size=(min(step, resamples - start), len(d)))
        means.append(d[idx].mean(axis=1))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(np.concatenate(means), [alpha, 1 - alpha])
    return float(lo), float(hi)


def compare(base: np.ndarray, other: np.ndarray, binary: bool, resamples: int, seed: int
            ) -> dict[str, Any]:
    """`other` against `base` on the items both scored: their means, the difference, its
    bootstrap 95% interval and, for 0/1 outcomes, McNemar's exact p."""
    both = ~np.isnan(base) & ~np.isnan(other)
    b, o = base[both], other[both]
    if not both.any():
        return {"n": 0, "base": None, "other": None, "diff": None, "ci95": None}
    out: dict[str, Any] = {"n": int(both.sum()), "base": float(b.mean()),
                           "other": float(o.mean()), "diff": float(o.mean() - b.mean()),
                           "ci95": list(paired_bootstrap(b, o, resamples, seed))}
    if binary:
        out["mcnemar"] = mcnemar_exact(b, o)
    return out
