"""Fill or score a corpus larger than one machine on a Ray cluster: `mlmkit fill/score --engine
ray` and `run_batch(...)`, resumable after a lost node or a killed job, every record once.

Ray Data runs a pool of actors (`map_batches` with a callable class: one model per actor, loaded
once) over the shards of the input (fixed row ranges, `shards.py`). Each actor reads its shard
straight from storage, runs the same task (`inference.tasks`: its engine, its stream) as
`mlmkit fill` / `mlmkit score`, and writes the shard's records itself, so no text or record
passes through the object store or the driver. Why not
`read_text(...).map_batches(...).write_parquet(...)`: its blocks are not the same from one run
to the next and carry no row numbers, and its readers stop at the first line that is not UTF-8
or not JSON; a job that resumes needs fixed row ranges, and a bad record must become an error
in its place.

The output directory holds `part-NNNNNN.parquet` (or `.jsonl`) per shard, with `row` and
`output` (the JSON line `mlmkit fill`/`score --output` writes for that record); `_shards/`,
each shard's completion record, written only once its files are in place; `_job.json`, the
settings and the shard plan; and, once all shards are done, `_errors.jsonl` and
`_manifest.json` (`job_dir.py` names them and decides what resumes). Parquet readers skip
names starting with `_`, so `pandas.read_parquet(DIR)` reads the records alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlmkit.batch.job_dir import (
    ERRORS,
    MANIFEST,
    SHARDS,
    finished_shard,
    open_job_dir,
    shard_marker,
    write_plan,
)
from mlmkit.batch.shards import InputFile, Shard, count_rows, list_inputs, plan_shards, read_shard
from mlmkit.errors import MlmkitError
from mlmkit.inference.engine import check_budget
from mlmkit.inference.tasks import Task, task_for, task_named
from mlmkit.io.files import (
    atomic_open,
    atomic_write,
    file_entries,
    json_digest,
    write_sealed_json,
)
from mlmkit.io.inputs import LineTally, plural
from mlmkit.quiet import libraries_quiet
from mlmkit.settings import named

FORMATS = ("parquet", "jsonl")


@dataclass(frozen=True)
class BatchJob:
    """What decides a job's output; a rerun into the same directory must repeat all of it.

    `command`: the task's name, "fill", "score" or "rescore"; `options`: its parameters' fields
    (fill's top_k and targets, score's metric and per_token, rescore's weight too), as the
    job's settings store them; `shard_rows`: rows per shard and output file; `text_fields`:
    the dotted fields holding each record's text (None: 'text').
    `BatchJob.of(params, model, ...)` builds one from typed parameters.
    """

    command: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    dtype: str = "auto"
    runtime: str = "torch"
    shard_rows: int = 10_000
    format: str = "parquet"
    text_fields: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.text_fields is not None:  # a list from the CLI or _job.json, kept as a tuple
            object.__setattr__(self, "text_fields", tuple(self.text_fields))

    @classmethod
    def of(cls, params: Any, model: str, **settings: Any) -> BatchJob:
        """The job running `params`' task (`FillParams`, `ScoreParams`, `RescoreParams`)."""
        return cls(task_for(params).name, model, asdict(params), **settings)

    @property
    def task(self) -> Task:
        """The inference task the job runs (fill or score)."""
        return task_named(self.command)

    @property
    def params(self) -> Any:
        """The task's parameters, checked (as any entry point's are) when built."""
        return self.task.params_from(self.options)


@dataclass(frozen=True)
class BatchResources:
    """Where and on what a job runs; free to change between a run and the rerun that resumes
    it. `address`: None starts a local Ray, "auto" or host:port joins a cluster."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    device: str = "auto"
    batch_size: int | None = None
    max_tokens: int | None = None
    quiet: bool = True


@dataclass
class BatchResult:
    """What a job did, counted over all its shards (those done by earlier runs included)."""

    output: str
    shards: int
    skipped: int  # shards an earlier run had finished
    records: int  # rows read, blank lines not included
    outputs: int
    written: int  # outputs of the shards this run did (not those it skipped)
    errors: int
    blank: int
    seconds: float

    def summary(self) -> str:
        # A rerun counts what it wrote itself: "454 written" after a run that skipped every
        # shard told of work not done.
        total = f" by this run, {self.outputs:,} in all" if self.skipped else ""
        parts = [f"mlmkit: {plural(self.records, 'record')} in {plural(self.shards, 'shard')}"
                 f" ({self.skipped:,} already done, skipped): {self.written:,} written to "
                 f"{self.output}{total}"]
        if self.errors:
            parts.append(f"{plural(self.errors, 'error')} in {Path(self.output) / ERRORS}")
        if self.blank:
            parts.append(f"{plural(self.blank, 'blank line')} skipped")
        return "; ".join(parts) + f"; {self.seconds:.1f} s"


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (the core package alone has no Ray Data)
    except ImportError:
        raise MlmkitError(f"{named('engine', 'ray')} needs Ray Data: pip install "
                          "'mlmkit[ray]'") from None
    return ray


def check_job(job: BatchJob, res: BatchResources) -> None:
    """Refuse a bad setting in one line before any cluster starts or file is written: the
    task's parameters and the engine's budgets by their own checks, then the job's."""
    job.task.params_from(job.options)
    check_budget(res.batch_size, res.max_tokens)
    if job.format not in FORMATS:
        raise MlmkitError(f"{named('format', job.format)}: expected parquet or jsonl")
    for name, value in (("shard_rows", job.shard_rows), ("workers", res.workers)):
        if not isinstance(value, int) or value < 1:
            raise MlmkitError(f"{named(name, value)}: expected a positive integer")
    for name, value in (("gpus_per_worker", res.gpus_per_worker),
                        ("cpus_per_worker", res.cpus_per_worker)):
        if value < 0:
            raise MlmkitError(f"{named(name, value)}: expected a number >= 0")


# ---------------------------------------------------------------------- one shard, on an actor

def engine_stream(job: BatchJob, res: BatchResources) -> Callable[[Iterable], Iterable]:
    """The task's stream for the job, on an engine loaded once, as `mlmkit fill` / `mlmkit
    score` run it: results in input order, an `MlmkitError` in place of a record that failed."""
    task, params = job.task, job.params
    engine = task.load(job.model, device=res.device, dtype=job.dtype, runtime=job.runtime,
                       batch_size=res.batch_size, max_tokens=res.max_tokens)
    return lambda items: task.run(engine, items, params)


def run_shard(stream: Callable[[Iterable], Iterable], shard: Shard, job: BatchJob, out: Path,
              digest: str) -> dict[str, Any]:
    """Run one shard and write its files, then its completion record; returns that record."""
    start, started = time.perf_counter(), time.time()
    tally = LineTally()
    pending: deque[tuple[int, str, str | None]] = deque()  # read, and not answered yet

    def items() -> Iterable[Any]:
        fields = list(job.text_fields) if job.text_fields else None
        for row, where, item, problem in read_shard(shard, tally, job.task.reads_records,
                                                    text_fields=fields):
            pending.append((row, where, problem))
            yield item

    rows, outputs, errors = [], [], []
    for res in stream(items()):
        row, where, problem = pending.popleft()
        if problem is not None or isinstance(res, MlmkitError):
            # The message `mlmkit fill --input` writes in the error record of that line.
            errors.append(json.dumps({"row": row, "error": f"{where}: {problem or res}"}))
        else:
            rows.append(row)
            outputs.append(json.dumps(res))
    names = _write_shard_files(out, shard.index, rows, outputs, errors, job.format)
    record = {"shard": shard.index, "job": digest, "row": shard.row, "rows": shard.rows,
              "records": len(rows) + len(errors), "outputs": len(rows), "errors": len(errors),
              "blank": tally.blank, "files": file_entries(out, names),
              "host": socket.gethostname(), "pid": os.getpid(), "started": started,
              "finished": time.time(), "seconds": round(time.perf_counter() - start, 3)}
    write_sealed_json(shard_marker(out, shard.index), record)  # last: the shard is done
    return record


def _write_shard_files(out: Path, index: int, rows: list[int], outputs: list[str],
                       errors: list[str], fmt: str) -> list[str]:
    """Each file atomically (temporary name, then rename): a kill leaves none or all of it."""
    names = []
    if errors:
        names.append(f"{SHARDS}/{index:06d}.errors.jsonl")
        atomic_write(out / names[-1], "".join(e + "\n" for e in errors))
    names.append(f"part-{index:06d}.{fmt}")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"row": pa.array(rows, pa.int64()),
                          "output": pa.array(outputs, pa.string())})
        with atomic_open(out / names[-1], "wb") as fh:
            pq.write_table(table, fh)
    else:  # the output as the JSON value it is, not a string of it
        atomic_write(out / names[-1], "".join(f'{{"row": {r}, "output": {o}}}\n'
                                              for r, o in zip(rows, outputs)))
    return names


class ShardWorker:
    """A Ray Data actor: the model loaded once, then one shard per call."""

    def __init__(self, job: dict, res: dict, out: str, digest: str) -> None:
        self.job, self.res = BatchJob(**job), BatchResources(**res)
        self.out, self.digest = Path(out), digest
        logging.getLogger("transformers").setLevel(logging.ERROR)
        if not self.res.gpus_per_worker:
            import torch

            # Ray gives the actor its CPUs; torch would otherwise start a thread per core of
            # the node and the actors of one node would fight over them.
            torch.set_num_threads(max(1, int(self.res.cpus_per_worker)))
        self.stream = engine_stream(self.job, self.res)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        done = [run_shard(self.stream, Shard(**json.loads(s)), self.job, self.out, self.digest)
                for s in batch["shard"]]
        return {"summary": np.array([json.dumps(d) for d in done], dtype=object)}


# ---------------------------------------------------------------------- the job record

def _job_record(job: BatchJob, inputs: list[InputFile]) -> dict[str, Any]:
    # Options flat among the settings, so that a refusal names the one that differs; through
    # JSON, so that it compares equal to what a rerun reads back (tuples, ints).
    # text_fields only when given, so a job directory written before it existed still matches.
    settings = {**{k: v for k, v in asdict(job).items() if k != "options"
                   and not (k == "text_fields" and v is None)}, **job.options}
    return json.loads(json.dumps({"settings": settings, "inputs": [asdict(f) for f in inputs]}))


# ---------------------------------------------------------------------- the driver

def run_batch(job: BatchJob, input_spec: str, output: str | Path,
              res: BatchResources = BatchResources(),
              on_shard: Callable[[dict[str, Any]], None] | None = None) -> BatchResult:
    """Run `job` over every record of `input_spec` (a file, directory or glob, on any
    filesystem pyarrow reads) into the directory `output`, on Ray Data actors; a rerun with
    the same job resumes, skipping the shards already done. `on_shard` gets each shard's
    completion record as the driver learns of it."""
    started = time.perf_counter()
    check_job(job, res)
    ray = import_ray()
    out = Path(output).expanduser().absolute()  # the actors' working directory is not ours
    if Path(job.model).exists():
        job = BatchJob(**{**asdict(job), "model": str(Path(job.model).absolute())})
    inputs = list_inputs(input_spec)
    record = _job_record(job, inputs)
    digest = json_digest(record)
    shards = open_job_dir(out, record)
    todo = None if shards is None else [s for s in shards
                                        if finished_shard(out, s, digest) is None]
    if todo != []:  # a finished job needs no cluster
        ours = not ray.is_initialized()
        # Ray's loggers ("ray", "ray.data") back as they were once the job is done.
        with libraries_quiet() if res.quiet else contextlib.nullcontext():
            if ours:
                _start_ray(ray, res)
            try:
                if shards is None:
                    shards = _plan(ray, inputs, job.shard_rows)
                    write_plan(out, record, shards)
                    todo = shards
                if todo:  # an input of no rows has no shards
                    _run_pool(ray, job, res, out, todo, digest, on_shard)
            finally:
                if ours:
                    ray.shutdown()
    return _finish(out, shards, digest, {s.index for s in todo}, time.perf_counter() - started)


def _start_ray(ray: Any, res: BatchResources) -> None:
    # Quiet: Ray's own logger at ERROR (its startup notes, Ray Data's plans and notices), and
    # the actors' output not forwarded to this process.
    ray.init(address=res.address, include_dashboard=False,
             logging_level=logging.ERROR if res.quiet else logging.WARNING,
             log_to_driver=not res.quiet)


def _plan(ray: Any, inputs: list[InputFile], shard_rows: int) -> list[Shard]:
    """Count every file's rows, one Ray task per file (a pass over the bytes, in parallel on
    the cluster), and cut the shards."""
    count = ray.remote(num_cpus=1)(count_rows)
    counts = ray.get([count.remote(f.uri, f.kind, shard_rows) for f in inputs])
    return plan_shards(inputs, counts, shard_rows)


def _run_pool(ray: Any, job: BatchJob, res: BatchResources, out: Path, todo: list[Shard],
              digest: str, on_shard: Callable[[dict[str, Any]], None] | None) -> None:
    """One Ray Data block per shard, through a fixed pool of `ShardWorker` actors, one shard in
    flight per actor (a lost actor loses one shard's work; Ray restarts it and retries)."""
    ray.data.DataContext.get_current().enable_progress_bars = not res.quiet
    ds = ray.data.from_items([{"shard": json.dumps(s.to_dict())} for s in todo],
                             override_num_blocks=len(todo))
    remote: dict[str, Any] = {"num_cpus": res.cpus_per_worker}
    if res.gpus_per_worker:
        remote["num_gpus"] = res.gpus_per_worker
    ds = ds.map_batches(
        ShardWorker, batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(res.workers, len(todo)),
                                           max_tasks_in_flight_per_actor=1),
        fn_constructor_kwargs={"job": asdict(job), "res": asdict(res), "out": str(out),
                               "digest": digest}, **remote)
    done = 0
    try:
        for row in ds.iter_rows():
            done += 1
            if on_shard is not None:
                on_shard(json.loads(row["summary"]))
    except MlmkitError:
        raise
    except Exception as e:  # a shard that fails for good stops Ray Data; say it in one line
        first = next((ln for ln in str(e).splitlines() if "Error" in ln), str(e)[:200])
        raise MlmkitError(f"{named('engine', 'ray')}: the job stopped after {done:,} of "
                          f"{plural(len(todo), 'shard')} ({first.strip()}); the same command "
                          "again resumes it") from None


def _finish(out: Path, shards: list[Shard], digest: str, ran: set[int],
            seconds: float) -> BatchResult:
    """Once every shard is done: the errors of all shards in one file, in row order, and the
    manifest of every file with its digest (from the completion records); `ran`: the indices
    of the shards this run did."""
    records = [finished_shard(out, s, digest) for s in shards]
    missing = [s.index for s, r in zip(shards, records) if r is None]
    if missing:
        raise MlmkitError(f"{named('output', out)}: {plural(len(missing), 'shard')} not finished "
                          f"(first: {missing[0]}); the same command again finishes them")
    with atomic_open(out / ERRORS) as fh:
        for r in records:
            if r["errors"]:
                fh.write((out / SHARDS / f"{r['shard']:06d}.errors.jsonl").read_text())
    totals = {k: sum(r[k] for r in records) for k in ("records", "outputs", "errors", "blank")}
    write_sealed_json(out / MANIFEST, {
        "job": digest, "shards": len(shards), **totals,
        "files": {n: e for r in records for n, e in r["files"].items()}})
    written = sum(r["outputs"] for s, r in zip(shards, records) if s.index in ran)
    return BatchResult(str(out), len(shards), len(shards) - len(ran), written=written,
                       seconds=seconds, **totals)
