"""A run ends whole: a resume of a finished run whose export is missing, damaged or stale
exports it; a full disk in a checkpoint or the export is one line, leaves no partial files,
and a resume ends exactly as the uninterrupted run; every file of a run follows the umask."""

from __future__ import annotations

import errno
import importlib
import json
import logging
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mlmkit import MlmkitError
from mlmkit.cli.main import main
from mlmkit.io.files import verify_manifest

recipe_module = importlib.import_module("mlmkit.training.recipe")
modeling_utils = importlib.import_module("transformers.modeling_utils")

# Steps 2 and 4 evaluated and checkpointed; the final state is step 4.
STEPS = ["--max-steps", "4", "--eval-every", "2", "--save-every", "2", "--save-total-limit", "2"]
MODEL_FILES = ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
               "metrics.json", "train_config.json", "README.md"]


def cli_args(model, data, out, *extra) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--text-field", "answers.text",
            "--limit", "100", "--block-size", "64", "--output", str(out), "--batch-size", "8",
            "--eval-batch-size", "32", "--learning-rate", "1e-3", "--log-every", "1", "--quiet",
            *STEPS, *extra]


def log_records(out: Path) -> list[dict]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "train_seconds")}
            for r in recs]


def assert_same_run(a: Path, b: Path, timings: bool = True) -> None:
    """`b` exported the weights, tokenizer and log of `a` (and its metrics.json, with
    `timings`: a run that trained again measures its own seconds)."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6, msg=k)
    assert (b / "tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()
    assert log_records(b) == log_records(a)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    if not timings:
        for m in (ma, mb):
            m.pop("train_seconds")
            for h in m["history"]:
                h.pop("train_seconds")
    assert mb == ma
    assert verify_manifest(b) == []


Reference = namedtuple("Reference", "model data run")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_roberta, sample_path) -> Reference:
    run = tmp_path_factory.mktemp("end") / "uninterrupted"
    assert main(cli_args(tiny_roberta, sample_path, run)) == 0
    return Reference(tiny_roberta, sample_path, run)


def resume(out: Path, capsys, *extra) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["train", "--resume", "latest", "--output", str(out), "--quiet", *extra])
    got = capsys.readouterr()
    return code, got.out, got.err


def damage(out: Path, how: str) -> None:
    if how == "no manifest":
        (out / "manifest.json").unlink()
    elif how == "no weights":
        (out / "model.safetensors").unlink()
    elif how == "no tokenizer":
        (out / "tokenizer.json").unlink()
    elif how == "flipped weights":
        data = bytearray((out / "model.safetensors").read_bytes())
        data[len(data) // 2] ^= 0x10
        (out / "model.safetensors").write_bytes(bytes(data))
    elif how == "truncated metrics":
        (out / "metrics.json").write_bytes((out / "metrics.json").read_bytes()[:-5])


@pytest.mark.parametrize("how", ["no manifest", "no weights", "no tokenizer", "flipped weights",
                                 "truncated metrics"])
def test_finished_run_with_a_damaged_export_is_exported_on_resume(reference, tmp_path, capsys,
                                                                  caplog, how):
    out = tmp_path / "run"
    shutil.copytree(reference.run, out)
    damage(out, how)
    with caplog.at_level(logging.INFO, logger="mlmkit"):
        code, printed, err = resume(out, capsys)
    assert code == 0, err
    assert "already trained" not in printed and printed.startswith(f"saved {out} (4 steps")
    said = [r.getMessage() for r in caplog.records if "export" in r.getMessage()]
    assert len(said) == 1 and "finished at step 4" in said[0], said
    assert "\n" not in said[0]
    assert_same_run(reference.run, out)
    # Now whole: the next resume has nothing to do and touches no file of the export.
    exported = [*json.loads((out / "manifest.json").read_text())["files"], "manifest.json"]
    assert set(MODEL_FILES) <= set(exported)
    before = {n: (out / n).stat().st_mtime_ns for n in exported}
    code, printed, _ = resume(out, capsys)
    assert code == 0 and "already trained (4 steps)" in printed
    assert {n: (out / n).stat().st_mtime_ns for n in exported} == before


def test_complete_export_of_an_earlier_shorter_run_is_not_taken_for_the_final_one(
        reference, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(reference.run, out)

    def killed(self, result):  # stopped after the final checkpoint, before the export
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe_module.Recipe, "export", killed)
    code, _, _ = resume(out, capsys, "--max-steps", "6")
    assert code == 130
    monkeypatch.undo()
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4  # step 4's export
    code, printed, err = resume(out, capsys, "--max-steps", "6")
    assert code == 0 and printed.startswith(f"saved {out} (6 steps"), err
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6


def no_space(e_type: str):
    if e_type == "OSError":
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if e_type == "SafetensorError":  # what safetensors' writer raises on a full disk
        return SafetensorError("Error while serializing: I/O error: No space left on device "
                               "(os error 28)")
    # torch's zip writer names no errno: only the disk tells
    return RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 364864 vs "
                        "364756")


def full_disk_at(monkeypatch, module, name: str, where: str, e_type: str) -> None:
    """The first call of `module.name` (a writer taking (obj, path)) with `where` in its path
    writes the start of its file, then fails as a full disk makes it fail."""
    real, calls = getattr(module, name), []

    def writer(obj, path, *a, **kw):
        if where in str(path) and not calls:
            calls.append(path)
            real(obj, path, *a, **kw)
            Path(path).write_bytes(Path(path).read_bytes()[:100])
            if e_type == "RuntimeError":
                monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(
                    10**9, 10**9, 0))
            raise no_space(e_type)
        return real(obj, path, *a, **kw)

    monkeypatch.setattr(module, name, writer)


def assert_one_line_naming(err: str, *words: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: ") and "ENOSPC" in err and "disk" in err, err
    for w in words:
        assert w in err, (w, err)


@pytest.mark.parametrize("writer,e_type", [
    ("torch.save", "OSError"), ("torch.save", "RuntimeError"),
    ("safe_save_file", "SafetensorError")])
def test_full_disk_in_a_checkpoint_is_one_line_and_resumes_to_the_same_run(
        reference, tmp_path, capsys, monkeypatch, writer, e_type):
    out = tmp_path / "run"
    other = importlib.import_module("accelerate.utils.other")
    # The second checkpoint (step 4, the final one) fails half-written.
    if writer == "torch.save":
        full_disk_at(monkeypatch, torch, "save", ".tmp-step_4", e_type)
    else:
        full_disk_at(monkeypatch, other, "safe_save_file", ".tmp-step_4", e_type)
    capsys.readouterr()
    assert main(cli_args(reference.model, reference.data, out)) == 2
    assert_one_line_naming(capsys.readouterr().err, f"checkpoint {out / 'checkpoints'}",
                           "step_4", "step_2, is kept")
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2"]
    assert not (out / "model.safetensors").exists()
    code, printed, err = resume(out, capsys)
    assert code == 0 and printed.startswith(f"saved {out} (4 steps"), err
    assert_same_run(reference.run, out, timings=False)


@pytest.mark.parametrize("e_type", ["SafetensorError", "OSError"])
def test_full_disk_in_the_export_is_one_line_and_resume_exports(reference, tmp_path, capsys,
                                                                 monkeypatch, e_type):
    out = tmp_path / "run"
    full_disk_at(monkeypatch, modeling_utils, "safe_save_file", ".export-tmp", e_type)
    capsys.readouterr()
    assert main(cli_args(reference.model, reference.data, out)) == 2
    assert_one_line_naming(capsys.readouterr().err, "exported model", "step_4")
    monkeypatch.undo()
    left = sorted(p.name for p in out.iterdir())
    assert left == [".mlmkit-run", "checkpoints", "curves.png", "metrics.jsonl",
                    "train_config.json"], left
    code, printed, err = resume(out, capsys)
    assert code == 0 and printed.startswith(f"saved {out} (4 steps"), err
    assert_same_run(reference.run, out, timings=False)


def test_every_file_of_a_run_follows_the_umask(reference, tmp_path):
    out = tmp_path / "run"
    old = os.umask(0o027)
    try:
        assert main(cli_args(reference.model, reference.data, out, "--max-steps", "1")) == 0
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert set(MODEL_FILES) <= {p.name for p in files}
    wrong = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in files
             if p.stat().st_mode & 0o777 != 0o640}
    assert wrong == {}


def test_write_failure_names_the_reason_and_the_disk_and_lets_other_errors_through(tmp_path):
    from mlmkit.io.files import write_failure

    where = tmp_path / "not-yet" / "step_4"  # measured on the nearest directory that exists
    msg = write_failure("checkpoint step_4", where, no_space("SafetensorError"))
    assert msg.startswith("cannot write checkpoint step_4: No space left on device (ENOSPC) "
                          "on the disk mounted at /") and msg.endswith(" free)")
    quota = write_failure("x", where, OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)))
    assert "(EDQUOT)" in quota
    # Not failed writes: a bug, an interrupt, torch's other runtime errors.
    for e in (TypeError("x"), KeyboardInterrupt(), RuntimeError("CUDA out of memory"),
              OSError("no errno"), MlmkitError("a check")):
        assert write_failure("x", where, e) is None


def test_a_runs_card_states_its_measured_split_precision_and_accuracy(trained_roberta):
    cfg, r = trained_roberta
    out = Path(cfg.output)
    data = json.loads((out / "metrics.json").read_text())["data"]
    card = (out / "README.md").read_text()
    held, total = data["eval_records"], data["eval_records"] + data["train_records"]
    assert f"{held:,} of {total:,} records ({held / total:.1%}) held out" in card
    assert "Eval held out" not in card
    ran = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if torch.cuda.is_available() \
        else "no (float32)"
    assert f"| Mixed precision | {ran} (asked: auto) |" in card
    assert (f"| {r.final.perplexity:,.2f} | {r.final.accuracy:.1%} | "
            f"{r.final.top5_accuracy:.1%} |") in card
