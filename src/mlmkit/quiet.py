"""The libraries' own output during a call into mlmkit: silenced for the call, restored after.

transformers, Accelerate, datasets, huggingface_hub, Keras and Ray each print progress bars
and warnings meant for their own users ("Writing model shards", "[RANK 0] Removed shared
tensor ... while saving", Ray Data's "Progress bars disabled"). Called from Python, mlmkit
prints nothing of theirs: `libraries_quiet()` raises their loggers to ERROR and turns their
bars off for the duration of a call, then puts back exactly what the caller had, so a script
that configured transformers' logging finds it as it left it. Nothing is changed at import.

What is for the user goes through one channel, the "mlmkit" logger (`notice`): unconfigured,
Python prints its warnings to stderr; a script can route or silence it like any logger.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator

log = logging.getLogger("mlmkit")

# The libraries' root loggers; each configures its own on first import, so the ones loaded
# lazily (transformers, datasets) are imported before their level is set.
# The Hugging Face stack's (httpx2 is huggingface_hub 2's HTTP client: its "HTTP Request:"
# lines), which the CLI also keeps at ERROR for a whole command.
HF_LOGGERS = ("transformers", "accelerate", "datasets", "huggingface_hub", "httpx", "httpx2")
LOGGERS = (*HF_LOGGERS, "keras", "keras_hub", "absl", "ray", "ray.data")


def notice(message: str, *args: object) -> None:
    """A warning for the user (not a library's): the "mlmkit" logger's WARNING."""
    log.warning(message, *args)


@contextlib.contextmanager
def _levels(names: tuple[str, ...], level: int) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, before in zip(loggers, saved):
            lg.setLevel(before)


@contextlib.contextmanager
def _transformers_bars() -> Iterator[None]:
    """transformers' tqdm (the "Writing model shards" and "Loading weights" bars) off, and
    huggingface_hub's with them, as transformers switches both."""
    if "transformers" not in sys.modules:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    bars, hub_off = hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        if hub_off:
            disable_progress_bars()


@contextlib.contextmanager
def _datasets_bars() -> Iterator[None]:
    if "datasets" not in sys.modules:
        yield
        return
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    if are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


@contextlib.contextmanager
def libraries_quiet(*modules: str) -> Iterator[None]:
    """Silence the libraries for the duration of the block. `modules`: libraries the block
    will use, imported first so that their own logging setup happens before, not inside."""
    for name in modules:
        importlib.import_module(name)
    with _levels(LOGGERS, logging.ERROR), _transformers_bars(), _datasets_bars():
        yield
