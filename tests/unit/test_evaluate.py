"""Perplexity on fixed masks is reproducible, independent of the batch size, and equals the
final perplexity that training recorded for the same data settings."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mlmkit import EvalConfig, MlmkitError, run_eval


def eval_cfg(model, data, **kw) -> EvalConfig:
    base = dict(model=str(model), data=str(data), text_field=["answers.text"], limit=150,
                block_size=64, eval_batch_size=16, quiet=True, device="cpu")
    return EvalConfig(**{**base, **kw})


def test_same_perplexity_on_every_run_and_batch_size(tiny_roberta, sample_path):
    m1, stats = run_eval(eval_cfg(tiny_roberta, sample_path))
    m2, _ = run_eval(eval_cfg(tiny_roberta, sample_path))
    m3, _ = run_eval(eval_cfg(tiny_roberta, sample_path, eval_batch_size=5))
    assert m1 == m2
    assert m3.tokens == m1.tokens and m3.blocks == m1.blocks == stats["eval_blocks"]
    assert m3.perplexity == pytest.approx(m1.perplexity, rel=1e-6)
    assert m1.perplexity == pytest.approx(math.exp(m1.loss), rel=1e-12)
    # A random model of vocabulary V scores near V; a broken loss would not.
    assert 200 < m1.perplexity < 3000
    m4, _ = run_eval(eval_cfg(tiny_roberta, sample_path, eval_seed=7))
    assert m4.tokens != m1.tokens or m4.loss != m1.loss  # other masks, other numbers


def test_sparse_and_dense_heads_agree(tiny_bert, sample_path):
    sparse, _ = run_eval(eval_cfg(tiny_bert, sample_path))
    dense, _ = run_eval(eval_cfg(tiny_bert, sample_path, sparse_head=False))
    assert dense.tokens == sparse.tokens
    assert dense.loss == pytest.approx(sparse.loss, abs=1e-5)


def test_matches_the_final_metrics_of_training(trained_roberta):
    cfg, r = trained_roberta
    out = Path(cfg.output)
    saved = json.loads((out / "metrics.json").read_text())["final"]
    m, stats = run_eval(EvalConfig(model=str(out), data=cfg.data, text_field=cfg.text_field,
                                   limit=cfg.limit, block_size=cfg.block_size, quiet=True,
                                   device="cpu", cache_dir=cfg.cache_dir))
    assert (m.tokens, m.blocks) == (saved["tokens"], saved["blocks"])
    assert m.perplexity == pytest.approx(saved["perplexity"], rel=1e-5)
    assert m.perplexity < r.base.perplexity


def test_all_records_scores_the_whole_corpus(tiny_roberta, sample_path):
    held, stats = run_eval(eval_cfg(tiny_roberta, sample_path))
    everything, all_stats = run_eval(eval_cfg(tiny_roberta, sample_path, all_records=True))
    total = stats["train_tokens"] + stats["eval_tokens"]
    assert all_stats["eval_blocks"] == 0 and everything.blocks == total // 64
    assert everything.blocks > held.blocks * 4


def test_bad_inputs(tiny_roberta, sample_path):
    with pytest.raises(MlmkitError, match="above the 512 positions"):
        run_eval(eval_cfg(tiny_roberta, sample_path, block_size=600))
    with pytest.raises(MlmkitError, match="no held-out block"):
        run_eval(eval_cfg(tiny_roberta, sample_path, eval_fraction=0.0))


def fixed_held_out(model_dir, sample_path):
    """The held-out blocks of `eval_cfg` with their fixed masks, as run_eval makes them."""
    from mlmkit.corpus.blocks import load_blocks
    from mlmkit.modeling.load import load_tokenizer
    from mlmkit.training.perplexity import fixed_eval_dataset

    cfg = eval_cfg(model_dir, sample_path)
    tok = load_tokenizer(cfg.model)
    return fixed_eval_dataset(load_blocks(cfg, tok, progress=False).eval, tok, cfg), tok


def loop_accuracy(logits, inputs, labels) -> tuple[float, float, int]:
    """Top-1 and top-5 accuracy by a plain loop over every masked position's logits."""
    top1 = top5 = n = 0
    for b in range(len(labels)):
        for i, label in enumerate(labels[b].tolist()):
            if label == -100:
                continue
            ranked = sorted(range(logits.shape[-1]), key=lambda t: -float(logits[b, i, t]))
            n += 1
            top1 += ranked[0] == label
            top5 += label in ranked[:5]
    return top1 / n, top5 / n, n


def test_accuracy_equals_a_plain_loop_over_the_logits(trained_roberta, sample_path):
    from transformers import AutoModelForMaskedLM

    out = trained_roberta[0].output
    m, _ = run_eval(eval_cfg(out, sample_path))
    fixed, _ = fixed_held_out(out, sample_path)
    model = AutoModelForMaskedLM.from_pretrained(out).eval()
    inputs, labels = torch.from_numpy(fixed.inputs).long(), torch.from_numpy(fixed.labels).long()
    with torch.no_grad():  # one block at a time, the dense head: no code shared with evaluate
        logits = torch.cat([model(input_ids=inputs[i:i + 1],
                                  attention_mask=fixed[i]["attention_mask"][None]).logits
                            for i in range(len(fixed))])
    top1, top5, n = loop_accuracy(logits, inputs, labels)
    assert n == m.tokens
    assert m.accuracy == pytest.approx(top1, abs=1e-12)
    assert m.top5_accuracy == pytest.approx(top5, abs=1e-12)
    # A trained model guesses some masked words, and top-5 contains top-1.
    assert 0 < m.accuracy < m.top5_accuracy < 1


class CopyModel:
    """A stand-in masked LM whose first guess is always the token it is given: right exactly
    where the input still holds the original token (unmasked, or kept by the 80/10/10 rule)."""

    training = False

    def __init__(self, vocab: int) -> None:
        self.vocab, self.weight = vocab, torch.nn.Parameter(torch.zeros(1))

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def parameters(self):
        return iter([self.weight])

    def __call__(self, input_ids, attention_mask=None):
        logits = torch.nn.functional.one_hot(input_ids, self.vocab).float() * 10
        return SimpleNamespace(logits=logits + torch.arange(self.vocab) * 1e-3)


def test_accuracy_scores_the_original_token_at_masked_positions_only(tiny_roberta,
                                                                     sample_path):
    from mlmkit.training.perplexity import evaluate

    fixed, tok = fixed_held_out(tiny_roberta, sample_path)
    m = evaluate(CopyModel(len(tok)), torch.utils.data.DataLoader(fixed, batch_size=16),
                 sparse=False, device="cpu")
    inputs, labels = fixed.inputs.astype(np.int64), fixed.labels.astype(np.int64)
    masked = labels != -100
    original = np.where(masked, labels, inputs)
    guess = inputs  # the stand-in's first guess
    right = (guess[masked] == labels[masked]).mean()  # ~10%: the tokens the 80/10/10 rule kept
    assert m.accuracy == pytest.approx(right) and 0.05 < right < 0.2
    # What wrong implementations would report for the same model: the target taken from the
    # input after the replacement (100%), or the unmasked positions counted too (~87%).
    from_input = (guess[masked] == inputs[masked]).mean()
    attended = (inputs != tok.pad_token_id) | masked
    all_positions = (guess[attended] == original[attended]).mean()
    assert from_input == 1.0 and all_positions > 0.8
    # Top-5 by a plain loop: the input token, then the highest ids (the tie-breaking ramp).
    hits = 0
    for given, label in zip(inputs[masked].tolist(), labels[masked].tolist()):
        ranked = [given] + [t for t in range(len(tok) - 1, -1, -1) if t != given]
        hits += label in ranked[:5]
    assert m.top5_accuracy == pytest.approx(hits / masked.sum())
    assert m.top5_accuracy > m.accuracy


def test_accuracy_is_in_metrics_json_before_and_after(trained_roberta):
    cfg, r = trained_roberta
    saved = json.loads((Path(cfg.output) / "metrics.json").read_text())
    m, _ = run_eval(EvalConfig(model=cfg.output, data=cfg.data, text_field=cfg.text_field,
                               limit=cfg.limit, block_size=cfg.block_size, quiet=True,
                               device="cpu", cache_dir=cfg.cache_dir))
    assert saved["final"]["accuracy"] == pytest.approx(m.accuracy, abs=1e-9)
    assert saved["final"]["top5_accuracy"] == pytest.approx(m.top5_accuracy, abs=1e-9)
    assert saved["base"]["accuracy"] == r.base.accuracy < r.final.accuracy
    assert all("accuracy" in h for h in saved["history"])


def test_eval_prints_the_accuracy(trained_roberta, capsys):
    from mlmkit.cli.main import main

    cfg, _ = trained_roberta
    args = ["eval", "--model", cfg.output, "--data", cfg.data, "--text-field", "answers.text",
            "--limit", str(cfg.limit), "--block-size", str(cfg.block_size), "--quiet",
            "--device", "cpu", "--cache-dir", cfg.cache_dir]
    final = json.loads((Path(cfg.output) / "metrics.json").read_text())["final"]
    assert main(args) == 0
    assert (f"top-1 accuracy {final['accuracy']:.1%}, top-5 {final['top5_accuracy']:.1%} on "
            f"{final['tokens']:,} masked tokens") in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["accuracy"] == pytest.approx(final["accuracy"], abs=1e-9)
    assert got["top5_accuracy"] == pytest.approx(final["top5_accuracy"], abs=1e-9)
