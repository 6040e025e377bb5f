"""Perplexity on fixed masks is reproducible, independent of the batch size, and equals the
final perplexity that training recorded for the same data settings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

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
