"""`mlmkit train --push-to-hub` as a user runs it: offline, without a login or with a read-only
token it stops in seconds with one line and exit 2, before the output directory exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class ReadOnlyLogin(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = json.dumps({"type": "user", "name": "me", "orgs": [], "auth": {
            "type": "access_token", "accessToken": {"role": "read"}}}).encode()
        self.send_response(200 if self.path == "/api/whoami-v2" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ReadOnlyLogin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("case", ["offline", "no-login", "read-token"])
def test_push_to_hub_preflight_refuses_in_seconds(case, tiny_roberta, sample_path, tmp_path,
                                                  hub_url):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "0",
           "TRANSFORMERS_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home"),
           "HF_ENDPOINT": hub_url}
    env.pop("HF_TOKEN", None)
    env.pop("HUGGING_FACE_HUB_TOKEN", None)
    if case == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    elif case == "read-token":
        env["HF_TOKEN"] = "hf_fake"
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
