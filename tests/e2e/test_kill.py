"""A training run killed with SIGKILL again and again, at seeded random points (mid-step, in
the middle of writing a checkpoint file, before a rename, before an old checkpoint's removal,
in the export), and resumed each time, ends with the uninterrupted run's exact weights and
training log."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlmkit import TrainConfig, train
from mlmkit.io.files import verify_manifest

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


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_roberta, sample_path) -> Path:
    ref = tmp_path_factory.mktemp("kill") / "uninterrupted"
    train(TrainConfig(model=str(tiny_roberta), data=str(sample_path), text_field=["answers.text"],
                      limit=100, block_size=64, max_steps=12, batch_size=8, eval_batch_size=32,
                      learning_rate=1e-3, log_every=1, eval_every=2, save_every=2,
                      output=str(ref), quiet=True))
    return ref


def killer(point: str, nth: int, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(KILLER), point, str(nth), *argv],
                          capture_output=True, text=True, timeout=300)


def assert_same_weights(ref: Path, out: Path) -> None:
    wa, wb = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6, msg=k)


def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_run(uninterrupted, tiny_roberta,
                                                                  sample_path, tmp_path):
    ref = uninterrupted
    out, rng, kills = tmp_path / "killed", random.Random(20261202), []
    for attempt in range(KILLS + 1):  # KILLS runs with a kill drawn, then one without
        point = POINTS[attempt % len(POINTS)] if attempt < KILLS else "none"
        nth = rng.randint(1, MOST[point]) if attempt < KILLS else 0
        started = (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("step_*"))
        p = killer(point, nth, [*args(tiny_roberta, sample_path, out),
                                *(["--resume", "latest"] if started else ["--overwrite"])])
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

    assert_same_weights(ref, out)
    assert log_records(out) == log_records(ref)
    # Nothing half-written is left: no temporary files, only whole checkpoints.
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")
                 or p.name.startswith((".tmp-", ".old-"))]
    assert leftovers == []


# 0: as soon as the final checkpoint is complete (its manifest.json written), before any file
# of the model; 6: in the middle of renaming the exported files into the run directory.
@pytest.mark.parametrize("nth", [0, 6])
def test_sigkill_in_the_export_then_resume_exports_the_uninterrupted_run(
        uninterrupted, tiny_roberta, sample_path, tmp_path, nth):
    out = tmp_path / "killed"
    p = killer("export", nth, args(tiny_roberta, sample_path, out))
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert not verify_manifest(out / "checkpoints" / "step_12")
    assert verify_manifest(out) != []  # the model is not (all) there
    if nth == 0:
        assert not (out / "model.safetensors").exists() and not (out / "tokenizer.json").exists()
    p = killer("none", 0, ["train", "--resume", "latest", "--output", str(out)])
    assert p.returncode == 0, p.stderr[-2000:]
    assert "already trained" not in p.stdout and p.stdout.startswith(f"saved {out} (12 steps")
    said = [line for line in p.stderr.splitlines() if "export is not whole" in line]
    assert len(said) == 1 and "finished at step 12" in said[0], p.stderr[-2000:]
    assert verify_manifest(out) == []
    assert_same_weights(uninterrupted, out)
    assert (out / "tokenizer.json").read_bytes() == (uninterrupted / "tokenizer.json").read_bytes()
    assert log_records(out) == log_records(uninterrupted)
    histories = [[{k: v for k, v in h.items() if k != "train_seconds"}
                  for h in json.loads((d / "metrics.json").read_text())["history"]]
                 for d in (out, uninterrupted)]
    assert histories[0] == histories[1]
