"""HTTP fill-mask throughput of `mlmkit serve`: dynamic batching on against off, same engine.

The server runs in this process (uvicorn in a thread, on a free 127.0.0.1 port, nothing else is
contacted) on a DistilRoBERTa-shaped masked LM with random weights (torch.manual_seed(0)) and the
real DistilRoBERTa tokenizer, or a smaller shape with --small. An asyncio httpx client fires N
POST / requests, one ELI5-Category sentence with one <mask> each, at most C in flight, once with
batching on and once with it off (every request its own engine call); both answers are checked
to be the same records. Model loading and a warm-up are excluded from the timings.

    .venv/bin/python bench/serve_load.py [--n 300] [--concurrency 48] [--small]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_DATA, DEFAULT_MODEL, foreign_load, print_header, print_load  # noqa: E402
from _common import cpu_seconds as _cpu_seconds  # noqa: E402
from fill_speed import build_sentences  # noqa: E402  (shared helper of the benchmarks)


def make_model_dir(model_dir: Path, out: Path, small: bool) -> str:
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(model_dir)
    if small:  # same tokenizer and vocabulary, a quarter of the width and a third of the depth
        cfg.update({"hidden_size": 192, "num_attention_heads": 3, "intermediate_size": 768,
                    "num_hidden_layers": 2})
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return (f"hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, vocabulary "
            f"{cfg.vocab_size:,}")


async def fire(url: str, sentences: list[str], concurrency: int, top_k: int) -> dict:
    """`concurrency` clients, each with its own keep-alive connection, sending one request
    after another until all are sent. (One shared httpx pool was tried first: it held some
    requests back for over a second before sending them, an artifact of the client's pool
    that showed up as the server's p99.)"""
    import httpx

    latencies: list[float] = [0.0] * len(sentences)
    answers: list = [None] * len(sentences)
    statuses: dict[int, int] = {}
    todo = iter(range(len(sentences)))
    ready, go = [0], asyncio.Event()

    async def client_loop() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            # Connect first, so that the timings are of requests, not of 48 TCP handshakes.
            (await client.get("/health")).raise_for_status()
            ready[0] += 1
            if ready[0] == concurrency:
                go.set()
            await go.wait()
            for i in todo:  # a shared iterator: each request is taken by one client only
                t0 = time.perf_counter()
                r = await client.post("/", json={"inputs": sentences[i],
                                                 "parameters": {"top_k": top_k}})
                latencies[i] = time.perf_counter() - t0
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                answers[i] = r.json()

    async with httpx.AsyncClient(base_url=url) as client:
        before = (await client.get("/metrics")).text

    async def clock() -> float:
        await go.wait()
        return time.perf_counter()

    *_, t0 = await asyncio.gather(*(client_loop() for _ in range(concurrency)), clock())
    wall = time.perf_counter() - t0
    async with httpx.AsyncClient(base_url=url) as client:
        prom = (await client.get("/metrics")).text
    # Engine calls of this run only (the counters also hold the warm-up's).
    calls = _metric(prom, "mlmkit_batch_size_count") - _metric(before, "mlmkit_batch_size_count")
    texts = _metric(prom, "mlmkit_batch_size_sum") - _metric(before, "mlmkit_batch_size_sum")
    busy = (_metric(prom, "mlmkit_engine_seconds_total")
            - _metric(before, "mlmkit_engine_seconds_total"))
    qs = statistics.quantiles(latencies, n=100)
    return {"requests_per_s": len(sentences) / wall, "seconds": wall,
            "p50_ms": statistics.median(latencies) * 1e3, "p99_ms": qs[98] * 1e3,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "engine_calls": int(calls),
            "mean_batch": texts / max(calls, 1), "engine_busy": busy / wall,
            "answers": answers}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ELI5-Category JSON(.gz)")
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL,
                   help="config + tokenizer of the model shape (random weights are used)")
    p.add_argument("--small", action="store_true",
                   help="a smaller model of the same vocabulary (hidden 192, 2 layers)")
    p.add_argument("--n", type=int, default=300, help="requests per mode")
    p.add_argument("--concurrency", type=int, default=48, help="requests in flight at most")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0, help="seed of the masked-word choice")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's, one per core)")
    args = p.parse_args(argv)

    import torch
    import transformers

    from mlmkit import FillMask
    from mlmkit.serving.app import create_app
    from mlmkit.testing import LiveServer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    info, command = print_header("serve_load.py", argv)
    sentences = build_sentences(args.data, args.n, args.seed)
    res: dict = {"benchmark": "serve_load", "machine": info, "command": command, "n": args.n,
                 "concurrency": args.concurrency, "top_k": args.top_k,
                 "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms}
    cpu_start, wall_start = _cpu_seconds(), time.perf_counter()
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as d:
        shape = make_model_dir(args.model_dir, Path(d), args.small)
        print(f"model: {'small' if args.small else 'DistilRoBERTa'} shape ({shape}), random "
              f"weights (seed 0), float32; {args.n} requests of one sentence, concurrency "
              f"{args.concurrency}, top_k {args.top_k}")
        engine = FillMask(d, device="cpu", batch_size=args.max_batch_size)
        reference = engine(sentences[:50], top_k=args.top_k)  # also the warm-up
        # The ceiling: the same sentences through FillMask directly, no HTTP (it sorts all of
        # them by length, so its batches pad less than a server's batches of arrivals can).
        t0 = time.perf_counter()
        engine(sentences, top_k=args.top_k)
        direct = args.n / (time.perf_counter() - t0)
        print(f"FillMask directly, no HTTP: {direct:7.1f} sentences/s (batch size "
              f"{args.max_batch_size})")
        for mode in ("on", "off"):
            app = create_app(engine, max_batch_size=args.max_batch_size,
                             max_wait_ms=args.max_wait_ms, max_queue=max(256, args.n),
                             batching=mode == "on")
            with LiveServer(app, backlog=1024) as server:
                asyncio.run(fire(server.url, sentences[:16], 8, args.top_k))  # warm-up
                runs[mode] = asyncio.run(fire(server.url, sentences, args.concurrency,
                                              args.top_k))
            r = runs[mode]
            print(f"batching {mode:<3}: {r['requests_per_s']:7.1f} requests/s  p50 "
                  f"{r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  ({r['seconds']:.2f} s; "
                  f"{r['engine_calls']} engine calls, {r['mean_batch']:.1f} texts each, engine "
                  f"busy {r['engine_busy']:.0%} of the time; "
                  f"statuses {r['statuses']})")
    other = foreign_load(cpu_start, time.perf_counter() - wall_start)
    ratio = runs["on"]["requests_per_s"] / runs["off"]["requests_per_s"]
    same = sum(_same(a, b) for a, b in zip(runs["on"]["answers"], runs["off"]["answers"]))
    same_ref = sum(_same(a, b) for a, b in zip(runs["on"]["answers"], reference))
    for r in runs.values():
        del r["answers"]
        for k in ("requests_per_s", "seconds", "p50_ms", "p99_ms", "mean_batch", "engine_busy"):
            r[k] = round(r[k], 2)
    res.update({"batching_on": runs["on"], "batching_off": runs["off"], "ratio": round(ratio, 2),
                "fillmask_direct_per_s": round(direct, 2),
                "same_answers_on_vs_off": same, "same_answers_vs_fillmask_first_50": same_ref,
                "other_processes_cores": round(other, 2)})
    print(f"\nthroughput ratio batching on/off: {ratio:.2f}x; answers equal on vs off for "
          f"{same}/{args.n} requests, vs FillMask directly for {same_ref}/50")
    print_load(other)
    print(json.dumps(res))
    return 0


def _same(a: list, b: list, tol: float = 1e-4) -> bool:
    """Same tokens and texts; scores within `tol` (batches pad to other widths)."""
    return (isinstance(a, list) and len(a) == len(b)
            and all(x["token"] == y["token"] and x["sequence"] == y["sequence"]
                    and abs(x["score"] - y["score"]) <= tol for x, y in zip(a, b)))


if __name__ == "__main__":
    sys.exit(main())
