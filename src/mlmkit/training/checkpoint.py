"""Checkpoints, one format for every backend: checkpoints/step_N written whole or not at all,
with the run's state and a manifest of digests; rotation that keeps the best; resume from the
newest checkpoint that passes its check.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlmkit.errors import MlmkitError
from mlmkit.io.files import (
    WriteFailed,
    apply_umask,
    verify_manifest,
    write_failure,
    write_json,
    write_manifest,
)
from mlmkit.settings import named
from mlmkit.training.rundir import CHECKPOINTS

log = logging.getLogger("mlmkit")

STATE_FILE = "trainer_state.json"


def _step_dirs(out: Path) -> list[Path]:
    found = []
    for p in (out / CHECKPOINTS).glob("step_*"):
        if p.name[5:].isdigit() and p.is_dir():
            found.append(p)
    return sorted(found, key=lambda p: int(p.name[5:]))


def newest_step(out: Path) -> int | None:
    """The step of the run's newest checkpoint, or None without one."""
    found = _step_dirs(out)
    return int(found[-1].name[5:]) if found else None


def verify_checkpoint(path: Path, setting: str) -> Path:
    """`path`, once its files match its manifest; else one error naming `setting` (the one
    that chose it, as `named` says it) and each damaged file."""
    problems = verify_manifest(path)
    if problems:
        raise MlmkitError(f"{setting} {path}: damaged checkpoint: {'; '.join(problems)}")
    return path


def find_checkpoint(out: Path, resume: str) -> Path:
    """The checkpoint to resume from: `resume` itself, or with 'latest' the newest one whose
    files match their manifest; each one that does not is named in a warning and skipped."""
    if resume != "latest":
        path = Path(resume).expanduser()
        if not path.is_dir():
            raise MlmkitError(f"{named('resume', path)}: no such checkpoint directory")
        return verify_checkpoint(path, named("resume"))
    ckpts = _step_dirs(out)
    if not ckpts:
        raise MlmkitError(f"{named('resume', 'latest')}: no checkpoint in {out / CHECKPOINTS}")
    for path in reversed(ckpts):
        problems = verify_manifest(path)
        if not problems:
            return path
        log.warning("checkpoint %s is damaged (%s); trying the one before", path,
                    "; ".join(problems))
    raise MlmkitError(f"{named('resume', 'latest')}: none of the {len(ckpts)} checkpoints in "
                      f"{out / CHECKPOINTS} is intact (see the warnings above); start again "
                      f"with {named('overwrite', True)}")


def commit_checkpoint(out: Path, step: int, write: Callable[[Path], None],
                      state: dict[str, Any], keep: int, protect: Path | None = None, *,
                      main: bool = True, barrier: Callable[[], None] = lambda: None) -> Path:
    """checkpoints/step_N, complete or absent: `write(tmp)` fills a temporary directory (on
    every process), then the main process adds the state file and the manifest, renames it
    into place and syncs the directory. Older checkpoints past `keep` are removed only after
    the new one is in place, except `protect` (the best one, with --load-best). A write that
    fails (a full disk) removes the temporary directory and raises `WriteFailed`. `barrier`
    waits for every process (several write their parts of one checkpoint)."""
    root = out / CHECKPOINTS
    final, tmp = root / f"step_{step}", root / f".tmp-step_{step}"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)  # a killed save's leftovers
    barrier()
    try:
        write(tmp)
        barrier()
        if main:
            write_json(tmp / STATE_FILE, state, indent=None)
            apply_umask(tmp)
            write_manifest(tmp)
    except BaseException as e:
        if not main:
            raise
        failure = write_failure(f"checkpoint {final}", root, e)
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk is not left fuller
        if failure is None:
            raise
        log.debug("checkpoint write failed", exc_info=True)
        raise WriteFailed(f"{failure}; its partial files were removed") from e
    if main:
        if final.exists():  # a damaged one skipped on resume, now written again
            old = root / f".old-step_{step}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_path(root)
        _rotate(out, keep, protect)
    barrier()
    return final


def _rotate(out: Path, keep: int, protect: Path | None) -> None:
    root = out / CHECKPOINTS
    steps = _step_dirs(out)
    for stale in steps[: max(0, len(steps) - keep)]:
        if protect is None or stale.name != protect.name:
            shutil.rmtree(stale, ignore_errors=True)
    for leftover in [*root.glob(".old-step_*"), *root.glob(".tmp-step_*")]:  # kills
        shutil.rmtree(leftover, ignore_errors=True)


def save_checkpoint(accelerator: Any, out: Path, step: int, state: dict[str, Any],
                    keep: int, protect: Path | None = None) -> Path:
    """`commit_checkpoint` of Accelerate's `save_state` (model, optimizer, scheduler, RNG
    states of every process), every process saving its part.

    Accelerate's own naming and rotation (`ProjectConfiguration(automatic_checkpoint_naming,
    total_limit)`) are not used: they write into the final directory in place and delete old
    checkpoints before the new one is complete, so a kill could leave none whole."""
    return commit_checkpoint(out, step, lambda tmp: accelerator.save_state(str(tmp)), state,
                             keep, protect, main=accelerator.is_main_process,
                             barrier=accelerator.wait_for_everyone)


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text())


def fsync_path(path: Path) -> None:
    """A file's data, or a directory's entries (a rename into it), on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
