"""The metrics log writes each record to metrics.jsonl, to a real TensorBoard and as plain lines, and plot_curves draws a PNG."""  # noqa: E501

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from mlmkit.errors import MlmkitError
from mlmkit.settings import speaking_cli
from mlmkit.training.tracking import (
    CURVES_PNG,
    LOGS_DIR,
    TRACKERS,
    MetricsLog,
    _scalar_config,
    parse_report_to,
    plot_curves,
    progress_mode,
    tracker_init_kwargs,
)

EVENTS = [
    {"event": "eval", "step": 0, "epoch": 0.0, "loss": 4.5, "perplexity": 90.01713130052181,
     "tokens": 1200, "blocks": 10},
    {"event": "train", "step": 50, "epoch": 0.5, "loss": 3.214, "lr": 1e-4,
     "tokens_per_s": 12345.2},
    {"event": "train", "step": 100, "epoch": 1.0, "loss": 2.875, "lr": 5e-5,
     "tokens_per_s": 12001.9},
    {"event": "eval", "step": 100, "epoch": 1.0, "loss": 2.91, "perplexity": 18.356,
     "tokens": 1200, "blocks": 10},
]


def fresh_accelerator(**kwargs):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # Accelerate keeps process-wide singletons; each test's Accelerator starts clean.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(cpu=True, **kwargs)


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def f32(v: float) -> float:
    return float(np.float32(v))  # TensorBoard stores scalars as float32


def test_parse_report_to():
    assert parse_report_to("none") == parse_report_to("") == parse_report_to(None) == []
    assert parse_report_to("tensorboard,wandb") == ["tensorboard", "wandb"]
    assert parse_report_to(" TensorBoard , mlflow,tensorboard,") == ["tensorboard", "mlflow"]
    with pytest.raises(MlmkitError) as e:
        parse_report_to("tensorboard,tensorbord")
    assert "'tensorbord'" in str(e.value) and all(t in str(e.value) for t in TRACKERS)
    with pytest.raises(MlmkitError, match="'none'"):
        parse_report_to("none,wandb")


def test_missing_tracker_package_is_one_line(monkeypatch, tmp_path):
    import accelerate.tracking
    from accelerate.utils import LoggerType

    # As Accelerate sees an environment with TensorBoard but without wandb.
    monkeypatch.setattr(accelerate.tracking, "_available_trackers", [LoggerType.TENSORBOARD])
    assert tracker_init_kwargs(["tensorboard"], tmp_path)["log_with"] == ["tensorboard"]
    with pytest.raises(MlmkitError) as e:
        tracker_init_kwargs(["tensorboard", "wandb"], tmp_path)
    needs = ": needs the wandb package: pip install 'mlmkit[wandb]'"
    assert str(e.value) == "report_to='wandb'" + needs  # as Python says the setting
    with speaking_cli(), pytest.raises(MlmkitError) as e:
        tracker_init_kwargs(["tensorboard", "wandb"], tmp_path)
    assert str(e.value) == "--report-to wandb" + needs  # as the command line does


def test_init_kwargs_name_the_run_directory(tmp_path):
    kwargs = tracker_init_kwargs([], tmp_path)
    assert kwargs["log_with"] is None
    assert kwargs["project_config"].project_dir == str(tmp_path)
    assert kwargs["project_config"].logging_dir == str(tmp_path / LOGS_DIR)


def test_tensorboard_receives_every_number(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    accelerator = fresh_accelerator(**tracker_init_kwargs(["tensorboard"], run))
    config = {"model": "tiny", "text_field": ["title", "answers.text"], "limit": None,
              "learning_rate": 1e-4, "fp16": False}
    with MetricsLog(run, accelerator, ["tensorboard"], config, main=True, progress="none",
                    total_steps=100) as metrics:
        for event in EVENTS:
            metrics.record(event)
    got = scalars(run / LOGS_DIR / run.name)
    want = {f"{e['event']}/{k}": [] for e in EVENTS for k in e if k not in ("event", "step")}
    for e in EVENTS:
        for k, v in e.items():
            if k not in ("event", "step"):
                want[f"{e['event']}/{k}"].append((e["step"], f32(v)))
    assert got == want
    assert [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] \
        == EVENTS


def test_tensorboard_resume_hides_the_replayed_steps(tmp_path):
    def log_losses(losses: dict[int, float], start_step: int) -> None:
        accelerator = fresh_accelerator(**tracker_init_kwargs(["tensorboard"], tmp_path))
        with MetricsLog(tmp_path, accelerator, ["tensorboard"], {}, main=True, progress="none",
                        start_step=start_step) as metrics:
            for step, loss in losses.items():
                metrics.record({"event": "train", "step": step, "loss": loss})

    log_losses({1: 4.0, 2: 3.0, 3: 2.5, 4: 2.0}, start_step=0)  # killed after 4, saved at 2
    log_losses({3: 2.6, 4: 2.1, 5: 1.9}, start_step=2)
    got = scalars(tmp_path / LOGS_DIR / tmp_path.name)["train/loss"]
    assert got == [(1, 4.0), (2, 3.0), (3, f32(2.6)), (4, f32(2.1)), (5, f32(1.9))]


def test_metrics_jsonl_holds_the_events(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"event": "train", "step": 1}) + "\n")
    metrics = MetricsLog(tmp_path, None, [], {}, main=True, progress="none")
    for event in EVENTS:
        metrics.record(event)
    metrics.close()
    metrics.close()  # a second close does nothing
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"event": "train", "step": 1}, *EVENTS]
    with pytest.raises(ValueError, match="after close"):
        metrics.record(EVENTS[0])


def test_other_processes_write_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mlmkit")
    with MetricsLog(tmp_path, None, [], {}, main=False, progress="lines") as metrics:
        for event in EVENTS:
            metrics.record(event)
    assert not (tmp_path / "metrics.jsonl").exists() and not caplog.records


@pytest.mark.parametrize("mode", ["lines", "bar", "none"])
def test_lines_mode_logs_plain_lines(tmp_path, caplog, mode):
    caplog.set_level(logging.INFO, logger="mlmkit")
    with MetricsLog(tmp_path, None, [], {}, main=True, progress=mode, total_steps=300) as m:
        for event in EVENTS:
            m.record(event)
    lines = [r.getMessage() for r in caplog.records if r.name == "mlmkit"]
    train = ["step 50/300 (epoch 0.50): loss 3.2140, lr 1.00e-04, 12,345 tokens/s",
             "step 100/300 (epoch 1.00): loss 2.8750, lr 5.00e-05, 12,002 tokens/s"]
    evals = ["eval step 0 (epoch 0.00): loss 4.5000, perplexity 90.02",
             "eval step 100 (epoch 1.00): loss 2.9100, perplexity 18.36"]
    # Evaluations are logged in every mode; training steps only where no bar shows them.
    assert lines == ([evals[0], *train, evals[1]] if mode == "lines" else evals)
    assert not any("\r" in line or "\x1b" in line for line in lines)


def test_progress_mode():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress_mode(True, Terminal()) == "none"
    assert progress_mode(False, Terminal()) == "bar"
    assert progress_mode(False, io.StringIO()) == "lines"


def test_config_flattened_to_scalars():
    config = {"text_field": ["title", "answers.text"], "eval_data": None, "lr": 1e-4,
              "quiet": False, "empty": [], "nested": {"a": 1}, "path": Path("x/y")}
    assert _scalar_config(config) == {"text_field": "title,answers.text", "eval_data": "none",
                                      "lr": 1e-4, "quiet": False, "empty": "none",
                                      "nested.a": 1, "path": "x/y"}


def test_plot_curves_writes_a_png_despite_a_torn_line(tmp_path):
    import matplotlib.image

    log_path = tmp_path / "metrics.jsonl"
    log_path.write_text("".join(json.dumps(e) + "\n" for e in EVENTS)
                        + '{"event": "train", "step": 150, "lo')
    pyplot_before = "matplotlib.pyplot" in sys.modules
    png = plot_curves(log_path, tmp_path / CURVES_PNG)
    assert png == tmp_path / CURVES_PNG
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 0 and image.shape[1] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [CURVES_PNG, "metrics.jsonl"]
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before  # pyplot left alone


def test_plot_curves_without_data_or_matplotlib(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="mlmkit")
    (tmp_path / "metrics.jsonl").write_text("")
    assert plot_curves(tmp_path / "metrics.jsonl", tmp_path / CURVES_PNG) is None
    assert plot_curves(tmp_path / "missing.jsonl", tmp_path / CURVES_PNG) is None
    (tmp_path / "metrics.jsonl").write_text(json.dumps(EVENTS[1]) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    assert plot_curves(tmp_path / "metrics.jsonl", tmp_path / CURVES_PNG) is None
    assert not (tmp_path / CURVES_PNG).exists()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and "matplotlib is not installed" in messages[2]


def test_plot_curves_shows_a_series_of_one_point(tmp_path, monkeypatch):
    """A short run logs the training loss once: its legend entry must come with something
    drawn (a line of one point is invisible), and no legend entry is without data."""
    from matplotlib.figure import Figure

    drawn = []
    savefig = Figure.savefig

    def keep(fig, *args, **kwargs):
        drawn.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    log_path = tmp_path / "metrics.jsonl"
    log_path.write_text("".join(json.dumps(e) + "\n" for e in [
        {"event": "eval", "step": 0, "loss": 4.5, "perplexity": 90.0},
        {"event": "train", "step": 3, "loss": 4.1},
        {"event": "eval", "step": 3, "loss": 4.0, "perplexity": 54.6}]))
    assert plot_curves(log_path, tmp_path / CURVES_PNG) == tmp_path / CURVES_PNG
    ax_loss = drawn[0].axes[0]
    lines = {line.get_label(): line for line in ax_loss.get_lines()}
    assert set(lines) == {"training", "evaluation"}
    assert [t.get_text() for t in ax_loss.get_legend().get_texts()] == ["training", "evaluation"]
    for line in lines.values():
        visible_line = len(line.get_xdata()) >= 2 and line.get_linestyle() not in ("None", "")
        assert visible_line or line.get_marker() not in (None, "None", "", " "), line.get_label()
    assert list(lines["training"].get_xdata()) == [3]
