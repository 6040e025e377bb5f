"""The directory a Ray batch job writes: what its files are called, whether a shard is done
(its sealed completion record, its files there at their sizes), and whether a directory may
take a job (new, empty, or the same job's earlier run, which then resumes). The job record is
written first, so a run killed at any instant leaves a directory the same command resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlmkit.batch.shards import Shard
from mlmkit.errors import MlmkitError
from mlmkit.io.files import (
    is_partial_write,
    probe_writable,
    read_sealed_json,
    remove_partial_writes,
    write_sealed_json,
)
from mlmkit.settings import named

JOB_FILE, MANIFEST, ERRORS, SHARDS = "_job.json", "_manifest.json", "_errors.jsonl", "_shards"


def shard_marker(out: Path, index: int) -> Path:
    return out / SHARDS / f"{index:06d}.json"


def finished_shard(out: Path, shard: Shard, digest: str) -> dict[str, Any] | None:
    """The completion record of `shard` if it is done: sealed, of this job, and its files there
    with their recorded sizes (a digest check would read the whole output again)."""
    rec, _ = read_sealed_json(shard_marker(out, shard.index))
    if rec is None or rec.get("job") != digest or not isinstance(rec.get("files"), dict):
        return None
    for name, entry in rec["files"].items():
        p = out / name
        if not p.is_file() or p.stat().st_size != entry.get("size"):
            return None
    return rec


def open_job_dir(out: Path, record: dict[str, Any]) -> list[Shard] | None:
    """Make `out` ready for the job: a new or empty directory, or one an earlier run of the very
    same job wrote; returns that run's shard plan, or None when there is none yet (plan it, then
    `write_plan`). The job record is the first thing written in a new directory, so a run
    killed at any point leaves one the same command resumes. Refuses anything else, deleting
    nothing but the temporary files of its own killed writes."""
    at, another = named("output", out), f"another {named('output')}"
    if out.exists() and not out.is_dir():
        raise MlmkitError(f"{at}: is a file; expected a directory (one file per "
                          "shard goes there)")
    probe_writable(out, named("output"))
    if not (out / JOB_FILE).exists():
        if out.exists() and not _only_a_start(out):
            raise MlmkitError(f"{at}: not empty and not written by an mlmkit batch "
                              f"job (no {JOB_FILE}); expected a new or empty directory")
        out.mkdir(parents=True, exist_ok=True)
        remove_partial_writes(out)
        write_sealed_json(out / JOB_FILE, record)  # first: from here on the directory is ours
        (out / SHARDS).mkdir(exist_ok=True)
        return None
    old, problem = read_sealed_json(out / JOB_FILE)
    if old is None:
        raise MlmkitError(f"{at}: {problem}; expected the {JOB_FILE} an earlier run "
                          "wrote (move the directory aside to start over)")
    was, now = old.get("settings", {}), record["settings"]
    diffs = [f"{k} {was.get(k)!r} there, {now.get(k)!r} here" for k in sorted({*was, *now})
             if was.get(k) != now.get(k)]
    if diffs:
        raise MlmkitError(f"{at}: holds a job with other settings ({'; '.join(diffs)})"
                          f"; expected the same arguments to resume it, or {another}")
    if old.get("inputs") != record["inputs"]:
        raise MlmkitError(f"{at}: its job read other input files (or they changed "
                          f"since: {_first_difference(old.get('inputs'), record['inputs'])}); "
                          f"expected the same input to resume it, or {another}")
    (out / SHARDS).mkdir(exist_ok=True)  # a kill right after the job record leaves none
    for d in (out, out / SHARDS):
        remove_partial_writes(d)
    if "shards" not in old:  # killed while planning: plan again
        return None
    return [Shard(**s) for s in old["shards"]]


def write_plan(out: Path, record: dict[str, Any], shards: list[Shard]) -> None:
    """The job record with its shard plan, replacing the record `open_job_dir` wrote."""
    write_sealed_json(out / JOB_FILE, {**record, "shards": [s.to_dict() for s in shards]})


def _only_a_start(out: Path) -> bool:
    """Whether `out` holds nothing but what a start of a job leaves before its record: the
    temporary files of killed writes, and an empty _shards/ (made first by earlier versions)."""
    for p in out.iterdir():
        if not (is_partial_write(p) or (p.name == SHARDS and p.is_dir() and not p.is_symlink()
                                        and not any(p.iterdir()))):
            return False
    return True


def _first_difference(was: Any, now: list[dict]) -> str:
    was = {f["uri"]: f for f in was} if isinstance(was, list) else {}
    for f in now:
        w = was.get(f["uri"])
        if w is None:
            return f"{f['uri']} is new"
        if w != f:
            return (f"{f['uri']}: {w.get('size'):,} bytes there, {f['size']:,} here, or "
                    "modified since")
    return f"{len(set(was) - {f['uri'] for f in now})} of its files are gone"
