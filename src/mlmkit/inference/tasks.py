"""The inference tasks by name and by parameters type: each `Task` knows its engine class, its
parameters, how to load its engine and how to run a stream on it. The server, Ray and the CLI
dispatch through `task_for(params)` (or `TASKS[name]` where the name was stored, as in a Ray
job's settings) instead of comparing strings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mlmkit.errors import MlmkitError
from mlmkit.inference.engine import Engine
from mlmkit.inference.fill import FillMask
from mlmkit.inference.params import FillParams, RescoreParams, ScoreParams
from mlmkit.inference.score import Scorer, rescore


@dataclass(frozen=True)
class Task:
    """One thing an engine does. `run(engine, inputs, params)` yields a result per input in
    input order, an `MlmkitError` in place of one that failed; it calls the engine's public
    stream, so any object with that method serves (the server's tests pass stand-ins).
    `reads_records`: the inputs are whole JSON records (n-best lists), not texts."""

    name: str  # as the CLI command and a Ray job's settings spell it
    engine: type[Engine]
    params: type
    load: Callable[..., Engine]
    run: Callable[[Any, Iterable[Any], Any], Iterator[Any]]
    reads_records: bool = False

    def params_from(self, options: dict[str, Any]) -> Any:
        """The task's parameters from a dict of them (a Ray job's stored options)."""
        try:
            return self.params(**options)
        except TypeError:
            expected = ", ".join(self.params.__dataclass_fields__)
            raise MlmkitError(f"{self.name} options {sorted(options)}: expected only "
                              f"{expected}") from None


def _load_fill(model: Any, *, device: str = "auto", dtype: str = "auto",
               batch_size: int | None = None, max_tokens: int | None = None,
               runtime: str = "torch") -> FillMask:
    return FillMask(model, device=device, dtype=dtype, batch_size=batch_size,
                    max_tokens=max_tokens, runtime=runtime)


def _load_scorer(model: Any, *, device: str = "auto", dtype: str = "auto",
                 batch_size: int | None = None, max_tokens: int | None = None,
                 runtime: str = "torch") -> Scorer:
    # A scorer packs masked copies under its token budget alone: no budget counts texts.
    return Scorer(model, device=device, dtype=dtype, max_tokens=max_tokens, runtime=runtime)


def _run_fill(engine: Any, texts: Iterable[str], p: FillParams) -> Iterator[Any]:
    return engine.stream(texts, p.top_k, None if p.targets is None else list(p.targets),
                         max_candidates=p.max_candidates)


def _run_score(engine: Any, texts: Iterable[str], p: ScoreParams) -> Iterator[Any]:
    return engine.stream(texts, p.metric, p.per_token)


def _run_rescore(engine: Any, records: Iterable[Any], p: RescoreParams) -> Iterator[Any]:
    return rescore(engine, records, p.weight, p.metric, p.per_token)


FILL = Task("fill", FillMask, FillParams, _load_fill, _run_fill)
SCORE = Task("score", Scorer, ScoreParams, _load_scorer, _run_score)
RESCORE = Task("rescore", Scorer, RescoreParams, _load_scorer, _run_rescore, reads_records=True)

TASKS: dict[str, Task] = {t.name: t for t in (FILL, SCORE, RESCORE)}
_BY_PARAMS: dict[type, Task] = {t.params: t for t in TASKS.values()}


def task_for(params: Any) -> Task:
    """The task whose parameters `params` are."""
    task = _BY_PARAMS.get(type(params))
    if task is None:
        raise TypeError(f"{type(params).__name__}: not the parameters of an inference task")
    return task


def task_named(name: str) -> Task:
    """The task stored under `name`; an unknown one is an error naming the known ones."""
    task = TASKS.get(name)
    if task is None:
        *most, last = TASKS
        raise MlmkitError(f"command {name!r}: expected {', '.join(most)} or {last}")
    return task
