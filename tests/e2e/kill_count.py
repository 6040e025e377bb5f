"""Count kills: SIGKILL a short training run (12 steps, a checkpoint every 2) at seeded random
points, the export window included, resume it once (start it again when it had no checkpoint
yet), and compare it with the uninterrupted run as test_kill.py does (weights to 1e-6, the
training log exactly, the export's manifest, no leftovers). Run by hand (it takes minutes,
too long for the suite):

    PYTHONPATH=src python tests/e2e/kill_count.py [--kills 20] [--seed 25]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from conftest import HIDDEN, VOCAB, read_sample  # noqa: E402
from test_kill import args, assert_same_weights, killer, log_records  # noqa: E402

from mlmkit import TrainConfig, train  # noqa: E402
from mlmkit.io.files import verify_manifest  # noqa: E402
from mlmkit.testing import save_tiny_model  # noqa: E402

SAMPLE = HERE.parent.parent / "assets" / "eli5-sample.jsonl.gz"
# The calls an uninterrupted run makes (killer.py prints them): every draw lands in the run.
POINTS = {"loss": (1, 12), "torch.save": (1, 18), "os.replace": (1, 31), "rmtree": (1, 12),
          "export": (0, 10)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=25)
    ns = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlmkit-kills-"))
    texts = [t for r in read_sample() for t in r["answers"]["text"]]
    model = save_tiny_model(root / "tiny", texts[:500], "roberta", VOCAB, hidden=HIDDEN,
                            layers=2)
    ref = root / "uninterrupted"
    train(TrainConfig(model=str(model), data=str(SAMPLE), text_field=["answers.text"], limit=100,
                      block_size=64, max_steps=12, batch_size=8, eval_batch_size=32,
                      learning_rate=1e-3, log_every=1, eval_every=2, save_every=2,
                      output=str(ref), quiet=True))
    rng, tally, failures, t0 = random.Random(ns.seed), collections.Counter(), [], time.time()
    for trial in range(ns.kills):
        point = rng.choice(sorted(POINTS))
        nth = rng.randint(*POINTS[point])
        out = root / f"run{trial}"
        p = killer(point, nth, [*args(model, SAMPLE, out), "--overwrite"])
        if p.returncode != -signal.SIGKILL:
            failures.append((point, nth, f"not killed: exit {p.returncode}"))
            continue
        tally[point] += 1
        # Killed before its first checkpoint, a run has nothing to resume: it starts again.
        started = any((out / "checkpoints").glob("step_*"))
        p = killer("none", 0, ["train", "--resume", "latest", "--output", str(out)] if started
                   else [*args(model, SAMPLE, out), "--overwrite"])
        problem = compare(ref, out) if p.returncode == 0 else f"resume: exit {p.returncode}"
        if problem:
            failures.append((point, nth, problem))
        print(f"kill {trial + 1}: {point} #{nth}, {'resumed' if started else 'started again'}: "
              f"{problem or 'same as uninterrupted'}", flush=True)
        shutil.rmtree(out)
    print(json.dumps({"kills": sum(tally.values()), "by_point": dict(tally),
                      "resumed_equal": sum(tally.values()) - len(failures),
                      "failures": failures, "seconds": round(time.time() - t0)}))
    shutil.rmtree(root)
    return 1 if failures else 0


def compare(ref: Path, out: Path) -> str:
    """'' when `out` ended as the uninterrupted run `ref`; else what differs."""
    try:
        assert_same_weights(ref, out)
    except AssertionError as e:
        return f"weights differ: {str(e).splitlines()[0]}"
    if log_records(out) != log_records(ref):
        return "training log differs"
    if problems := verify_manifest(out):
        return f"export: {'; '.join(problems)}"
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")
                 or p.name.startswith((".tmp-", ".old-", ".export-tmp"))]
    return f"leftovers: {leftovers}" if leftovers else ""


if __name__ == "__main__":
    sys.exit(main())
