"""A run directory and its checkpoints: which output directory a run may use (and delete),
checkpoints written whole or not at all with a manifest of digests, resume from the newest
checkpoint that passes its check, and a metrics log without the steps a resume replays.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

from mlmkit.config import TrainConfig
from mlmkit.corpus.blocks import cache_root
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
    verify_manifest,
    write_json,
    write_manifest,
)
from mlmkit.io.sources import describe_source, resolve_files

log = logging.getLogger("mlmkit")

CONFIG_FILE = "train_config.json"  # not config.json: that name belongs to the model
STATE_FILE = "trainer_state.json"
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


def _inputs(cfg: TrainConfig) -> list[tuple[str, Path]]:
    """The local paths a run reads, which its output directory must never hold."""
    read = []
    if Path(cfg.model).expanduser().exists():
        read.append(("--model", Path(cfg.model).expanduser()))
    for flag, data in (("--data", cfg.data), ("--eval-data", cfg.eval_data)):
        try:  # None for a Hub id or in-memory data: nothing on disk to protect
            read += [(flag, f) for f in resolve_files(data) or []]
        except MlmkitError:
            pass  # a missing corpus is reported by the data stage
    read.append(("--cache-dir", cache_root(cfg)))
    return read


def check_output(cfg: TrainConfig, resumable: bool = True) -> Path:
    """The output directory, once it is known that this run may write there: writable, empty
    or one to resume, and with --overwrite only a directory mlmkit wrote that holds none of
    the run's inputs. Nothing is touched here. `resumable`: whether the command that writes
    it has a --resume to suggest."""
    if not cfg.output:
        raise MlmkitError("--output: no output directory given")
    out = Path(cfg.output).expanduser()
    if out.exists() and not out.is_dir():
        raise MlmkitError(f"--output {out}: exists and is not a directory")
    if cfg.overwrite and cfg.resume:
        raise MlmkitError("--overwrite and --resume: choose one (--overwrite starts the run "
                          "again, --resume continues it)")
    probe_writable(out, "--output")
    if not _has_content(out) or cfg.resume:
        return out
    if not cfg.overwrite:
        resume = " or --resume latest to continue its training" if resumable else ""
        raise MlmkitError(f"--output {out}: directory exists and is not empty; pass --overwrite "
                          f"to replace it{resume}")
    if not (is_run_dir(out) or _is_legacy_run(out)):
        raise MlmkitError(f"--output {out}: not a directory mlmkit wrote (no {RUN_MARKER} "
                          "marker), so --overwrite will not delete it; choose a new or empty "
                          "directory")
    for flag, path in _inputs(cfg):
        if contains(out, path):
            raise MlmkitError(f"--output {out}: holds {flag} {path}, which this run reads; "
                              "--overwrite would delete it; choose another --output")
    return out


def _has_content(out: Path) -> bool:
    # A kill's leftover temporary files (say, of the marker itself) do not make a directory
    # someone else's.
    return out.is_dir() and any(not is_partial_write(p) for p in out.iterdir())


def start_run_dir(out: Path, cfg: TrainConfig, fresh: bool) -> None:
    """Called once every input is checked: only then may --overwrite cost the old run."""
    if fresh and cfg.overwrite and _has_content(out) and (is_run_dir(out)
                                                          or _is_legacy_run(out)):
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MlmkitError(f"--output {out}: cannot create: {e.strerror}") from None
    remove_partial_writes(out)
    mark_run_dir(out)


def _step_dirs(out: Path) -> list[Path]:
    found = []
    for p in (out / CHECKPOINTS).glob("step_*"):
        if p.name[5:].isdigit() and p.is_dir():
            found.append(p)
    return sorted(found, key=lambda p: int(p.name[5:]))


def find_checkpoint(out: Path, resume: str) -> Path:
    """The checkpoint to resume from: `resume` itself, or with 'latest' the newest one whose
    files match their manifest; each one that does not is named in a warning and skipped."""
    if resume != "latest":
        path = Path(resume).expanduser()
        if not path.is_dir():
            raise MlmkitError(f"--resume {path}: no such checkpoint directory")
        problems = verify_manifest(path)
        if problems:
            raise MlmkitError(f"--resume {path}: damaged checkpoint: {'; '.join(problems)}")
        return path
    ckpts = _step_dirs(out)
    if not ckpts:
        raise MlmkitError(f"--resume latest: no checkpoint in {out / CHECKPOINTS}")
    for path in reversed(ckpts):
        problems = verify_manifest(path)
        if not problems:
            return path
        log.warning("checkpoint %s is damaged (%s); trying the one before", path,
                    "; ".join(problems))
    raise MlmkitError(f"--resume latest: none of the {len(ckpts)} checkpoints in "
                      f"{out / CHECKPOINTS} is intact (see the warnings above); start again "
                      "with --overwrite")


def save_checkpoint(accelerator: Any, out: Path, step: int, state: dict[str, Any],
                    keep: int, protect: Path | None = None) -> Path:
    """Every process saves its part into a temporary directory; the main process adds the
    state and the manifest and renames it into place, so `step_N` is complete or absent.
    Older checkpoints past `keep` are removed only after the new one is in place, except
    `protect` (the best one, with --load-best).

    The files inside are Accelerate's `save_state` (model, optimizer, scheduler, RNG states of
    every process); its own naming and rotation (`ProjectConfiguration(automatic_checkpoint_
    naming, total_limit)`) are not used: they write into the final directory in place and
    delete old checkpoints before the new one is complete, so a kill could leave none whole."""
    root = out / CHECKPOINTS
    final, tmp = root / f"step_{step}", root / f".tmp-step_{step}"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)  # a killed save's leftovers
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if main:
        write_json(tmp / STATE_FILE, state, indent=None)
        write_manifest(tmp)
        if final.exists():  # a damaged one skipped on resume, now written again
            old = root / f".old-step_{step}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(root)
        steps = _step_dirs(out)
        for stale in steps[: max(0, len(steps) - keep)]:
            if protect is None or stale.name != protect.name:
                shutil.rmtree(stale, ignore_errors=True)
        for leftover in [*root.glob(".old-step_*"), *root.glob(".tmp-step_*")]:  # kills
            shutil.rmtree(leftover, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    with atomic_open(path) as fh:
        fh.writelines(kept)


def settings_record(cfg: Any) -> dict[str, Any]:
    """A config as train_config.json holds it: every field, the corpora by name (a path or Hub
    id as given; in-memory data by size and digest, not whole)."""
    record = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
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
    "eval_batch_size", "load_best", "report_to", "push_to_hub", "quiet", "num_workers",
    "cache_dir", "no_cache", "compile", "compile_mode", "skip_base_eval", "resume",
    "overwrite", "output",
})


def run_dir_of(resume: str, output: str | None) -> Path:
    """The run directory that --resume names: the directory itself, one of its checkpoints,
    or with 'latest' the --output directory."""
    if resume == "latest":
        if not output:
            raise MlmkitError("--resume latest: needs --output, the run directory (or pass the "
                              "run directory itself: --resume RUN_DIR)")
        run = Path(output).expanduser()
    else:
        path = Path(resume).expanduser()
        if not path.is_dir():
            raise MlmkitError(f"--resume {path}: no such run or checkpoint directory")
        run = path.parent.parent if path.parent.name == CHECKPOINTS else path
    if not (run / CONFIG_FILE).is_file():
        raise MlmkitError(f"--resume {resume}: {run} is not an mlmkit run directory (no "
                          f"{CONFIG_FILE})")
    if output and resume != "latest" and not _same_dir(Path(output).expanduser(), run):
        raise MlmkitError(f"--output {output} and --resume {resume}: a resumed run writes into "
                          f"its own directory, {run}; leave --output out")
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


def check_resume_settings(cfg: TrainConfig, saved: dict[str, Any], run: Path) -> None:
    """One error naming every setting that differs from the run's own, if any does."""
    defaults, given = settings_record(TrainConfig()), settings_record(cfg)
    differ = []
    for name in sorted(given):
        if name in RESUMABLE_CHANGES:
            continue
        mine, theirs = given[name], saved.get(name, defaults[name])
        if mine != theirs:
            differ.append(f"--{name.replace('_', '-')} {mine!r} (the run's: {theirs!r})")
    if differ:
        raise MlmkitError(f"--resume {run}: {', '.join(differ)} differ from the run's "
                          f"{CONFIG_FILE}; a resumed run keeps its settings except "
                          "--epochs, --max-steps, the eval/save/log intervals and outputs "
                          "(start a new run to change the others)")


# The settings that decide which blocks a run held out and how they were masked: `mlmkit eval
# --model RUN` reuses them, so that it prints the run's own number.
EVAL_SETTINGS = ("data", "data_config", "split", "text_field", "limit", "eval_data",
                 "line_by_line", "block_size", "eval_fraction", "pad_last_block", "seed",
                 "mlm_probability", "mask_replace_prob", "random_replace_prob",
                 "whole_word_mask", "eval_seed")


def run_eval_settings(model: str) -> dict[str, Any] | None:
    """The data and mask settings of the run that wrote `model`, or None if no run did."""
    run = Path(model).expanduser()
    if not (run / CONFIG_FILE).is_file():
        return None
    saved = read_run_config(run)
    return {k: saved[k] for k in EVAL_SETTINGS if k in saved}
