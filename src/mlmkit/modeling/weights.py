"""A local model directory's weight files checked against its config before anything loads.

Reading a safetensors header costs a few kilobytes; loading the weights costs seconds and,
for a file cut short by an interrupted copy or a config.json from another model, ends in
transformers' or safetensors' traceback after the corpus was already tokenized. So the header
is read first: the file's size must be the header's promise, and every tensor's shape the
shape the config builds (a model of the config on torch's meta device, which allocates
nothing). A legacy pytorch_model.bin is a zip archive whose end must be found.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any

from mlmkit.errors import MlmkitError

# Where the header's size is kept, and past which no real header goes (safetensors' own cap).
_LENGTH_BYTES = 8
_MAX_HEADER = 100_000_000
_FIX = "re-download or re-export"


def safetensors_files(path: Path) -> list[Path]:
    """The safetensors files of a model directory: the shards its index names, or
    model.safetensors; none when it keeps its weights another way."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise MlmkitError(f"{index}: not a safetensors index (expected JSON with a "
                              f"weight_map); {_FIX}") from None
        return [path / s for s in shards]
    single = path / "model.safetensors"
    return [single] if single.is_file() else []


def read_header(file: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from a safetensors file's header, once the file's size is checked
    against the header's offsets; one line naming the file otherwise."""
    if not file.is_file():
        raise MlmkitError(f"{file}: missing (its index names it); {_FIX}")
    name, size = str(file), file.stat().st_size
    with open(file, "rb") as fh:
        first = fh.read(_LENGTH_BYTES)
        if len(first) < _LENGTH_BYTES:
            raise MlmkitError(f"{name}: truncated ({size} bytes, not even the header's length); "
                              f"{_FIX}")
        length = struct.unpack("<Q", first)[0]
        if length > _MAX_HEADER:
            raise MlmkitError(f"{name}: not a safetensors file (a header of {length} bytes); "
                              f"{_FIX}")
        raw = fh.read(length)
    if len(raw) < length:
        raise MlmkitError(f"{name}: truncated ({size} of at least {_LENGTH_BYTES + length} "
                          f"bytes: the header is cut short); {_FIX}")
    try:
        header = json.loads(raw)
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
        shapes = {k: tuple(int(n) for n in v["shape"]) for k, v in tensors.items()}
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise MlmkitError(f"{name}: not a safetensors file (its header is not the JSON "
                          f"safetensors writes); {_FIX}") from None
    expected = _LENGTH_BYTES + length + end
    if size < expected:
        raise MlmkitError(f"{name}: truncated ({size} of {expected} bytes); {_FIX}")
    if size > expected:
        raise MlmkitError(f"{name}: {size} bytes, {expected} expected (bytes past the last "
                          f"tensor: not the file safetensors wrote); {_FIX}")
    return shapes


def build_on_meta(config: Any) -> Any:
    """The masked LM `config` builds, on torch's meta device: shapes without memory, in
    milliseconds; transformers' or torch's error where the config does not add up."""
    import torch
    from transformers import AutoModelForMaskedLM

    with torch.device("meta"):
        return AutoModelForMaskedLM.from_config(config)


def _model_shapes(config: Any) -> dict[str, tuple[int, ...]] | None:
    """Each parameter's shape in the masked LM the config builds; None where it does not
    build (load_model says why)."""
    try:
        model = build_on_meta(config)
    except (ArithmeticError, KeyError, RuntimeError, TypeError, ValueError):
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_zip(file: Path) -> None:
    with open(file, "rb") as fh:
        if fh.read(2) != b"PK":
            return  # torch's legacy (pre-1.6) pickle format: nothing cheap to check
    try:
        with zipfile.ZipFile(file):
            pass
    except (zipfile.BadZipFile, OSError):
        raise MlmkitError(f"{file}: truncated or damaged ({file.stat().st_size} bytes; "
                          f"its zip directory is missing); {_FIX}") from None


def check_weights(path: Path, config: Any) -> None:
    """The weights in model directory `path` are whole and fit `config`; an MlmkitError naming
    the file and what is wrong otherwise."""
    files = safetensors_files(path)
    if not files:
        for file in sorted(path.glob("pytorch_model*.bin")):
            _check_zip(file)
        return
    stored: dict[str, tuple[int, ...]] = {}
    owner: dict[str, str] = {}
    for file in files:
        shapes = read_header(file)
        stored.update(shapes)
        owner.update(dict.fromkeys(shapes, str(file)))
    built = _model_shapes(config)
    for key in sorted(set(stored) & set(built or {})):
        if stored[key] != built[key]:
            raise MlmkitError(mismatch(owner[key], key, stored[key], built[key], config))


def mismatch(file: str, key: str, stored: Any, built: Any, config: Any) -> str:
    """One line for a weight whose stored shape is not the one config.json builds."""
    stored, built = list(stored), list(built)
    vocab = getattr(config, "vocab_size", None)
    hint = (f" (config.json says vocab_size {vocab}, the weights hold {stored[0]} tokens)"
            if vocab in built and vocab not in stored and stored else "")
    return (f"{file}: {key} has shape {stored}, but config.json builds {built}{hint}; "
            "config.json and the weights come from different models: put the config.json "
            "saved with these weights back")
