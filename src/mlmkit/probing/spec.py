"""Which probe a FILE[:task] names: the task names, the task guessed from a file's fields, and
the check a setting gets when it is made (`train --probe`), without loading torch."""

from __future__ import annotations

import os
from pathlib import Path

from mlmkit.errors import MlmkitError
from mlmkit.probing.records import first_fields

TASK_NAMES = ("pairs", "cloze", "bias")
# The field that says which task a file is for, when none is named.
_TASK_FIELDS = (("sentence_good", "pairs"), ("masked_sentences", "cloze"), ("sent_more", "bias"))


def guess_task(path: str | Path) -> str:
    """The task a file is for, from its first record's fields."""
    fields = first_fields(path)
    for name, task in _TASK_FIELDS:
        if name in fields:
            return task
    raise MlmkitError(f"{path}: cannot tell the task from the fields "
                      f"({', '.join(sorted(fields))[:120]}); expected sentence_good (pairs), "
                      "masked_sentences (cloze) or sent_more (bias), or name the task")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """FILE[:task] -> (file, task or None)."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail in TASK_NAMES:
        return head, tail
    return spec, None


def resolve_spec(spec: str, where: str) -> tuple[str, str]:
    """(file, task) of FILE[:task], the file there and readable and the task named or guessed
    from its first record; else one error beginning with `where` (the setting as given)."""
    path, task = parse_spec(spec)
    head, sep, tail = spec.rpartition(":")
    if task is None and sep and head and not Path(spec).exists() and Path(head).is_file():
        raise MlmkitError(f"{where}: task {tail!r}: expected FILE or FILE:TASK with TASK one "
                          f"of {', '.join(TASK_NAMES)}")
    if not Path(path).is_file():
        raise MlmkitError(f"{where}: {path}: no such file; expected FILE or FILE:TASK (TASK one "
                          f"of {', '.join(TASK_NAMES)})")
    if not os.access(path, os.R_OK):
        raise MlmkitError(f"{where}: {path}: not readable (permission denied)")
    if task is None:
        try:
            task = guess_task(path)
        except MlmkitError as e:
            raise MlmkitError(f"{where}: {e}") from None
    return path, task
