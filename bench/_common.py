"""What every benchmark shares: where the shared data lives, the machine description printed
with each result, how much of the machine other processes used during a run, and peak GPU
memory."""

from __future__ import annotations

import contextlib
import gc
import os
import platform
from collections.abc import Iterator
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_DATA = SHARED / "data" / "eli5_category" / "eli5-category-test.json.gz"
DEFAULT_MODEL = SHARED / "models" / "distilroberta-base-shape"


def machine() -> dict:
    """CPU model, cores, library versions and the device the benchmark runs on."""
    import tokenizers
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    try:
        import datasets

        info["datasets"] = datasets.__version__
    except ImportError:
        pass
    return info


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its children)."""
    import resource

    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        busy = float("nan")
    own = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return busy, own


class TreeClock:
    """CPU seconds of this process and all its descendants, sampled from /proc every `every`
    seconds by a thread, so that processes which end before the run does still count. For runs
    whose helpers are not our reaped children: Ray's actors are the raylet's, and it lets them
    go without adding their time to its own, so the resource counters of `cpu_seconds` miss
    them and would call their work other load. A process that lives less than `every` seconds,
    or its last `every` seconds, is missed (it then counts as other load). A sample costs about
    1.4 ms of CPU with 66 processes (0.6% of a core at the default rate), counted as ours."""

    def __init__(self, every: float = 0.25):
        import threading

        self.every, self.stopped = every, threading.Event()
        self.first: dict[tuple[int, str], float] = {}
        self.last: dict[tuple[int, str], float] = {}
        self.busy0 = cpu_seconds()[0]
        self.sample()
        self.first = dict(self.last)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        parent, used = {}, {}
        tick = os.sysconf("SC_CLK_TCK")
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone since the listing
                continue
            parent[int(d.name)] = int(f[1])
            # utime + stime only: a reaped child's time, added to its parent's cutime, was
            # already seen in the child. The key has the start time (f[19]): pids are reused.
            used[(int(d.name), f[19])] = (int(f[11]) + int(f[12])) / tick
        me = os.getpid()
        for key, cpu in used.items():
            p = key[0]
            while p not in (me, 0, 1) and p in parent:
                p = parent[p]
            if p == me:
                self.last[key] = cpu

    def _loop(self) -> None:
        while not self.stopped.wait(self.every):
            self.sample()

    def foreign_load(self, wall: float) -> float:
        """Stop sampling; the average number of cores others kept busy over `wall` seconds."""
        self.stopped.set()
        self.thread.join()
        self.sample()
        own = sum(cpu - self.first.get(key, 0.0) for key, cpu in self.last.items())
        return max(0.0, (cpu_seconds()[0] - self.busy0 - own) / wall)


def foreign_load(start: tuple[float, float], wall: float) -> float:
    """Average number of cores that other processes kept busy since `start` (from
    `cpu_seconds`): above ~0.2 the timings were taken on a shared, busy machine."""
    busy, own = cpu_seconds()
    return max(0.0, ((busy - start[0]) - (own - start[1])) / wall)


def print_load(other: float) -> None:
    """Say how busy other processes kept the machine (from `foreign_load`), with a warning when
    the timings were taken on a shared, busy machine."""
    print(f"other processes kept {other:.2f} cores busy on average during the run"
          + (" -- WARNING: a shared, busy machine; rerun when it is idle" if other > 0.2 else ""))


def print_header(script: str, argv: list[str] | None = None) -> tuple[dict, str]:
    """Print the machine and the exact command of this run; both go into the JSON line too."""
    import shlex
    import sys

    info = machine()
    args = argv if argv is not None else sys.argv[1:]
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", f"bench/{script}", *args])
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch "
          f"threads), device {info['device']}; torch {info['torch']}, transformers "
          f"{info['transformers']}, tokenizers {info['tokenizers']}, datasets "
          f"{info.get('datasets', 'not installed')}")
    print(f"command: {command}")
    return info, command


class GpuMemory:
    """Peak GPU memory allocated while the block runs (model weights included), in MiB; None
    on CPU. What runs inside `excluded()` does not count."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self.peak_mib: float | None = None
        self._before = 0.0  # the peak of the counted stretches before an excluded one

    def _peak(self) -> float:
        import torch

        torch.cuda.synchronize()
        return max(self._before, torch.cuda.max_memory_allocated() / 2**20)

    def __enter__(self) -> GpuMemory:
        if self.cuda:
            import torch

            # The previous measurement's model can still be alive in a reference cycle
            # (Accelerate's autocast forward and Module.compile bind a model to itself): free
            # it first, or its weights count in this peak.
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return self

    @contextlib.contextmanager
    def excluded(self) -> Iterator[None]:
        if self.cuda:
            import torch

            self._before = self._peak()
            yield
            torch.cuda.reset_peak_memory_stats()
        else:
            yield

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.peak_mib = round(self._peak(), 1)
