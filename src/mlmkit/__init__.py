"""mlmkit: adapt a masked language model to your text, measure it, and fill in masks.

The public names below load on first use (PEP 562), so `import mlmkit` and `mlmkit --help`
do not pay for torch and transformers; `from mlmkit import train` works as before.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it. No public name is also a module's name, so a
# submodule import never shadows one.
_EXPORTS = {
    "MlmkitError": "errors",
    "EvalConfig": "config", "TrainConfig": "config",
    "Metrics": "training.perplexity", "evaluate": "training.perplexity",
    "run_eval": "training.perplexity",
    "FillMask": "inference.fill", "Scorer": "inference.score", "rescore": "inference.score",
    "Run": "training.torch_recipe", "TrainResult": "training.recipe",
    "TrainState": "training.recipe", "train": "training.runner",
    "VocabAudit": "vocab.audit", "VocabExtension": "vocab.extend", "audit_vocab": "vocab.audit",
    "extend_vocab": "vocab.extend",
    "FillParams": "inference.params", "ScoreParams": "inference.params",
    "RescoreParams": "inference.params",
    "ProbeReport": "probing.run", "probe_models": "probing.run", "run_probes": "probing.run",
    "BatchJob": "batch.ray", "BatchResources": "batch.ray", "run_batch": "batch.ray",
    "create_app": "serving.app", "serve": "serving.app", "push": "training.export",
}
__all__ = [*sorted(_EXPORTS, key=str.lower), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
