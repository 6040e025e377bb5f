"""`mlmkit eval`: fixed-mask perplexity of a model; a run's own held-out split by default."""

from __future__ import annotations

import argparse
import json

from mlmkit.cli.flags import add_command, add_model_argument, add_settings_flags, settings_from
from mlmkit.config import EvalConfig


def register(sub: argparse._SubParsersAction) -> None:
    e = add_command(sub, "eval", usage="%(prog)s [-h] [--config FILE] [--json] "
                    "[MODEL | --model MODEL]\n" + " " * 19 + "[--data DATA] [--SETTING VALUE ...]")
    e.add_argument("--config", metavar="FILE", help="YAML/TOML file of settings (flags win)")
    e.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    add_model_argument(e, "optional")
    add_settings_flags(e, EvalConfig)


def run(ns: argparse.Namespace, argv: list[str]) -> int:
    from mlmkit.training.perplexity import run_eval
    from mlmkit.training.rundir import run_eval_settings

    # A run's directory: by default its own data settings and held-out split, so the number
    # printed is the run's own.
    saved = run_eval_settings(ns.model) if "data" not in ns and getattr(ns, "model", None) \
        else None
    cfg = settings_from(EvalConfig, ns, saved)
    m, stats = run_eval(cfg)
    if ns.json:
        print(json.dumps({"model": cfg.model, **m.to_dict()}))
    else:
        print(f"{cfg.model}: perplexity {m.perplexity:.3f} (loss {m.loss:.4f}), "
              f"{m.accuracy_text()} on {m.tokens:,} masked tokens in {m.blocks:,} blocks "
              f"(eval seed {cfg.eval_seed})")
    return 0
