"""A run's directory: which output directory a run may use (and delete), the settings it
records there (train_config.json) and which of them a resume may change, the data settings
`mlmkit eval` reuses, and a metrics log without the steps a resume replays.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from mlmkit.config import TrainConfig
from mlmkit.corpus.cache import cache_root
from mlmkit.errors import MlmkitError
from mlmkit.io.files import (
    RUN_MARKER,
    atomic_open,
    contains,
    is_partial_write,
    is_run_dir,
    mark_run_dir,
    probe_writable,
    remove_partial_writes,
    write_json,
)
from mlmkit.io.sources import describe_source, resolve_files
from mlmkit.settings import named

log = logging.getLogger("mlmkit")

CONFIG_FILE = "train_config.json"  # not config.json: that name belongs to the model
METRICS_LOG = "metrics.jsonl"
CHECKPOINTS = "checkpoints"


def _is_legacy_run(out: Path) -> bool:
    """A run directory written by mlmkit before the marker file existed: its settings file
    names mlmkit's own settings, and its training log is there."""
    try:
        saved = json.loads((out / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(saved, dict) and {"model", "data", "block_size", "mlm_probability"}
            <= set(saved) and (out / METRICS_LOG).is_file())


def read_paths(model: str | None, data: Any = None, eval_data: Any = None,
               cache: Path | None = None) -> list[tuple[str, Path]]:
    """The local paths a command reads, by flag, which its output directory must never hold:
    the model if it is a local path, the corpora's files, `cache` (the block cache), and the
    current directory (deleting it under the running command fails every relative path)."""
    read = []
    if model and Path(model).expanduser().exists():
        read.append((named("model"), Path(model).expanduser()))
    for flag, source in ((named("data"), data), (named("eval_data"), eval_data)):
        try:  # None for a Hub id or in-memory data: nothing on disk to protect
            read += [(flag, f) for f in resolve_files(source) or []]
        except MlmkitError:
            pass  # a missing corpus is reported by the data stage
    if cache is not None:
        read.append((named("cache_dir"), cache))
    with contextlib.suppress(OSError):  # a current directory already deleted: none to keep
        read.append(("the current directory", Path.cwd()))
    return read


def check_output(cfg: TrainConfig, reads: Iterable[tuple[str, Path]] = ()) -> Path:
    """`check_output_dir` for a training run: its --output, --overwrite, --resume and inputs,
    with `reads`, the (flag, path) pairs its caller reads besides the settings (the CLI's
    --config file)."""
    return check_output_dir(cfg.output, overwrite=cfg.overwrite, resume=cfg.resume,
                            inputs=[*read_paths(cfg.model, cfg.data, cfg.eval_data,
                                                cache_root(cfg)), *reads])


def check_output_dir(output: str | Path | None, *, overwrite: bool = False,
                     resume: str | None = None, inputs: Iterable[tuple[str, Path]] = (),
                     resumable: bool = True) -> Path:
    """The output directory, once it is known that a command may write there: writable, empty
    or one to resume, and with `overwrite` only a directory mlmkit wrote that holds none of
    `inputs` ((flag, path) pairs, see `read_paths`). Nothing is touched here. `resumable`:
    whether the command that writes it has a --resume to suggest."""
    if not output:
        raise MlmkitError(f"{named('output')}: no output directory given")
    out = Path(output).expanduser()
    at, again = named("output", out), named("overwrite", True)
    if out.exists() and not out.is_dir():
        raise MlmkitError(f"{at}: exists and is not a directory")
    if overwrite and resume:
        raise MlmkitError(f"{again} and {named('resume')}: choose one ({again} starts the run "
                          f"again, {named('resume')} continues it)")
    probe_writable(out, named("output"))
    if not _has_content(out) or resume:
        return out
    if not overwrite:
        hint = (f" or {named('resume', 'latest')} to continue its training" if resumable
                else "")
        raise MlmkitError(f"{at}: directory exists and is not empty; pass {again} to replace "
                          f"it{hint}")
    if not (is_run_dir(out) or _is_legacy_run(out)):
        raise MlmkitError(f"{at}: not a directory mlmkit wrote (no {RUN_MARKER} marker), so "
                          f"{again} will not delete it; choose a new or empty directory")
    for flag, path in inputs:
        if contains(out, path):
            raise MlmkitError(f"{at}: holds {flag} {path}, which this run reads; {again} would "
                              f"delete it; choose another {named('output')}")
    return out


def _has_content(out: Path) -> bool:
    # A kill's leftover temporary files (say, of the marker itself) do not make a directory
    # someone else's.
    return out.is_dir() and any(not is_partial_write(p) for p in out.iterdir())


def start_run_dir(out: Path, overwrite: bool) -> None:
    """Called once every input is checked: only then may --overwrite cost the old run.
    `overwrite`: replace the mlmkit run directory there (a fresh run with --overwrite)."""
    if overwrite and _has_content(out) and (is_run_dir(out) or _is_legacy_run(out)):
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MlmkitError(f"{named('output', out)}: cannot create: {e.strerror}") from None
    remove_partial_writes(out)
    mark_run_dir(out)


def trim_metrics_log(out: Path, step: int) -> None:
    """Keep the log's records up to `step`, the checkpoint a resume starts from: the steps
    after it are run again and logged again. A torn last line (a kill mid-write) goes too."""
    path = out / METRICS_LOG
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= step:
            kept.append(line + "\n")
    if "".join(kept) == path.read_text(encoding="utf-8", errors="replace"):
        return  # nothing to drop: a resume that trains nothing rewrites nothing
    with atomic_open(path) as fh:
        fh.writelines(kept)


# What one call asks for, not how the run trains: never written to train_config.json, so never
# taken over by a resume (a later `--resume R --epochs 3` uploads only when it says so too).
REQUESTS = frozenset({"push_to_hub"})


def settings_record(cfg: Any) -> dict[str, Any]:
    """A config as train_config.json holds it: every setting (not the `REQUESTS`), the corpora
    by name (a path or Hub id as given; in-memory data by size and digest, not whole)."""
    record = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in REQUESTS}
    for name in ("data", "eval_data"):
        if name in record:
            record[name] = describe_source(record[name])
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in record.items()}


def write_config(out: Path, cfg: TrainConfig) -> None:
    write_json(out / CONFIG_FILE, settings_record(cfg))


# Settings a resumed run may change: they decide how long it runs, how often it evaluates,
# saves and logs, and where results go, never what one step computes. Everything else must
# match the run's train_config.json, or the resumed half would be another experiment.
RESUMABLE_CHANGES = frozenset({
    "epochs", "max_steps", "eval_every", "save_every", "save_total_limit", "log_every",
    "eval_batch_size", "load_best", "report_to", "quiet", "num_workers",
    "cache_dir", "no_cache", "compile", "compile_mode", "skip_base_eval", "resume",
    "overwrite", "output",
})


def run_dir_of(resume: str, output: str | None) -> Path:
    """The run directory that --resume names: the directory itself, one of its checkpoints,
    or with 'latest' the --output directory."""
    if resume == "latest":
        if not output:
            raise MlmkitError(f"{named('resume', 'latest')}: needs {named('output', ...)}, the "
                              f"run directory (or pass the run directory itself: "
                              f"{named('resume', ...)})")
        run = Path(output).expanduser()
    else:
        path = Path(resume).expanduser()
        if not path.is_dir():
            raise MlmkitError(f"{named('resume', str(path))}: no such run or checkpoint "
                              "directory")
        run = path.parent.parent if path.parent.name == CHECKPOINTS else path
    if not (run / CONFIG_FILE).is_file():
        raise MlmkitError(f"{named('resume', resume)}: {run} is not an mlmkit run directory "
                          f"(no {CONFIG_FILE})")
    if output and resume != "latest" and not _same_dir(Path(output).expanduser(), run):
        raise MlmkitError(f"{named('output', output)} and {named('resume', resume)}: a resumed "
                          f"run writes into its own directory, {run}; leave {named('output')} "
                          "out")
    return run


def _same_dir(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and os.path.samefile(a, b)


def read_run_config(run: Path) -> dict[str, Any]:
    """A run's saved settings, as they were written (`train_config.json`)."""
    path = run / CONFIG_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MlmkitError(f"{path}: cannot read the run's settings ({e})") from None
    if not isinstance(saved, dict):
        raise MlmkitError(f"{path}: expected a JSON object of settings")
    return saved


def resumed_settings(run: Path) -> dict[str, Any]:
    """The settings a resume of `run` starts from: its own, without where it was written and
    how, and without a request an older mlmkit stored there (`REQUESTS`)."""
    return {k: v for k, v in read_run_config(run).items()
            if k not in {"output", "resume", "overwrite", *REQUESTS}}


def check_resume_settings(cfg: TrainConfig, saved: dict[str, Any], run: Path) -> None:
    """One error naming every setting that differs from the run's own, if any does."""
    defaults, given = settings_record(TrainConfig()), settings_record(cfg)
    differ = []
    for name in sorted(given):
        if name in RESUMABLE_CHANGES:
            continue
        mine, theirs = given[name], saved.get(name, defaults[name])
        if mine != theirs:
            differ.append(f"{named(name, mine, quoted=True)} (the run's: {theirs!r})")
    if differ:
        raise MlmkitError(f"{named('resume', run)}: {', '.join(differ)} differ from the run's "
                          f"{CONFIG_FILE}; a resumed run keeps its settings except "
                          f"{named('epochs')}, {named('max_steps')}, the eval/save/log "
                          "intervals and outputs (start a new run to change the others)")


# The settings that decide which blocks a run held out and how they were masked: `mlmkit eval
# --model RUN` reuses them, so that it prints the run's own number.
EVAL_SETTINGS = ("data", "data_config", "split", "text_field", "limit", "eval_data",
                 "line_by_line", "block_size", "eval_fraction", "pad_last_block", "seed",
                 "mlm_probability", "mask_replace_prob", "random_replace_prob",
                 "whole_word_mask", "eval_seed", "max_eval_blocks")


def run_eval_settings(model: str) -> dict[str, Any] | None:
    """The data and mask settings of the run that wrote `model`, or None if no run did."""
    run = Path(model).expanduser()
    if not (run / CONFIG_FILE).is_file():
        return None
    saved = read_run_config(run)
    for name in ("data", "eval_data"):
        # describe_source's name of in-memory data: a digest, not texts to read again.
        if str(saved.get(name)).startswith("<in-memory"):
            raise MlmkitError(f"{named('model', model)}: this run was trained on texts passed "
                              f"in Python ({named(name)} {saved[name]}); pass "
                              f"{named('data', ...)} (the texts to evaluate on)")
    return {k: saved[k] for k in EVAL_SETTINGS if k in saved}
