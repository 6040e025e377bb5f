"""Vocabulary extension on ELI5 with a real pretrained masked LM: base vocabulary vs extended,
under the same adaptation budget.

1. `mlmkit vocab extend` adds the --add costliest words of the first --records ELI5-Category
   records (answers.text) to bert-tiny-splade; fertility (tokens per word) before and after on
   those records and on held-out ones.
2. Right after extension, fixed-mask perplexity of base and extended on held-out text that has
   none of the new words (same tokens, so the same masked positions): it should not move.
3. `mlmkit train` adapts both, same records, same settings.
4. Word-level pseudo-perplexity, exp(-sum PLL / sum words), of the same held-out sentences
   (records from --held-out-from on, never trained on or used to pick words), with mlmkit's
   Scorer (metric whole-word): base and extended, before and after adaptation; also split into
   sentences with and without a new word.

    python bench/vocab_extend.py                      # ~3-4 min on 2 CPU cores
    python bench/vocab_extend.py --add 1000 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))  # this checkout's mlmkit, installed or not
from _common import (  # noqa: E402
    DEFAULT_DATA,
    SHARED,
    cpu_seconds,
    foreign_load,
    print_header,
    print_load,  # noqa: E402
)

MODEL = SHARED / "models" / "bert-tiny-splade"
FIELDS = ["answers.text"]
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def held_out_sentences(texts: list[str], n: int) -> list[str]:
    """The first `n` sentences of 8 to 40 words of `texts`, one per text at most, so that no
    single long answer dominates."""
    out = []
    for text in texts:
        for s in _SENTENCE.split(text.replace("\n", " ")):
            if 8 <= len(s.split()) <= 40:
                out.append(s.strip())
                break
        if len(out) == n:
            break
    return out


def word_pppl(scorer_path: str, sentences: list[str]) -> dict:
    """exp(-sum PLL / sum words) over `sentences` (whole-word PLL), and the sums."""
    from mlmkit.inference.score import Scorer

    if not sentences:
        return {"word_pppl": None, "pll": 0.0, "words": 0, "tokens": 0}
    records = Scorer(scorer_path, device="cpu")(sentences, metric="whole-word")
    pll = math.fsum(r["pll"] for r in records)
    words = sum(r["words"] for r in records)
    return {"word_pppl": math.exp(-pll / words), "pll": pll, "words": words,
            "tokens": sum(r["tokens"] for r in records)}


def fixed_mask_ppl(model: str, texts: list[str], tmp: Path) -> dict:
    from mlmkit import EvalConfig, run_eval

    corpus = tmp / "plain.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")
    m, _ = run_eval(EvalConfig(model=model, data=str(corpus), all_records=True, quiet=True))
    return {"perplexity": m.perplexity, "loss": m.loss, "tokens": m.tokens}


def adapt(model: str, args: argparse.Namespace, out: Path) -> dict:
    from mlmkit import TrainConfig, train

    r = train(TrainConfig(model=model, data=str(args.data), text_field=FIELDS,
                          limit=args.records, output=str(out), epochs=args.epochs,
                          learning_rate=args.learning_rate, skip_base_eval=True, quiet=True,
                          cache_dir=str(out.parent / "cache")))
    return {"steps": r.steps, "train_seconds": round(r.train_seconds, 1),
            "fixed_mask_ppl_own_tokens": r.final.perplexity if r.final else None}


def ppl_by_size(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Fixed-mask perplexity of the extended model over the base's, right after extension,
    for several numbers of added words, on the same held-out texts (none has a word added
    by the largest extension, so none has a word added by any)."""
    from transformers import AutoTokenizer

    from mlmkit.vocab.audit import corpus_texts
    from mlmkit.vocab.extend import extend_vocab

    info, command = print_header("vocab_extend.py", argv)
    sizes = sorted(int(n) for n in args.ppl_at.split(","))
    texts = corpus_texts(str(args.data), FIELDS)
    held = texts[args.held_out_from:]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exts = {n: (tmp / f"ext{n}", extend_vocab(str(args.model), texts[:args.records], n,
                                                   tmp / f"ext{n}")) for n in sizes}
        largest, r = exts[sizes[-1]]
        tok = AutoTokenizer.from_pretrained(largest)
        ids = {w.id for w in r.added}
        plain = [t for t in held if not ids & set(tok(t, add_special_tokens=False)["input_ids"])]
        base = fixed_mask_ppl(str(args.model), plain, tmp)["perplexity"]
        for n, (ext, _) in exts.items():
            ppl = fixed_mask_ppl(str(ext), plain, tmp)["perplexity"]
            rows.append({"add": n, "perplexity": ppl, "ratio": ppl / base})
            print(f"+{n} words: fixed-mask perplexity {ppl:.2f} against {base:.2f} "
                  f"({ppl / base - 1:+.2%}) on {len(plain):,} held-out texts", flush=True)
    print(json.dumps({"bench": "vocab_extend", "mode": "ppl_at", "machine": info,
                      "command": command, "model": str(args.model), "records": args.records,
                      "held_out_texts": len(plain), "base_perplexity": base, "rows": rows}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--model", type=Path, default=MODEL)
    p.add_argument("--records", type=int, default=1000, help="records to pick words and adapt on")
    p.add_argument("--add", type=int, default=500)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--held-out-from", type=int, default=4000, help="first held-out record")
    p.add_argument("--sentences", type=int, default=400)
    p.add_argument("--ppl-at", default=None, help="only measure the fixed-mask perplexity "
                   "change right after extension, for these numbers of added words (e.g. "
                   "50,100,200,500), on the held-out texts without any of the largest set's "
                   "words")
    args = p.parse_args(argv)
    if args.ppl_at:
        return ppl_by_size(args, argv)

    from transformers import AutoTokenizer

    from mlmkit.vocab.audit import audit_vocab, corpus_texts
    from mlmkit.vocab.extend import extend_vocab

    info, command = print_header("vocab_extend.py", argv)
    cpu_start, wall_start = cpu_seconds(), time.perf_counter()
    texts = corpus_texts(str(args.data), FIELDS)
    held = texts[args.held_out_from:]
    sentences = held_out_sentences(held, args.sentences)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ext = tmp / "extended"
        clock = time.perf_counter()
        r = extend_vocab(str(args.model), texts[:args.records], args.add, ext)
        extend_s = time.perf_counter() - clock
        print(r.summary(), flush=True)
        new_tok = AutoTokenizer.from_pretrained(ext)
        new_ids = {w.id for w in r.added}
        has_new = [bool(new_ids & set(new_tok(t, add_special_tokens=False)["input_ids"]))
                   for t in held]
        plain = [t for t, h in zip(held, has_new) if not h]
        with_new = [bool(new_ids & set(new_tok(s, add_special_tokens=False)["input_ids"]))
                    for s in sentences]
        held_fert = {"base": audit_vocab(str(args.model), held, 0).fertility,
                     "extended": audit_vocab(new_tok, held, 0).fertility}
        ppl = {"base": fixed_mask_ppl(str(args.model), plain, tmp),
               "extended": fixed_mask_ppl(str(ext), plain, tmp)}
        print(f"fixed-mask perplexity on {len(plain):,} held-out texts without new words: "
              f"{ppl['base']['perplexity']:.3f} base, {ppl['extended']['perplexity']:.3f} "
              "extended", flush=True)
        arms = {}
        for name, start in (("base", str(args.model)), ("extended", str(ext))):
            before = word_pppl(start, sentences)
            trained = tmp / f"{name}-adapted"
            run = adapt(start, args, trained)
            after = word_pppl(str(trained), sentences)
            split = {k: word_pppl(str(trained), [s for s, w in zip(sentences, with_new) if w is k])
                     for k in (True, False)}
            arms[name] = {"before_adaptation": before, "after_adaptation": after, "train": run,
                          "after_with_new_words": split[True],
                          "after_without_new_words": split[False]}
            print(f"{name}: word-level PPPL {before['word_pppl']:.2f} before adaptation, "
                  f"{after['word_pppl']:.2f} after ({run['steps']} steps, "
                  f"{run['train_seconds']} s); sentences with a new word "
                  f"{split[True]['word_pppl']}, without {split[False]['word_pppl']}",
                  flush=True)
    other = foreign_load(cpu_start, time.perf_counter() - wall_start)
    print_load(other)
    print(json.dumps({
        "bench": "vocab_extend", "machine": info, "command": command, "model": str(args.model),
        "records": args.records, "added": len(r.added), "extend_seconds": round(extend_s, 2),
        "fertility": {"picked_records": {"base": r.before.fertility,
                                         "extended": r.after.fertility},
                      "held_out_records": held_fert},
        "single_token_share": {"base": r.before.single_token_share,
                               "extended": r.after.single_token_share},
        "changed_texts": r.changed_texts,
        "plain_held_out_texts": len(plain), "fixed_mask_ppl_without_new_words": ppl,
        "fixed_mask_ppl_ratio": ppl["extended"]["perplexity"] / ppl["base"]["perplexity"],
        "sentences": len(sentences), "sentences_with_new_words": sum(with_new),
        "epochs": args.epochs, "learning_rate": args.learning_rate, "arms": arms,
        "first_added": [w.word for w in r.added[:20]],
        "other_processes_cores": round(other, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
