"""`mlmkit fill`: the top candidates for each mask, as transformers' fill-mask pipeline."""

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
from mlmkit.io.inputs import LineTally, check_io_paths


def register(sub: argparse._SubParsersAction) -> None:
    f = add_command(sub, "fill")
    add_model_argument(f, "texts")
    f.add_argument("texts", nargs="*", help="texts with a mask, written <mask> or [MASK] "
                   "whatever the model's own mask token; '-' or none reads stdin")
    add_input_flags(f)
    f.add_argument("--top-k", type=int, default=5, help="candidates per mask (default: 5)")
    f.add_argument("--targets", nargs="+", help="restrict candidates to these words")
    f.add_argument("--json", action="store_true", help="print the pipeline's records as JSON "
                   "lines, one per text")
    add_engine_flags(f)


def _plain(res: list, out: Any) -> None:
    groups = res if res and isinstance(res[0], list) else [res]
    for g, recs in enumerate(groups):
        head = f"[mask {g + 1}] " if len(groups) > 1 else ""
        for r in recs:
            out.write(f"{head}{r['score']:.4f}  {r['sequence']}\n")


def run(ns: argparse.Namespace, argv: list[str]) -> int:
    from mlmkit.inference.params import FillParams
    from mlmkit.inference.tasks import FILL

    engine, ray = engine_settings(ns)
    # Checked before anything loads; the budget is in the parameters, so a Ray job keeps it.
    params = FillParams(ns.top_k, ns.targets, engine.max_candidates)
    if ray.engine == "ray":
        return run_on_ray(ns, params, engine, ray)
    check_io_paths(ns.texts, ns.input, ns.output)
    fm = FILL.load(ns.model, device=engine.device, dtype=engine.dtype, runtime=engine.runtime,
                   batch_size=engine.batch_size, max_tokens=engine.max_tokens)
    return write_results(ns, lambda texts: FILL.run(fm, texts, params), _plain,
                         LineTally("could not be filled"), "filling", engine.quiet, gap=True)
