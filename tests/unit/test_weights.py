"""A model directory's weight files are checked before they load: a safetensors file against
its own header's size and against the shapes config.json builds, a pytorch_model.bin for its
zip directory, each shard an index names; and transformers' own failures at load time (a Hub
copy the early check does not see) are one line too."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch

from mlmkit.errors import MlmkitError
from mlmkit.modeling.load import load_model, load_model_config


def copy_with(tiny_roberta, where, **files):
    shutil.copytree(tiny_roberta, where)
    for name, content in files.items():
        (where / name.replace("_", ".", 1)).write_bytes(content)
    return where


def refusal(path, **kw) -> str:
    with pytest.raises(MlmkitError) as e:
        load_model_config(str(path), **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_safetensors_cut_anywhere_or_grown_is_named_with_its_size(tmp_path, tiny_roberta):
    data = (tiny_roberta / "model.safetensors").read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    size = len(data)
    cuts = {"short-1": (data[:-1], f"truncated ({size - 1} of {size} bytes)"),
            "half": (data[: size // 2], f"truncated ({size // 2} of {size} bytes)"),
            "in-header": (data[: 8 + header // 2], "the header is cut short"),
            "four": (data[:4], "truncated (4 bytes, not even the header's length)"),
            "empty": (b"", "truncated (0 bytes"),
            "grown": (data + b"\0", f"{size + 1} bytes, {size} expected"),
            "garbage": (data[:8] + b"x" * header + data[8 + header:], "not a safetensors file"),
            "huge-header": (struct.pack("<Q", 2**40) + data[8:], "not a safetensors file")}
    for why, (content, needle) in cuts.items():
        model = copy_with(tiny_roberta, tmp_path / why, model_safetensors=content)
        message = refusal(model)
        assert message.startswith(f"{model / 'model.safetensors'}: ") and needle in message, why
        assert message.endswith("re-download or re-export"), message
        # The shape of a model to train from scratch: its weights are never read.
        assert load_model_config(str(model), weights=False).vocab_size == 800


def test_config_of_another_model_names_the_vocab_size(tmp_path, tiny_roberta):
    model = copy_with(tiny_roberta, tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "vocab_size": 900}))
    message = refusal(model)
    assert "config.json says vocab_size 900, the weights hold 800 tokens" in message
    # Past the early check (a config handed in), transformers' mismatch is one line too.
    config = load_model_config(str(model), weights=False)
    with pytest.raises(MlmkitError, match="has shape \\[800.*builds \\[900"):
        load_model(str(model), config)


def test_unreadable_safetensors_past_the_early_check_is_one_line(tmp_path, tiny_roberta):
    data = (tiny_roberta / "model.safetensors").read_bytes()
    model = copy_with(tiny_roberta, tmp_path / "m", model_safetensors=data[:-1])
    config = load_model_config(str(model), weights=False)
    with pytest.raises(MlmkitError, match="its weights cannot be read: .*re-download"):
        load_model(str(model), config)


def test_truncated_pytorch_bin_and_missing_shard(tmp_path, tiny_roberta):
    state = load_model(str(tiny_roberta)).state_dict()
    model = copy_with(tiny_roberta, tmp_path / "bin")
    (model / "model.safetensors").unlink()
    torch.save(state, model / "pytorch_model.bin")
    whole = (model / "pytorch_model.bin").read_bytes()
    assert load_model_config(str(model)).vocab_size == 800  # whole: accepted
    (model / "pytorch_model.bin").write_bytes(whole[: len(whole) // 2])
    assert "pytorch_model.bin: truncated or damaged" in refusal(model)

    sharded = copy_with(tiny_roberta, tmp_path / "sharded")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.move(sharded / "model.safetensors", sharded / "model-00001-of-00002.safetensors")
    assert "model-00002-of-00002.safetensors: missing (its index names it)" in refusal(sharded)
    (sharded / "model.safetensors.index.json").write_text("{")
    assert "not a safetensors index" in refusal(sharded)
