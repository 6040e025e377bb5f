"""The Python API is quiet and speaks Python: `train(...)` with the defaults prints nothing (no
library's bars or warnings, at the file-descriptor level, in a fresh interpreter as a user's
script runs it), the libraries' logging is as the caller left it afterwards, errors name
settings as fields from Python and as flags from the CLI, an unknown keyword is an
MlmkitError with "did you mean", help() documents every field, and every public name has a
docstring."""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mlmkit
from mlmkit import EvalConfig, MlmkitError, TrainConfig
from mlmkit.cli.main import main
from mlmkit.settings import speaking_cli

SCRIPT = """
import json, sys
from mlmkit import TrainConfig, train
texts = json.load(open(sys.argv[1]))
train(TrainConfig(model=sys.argv[2], data=texts, output=sys.argv[3], max_steps=2, batch_size=8,
                  block_size=32, backend=sys.argv[4]))
"""


def run_script(tmp_path: Path, texts: list[str], model: Path, backend: str,
               capfd) -> subprocess.CompletedProcess:
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "KERAS_BACKEND": "torch"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "texts.json"),
                           str(model), str(tmp_path / "out"), backend],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "config.json").is_file()
    assert capfd.readouterr() == ("", "")  # nor anything at the test's own descriptors
    return done


def test_train_from_python_with_the_defaults_prints_nothing(tmp_path, capfd, tiny_roberta,
                                                            sample_texts):
    # Before: "[RANK 0] Removed shared tensor {...} while saving" (Accelerate) and two
    # "Writing model shards" bars (transformers' save_pretrained).
    done = run_script(tmp_path, sample_texts[:200], tiny_roberta, "torch", capfd)
    assert (done.stdout, done.stderr) == ("", "")


def test_keras_training_prints_nothing_and_leaves_the_unused_pooler_alone(
        tmp_path, capfd, tiny_bert, sample_texts):
    pytest.importorskip("keras_hub")
    # Before: Keras warned at every fit that `pooled_dense` had no gradient: BERT's pooler,
    # which masked-LM training never uses, was trainable.
    done = run_script(tmp_path, sample_texts[:200], tiny_bert, "keras", capfd)
    assert (done.stdout, done.stderr) == ("", "")

    from transformers import BertConfig

    from mlmkit.modeling.keras import bert

    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    model = bert.build(cfg)
    trainable = {v.path for v in model.trainable_variables}
    assert not [p for p in trainable if "pooled_dense" in p] and trainable


def test_the_libraries_logging_is_as_the_caller_left_it(tmp_path, tiny_roberta, sample_texts):
    import transformers.utils.logging as hf_logging

    from mlmkit import train

    logging.getLogger("accelerate").setLevel(logging.INFO)
    hf_logging.set_verbosity_info()
    hf_logging.enable_progress_bar()
    try:
        train(model=str(tiny_roberta), data=sample_texts[:100], output=str(tmp_path / "o"),
              max_steps=1, batch_size=8, block_size=32, skip_base_eval=True)
        assert logging.getLogger("accelerate").level == logging.INFO
        assert hf_logging.get_verbosity() == logging.INFO
        assert hf_logging.is_progress_bar_enabled()
    finally:
        logging.getLogger("accelerate").setLevel(logging.NOTSET)
        hf_logging.set_verbosity_warning()


def test_an_error_names_the_field_from_python_and_the_flag_from_the_cli(
        tmp_path, capsys, tiny_roberta, sample_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MlmkitError) as e:
        mlmkit.train(model=str(tiny_roberta), data=str(sample_path), output=str(out))
    assert str(e.value) == (f"output={str(out)!r}: directory exists and is not empty; pass "
                            "overwrite=True to replace it or resume='latest' to continue its "
                            "training")
    assert main(["train", "--model", str(tiny_roberta), "--data", str(sample_path),
                 "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --output {out}: directory exists and is not empty; pass --overwrite to "
        "replace it or --resume latest to continue its training")
    # The command line's naming ends with the command: Python speaks Python again.
    with pytest.raises(MlmkitError, match=r"^block_size=4: expected an integer >= 8$"):
        TrainConfig(block_size=4)
    with speaking_cli(), pytest.raises(MlmkitError, match=r"^--block-size 4: expected"):
        TrainConfig(block_size=4)


@pytest.mark.parametrize("make", [
    lambda: TrainConfig(epoch=1),
    lambda: mlmkit.train(epoch=1),
    lambda: mlmkit.train(TrainConfig(), epoch=1),
])
def test_an_unknown_keyword_says_which_was_meant(make):
    with pytest.raises(MlmkitError, match=r"^unknown setting 'epoch' \(did you mean 'epochs'\?\)$"):
        make()


def test_an_unknown_keyword_of_eval_and_from_the_cli_context():
    with pytest.raises(MlmkitError, match=r"^unknown setting 'all_record' \(did you mean "
                                          r"'all_records'\?\)$"):
        EvalConfig(all_record=True)
    with pytest.raises(MlmkitError, match=r"^unknown setting 'zzz'$"):
        EvalConfig(zzz=1)
    with speaking_cli(), pytest.raises(MlmkitError, match="'--epoch' .*'--epochs'"):
        TrainConfig(epoch=1)


def test_help_lists_every_field_with_its_description_default_and_range():
    import pydoc

    text = pydoc.render_doc(TrainConfig, renderer=pydoc.plaintext)
    assert "epochs (float): passes over the training blocks. Default: 3.0; allowed: a finite " \
           "number > 0." in text
    assert "block_size (int): tokens per training block. Default: 128; allowed: an integer " \
           ">= 8." in text
    from dataclasses import fields

    from mlmkit.config import EngineConfig, RayConfig, ServeConfig

    for cls in (TrainConfig, EvalConfig, EngineConfig, ServeConfig, RayConfig):
        for f in fields(cls):
            assert f"    {f.name} (" in cls.__doc__, (cls.__name__, f.name)


def _public_members(obj):
    for name, member in inspect.getmembers(obj):
        if name.startswith("_") and name != "__call__":
            continue
        func = member.fget if isinstance(member, property) else member
        if (inspect.isfunction(func) or inspect.ismethod(func)) and (
                func.__module__ or "").startswith("mlmkit"):
            yield name, func


def test_every_public_name_and_its_public_methods_have_a_docstring():
    missing = []
    for name in mlmkit.__all__:
        if name == "__version__":
            continue
        obj = getattr(mlmkit, name)
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            missing += [f"{name}.{m}" for m, f in _public_members(obj)
                        if not (f.__doc__ or "").strip()]
    assert missing == []
    assert "Call self" not in (mlmkit.Scorer.__call__.__doc__ or "")
    assert "pseudo-log-likelihood" in mlmkit.Scorer.__call__.__doc__
    assert "top_k" in mlmkit.FillMask.__call__.__doc__


def test_eval_of_a_run_trained_on_python_texts_asks_for_data(tmp_path, capsys, tiny_roberta,
                                                             sample_texts):
    from mlmkit import run_eval, train

    out = tmp_path / "run"
    train(model=str(tiny_roberta), data=sample_texts[:100], output=str(out), max_steps=1,
          batch_size=8, block_size=32, skip_base_eval=True)
    with pytest.raises(MlmkitError) as e:
        run_eval(EvalConfig(model=str(out)))
    message = str(e.value)
    assert "this run was trained on texts passed in Python" in message
    assert message.endswith("pass data=... (the texts to evaluate on)")
    assert "HF_HUB_OFFLINE" not in message
    metrics, _ = run_eval(EvalConfig(model=str(out), data=sample_texts[:100], block_size=32))
    assert metrics.perplexity > 1
    assert main(["eval", "--model", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith("pass --data DATA (the texts to evaluate on)")


def cli(*argv) -> tuple[int, str, str]:
    """The command as a process of its own, its logging set up as a user's would be."""
    proc = subprocess.run([sys.executable, "-m", "mlmkit.cli.main", *map(str, argv)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return proc.returncode, proc.stdout, proc.stderr


def test_quiet_in_a_config_file_silences_what_the_flag_does(tmp_path, tiny_roberta,
                                                           sample_path):
    """`quiet: true` in --config's file leaves the result only, as --quiet does: no "mlmkit:
    data: ..." lines, no progress lines on a log (without either, tests/e2e/test_cli_output.py
    sees both)."""
    train = ["train", "--model", tiny_roberta, "--data", sample_path, "--text-field",
             "answers.text", "--limit", 120, "--block-size", 32, "--max-steps", 2,
             "--log-every", 1]
    (tmp_path / "quiet.toml").write_text("quiet = true\n")
    (tmp_path / "quiet.json").write_text('{"quiet": true}')
    code, flagged, err = cli(*train, "--output", tmp_path / "flag", "--quiet")
    assert (code, err) == (0, "") and flagged.startswith(f"saved {tmp_path / 'flag'} (2 steps")
    code, filed, err = cli(*train, "--output", tmp_path / "file", "--config",
                           tmp_path / "quiet.toml")
    assert (code, err) == (0, "")
    assert filed.startswith(f"saved {tmp_path / 'file'} (2 steps")
    assert len(filed.splitlines()) == len(flagged.splitlines())
    code, out, err = cli("eval", "--model", tmp_path / "file", "--config",
                         tmp_path / "quiet.json")
    assert (code, err) == (0, "") and out.startswith(f"{tmp_path / 'file'}: perplexity ")
