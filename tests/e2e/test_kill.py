"""A training run killed with SIGKILL again and again, at seeded random points (mid-step, in
the middle of writing a checkpoint file, before a rename, before an old checkpoint's removal),
and resumed each time, ends with the uninterrupted run's exact weights and training log."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from mlmkit import TrainConfig, train

KILLER = Path(__file__).with_name("killer.py")
POINTS = ["loss", "torch.save", "os.replace", "rmtree"]
# Each kill is drawn as the n-th call, n in 1..MOST: small enough to fall inside the run.
MOST = {"loss": 5, "torch.save": 6, "os.replace": 20, "rmtree": 4}
KILLS = 6


def args(model, data, out) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--text-field", "answers.text",
            "--limit", "100", "--block-size", "64", "--max-steps", "12", "--batch-size", "8",
            "--eval-batch-size", "32", "--learning-rate", "1e-3", "--log-every", "1",
            "--eval-every", "2", "--save-every", "2", "--output", str(out), "--quiet"]


def log_records(out: Path) -> list[dict]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "train_seconds")}
            for r in recs]


def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_run(tiny_roberta, sample_path,
                                                                  tmp_path):
    ref = tmp_path / "uninterrupted"
    train(TrainConfig(model=str(tiny_roberta), data=str(sample_path), text_field=["answers.text"],
                      limit=100, block_size=64, max_steps=12, batch_size=8, eval_batch_size=32,
                      learning_rate=1e-3, log_every=1, eval_every=2, save_every=2,
                      output=str(ref), quiet=True))

    out, rng, kills = tmp_path / "killed", random.Random(20261202), []
    for attempt in range(KILLS + 1):  # KILLS runs with a kill drawn, then one without
        point = POINTS[attempt % len(POINTS)] if attempt < KILLS else "none"
        nth = rng.randint(1, MOST[point]) if attempt < KILLS else 0
        started = (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("step_*"))
        cmd = [sys.executable, str(KILLER), point, str(nth),
               *args(tiny_roberta, sample_path, out),
               *(["--resume", "latest"] if started else ["--overwrite"])]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if p.returncode == -signal.SIGKILL:
            kills.append((point, nth))
            continue
        assert p.returncode == 0, p.stderr[-2000:]
        if attempt < KILLS:  # drawn past the run's end: it finished; start it again
            kills.append((point, "finished"))
            continue
    # Every kind of point was hit, several times over.
    print("kills:", kills)
    assert {k for k, n in kills if n != "finished"} == set(POINTS), kills

    wa, wb = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6, msg=k)
    assert log_records(out) == log_records(ref)
    # Nothing half-written is left: no temporary files, only whole checkpoints.
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")
                 or p.name.startswith((".tmp-", ".old-"))]
    assert leftovers == []
