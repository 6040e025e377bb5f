"""`mlmkit train`: settings from defaults < --config < flags (a resumed run's own first)."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from mlmkit.cli.flags import add_command, add_model_argument, add_settings_flags, settings_from
from mlmkit.config import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    # The generated usage would list every setting; the sections do that better.
    t = add_command(sub, "train", usage="%(prog)s [-h] [--config FILE] [MODEL | --model MODEL] "
                    "[--data DATA]\n" + " " * 20 + "[--output DIR] [--SETTING VALUE ...]")
    t.add_argument("--config", metavar="FILE", help="YAML/TOML file of settings (flags win)")
    add_model_argument(t, "optional")
    add_settings_flags(t, TrainConfig)


def run(ns: argparse.Namespace, argv: list[str]) -> int:
    from mlmkit.training.rundir import resumed_settings, run_dir_of
    from mlmkit.training.runner import train

    # A resumed run starts from its own saved settings: flags repeat them or change the few
    # that may change (the run checks which).
    base = None
    if getattr(ns, "resume", None):
        run_dir = run_dir_of(ns.resume, getattr(ns, "output", None))
        base = resumed_settings(run_dir)
    cfg = settings_from(TrainConfig, ns, base)
    reads = [("--config", Path(ns.config))] if getattr(ns, "config", None) else []
    r = train(cfg, command="mlmkit " + shlex.join(argv), reads=reads)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate launch: print once
        return 0
    published = [f"published {r.hub_url}"] if r.hub_url else []
    if r.finished_before:
        then = published[0] if published else ("pass a larger --epochs or --max-steps to train "
                                                "further")
        print(f"{r.output_dir}: already trained ({r.steps} steps); {then}")
        return 0
    lines = [f"saved {r.output_dir} ({r.steps} steps, {r.train_seconds:.1f} s of training)"]
    if r.base:
        lines.append(", ".join(filter(None, [
            f"perplexity before: {r.base.perplexity:.3f} (loss {r.base.loss:.4f}, "
            f"{r.base.tokens:,} fixed masked tokens)", r.base.accuracy_text()])))
    if r.final:
        lines.append(", ".join(filter(None, [
            f"perplexity after:  {r.final.perplexity:.3f} (loss {r.final.loss:.4f})",
            r.final.accuracy_text()])))
    if r.probes:
        from mlmkit.training.probes import probe_rows

        lines += [f"probe {task} {file}: {metric} {base} -> {tuned} ({change}"
                  + (f", McNemar p {p})" if p else ")")
                  for task, file, metric, base, tuned, change, p in probe_rows(r.probes)]
    print("\n".join([*lines, *published]))
    return 0
