"""`mlmkit score`: pseudo-log-likelihood of sentences, and n-best rescoring."""

from __future__ import annotations

import argparse
from typing import Any

from mlmkit.cli.flags import add_command
from mlmkit.cli.results import add_engine_flags, engine_settings, run_on_ray, write_results
from mlmkit.errors import MlmkitError
from mlmkit.io.inputs import LineTally, check_io_paths


def register(sub: argparse._SubParsersAction) -> None:
    c = add_command(sub, "score")
    c.add_argument("model", help="Hub id or local model directory")
    c.add_argument("texts", nargs="*", help="texts to score; '-' or none reads stdin")
    c.add_argument("--input", help="file of texts: .txt (one per line) or .jsonl ('text' field; "
                   "with --rescore, n-best records); '-' or /dev/stdin reads stdin")
    c.add_argument("--output", help="write JSON lines here instead of stdout")
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
    add_engine_flags(c, only=("device", "dtype", "max_tokens", "quiet"))


def _plain(rec: dict, out: Any) -> None:
    out.write(f"{rec['pll']:12.4f}  {rec['pppl']:10.3f}  {rec['text']}\n")


def run(ns: argparse.Namespace, argv: list[str]) -> int:
    from mlmkit.inference.score import Scorer, check_metric, rescore

    metric = check_metric(ns.metric)
    engine, ray = engine_settings(ns)
    if ray.engine == "ray":
        extra = {"weight": ns.weight} if ns.rescore else {}
        return run_on_ray(ns, "rescore" if ns.rescore else "score",
                          {"metric": metric, "per_token": ns.per_token, **extra}, engine, ray)
    check_io_paths(ns.texts, ns.input, ns.output)
    if ns.rescore and any(t != "-" for t in ns.texts):
        raise MlmkitError("--rescore: reads n-best records from --input or stdin, not texts on "
                          "the command line")
    scorer = Scorer(ns.model, device=engine.device, dtype=engine.dtype,
                    max_tokens=engine.max_tokens)
    if ns.rescore:
        return write_results(
            ns, lambda recs: rescore(scorer, recs, ns.weight, metric, ns.per_token), None,
            LineTally("could not be rescored"), "rescoring", engine.quiet, whole_record=True)
    return write_results(ns, lambda texts: scorer.stream(texts, metric, ns.per_token), _plain,
                         LineTally("could not be scored"), "scoring", engine.quiet)
