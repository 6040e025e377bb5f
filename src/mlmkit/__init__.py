"""mlmkit: adapt a masked language model to your text, measure it, and fill in masks.

The public names below load on first use (PEP 562), so `import mlmkit` and `mlmkit --help`
do not pay for torch and transformers; `from mlmkit import train` works as before.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "EvalConfig": "config", "MlmkitError": "config", "TrainConfig": "config",
    "Metrics": "evaluate", "evaluate": "evaluate", "run_eval": "evaluate",
    "FillMask": "fill", "Scorer": "score", "rescore": "score",
    "Run": "run", "TrainResult": "run", "TrainState": "run", "train": "run",
    "VocabAudit": "vocab", "VocabExtension": "vocab", "audit_vocab": "vocab",
    "extend_vocab": "vocab",
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


class _Package(types.ModuleType):
    # `evaluate` names both a submodule and the function it defines. Importing the submodule
    # sets the package's attribute to the module; the function must stay `mlmkit.evaluate`, as
    # it was when this file imported everything eagerly.
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
