"""Two processes under torchrun (CPU, gloo) split the training batches, score every eval block
exactly once, and keep the learning-rate schedule of one process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlmkit import EvalConfig, run_eval


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is exercised on Linux")
def test_torchrun_two_cpu_processes(tmp_path, tiny_roberta, sample_path):
    out = tmp_path / "ddp"
    args = ["--model", str(tiny_roberta), "--data", str(sample_path), "--text-field",
            "answers.text", "--limit", "120", "--block-size", "64", "--batch-size", "8",
            "--epochs", "1", "--learning-rate", "1e-3", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", "-m", "mlmkit.cli.main", "train", *args, "--output", str(out)],
        capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("perplexity after") == 1  # printed by rank 0 only

    metrics = json.loads((out / "metrics.json").read_text())
    blocks = metrics["data"]["train_blocks"]
    assert metrics["steps"] == math.ceil(math.ceil(blocks / 8) / 2)  # batches split between two
    # The sharded base evaluation equals a single-process one on the same fixed masks.
    single, _ = run_eval(EvalConfig(model=str(tiny_roberta), data=str(sample_path),
                                    text_field=["answers.text"], limit=120, block_size=64,
                                    quiet=True, device="cpu"))
    assert metrics["base"]["blocks"] == single.blocks
    assert metrics["base"]["tokens"] == single.tokens
    assert metrics["base"]["perplexity"] == pytest.approx(single.perplexity, rel=1e-6)
    # One schedule for all processes: the learning rate reaches zero on the last step, not before.
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_events = [e for e in log if e["event"] == "train"]
    assert train_events[-1]["step"] == metrics["steps"] and train_events[-1]["lr"] == 0.0
    assert all(e["lr"] > 0 for e in train_events[:-1])


def test_overwrite_replaces_the_old_run(tmp_path, tiny_roberta, sample_path, capsys):
    from mlmkit.cli.main import main

    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_roberta), "--data", str(sample_path), "--text-field",
            "answers.text", "--limit", "60", "--block-size", "64", "--max-steps", "2",
            "--log-every", "1", "--output", str(out), "--quiet"]
    assert main(args) == 0
    (out / "stale.txt").write_text("from an older run")
    assert main(args + ["--overwrite"]) == 0
    capsys.readouterr()
    assert not (out / "stale.txt").exists()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "train"]
    assert steps == [1, 2]
    assert Path(out / "model.safetensors").is_file()
