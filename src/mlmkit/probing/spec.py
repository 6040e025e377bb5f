"""Which probe a FILE[:task] names: the task guessed from a file's fields when none is named
(config.py checks the rest of the setting when it is made), without loading torch."""

from __future__ import annotations

from pathlib import Path

from mlmkit.config import check_probe_spec
from mlmkit.errors import MlmkitError
from mlmkit.probing.records import first_fields

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


def resolve_spec(spec: str, where: str) -> tuple[str, str]:
    """(file, task) of FILE[:task]: `config.check_probe_spec`'s checks, and the task named or
    guessed from the file's first record; else one error beginning with `where`."""
    path, task = check_probe_spec(spec, where)
    if task is None:
        try:
            task = guess_task(path)
        except MlmkitError as e:
            raise MlmkitError(f"{where}: {e}") from None
    return path, task
