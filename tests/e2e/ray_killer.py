"""Runs `mlmkit fill/score --engine ray` in this process and SIGKILLs it, driver and all, once
the driver has learnt of the n-th finished shard."""
import os
import signal
import sys

from mlmkit.batch import ray as batch
from mlmkit.cli.main import main

nth = int(sys.argv[1])
real_run_batch = batch.run_batch
seen = []


def kill_at_nth(record):
    seen.append(record["shard"])
    if len(seen) == nth:
        os.kill(os.getpid(), signal.SIGKILL)


def run_batch(*args, **kw):
    return real_run_batch(*args, on_shard=kill_at_nth, **kw)


batch.run_batch = run_batch
sys.exit(main(sys.argv[2:]))
