"""The sweep that chose `mlmkit demo`'s settings: bert-tiny-splade (real pretrained weights and
head) adapted to the 1,000 ELI5 records of assets/, one line per setting with the fixed-mask
perplexity after each epoch, the training time and the fill-mask top-3 after.

    .venv/bin/python bench/demo_sweep.py --try epochs=6,learning_rate=1e-3,batch_size=32 ...
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import cpu_seconds, foreign_load, print_header, print_load  # noqa: E402

from mlmkit import FillMask, TrainConfig, train  # noqa: E402
from mlmkit.demo import SENTENCES, fetch_pinned_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def parse_try(text: str) -> dict:
    out = {}
    for kv in text.split(","):
        k, v = kv.split("=")
        out[k] = float(v) if any(c in v for c in ".e") else int(v)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--try", dest="tries", action="append", required=True, type=parse_try,
                   help="k=v,... settings of one arm (TrainConfig fields)")
    p.add_argument("--data", default=str(REPO / "assets" / "eli5-sample.jsonl.gz"))
    a = p.parse_args()
    info, command = print_header("demo_sweep.py")
    model = str(fetch_pinned_model())
    start, t_start = cpu_seconds(), time.perf_counter()
    for settings in a.tries:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            r = train(TrainConfig(model=model, data=a.data, text_field=["answers.text"],
                                  output=out, quiet=True, **settings))
            fm = FillMask(out, device="cpu")
            fills = {t: [x["token_str"].strip() for x in fm(t, top_k=3)] for t in SENTENCES}
            print(json.dumps({
                "settings": settings, "base_perplexity": round(r.base.perplexity, 1),
                "epoch_perplexity": [round(h["perplexity"], 1) for h in r.history],
                "final_over_base": round(r.final.perplexity / r.base.perplexity, 4),
                "train_seconds": round(r.train_seconds, 1),
                "wall_seconds": round(time.perf_counter() - t0, 1), "fills": fills,
                "machine": info, "command": command}),
                flush=True)
    print_load(foreign_load(start, time.perf_counter() - t_start))


if __name__ == "__main__":
    main()
