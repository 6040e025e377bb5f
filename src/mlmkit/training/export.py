"""A finished run as a standard Hugging Face model directory: weights, tokenizer, metrics, the
resolved settings and the model card (card.py), written whole or not at all; and its upload
to the Hub (`push`), only once it is whole.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlmkit.config import check_repo_id
from mlmkit.errors import MlmkitError
from mlmkit.io.files import (
    MANIFEST,
    RUN_MARKER,
    WriteFailed,
    apply_umask,
    file_entries,
    read_manifest,
    write_failure,
    write_json,
    write_manifest,
    write_sealed_json,
)
from mlmkit.io.hub import check_push_access, upload_dir
from mlmkit.settings import from_cli, named
from mlmkit.training.card import CARD_FILE, CardInfo, card_for_repo, render_model_card
from mlmkit.training.checkpoint import fsync_path, newest_step
from mlmkit.training.rundir import CHECKPOINTS, CONFIG_FILE, METRICS_LOG

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
                 metrics: dict[str, Any], card: CardInfo, repo_id: str | None = None) -> None:
    """Write model, tokenizer, metrics.json, the settings and the model card into `out`, via a
    temporary directory whose files are then renamed in, so a crash never leaves a
    half-written model; files of `out` that the export does not write are kept. `repo_id`:
    the Hub repository this call publishes to, which the card then names (it is not a setting
    of the run, so not in `config`)."""
    named = {**config, "push_to_hub": repo_id} if repo_id else config
    readme = render_model_card(card, metrics, named, mask_token=tokenizer.mask_token or "<mask>")
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


# What a push uploads besides the files the export's manifest names: the manifest itself (so a
# download can be checked), the curves and the training log, when present.
PUBLISHED_EXTRAS = [MANIFEST, "curves.png", METRICS_LOG]


def check_publishable(run: Path) -> dict[str, Any]:
    """The manifest of `run` once it holds a whole mlmkit export that is its run's newest (no
    checkpoint past it: a run still training, or stopped before its next export); else one
    error saying which."""
    if not run.is_dir():
        raise MlmkitError(f"{run}: no such directory")
    manifest, problems = read_manifest(run)
    if manifest is None:
        raise MlmkitError(f"{run}: not a whole mlmkit export ({'; '.join(problems)}); push "
                          "publishes a finished run's directory (`hf upload` takes any other)")
    steps, newest = manifest.get("steps"), newest_step(run)
    if isinstance(steps, int) and newest is not None and newest > steps:
        raise MlmkitError(f"{run}: its export is of step {steps}, but the run went on to step "
                          f"{newest} (still training, or stopped); finish it first: "
                          + (f"`mlmkit train {named('resume', str(run))}`" if from_cli()
                             else f"train({named('resume', str(run))})"))
    return manifest


def commit_message(run: Path, manifest: dict[str, Any]) -> str:
    """'mlmkit: RUN (N steps, perplexity A -> B)', from the export's own metrics.json."""
    facts = []
    if isinstance(manifest.get("steps"), int):
        facts.append(f"{manifest['steps']} steps")
    try:
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        ppl = [(metrics.get(k) or {}).get("perplexity") for k in ("base", "final")]
    except (OSError, ValueError, AttributeError):
        ppl = [None, None]
    if ppl[1] is not None:
        facts.append(f"perplexity {ppl[0]:.2f} -> {ppl[1]:.2f}" if ppl[0] is not None
                     else f"perplexity {ppl[1]:.2f}")
    return f"mlmkit: {run.resolve().name}" + (f" ({', '.join(facts)})" if facts else "")


def publish(run: Path, repo_id: str, where: str, *, private: bool = False,
            revision: str | None = None, message: str | None = None) -> str:
    """`push`, with `where` beginning each error (the flag that asked, or the repository)."""
    check_repo_id(repo_id, where)
    manifest = check_publishable(run)
    check_push_access(repo_id, where)
    # Only what the export wrote and vouches for: never checkpoints (optimizer state), caches,
    # tracker logs or a file someone put beside the model.
    names = [*manifest["files"], *PUBLISHED_EXTRAS]
    with _carded_for(run, manifest, names, repo_id) as folder:
        return upload_dir(folder, repo_id, where, message=message or commit_message(run, manifest),
                          allow=[glob.escape(n) for n in names], ignore=PRIVATE_PATTERNS,
                          private=private, revision=revision, shown=run)


@contextlib.contextmanager
def _carded_for(run: Path, manifest: dict[str, Any], names: list[str],
                repo_id: str) -> Iterator[Path]:
    """The folder to upload `names` of `run` from: `run` itself when its model card names
    `repo_id`; else a temporary one of links to those files, with the card rewritten to name
    `repo_id` (`card_for_repo`) and a manifest that vouches for it. The run directory, whose
    card says where its training meant it to go, never changes."""
    card = (run / CARD_FILE).read_text(encoding="utf-8") if CARD_FILE in manifest["files"] \
        else None
    renamed = card_for_repo(card, repo_id) if card is not None else None
    if renamed == card:
        yield run
        return
    with tempfile.TemporaryDirectory(prefix="mlmkit-push-") as tmp:
        folder = Path(tmp)
        for name in names:
            if name not in (CARD_FILE, MANIFEST) and (run / name).is_file():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).symlink_to((run / name).resolve())
        (folder / CARD_FILE).write_text(renamed, encoding="utf-8")
        files = {**manifest["files"], **file_entries(folder, [CARD_FILE])}
        write_sealed_json(folder / MANIFEST, {**manifest, "files": files})
        yield folder


def push(run_dir: str | Path, repo_id: str, *, private: bool = False,
         revision: str | None = None, message: str | None = None) -> str:
    """Publish a finished run's directory to the Hugging Face Hub model repository `repo_id`
    (created if missing; `private` when asked; on branch `revision`, created if missing) in
    one commit, by default "mlmkit: RUN (N steps, perplexity A -> B)"; the commit's URL.

    Uploads the model, tokenizer, model card, metrics.json, train_config.json, the curves and
    the training log; never the checkpoints. Refused, before anything is uploaded, unless the
    directory is a whole mlmkit export (its files match its manifest) and the run's newest,
    and unless the Hub answers and the login may write there."""
    return publish(Path(run_dir).expanduser(), repo_id, f"repository {repo_id}",
                   private=private, revision=revision, message=message)
