"""Errors speak the caller's language: the same bad setting names the keyword through the Python
API (block_size=1024) and the flag through the command line (--block-size 1024), one message
of each subpackage that names settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlmkit import EvalConfig, MlmkitError, audit_vocab, run_eval, train
from mlmkit.cli.main import main
from mlmkit.settings import speaking_cli


def cli_error(capsys, argv: list[str]) -> str:
    """The one line `mlmkit ARGV` prints on stderr, without its 'error: ', after exit 2."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err[len("error: "):]


def python_error(fn, *args, **kwargs) -> str:
    with pytest.raises(MlmkitError) as e:
        fn(*args, **kwargs)
    return str(e.value)


@pytest.fixture
def data(sample_path) -> dict:
    return {"data": str(sample_path), "text_field": ["answers.text"], "limit": 20}


def flags(settings: dict) -> list[str]:
    out = []
    for name, value in settings.items():
        out += [f"--{name.replace('_', '-')}", *(value if isinstance(value, list) else [value])]
    return out


def test_training_and_eval_block_size(tiny_roberta, data, tmp_path, capsys):
    train_kw = {"model": str(tiny_roberta), **data, "block_size": 1024}
    want = ": above the 512 positions model"
    assert python_error(train, **train_kw, output=str(tmp_path / "p")).startswith(
        "block_size=1024" + want)
    assert cli_error(capsys, ["train", *flags(train_kw), "--output", tmp_path / "c"]).startswith(
        "--block-size 1024" + want)
    assert python_error(run_eval, EvalConfig(**train_kw)).startswith("block_size=1024" + want)
    assert cli_error(capsys, ["eval", *flags(train_kw)]).startswith("--block-size 1024" + want)
    assert not (tmp_path / "p").exists() and not (tmp_path / "c").exists()


def test_corpus_too_short_for_one_block(tiny_roberta, tmp_path, capsys):
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "a few words"}) + "\n")
    kw = {"model": str(tiny_roberta), "data": str(short), "block_size": 64, "eval_fraction": 0}
    tail = "add text, lower {} or pass {}"
    assert python_error(train, **kw, output=str(tmp_path / "p")).endswith(
        tail.format("block_size", "pad_last_block=True"))
    assert cli_error(capsys, ["train", *flags(kw), "--output", tmp_path / "c"]).endswith(
        tail.format("--block-size", "--pad-last-block"))


def test_io_split_of_local_files(tiny_roberta, data, tmp_path, capsys):
    kw = {"model": str(tiny_roberta), **data, "split": "test"}
    assert python_error(train, **kw, output=str(tmp_path / "p")).startswith(
        "split='test': local files are one split, 'train'")
    assert cli_error(capsys, ["train", *flags(kw), "--output", tmp_path / "c"]).startswith(
        "--split test: local files are one split, 'train'")


def test_modeling_config_overrides(tiny_roberta, data, tmp_path, capsys):
    kw = {"model": str(tiny_roberta), **data, "config_overrides": "hidden_size=-3"}
    assert python_error(train, **kw, from_scratch=True, output=str(tmp_path / "p")).startswith(
        "config_overrides='hidden_size=-3': expected an integer >= 1")
    assert cli_error(capsys, ["train", *flags(kw), "--from-scratch", "--output", tmp_path / "c"]
                     ).startswith("--config-overrides hidden_size=-3: expected an integer >= 1")


def test_vocab_top(tiny_roberta, sample_path, capsys):
    assert python_error(audit_vocab, str(tiny_roberta), ["some text"], top=-1) == (
        "top=-1: expected 0 or more")
    assert cli_error(capsys, ["vocab", "audit", tiny_roberta, "--data", sample_path,
                              "--top", "-1"]) == "--top -1: expected 0 or more"


def test_batch_output_that_is_a_file(tiny_roberta, tmp_path, capsys):
    pytest.importorskip("ray")
    from mlmkit import BatchJob, run_batch

    texts, taken = tmp_path / "in.txt", tmp_path / "taken"
    texts.write_text("The <mask> is blue.\n")
    taken.write_text("mine")
    want = ": is a file; expected a directory"
    assert python_error(run_batch, BatchJob("fill", str(tiny_roberta)), str(texts), str(taken)
                        ).startswith(f"output={str(taken)!r}{want}")
    assert cli_error(capsys, ["fill", tiny_roberta, "--engine", "ray", "--input", texts,
                              "--output", taken]).startswith(f"--output {taken}{want}")
    assert taken.read_text() == "mine"


def test_server_limit(tiny_roberta):
    """The server's answer names its limit as whoever started it would set it: `mlmkit serve`
    runs inside `speaking_cli`, as `main` does for every command."""
    pytest.importorskip("fastapi")
    from mlmkit import FillMask, create_app
    from mlmkit.testing import call_app

    engine = FillMask(str(tiny_roberta), device="cpu")

    async def ask(client):
        return await client.post("/", json={"inputs": ["The <mask> is blue."] * 2,
                                            "parameters": {"top_k": 5}})

    def refusal() -> str:
        r = call_app(create_app(engine, max_request_candidates=5), ask)
        assert r.status_code == 413
        return r.json()["error"]

    assert refusal().endswith("(max_request_candidates)")
    with speaking_cli():
        assert refusal().endswith("(--max-request-candidates)")


def test_interrupted_run_says_how_to_continue(tmp_path):
    """A message that says a whole command: a command line to paste, or the keyword."""
    from types import SimpleNamespace

    from mlmkit.training.torch_recipe import Run

    run = SimpleNamespace(out=Path(tmp_path / "run"))
    assert Run._continue_with(run) == f"continue with resume='{run.out}'"
    with speaking_cli():
        assert Run._continue_with(run) == f"continue with: mlmkit train --resume {run.out}"
