"""Fill-mask records/s on Ray Data (`mlmkit fill --engine ray`, 1 and 2 workers) against the
single-process `mlmkit fill --input --output`, in the same run, and the overhead per record.

The model is fill_speed.py's: a DistilRoBERTa-shaped masked LM with random weights (seed 0),
saved with the real DistilRoBERTa tokenizer; the inputs are its N masked ELI5-Category
sentences in one .txt file. Reported for each path: end to end (model load, and for Ray the
actors' start and the row count, included) and steady (after the fixed cost). The single
process's fixed cost is a run on one sentence, its steady cost per record (T(N) - T(1)) /
(N - 1). Ray's steady rate is taken from the actors' clocks (each shard's completion record
holds its start and end): the records of the shards that finished after the first one, over
the time from the first shard's end to the last's; its fixed cost is the time from the call to
the first shard's start (actors started, models loaded, rows counted). The local Ray
is started once, before the first arm (it idles through the single-process arm), and its start
is reported on its own. The three arms take turns for --repeat rounds and each keeps its
fastest round. 1 worker gets all the cores (torch threads = cores, as the single process); 2
workers get half each. Ray's records are checked against the single process's (same tokens
and sequences, scores within 1e-4).

    python bench/ray_speed.py [--n 2000] [--shard-rows 250] [--top-k 5] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))  # this checkout's mlmkit, installed or not
from _common import (  # noqa: E402
    DEFAULT_DATA,
    DEFAULT_MODEL,
    TreeClock,
    print_header,
    print_load,
)
from fill_speed import build_sentences, compare, make_model_dir  # noqa: E402


def run_single(model: str, src: Path, out: Path, k: int) -> float:
    """Wall seconds of `mlmkit fill MODEL --input SRC --output OUT`, model load included."""
    from mlmkit.cli.main import main

    t0 = time.perf_counter()
    code = main(["fill", model, "--input", str(src), "--output", str(out), "--top-k", str(k),
                 "--quiet", "--device", "cpu"])
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"single-process fill of {src} failed with exit code {code}")
    return wall


def run_ray(model: str, src: Path, out: Path, k: int, workers: int, cores: int,
            shard_rows: int) -> dict[str, float]:
    """The same job on `workers` Ray Data actors (the cluster already up): wall seconds, fixed
    cost, steady records/s and the actors' own seconds per record."""
    from mlmkit.batch.ray import BatchJob, BatchResources, run_batch

    job = BatchJob("fill", model, {"top_k": k, "targets": None}, shard_rows=shard_rows)
    res = BatchResources(workers=workers, cpus_per_worker=cores // workers, device="cpu")
    done: list[dict] = []
    t0, wall0 = time.time(), time.perf_counter()
    run_batch(job, str(src), out, res, on_shard=done.append)
    wall = time.perf_counter() - wall0
    n = sum(r["records"] for r in done)
    first = min(done, key=lambda r: r["finished"])
    t_last = max(r["finished"] for r in done)
    return {"wall_s": wall, "fixed_s": min(r["started"] for r in done) - t0,
            "steady_records_per_s": (n - first["records"]) / (t_last - first["finished"]),
            "in_actor_ms_per_record": sum(r["seconds"] for r in done) / n * 1e3,
            "output_bytes_per_record": sum(e["size"] for r in done for e in r["files"].values())
            / n}


def ray_outputs(out: Path) -> list:
    import pyarrow.parquet as pq

    rows = sorted(pq.read_table(out).to_pylist(), key=lambda r: r["row"])
    return [json.loads(r["output"]) for r in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ELI5-Category JSON(.gz)")
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL,
                   help="config + tokenizer of the model shape (random weights are used)")
    p.add_argument("--n", type=int, default=2000, help="sentences")
    p.add_argument("--shard-rows", type=int, default=250, help="rows per shard")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="seed of the masked-word choice")
    p.add_argument("--repeat", type=int, default=2, help="rounds; each arm's best is kept")
    args = p.parse_args(argv)

    import ray
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    info, command = print_header("ray_speed.py", argv)
    cores = os.cpu_count() or 1
    sentences = build_sentences(args.data, args.n, args.seed)
    print(f"model: DistilRoBERTa shape ({args.model_dir}), random weights (seed 0); cpu; "
          f"{len(sentences):,} sentences, top_k {args.top_k}; Ray {ray.__version__}, "
          f"{args.shard_rows} rows per shard")
    res: dict = {"benchmark": "ray_speed", "machine": info, "command": command,
                 "n": len(sentences), "shard_rows": args.shard_rows, "top_k": args.top_k,
                 "ray": ray.__version__}
    clock, wall_start = TreeClock(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as d:
        tmp = Path(d)
        model = str(tmp / "model")
        make_model_dir(args.model_dir, Path(model))
        (tmp / "all.txt").write_text("\n".join(sentences) + "\n")
        (tmp / "one.txt").write_text(sentences[0] + "\n")
        t0 = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
        res["ray_start_s"] = round(time.perf_counter() - t0, 2)
        # The arms take turns, round after round, and each keeps its best round: on a machine
        # whose load changes, no arm gets all the quiet (or all the busy) minutes.
        runs: dict[str, list[dict]] = {"single": [], "ray-1": [], "ray-2": []}
        for rnd in range(args.repeat):
            one, full = (run_single(model, tmp / f"{size}.txt", tmp / f"single-{size}.jsonl",
                                    args.top_k) for size in ("one", "all"))
            per = (full - one) / (len(sentences) - 1)
            runs["single"].append({"wall_s": full, "fixed_s": one,
                                   "steady_records_per_s": 1 / per, "ms_per_record": per * 1e3})
            single_out = [json.loads(ln) for ln in (tmp / "single-all.jsonl").read_text()
                          .splitlines()]
            for w in (1, 2):
                name = f"ray-{w}"
                r = run_ray(model, tmp / "all.txt", tmp / f"{name}-{rnd}", args.top_k, w,
                            cores, args.shard_rows)
                checks = compare(single_out, ray_outputs(tmp / f"{name}-{rnd}"))
                r["mismatches_vs_single"] = checks["mismatches"]
                r["max_score_diff_vs_single"] = checks["max_score_diff"]
                runs[name].append(r)
        other = clock.foreign_load(time.perf_counter() - wall_start)
        ray.shutdown()
    for name, rs in runs.items():
        res[name] = min(rs, key=lambda r: r["wall_s"])
        res[name]["wall_s_all"] = [round(r["wall_s"], 2) for r in rs]
    n = len(sentences)
    for name in ("single", "ray-1", "ray-2"):
        r = res[name]
        r["records_per_s"] = n / r["wall_s"]
        r.setdefault("ms_per_record", 1e3 / r["steady_records_per_s"])
        print(f"{name:<7} {n:,} records in {r['wall_s']:6.2f} s = {r['records_per_s']:7.1f} "
              f"records/s end to end; fixed cost {r['fixed_s']:5.2f} s; steady "
              f"{r['steady_records_per_s']:7.1f} records/s ({r['ms_per_record']:.2f} ms a record)"
              + (f"; inside the actors {r['in_actor_ms_per_record']:.2f} ms a record"
                 if "in_actor_ms_per_record" in r else ""))
        res[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
    for name in ("ray-1", "ray-2"):
        res[f"{name}_overhead_ms_per_record"] = round(res[name]["ms_per_record"]
                                                      - res["single"]["ms_per_record"], 3)
    diff = max(r["max_score_diff_vs_single"] for name in ("ray-1", "ray-2") for r in runs[name])
    bad = {name: sum(r["mismatches_vs_single"] for r in runs[name]) for name in ("ray-1", "ray-2")}
    print(f"Ray start (local, {cores} CPUs): {res['ray_start_s']} s; steady overhead per record "
          f"vs the single process: ray-1 {res['ray-1_overhead_ms_per_record']:+.2f} ms, ray-2 "
          f"{res['ray-2_overhead_ms_per_record']:+.2f} ms; mismatching records vs the single "
          f"process, all rounds: ray-1 {bad['ray-1']}, ray-2 {bad['ray-2']} (scores differ by at "
          f"most {diff:.1e}); best of {args.repeat} rounds, walls: "
          + "; ".join(f"{k} {res[k]['wall_s_all']}" for k in runs))
    res["other_processes_cores"] = round(other, 2)
    print_load(other)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
