"""A bad setting or a broken model directory is one `error:` line naming the flag (or file) and
what is allowed, exit code 2, no traceback, and nothing written: through the real command line,
for every case an adversarial run found (issue 25), and for a fuzz of every numeric setting."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mlmkit.cli.main import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def train_args(model, data, out, *extra) -> list:
    return ["train", "--model", model, "--data", data, "--text-field", "answers.text",
            "--limit", "60", "--block-size", "32", "--batch-size", "8", "--max-steps", "2",
            "--output", out, "--quiet", "--skip-base-eval", *extra]


def eval_args(model, data, *extra) -> list:
    return ["eval", "--model", model, "--data", data, "--text-field", "answers.text",
            "--limit", "40", "--block-size", "32", "--quiet", *extra]


def vocab_mismatch(model: Path, where: Path) -> Path:
    """The model with a config.json whose vocab_size disagrees with its weights (800)."""
    shutil.copytree(model, where)
    config = json.loads((where / "config.json").read_text())
    config["vocab_size"] = 900
    (where / "config.json").write_text(json.dumps(config))
    return where


def truncated(model: Path, where: Path) -> Path:
    """The model with its model.safetensors cut in half, as an interrupted copy leaves it."""
    shutil.copytree(model, where)
    weights = where / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return where


BROKEN = {"vocab_size": (vocab_mismatch, ["config.json", "vocab_size 900", "800",
                                          "model.safetensors"]),
          "truncated": (truncated, ["model.safetensors: truncated (", " bytes)",
                                    "re-download or re-export"])}

# flag, value, what the error line must say (the flag with its value, and the allowed range).
BAD_FLAGS = [
    ("--epochs", "inf", "expected a finite number > 0"),
    ("--log-every", "0", "expected an integer >= 1"),
    ("--adam-beta1", "2", "expected a finite number >= 0 and < 1"),
    ("--adam-epsilon", "-1", "expected a finite number > 0"),
    ("--num-workers", "-1", "expected an integer >= 0"),
    ("--max-grad-norm", "nan", "expected a finite number >= 0"),
    ("--warmup-steps", "-5", "expected an integer >= 0"),
    ("--save-every", "-1", "expected an integer >= 0"),
    ("--eval-every", "-3", "expected an integer >= 0"),
    ("--save-total-limit", "0", "expected an integer >= 1"),
    ("--config-overrides", "hidden_size=-3", "hidden_size=-3: expected an integer >= 1"),
]

CASES = ([pytest.param("broken", kind, command, id=f"{kind}-{command}")
          for kind in BROKEN for command in ("train", "eval", "fill")]
         + [pytest.param("flag", flag, value, id=f"{flag}={value}")
            for flag, value, _ in BAD_FLAGS]
         + [pytest.param("serve", "--port", "99999", id="serve--port=99999")])


def assert_refused(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("what, name, arg", CASES)
def test_bad_setting_is_one_line_naming_it_and_nothing_is_written(
        what, name, arg, capsys, tmp_path, tiny_roberta, sample_path):
    out = tmp_path / "out"
    cache = Path(os.environ["MLMKIT_CACHE"])
    if what == "broken":
        make, needles = BROKEN[name]
        model = make(tiny_roberta, tmp_path / "model")
        before = {p.name: p.read_bytes() for p in model.iterdir()}
        argv = {"train": train_args(model, sample_path, out),
                "eval": eval_args(model, sample_path),
                "fill": ["fill", model, "a <mask> here"]}[arg]
        assert_refused(*run(capsys, *argv), *needles)
        assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    elif what == "flag":
        flag, value, expected = next(c for c in BAD_FLAGS if c[:2] == (name, arg))
        scratch = ["--from-scratch"] if flag == "--config-overrides" else []
        argv = train_args(tiny_roberta, sample_path, out, flag, value, *scratch)
        assert_refused(*run(capsys, *argv), f"{flag} {value}", expected)
    else:
        argv = ["serve", tiny_roberta, name, arg]
        assert_refused(*run(capsys, *argv), f"{name} {arg}", "expected an integer >= 1 and "
                       "<= 65535")
    assert not out.exists()
    assert not any(cache.iterdir())  # refused before any data was read

