"""Without keras-hub installed, `--backend keras` fails in one line that says how to install
it, before any data is read or any file written."""

from __future__ import annotations

import sys

import pytest

from mlmkit.errors import MlmkitError


@pytest.fixture
def no_keras_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # `import keras_hub` raises
    monkeypatch.delitem(sys.modules, "mlmkit.training.keras_recipe", raising=False)


def test_import_names_the_extra_and_the_lean_install(no_keras_hub):
    from mlmkit.modeling.keras.convert import import_keras

    with pytest.raises(MlmkitError, match=r"pip install 'mlmkit\[keras\]'.*--no-deps "
                       r"keras-hub==0\.32\.0"):
        import_keras()


def test_cli_train_backend_keras_exits_2_with_one_line(no_keras_hub, tiny_roberta, sample_path,
                                                       tmp_path, capsys):
    from mlmkit.cli.main import main

    out = tmp_path / "run"
    code = main(["train", "--backend", "keras", "--model", str(tiny_roberta), "--data",
                 str(sample_path), "--text-field", "answers.text", "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: --backend keras: cannot import keras_hub")
    assert "mlmkit[keras]" in err[-1]
    assert not out.exists()
