"""--config-overrides checked against the model's config and applied to it.

Each override must name a setting of that config (the known ones near a misspelt name are
offered), keep the type of the value it replaces, and lie in its range by the naming rules of
transformers' configs: sizes and counts are integers >= 1, dropout and other probabilities
lie in [0, 1], epsilons are > 0, numbers are finite. The changed config is then built once on
torch's meta device (no memory), so a shape that does not add up (a hidden size the heads do
not divide) or does not fit this machine is one line before any data is read.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from typing import Any

from mlmkit.errors import MlmkitError
from mlmkit.io.hub import first_line
from mlmkit.modeling.weights import build_on_meta
from mlmkit.settings import named, parse_overrides

# Settings of every transformers config that say how a model runs, not its shape; changing
# them breaks what mlmkit asks of a masked LM (logits in a dict, no cache, an encoder).
_NOT_SHAPE = {"transformers_version", "architectures", "model_type", "_name_or_path", "dtype",
              "return_dict", "output_hidden_states", "output_attentions", "use_cache",
              "is_decoder", "add_cross_attention", "is_encoder_decoder", "problem_type",
              "chunk_size_feed_forward"}
_MAX_SIZE = 2**31 - 1  # torch's index type on most kernels
# name pattern -> (test, words)
_RANGES = [
    (re.compile(r"(^|_)(size|dim)$|^(num|n)_|_num$|^max_position_embeddings$|"
                r"^local_attention$"),
     lambda v: isinstance(v, int) and 1 <= v <= _MAX_SIZE,
     f"an integer >= 1 and <= {_MAX_SIZE} (a size or count)"),
    (re.compile(r"dropout|_prob$|_probability$"), lambda v: 0 <= v <= 1,
     "a number >= 0 and <= 1 (a probability)"),
    (re.compile(r"(^|_)(eps|epsilon)$"), lambda v: v > 0, "a number > 0"),
    (re.compile(r"_token_id$|range$|factor$"), lambda v: v >= 0, "a number >= 0"),
]


def _shown(key: str, value: Any) -> str:
    shown = value if isinstance(value, str) else json.dumps(value)
    return named("config_overrides", f"{key}={shown}")


def _known(config: Any) -> list[str]:
    return sorted(k for k, v in config.to_dict().items() if k not in _NOT_SHAPE
                  and k != "vocab_size" and not isinstance(v, (dict, list)))


def _check_key(config: Any, key: str) -> None:
    known = _known(config)
    if key == "vocab_size":
        raise MlmkitError(f"{named('config_overrides', key)}: set by the tokenizer (the model "
                          "gets one row per token); for another vocabulary, train a tokenizer "
                          f"with {named('train_tokenizer', ...)}")
    if isinstance(config.to_dict().get(key), (dict, list)):
        raise MlmkitError(f"{named('config_overrides', key)}: a list or table; change it in the "
                          "model's config.json")
    if key not in known:
        near = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        raise MlmkitError(f"{named('config_overrides', key)}: {config.model_type} configs have "
                          f"no such shape setting{hint}; known: {', '.join(known)}")


def _checked(config: Any, key: str, value: Any) -> Any:
    """`value` for setting `key`, of the type of the value it replaces and in its range."""
    _check_key(config, key)
    current = getattr(config, key)
    if value is None and current is None:
        return None
    kind = type(current)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is bool:
        good, words = isinstance(value, bool), "true or false"
    elif kind is int:
        good, words = number and isinstance(value, int), "an integer"
    elif kind is float or (current is None and number):
        good, words = number, "a number"
    else:  # a string, or None replaced by a string or a boolean
        good, words = isinstance(value, (str, bool)), "a string" if kind is str else "a value"
    if not good:
        raise MlmkitError(f"{_shown(key, value)}: expected {words}, as the {current!r} it "
                          "replaces")
    if number:
        if not math.isfinite(value):
            raise MlmkitError(f"{_shown(key, value)}: expected a finite number")
        for pattern, test, allowed in _RANGES:
            if pattern.search(key) and not test(value):
                raise MlmkitError(f"{_shown(key, value)}: expected {allowed}")
        if kind is float:
            value = float(value)
    return value


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None


def apply_overrides(config: Any, text: str | None) -> None:
    """Set each override of `text` ('a=1,b=x') on `config`, each checked; then check that the
    changed config builds and that its weights fit this machine's memory."""
    overrides = parse_overrides(text)
    for key, value in overrides.items():
        setattr(config, key, _checked(config, key, value))
    if not overrides:
        return
    try:
        model = build_on_meta(config)
    except (ArithmeticError, KeyError, RuntimeError, TypeError, ValueError) as e:
        why = f"no such name {e}" if isinstance(e, KeyError) else first_line(e)
        raise MlmkitError(f"{named('config_overrides', text)}: the model does not build: {why}"
                          ) from None
    params = sum(p.numel() for p in model.parameters())
    memory = _memory_bytes()
    if memory is not None and 4 * params > memory:
        raise MlmkitError(f"{named('config_overrides', text)}: a model of {params:,} parameters "
                          f"({4 * params / 2**30:,.1f} GiB in float32) does not fit this "
                          f"machine's {memory / 2**30:,.1f} GiB of memory")
