"""The command line trains, evaluates and fills like the library, takes settings from YAML/TOML
files with flags winning, and turns every bad input into one 'error:' line and exit code 2."""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import types
from dataclasses import fields
from pathlib import Path

import pytest

from mlmkit.cli.flags import settings_from as _config
from mlmkit.cli.main import build_parser, main
from mlmkit.config import EvalConfig, TrainConfig
from mlmkit.settings import GROUPS


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def train_args(model, data, out, *extra) -> list[str]:
    return ["train", "--model", model, "--data", data, "--text-field", "answers.text",
            "--limit", "100", "--block-size", "64", "--batch-size", "8", "--max-steps", "3",
            "--learning-rate", "1e-3", "--output", out, "--quiet", *extra]


def assert_records_equal(ours, theirs):
    assert len(ours) == len(theirs)
    for o, t in zip(ours, theirs):
        assert (o["token"], o["token_str"], o["sequence"]) == (
            t["token"], t["token_str"], t["sequence"])
        assert o["score"] == pytest.approx(t["score"], abs=1e-5)


@pytest.fixture(scope="module")
def model_dir(trained_roberta) -> Path:
    return Path(trained_roberta[0].output)


@pytest.fixture(scope="module")
def pipe(model_dir):
    from transformers import pipeline

    return pipeline("fill-mask", model=str(model_dir), device="cpu")


# --------------------------------------------------------------------------- happy paths


def test_train_prints_perplexity_before_and_after(capsys, tiny_roberta, sample_path, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, *train_args(tiny_roberta, sample_path, out))
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"perplexity before: {metrics['base']['perplexity']:.3f}" in stdout
    assert f"perplexity after:  {metrics['final']['perplexity']:.3f}" in stdout
    assert f"saved {out} (3 steps" in stdout
    for when in ("base", "final"):
        m = metrics[when]
        assert (f"top-1 accuracy {m['accuracy']:.1%}, top-5 {m['top5_accuracy']:.1%}"
                in stdout)


def test_eval_json_matches_training_metrics(capsys, trained_roberta, model_dir):
    cfg, _ = trained_roberta
    code, stdout, err = run(capsys, "eval", "--model", model_dir, "--data", cfg.data,
                            "--text-field", "answers.text", "--limit", cfg.limit,
                            "--block-size", cfg.block_size, "--json", "--quiet")
    assert code == 0, err
    got = json.loads(stdout)
    final = json.loads((model_dir / "metrics.json").read_text())["final"]
    assert got["model"] == str(model_dir) and got["tokens"] == final["tokens"]
    assert got["perplexity"] == pytest.approx(final["perplexity"], rel=1e-5)
    code, stdout, _ = run(capsys, "eval", "--model", model_dir, "--data", cfg.data,
                          "--text-field", "answers.text", "--limit", cfg.limit,
                          "--block-size", cfg.block_size, "--quiet")
    assert code == 0 and f"perplexity {final['perplexity']:.3f}" in stdout


@pytest.mark.parametrize("batching", [[], ["--batch-size", "1"], ["--max-tokens", "12"]])
def test_fill_json_equals_pipeline(capsys, model_dir, pipe, batching):
    texts = ["The sun is a <mask> star.", "Birds <mask> south and <mask> back."]
    code, stdout, err = run(capsys, "fill", model_dir, *texts, "--json", "--top-k", "3",
                            *batching)
    assert code == 0, err
    lines = [json.loads(x) for x in stdout.splitlines()]
    assert len(lines) == 2
    assert_records_equal(lines[0], pipe(texts[0], top_k=3))
    theirs = pipe(texts[1], top_k=3)
    assert len(lines[1]) == 2
    for o, t in zip(lines[1], theirs):
        assert_records_equal(o, t)


def test_fill_plain_output(capsys, model_dir, pipe):
    code, stdout, _ = run(capsys, "fill", model_dir, "The sun is a <mask> star.", "--top-k", "2")
    best = pipe("The sun is a <mask> star.", top_k=2)
    assert code == 0
    assert stdout.splitlines() == [f"{r['score']:.4f}  {r['sequence']}" for r in best]


def test_fill_reads_stdin(capsys, monkeypatch, model_dir, pipe):
    texts = ["Water <mask> at 100 degrees.", "The <mask> is blue."]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(texts) + "\n"))
    code, stdout, err = run(capsys, "fill", model_dir, "--json", "--top-k", "2")
    assert code == 0, err
    lines = stdout.splitlines()
    assert len(lines) == 2
    for line, text in zip(lines, texts):
        assert_records_equal(json.loads(line), pipe(text, top_k=2))


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_fill_input_file_to_output_with_error_records(capsys, model_dir, pipe, tmp_path, suffix):
    texts = ["The sun is a <mask> star.", "nothing to fill", "Why is the <mask> blue?"]
    src = tmp_path / f"in{suffix}"
    if suffix == ".txt":
        src.write_text("\n".join(texts) + "\n")
    else:
        src.write_text("\n".join([json.dumps({"text": texts[0]}), json.dumps({"text": texts[1]}),
                                  "{not json", json.dumps({"text": texts[2]})]) + "\n")
    dst = tmp_path / "out.jsonl"
    code, stdout, err = run(capsys, "fill", model_dir, "--input", src, "--output", dst,
                            "--top-k", "2", "--quiet")
    assert code == 1 and stdout == ""
    recs = [json.loads(x) for x in dst.read_text().splitlines()]
    bad = [2] if suffix == ".txt" else [2, 3]
    assert len(recs) == len(texts) + len(bad) - 1
    assert [r["line"] for r in recs if isinstance(r, dict)] == bad
    assert all("error" in r for r in recs if isinstance(r, dict))
    good = [r for r in recs if isinstance(r, list)]
    assert_records_equal(good[0], pipe(texts[0], top_k=2))
    assert_records_equal(good[1], pipe(texts[2], top_k=2))
    assert f"{len(bad)} of {len(recs)} lines could not be filled" in err


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_config_file_values_used_and_flags_win(capsys, tmp_path, tiny_roberta, sample_path,
                                               suffix):
    settings = {"model": str(tiny_roberta), "data": str(sample_path), "text-field": "answers.text",
                "limit": 100, "block-size": 32, "eval-seed": 5, "quiet": True}
    path = tmp_path / f"c{suffix}"
    if suffix == ".yaml":
        path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    else:
        path.write_text("".join(f"{k} = {json.dumps(v).lower() if v is True else json.dumps(v)}\n"
                                for k, v in settings.items()))
    from mlmkit import EvalConfig, run_eval

    code, stdout, err = run(capsys, "eval", "--config", path, "--json")
    assert code == 0, err
    want, _ = run_eval(EvalConfig(model=str(tiny_roberta), data=str(sample_path),
                                  text_field=["answers.text"], limit=100, block_size=32,
                                  eval_seed=5, quiet=True))
    assert json.loads(stdout)["perplexity"] == pytest.approx(want.perplexity, rel=1e-9)
    code, stdout, _ = run(capsys, "eval", "--config", path, "--eval-seed", "9")
    assert code == 0 and "(eval seed 9)" in stdout


def test_train_config_file_and_flag_precedence(capsys, tmp_path, tiny_roberta, sample_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {tiny_roberta}\ndata: {sample_path}\ntext_field: [answers.text]\n"
                    "limit: 100\nblock-size: 32\nmax-steps: 5\nlearning-rate: 0.002\n"
                    "skip-base-eval: true\nquiet: true\n")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "train", "--config", path, "--max-steps", "2",
                            "--output", out)
    assert code == 0, err
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["max_steps"], saved["block_size"], saved["learning_rate"]) == (2, 32, 0.002)
    assert "(2 steps" in stdout and "perplexity before" not in stdout


def test_entry_point_runs_as_a_real_process(model_dir, pipe):
    exe = Path(sys.executable).with_name("mlmkit")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "mlmkit.cli.main"]
    text = "The sun is a <mask> star."
    proc = subprocess.run([*cmd, "fill", str(model_dir), text, "--json", "--top-k", "2"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert_records_equal(json.loads(proc.stdout), pipe(text, top_k=2))


STARTUP_PROBE = """import json, sys
from mlmkit.cli.flags import settings_from as _config
from mlmkit.cli.main import build_parser, main
from mlmkit.config import EvalConfig, TrainConfig
from mlmkit.settings import GROUPS
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps([code, [m for m in ("torch", "transformers", "numpy") if m in sys.modules]]))
"""


@pytest.mark.parametrize("argv,code", [
    (["--help"], 0), (["train", "--help"], 0), (["eval", "--help"], 0), (["fill", "-h"], 0),
    (["serve", "--help"], 0), (["demo", "--help"], 0), ([], 2), (["train", "--no-such"], 2),
    (["fill"], 2), (["train", "--epochs", "many"], 2)])
def test_help_and_usage_errors_load_no_heavy_library(argv, code):
    # Not a timed test: what made `mlmkit --help` take seconds was importing these.
    proc = subprocess.run([sys.executable, "-c", STARTUP_PROBE, *argv], capture_output=True,
                          text=True, timeout=120)
    assert json.loads(proc.stdout.splitlines()[-1]) == [code, []], proc.stderr


def help_of(capsys, *command: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def sections_of(text: str) -> dict[str, str]:
    """Help text by section heading ('data', 'examples', ...); the description is ''."""
    out: dict[str, list[str]] = {"": []}
    key = ""
    for line in text.splitlines()[1:]:
        if re.fullmatch(r"[a-z][^:]*:", line):
            key = line[:-1]
            out[key] = []
        else:
            out[key].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


@pytest.mark.parametrize("command", ["", "train", "eval", "fill", "score", "serve", "demo",
                                     "vocab"])
def test_help_has_a_description_and_examples_that_parse(capsys, command):
    text = help_of(capsys, *command.split())
    description = text.split("\n\n")[1]  # after the usage lines
    assert len(description.split()) >= 12, text
    examples = sections_of(text)["examples"].replace("\\\n", " ").splitlines()
    runs = [shlex.split(line.split("| ")[-1], comments=True) for line in examples
            if line.strip().startswith(("mlmkit ", "cat "))]
    assert runs, text
    for argv in runs:  # every example is a command line this version accepts
        assert argv[0] == "mlmkit"
        build_parser().parse_args(argv[1:])
    commands = {argv[1] for argv in runs}
    every = {"train", "eval", "fill", "score", "serve", "demo", "vocab"}
    assert commands == (every if not command else {command})


def test_train_help_lists_each_setting_in_its_section(capsys):
    sections = sections_of(help_of(capsys, "train"))
    assert [k for k in sections if k in GROUPS.values()] == list(GROUPS.values())
    for f in fields(TrainConfig):
        kebab = f.name.replace("_", "-")
        section = sections[GROUPS[f.metadata["group"]]]
        assert re.search(rf"^  --(no-)?{kebab}\b", section, re.M), (f.name, section)
    eval_sections = sections_of(help_of(capsys, "eval"))
    assert "--all-records" in eval_sections["data"] and "--device" in eval_sections["performance"]


RUN_MLM_ARGS = {  # run_mlm.py's name -> (mlmkit's flag, a value other than the default)
    "--model_name_or_path": ("--model", "some/model"), "--train_file": ("--data", "a.jsonl"),
    "--validation_file": ("--eval-data", "b.jsonl"), "--output_dir": ("--output", "out"),
    "--per_device_train_batch_size": ("--batch-size", "4"),
    "--per_device_eval_batch_size": ("--eval-batch-size", "16"),
    "--num_train_epochs": ("--epochs", "1"), "--mlm_probability": ("--mlm-probability", "0.2"),
    "--max_seq_length": ("--block-size", "64"), "--learning_rate": ("--learning-rate", "5e-5"),
    "--weight_decay": ("--weight-decay", "0.1"), "--seed": ("--seed", "7"),
    "--line_by_line": ("--line-by-line", None), "--overwrite_output_dir": ("--overwrite", None),
    "--warmup_ratio": ("--warmup-ratio", "0.1"), "--max_steps": ("--max-steps", "10"),
    "--gradient_accumulation_steps": ("--gradient-accumulation-steps", "2"),
    "--save_total_limit": ("--save-total-limit", "2"), "--report_to": ("--report-to", "mlflow"),
    "--dataset_config_name": ("--data-config", "plain"),
    "--text_field": ("--text-field", "answers.text"),
    "--no_sparse_head": ("--no-sparse-head", None),
    "--eval_every": ("--eval-every", "5"),
}


def argv_of(pairs) -> list[str]:
    return [x for flag, value in pairs for x in (flag, value) if x is not None]


def test_run_mlm_names_build_the_same_config(capsys, monkeypatch, tmp_path):
    captured = []

    def fake_train(cfg, command=None, reads=()):
        captured.append(cfg)
        return types.SimpleNamespace(finished_before=True, output_dir=cfg.output, steps=0,
                                     hub_url=None)

    monkeypatch.setattr(importlib.import_module("mlmkit.training.runner"), "train",
                        fake_train)
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 5\nlimit: 50\n")  # flags, whichever spelling, win over the file
    ours = argv_of(RUN_MLM_ARGS.values())
    theirs = argv_of((alias, value) for alias, (_, value) in RUN_MLM_ARGS.items())
    for argv in (ours, theirs):
        assert main(["train", "--config", str(config), *argv]) == 0, capsys.readouterr().err
    assert captured[0] == captured[1]
    cfg = captured[1]
    assert (cfg.model, cfg.data, cfg.eval_data, cfg.output, cfg.epochs, cfg.limit) == (
        "some/model", "a.jsonl", "b.jsonl", "out", 1.0, 50)
    assert (cfg.batch_size, cfg.block_size, cfg.line_by_line, cfg.sparse_head) == (
        4, 64, True, False)

    parse = build_parser().parse_args
    assert parse(["train", "--dataset_name", "eli5_category"]).data == "eli5_category"
    assert parse(["train", "--resume_from_checkpoint", "my-model"]).resume == "my-model"
    # an abbreviation of a flag and its alias alone is one setting, not an ambiguity
    assert parse(["train", "--learning", "3e-4", "--block", "32"]).learning_rate == 3e-4
    ns = parse(["eval", "--model_name_or_path", "m", "--per_device_eval_batch_size", "8",
                "--max_seq_length", "32", "--all_records"])
    cfg = _config(EvalConfig, ns)
    assert (cfg.model, cfg.eval_batch_size, cfg.block_size, cfg.all_records) == ("m", 8, 32, True)
    with pytest.raises(SystemExit):
        parse(["train", "--num_train_epochs", "many"])
    assert "argument --num_train_epochs: invalid float value" in capsys.readouterr().err


def test_aliases_are_hidden_from_the_lists_and_shown_in_their_own_section(capsys):
    for command in ("eval", "train"):
        sections = sections_of(help_of(capsys, command))
        title = next(k for k in sections if k.startswith("run_mlm.py names"))
        shown = sections[title]
        listed = "\n".join(v for k, v in sections.items() if k != title)
        for alias in ("--model_name_or_path", "--train_file", "--max_seq_length",
                      "--learning_rate", "--no_sparse_head", "--text_field"):
            assert alias not in listed, (command, alias)
        assert "--model_name_or_path" in shown and "--max_seq_length" in shown
        assert ("--num_train_epochs" in shown) == (command == "train")
    # `shown` is train's section now: every run_mlm.py name is in it
    for alias in [*RUN_MLM_ARGS, "--dataset_name", "--resume_from_checkpoint"]:
        assert alias in shown or alias in ("--text_field", "--no_sparse_head", "--eval_every")


# run_mlm.py's README command for one's own files, verbatim but for the model, the files and
# --max_steps (examples/pytorch/language-modeling/README.md of huggingface/transformers).
RUN_MLM_README = """python run_mlm.py \\
    --model_name_or_path roberta-base \\
    --train_file path_to_train_file \\
    --validation_file path_to_validation_file \\
    --per_device_train_batch_size 8 \\
    --per_device_eval_batch_size 8 \\
    --do_train \\
    --do_eval \\
    --output_dir /tmp/test-mlm"""


def test_a_pasted_run_mlm_command_trains_to_the_end(capsys, tiny_roberta, sample_records,
                                                    tmp_path):
    texts = [" ".join(r["answers"]["text"]) for r in sample_records[:60]]
    (tmp_path / "train.txt").write_text("\n".join(texts[:50]) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(texts[50:]) + "\n")
    out = tmp_path / "test-mlm"
    command = (RUN_MLM_README.replace("roberta-base", str(tiny_roberta))
               .replace("path_to_train_file", str(tmp_path / "train.txt"))
               .replace("path_to_validation_file", str(tmp_path / "valid.txt"))
               .replace("/tmp/test-mlm", str(out)) + " --max_steps 2")
    argv = shlex.split(command.replace("\\\n", " "))[2:]
    code, stdout, err = run(capsys, "train", *argv)
    assert code == 0, err
    assert f"saved {out} (2 steps" in stdout
    assert "note: --do_train: accepted, no effect" in err
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["data"], saved["eval_data"]) == (str(tmp_path / "train.txt"),
                                                   str(tmp_path / "valid.txt"))
    assert (saved["batch_size"], saved["eval_batch_size"], saved["max_steps"]) == (8, 8, 2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["perplexity"] > 1


# The same lines through every way in: two to fill, one without a mask, two blank ones.
LINES = ["The sun is a <mask> star.", "", "nothing to fill", "   ", "Why is the <mask> blue?"]


@pytest.mark.parametrize("way", ["stdin", "-", "--input -", "--input file"])
def test_fill_reads_stdin_and_input_files_alike(way, capsys, monkeypatch, model_dir, pipe,
                                                tmp_path):
    """Blank lines skipped and counted, a bad line reported by its number in its place, the
    rest filled, exit 1 with the counts."""
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(LINES) + "\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(src.read_text()))
    args = {"stdin": [], "-": ["-"], "--input -": ["--input", "-"],
            "--input file": ["--input", src]}[way]
    code, stdout, err = run(capsys, "fill", model_dir, *args, "--json", "--top-k", "2")
    name = src if way == "--input file" else "stdin"
    recs = [json.loads(x) for x in stdout.splitlines()]
    assert code == 1 and len(recs) == 3
    assert_records_equal(recs[0], pipe(LINES[0], top_k=2))
    assert recs[1]["line"] == 3 and recs[1]["error"].startswith(f"{name}: line 3: no mask token")
    assert_records_equal(recs[2], pipe(LINES[4], top_k=2))
    assert err.strip() == "mlmkit: 1 of 3 lines could not be filled; 2 blank lines skipped"


def test_fill_plain_output_reports_bad_lines_on_stderr_and_goes_on(capsys, monkeypatch,
                                                                   model_dir, pipe):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(LINES) + "\n"))
    code, stdout, err = run(capsys, "fill", model_dir, "--top-k", "1")
    best = [pipe(t, top_k=1)[0] for t in (LINES[0], LINES[4])]
    assert code == 1
    assert stdout.splitlines() == [f"{best[0]['score']:.4f}  {best[0]['sequence']}", "",
                                   f"{best[1]['score']:.4f}  {best[1]['sequence']}"]
    lines = err.splitlines()
    assert lines[0].startswith("error: stdin: line 3: no mask token")
    assert lines[1:] == ["mlmkit: 1 of 3 lines could not be filled; 2 blank lines skipped"]


def test_fill_blank_lines_alone_are_no_failure(capsys, monkeypatch, model_dir):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\nThe sun is a <mask> star.\n\n"))
    code, stdout, err = run(capsys, "fill", model_dir, "--json")
    assert code == 0 and len(stdout.splitlines()) == 1
    assert err.strip() == "mlmkit: 2 blank lines skipped"


def test_fill_input_dev_stdin_in_a_real_process(model_dir, pipe):
    exe = Path(sys.executable).with_name("mlmkit")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "mlmkit.cli.main"]
    proc = subprocess.run([*cmd, "fill", str(model_dir), "--input", "/dev/stdin", "--json",
                           "--top-k", "2"], input="\n".join(LINES) + "\n", capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    recs = [json.loads(x) for x in proc.stdout.splitlines()]
    assert proc.returncode == 1 and len(recs) == 3, proc.stderr
    assert recs[1]["error"].startswith("/dev/stdin: line 3: no mask token")
    assert_records_equal(recs[2], pipe(LINES[4], top_k=2))
    assert proc.stderr.strip().endswith("1 of 3 lines could not be filled; 2 blank lines skipped")


def test_fill_jsonl_lines_that_hold_no_text_are_named():
    from mlmkit.io.inputs import LineTally, numbered_lines

    lines = [b'{"text": 3}\n', b'"a <mask>"\n', b'{"title": "x"}\n', b"[1\n", b"\r\n"]
    tally = LineTally()
    assert list(numbered_lines(lines, True, tally)) == [
        (1, None, "the text is not a string but int"), (2, "a <mask>", None),
        (3, None, "no 'text' field"), (4, None, "invalid JSON (Expecting ',' delimiter)")]
    assert tally.blank == 1


def test_fill_paths_are_checked_before_the_model_loads(capsys, monkeypatch, model_dir,
                                                       tmp_path):
    from mlmkit.modeling import load as model

    def never(*a, **k):
        raise AssertionError("the model loaded before the paths were checked")

    monkeypatch.setattr(model, "load_tokenizer", never)
    src = tmp_path / "in.txt"
    src.write_text("The sun is a <mask> star.\n")
    missing = tmp_path / "no-such-dir" / "out.jsonl"
    code, _, err = run(capsys, "fill", model_dir, "--input", src, "--output", missing)
    assert_one_line_error(code, err, f"--output {missing}: directory {missing.parent} does not "
                          "exist; expected a file in an existing directory")
    assert not missing.parent.exists()
    code, _, err = run(capsys, "fill", model_dir, "--input", tmp_path / "nope.txt")
    assert_one_line_error(code, err, "--input", "nope.txt: file not found", "- for stdin")
    code, _, err = run(capsys, "fill", model_dir, "--input", tmp_path)
    assert_one_line_error(code, err, "is a directory")
    code, _, err = run(capsys, "fill", model_dir, "a <mask>", "--input", src)
    assert_one_line_error(code, err, "--input: given along with texts on the command line")


# --------------------------------------------------------------------------- bad inputs


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "\r" not in err, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def write_jsonl(path: Path, recs: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


BAD_DATA = {
    "missing file": (lambda d: d / "nope.jsonl", ["nope.jsonl", "not found"]),
    "unknown field": (lambda d: write_jsonl(d / "c.jsonl", [{"title": "t", "answers": {
        "text": ["a"], "score": [1]}}]), ["'answers.txt'", "title", "answers.text",
                                          "answers.score", "line 1"]),
    "list of ints": (lambda d: write_jsonl(d / "c.jsonl", [{"answers": {"text": ["a"],
                                                                     "score": [3]}}]),
                     ["'answers.score'", "list of int", "expected text"]),
    "dict field": (lambda d: write_jsonl(d / "c.jsonl", [{"answers": {"text": ["a"]}}]),
                   ["'answers'", "dict", "expected text"]),
    "empty corpus": (lambda d: write_jsonl(d / "c.jsonl", []), ["no records"]),
    "shorter than a block": (lambda d: write_jsonl(d / "c.jsonl", [{"answers": {
        "text": ["just a few words"]}}] * 3), ["less than one block", "--block-size"]),
    "invalid JSON line": (lambda d: (d / "c.jsonl").write_text(
        '{"answers": {"text": ["a b c"]}}\n{"answers": {"text": ["oops"]}\n') and d / "c.jsonl",
                          ["c.jsonl: line 2", "invalid JSON"]),
    "not UTF-8": (lambda d: (d / "c.jsonl").write_bytes(
        b'{"answers": {"text": ["a b c"]}}\n{"answers": {"text": ["caf\xe9"]}}\n')
                  and d / "c.jsonl",
                  ["c.jsonl: line 2", "byte 0xe9 at offset 59", "expected UTF-8 text"]),
}
FIELD = {"unknown field": "answers.txt", "list of ints": "answers.score", "dict field": "answers"}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_corpus_is_one_error_line_and_creates_nothing(case, capsys, tmp_path, tiny_roberta):
    make, needles = BAD_DATA[case]
    data = make(tmp_path)
    out = tmp_path / "out"
    args = train_args(tiny_roberta, data, out)
    args[args.index("answers.text")] = FIELD.get(case, "answers.text")
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


def test_error_after_a_progress_bar_starts_its_own_line(capsys, tmp_path, tiny_roberta):
    data = write_jsonl(tmp_path / "c.jsonl", [{"answers": {"text": ["a"]}}])
    args = train_args(tiny_roberta, data, tmp_path / "out")
    args.remove("--quiet")  # progress bars on, as a user at a terminal has them
    args[args.index("answers.text")] = "answers.txt"
    code, _, err = run(capsys, *args)
    # What a terminal shows: the text after the last carriage return of each line.
    shown = [seg.split("\r")[-1] for seg in err.split("\n")]
    assert [s for s in shown if s.strip()] == [shown[0]] and code == 2
    assert shown[0].startswith("error: ") and "no field 'answers.txt'" in shown[0]


def test_block_size_above_max_positions(capsys, tmp_path, tiny_roberta, sample_path):
    out = tmp_path / "out"
    args = train_args(tiny_roberta, sample_path, out)
    args[args.index("--block-size") + 1] = "1024"
    assert_one_line_error(*run(capsys, *args)[::2], "--block-size 1024", "512")
    assert not out.exists()
    code, _, err = run(capsys, "eval", "--model", tiny_roberta, "--data", sample_path,
                       "--text-field", "answers.text", "--block-size", "600")
    assert_one_line_error(code, err, "--block-size 600")


def test_non_empty_output_without_overwrite(capsys, tmp_path, tiny_roberta, sample_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run(capsys, *train_args(tiny_roberta, sample_path, out))
    assert_one_line_error(code, err, str(out), "--overwrite")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_fill_text_without_mask(capsys, model_dir):
    code, stdout, err = run(capsys, "fill", model_dir, "nothing to fill here")
    assert_one_line_error(code, err, "no mask token", "<mask>")
    assert stdout == ""


@pytest.mark.parametrize("command", ["train", "eval", "fill", "score"])
def test_unreachable_hub_suggests_local_paths(command, capsys, monkeypatch, tmp_path,
                                              sample_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = "no-such-org/no-such-model"
    out = tmp_path / "out"
    if command == "train":
        argv = train_args(model, sample_path, out)
    elif command == "eval":
        argv = ["eval", "--model", model, "--data", str(sample_path)]
    else:
        argv = [command, model, "a <mask> b"]
    code, _, err = run(capsys, *argv)
    line = assert_one_line_error(code, err, model, "HF_HUB_OFFLINE")
    assert "local model directory" in line
    assert not out.exists()


def _argv(command, model, sample_path, out):
    return {"train": train_args(model, sample_path, out),
            "eval": ["eval", "--model", model, "--data", str(sample_path)],
            "fill": ["fill", model, "a <mask> b"],
            "score": ["score", model, "a b c"]}[command]


@pytest.mark.parametrize("command", ["train", "eval", "fill", "score"])
def test_mistyped_model_path_is_one_line_at_once(command, capsys, monkeypatch, tmp_path,
                                                 sample_path, tiny_roberta, fake_hub):
    """The newcomer's `--model assets/tiny-robrta`: no Hub request, no retry, and the name
    meant (it took 49 s and 48 lines of retry warnings)."""
    import shutil

    shutil.copytree(tiny_roberta, tmp_path / "assets" / "tiny-roberta")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *_argv(command, "assets/tiny-robrta", sample_path, "out"))
    assert_one_line_error(code, err, "model assets/tiny-robrta: no such local directory (did "
                          "you mean assets/tiny-roberta?)")
    assert fake_hub.requests == [] and fake_hub.sleeps == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["assets"]


@pytest.mark.parametrize("command", ["train", "eval", "fill", "score"])
def test_unreachable_hub_is_one_request_and_one_line(command, capsys, tmp_path, sample_path,
                                                     fake_hub):
    code, _, err = run(capsys, *_argv(command, "no-such-org/no-such-model", sample_path,
                                      tmp_path / "out"))
    assert_one_line_error(code, err, "no-such-org/no-such-model", "cannot be reached",
                          "local model directory")
    assert len(fake_hub.requests) == 1 and fake_hub.sleeps == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_split_local_files_do_not_have_is_one_line(command, capsys, tmp_path, tiny_roberta,
                                                     sample_path):
    """It was ignored: `--split test` trained or scored the same records as `--split train`."""
    out = tmp_path / "out"
    argv = (train_args(tiny_roberta, sample_path, out) if command == "train" else
            ["eval", "--model", tiny_roberta, "--data", sample_path])
    code, _, err = run(capsys, *argv, "--split", "test")
    assert_one_line_error(code, err, "--split test: local files are one split, 'train'")
    assert not out.exists() and not any(Path(os.environ["MLMKIT_CACHE"]).iterdir())


def test_bad_config_file_and_unknown_setting(capsys, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("block-size = 64\nlearning-rat = 1\n")
    code, _, err = run(capsys, "train", "--config", path, "--output", tmp_path / "o")
    assert_one_line_error(code, err, "learning_rat")
    code, _, err = run(capsys, "train", "--config", tmp_path / "missing.yaml")
    assert_one_line_error(code, err, "missing.yaml", "not found")


# --------------------------------------------------------------------------- data safety


def test_fill_refuses_to_write_over_its_input(capsys, model_dir, tmp_path):
    src = tmp_path / "texts.txt"
    src.write_text("The sun is a <mask> star.\n")
    (tmp_path / "alias.txt").symlink_to(src)
    (tmp_path / "sub").mkdir()
    for out in (src, tmp_path / "alias.txt", tmp_path / "sub" / ".." / "texts.txt"):
        code, _, err = run(capsys, "fill", model_dir, "--input", src, "--output", out)
        assert_one_line_error(code, err, "is the --input file")
    assert src.read_text() == "The sun is a <mask> star.\n"


def test_fill_output_appears_whole_or_not_at_all(capsys, model_dir, tmp_path, monkeypatch):
    from mlmkit.inference import fill

    src, dst = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("The sun is a <mask> star.\n" * 40)
    dst.write_text("an earlier result\n")
    real = fill.FillMask.stream

    def dies_midway(self, texts, *a, **k):
        for i, r in enumerate(real(self, texts, *a, **k)):
            if i == 20:
                raise KeyboardInterrupt
            yield r

    monkeypatch.setattr(fill.FillMask, "stream", dies_midway)
    assert run(capsys, "fill", model_dir, "--input", src, "--output", dst, "--quiet")[0] == 130
    assert dst.read_text() == "an earlier result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.jsonl"]


def test_fill_input_that_is_not_utf8_gives_error_records_and_goes_on(capsys, model_dir, pipe,
                                                                    tmp_path):
    src, dst = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_bytes(b"The sun is a <mask> star.\ncaf\xe9 <mask>\nWhy is the <mask> blue?\n")
    code, _, err = run(capsys, "fill", model_dir, "--input", src, "--output", dst, "--quiet",
                       "--top-k", "2")
    recs = [json.loads(x) for x in dst.read_text().splitlines()]
    assert code == 1 and "1 of 3 lines could not be filled" in err
    assert recs[1] == {"line": 2, "error": f"{src}: line 2: not UTF-8 text (byte 0xe9 at "
                                           "column 4); expected UTF-8"}
    assert_records_equal(recs[2], pipe("Why is the <mask> blue?", top_k=2))


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory nobody can create files in, root included (chattr +i where chmod is not
    enough)."""
    d = tmp_path / "locked"
    d.mkdir()
    d.chmod(0o555)
    immutable = False
    try:
        (d / "probe").touch()
        (d / "probe").unlink()
        if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a directory unwritable here")
        immutable = True
    except PermissionError:
        pass
    yield d
    if immutable:
        subprocess.run(["chattr", "-i", str(d)], check=True)
    d.chmod(0o755)


@pytest.mark.parametrize("where", ["unwritable", "under a file"])
def test_outputs_that_cannot_be_written_are_one_line(capsys, model_dir, tiny_roberta,
                                                     sample_path, tmp_path, unwritable_dir,
                                                     where):
    (tmp_path / "a-file").write_text("x")
    base = unwritable_dir if where == "unwritable" else tmp_path / "a-file"
    needle = "cannot write in" if where == "unwritable" else "is a file, not a directory"
    src = tmp_path / "in.txt"
    src.write_text("The sun is a <mask> star.\n")
    code, _, err = run(capsys, *train_args(tiny_roberta, sample_path, base / "run"))
    assert_one_line_error(code, err, "--output", needle)
    code, _, err = run(capsys, "fill", model_dir, "--input", src, "--output", base / "o.jsonl")
    assert_one_line_error(code, err, f"--output {base / 'o.jsonl'}", needle)


# --------------------------------------------------------------------------- wrong settings


@pytest.mark.parametrize("device,needle", [("banana", "not a device; expected cpu, cuda"),
                                           ("cuda", "--device cuda: ")])
@pytest.mark.parametrize("command", ["fill", "score", "eval", "serve"])
def test_a_device_this_machine_lacks_is_one_line_before_anything_loads(
        command, device, needle, capsys, monkeypatch, tmp_path, sample_path):
    import importlib

    import torch

    if command == "serve":
        pytest.importorskip("fastapi")
        pytest.importorskip("uvicorn")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def never(*a, **k):
        raise AssertionError("loaded before the device was checked")

    monkeypatch.setattr(importlib.import_module("mlmkit.modeling.load"), "load_tokenizer", never)
    argv = {"fill": ["fill", tmp_path, "a <mask> b"], "score": ["score", tmp_path, "a b"],
            "serve": ["serve", tmp_path],
            "eval": ["eval", "--model", tmp_path, "--data", sample_path]}[command]
    code, _, err = run(capsys, *argv, "--device", device)
    assert_one_line_error(code, err, f"--device {device}: ", needle)
    assert not any(Path(os.environ["MLMKIT_CACHE"]).iterdir())  # no data was read either


@pytest.mark.parametrize("argv, message", [
    (["fill", "a <mask>", "--top-k", "0"], "top_k 0: expected a positive integer"),
    (["fill", "a <mask>", "--batch-size", "0"], "--batch-size 0: expected an integer >= 1"),
    (["score", "a b", "--rescore", "--weight", "nan"], "weight nan: expected a finite number"),
    (["score", "a b", "--max-tokens", "-1"], "--max-tokens -1: expected an integer >= 1"),
])
def test_bad_task_settings_are_one_line_before_loading(capsys, tmp_path, argv, message):
    # An empty directory for the model: loading it would fail, so each setting must be
    # refused before anything loads.
    code, out, err = run(capsys, argv[0], tmp_path, *argv[1:])
    assert (code, out, err) == (2, "", f"error: {message}\n")
