"""Publishing: `mlmkit push` uploads a whole export and nothing private, the run named in its
commit; --push-to-hub asks the Hub for the login before any training writes a file; a resume
that trains nothing changes no file, and no later resume uploads unless asked again."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.utils import filter_repo_objects

from mlmkit import MlmkitError, push
from mlmkit.cli.main import main
from mlmkit.config import TrainConfig
from mlmkit.io.files import verify_manifest
from mlmkit.settings import speaking_cli
from mlmkit.training.runner import train

STEPS = ["--max-steps", "4", "--eval-every", "2", "--save-every", "2"]


def cli_args(model, data, out, *extra) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--text-field", "answers.text",
            "--limit", "100", "--block-size", "64", "--output", str(out), "--batch-size", "8",
            "--eval-batch-size", "32", "--learning-rate", "1e-3", "--log-every", "1", "--quiet",
            *STEPS, *extra]


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def hub(monkeypatch, whoami_hub):
    """A Hub on 127.0.0.1 that answers whoami (a write token of user 'me'), and an HfApi
    that records what would be uploaded instead of uploading it."""
    monkeypatch.setattr(constants, "ENDPOINT", whoami_hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    calls: list[tuple[str, dict]] = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", {"repo_id": repo_id, **kw}))

        def repo_info(self, repo_id, **kw):
            return SimpleNamespace(private=getattr(FakeApi, "private", True))

        def create_branch(self, repo_id, **kw):
            calls.append(("create_branch", {"repo_id": repo_id, **kw}))

        def upload_folder(self, **kw):
            folder = Path(kw["folder_path"])
            files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
            kw["uploaded"] = set(filter_repo_objects(files, allow_patterns=kw.get(
                "allow_patterns"), ignore_patterns=kw.get("ignore_patterns")))
            # What the Hub would hold: the card's text, and whether the manifest vouches for
            # every file uploaded as it is uploaded.
            kw["card"] = (folder / "README.md").read_text() if "README.md" in kw[
                "uploaded"] else None
            kw["manifest_problems"] = verify_manifest(folder)
            calls.append(("upload_folder", kw))
            return SimpleNamespace(commit_url=f"https://huggingface.co/{kw['repo_id']}/commit/c1")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return SimpleNamespace(calls=calls, api=FakeApi, login=whoami_hub)


def uploads(hub) -> list[dict]:
    return [kw for name, kw in hub.calls if name == "upload_folder"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_roberta, sample_path) -> Path:
    """A finished run (no push), with checkpoints and a training log beside its export."""
    out = tmp_path_factory.mktemp("runs") / "eli5-run"
    assert main(cli_args(tiny_roberta, sample_path, out)) == 0
    return out


def test_push_uploads_the_export_only_with_a_commit_naming_the_run(finished_run, hub, capsys):
    (finished_run / "notes.txt").write_text("not part of the export")
    try:
        assert main(["push", str(finished_run), "me/eli5", "--private", "--revision", "v1"]) == 0
    finally:
        (finished_run / "notes.txt").unlink()
    [up] = uploads(hub)
    files = up["uploaded"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "metrics.json",
            "train_config.json", "curves.png", "metrics.jsonl"} <= files
    assert not any(f.startswith("checkpoints/") for f in files)
    assert ".mlmkit-run" not in files and "notes.txt" not in files
    assert up["repo_id"] == "me/eli5" and up["revision"] == "v1"
    metrics = json.loads((finished_run / "metrics.json").read_text())
    message = up["commit_message"]
    assert "eli5-run" in message and "4 steps" in message
    assert f"{metrics['final']['perplexity']:.2f}" in message
    assert ("create_repo", {"repo_id": "me/eli5", "exist_ok": True, "private": True}) in hub.calls
    assert ("create_branch", {"repo_id": "me/eli5", "branch": "v1", "exist_ok": True}
            ) in hub.calls
    assert "https://huggingface.co/me/eli5/commit/c1" in capsys.readouterr().out


def test_push_from_python_returns_the_commit_url_and_takes_a_message(finished_run, hub):
    url = push(finished_run, "eli5", message="first cut")
    assert url == "https://huggingface.co/eli5/commit/c1"
    [up] = uploads(hub)
    assert up["commit_message"] == "first cut" and up.get("revision") is None
    # Not asked for privacy: the Hub's default visibility, not a forced public repo.
    assert ("create_repo", {"repo_id": "eli5", "exist_ok": True, "private": None}) in hub.calls


def test_the_uploaded_card_names_the_repository_pushed_to(finished_run, hub):
    """The run's card names where it was written (no --push-to-hub at training); pushed to
    me/eli5, the card uploaded loads me/eli5 and is titled so, and the manifest uploaded
    vouches for it, while the run directory keeps every byte."""
    before = digests(finished_run)
    assert 'pipeline("fill-mask", model="me/eli5")' not in (finished_run / "README.md"
                                                              ).read_text()
    for repo in ("me/eli5", "me/other"):  # a second push: from the run again, not the first
        push(finished_run, repo)
        [up] = uploads(hub)
        card = up["card"]
        assert f'fill = pipeline("fill-mask", model="{repo}")' in card
        assert f"\n# {repo}\n" in card and f"**{repo}** is " in card
        assert "eli5-run" not in card.split("## How to use")[1]
        assert up["manifest_problems"] == [] and "manifest.json" in up["uploaded"]
        assert digests(finished_run) == before
        hub.calls.clear()


def test_a_card_that_names_the_repository_is_uploaded_from_the_run(tiny_roberta, sample_path,
                                                                   tmp_path, hub):
    out = tmp_path / "run"
    assert main(cli_args(tiny_roberta, sample_path, out, "--push-to-hub", "me/x")) == 0
    hub.calls.clear()
    push(out, "me/x")
    [up] = uploads(hub)
    assert Path(up["folder_path"]) == out and up["card"] == (out / "README.md").read_text()


def test_private_push_to_an_existing_public_repo_is_refused(finished_run, hub):
    hub.api.private = False
    with pytest.raises(MlmkitError, match="exists and is public") as e:
        push(finished_run, "me/eli5", private=True)
    assert "\n" not in str(e.value) and not uploads(hub)


@pytest.mark.parametrize("damage", ["manifest", "weights", "plain"])
def test_push_refuses_a_directory_that_is_not_a_whole_export(finished_run, tmp_path, hub, damage):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    if damage == "manifest":
        (run / "manifest.json").unlink()
    elif damage == "weights":
        with open(run / "model.safetensors", "r+b") as fh:
            fh.seek(200)
            byte = fh.read(1)
            fh.seek(200)
            fh.write(bytes([byte[0] ^ 1]))
    else:  # a Hugging Face directory mlmkit did not write
        for p in run.iterdir():
            if p.is_dir():
                shutil.rmtree(p)
        (run / "manifest.json").unlink()
        (run / "train_config.json").unlink()
    before = digests(run)
    assert main(["push", str(run), "me/eli5"]) == 2
    assert not uploads(hub) and digests(run) == before


def test_push_refuses_an_export_older_than_the_run(finished_run, tmp_path, hub):
    """A run resumed for more steps and killed mid-way: its export is of step 4, its newest
    checkpoint of step 6; uploading the old export as the run would mislabel it."""
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    shutil.copytree(run / "checkpoints" / "step_4", run / "checkpoints" / "step_6")
    with pytest.raises(MlmkitError, match="step 6") as e:
        push(run, "me/eli5")
    assert f"train(resume='{run}')" in str(e.value) and not uploads(hub)  # as Python says it
    with speaking_cli(), pytest.raises(MlmkitError) as e:
        push(run, "me/eli5")
    assert f"`mlmkit train --resume {run}`" in str(e.value)  # as the command line says it


def test_push_refuses_a_missing_directory(tmp_path, hub):
    with pytest.raises(MlmkitError, match="no such directory"):
        push(tmp_path / "nope", "me/eli5")


# -- the preflight -----------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["offline", "no-token", "read-token", "fine-grained",
                                  "other-owner", "invalid-token", "unreachable"])
def test_push_to_hub_is_refused_before_training_writes_anything(
        case, tiny_roberta, sample_path, tmp_path, hub, monkeypatch, capsys):
    expected = {"offline": "HF_HUB_OFFLINE", "no-token": "hf auth login",
                "read-token": "read-only", "fine-grained": "cannot write to me",
                "other-owner": "not a member of someone", "invalid-token": "invalid",
                "unreachable": "cannot reach the Hugging Face Hub"}[case]
    repo = "someone/eli5" if case == "other-owner" else "me/eli5"
    if case == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    elif case == "no-token":
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    elif case == "read-token":
        hub.login.login("read")
    elif case == "fine-grained":
        hub.login.login("fineGrained", scoped=[
            {"entity": {"type": "user", "name": "me"}, "permissions": ["repo.content.read"]}])
    elif case == "invalid-token":
        hub.login.status = 401
    elif case == "unreachable":
        import socket

        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    out = tmp_path / "never-made"
    t0 = time.monotonic()
    code = main(cli_args(tiny_roberta, sample_path, out, "--push-to-hub", repo))
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - t0 < 5
    assert code == 2 and not out.exists() and not uploads(hub)
    assert err.startswith(f"error: --push-to-hub {repo}: ") and expected in err
    assert "\n" not in err


def test_fine_grained_token_with_write_access_passes(hub):
    from mlmkit.io.hub import check_push_access

    hub.login.login("fineGrained", orgs=["lab"], scoped=[
        {"entity": {"type": "org", "name": "lab"}, "permissions": ["repo.write"]}])
    check_push_access("lab/eli5", "--push-to-hub")
    with pytest.raises(MlmkitError, match="cannot write to me"):
        check_push_access("me/eli5", "--push-to-hub")


# -- a resume that does nothing ------------------------------------------------------------------

def test_finished_run_resumed_with_push_uploads_and_writes_nothing(finished_run, hub, capsys):
    """Asked to publish a finished run, the resume publishes it (what was asked is possible
    without training) and leaves every file as it was; the next resume uploads nothing."""
    before = digests(finished_run)
    assert main(["train", "--resume", str(finished_run), "--push-to-hub", "me/x"]) == 0
    assert digests(finished_run) == before
    assert "push_to_hub" not in json.loads((finished_run / "train_config.json").read_text())
    [up] = uploads(hub)
    assert up["repo_id"] == "me/x" and "checkpoints/step_4/model.safetensors" not in up[
        "uploaded"]
    assert 'model="me/x"' in up["card"] and up["manifest_problems"] == []
    out = capsys.readouterr().out
    assert "already trained" in out and "https://huggingface.co/me/x/commit/c1" in out

    hub.calls.clear()
    assert main(["train", "--resume", str(finished_run)]) == 0
    assert digests(finished_run) == before and not uploads(hub)


def test_push_to_hub_is_asked_per_call_never_stored(tiny_roberta, sample_path, tmp_path, hub):
    out = tmp_path / "run"
    assert main(cli_args(tiny_roberta, sample_path, out, "--push-to-hub", "me/x")) == 0
    [up] = uploads(hub)
    assert {"model.safetensors", "README.md", "metrics.json"} <= up["uploaded"]
    assert not any(f.startswith("checkpoints/") for f in up["uploaded"])
    assert "push_to_hub" not in json.loads((out / "train_config.json").read_text())
    # The card names the repository it was published to.
    assert 'model="me/x"' in (out / "README.md").read_text()
    # A later resume that trains further does not upload unless asked again.
    hub.calls.clear()
    assert main(["train", "--resume", str(out), "--max-steps", "6"]) == 0
    assert not uploads(hub)
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6


def test_a_run_that_stored_push_to_hub_does_not_upload_on_resume(finished_run, tmp_path, hub):
    """Runs written before push_to_hub stopped being stored: a resume does not take it over."""
    import shutil

    run = tmp_path / "old"
    shutil.copytree(finished_run, run)
    path = run / "train_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "push_to_hub": "me/x"}))
    assert main(["train", "--resume", str(run), "--max-steps", "6"]) == 0
    assert not uploads(hub)


def test_python_train_checks_the_hub_before_creating_the_output(tiny_roberta, sample_path,
                                                               tmp_path, hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "py"
    cfg = TrainConfig(model=str(tiny_roberta), data=str(sample_path), output=str(out),
                      text_field=["answers.text"], limit=40, block_size=64, max_steps=1,
                      push_to_hub="me/x")
    with pytest.raises(MlmkitError, match="HF_HUB_OFFLINE"):
        train(cfg)
    assert not out.exists()


def test_keras_runs_publish_through_the_same_push(tiny_roberta, sample_path, tmp_path, hub):
    from mlmkit.errors import MlmkitError as Missing

    try:
        import mlmkit.training.keras_recipe  # noqa: F401
    except Missing as e:
        pytest.skip(f"keras / keras-hub not installed: {e}")
    out = tmp_path / "keras"
    r = train(TrainConfig(model=str(tiny_roberta), data=str(sample_path), output=str(out),
                          text_field=["answers.text"], limit=60, block_size=64, batch_size=8,
                          max_steps=2, backend="keras", push_to_hub="me/k"))
    assert r.hub_url == "https://huggingface.co/me/k/commit/c1"
    [up] = uploads(hub)
    assert {"model.safetensors", "README.md", "metrics.json"} <= up["uploaded"]
    assert not any(f.startswith("checkpoints/") for f in up["uploaded"])
