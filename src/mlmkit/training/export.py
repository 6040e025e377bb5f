"""A finished run as a standard Hugging Face model directory: weights, tokenizer, metrics, the
resolved settings and the model card (card.py), written whole or not at all; and its upload
to the Hub.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlmkit.errors import MlmkitError
from mlmkit.io.files import (
    MANIFEST,
    RUN_MARKER,
    WriteFailed,
    apply_umask,
    read_manifest,
    write_failure,
    write_json,
    write_manifest,
)
from mlmkit.training.card import CARD_FILE, CardInfo, render_model_card
from mlmkit.training.checkpoint import fsync_path
from mlmkit.training.rundir import CHECKPOINTS, CONFIG_FILE

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

log = logging.getLogger("mlmkit")

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
    """Every file of `tmp` into `out`, the card and metrics last, each on disk before its
    rename makes it visible."""
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
                    readme, steps=metrics["steps"])


def write_model_dir(model: Any, tokenizer: Any, out: Path, json_files: dict[str, Any],
                    card: ModelCard | None = None, **record: Any) -> None:
    """`save_pretrained` of model and tokenizer plus `json_files` ({name: value}) and the card,
    all written in a temporary directory and then renamed into `out`, and last the manifest of
    the files written (with `record`'s fields): a crash never leaves a half-written model, and
    a directory whose manifest matches holds a whole one (`check_export`). A write that fails
    (a full disk) removes what it wrote and raises `WriteFailed`."""
    out = Path(out)
    tmp = out / EXPORT_TMP
    shutil.rmtree(tmp, ignore_errors=True)  # a killed export's leftovers
    # Before any file of `out` changes: an earlier export's manifest must not vouch for a
    # mix of its files and this one's.
    (out / MANIFEST).unlink(missing_ok=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, value in json_files.items():
            write_json(tmp / name, value)
        if card is not None:
            card.save(tmp / CARD_FILE)
        apply_umask(tmp)
        names = [str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()]
        _move_in(tmp, out)
        tmp.rmdir()
        write_manifest(out, names, **record)
    except BaseException as e:
        failure = write_failure(f"the exported model in {out}", out, e)
        shutil.rmtree(tmp, ignore_errors=True)
        if failure is None:
            raise
        log.debug("export write failed", exc_info=True)
        raise WriteFailed(f"{failure}; its partial files were removed") from e


def check_export(out: Path, steps: int) -> list[str]:
    """What keeps `out` from holding the complete export of a run that trained `steps` steps:
    files that do not match the export's manifest, or a manifest of another export (an
    earlier, shorter run's); empty when it is whole."""
    manifest, problems = read_manifest(out)
    if manifest is not None and manifest.get("steps") != steps:
        problems = [f"{MANIFEST} is of the export after step {manifest.get('steps')}"]
    return problems


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
