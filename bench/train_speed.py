"""Training speed and quality, side by side: the HF guide's recipe (Trainer) vs mlmkit.

Both arms start from the same weights, train on the same blocks (mlmkit's held-out split of the
first N ELI5-Category records) and are scored after every epoch on the same fixed eval masks, so
their perplexities are comparable. Prints tokens/s, wall time, peak memory, MFU and per-epoch
perplexity for each arm, the ratio mlmkit/guide, and one JSON line.

    python bench/train_speed.py                       # CPU: small shape, 300 records, 1 epoch
    python bench/train_speed.py --records 5000 --epochs 3 --shape full   # the GPU run
    python bench/train_speed.py --weights PATH        # start from real pretrained weights
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA as DATA  # noqa: E402
from _common import DEFAULT_MODEL as SHAPE  # noqa: E402
from _common import print_header  # noqa: E402

SMALL = "hidden_size=128,num_hidden_layers=2,num_attention_heads=2,intermediate_size=512"


def build_start_model(args: argparse.Namespace, out: Path) -> tuple[Path, str]:
    """The model directory both arms load: pretrained weights, or a seeded random init."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    from mlmkit.config import parse_overrides

    if args.weights:
        # Saved once, head included: a checkpoint without an MLM head gets a fresh head, and
        # both arms must start from the same one.
        torch.manual_seed(0)
        AutoModelForMaskedLM.from_pretrained(args.weights).save_pretrained(out)
        AutoTokenizer.from_pretrained(args.weights).save_pretrained(out)
        return out, f"pretrained weights from {args.weights}"
    cfg = AutoConfig.from_pretrained(args.model_dir)
    overrides = parse_overrides(SMALL if args.shape == "small" else "")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(args.model_dir).save_pretrained(out)
    what = "random init of " + args.model_dir.name + (f" with {SMALL}" if overrides else "")
    return out, what


def peak_memory_mb() -> float | None:
    """Peak GPU memory of the arm; None on CPU, where only the process-wide RSS peak exists."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def run_guide(model_dir: Path, corpus, eval_loader, args, bf16: bool) -> dict:
    """The guide's recipe: Trainer + DataCollatorForLanguageModeling, its hyperparameters."""
    from datasets import Dataset
    from transformers import (
        AutoModelForMaskedLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from mlmkit.evaluate import evaluate

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir)
    ds = Dataset.from_dict({"input_ids": corpus.train.astype("int64").tolist()})
    ds = ds.map(lambda b: {"labels": b["input_ids"]}, batched=True)
    history, eval_seconds = [], [0.0]

    class FixedMaskEval(TrainerCallback):
        def on_epoch_end(self, targs, state, control, model=None, **kw):
            t = time.perf_counter()
            m = evaluate(model, eval_loader, sparse=False)
            history.append({"epoch": round(state.epoch, 3), "perplexity": m.perplexity})
            eval_seconds[0] += time.perf_counter() - t

    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(), eval_strategy="no", learning_rate=2e-5,
        num_train_epochs=args.epochs, weight_decay=0.01, per_device_train_batch_size=16,
        save_strategy="no", report_to=[], bf16=bf16, use_cpu=not torch.cuda.is_available(),
        seed=42, disable_tqdm=True, logging_strategy="no", dataloader_num_workers=0)
    trainer = Trainer(model=model, args=targs, train_dataset=ds,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm_probability=0.15),
                      callbacks=[FixedMaskEval()])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t - eval_seconds[0]
    n_params = sum(p.numel() for p in model.parameters())
    return {"wall_s": wall, "history": history, "params": n_params,
            "peak_mem_mb": peak_memory_mb()}


def run_mlmkit(model_dir: Path, args, extra: dict) -> dict:
    from mlmkit import TrainConfig, train

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(model=str(model_dir), data=str(args.data), text_field=["answers.text"],
                          limit=args.records, output=out, epochs=args.epochs, quiet=True,
                          skip_base_eval=True, overwrite=True, cache_dir=args.cache_dir, **extra)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        r = train(cfg)
    return {"wall_s": r.train_seconds,
            "history": [{"epoch": h["epoch"], "perplexity": h["perplexity"]} for h in r.history],
            "peak_mem_mb": peak_memory_mb()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--model-dir", type=Path, default=SHAPE, help="shape (config + tokenizer)")
    p.add_argument("--weights", help="a model directory with real weights (overrides the shape)")
    p.add_argument("--shape", choices=["small", "full"],
                   default="full" if torch.cuda.is_available() else "small")
    p.add_argument("--records", type=int, default=5000 if torch.cuda.is_available() else 300)
    p.add_argument("--epochs", type=float, default=3 if torch.cuda.is_available() else 1)
    p.add_argument("--peak-tflops", type=float, default=790.0 if torch.cuda.is_available()
                   else None, help="dense bf16 peak of the device, for MFU (H100: 790)")
    p.add_argument("--cache-dir", default=tempfile.mkdtemp())
    args = p.parse_args()

    from transformers import AutoTokenizer

    from mlmkit.config import TrainConfig
    from mlmkit.data import load_blocks
    from mlmkit.evaluate import fixed_eval_dataset

    info, _ = print_header("train_speed.py")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, what = build_start_model(args, Path(tmp) / "start")
        print(f"model: {what}")
        tok = AutoTokenizer.from_pretrained(model_dir)
        dcfg = TrainConfig(data=str(args.data), text_field=["answers.text"], limit=args.records,
                           cache_dir=args.cache_dir)
        corpus = load_blocks(dcfg, tok, progress=False)
        eval_loader = torch.utils.data.DataLoader(fixed_eval_dataset(corpus.eval, tok, dcfg),
                                                  batch_size=64)
        train_tokens = corpus.train.size * args.epochs
        print(f"data: {corpus.describe()}")
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        arms = {"guide (Trainer, fp32, batch 16)": run_guide(model_dir, corpus, eval_loader,
                                                               args, bf16=False)}
        arms["mlmkit (defaults)"] = run_mlmkit(model_dir, args, {})
        if bf16:
            arms["mlmkit (bf16)"] = run_mlmkit(model_dir, args, {"mixed_precision": "bf16"})
    n_params = arms["guide (Trainer, fp32, batch 16)"]["params"]
    base = None
    rows = []
    for name, r in arms.items():
        tps = train_tokens / r["wall_s"]
        base = base or tps
        mfu = (6 * n_params * tps / (args.peak_tflops * 1e12)) if args.peak_tflops else None
        final = r["history"][-1]["perplexity"] if r["history"] else float("nan")
        rows.append({"arm": name, "tokens_per_s": round(tps), "wall_s": round(r["wall_s"], 2),
                     "peak_mem_mb": r["peak_mem_mb"] and round(r["peak_mem_mb"]),
                     "mfu": mfu and round(mfu, 4),
                     "final_ppl": round(final, 3), "speedup": round(tps / base, 2),
                     "per_epoch_ppl": [round(h["perplexity"], 3) for h in r["history"]]})
    print(f"\n{'arm':34} {'tok/s':>9} {'wall s':>8} {'peak MB':>8} {'MFU':>7} {'ppl':>9} "
          f"{'x guide':>7}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_mem_mb']:,}" if r["peak_mem_mb"] is not None else "n/a"
        print(f"{r['arm']:34} {r['tokens_per_s']:>9,} {r['wall_s']:>8.1f} {mem:>8} "
              f"{mfu:>7} {r['final_ppl']:>9.3f} {r['speedup']:>7.2f}")
    print(json.dumps({"bench": "train_speed", "machine": info, "model": what,
                      "records": args.records, "epochs": args.epochs, "params": n_params,
                      "train_tokens": train_tokens, "arms": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
