"""Hub datasets: the parquet-conversion fallback for script datasets, and an unreachable or
refusing Hub is one line at once (one request, no retry), or the cached copy."""

import logging

import datasets
import pytest

from mlmkit.config import DataConfig
from mlmkit.errors import MlmkitError
from mlmkit.io.sources import iter_texts


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


def test_unreachable_hub_is_one_request_and_one_line(fake_hub):
    """Without a network: one request, no retry and no backoff sleep (datasets' own lookups
    took 27 s of retries, with each retry warning printed twice), then datasets' cache alone."""
    with pytest.raises(MlmkitError) as e:
        list(iter_texts(DataConfig(data="some-org/some-data")))
    assert str(e.value) == (
        "dataset 'some-org/some-data' (split 'train'): the Hugging Face Hub cannot be reached "
        "([Errno -2] Name or service not known) and the dataset is not in the local cache; "
        "pass a local file, directory or glob as data=..., or set HF_HUB_OFFLINE=1 to use "
        "datasets already in the local cache")
    assert len(fake_hub.requests) == 1 and fake_hub.sleeps == []


def test_unreachable_hub_loads_a_cached_copy_with_a_warning(fake_hub, monkeypatch, caplog):
    from huggingface_hub import constants

    def cached_load(*a, **kw):  # as datasets does: its cache alone in offline mode
        assert constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE
        return datasets.Dataset.from_list([{"text": "a b"}])

    monkeypatch.setattr(datasets, "load_dataset", cached_load)
    with caplog.at_level(logging.WARNING, logger="mlmkit"):
        assert [t for _, t in iter_texts(DataConfig(data="some-org/some-data"))] == ["a b"]
    assert "using the cached copy of dataset some-org/some-data" in caplog.text
    assert not constants.HF_HUB_OFFLINE and not datasets.config.HF_HUB_OFFLINE  # restored


@pytest.mark.parametrize("code,error,needle", [
    (404, "RepoNotFound", "no such dataset on the Hugging Face Hub"),
    (403, "GatedRepo", "a gated dataset"),
])
def test_hub_answers_no_in_one_line(code, error, needle, fake_hub, monkeypatch):
    import httpx2

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("loaded anyway"))
    fake_hub.answer = lambda request: httpx2.Response(
        code, headers={"X-Error-Code": error, "X-Error-Message": "nope"}, request=request)
    with pytest.raises(MlmkitError, match=needle):
        list(iter_texts(DataConfig(data="some-org/some-data")))
    assert len(fake_hub.requests) == 1
