"""The server's micro-batching queue: `Batcher` gathers the texts of concurrent requests into
batches (bounded in texts and in waiting time), groups each batch's jobs by their task
parameters and runs each group as one engine call on one worker thread, so torch never blocks
the event loop; a full queue is refused at once.
"""

import asyncio
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mlmkit.errors import MlmkitError
from mlmkit.inference.tasks import task_for
from mlmkit.serving.metrics import ServerMetrics, log
from mlmkit.serving.payload import ApiError


@dataclass
class _Job:
    texts: list[str]
    params: Any  # FillParams, ScoreParams: jobs with equal parameters share an engine call
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Gathers the texts of concurrent requests into batches of at most `max_batch_size` texts
    (waiting at most `max_wait_ms` for more once one has arrived) and runs each batch through
    the engine on one worker thread, so torch never blocks the event loop. With
    `batching=False` every request is its own engine call, which is what the benchmark
    compares against."""

    def __init__(self, engines: dict[type, Any], metrics: ServerMetrics, max_batch_size: int,
                 max_wait_ms: float, max_queue: int, batching: bool) -> None:
        # By engine class (`FillMask`, `Scorer`): each task's parameters say which it needs.
        self.engines = engines
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.batching = batching
        # One thread: a second would only make two torch calls fight over the same cores.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mlmkit-engine")
        self._jobs: deque[_Job] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        return self.metrics.queue_depth

    async def submit(self, texts: list[str], params: Any) -> list:
        """The task's results for `texts` (one per text, an `MlmkitError` for a text that
        failed), through the one queue and its batches whatever the task."""
        if self.pending + len(texts) > self.max_queue:
            raise ApiError(503, f"server busy: {self.pending} texts are queued and this request "
                                f"adds {len(texts)}, past the limit of {self.max_queue}; retry "
                                "later")
        self._ensure_started()
        job = _Job(texts, params, self._loop.create_future())  # type: ignore[union-attr]
        self.metrics.queue_depth += len(texts)
        self._jobs.append(job)
        self._wakeup.set()  # type: ignore[union-attr]
        try:
            return await job.future
        except asyncio.CancelledError:  # its client went away: its texts need not run
            self._withdraw(job)
            raise

    def _withdraw(self, job: _Job) -> None:
        """Take a job whose client has gone out of the queue; one already taken into a batch
        is left out of its engine call if that has not started (`_run`), or its answer
        dropped."""
        try:
            self._jobs.remove(job)
        except ValueError:
            return
        self.metrics.queue_depth -= len(job.texts)
        self.metrics.dropped_texts.inc(len(job.texts))

    def _ensure_started(self) -> None:
        # Started on first use rather than at app startup: httpx's ASGITransport sends no
        # lifespan events, and a test client may run the app in a loop of its own.
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._run(), name="mlmkit-batcher")

    async def close(self) -> None:
        if self._task is not None and self._loop is asyncio.get_running_loop():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _next_batch(self, batch: list[_Job]) -> None:
        """Move jobs from the queue into `batch` (owned by the caller, so that a shutdown in
        the middle of gathering still answers the jobs already taken)."""
        while not self._jobs:
            self._wakeup.clear()  # type: ignore[union-attr]
            await self._wakeup.wait()  # type: ignore[union-attr]
        batch.append(self._jobs.popleft())
        if not self.batching:
            return
        size = len(batch[0].texts)
        deadline = self._loop.time() + self.max_wait_s  # type: ignore[union-attr]
        while size < self.max_batch_size:
            if self._jobs:
                # A request is never split: one that does not fit opens the next batch.
                if size + len(self._jobs[0].texts) > self.max_batch_size:
                    break
                job = self._jobs.popleft()
                batch.append(job)
                size += len(job.texts)
                continue
            remaining = deadline - self._loop.time()  # type: ignore[union-attr]
            if remaining <= 0:
                break
            self._wakeup.clear()  # type: ignore[union-attr]
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)  # type: ignore[union-attr]
            except asyncio.TimeoutError:
                break

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Job] = []
        try:
            while True:
                batch = []
                await self._next_batch(batch)
                for job in [j for j in batch if j.future.done()]:  # gone while gathered
                    batch.remove(job)
                    self.metrics.dropped_texts.inc(len(job.texts))
                    self._finish(job, None)
                if not batch:
                    continue
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._run_batch, batch)
                except Exception as e:  # e.g. the executor shut down: fail this batch only
                    outcomes = [e] * len(batch)
                for job, outcome in zip(batch, outcomes):
                    self._finish(job, outcome)
                batch = []
        except asyncio.CancelledError:
            stopping = ApiError(503, "server shutting down")
            for job in [*batch, *self._jobs]:
                self._finish(job, stopping)
            self._jobs.clear()
            raise

    def _finish(self, job: _Job, outcome: Any) -> None:
        self.metrics.queue_depth -= len(job.texts)
        if job.future.done():  # the client went away
            return
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)

    def _run_batch(self, batch: list[_Job]) -> list:
        """Runs on the worker thread: one engine call per distinct parameters in the batch
        (one call in the usual case, where clients send the same parameters)."""
        groups: dict[Any, list[int]] = defaultdict(list)
        for i, job in enumerate(batch):
            groups[job.params].append(i)
        outcomes: list[Any] = [None] * len(batch)
        for params, members in groups.items():
            jobs = [batch[i] for i in members]
            for i, outcome in zip(members, self._run_group(jobs, params)):
                outcomes[i] = outcome
        return outcomes

    def _run_group(self, jobs: list[_Job], params: Any) -> list:
        """The outcome of each of `jobs`, which share their parameters, from one engine call.
        If the call raises (other than an `MlmkitError`, which is about the shared parameters
        and so everyone's answer), each job runs again on its own: one request the engine
        chokes on gets the error, the others their answers."""
        try:
            results = self._call([t for job in jobs for t in job.texts], params)
        except MlmkitError as e:
            return [e] * len(jobs)
        except Exception as e:
            if len(jobs) == 1:
                return [e]
            # No traceback here: the request that fails alone logs it, once.
            log.warning("an engine call for %d requests failed (%s); running each alone",
                        len(jobs), type(e).__name__)
            return [self._call_or_error(job.texts, params) for job in jobs]
        outcomes, start = [], 0
        for job in jobs:
            outcomes.append(results[start:start + len(job.texts)])
            start += len(job.texts)
        return outcomes

    def _call_or_error(self, texts: list[str], params: Any) -> Any:
        try:
            return self._call(texts, params)
        except Exception as e:
            return e

    def _call(self, texts: list[str], params: Any) -> list:
        self.metrics.batch_size.observe(len(texts))
        t0 = time.perf_counter()
        task = task_for(params)
        try:
            return list(task.run(self.engines[task.engine], texts, params))
        finally:
            self.metrics.engine_seconds.inc(time.perf_counter() - t0)
