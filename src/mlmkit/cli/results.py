"""What `fill` and `score` share: reading their inputs, writing their results, and handing a
job to Ray Data (`--engine ray`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mlmkit.cli.flags import Parser, add_settings_flags, settings_from
from mlmkit.config import EngineConfig, RayConfig
from mlmkit.errors import MlmkitError
from mlmkit.io.files import atomic_open
from mlmkit.io.inputs import InputItem, LineTally, iter_inputs

RAY_ONLY = tuple(f for f in RayConfig.__dataclass_fields__ if f != "engine")


def add_engine_flags(p: Parser, only: tuple[str, ...] | None = None) -> None:
    add_settings_flags(p, EngineConfig, only=only, run_mlm=False)
    add_settings_flags(p, RayConfig, run_mlm=False)


def engine_settings(ns: argparse.Namespace) -> tuple[EngineConfig, RayConfig]:
    """The engine's and Ray's settings, each checked once; Ray's flags only with --engine ray."""
    ray = settings_from(RayConfig, ns)
    if ray.engine != "ray":
        for name in RAY_ONLY:
            if name in ns:
                raise MlmkitError(f"--{name.replace('_', '-')}: only with --engine ray")
    return settings_from(EngineConfig, ns), ray


def add_input_flags(p: Parser, records: str = "") -> None:
    """--input, --text-field and --output: what `fill` and `score` read and write."""
    p.add_argument("--input", metavar="PATH", help="texts to read: a file (.txt one a line, "
                   ".jsonl, .json, .csv, .parquet; .gz too) or a glob of them, local or a "
                   "URL pyarrow reads (s3://, gs://)" + records + "; '-' or /dev/stdin reads "
                   "stdin, a text a line")
    p.add_argument("--text-field", nargs="+", metavar="FIELD", help="dotted field(s) of "
                   "each record holding the text, e.g. answers.text; lists of strings and "
                   "several fields are joined with a space (default: text)")
    p.add_argument("--output", metavar="FILE", help="write JSON lines here instead of stdout "
                   "('-': stdout; a device or FIFO is written into; with --engine ray: a "
                   "directory)")


def run_on_ray(ns: argparse.Namespace, params: Any, engine: EngineConfig, ray: RayConfig) -> int:
    """`--engine ray`: the input's records through `batch.run_batch` for the task of `params`,
    into a directory."""
    from mlmkit.batch.ray import BatchJob, BatchResources, run_batch

    if any(t != "-" for t in ns.texts) or ns.input in (None, "-"):
        raise MlmkitError("--engine ray: reads --input (a file, directory or glob), not texts "
                          "on the command line or stdin")
    if not ns.output or ns.output == "-":
        raise MlmkitError("--engine ray: needs --output DIR (a directory for the shards' files)")
    job = BatchJob.of(params, ns.model, dtype=engine.dtype, runtime=engine.runtime,
                      shard_rows=ray.shard_rows, format=ray.format, text_fields=ns.text_field)
    res = BatchResources(address=ray.address, workers=ray.workers,
                         gpus_per_worker=ray.gpus_per_worker,
                         cpus_per_worker=ray.cpus_per_worker, device=engine.device,
                         batch_size=engine.batch_size, max_tokens=engine.max_tokens,
                         quiet=engine.quiet)
    r = run_batch(job, ns.input, ns.output, res)
    print(r.summary(), file=sys.stderr)
    return 1 if r.errors else 0


def write_results(ns: argparse.Namespace, run: Callable[[Iterable], Iterable], plain: Any,
                  tally: LineTally, doing: str, quiet: bool, gap: bool = False,
                  whole_record: bool = False, header: str | None = None) -> int:
    """Run every input through `run` (the engine's stream: results in input order, an
    `MlmkitError` in place of a failed one) and write the results: JSON lines with --json or
    --output (or without a `plain` printer), else `plain(result, out)`, under `header` (a line
    written once, before the first result). Texts given on the
    command line must all succeed: a bad one is an error of the command. A bad line of --input
    or stdin is reported by its number, as an error record in its place (JSON) or on stderr,
    and the rest go on; the counts are printed at the end, and the exit code is 1 if any line
    failed. The output file appears under its name only once complete, so a failed or killed
    run leaves any earlier file of that name as it was ('-', a device or a FIFO gets the lines
    as they come)."""
    from mlmkit.training.tracking import progress_mode

    as_json = ns.json or bool(ns.output) or plain is None
    typed = ns.input is None and any(t != "-" for t in ns.texts)
    pending: deque[InputItem] = deque()  # read, and not written yet

    def items() -> Iterator[Any]:
        for it in iter_inputs(ns.texts, ns.input, tally, jsonl=True if whole_record else None,
                              whole_record=whole_record, text_fields=ns.text_field):
            pending.append(it)
            yield it.item

    with contextlib.ExitStack() as stack:
        out = stack.enter_context(atomic_open(ns.output)) if ns.output else sys.stdout
        bar = None
        # A bar while the results go to a file, drawn on a terminal only: a log file would get
        # every redraw, joined by carriage returns.
        if ns.output and progress_mode(quiet) == "bar":
            from tqdm.auto import tqdm

            bar = stack.enter_context(tqdm(desc=doing, unit=" lines"))
        shown = 0
        for res in run(items()):
            it = pending.popleft()
            problem = it.problem
            tally.lines += 1
            if problem is not None or isinstance(res, MlmkitError):
                if typed:
                    raise res
                tally.failed += 1
                message = f"{it.where}: {problem or res}"
                if as_json:
                    out.write(json.dumps({"line": it.number, "error": message}) + "\n")
                else:
                    print(f"error: {message}", file=sys.stderr)
            elif as_json:
                out.write(json.dumps(res) + "\n")
            else:
                if shown and gap:
                    out.write("\n")  # a blank line between texts' candidates
                if not shown and header:
                    out.write(header)
                shown += 1
                plain(res, out)
            if bar is not None:
                bar.update(1)
    summary = tally.summary()
    if summary:
        print(summary, file=sys.stderr)
    return 1 if tally.failed else 0
