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
    from mlmkit.training.recipe import prepare_tokenizer_and_data

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
    from mlmkit.training.recipe import prepare_tokenizer_and_data

    cfg = settings(request.getfixturevalue(name), sample_path, None, limit=150,
                   block_size=128)
    tok, model_config, corpus = prepare_tokenizer_and_data(cfg, False)
    hf = load_model(cfg.model, model_config).eval()
    fixed = fixed_eval_dataset(corpus.eval, tok, cfg)
    want = evaluate(hf, torch.utils.data.DataLoader(fixed, batch_size=16), device="cpu")
    got = kt.keras_evaluate(to_keras(hf), fixed.inputs, fixed.labels, tok.pad_token_id, 16)
    assert (got.tokens, got.blocks) == (want.tokens, want.blocks)
    assert got.perplexity == pytest.approx(want.perplexity, rel=1e-4)
    # The same hits, up to a near-tie the two backends' float rounding may order either way.
    assert got.accuracy == pytest.approx(want.accuracy, abs=2 / want.tokens)
    assert got.top5_accuracy == pytest.approx(want.top5_accuracy, abs=2 / want.tokens)


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

    for bad, match in ((dict(resume="latest"), "resume with backend='keras'"),
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


def flip_byte(path, at: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(data)


def test_load_best_exports_the_verified_best_checkpoint(tiny_roberta, sample_path, tmp_path,
                                                        monkeypatch):
    """Checkpoints of a Keras run carry manifests as the PyTorch ones do; --load-best exports
    the best one's weights, and only once its files match their manifest."""
    from safetensors.torch import load_file

    from mlmkit import train
    from mlmkit.io.files import verify_manifest

    seq = iter([50.0, 9.0, 5.0, 7.0])  # base, step 2, step 4, step 6: the best is step 4's
    monkeypatch.setattr(kt, "keras_evaluate", lambda *a, **kw: kt.Metrics(
        loss=math.log(p := next(seq)), perplexity=p, tokens=10, blocks=2))
    out = tmp_path / "best"
    cfg = settings(tiny_roberta, sample_path, out, max_steps=6, eval_every=2, save_every=2,
                   load_best=True, backend="keras")
    run = kt.KerasRun(cfg, "test", out)
    r = run.fit()
    assert r.final.perplexity == 5.0 and r.best["step"] == 4
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_4", "step_6"]  # best + last
    for ckpt in ckpts.iterdir():
        assert (ckpt / "manifest.json").is_file() and verify_manifest(ckpt) == []
        assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == int(ckpt.name[5:])
    key = "roberta.embeddings.word_embeddings.weight"
    exported = load_file(out / "model.safetensors")[key]
    assert torch.equal(exported, load_file(ckpts / "step_4" / "model.safetensors")[key])
    assert not torch.equal(exported, load_file(ckpts / "step_6" / "model.safetensors")[key])
    assert json.loads((out / "metrics.json").read_text())["final"]["perplexity"] == 5.0
    flip_byte(ckpts / "step_4" / "model.safetensors")
    assert verify_manifest(ckpts / "step_6") == []
    with pytest.raises(MlmkitError, match=r"load_best=True .*step_4: damaged checkpoint: "
                                          r"model.safetensors does not match its sha256"):
        run._load_best()
    with pytest.raises(MlmkitError, match="load_best=True: needs an evaluation at every"):
        train(settings(tiny_roberta, sample_path, tmp_path / "x", eval_every=2, save_every=3,
                       load_best=True, backend="keras"))


def test_divergence_names_the_last_good_checkpoint(tiny_roberta, sample_path, tmp_path,
                                                   monkeypatch):
    """Weights poisoned right after step 4's checkpoint: the next log stops the run with the
    PyTorch path's message, naming step_4 (without --resume advice: Keras has none)."""
    from mlmkit import train

    real = kt.KerasRun._commit

    def commit_then_poison(self, state, protect):
        saved = real(self, state, protect)
        var = self.model.trainable_variables[0]
        var.assign(kt.keras.ops.full(var.shape, float("nan")))
        return saved

    monkeypatch.setattr(kt.KerasRun, "_commit", commit_then_poison)
    out = tmp_path / "run"
    with pytest.raises(MlmkitError, match=r"loss is not finite at step 5: training diverged "
                       r"and nothing was exported from .*; the last good checkpoint, "
                       r".*step_4, is kept; a lower learning_rate") as e:
        train(settings(tiny_roberta, sample_path, out, max_steps=8, save_every=4,
                       eval_every=4, backend="keras"))
    assert "resume" not in str(e.value)
    assert not (out / "model.safetensors").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_4"]


def test_probes_run_on_the_keras_runs_base_and_export(tiny_roberta, sample_path, blimp_path,
                                                      tmp_path):
    """--probe on Keras: the base and the exported model, as `probe_models` probes them."""
    import gzip
    from itertools import islice

    from mlmkit import train
    from mlmkit.probing.run import probe_models

    pairs = tmp_path / "pairs.jsonl"
    with gzip.open(blimp_path, "rt", encoding="utf-8") as fh:
        pairs.write_text("".join(islice(fh, 20)), encoding="utf-8")
    out = tmp_path / "run"
    r = train(settings(tiny_roberta, sample_path, out, max_steps=2, probe=[str(pairs)],
                       backend="keras"))
    got = json.loads((out / "metrics.json").read_text())["probe"][f"{pairs}:pairs"]
    assert got == r.probes[f"{pairs}:pairs"]
    both = probe_models([str(tiny_roberta), str(out)], "pairs", pairs, device="cpu")
    assert got["base"]["results"][0]["metrics"] == both.results[0]["metrics"]
    assert got["tuned"]["results"][0]["metrics"] == both.results[1]["metrics"]
    assert got["difference"] == both.comparisons[0]["metrics"]
