"""Training lowers perplexity and loss, saves a directory the HF pipeline loads, and a resumed
run reproduces the uninterrupted one exactly; accumulation, whole-word masking and from-scratch
training with a new tokenizer run. (The run's life: tests/unit/test_run_life.py.)"""

from __future__ import annotations

import importlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlmkit import MlmkitError, TrainConfig, train

# The loop's pieces: the objective (its loss) and the training clock.
loop_module = importlib.import_module("mlmkit.training.loop")


def small_cfg(model, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model), data=str(data), text_field=["answers.text"], limit=120,
                block_size=64, output=str(out), max_steps=6, batch_size=8, eval_batch_size=32,
                learning_rate=1e-3, log_every=1, quiet=True)
    return TrainConfig(**{**base, **kw})


def train_losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["event"] == "train"]


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "train_seconds"} for h in history]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


def test_training_lowers_perplexity_and_loss(trained_roberta):
    cfg, r = trained_roberta
    assert r.steps == 40 and r.base is not None and r.final is not None
    assert r.final.perplexity < r.base.perplexity
    assert r.final.tokens == r.base.tokens > 1000  # the same fixed masks before and after
    losses = train_losses(Path(cfg.output))
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2


def test_output_is_a_standard_model_directory(trained_roberta):
    from transformers import pipeline

    cfg, r = trained_roberta
    out = Path(cfg.output)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["perplexity"] == pytest.approx(r.final.perplexity, rel=1e-12)
    assert metrics["base"]["perplexity"] == pytest.approx(r.base.perplexity, rel=1e-12)
    assert metrics["steps"] == 40 and metrics["data"]["records"] == 300
    saved_cfg = json.loads((out / "train_config.json").read_text())
    assert saved_cfg["learning_rate"] == 1e-3 and saved_cfg["block_size"] == 64
    assert not (out / ".export-tmp").exists()
    fill = pipeline("fill-mask", model=str(out))
    recs = fill("The sun is a <mask> star.", top_k=3)
    assert len(recs) == 3 and all(r["sequence"] for r in recs)


def test_resume_reproduces_the_uninterrupted_run(tiny_roberta, sample_path, tmp_path,
                                                 monkeypatch):
    cfg_a = small_cfg(tiny_roberta, sample_path, tmp_path / "a", max_steps=12, eval_every=4,
                      save_every=4, limit=100)
    a = train(cfg_a)
    assert [h["step"] for h in a.history] == [4, 8, 12]

    # Run B: the same run killed during step 7 (after the checkpoint of step 4 was written).
    real_loss, calls = loop_module.masked_lm_loss, []

    def dies_at_step_7(*args, **kw):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real_loss(*args, **kw)

    monkeypatch.setattr(loop_module, "masked_lm_loss", dies_at_step_7)
    cfg_b = replace(cfg_a, output=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        train(cfg_b)
    monkeypatch.setattr(loop_module, "masked_lm_loss", real_loss)
    out_b = tmp_path / "b"
    assert not (out_b / "model.safetensors").exists()
    assert sorted(p.name for p in (out_b / "checkpoints").iterdir()) == ["step_4"]

    b = train(replace(cfg_b, resume="latest"))
    assert b.steps == 12
    wa, wb = weights(tmp_path / "a"), weights(out_b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6, msg=k)
    assert untimed(b.history) == untimed(a.history)
    # Training time carries over the restart and leaves out evaluation.
    times = [h["train_seconds"] for h in b.history]
    assert times == sorted(times) and 0 < times[0]
    assert b.base == a.base
    # Not vacuous: training moved the weights.
    w0 = load_file(Path(tiny_roberta) / "model.safetensors")
    assert not torch.allclose(w0["roberta.embeddings.word_embeddings.weight"],
                              wa["roberta.embeddings.word_embeddings.weight"])


def test_gradient_accumulation_runs(tiny_roberta, sample_path, tmp_path):
    r = train(small_cfg(tiny_roberta, sample_path, tmp_path / "o", max_steps=3,
                        gradient_accumulation_steps=2, skip_base_eval=True))
    assert r.steps == 3 and r.base is None and r.final.perplexity > 1
    assert len(train_losses(tmp_path / "o")) == 3
    assert (tmp_path / "o" / "model.safetensors").is_file()


def test_bf16_autocast_trains_like_float32_and_saves_float32(tiny_roberta, sample_path,
                                                             tmp_path):
    # The GPU default's code path (bf16 autocast over float32 master weights, the sparse head
    # and the loss under autocast), run on the CPU.
    fp32 = train(small_cfg(tiny_roberta, sample_path, tmp_path / "fp32", mixed_precision="no"))
    bf16 = train(small_cfg(tiny_roberta, sample_path, tmp_path / "bf16", mixed_precision="bf16"))
    assert {t.dtype for t in weights(tmp_path / "bf16").values()} == {torch.float32}
    ref, got = train_losses(tmp_path / "fp32"), train_losses(tmp_path / "bf16")
    assert got != ref  # bf16 really ran
    assert got == pytest.approx(ref, rel=0.02)
    assert bf16.final.perplexity == pytest.approx(fp32.final.perplexity, rel=0.02)
    assert bf16.final.perplexity < bf16.base.perplexity


def test_whole_word_masking_runs_on_wordpiece(tiny_bert, sample_path, tmp_path):
    r = train(small_cfg(tiny_bert, sample_path, tmp_path / "o", max_steps=3,
                        whole_word_mask=True))
    assert r.steps == 3 and r.final.perplexity < r.base.perplexity * 2
    saved = json.loads((tmp_path / "o" / "train_config.json").read_text())
    assert saved["whole_word_mask"] is True


def test_from_scratch_with_a_new_tokenizer(roberta_shape, sample_path, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    r = train(small_cfg(roberta_shape, sample_path, tmp_path / "o", max_steps=3,
                        train_tokenizer=300, limit=200))
    out = tmp_path / "o"
    tok = AutoTokenizer.from_pretrained(out)
    assert 250 <= len(tok) <= 310 and tok.mask_token == "<mask>"
    assert AutoConfig.from_pretrained(out).vocab_size == len(tok)
    assert weights(out)["roberta.embeddings.word_embeddings.weight"].shape[0] == len(tok)
    assert json.loads((out / "train_config.json").read_text())["from_scratch"] is True
    assert r.steps == 3


def test_bad_settings_fail_before_anything_is_written(tiny_roberta, sample_path, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(MlmkitError, match="block_size=1024: above the 512 positions"):
        train(small_cfg(tiny_roberta, sample_path, out, block_size=1024))
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(MlmkitError, match="overwrite=True"):  # from Python: the field
        train(small_cfg(tiny_roberta, sample_path, out))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(MlmkitError, match="not an mlmkit run directory"):
        train(small_cfg(tiny_roberta, sample_path, out, resume="latest"))


def test_compiled_step_trains_like_eager(roberta_shape, sample_path, tmp_path):
    # Dropout off: compiled code draws its dropout masks from another random stream.
    # Batches of 7 x 64 tokens mask about 67 positions, so their masked-row lists (padded to
    # multiples of 64) come in two lengths, 64 and 128: still one graph.
    no_dropout = dict(from_scratch=True, max_steps=4, eval_every=4, batch_size=7,
                      config_overrides="hidden_dropout_prob=0.0,attention_probs_dropout_prob=0.0")
    eager = train(small_cfg(roberta_shape, sample_path, tmp_path / "eager", **no_dropout))
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = train(small_cfg(roberta_shape, sample_path, tmp_path / "compiled", compile=True,
                               **no_dropout))
    assert counters["stats"]["unique_graphs"] == 1  # ran compiled, and never recompiled
    assert not counters["graph_break"]  # as one graph: encoder, sparse head and loss
    # Compiled in place: the saved model has the same parameter names, and the numbers agree.
    assert weights(tmp_path / "eager").keys() == weights(tmp_path / "compiled").keys()
    assert train_losses(tmp_path / "compiled") == pytest.approx(
        train_losses(tmp_path / "eager"), rel=1e-4)
    assert compiled.final.perplexity == pytest.approx(eager.final.perplexity, rel=1e-4)


def test_push_to_hub_uploads_the_export_not_the_checkpoints(tiny_roberta, sample_path, tmp_path,
                                                            monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, exist_ok=False, private=None):
            calls["repo"] = (repo_id, exist_ok)

        def upload_folder(self, repo_id, folder_path, ignore_patterns, **kw):
            calls["upload"] = (repo_id, folder_path, ignore_patterns)
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    # The login check before training is test_push.py's; here, a login that may write.
    for module in ("mlmkit.io.hub", "mlmkit.training.export"):
        monkeypatch.setattr(f"{module}.check_push_access", lambda repo, where: "me")
    out = tmp_path / "pushed"
    train(small_cfg(tiny_roberta, sample_path, out, max_steps=2, save_every=1,
                    push_to_hub="me/my-model"))
    assert calls["repo"] == ("me/my-model", True)
    repo, folder, ignore = calls["upload"]
    assert repo == "me/my-model" and Path(folder) == out and "checkpoints/*" in ignore
    assert {"model.safetensors", "tokenizer.json", "metrics.json", "README.md"} <= set(
        calls["files"])

    class FailingApi(FakeApi):
        def upload_folder(self, **kw):
            raise RuntimeError("401 Unauthorized\nmore detail")

    monkeypatch.setattr(huggingface_hub, "HfApi", FailingApi)
    from mlmkit.training.export import push

    with pytest.raises(MlmkitError) as e:
        push(out, "me/my-model")
    assert "401 Unauthorized" in str(e.value) and str(out) in str(e.value)
    assert "\n" not in str(e.value)


def test_training_clock_leaves_out_paused_time(monkeypatch):
    class FakeTime:
        now = 100.0

        @classmethod
        def perf_counter(cls):
            return cls.now

    monkeypatch.setattr(loop_module, "time", FakeTime)
    clock = loop_module.Stopwatch()
    FakeTime.now += 5
    assert clock.seconds == 5
    with clock.paused():  # an evaluation or a checkpoint
        FakeTime.now += 100
        assert clock.seconds == 5
    FakeTime.now += 2
    assert clock.seconds == 7


def test_worker_processes_change_nothing(tiny_roberta, sample_path, tmp_path):
    # Masks come from (seed, epoch, block indices) carried by each item: loader workers, which
    # hold copies of the collator, must mask exactly as the main process, across epochs too.
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        r = train(small_cfg(tiny_roberta, sample_path, out, limit=10, max_steps=None,
                            epochs=2, skip_base_eval=True, num_workers=workers))
        runs[workers] = (r, train_losses(out), weights(out))
    (r0, losses0, w0), (r2, losses2, w2) = runs[0], runs[2]
    assert [h["epoch"] for h in r0.history] == [1, 2] and r0.steps > 4  # two epochs
    assert untimed(r2.history) == untimed(r0.history)
    assert losses2 == pytest.approx(losses0, rel=1e-6)
    for k in w0:
        torch.testing.assert_close(w2[k], w0[k], rtol=0, atol=1e-6, msg=k)
