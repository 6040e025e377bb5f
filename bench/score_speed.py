"""PLL scoring speed and memory: mlmkit.Scorer against minicons' MaskedLMScorer, same run.

Sentences: N sentences of ELI5-Category answers (8-40 words, seeded shuffle) from the 1,000
records in assets/. Model: the real pretrained bert-tiny-splade from ../shared (any masked-LM
directory with --model). Speed: sentences/s of each engine at its best setting (mlmkit at
token budgets, minicons at batch sizes), with model loading left out; the PLLs of the two are
compared sentence by sentence. Memory: the peak resident memory of a fresh process while it
scores one sentence of W words (10, 100, 350 by default), beyond its resident memory with the
model loaded and warmed up (Linux /proc/self/clear_refs resets the peak), for each engine;
minicons runs under an address-space cap (--cap-gib) so that it fails instead of swapping the
machine.

minicons 0.3.39 calls `tokenizer.batch_encode_plus`, which transformers 5 removed; the
benchmark gives its tokenizer that method (the tokenizer's own `__call__`, which returns the
same encodings) and nothing else. Install it beside the project without its pins:

    pip install --no-deps -t /tmp/bench-deps minicons==0.3.39
    python bench/score_speed.py --minicons-path /tmp/bench-deps [--n 300] [--metric original]

Without minicons the baseline is `mlmkit.testing.reference_pll` (one masked copy per forward
pass, the naive way).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from _common import SHARED, cpu_seconds, foreign_load, print_header, print_load  # noqa: E402

SAMPLE = HERE.parent / "assets" / "eli5-sample.jsonl.gz"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_MINICONS_NAMES = {"original": "original", "word-l2r": "within_word_l2r"}


def eli5_sentences(n: int, seed: int = 0) -> list[str]:
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        recs = [json.loads(line) for line in fh if line.strip()]
    sents = [s for r in recs for t in r["answers"]["text"] for s in _SENTENCE_END.split(t)
             if 8 <= len(s.split()) <= 40]
    random.Random(seed).shuffle(sents)
    return sents[:n]


def long_sentence(words: int) -> str:
    """One 'sentence' of `words` words: ELI5 text joined until long enough."""
    out: list[str] = []
    for s in eli5_sentences(10_000, seed=1):
        out += s.split()
        if len(out) >= words:
            break
    return " ".join(out[:words])


def minicons_scorer(model: str, minicons_path: str | None):
    if minicons_path:
        sys.path.insert(0, minicons_path)
    from minicons import scorer

    mc = scorer.MaskedLMScorer(model, "cpu")
    if not hasattr(type(mc.tokenizer), "batch_encode_plus"):
        mc.tokenizer.batch_encode_plus = mc.tokenizer.__call__  # removed in transformers 5
    return mc


def minicons_plls(mc, texts: list[str], batch: int, metric: str) -> list[float]:
    out: list[float] = []
    for i in range(0, len(texts), batch):
        out += mc.sequence_score(texts[i:i + batch], reduction=lambda x: x.sum(0).item(),
                                 PLL_metric=_MINICONS_NAMES[metric])
    return out


def timed(fn, *args) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


# Run in a fresh process: peak RSS of scoring one text, beyond the RSS with the model loaded.
_MEMORY_PROBE = r"""
import json, resource, sys
sys.path[:0] = [p for p in sys.argv[5].split(os.pathsep) if p]
engine, model, metric, text = sys.argv[1], sys.argv[2], sys.argv[3], open(sys.argv[4]).read()
cap = float(sys.argv[6])
def status_mib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
def reset_peak():  # Linux: the peak resident size restarts from the current one
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
def rss_mib():
    return status_mib("VmHWM")
if engine == "mlmkit":
    from mlmkit.inference.score import Scorer
    sc = Scorer(model, device="cpu")
    sc("warm up on a short text.", metric=metric)
    run = lambda: sc(text, metric=metric)["pll"]
else:
    from score_speed import minicons_scorer, minicons_plls
    mc = minicons_scorer(model, None)
    minicons_plls(mc, ["warm up on a short text."], 1, metric)
    run = lambda: minicons_plls(mc, [text], 1, metric)[0]
reset_peak()
base = status_mib("VmRSS")
if cap:
    resource.setrlimit(resource.RLIMIT_AS, (int(cap * 2**30),) * 2)
try:
    pll = run()
    print(json.dumps({"ok": True, "pll": pll, "extra_mib": round(rss_mib() - base, 1)}))
except (MemoryError, RuntimeError) as e:
    print(json.dumps({"ok": False, "error": str(e).splitlines()[0][:160],
                      "extra_mib": round(rss_mib() - base, 1)}))
"""


def memory_probe(engine: str, model: str, metric: str, text: str, paths: list[str],
                 cap_gib: float) -> dict:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write(text)
    code = "import os\n" + _MEMORY_PROBE
    try:
        proc = subprocess.run([sys.executable, "-c", code, engine, model, metric, fh.name,
                               os.pathsep.join(paths), str(cap_gib)],
                              capture_output=True, text=True, timeout=1800)
    finally:
        os.unlink(fh.name)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "error": f"exit {proc.returncode}: {tail[:160]}"}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(SHARED / "models" / "bert-tiny-splade"))
    p.add_argument("--n", type=int, default=300, help="sentences for mlmkit")
    p.add_argument("--baseline-n", type=int, default=60, help="sentences for the baseline")
    p.add_argument("--metric", default="original", choices=["original", "word-l2r"])
    p.add_argument("--budgets", default="1024,2048,4096,8192", help="mlmkit token budgets")
    p.add_argument("--batches", default="1,8", help="minicons batch sizes (sentences)")
    p.add_argument("--long-words", default="10,100,350", help="sentence lengths for memory")
    p.add_argument("--cap-gib", type=float, default=8.0, help="address-space cap of the "
                   "minicons memory probe (0: none)")
    p.add_argument("--minicons-path", default=None, help="directory minicons is installed in")
    ns = p.parse_args(argv)
    info, command = print_header("score_speed.py", argv)
    from mlmkit.inference.score import Scorer

    sents = eli5_sentences(ns.n)
    base = sents[:ns.baseline_n]
    start, wall0 = cpu_seconds(), time.perf_counter()
    res: dict = {"benchmark": "score_speed", "machine": info, "command": command,
                 "model": ns.model, "metric": ns.metric, "sentences": len(sents),
                 "baseline_sentences": len(base)}
    best = None
    for budget in [int(b) for b in ns.budgets.split(",")]:
        sc = Scorer(ns.model, device="cpu", max_tokens=budget)
        sc(sents[:10], metric=ns.metric)
        dt, out = timed(sc, sents, ns.metric)
        rate = len(sents) / dt
        res[f"mlmkit_budget_{budget}_sent_per_s"] = round(rate, 2)
        print(f"mlmkit, token budget {budget}: {rate:.1f} sentences/s")
        if best is None or rate > best[0]:
            best = (rate, budget, [r["pll"] for r in out])
    try:
        mc = minicons_scorer(ns.model, ns.minicons_path)
        baseline = "minicons 0.3.39 MaskedLMScorer"
        runs = {f"batch {b}": (lambda b=b: minicons_plls(mc, base, b, ns.metric))
                for b in [int(x) for x in ns.batches.split(",")]}
    except ImportError:
        from mlmkit.modeling.load import load_model, load_tokenizer
        from mlmkit.testing import reference_pll

        model, tok = load_model(ns.model).eval(), load_tokenizer(ns.model)
        baseline = "naive reference (one masked copy per forward pass)"
        runs = {"batch 1": lambda: [sum(reference_pll(model, tok, t, ns.metric)) for t in base]}
    base_best = None
    for name, run in runs.items():
        dt, plls = timed(run)
        rate = len(base) / dt
        print(f"{baseline}, {name}: {rate:.1f} sentences/s")
        res[f"baseline_{name.replace(' ', '_')}_sent_per_s"] = round(rate, 2)
        if base_best is None or rate > base_best[0]:
            base_best = (rate, name, plls)
    diff = max(abs(a - b) for a, b in zip(best[2], base_best[2]))
    res.update(baseline=baseline, mlmkit_best_budget=best[1],
               mlmkit_sent_per_s=round(best[0], 2), baseline_best=base_best[1],
               baseline_sent_per_s=round(base_best[0], 2),
               speedup=round(best[0] / base_best[0], 2), max_abs_pll_diff=diff)
    print(f"speed: mlmkit {best[0]:.1f} vs {base_best[0]:.1f} sentences/s = "
          f"{best[0] / base_best[0]:.1f}x; PLLs differ by at most {diff:.2e} nats")
    paths = [str(HERE), str(HERE.parent / "src")] + ([ns.minicons_path]
                                                     if ns.minicons_path else [])
    engines = ["mlmkit"] + (["minicons"] if baseline.startswith("minicons") else [])
    for words in [int(w) for w in ns.long_words.split(",")]:
        text = long_sentence(words)
        for engine in engines:
            cap = ns.cap_gib if engine == "minicons" else 0.0
            m = memory_probe(engine, ns.model, ns.metric, text, paths, cap)
            res[f"memory_{engine}_{words}_words"] = m
            print(f"memory, {engine}, one sentence of {words} words: "
                  + (f"+{m['extra_mib']:.0f} MiB" if m["ok"] else
                     f"failed under a {cap:g} GiB cap: {m['error']}"))
    other = foreign_load(start, time.perf_counter() - wall0)
    res["other_load_cores"] = round(other, 2)
    print_load(other)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
