"""Atomic writes leave the old file or the new one; manifests and sealed records catch flipped
and cut bytes."""

import json
import os
import stat

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


# ---------------------------------------------------------------- writes onto what is not a file

def _char_device(path):
    """A character device node of our own (the numbers of /dev/null), so that a wrong
    implementation replaces this node, not the machine's /dev/null; None where it cannot be
    made (not root)."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        return None
    return path


def test_a_fifo_is_written_into_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so the writer's open returns
    try:
        atomic_write(fifo, "one\n")
        with atomic_open(fifo, "wb") as fh:
            fh.write(b"two\n")
        assert os.read(reader, 100) == b"one\ntwo\n"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["pipe"]


def test_a_character_device_is_written_into_and_stays_one(tmp_path):
    dev = _char_device(tmp_path / "null")
    if dev is not None:  # first on a node of our own: a wrong rename costs nothing here
        atomic_write(dev, "gone")
        assert stat.S_ISCHR(os.lstat(dev).st_mode) and os.listdir(tmp_path) == ["null"]
    atomic_write("/dev/null", "gone")
    with atomic_open("/dev/null", "wb") as fh:
        fh.write(b"gone")
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    assert not [n for n in os.listdir("/dev") if ".mlmkit-" in n]  # no temporary left there


def test_a_descriptor_link_is_written_through_and_keeps_what_it_had(tmp_path):
    # /dev/stdout is such a link (-> /proc/self/fd/1); renaming over it would replace the
    # machine's /dev/stdout, and the file behind the descriptor would get nothing.
    sink = tmp_path / "sink.txt"
    sink.write_text("kept\n")
    link = tmp_path / "stdout"
    with open(sink, "a") as held:
        link.symlink_to(f"/proc/self/fd/{held.fileno()}")
        atomic_write(link, "new\n")
    assert link.is_symlink() and sink.read_text() == "kept\nnew\n"


def test_a_link_to_a_regular_file_stays_a_link_and_its_file_is_replaced(tmp_path):
    (tmp_path / "real.txt").write_text("old")
    (tmp_path / "link.txt").symlink_to("real.txt")
    atomic_write(tmp_path / "link.txt", "new")
    assert (tmp_path / "link.txt").is_symlink() and (tmp_path / "real.txt").read_text() == "new"
    (tmp_path / "dangling").symlink_to("made.txt")
    atomic_write(tmp_path / "dangling", "made")
    assert (tmp_path / "dangling").is_symlink() and (tmp_path / "made.txt").read_text() == "made"


def test_what_is_neither_file_device_nor_fifo_is_refused_in_one_line_and_kept(tmp_path):
    import socket

    (tmp_path / "dir").mkdir()
    (tmp_path / "to-dir").symlink_to("dir")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    (tmp_path / "to-sock").symlink_to("sock")
    kinds = {"dir": "a directory", "to-dir": "a directory", "sock": "a socket",
             "to-sock": "a socket"}
    try:
        os.mknod(tmp_path / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 200))
        kinds["blk"] = "a block device"
    except PermissionError:
        pass
    before = {n: os.lstat(tmp_path / n).st_mode for n in os.listdir(tmp_path)}
    try:
        for name, kind in kinds.items():
            with pytest.raises(MlmkitError) as e:
                atomic_write(tmp_path / name, "x")
            assert str(e.value) == (f"{tmp_path / name}: is {kind}; expected a regular file, "
                                    "a character device or a FIFO")
    finally:
        sock.close()
    assert {n: os.lstat(tmp_path / n).st_mode for n in os.listdir(tmp_path)} == before


def test_dash_writes_to_stdout(capsysbinary, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    atomic_write("-", "text\n")
    with atomic_open("-", "wb") as fh:
        fh.write(b"bytes\n")
    assert capsysbinary.readouterr().out == b"text\nbytes\n"
    assert os.listdir(tmp_path) == []  # no file named '-'
