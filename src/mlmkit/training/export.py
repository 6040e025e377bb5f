"""A finished run as a standard Hugging Face model directory: weights, tokenizer, metrics, the
resolved settings and the model card (card.py), written whole or not at all; and its upload
to the Hub.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlmkit.errors import MlmkitError
from mlmkit.io.files import RUN_MARKER, write_json
from mlmkit.training.card import CARD_FILE, CardInfo, render_model_card
from mlmkit.training.checkpoint import fsync_path
from mlmkit.training.rundir import CHECKPOINTS, CONFIG_FILE

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

EXPORT_TMP = ".export-tmp"
# What a run directory holds that is not the model: checkpoints (optimizer state, RNG states),
# a killed export's leftovers, the marker that lets --overwrite delete the directory, and a
# killed atomic write's temporary files.
PRIVATE_PATTERNS = [f"{CHECKPOINTS}/*", f"{EXPORT_TMP}/*", RUN_MARKER, ".*.tmp"]
# Weight files only save_pretrained writes: one from an earlier export that this one did not
# write again (a single file where there were shards, or the reverse) would be loaded instead.
_WEIGHT_PATTERNS = ["model.safetensors", "model-?????-of-?????.safetensors",
                    "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model-?????-of-?????.bin", "pytorch_model.bin.index.json"]



def _move_in(tmp: Path, out: Path) -> None:
    """Every file of `tmp` into `out`, the card and metrics last: a directory with a README.md
    from mlmkit holds a complete model."""
    last = {CARD_FILE: 2, "metrics.json": 1}
    written = sorted(tmp.iterdir(), key=lambda p: last.get(p.name, 0))
    for f in written:
        if f.is_file():
            fsync_path(f)  # on disk before the rename makes it visible
    fresh = {f.name for f in written}
    for f in written:
        target = out / f.name
        if f.is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(f, target)
    for pattern in _WEIGHT_PATTERNS:
        for stale in out.glob(pattern):
            if stale.name not in fresh and stale.is_file():
                stale.unlink()
    fsync_path(out)


def export_model(model: Any, tokenizer: Any, out: Path, *, config: dict[str, Any],
                 metrics: dict[str, Any], card: CardInfo) -> None:
    """Write model, tokenizer, metrics.json, the settings and the model card into `out`, via a
    temporary directory whose files are then renamed in, so a crash never leaves a
    half-written model; files of `out` that the export does not write are kept."""
    readme = render_model_card(card, metrics, config, mask_token=tokenizer.mask_token or "<mask>")
    write_model_dir(model, tokenizer, out, {"metrics.json": metrics, CONFIG_FILE: config},
                    readme)


def write_model_dir(model: Any, tokenizer: Any, out: Path, json_files: dict[str, Any],
                    card: ModelCard | None = None) -> None:
    """`save_pretrained` of model and tokenizer plus `json_files` ({name: value}) and the card,
    all written in a temporary directory and then renamed into `out`: a crash never leaves a
    half-written model."""
    out = Path(out)
    tmp = out / EXPORT_TMP
    shutil.rmtree(tmp, ignore_errors=True)  # a killed export's leftovers
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, value in json_files.items():
            write_json(tmp / name, value)
        if card is not None:
            card.save(tmp / CARD_FILE)
        _move_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def push_to_hub(out: Path, repo_id: str) -> str:
    """Upload the exported directory to the Hub repository `repo_id` (created if missing),
    without the run's private files (checkpoints, marker, temporary files); the commit's URL."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(out),
                                 ignore_patterns=PRIVATE_PATTERNS)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MlmkitError(f"--push-to-hub {repo_id}: upload failed: {reason} "
                          f"(the model is saved in {out})") from None
    return str(getattr(info, "commit_url", repo_id))
