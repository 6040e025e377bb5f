"""`mlmkit score`: pseudo-log-likelihood of sentences, and n-best rescoring."""

from __future__ import annotations

import argparse
from typing import Any

from mlmkit.cli.flags import add_command, add_model_argument
from mlmkit.cli.results import (
    add_engine_flags,
    add_input_flags,
    engine_settings,
    run_on_ray,
    write_results,
)
from mlmkit.errors import MlmkitError
from mlmkit.io.inputs import LineTally, check_io_paths


def register(sub: argparse._SubParsersAction) -> None:
    c = add_command(sub, "score")
    add_model_argument(c, "texts")
    c.add_argument("texts", nargs="*", help="texts to score; '-' or none reads stdin")
    add_input_flags(c, ' (with --rescore: n-best records, JSON lines)')
    c.add_argument("--metric", default="original", help="original (one token masked at a "
                   "time), word-l2r (also the later pieces of its word) or whole-word "
                   "(default: original)")
    c.add_argument("--per-token", action="store_true", help="add each scored token's "
                   "log-probability (token_logprobs) to the records")
    c.add_argument("--json", action="store_true", help="print JSON lines, one per text")
    c.add_argument("--rescore", action="store_true", help="re-rank n-best lists: JSON lines "
                   "with candidates [{text, score}]; total = score + weight * PLL")
    c.add_argument("--weight", type=float, default=1.0, help="weight of the PLL in --rescore's "
                   "total (default: 1.0)")
    add_engine_flags(c, only=("device", "dtype", "runtime", "max_tokens", "quiet"))


# The plain table: pseudo-log-likelihood (nats, higher is likelier) and pseudo-perplexity.
HEADER = f"{'PLL':>12}  {'pseudo-PPL':>10}  text\n"


def _plain(rec: dict, out: Any) -> None:
    out.write(f"{rec['pll']:12.4f}  {rec['pppl']:10.3f}  {rec['text']}\n")


def run(ns: argparse.Namespace, argv: list[str]) -> int:
    from mlmkit.inference.params import RescoreParams, ScoreParams
    from mlmkit.inference.tasks import task_for

    # Checked before anything loads; the task follows from the parameters' type.
    params = (RescoreParams(ns.weight, ns.metric, ns.per_token) if ns.rescore
              else ScoreParams(ns.metric, ns.per_token))
    engine, ray = engine_settings(ns)
    if ray.engine == "ray":
        return run_on_ray(ns, params, engine, ray)
    check_io_paths(ns.texts, ns.input, ns.output)
    if ns.rescore and any(t != "-" for t in ns.texts):
        raise MlmkitError("--rescore: reads n-best records from --input or stdin, not texts on "
                          "the command line")
    task = task_for(params)
    scorer = task.load(ns.model, device=engine.device, dtype=engine.dtype,
                       runtime=engine.runtime, max_tokens=engine.max_tokens)
    doing, tally = ("rescoring", "could not be rescored") if ns.rescore else (
        "scoring", "could not be scored")
    return write_results(ns, lambda items: task.run(scorer, items, params),
                         None if ns.rescore else _plain, LineTally(tally), doing, engine.quiet,
                         whole_record=task.reads_records, header=HEADER)
