"""Atomic writes leave the old file or the new one; manifests catch flipped and cut bytes."""

import os

import pytest

from mlmkit.config import MlmkitError
from mlmkit.files import (
    atomic_open,
    atomic_write,
    contains,
    is_run_dir,
    mark_run_dir,
    verify_manifest,
    write_manifest,
)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    atomic_write(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as fh:
            fh.write("half of the new")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new" and oct(path.stat().st_mode & 0o777) != "0o600"


def test_write_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(MlmkitError, match="is a file, not a directory"):
        atomic_write(tmp_path / "f" / "out.json", "{}")


def test_manifest_detects_flipped_truncated_and_missing_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(bytes(range(256)))
    (tmp_path / "sub" / "b.json").write_text('{"k": 1}')
    assert verify_manifest(tmp_path) == ["no manifest.json (the directory was not finished)"]
    write_manifest(tmp_path)
    assert verify_manifest(tmp_path) == []
    data = bytearray((tmp_path / "a.bin").read_bytes())
    data[100] ^= 1
    (tmp_path / "a.bin").write_bytes(data)
    assert verify_manifest(tmp_path) == ["a.bin does not match its sha256 digest"]
    (tmp_path / "a.bin").write_bytes(data[:-1])
    assert verify_manifest(tmp_path) == ["a.bin has 255 bytes, expected 256"]
    (tmp_path / "sub" / "b.json").unlink()
    assert "sub/b.json is missing" in verify_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{trunc")
    assert verify_manifest(tmp_path) == ["manifest.json is unreadable (JSONDecodeError)"]


def test_run_marker_and_containment(tmp_path):
    assert not is_run_dir(tmp_path)
    mark_run_dir(tmp_path)
    assert is_run_dir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "in")
    assert contains(tmp_path, tmp_path / "link") and contains(tmp_path, tmp_path)
    assert not contains(tmp_path / "in", tmp_path)
