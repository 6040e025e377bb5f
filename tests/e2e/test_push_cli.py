"""`mlmkit train --push-to-hub` as a user runs it: offline, without a login or with a read-only
token it stops in seconds with one line and exit 2, before the output directory exists."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("case", ["offline", "no-login", "read-token"])
def test_push_to_hub_preflight_refuses_in_seconds(case, tiny_roberta, sample_path, tmp_path,
                                                  whoami_hub):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "0",
           "TRANSFORMERS_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home"),
           "HF_ENDPOINT": whoami_hub.url}
    env.pop("HF_TOKEN", None)
    env.pop("HUGGING_FACE_HUB_TOKEN", None)
    if case == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    elif case == "read-token":
        env["HF_TOKEN"] = "hf_fake"
        whoami_hub.login("read")
    out = tmp_path / "never-made"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mlmkit.cli.main", "train", "--model", str(tiny_roberta),
         "--data", str(sample_path), "--text-field", "answers.text", "--output", str(out),
         "--push-to-hub", "me/eli5"], env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - t0
    expected = {"offline": "HF_HUB_OFFLINE=1", "no-login": "hf auth login",
                "read-token": "read-only"}[case]
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: --push-to-hub me/eli5: ") and expected in proc.stderr
    assert proc.stderr.count("\n") == 1 and not proc.stdout
    assert not out.exists()
    assert seconds < 30  # the import of the CLI and torch included; training never starts
