"""`mlmkit probe` on the real data: all 8,000 pairs of the BLiMP sample (8 paradigms, PLL
metric original) and all 1,508 CrowS-Pairs pairs (the paper's metric), for bert-tiny-splade.

Prints the machine, the command, for each task the wall time (model loading excluded: the
model is loaded and warmed up on 10 pairs first), the process's peak resident memory
(getrusage's ru_maxrss, which only grows: the value after each task is the peak so far), the
cores other processes kept busy meanwhile, and the report's table; then one JSON line.

    .venv/bin/python bench/probe_bench.py [--model DIR] [--device cpu] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from _common import SHARED, cpu_seconds, foreign_load, print_header, print_load  # noqa: E402

BLIMP = SHARED / "data" / "blimp-sample" / "blimp-8-paradigms.jsonl.gz"
CROWS = SHARED / "data" / "crows-pairs" / "crows_pairs_anonymized.csv.gz"
MODEL = SHARED / "models" / "bert-tiny-splade"


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def _run(task: str, path: Path, model: object, tok: object, args: argparse.Namespace) -> dict:
    from mlmkit.probing.run import probe_models

    start, t0 = cpu_seconds(), time.perf_counter()
    report = probe_models([(model, tok)], task, path, device=args.device, limit=args.limit,
                          max_tokens=args.max_tokens)
    wall = time.perf_counter() - t0
    other = foreign_load(start, wall)
    metric = next(iter(report.results[0]["metrics"]))
    res = report.results[0]["metrics"][metric]
    first = next(iter(res["groups"]))
    out = {"task": task, "input": str(path), "items": report.items, "bad": report.bad_count,
           "wall_s": round(wall, 1), "items_per_s": round(report.items / wall, 1),
           "peak_rss_mib": round(_peak_rss_mib()), "other_processes_cores": round(other, 2),
           "metric": metric, "value": res["value"], "macro": res["macro"],
           "groups": {g: s["value"] for g, s in res["groups"][first].items()}}
    print(f"\n== {task}: {report.items:,} items in {wall:.1f} s ({out['items_per_s']} items/s), "
          f"peak RSS so far {out['peak_rss_mib']} MiB")
    print_load(other)
    print(report.format_table())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(MODEL))
    p.add_argument("--blimp", default=str(BLIMP))
    p.add_argument("--crows", default=str(CROWS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="first N records of each file")
    args = p.parse_args()
    info, command = print_header("probe_bench.py")
    from mlmkit import Scorer
    from mlmkit.probing.run import probe_models

    t0 = time.perf_counter()
    scorer = Scorer(args.model, device=args.device)
    model, tok = scorer.model, scorer.tokenizer
    probe_models([(model, tok)], "pairs", args.blimp, limit=10, device=args.device)  # warm-up
    load = time.perf_counter() - t0
    print(f"model loaded and warmed up in {load:.1f} s; peak RSS {_peak_rss_mib():.0f} MiB")
    results = [_run("pairs", Path(args.blimp), model, tok, args),
               _run("bias", Path(args.crows), model, tok, args)]
    print(json.dumps({"machine": info, "command": command, "model": args.model,
                      "load_s": round(load, 1), "results": results}))


if __name__ == "__main__":
    main()
