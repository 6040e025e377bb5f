"""What the command line prints: progress bars only on a terminal (a log file or a pipe gets no
carriage returns), and with --quiet only the result (and errors)."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from mlmkit.cli.main import main


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def run_dir(trained_roberta):
    return trained_roberta[0].output


def test_eval_draws_bars_on_a_terminal_only(capsys, monkeypatch, run_dir):
    code, out, err = run(capsys, "eval", "--model", run_dir)  # stderr captured: not a terminal
    assert code == 0 and "perplexity" in out
    assert "\r" not in err and "evaluating" not in err
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code, out, _ = run(capsys, "eval", "--model", run_dir)
    assert code == 0 and "\r" in terminal.getvalue() and "evaluating" in terminal.getvalue()


@pytest.mark.parametrize("command", ["fill", "score"])
def test_fill_and_score_into_a_file_draw_bars_on_a_terminal_only(
        capsys, monkeypatch, tmp_path, run_dir, command):
    text = "The sun is a <mask> star." if command == "fill" else "The sun is a star."
    (tmp_path / "in.txt").write_text(f"{text}\n{text}\n")
    argv = [command, run_dir, "--input", tmp_path / "in.txt", "--output", tmp_path / "o.jsonl"]
    code, out, err = run(capsys, *argv)
    assert (code, out, err) == (0, "", "")  # a log gets no bar
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 2
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert run(capsys, *argv)[0] == 0
    assert "\r" in terminal.getvalue() and "2 lines" in terminal.getvalue()


def cli(*argv):
    """The command as a process of its own: its logging set up as a user's would be."""
    proc = subprocess.run([sys.executable, "-m", "mlmkit.cli.main", *map(str, argv)],
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_quiet_train_and_eval_print_the_result_only(tmp_path, tiny_roberta, sample_path):
    out_dir = tmp_path / "run"
    train = ["train", "--model", tiny_roberta, "--data", sample_path, "--text-field",
             "answers.text", "--limit", 120, "--block-size", 32, "--max-steps", 2]
    code, out, err = cli(*train, "--output", out_dir, "--quiet")
    assert (code, err) == (0, "")
    assert out.startswith(f"saved {out_dir} (2 steps") and "perplexity after" in out
    code, out, err = cli("eval", "--model", out_dir, "--quiet")
    assert (code, err) == (0, "") and out.startswith(f"{out_dir}: perplexity ")
    assert len(out.splitlines()) == 1
    # Errors still show, in one line.
    code, out, err = cli("eval", "--model", out_dir, "--quiet", "--block-size", 100000)
    assert (code, out) == (2, "") and err.startswith("error: --block-size 100000")
    # Without --quiet, the same run says what it is doing (on stderr, the result on stdout).
    code, out, err = cli(*train, "--output", tmp_path / "loud")
    assert code == 0 and "mlmkit: data: 120 records" in err and "\r" not in err
