"""A run's life: resume reads and checks the run's settings, a finished run is not trained
again, Ctrl-C saves and names the resume command that reproduces the uninterrupted run, one
final checkpoint is kept, --load-best exports the best, eval of a run prints the run's own
number, the API is quiet and log files get plain lines."""

from __future__ import annotations

import importlib
import json
import logging
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlmkit import EvalConfig, MlmkitError, TrainConfig, run_eval, train
from mlmkit.cli.main import main
from mlmkit.training.perplexity import Metrics

run_module = importlib.import_module("mlmkit.training.torch_recipe")
loop_module = importlib.import_module("mlmkit.training.loop")


def small_cfg(model, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model), data=str(data), text_field=["answers.text"], limit=100,
                block_size=64, output=str(out), max_steps=6, batch_size=8, eval_batch_size=32,
                learning_rate=1e-3, log_every=1)
    return TrainConfig(**{**base, **kw})


def cli_args(model, data, out, *extra) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--text-field", "answers.text",
            "--limit", "100", "--block-size", "64", "--output", str(out), "--batch-size", "8",
            "--learning-rate", "1e-3", "--log-every", "1", "--quiet", *extra]


def checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_resume_refuses_changed_settings_and_names_each(tiny_roberta, sample_path, tmp_path,
                                                        capsys):
    out = tmp_path / "run"
    assert main(cli_args(tiny_roberta, sample_path, out, "--max-steps", "4")) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    code = main(["train", "--resume", str(out), "--learning-rate", "5e-4", "--batch-size", "4"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "--learning-rate 0.0005 (the run's: 0.001)" in err
    assert "--batch-size 4 (the run's: 8)" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # The Python API checks the same rule.
    with pytest.raises(MlmkitError, match="block_size=32 \\(the run's: 64\\)"):
        train(small_cfg(tiny_roberta, sample_path, out, block_size=32, resume=str(out)))


def test_finished_run_is_not_trained_again_and_more_epochs_continue(tiny_roberta, sample_path,
                                                                     tmp_path, capsys):
    out = tmp_path / "run"
    args = cli_args(tiny_roberta, sample_path, out, "--epochs", "1", "--limit", "5")
    assert main(args) == 0
    (final,) = checkpoints(out)  # the final state, the only one kept by default
    n = int(final[5:])
    state = json.loads((out / "checkpoints" / final / "trainer_state.json").read_text())
    assert state["finished"] is True and state["epoch"] == 1 and state["step"] == n > 1
    model_time = (out / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    # The run directory alone is enough: its settings come from train_config.json.
    assert main(["train", "--resume", str(out)]) == 0
    assert f"already trained ({n} steps)" in capsys.readouterr().out
    assert (out / "model.safetensors").stat().st_mtime_ns == model_time
    # More epochs: training goes on from the final state, to the steps of a 2-epoch run.
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["epochs"] == 2 and saved["learning_rate"] == 1e-3
    assert checkpoints(out) == [f"step_{2 * n}"]
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_ctrl_c_saves_a_checkpoint_and_its_resume_command_finishes_the_run(
        tiny_roberta, sample_path, tmp_path, capsys, monkeypatch):
    steps = ["--max-steps", "8", "--eval-every", "4", "--save-every", "4"]
    whole = tmp_path / "whole"
    assert main(cli_args(tiny_roberta, sample_path, whole, *steps)) == 0

    real, calls = loop_module.masked_lm_loss, []

    def ctrl_c_in_step_6(*a, **kw):
        calls.append(1)
        if len(calls) == 6:  # what the terminal does on Ctrl-C, in the middle of a step
            signal.raise_signal(signal.SIGINT)
        return real(*a, **kw)

    monkeypatch.setattr(loop_module, "masked_lm_loss", ctrl_c_in_step_6)
    cut = tmp_path / "cut"
    capsys.readouterr()
    before = signal.getsignal(signal.SIGINT)
    assert main(cli_args(tiny_roberta, sample_path, cut, *steps)) == 130
    err = capsys.readouterr().err
    assert f"interrupted at step 6 of 8; checkpoint saved in {cut / 'checkpoints' / 'step_6'}" \
        in err
    assert signal.getsignal(signal.SIGINT) is before  # the handler is the run's only
    command = err.split("continue with: ")[1].split()
    assert command[:2] == ["mlmkit", "train"]
    monkeypatch.setattr(loop_module, "masked_lm_loss", real)
    assert main(command[1:]) == 0
    a, b = load_file(whole / "model.safetensors"), load_file(cut / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    ha = json.loads((whole / "metrics.json").read_text())["history"]
    hb = json.loads((cut / "metrics.json").read_text())["history"]
    assert [h["perplexity"] for h in hb] == pytest.approx([h["perplexity"] for h in ha],
                                                          rel=1e-6)


def test_load_best_exports_the_checkpoint_with_the_lowest_perplexity(tiny_roberta, sample_path,
                                                                     tmp_path, monkeypatch):
    # Perplexity measured after steps 2, 4 and 6: the best is step 4's.
    seq = iter([50.0, 9.0, 5.0, 7.0])  # base, step 2, step 4, step 6
    monkeypatch.setattr(run_module, "evaluate", lambda *a, **kw: Metrics(
        loss=float(torch.tensor(p := next(seq)).log()), perplexity=p, tokens=10, blocks=2))
    out = tmp_path / "best"
    r = train(small_cfg(tiny_roberta, sample_path, out, eval_every=2, save_every=2,
                        load_best=True))
    assert r.final.perplexity == 5.0 and r.best["step"] == 4
    # Kept: the best checkpoint and the final state (for training further).
    assert checkpoints(out) == ["step_4", "step_6"]
    best = load_file(out / "checkpoints" / "step_4" / "model.safetensors")
    last = load_file(out / "checkpoints" / "step_6" / "model.safetensors")
    exported = load_file(out / "model.safetensors")
    key = "roberta.embeddings.word_embeddings.weight"
    match = [k for k in best if k.endswith(key)][0]
    torch.testing.assert_close(exported[key], best[match], rtol=0, atol=0)
    assert not torch.equal(exported[key], last[match])
    assert json.loads((out / "metrics.json").read_text())["final"]["perplexity"] == 5.0
    with pytest.raises(MlmkitError, match="load_best=True: needs an evaluation at every"):
        train(small_cfg(tiny_roberta, sample_path, tmp_path / "x", eval_every=2, save_every=3,
                        load_best=True))


def test_eval_of_a_run_reuses_its_data_settings_and_prints_its_number(tiny_roberta, sample_path,
                                                                      tmp_path, capsys):
    out = tmp_path / "run"
    r = train(small_cfg(tiny_roberta, sample_path, out, eval_fraction=0.3, seed=7,
                        eval_seed=99))
    m, _ = run_eval(EvalConfig(model=str(out)))
    assert m.perplexity == pytest.approx(r.final.perplexity, rel=1e-5)
    assert m.tokens == r.final.tokens and m.blocks == r.final.blocks
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--json", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["perplexity"] == pytest.approx(r.final.perplexity, rel=1e-5)
    # A flag given still wins: another eval seed gives other masks, another number.
    assert main(["eval", "--model", str(out), "--json", "--quiet", "--eval-seed", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] != r.final.tokens
    with pytest.raises(MlmkitError, match="not a run directory"):
        run_eval(EvalConfig(model=str(tiny_roberta)))


def test_python_api_is_quiet_and_logs_are_plain_lines(tiny_roberta, sample_path, tmp_path,
                                                      capfd, caplog, monkeypatch):
    # As in a fresh interpreter: no handler that an earlier CLI call in this process installed.
    monkeypatch.setattr(logging.root, "handlers", [])
    train(model=str(tiny_roberta), data=str(sample_path), text_field=["answers.text"],
          limit=40, block_size=64, output=str(tmp_path / "api"), max_steps=2, batch_size=8)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    # stderr is not a terminal here: the CLI's progress comes as plain lines.
    caplog.set_level("INFO", logger="mlmkit")
    args = [a for a in cli_args(tiny_roberta, sample_path, tmp_path / "cli", "--max-steps", "3")
            if a != "--quiet"]
    assert main(args) == 0
    text = caplog.text + capfd.readouterr().err
    assert "step 3/3 (epoch" in text and "\r" not in text and "\x1b" not in text


def test_run_directory_has_model_card_curves_and_tensorboard_events(tiny_roberta, sample_path,
                                                                    tmp_path):
    from huggingface_hub import ModelCard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    r = train(small_cfg(tiny_roberta, sample_path, out, report_to="tensorboard"),
              command="mlmkit train --my-flags")
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "fill-mask"
    assert f"{r.final.perplexity:.2f}" in card.text and "mlmkit train --my-flags" in card.text
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = [p for p in (out / "logs").rglob("events.out.tfevents.*")]
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 7))
    assert acc.Scalars("eval/perplexity")[-1].value == pytest.approx(r.final.perplexity,
                                                                       rel=1e-5)


def test_resume_from_a_named_checkpoint_of_the_run(tiny_roberta, sample_path, tmp_path):
    out = tmp_path / "run"
    cfg = small_cfg(tiny_roberta, sample_path, out, save_every=2, save_total_limit=3)
    train(cfg)
    assert checkpoints(out) == ["step_2", "step_4", "step_6"]
    r = train(replace(cfg, resume=str(out / "checkpoints" / "step_4"), max_steps=8))
    assert r.steps == 8 and not r.finished_before


def test_in_memory_texts_train_and_resume_by_their_digest(tiny_roberta, sample_texts, tmp_path):
    texts = sample_texts[:40]
    out = tmp_path / "mem"
    settings = dict(model=str(tiny_roberta), block_size=64, output=str(out), max_steps=2,
                    batch_size=8, save_every=1)
    r = train(data=texts, **settings)
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["data"].startswith("<in-memory: 40 texts, sha256 ") and r.steps == 2
    assert r.data["records"] == 40
    # The same texts resume; other texts are another experiment.
    assert train(data=texts, **{**settings, "max_steps": 3, "resume": str(out)}).steps == 3
    with pytest.raises(MlmkitError, match="data='<in-memory: 39 texts"):
        train(data=texts[:39], **{**settings, "max_steps": 4, "resume": str(out)})
