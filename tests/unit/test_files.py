"""Atomic writes leave the old file or the new one; manifests and sealed records catch flipped
and cut bytes."""

import json
import os

import pytest

from mlmkit.errors import MlmkitError
from mlmkit.io.files import (
    atomic_open,
    atomic_write,
    check_entries,
    contains,
    file_entries,
    is_run_dir,
    mark_run_dir,
    read_sealed_json,
    verify_manifest,
    write_manifest,
    write_sealed_json,
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


def test_sealed_record_catches_a_flip_that_still_parses(tmp_path):
    path = tmp_path / "meta.json"
    record = {"blocks": 60, "dtype": "uint16"}
    write_sealed_json(path, record)
    assert read_sealed_json(path) == (record, "")
    text = path.read_text()
    path.write_text(text.replace("60", "61"))  # still valid JSON, one bit away
    assert read_sealed_json(path) == (None, "meta.json does not match its own digest")
    path.write_text(text[:-1])
    assert read_sealed_json(path) == (None, "meta.json is unreadable (JSONDecodeError)")
    path.write_bytes(b"\xff\xfe" + text.encode())
    assert read_sealed_json(path) == (None, "meta.json is unreadable (UnicodeDecodeError)")
    path.write_text(json.dumps(record))  # no seal at all
    assert read_sealed_json(path) == (None, "meta.json is unreadable (KeyError)")
    path.write_text("[1, 2]")
    assert read_sealed_json(path) == (None, "meta.json is unreadable (TypeError)")
    path.unlink()
    assert read_sealed_json(path) == (None, "meta.json is missing")


def test_malformed_entries_are_reported_not_raised(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    entries = file_entries(tmp_path, ["a.bin"])
    assert check_entries(tmp_path, entries) == []
    bad = {"a.bin": {"size": "3"}, "b.bin": 7, "c.bin": {"size": 1, "sha256": "00"}}
    assert check_entries(tmp_path, bad) == ["a.bin has no size and sha256 on record",
                                            "b.bin has no size and sha256 on record",
                                            "c.bin is missing"]
