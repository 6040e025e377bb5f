"""What a caller may ask of an inference task, as frozen dataclasses checked once when built:
`FillParams` (fill-mask), `ScoreParams` (PLL scoring), `RescoreParams` (n-best re-ranking).

Every entry point (the Python API, the CLI, the server, Ray) builds one of these and nothing
else checks the same values again. Being frozen, they are hashable: the server groups the jobs
that may share one engine call by their parameters. No torch here, so the CLI can check its
flags before paying for the import.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from mlmkit.config import EngineConfig
from mlmkit.errors import MlmkitError

METRICS = ("original", "word-l2r", "whole-word")
# minicons' names, accepted so that its users' scripts carry over
_ALIASES = {"within_word_l2r": "word-l2r", "pll-word-l2r": "word-l2r", "pll": "original",
            "whole_word": "whole-word"}


class InvalidParam(MlmkitError):
    """A task parameter out of its range; `field` names it, so that the server can say where
    in the request it was (`'parameters.metric'`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_metric(metric: str) -> str:
    """`metric` by its canonical name; an unknown one is an error naming the known ones."""
    name = _ALIASES.get(metric, metric) if isinstance(metric, str) else metric
    if name not in METRICS:
        raise InvalidParam("metric", f"metric {metric!r}: expected one of {', '.join(METRICS)}")
    return name


@dataclass(frozen=True)
class FillParams:
    """`top_k`: candidates per mask, a positive integer (a vocabulary, or a list of targets,
    smaller than that gives all it has); `targets`: only score these words (a string or a
    sequence of them, kept as a tuple); `max_candidates`: most candidates one text may get,
    its masks x top_k (`EngineConfig`'s --max-candidates): each is a record holding the whole
    text, so past it a text costs more work and output than anyone should have to pay for,
    and gets an error in its place instead."""

    top_k: int = 5
    targets: tuple[str, ...] | None = None
    max_candidates: int = EngineConfig.max_candidates

    def __post_init__(self) -> None:
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise InvalidParam("top_k", f"top_k {k!r}: expected a positive integer")
        object.__setattr__(self, "top_k", int(k))  # numpy's integers too, as plain ints
        # The setting's one rule, named as its flag: a client never sends this one.
        budget = EngineConfig(max_candidates=self.max_candidates).max_candidates
        object.__setattr__(self, "max_candidates", budget)
        targets = self.targets
        if targets is None:
            return
        if isinstance(targets, str):
            targets = (targets,)
        elif isinstance(targets, (list, tuple)) and all(isinstance(t, str) for t in targets):
            targets = tuple(targets)
        else:
            raise InvalidParam("targets", f"targets {targets!r}: expected a string or a list "
                               "of strings")
        object.__setattr__(self, "targets", targets)

    def candidates(self, masks: int, choices: int | None = None) -> int:
        """Candidate records for a text of `masks` masks: one per mask and candidate, top_k
        of them unless `choices` (the vocabulary, or the targets) has fewer."""
        return masks * (self.top_k if choices is None else min(self.top_k, choices))

    def over_budget(self, masks: int, choices: int | None = None) -> str | None:
        """Why a text of `masks` masks asks for too much, or None: the rule every entry point
        (the engine, the server before it queues a text) applies."""
        n = self.candidates(masks, choices)
        if n <= self.max_candidates:
            return None
        k = n // masks
        return (f"{masks:,} masks x top_k {k} = {n:,} candidates, more than the limit of "
                f"{self.max_candidates:,} a text (--max-candidates)")


@dataclass(frozen=True)
class ScoreParams:
    """`metric`: original, word-l2r or whole-word (minicons' names too; kept by the canonical
    name); `per_token`: add each scored token's log-probability to the record."""

    metric: str = "original"
    per_token: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", check_metric(self.metric))
        object.__setattr__(self, "per_token", bool(self.per_token))  # 0/1 as False/True


@dataclass(frozen=True)
class RescoreParams:
    """`weight`: of the PLL in each candidate's total (prior score + weight * PLL), a finite
    number; `metric` and `per_token` as `ScoreParams`."""

    weight: float = 1.0
    metric: str = "original"
    per_token: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", check_metric(self.metric))  # first, as before
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
            raise InvalidParam("weight", f"weight {w!r}: expected a finite number")
        object.__setattr__(self, "weight", float(w))
        object.__setattr__(self, "per_token", bool(self.per_token))

    @property
    def scoring(self) -> ScoreParams:
        """The parameters each candidate is scored with."""
        return ScoreParams(self.metric, self.per_token)
