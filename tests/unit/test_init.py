"""`import mlmkit` is cheap (no torch, no transformers) and every public name still imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "numpy", "datasets", "accelerate")


def run_python(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


def test_import_mlmkit_loads_no_heavy_library():
    got = run_python(f"import json, sys, mlmkit; mlmkit.__version__; mlmkit.TrainConfig; "
                     f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert got == []


def test_public_names_resolve_to_what_they_were():
    got = run_python(
        "import json, mlmkit\n"
        "import mlmkit.training.perplexity as perplexity\n"  # no submodule shadows a name
        "import mlmkit.training.torch_recipe as recipe, mlmkit.inference.fill as fill\n"
        "import mlmkit.training.runner as runner\n"
        "from mlmkit import *\n"
        "from mlmkit import evaluate, train, FillMask, Run\n"
        "print(json.dumps({'train': mlmkit.train is runner.train is train,\n"
        "  'evaluate': mlmkit.evaluate is evaluate is perplexity.evaluate,\n"
        "  'FillMask': FillMask is fill.FillMask, 'Run': Run is recipe.Run,\n"
        "  'all': sorted(n for n in mlmkit.__all__ if n not in globals()),\n"
        "  'dir': 'TrainResult' in dir(mlmkit)}))")
    assert got == {"train": True, "evaluate": True, "FillMask": True, "Run": True, "all": [],
                   "dir": True}


def test_unknown_name_is_an_attribute_error_and_submodules_still_import():
    import mlmkit

    with pytest.raises(AttributeError, match="no_such_name"):
        mlmkit.no_such_name  # noqa: B018
    from mlmkit.io import files

    assert files.__name__ == "mlmkit.io.files"
