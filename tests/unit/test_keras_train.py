"""`train(backend="keras")` sees the PyTorch path's data batch for batch, measures the same
fixed-mask perplexity, lowers it with model.fit, and exports the same kind of directory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mlmkit.config import TrainConfig
from mlmkit.errors import MlmkitError

try:
    from mlmkit.training import keras_recipe as kt
except MlmkitError as e:
    pytest.skip(f"keras / keras-hub not installed: {e}", allow_module_level=True)


def settings(model, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model), data=str(data), text_field=["answers.text"], limit=300,
                block_size=64, output=str(out), batch_size=8, eval_batch_size=16,
                learning_rate=1e-3, log_every=5, quiet=True)
    return TrainConfig(**{**base, **kw})


def test_batches_are_the_pytorch_loaders_masks(tiny_roberta, sample_path):
    from mlmkit.corpus.masking import Masker, MaskingCollator
    from mlmkit.training.loop import BlockKeys, EpochBatches
    from mlmkit.training.torch_recipe import prepare_tokenizer_and_data

    cfg = settings(tiny_roberta, sample_path, None)
    tok, _, corpus = prepare_tokenizer_and_data(cfg, False)
    collator = MaskingCollator(Masker(tok, cfg), cfg.seed, tok.pad_token_id)
    ours = kt.MaskedBlocks(corpus.train, collator, cfg.batch_size, cfg.seed, segments=False)
    for epoch in (0, 1):
        sampler = EpochBatches(len(corpus.train), cfg.batch_size, cfg.seed)
        sampler.seek(epoch)
        loader = torch.utils.data.DataLoader(BlockKeys(corpus.train), batch_sampler=sampler,
                                             collate_fn=collator)
        ours.set_epoch(epoch)
        for b, want in zip(range(3), loader):
            x, y, w = ours[b]
            labels = np.full(x["token_ids"].shape, -100)
            for r, real in enumerate(w > 0):  # padding slots (weight 0) point at position 0
                labels[r, x["mask_positions"][r, real]] = y[r, real]
            assert np.array_equal(x["token_ids"], want["input_ids"].numpy())
            assert np.array_equal(labels, want["labels"].numpy())
            assert w.sum() == (want["labels"] != -100).sum()
    assert not np.array_equal(ours[0][0]["token_ids"], kt.MaskedBlocks(
        corpus.train, collator, cfg.batch_size, cfg.seed, segments=False)[0][0]["token_ids"])


@pytest.mark.parametrize("name", ["tiny_roberta", "splade"])
def test_base_perplexity_is_the_same_on_both_backends(name, request, sample_path):
    from mlmkit.modeling.keras.convert import to_keras
    from mlmkit.modeling.load import load_model
    from mlmkit.training.perplexity import evaluate, fixed_eval_dataset
    from mlmkit.training.torch_recipe import prepare_tokenizer_and_data

    cfg = settings(request.getfixturevalue(name), sample_path, None, limit=150,
                   block_size=128)
    tok, model_config, corpus = prepare_tokenizer_and_data(cfg, False)
    hf = load_model(cfg.model, model_config).eval()
    fixed = fixed_eval_dataset(corpus.eval, tok, cfg)
    want = evaluate(hf, torch.utils.data.DataLoader(fixed, batch_size=16), device="cpu")
    got = kt.keras_evaluate(to_keras(hf), fixed.inputs, fixed.labels, tok.pad_token_id, 16)
    assert (got.tokens, got.blocks) == (want.tokens, want.blocks)
    assert got.perplexity == pytest.approx(want.perplexity, rel=1e-4)


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_schedule_equals_transformers(kind):
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    ref = get_scheduler(kind, opt, num_warmup_steps=10, num_training_steps=100)
    ours = kt.WarmupDecay(1e-3, 10 if kind != "constant" else 0, 100, kind)
    for step in range(100):
        assert float(kt.keras.ops.convert_to_numpy(ours(step))) == pytest.approx(
            ref.get_last_lr()[0], rel=1e-5, abs=1e-9)  # float32 cos
        opt.step()
        ref.step()


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory, tiny_roberta, sample_path):
    from mlmkit import train

    out = tmp_path_factory.mktemp("keras-run")
    return out, train(settings(tiny_roberta, sample_path, out, max_steps=40, backend="keras"))


def test_short_fit_lowers_perplexity_and_exports_an_hf_directory(keras_run):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    out, r = keras_run
    assert r.steps == 40 and r.final.perplexity < r.base.perplexity
    model, info = AutoModelForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    fill = pipeline("fill-mask", model=model, tokenizer=AutoTokenizer.from_pretrained(str(out)))
    assert len(fill("The answer is <mask>.", top_k=3)) == 3
    assert (out / "checkpoints" / "step_40" / "model.safetensors").is_file()


def test_exported_weights_are_the_trained_ones(keras_run, sample_path):
    """The PyTorch evaluation of the exported directory gives the Keras run's final number."""
    from mlmkit.training.perplexity import EvalConfig, run_eval

    out, r = keras_run
    m, _ = run_eval(EvalConfig(model=str(out)))
    assert m.tokens == r.final.tokens
    assert m.perplexity == pytest.approx(r.final.perplexity, rel=1e-4)


def test_metrics_and_card_have_the_pytorch_runs_shape(keras_run, trained_roberta):
    out, _ = keras_run
    theirs = trained_roberta[1].output_dir

    def shape(d):
        metrics = json.loads((d / "metrics.json").read_text())
        card = (d / "README.md").read_text()
        return (sorted(metrics), sorted(metrics["history"][-1]), sorted(metrics["best"]),
                [line for line in card.splitlines() if line.startswith("#")][1:],
                [line.split("|")[1].strip() for line in card.splitlines()
                 if line.startswith("| ") and "Setting" not in line][:30])

    ours = shape(out)
    assert ours == shape(theirs)
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {e["event"] for e in log} == {"train", "eval"}
    assert all(math.isfinite(e["loss"]) for e in log)
    assert "Keras 3." in (out / "README.md").read_text()


def test_settings_the_keras_path_lacks_are_refused(tiny_roberta, sample_path, tmp_path):
    from mlmkit import train

    for bad, match in ((dict(load_best=True), "--load-best with --backend keras"),
                       (dict(gradient_accumulation_steps=2), "expected 1"),
                       (dict(mixed_precision="bf16"), "expected auto or no")):
        with pytest.raises(MlmkitError, match=match):
            train(settings(tiny_roberta, sample_path, tmp_path / "x", backend="keras", **bad))
    assert not (tmp_path / "x").exists()


def test_epochs_take_exactly_their_batches_as_optimizer_steps(tiny_roberta, sample_path,
                                                              tmp_path):
    """Over epoch boundaries the optimizer counts one step per batch and the schedule ends at
    zero. On TensorFlow a dataset of unknown length used to cost one phantom step per epoch
    (Keras ran out of data inside a train step): 191 optimizer iterations for this test's 189
    batches."""
    from mlmkit.training.rundir import check_output

    cfg = settings(tiny_roberta, sample_path, tmp_path / "out", limit=40, epochs=3,
                   skip_base_eval=True, save_every=0)
    run = kt.KerasRun(cfg, "test", check_output(cfg))
    result = run.fit()
    per_epoch = run.batches_per_epoch
    assert per_epoch >= 2 and result.steps == 3 * per_epoch
    opt = run.model.optimizer
    assert int(kt.keras.ops.convert_to_numpy(opt.iterations)) == result.steps
    assert float(kt.keras.ops.convert_to_numpy(opt.learning_rate)) == 0.0
