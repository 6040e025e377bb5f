"""Hub datasets: the parquet-conversion fallback for script datasets, and offline errors."""

import logging

import datasets
import pytest

from mlmkit.config import DataConfig, MlmkitError
from mlmkit.data import iter_texts


def test_script_dataset_falls_back_to_parquet_conversion(monkeypatch, caplog):
    calls = []

    def fake_load(path, name=None, split=None, **kw):
        calls.append(kw.get("revision"))
        if kw.get("revision") is None:
            raise RuntimeError("Dataset scripts are no longer supported, but found "
                               "eli5_category.py")
        return datasets.Dataset.from_list([{"answers": {"text": ["a b", "c"]}},
                                           {"answers": {"text": ["d"]}}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    cfg = DataConfig(data="eli5_category", split="train[:5000]", text_field=["answers.text"])
    with caplog.at_level(logging.WARNING, logger="mlmkit"):
        texts = [t for _, t in iter_texts(cfg)]
    assert calls == [None, "refs/convert/parquet"]
    assert texts == ["a b c", "d"]
    assert "refs/convert/parquet" in caplog.text


def test_unreachable_hub_suggests_local_files(monkeypatch):
    def fake_load(*a, **kw):
        raise ConnectionError("Couldn't reach 'x/y' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    with pytest.raises(MlmkitError) as e:
        list(iter_texts(DataConfig(data="x/y")))
    msg = str(e.value)
    assert "x/y" in msg and "HF_HUB_OFFLINE=1" in msg and "local file" in msg
    assert "\n" not in msg
