"""CPU inference at the hardware's limit: fill and score in float32, bfloat16 and int8, each
against the matrix-product peak of its number format measured in the same run.

Reports, on the CPU only:
- the peak: the best GFLOP/s (GOP/s for int8) of float32 and bfloat16 `torch.matmul` and of
  int8 `torch._int_mm` on the encoder's own shapes (tokens x 768 x 3072 and back);
- throughput: `mlmkit fill` (FillMask) on N masked ELI5 sentences in each precision, with the
  useful arithmetic it did (the encoder on the unpadded tokens, the head at the masks) as
  GFLOP/s and as a share of that precision's peak; `transformers.pipeline` float32 at its best
  batch size; `mlmkit score` (Scorer, PLL) in each precision;
- latency: one sentence at a time (the server's and the playground's case), p50 and p99;
- mlmkit's OpenVINO runtime (`--runtime openvino`, the extra mlmkit[openvino]) in the same
  three precisions, when `openvino` is installed (--no-openvino skips it), with its load
  (trace + compile) time;
- peers: ONNX Runtime (fp32, and int8 from `onnxruntime.quantization.quantize_dynamic`, the
  runtime optimum's ORTModelForMaskedLM wraps), when `onnxruntime`, `onnx` and `onnxscript`
  are installed (optimum-onnx itself pins transformers < 4.58 and cannot load here);
  faster-clip is not run: its FillMask loads only its own converted bert-base weights;
- agreement with float32 on the real pretrained bert-tiny-splade (--real): top-1 agreement,
  top-5 overlap, largest score difference, and the largest float32 margin between the top two
  candidates among the masks whose top-1 changed (a flip between near-ties or a real change).

The DistilRoBERTa-shaped model has random weights (seed 0; pretrained weights cannot be fetched
offline) and the real DistilRoBERTa tokenizer. Model loading is left out of the timings.

    python bench/cpu_precision.py [--n 1000] [--latency-n 200] [--score-n 200]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))  # this checkout's mlmkit, installed or not
from _common import (  # noqa: E402
    DEFAULT_DATA,
    DEFAULT_MODEL,
    SHARED,
    cpu_seconds,
    foreign_load,
    print_header,
    print_load,
)
from fill_speed import build_sentences, make_model_dir  # noqa: E402

PRECISIONS = ("float32", "bfloat16", "int8")
REAL_MODEL = SHARED / "models" / "bert-tiny-splade"


# ---------------------------------------------------------------------------- the peak

def matmul_peak(seconds: float = 1.0) -> dict[str, dict[str, float]]:
    """Best G(FL)OP/s of one product in each number format over the encoder's shapes, per
    library kernel: torch.matmul (MKL for float32 on a CPU) and oneDNN's prepacked linear
    (what `PackedLinear` and torch.compile's freezing use) for float32 and bfloat16,
    `torch._int_mm` for int8. The peak of a format is its best kernel's."""
    import torch

    shapes = [(704, 768, 3072), (704, 3072, 768), (2048, 768, 3072)]
    out: dict[str, dict[str, float]] = {}
    for fmt in PRECISIONS:
        kernels = {}
        for m, k, n in shapes:
            if fmt == "int8":
                a = torch.randint(-127, 127, (m, k), dtype=torch.int8)
                w = torch.randint(-127, 127, (n, k), dtype=torch.int8)
                fns = {"torch._int_mm": lambda a=a, w=w: torch._int_mm(a, w.t())}
            else:
                dt = getattr(torch, fmt)
                a, w = torch.randn(m, k).to(dt), torch.randn(n, k).to(dt)
                packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
                fns = {"torch.matmul": lambda a=a, w=w: a @ w.T,
                       "oneDNN packed": lambda a=a, p=packed: torch.ops.mkldnn._linear_pointwise(
                           a, p, None, "none", [], "")}
            for name, fn in fns.items():
                for _ in range(3):
                    fn()
                runs, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds / len(shapes) / len(fns):
                    fn()
                    runs += 1
                rate = 2 * m * k * n * runs / (time.perf_counter() - t0) / 1e9
                kernels[name] = max(kernels.get(name, 0.0), rate)
        out[fmt] = kernels
    return out


# ---------------------------------------------------------------------------- arithmetic

def encoder_flops(config, length: int) -> float:
    """Multiply-adds x 2 of the encoder on one unpadded sequence of `length` tokens."""
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = 2 * (4 * h * h + 2 * h * f)
    attention = 2 * 2 * length * length * h
    return layers * (length * per_token + attention)


def head_flops(config, positions: int) -> float:
    h = config.hidden_size
    return positions * 2 * (h * h + h * config.vocab_size)


def fill_flops(config, tokenizer, sentences: list[str]) -> float:
    ids = tokenizer([s.replace("<mask>", tokenizer.mask_token) for s in sentences])["input_ids"]
    return sum(encoder_flops(config, len(x)) + head_flops(config, x.count(tokenizer.mask_token_id))
               for x in ids)


def score_flops(config, tokenizer, sentences: list[str]) -> float:
    """PLL 'original': one masked copy per scored token, the head at its one position."""
    enc = tokenizer(sentences, return_special_tokens_mask=True)
    total = 0.0
    for ids, special in zip(enc["input_ids"], enc["special_tokens_mask"]):
        copies = len(ids) - sum(special)
        total += copies * encoder_flops(config, len(ids)) + head_flops(config, copies)
    return total


# ---------------------------------------------------------------------------- timing

def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def latencies(fn, items: list) -> dict[str, float]:
    fn(items[0])
    fn(items[1])
    times = []
    for x in items:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"p50_ms": 1e3 * statistics.median(times),
            "p99_ms": 1e3 * times[min(len(times) - 1, int(0.99 * len(times)))]}


def agreement(ref: list[list[dict]], got: list[list[dict]]) -> dict:
    """Top-1 agreement, top-k overlap, largest score difference at rank 1, and the largest
    reference margin (top-1 minus top-2 score) among the sentences whose top-1 changed."""
    flips = [r for r, g in zip(ref, got) if r[0]["token"] != g[0]["token"]]
    k = len(ref[0])
    overlap = sum(len({a["token"] for a in r} & {b["token"] for b in g})
                  for r, g in zip(ref, got)) / (k * len(ref))
    return {"sentences": len(ref), "top1_agreement": 1 - len(flips) / len(ref),
            "topk_overlap": overlap, "k": k,
            "max_top1_score_diff": max(abs(r[0]["score"] - g[0]["score"])
                                       for r, g in zip(ref, got)),
            "max_fp32_margin_of_a_flip": max((r[0]["score"] - r[1]["score"] for r in flips),
                                             default=0.0)}


# ---------------------------------------------------------------------------- ONNX Runtime

def openvino_available() -> str:
    """"run", or why mlmkit's OpenVINO arms cannot."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "openvino is not installed: pip install 'mlmkit[openvino]'"
    return "run"


def ort_available() -> str | None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        return f"not installed ({e.name}); pip install onnxruntime onnx onnxscript"
    return None


class OrtFill:
    """The ONNX Runtime peer: the whole model exported (logits at every position, as
    optimum's ORTModelForMaskedLM computes them), the top-k at the masks with numpy; the
    sentences length-sorted into batches as mlmkit does, so the runtimes are compared."""

    def __init__(self, model_dir: str, work: Path, int8: bool, threads: int) -> None:
        import onnxruntime as ort
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        path = work / f"{Path(model_dir).name}.onnx"
        if not path.exists():
            model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
            ids = torch.tensor([[self.tok.cls_token_id, 100, 200, self.tok.sep_token_id]])
            axes = {0: "batch", 1: "length"}
            warnings.filterwarnings("ignore")  # the exporter's notes on transformers' code
            torch.onnx.export(model, (ids, torch.ones_like(ids)), str(path),
                              input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], opset_version=17, dynamo=False,
                              dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                            "logits": axes})
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing"
            q = path.with_suffix(".int8.onnx")
            if not q.exists():
                quantize_dynamic(str(path), str(q), weight_type=QuantType.QInt8,
                                 per_channel=True)
            path = q
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def __call__(self, sentences: list[str], top_k: int = 5, batch_size: int = 32
                 ) -> list[list[dict]]:
        import numpy as np

        texts = [s.replace("<mask>", self.tok.mask_token) for s in sentences]
        ids = self.tok(texts)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list = [None] * len(ids)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(ids[i]) for i in idx)
            x = np.full((len(idx), width), self.tok.pad_token_id, dtype=np.int64)
            att = np.zeros_like(x)
            for r, i in enumerate(idx):
                x[r, :len(ids[i])] = ids[i]
                att[r, :len(ids[i])] = 1
            logits = self.session.run(None, {"input_ids": x, "attention_mask": att})[0]
            rows, cols = np.nonzero(x == self.tok.mask_token_id)
            z = logits[rows, cols].astype(np.float64)
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            top = np.argsort(-p, axis=1)[:, :top_k]
            for r, row_top, row_p in zip(rows, top, p):
                out[idx[r]] = [{"score": float(row_p[t]), "token": int(t)} for t in row_top]
        return out


# ---------------------------------------------------------------------------- the arms

def run_fill_arms(model_dir: str, sentences: list[str], args, peak: dict, flops: float,
                  res: dict) -> None:
    import torch
    from transformers import pipeline

    from mlmkit import FillMask

    lat_items = sentences[:args.latency_n]
    pipe = pipeline("fill-mask", model=model_dir, device=-1, dtype=torch.float32)
    pn = sentences[:args.pipeline_n]
    pflops = res["fill_flops_pipeline_n"]
    best = (0.0, 0)
    for bs in (8, 32):
        pipe(pn[:16], batch_size=bs)
        rate = len(pn) / best_of(lambda bs=bs: pipe(pn, batch_size=bs, top_k=5), 1)
        best = max(best, (rate, bs))
        print(f"fill  pipeline float32 batch_size={bs:<3} {rate:8.1f} sentences/s")
    res["fill"]["pipeline float32"] = {
        "sentences_per_s": best[0], "batch_size": best[1],
        "gflops": pflops * best[0] / len(pn) / 1e9,
        **latencies(lambda t: pipe(t, top_k=5), lat_items)}
    mlmkit_arms("fill", lambda prec, rt: FillMask(model_dir, dtype=prec, runtime=rt),
                lambda fm, texts: fm(texts, top_k=5), sentences, 64, lat_items, peak, flops,
                args, res)


def runtimes(args) -> tuple[str, ...]:
    """mlmkit's runtimes this run measures: torch, and openvino where it is installed."""
    return ("torch",) if args.openvino != "run" else ("torch", "openvino")


def arm_name(prec: str, runtime: str) -> str:
    return f"mlmkit {prec}" if runtime == "torch" else f"mlmkit openvino {prec}"


def mlmkit_arms(task: str, load, call, texts: list[str], warm: int, lat_items: list[str],
                peak: dict, flops: float, args, res: dict) -> None:
    """One arm per runtime and precision: the engine `load(precision, runtime)` run by
    `call(engine, texts)` on all of `texts` (best of `args.repeat`, after a warm-up on the
    first `warm`) and on each of `lat_items` alone."""
    for runtime in runtimes(args):
        for prec in PRECISIONS:
            t0 = time.perf_counter()
            engine = load(prec, runtime)
            load_s = time.perf_counter() - t0
            call(engine, texts[:warm])
            wall = best_of(lambda e=engine: call(e, texts), args.repeat)
            gflops = flops / wall / 1e9
            arm = {"sentences_per_s": len(texts) / wall, "gflops": gflops,
                   "share_of_peak": gflops / peak[prec], "load_s": load_s,
                   **latencies(lambda t, e=engine: call(e, t), lat_items)}
            name = arm_name(prec, runtime)
            res[task][name] = arm
            print(f"{task:<5} {name:<24} {arm['sentences_per_s']:8.1f} sentences/s  "
                  f"{gflops:6.0f} GFLOP/s = {arm['share_of_peak']:5.1%} of the {prec} peak  "
                  f"p50 {arm['p50_ms']:.1f} ms  p99 {arm['p99_ms']:.1f} ms  (load "
                  f"{load_s:.1f} s)")
            del engine


def run_ort_arms(model_dir: str, sentences: list[str], args, flops: float, work: Path,
                 res: dict) -> None:
    import torch

    for int8 in (False, True):
        name = f"onnxruntime {'int8' if int8 else 'float32'}"
        ort = OrtFill(model_dir, work, int8, torch.get_num_threads())
        ort(sentences[:32])
        wall = best_of(lambda o=ort: o(sentences), args.repeat)
        arm = {"sentences_per_s": len(sentences) / wall, "gflops": flops / wall / 1e9,
               **latencies(lambda t, o=ort: o([t], batch_size=1), sentences[:args.latency_n])}
        res["fill"][name] = arm
        print(f"fill  {name:<20} {arm['sentences_per_s']:8.1f} sentences/s  "
              f"p50 {arm['p50_ms']:.1f} ms  p99 {arm['p99_ms']:.1f} ms")


def run_score_arms(model_dir: str, sentences: list[str], args, peak: dict, flops: float,
                   res: dict) -> None:
    from mlmkit import Scorer

    mlmkit_arms("score", lambda prec, rt: Scorer(model_dir, dtype=prec, runtime=rt),
                lambda sc, t: sc(t), sentences, 8, sentences[:args.score_latency_n], peak, flops,
                args, res)


def run_agreement(real: Path, sentences: list[str], work: Path, with_ort: bool, args,
                  res: dict) -> None:
    """Each runtime and precision (and ONNX Runtime int8) against the float32 pipeline on real
    weights; PLL: the largest relative difference from mlmkit's float32 and the share of
    sentence pairs whose order is kept."""
    import torch
    from transformers import pipeline

    from mlmkit import FillMask, Scorer

    texts = [s.replace("<mask>", "[MASK]") for s in sentences]
    pipe = pipeline("fill-mask", model=str(real), device=-1, dtype=torch.float32)
    ref = pipe(texts, batch_size=32, top_k=5)
    out = res["agreement"]
    for runtime in runtimes(args):
        for prec in PRECISIONS:
            engine = FillMask(str(real), dtype=prec, runtime=runtime)
            out[arm_name(prec, runtime)] = agreement(ref, engine(texts, top_k=5))
    if with_ort:
        out["onnxruntime int8"] = agreement(ref, OrtFill(str(real), work, True,
                                                         torch.get_num_threads())(texts))
    plain = [t.replace("[MASK]", w) for t, w in zip(texts, ["it"] * len(texts))][:200]
    pll = {arm_name(p, rt): [r["pll"] for r in Scorer(str(real), dtype=p, runtime=rt)(plain)]
           for rt in runtimes(args) for p in PRECISIONS}
    a = pll["mlmkit float32"]
    for name, b in pll.items():
        if name == "mlmkit float32":
            continue
        pairs = [(i, j) for i in range(0, len(a), 2) for j in (i + 1,) if j < len(a)]
        kept = sum((a[i] < a[j]) == (b[i] < b[j]) for i, j in pairs) / len(pairs)
        out[name]["pll_max_rel_diff"] = max(abs(x - y) / abs(x) for x, y in zip(a, b))
        out[name]["pll_pair_order_kept"] = kept
    for name, a in out.items():
        line = (f"agreement {name:<24} top-1 {a['top1_agreement']:.2%}, top-5 overlap "
                f"{a['topk_overlap']:.2%}, max top-1 score diff {a['max_top1_score_diff']:.4f}, "
                f"largest fp32 margin of a flipped top-1 {a['max_fp32_margin_of_a_flip']:.4f}")
        if "pll_max_rel_diff" in a:
            line += (f"; PLL max rel diff {a['pll_max_rel_diff']:.2%}, pair order kept "
                     f"{a['pll_pair_order_kept']:.1%}")
        print(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ELI5-Category JSON(.gz)")
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL,
                   help="config + tokenizer of the model shape (random weights are used)")
    p.add_argument("--real", type=Path, default=REAL_MODEL,
                   help="a real pretrained masked LM for the agreement check")
    p.add_argument("--n", type=int, default=1000, help="sentences for fill throughput")
    p.add_argument("--pipeline-n", type=int, default=300, help="of them, for the pipeline")
    p.add_argument("--latency-n", type=int, default=200, help="single-sentence fill calls")
    p.add_argument("--score-n", type=int, default=100, help="sentences for score throughput")
    p.add_argument("--score-latency-n", type=int, default=50, help="single-sentence scores")
    p.add_argument("--agreement-n", type=int, default=1000, help="sentences for agreement")
    p.add_argument("--repeat", type=int, default=2, help="runs per throughput arm (best kept)")
    p.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime peer")
    p.add_argument("--no-openvino", action="store_true",
                   help="skip mlmkit's OpenVINO runtime arms")
    args = p.parse_args(argv)
    args.openvino = "--no-openvino" if args.no_openvino else openvino_available()

    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    if torch.cuda.is_available():
        print("note: a GPU is visible; this benchmark measures the CPU only")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    info, command = print_header("cpu_precision.py", argv)
    res: dict = {"benchmark": "cpu_precision", "machine": info, "command": command,
                 "fill": {}, "score": {}, "agreement": {}}
    start, wall0 = cpu_seconds(), time.perf_counter()
    kernels = matmul_peak()
    peak = {fmt: max(k.values()) for fmt, k in kernels.items()}
    res["peak_gflops"], res["peak_by_kernel"] = peak, kernels
    for fmt, k in kernels.items():
        print(f"peak {fmt:<8} {peak[fmt]:6,.0f} G{'OP' if fmt == 'int8' else 'FLOP'}/s ("
              + ", ".join(f"{name} {v:,.0f}" for name, v in k.items())
              + "; best of the encoder's shapes)")
    sentences = build_sentences(args.data, max(args.n, args.agreement_n), 0)
    fill_s = sentences[:args.n]
    with tempfile.TemporaryDirectory(prefix="bench-prec-") as d:
        model_dir = Path(d) / "model"
        make_model_dir(args.model_dir, model_dir)
        config = AutoConfig.from_pretrained(model_dir)
        tok = AutoTokenizer.from_pretrained(model_dir)
        flops = fill_flops(config, tok, fill_s)
        res["fill_flops_pipeline_n"] = fill_flops(config, tok, fill_s[:args.pipeline_n])
        lengths = [len(x) for x in tok(fill_s)["input_ids"]]
        print(f"fill: {len(fill_s):,} masked ELI5 sentences, {statistics.mean(lengths):.1f} "
              f"tokens on average, {flops / len(fill_s) / 1e9:.2f} GFLOP each (encoder on the "
              f"unpadded tokens + head at the mask); top_k 5")
        run_fill_arms(str(model_dir), fill_s, args, peak, flops, res)
        why_not = "--no-ort" if args.no_ort else ort_available()
        if why_not is None:
            run_ort_arms(str(model_dir), fill_s, args, flops, Path(d), res)
        else:
            print(f"fill  onnxruntime: skipped ({why_not})")
        res["ort"] = why_not or "run"
        res["openvino"] = args.openvino
        if args.openvino != "run":
            print(f"mlmkit openvino: skipped ({args.openvino})")
        plain = [s.replace("<mask>", "it") for s in sentences[:args.score_n]]
        sflops = score_flops(config, tok, plain)
        print(f"score: {len(plain)} sentences (the masks filled with 'it'), PLL original, "
              f"{sflops / len(plain) / 1e9:.1f} GFLOP each")
        run_score_arms(str(model_dir), plain, args, peak, sflops, res)
        if args.real and (args.real / "config.json").is_file():
            run_agreement(args.real, sentences[:args.agreement_n], Path(d), why_not is None,
                          args, res)
        else:
            print(f"agreement: skipped ({args.real}: no model)")
    other = foreign_load(start, time.perf_counter() - wall0)
    fill = res["fill"]
    fastest = min((k for k in fill if k.startswith("mlmkit")), key=lambda k: fill[k]["p50_ms"])
    ratio = fill["mlmkit int8"]["sentences_per_s"] / fill["pipeline float32"]["sentences_per_s"]
    print(f"ratio mlmkit int8 / pipeline float32, sentences/s: {ratio:.2f}x"
          f"; p50 one sentence: pipeline {fill['pipeline float32']['p50_ms']:.1f} ms, mlmkit "
          f"float32 {fill['mlmkit float32']['p50_ms']:.1f} ms, fastest ({fastest}) "
          f"{fill[fastest]['p50_ms']:.1f} ms")
    res["other_processes_cores"] = round(other, 2)
    print_load(other)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
