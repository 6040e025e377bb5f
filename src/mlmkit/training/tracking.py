"""A run's metrics: one JSON line per record in metrics.jsonl, the same numbers sent to the
experiment trackers Accelerate drives (--report-to), plain progress lines for log files, and
the loss and perplexity curves drawn into a PNG.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import IO, Any

from mlmkit.errors import MlmkitError
from mlmkit.io.files import atomic_open
from mlmkit.settings import named
from mlmkit.training.rundir import METRICS_LOG

log = logging.getLogger("mlmkit")

TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")
PROGRESS_MODES = ("bar", "lines", "none")
LOGS_DIR = "logs"  # under the run directory: where file-based trackers (TensorBoard) write
CURVES_PNG = "curves.png"

# How "lines" mode shows each number of a record, in this order.
_SHOWN = {"loss": "loss {:.4f}", "lr": "lr {:.2e}", "tokens_per_s": "{:,.0f} tokens/s",
          "perplexity": "perplexity {:.2f}"}


def parse_report_to(value: str | None) -> list[str]:
    """The trackers named by --report-to: "none" or "" is none, else comma-separated names."""
    names = [n.strip().lower() for n in (value or "").split(",") if n.strip()]
    if names == ["none"]:
        return []
    for name in names:
        if name not in TRACKERS:
            raise MlmkitError(f"{named('report_to', value)}: unknown tracker {name!r}; known: "
                              f"{', '.join(TRACKERS)}, or none")
    return list(dict.fromkeys(names))  # each once, in the order given


def tracker_available(name: str) -> bool:
    """Whether Accelerate will drive `name`. Its own list, not a fresh import check: a tracker
    missing from that list is dropped by Accelerator(log_with=...) with a debug message only."""
    from accelerate.tracking import get_available_trackers

    return name in {str(t) for t in get_available_trackers()}


def tracker_init_kwargs(report_to: list[str], run_dir: Path) -> dict[str, Any]:
    """Keyword arguments for `accelerate.Accelerator(...)` that set up `report_to`, logging
    under run_dir/logs; a one-line error first for any tracker whose package is missing."""
    from accelerate.utils import ProjectConfiguration

    for name in report_to:
        if name not in TRACKERS:
            raise MlmkitError(f"{named('report_to', name)}: unknown tracker; known: "
                              f"{', '.join(TRACKERS)}")
        if not tracker_available(name):
            raise MlmkitError(f"{named('report_to', name)}: needs the {name} package: "
                              f"pip install 'mlmkit[{name}]'")
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / LOGS_DIR))
    return {"log_with": list(report_to) or None, "project_config": project}


def progress_mode(quiet: bool, stream: IO[str] | None = None) -> str:
    """ "none" when quiet, "bar" on a terminal, else "lines": a progress bar in a log file is a
    single line that grows by carriage returns and cursor moves."""
    stream = sys.stderr if stream is None else stream
    if quiet:
        return "none"
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def _scalar_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`config` as the flat {name: bool/int/float/str} every tracker accepts as parameters."""
    flat: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_scalar_config(v, f"{key}."))
        elif isinstance(v, (list, tuple)):
            flat[key] = ",".join(map(str, v)) if v else "none"
        elif v is None:
            flat[key] = "none"
        elif isinstance(v, (bool, int, float, str)):
            flat[key] = v
        else:
            flat[key] = str(v)
    return flat


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def describe_record(event: dict[str, Any], total_steps: int | None = None) -> str:
    """One plain line for a record, e.g. "step 50/300 (epoch 0.50): loss 3.2140, lr 1.00e-04,
    12,345 tokens/s" or "eval step 100 (epoch 1.00): loss 2.9100, perplexity 18.34"."""
    kind, step = event.get("event", ""), event.get("step")
    head = f"step {step}" + (f"/{total_steps}" if total_steps else "")
    if kind != "train":
        head = f"{kind} step {step}"
    if _is_number(event.get("epoch")):
        head += f" (epoch {event['epoch']:.2f})"
    parts = [fmt.format(event[k]) for k, fmt in _SHOWN.items() if _is_number(event.get(k))]
    return f"{head}: {', '.join(parts)}"


class MetricsLog:
    """The one place a run's records go: metrics.jsonl (main process), the trackers of
    `report_to` through `accelerator`, and in "lines" mode one log line per record.

    Evaluation records are logged as a line in every mode (there are few of them, and a bar
    does not show them); training records only in "lines" mode, where no bar shows them.
    """

    def __init__(self, run_dir: Path, accelerator: Any, report_to: list[str],
                 config: dict[str, Any], main: bool, progress: str,
                 total_steps: int | None = None, start_step: int = 0) -> None:
        """`start_step`: the checkpoint step a resume starts from, 0 for a fresh run; TensorBoard
        then hides the steps after it that an earlier, interrupted writer logged, as
        `trim_metrics_log` drops them from metrics.jsonl."""
        if progress not in PROGRESS_MODES:
            raise ValueError(f"progress {progress!r}: expected one of {PROGRESS_MODES}")
        if report_to and accelerator is None:
            raise ValueError("report_to needs the Accelerator the trackers were set up on")
        self.run_dir, self.accelerator, self.main = Path(run_dir), accelerator, main
        self.progress, self.total_steps = progress, total_steps
        self.tracking = bool(report_to)
        self._file: IO[str] | None = None
        self._closed = False
        try:
            if main:
                # Appended a line at a time, not rewritten atomically per record: a kill can
                # only tear the last line, and a resume drops it (trim_metrics_log).
                self._file = open(self.run_dir / METRICS_LOG, "a", encoding="utf-8")
            if self.tracking:
                init_kwargs = {"tensorboard": {"purge_step": start_step + 1}} \
                    if start_step and "tensorboard" in report_to else {}
                accelerator.init_trackers(project_name=self.run_dir.name,
                                          config=_scalar_config(config), init_kwargs=init_kwargs)
        except BaseException:
            self.close()
            raise

    def record(self, event: dict[str, Any]) -> None:
        """Log one record: {"event": "train" | "eval", "step": int, ...numbers}."""
        if not self.main:
            return
        if self._file is None:
            raise ValueError(f"{self.run_dir / METRICS_LOG}: record after close")
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()
        if self.tracking:
            kind = event["event"]
            values = {f"{kind}/{k}": v for k, v in event.items()
                      if k not in ("event", "step") and _is_number(v)}
            self.accelerator.log(values, step=event["step"])
        if self.progress == "lines" or event.get("event") == "eval":
            log.info("%s", describe_record(event, self.total_steps))

    def close(self) -> None:
        """Close metrics.jsonl and finish the trackers; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.tracking and self.accelerator is not None:
            # Not accelerator.end_training(): it also destroys the process group, which the
            # run's last barrier and any later run in this process still need.
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers.clear()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, skipping lines that are not a JSON object (a kill can
    tear the last one); [] when the file does not exist."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _series(records: list[dict[str, Any]], kind: str, key: str, positive: bool = False
            ) -> tuple[list[int], list[float]]:
    points = [(r["step"], float(r[key])) for r in records
              if r.get("event") == kind and _is_number(r.get("step")) and _is_number(r.get(key))
              and math.isfinite(r[key]) and (r[key] > 0 or not positive)]
    return [s for s, _ in points], [v for _, v in points]


def plot_curves(metrics_log: Path, png: Path) -> Path | None:
    """Draw training (and evaluation) loss and evaluation perplexity against the step into
    `png`, written atomically; None, with one log line, without matplotlib or data."""
    records = read_metrics(metrics_log)
    train_loss = _series(records, "train", "loss")
    eval_loss = _series(records, "eval", "loss")
    perplexity = _series(records, "eval", "perplexity", positive=True)
    if not (train_loss[0] or eval_loss[0] or perplexity[0]):
        log.info("curves: nothing to plot in %s", metrics_log)
        return None
    try:
        # The Agg canvas on a Figure of its own: pyplot, and the backend it would pick for
        # the whole process (a notebook's, say), are never touched.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.info("curves: matplotlib is not installed, so %s is not drawn", png)
        return None
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_ppl = fig.subplots(1, 2)
    # Training loss as a line, with a marker while it has one point (a short run): a line of
    # one point draws nothing, and its legend entry would stand alone.
    if train_loss[0]:
        ax_loss.plot(*train_loss, "o-" if len(train_loss[0]) == 1 else "-", label="training")
    if eval_loss[0]:
        ax_loss.plot(*eval_loss, "o-", label="evaluation")
    ax_loss.set(title="loss", xlabel="step", ylabel="masked-token cross-entropy")
    if train_loss[0] or eval_loss[0]:
        ax_loss.legend()
    if perplexity[0]:
        ax_ppl.plot(*perplexity, "o-", color="C1")
        ax_ppl.set_yscale("log")
    else:
        ax_ppl.text(0.5, 0.5, "no evaluation yet", ha="center", va="center",
                    transform=ax_ppl.transAxes)
    ax_ppl.set(title="evaluation perplexity", xlabel="step", ylabel="perplexity (log scale)")
    for ax in (ax_loss, ax_ppl):
        ax.grid(True, alpha=0.3)
    png = Path(png)
    with atomic_open(png, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    return png
