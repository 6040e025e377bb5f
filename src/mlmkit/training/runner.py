"""`train`: the one entry point of training, which picks the recipe of `cfg.backend`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlmkit.config import TrainConfig
from mlmkit.settings import validate
from mlmkit.training.recipe import TrainResult


def train(cfg: TrainConfig | None = None, *, command: str | None = None,
          reads: Sequence[tuple[str, Path]] = (), **settings: Any) -> TrainResult:
    """Fine-tune (or pre-train) a masked LM on a corpus and save it to `cfg.output`.

    Settings come as a `TrainConfig`, as keywords (`train(model=..., data=..., output=...)`),
    or both (keywords win). `data` may be a list of texts or a `datasets.Dataset`. Quiet unless
    `quiet=False`. With `push_to_hub`, the Hub login is checked before anything else and the
    result published at the end, also when a resumed run had finished (`TrainResult.hub_url`).
    `command` is what the model card records as the command that ran; `reads`, the (flag,
    path) pairs of files the caller read the settings from (a config file), which
    --overwrite then never deletes, as it never deletes the model or data.
    """
    cfg = replace(cfg, **settings) if cfg is not None else TrainConfig(**settings)
    validate(cfg)
    if cfg.push_to_hub:  # before any file is written: not after hours of training
        from mlmkit.io.hub import check_push_access
        from mlmkit.settings import named

        check_push_access(cfg.push_to_hub, named("push_to_hub", cfg.push_to_hub))
    if cfg.probe:  # every record read now: a bad one fails before training, not after
        from mlmkit.training.probes import check_probe_inputs

        check_probe_inputs(cfg.probe)
    # Imported here: each recipe pulls in its own framework, and Keras may not be installed.
    if cfg.backend == "keras":
        from mlmkit.training.keras_recipe import train_keras

        return train_keras(cfg, command=command, reads=reads)
    from mlmkit.training.torch_recipe import train_torch

    return train_torch(cfg, command=command, reads=reads)
