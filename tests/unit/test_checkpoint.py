"""Run directories are safe: --overwrite deletes only mlmkit's own runs and never an input
(model, data, config file, the current directory), every flipped or cut byte in a checkpoint
is caught and the previous checkpoint resumes to the uninterrupted run's exact weights and
log, and a diverged run exports nothing."""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlmkit import MlmkitError, TrainConfig, train
from mlmkit.cli.main import main
from mlmkit.io.files import verify_manifest
from mlmkit.training.checkpoint import find_checkpoint
from mlmkit.training.rundir import trim_metrics_log

loop_module = importlib.import_module("mlmkit.training.loop")


def small_cfg(model, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model), data=str(data), text_field=["answers.text"], limit=100,
                block_size=64, output=str(out), max_steps=12, batch_size=8, eval_batch_size=32,
                learning_rate=1e-3, log_every=1, eval_every=4, save_every=4, quiet=True,
                save_total_limit=2)
    return TrainConfig(**{**base, **kw})


def log_records(out: Path) -> list[dict]:
    """The training log without its timing fields (which differ between any two runs)."""
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "train_seconds")}
            for r in recs]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6, msg=k)


def fail_at_call(monkeypatch, n: int, exc: BaseException | None = None, value=None):
    """Make the n-th training step raise `exc` (a kill) or return loss `value`."""
    real, calls = loop_module.masked_lm_loss, []

    def patched(*args, **kw):
        calls.append(1)
        if len(calls) == n:
            if exc is not None:
                raise exc
            total, count = real(*args, **kw)
            return total * value, count
        return real(*args, **kw)

    monkeypatch.setattr(loop_module, "masked_lm_loss", patched)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_roberta, sample_path):
    """The uninterrupted run, and the same run killed in step 11 (checkpoints 4 and 8 kept)."""
    root = tmp_path_factory.mktemp("runs")
    cfg = small_cfg(tiny_roberta, sample_path, root / "a")
    train(cfg)
    mp = pytest.MonkeyPatch()
    fail_at_call(mp, 11, exc=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train(replace(cfg, output=str(root / "killed")))
    mp.undo()
    killed = root / "killed"
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step_4", "step_8"]
    return cfg, root / "a", killed


CHECKPOINT_FILES = ["model.safetensors", "optimizer.bin", "custom_checkpoint_0.pkl",
                    "random_states_0.pkl", "trainer_state.json", "manifest.json"]


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        data = data[:-1]
    path.write_bytes(bytes(data))


def test_checkpoint_holds_the_files_the_corruption_test_breaks(reference):
    _, _, killed = reference
    names = {p.name for p in (killed / "checkpoints" / "step_8").iterdir()}
    assert set(CHECKPOINT_FILES) <= names


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_damaged_checkpoint_is_skipped_for_the_previous_one(reference, tmp_path, caplog, name,
                                                            how):
    cfg, uninterrupted, killed = reference
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    corrupt(out / "checkpoints" / "step_8" / name, how)
    with caplog.at_level(logging.WARNING, logger="mlmkit"):
        r = train(replace(cfg, output=str(out), resume="latest"))
    warned = [rec.getMessage() for rec in caplog.records if "damaged" in rec.getMessage()]
    assert len(warned) == 1 and "step_8" in warned[0] and name in warned[0]
    assert r.steps == 12
    assert_same_weights(uninterrupted, out)
    # The replayed steps 5-11 are logged once, as in the uninterrupted run.
    assert log_records(out) == log_records(uninterrupted)
    # Step 8 was written again, whole, then the final state: the run directory is healthy for
    # the next resume.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_12", "step_8"]
    assert not verify_manifest(out / "checkpoints" / "step_8")
    assert find_checkpoint(out, "latest").name == "step_12"


def test_explicit_damaged_checkpoint_and_no_intact_one_are_errors(reference, tmp_path):
    cfg, _, killed = reference
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    corrupt(out / "checkpoints" / "step_4" / "optimizer.bin", "flip")
    with pytest.raises(MlmkitError, match="step_4: damaged checkpoint: optimizer.bin does not "
                                          "match its sha256"):
        train(replace(cfg, output=str(out), resume=str(out / "checkpoints" / "step_4")))
    corrupt(out / "checkpoints" / "step_8" / "model.safetensors", "truncate")
    with pytest.raises(MlmkitError, match="none of the 2 checkpoints .* is intact"):
        train(replace(cfg, output=str(out), resume="latest"))


def test_kill_between_steps_resumes_without_duplicate_log_records(reference, tmp_path):
    cfg, uninterrupted, killed = reference
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"event": "train", "step": 11, "lo')  # a kill in the middle of a write
    train(replace(cfg, output=str(out), resume="latest"))
    assert log_records(out) == log_records(uninterrupted)


def test_trim_metrics_log_keeps_records_up_to_the_checkpoint(tmp_path):
    lines = [{"event": "eval", "step": 0}, {"event": "train", "step": 1},
             {"event": "train", "step": 2}, {"event": "train", "step": 3}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    trim_metrics_log(tmp_path, 2)
    assert log_records(tmp_path) == lines[:3]


def test_non_finite_loss_stops_with_the_checkpoint_to_resume(tiny_roberta, sample_path,
                                                               tmp_path, monkeypatch):
    out = tmp_path / "run"
    fail_at_call(monkeypatch, 6, value=float("nan"))
    with pytest.raises(MlmkitError, match=r"loss is not finite at step 6: .*nothing was "
                                          r"exported.*step_4.*resume='latest'"):
        train(small_cfg(tiny_roberta, sample_path, out))
    assert not (out / "model.safetensors").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_4"]


def test_non_finite_weights_are_never_exported(tiny_roberta, sample_path, tmp_path,
                                               monkeypatch):
    # Weights poisoned without a non-finite loss being logged: the export check still stops it.
    from mlmkit.training.torch_recipe import Run

    monkeypatch.setattr(Run, "export", lambda *a, **k: pytest.fail("exported"))
    real_check = Run.check_finite

    def poison_then_check(self):
        with torch.no_grad():
            next(self.model.parameters()).view(-1)[0] = float("inf")
        return real_check(self)

    monkeypatch.setattr(Run, "check_finite", poison_then_check)
    out = tmp_path / "run"
    with pytest.raises(MlmkitError, match="non-finite weights at step 4"):
        train(small_cfg(tiny_roberta, sample_path, out, max_steps=4, save_every=0))
    assert not (out / "model.safetensors").exists()


# --------------------------------------------------------------------------- --overwrite


def quick(model, data, out, **kw) -> TrainConfig:
    return small_cfg(model, data, out, max_steps=1, eval_every=0, save_every=0, limit=40,
                     skip_base_eval=True, **kw)


def test_overwrite_never_deletes_a_directory_mlmkit_did_not_write(tiny_roberta, sample_path,
                                                                  tmp_path):
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(MlmkitError, match="not a directory mlmkit wrote"):
        train(quick(tiny_roberta, sample_path, mine, overwrite=True))
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]


def test_overwrite_never_deletes_the_model_or_data_being_read(tiny_roberta, sample_path,
                                                              tmp_path):
    first = tmp_path / "run1"
    train(quick(tiny_roberta, sample_path, first))
    before = sorted(p.name for p in first.iterdir())
    # The first run's output is the second run's model: --output the same directory.
    with pytest.raises(MlmkitError, match="holds model .*which this run reads"):
        train(quick(first, sample_path, first, overwrite=True))
    # The corpus kept inside a run directory.
    shutil.copy(sample_path, first / "corpus.jsonl.gz")
    with pytest.raises(MlmkitError, match="holds data .*corpus.jsonl.gz"):
        train(quick(tiny_roberta, first / "corpus.jsonl.gz", first, overwrite=True))
    assert sorted(p.name for p in first.iterdir()) == sorted(before + ["corpus.jsonl.gz"])
    with pytest.raises(MlmkitError, match="choose one"):
        train(quick(tiny_roberta, sample_path, first, overwrite=True, resume="latest"))


def test_overwrite_replaces_an_mlmkit_run_including_one_from_before_the_marker(
        tiny_roberta, sample_path, tmp_path):
    out = tmp_path / "run"
    train(quick(tiny_roberta, sample_path, out))
    assert (out / ".mlmkit-run").is_file()
    (out / ".mlmkit-run").unlink()  # as a run of an older mlmkit left it
    (out / "stale.txt").write_text("old")
    train(quick(tiny_roberta, sample_path, out, overwrite=True))
    assert not (out / "stale.txt").exists() and (out / ".mlmkit-run").is_file()


def test_overwrite_check_protects_the_eval_corpus_and_takes_in_memory_data(sample_path,
                                                                           tmp_path):
    import datasets

    from mlmkit.io.files import mark_run_dir
    from mlmkit.training.rundir import check_output

    out = tmp_path / "run"
    out.mkdir()
    mark_run_dir(out)
    shutil.copy(sample_path, out / "held.jsonl.gz")
    cfg = TrainConfig(model="m", data=str(sample_path), eval_data=str(out / "held.jsonl.gz"),
                      output=str(out), overwrite=True, cache_dir=str(tmp_path / "c"))
    with pytest.raises(MlmkitError, match="holds eval_data .*held.jsonl.gz"):
        check_output(cfg)
    for data in (["a text", "another"], datasets.Dataset.from_list([{"text": "a"}])):
        assert check_output(replace(cfg, data=data, eval_data=data)) == out


def test_overwrite_never_deletes_the_config_file_or_the_current_directory(
        tiny_roberta, sample_path, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    train(quick(tiny_roberta, sample_path, out))
    (out / "run.yaml").write_text("max_steps: 1\n")
    before = sorted(p.name for p in out.rglob("*"))
    argv = ["train", "--model", str(tiny_roberta), "--data", str(sample_path), "--text-field",
            "answers.text", "--limit", "40", "--max-steps", "1", "--quiet", "--overwrite"]
    capsys.readouterr()
    assert main([*argv, "--config", str(out / "run.yaml"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"holds --config {out / 'run.yaml'}" in err, err
    # `--output .` (or `..`) from inside the run: deleting it would pull the ground from under
    # the command itself.
    monkeypatch.chdir(out / "checkpoints")
    assert main([*argv, "--output", ".."]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds the current directory" in err, err
    monkeypatch.chdir(out)
    with pytest.raises(MlmkitError, match="holds the current directory"):
        train(quick(tiny_roberta, sample_path, ".", overwrite=True))
    assert sorted(p.name for p in out.rglob("*")) == before
