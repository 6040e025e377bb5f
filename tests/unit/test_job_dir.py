"""A Ray job's directory (batch/job_dir.py): the job record is the first thing written in it,
so whatever a kill at each early point leaves is resumed by the same command, and a
directory holding anything else is refused and left as it was."""

from __future__ import annotations

import os

import pytest

from mlmkit.batch.job_dir import JOB_FILE, SHARDS, open_job_dir
from mlmkit.batch.shards import Shard
from mlmkit.errors import MlmkitError
from mlmkit.io.files import atomic_open, probe_writable, read_sealed_json, write_sealed_json

RECORD = {"settings": {"command": "fill", "model": "/m", "top_k": 3},
          "inputs": [{"uri": "/in.txt", "size": 10, "mtime_ns": 1, "kind": "text"}]}
PLAN = [Shard(0, "/in.txt", "text", 0, 0, 10, 0, -1).to_dict()]


class Killed(BaseException):
    pass


def _killed_in(write):
    """What a kill inside `write()` leaves: its temporary file, which a SIGKILL does not
    remove (os.unlink does nothing here)."""
    real_unlink = os.unlink
    os.unlink = lambda p: None
    try:
        write()
    except Killed:
        pass
    finally:
        os.unlink = real_unlink


def _half_written(path):
    with atomic_open(path) as fh:
        fh.write('{"settings": {"comm')
        raise Killed


def _kill_points(out):
    """The states a kill leaves before the shard plan is written, in the order they happen."""
    yield "nothing yet"
    out.mkdir()
    yield "an empty directory"
    _killed_in(lambda: probe_writable(out, "--output"))
    yield "the write probe's file"
    _killed_in(lambda: _half_written(out / JOB_FILE))
    yield "half a job record under its temporary name"
    write_sealed_json(out / JOB_FILE, RECORD)
    yield "the job record, no plan"
    (out / SHARDS).mkdir()
    yield "the job record and _shards/, no plan"


@pytest.mark.parametrize("point", range(6))
def test_a_kill_at_each_early_point_leaves_a_directory_the_same_job_resumes(tmp_path, point):
    out = tmp_path / "out"
    states = _kill_points(out)
    for _ in range(point + 1):
        what = next(states)
    assert open_job_dir(out, RECORD) is None, what  # resumed: nothing was planned, plan now
    assert read_sealed_json(out / JOB_FILE) == (RECORD, "")
    assert sorted(os.listdir(out)) == [JOB_FILE, SHARDS]  # our leftovers gone, nothing else
    write_sealed_json(out / JOB_FILE, {**RECORD, "shards": PLAN})
    assert open_job_dir(out, RECORD) == [Shard(**PLAN[0])]  # and once planned, the plan


def test_an_empty_shards_directory_from_an_earlier_version_resumes(tmp_path):
    # Earlier versions made _shards/ before _job.json: a kill between left only this.
    (tmp_path / "out" / SHARDS).mkdir(parents=True)
    assert open_job_dir(tmp_path / "out", RECORD) is None
    assert read_sealed_json(tmp_path / "out" / JOB_FILE) == (RECORD, "")


@pytest.mark.parametrize("theirs", ["notes.txt", f"{SHARDS}/000000.json", "sub/"])
def test_anything_else_without_a_job_record_is_refused_and_kept(tmp_path, theirs):
    out = tmp_path / "out"
    (out / SHARDS).mkdir(parents=True)
    (out / ".x.mlmkit-abc.tmp").write_text("a temporary name of ours")
    if theirs.endswith("/"):
        (out / theirs).mkdir()
    else:
        (out / theirs).write_text("keep me")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(MlmkitError, match="not empty and not written by an mlmkit batch job"):
        open_job_dir(out, RECORD)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_a_job_record_without_a_plan_still_refuses_other_settings(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_sealed_json(out / JOB_FILE, RECORD)
    other = {**RECORD, "settings": {**RECORD["settings"], "top_k": 5}}
    with pytest.raises(MlmkitError, match=r"other settings \(top_k 3 there, 5 here\)"):
        open_job_dir(out, other)
    assert read_sealed_json(out / JOB_FILE) == (RECORD, "")
