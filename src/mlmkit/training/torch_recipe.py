"""The training run: one object owns it, as torchtune's recipes do, with a loop as plain as
nanoGPT's, on Accelerate (single device, multi-GPU, multi-node).

`Run(cfg).fit()`: setup -> resume, or base eval -> train_epoch until done (eval, checkpoint) ->
final checkpoint -> export a standard Hugging Face model directory with a model card.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mlmkit.config import TrainConfig
from mlmkit.corpus.masking import Masker, MaskingCollator
from mlmkit.modeling.load import load_model
from mlmkit.quiet import libraries_quiet
from mlmkit.settings import from_cli, named
from mlmkit.training.checkpoint import find_checkpoint, read_state, save_checkpoint
from mlmkit.training.loop import (
    BlockKeys,
    EpochBatches,
    LogWindow,
    MaskedLMObjective,
    Stopwatch,
    adamw,
    mixed_precision_of,
)
from mlmkit.training.perplexity import Metrics, evaluate, fixed_eval_dataset
from mlmkit.training.recipe import (
    Recipe,
    TrainResult,
    TrainState,
    check_load_best,
    prepare_tokenizer_and_data,
)
from mlmkit.training.rundir import (
    CHECKPOINTS,
    check_output,
    check_resume_settings,
    read_run_config,
    run_dir_of,
    settings_record,
    start_run_dir,
    trim_metrics_log,
    write_config,
)

log = logging.getLogger("mlmkit")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C, after the checkpoint of the step in progress was saved; the message says how to
    go on."""


def train_torch(cfg: TrainConfig, command: str | None = None,
                reads: Sequence[tuple[str, Path]] = ()) -> TrainResult:
    """`train(cfg)` on PyTorch and Accelerate."""
    # TF32 matmuls for the run only: left on, they would change every later float32 result
    # in the process (a FillMask, another benchmark arm).
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        with libraries_quiet("transformers", "accelerate"):
            return Run(cfg, command=command, reads=reads).fit()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


class Run(Recipe):
    """One training run. Each phase is a method; `fit` calls them in order."""

    def __init__(self, cfg: TrainConfig, command: str | None = None,
                 reads: Sequence[tuple[str, Path]] = ()) -> None:
        if cfg.train_tokenizer:
            cfg = replace(cfg, from_scratch=True)
        super().__init__(cfg, command)
        self.reads = reads  # besides the settings' paths: kept safe from --overwrite
        self.resume_from: Path | None = None
        self.stop_requested = False

    # -- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        """Check the output and inputs, load tokenizer, data and model, build the optimizer."""
        cfg = self.cfg
        if cfg.resume:
            self._check_resume()
        self.out = check_output(self.cfg, self.reads)
        check_load_best(cfg)
        self._accelerator()
        with self.accelerator.main_process_first():
            self.tokenizer, model_config, self.corpus = prepare_tokenizer_and_data(
                self.cfg, self.progress == "bar")
        if self.main:
            log.info("data: %s", self.corpus.describe())
        check_load_best(cfg, len(self.corpus.eval))
        if cfg.resume:
            # A checkpoint named itself, or the run's newest intact one.
            named = Path(cfg.resume).expanduser().parent.name == CHECKPOINTS
            self.resume_from = find_checkpoint(self.out, cfg.resume if named else "latest")
        from accelerate.utils import set_seed

        set_seed(cfg.seed)
        self.model = load_model(cfg.model, model_config, from_scratch=cfg.from_scratch,
                                vocab_size=len(self.tokenizer))
        self._loaders()
        self._optimization()

    def _check_resume(self) -> None:
        run = run_dir_of(self.cfg.resume, self.cfg.output)
        check_resume_settings(self.cfg, read_run_config(run), run)
        self.cfg = replace(self.cfg, output=str(run))

    def _accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState
        from accelerate.utils import DataLoaderConfiguration

        from mlmkit.training.tracking import parse_report_to, progress_mode, tracker_init_kwargs

        cfg = self.cfg
        self.report_to = parse_report_to(cfg.report_to)
        if torch.cuda.is_available():  # TF32 matmuls: fp32 training at tensor-core speed
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # Accelerate only runs several CPU processes (torchrun on a machine without a GPU) when
        # told cpu=True; on one process the flag changes nothing we rely on.
        cpu_only = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        # Accelerate keeps its settings in process-wide singletons and refuses a second
        # Accelerator with another precision: without this, a second train() in one process (a
        # notebook, a benchmark after the HF Trainer) fails. The process group (PartialState)
        # is kept, as the HF Trainer keeps it between runs.
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        self.accelerator = Accelerator(
            mixed_precision=mixed_precision_of(cfg.mixed_precision),
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            dataloader_config=DataLoaderConfiguration(non_blocking=True), cpu=cpu_only,
            **tracker_init_kwargs(self.report_to, self.out))
        self.main = self.accelerator.is_main_process
        self.world = self.accelerator.num_processes
        self.progress = progress_mode(cfg.quiet) if self.main else "none"

    def _loaders(self) -> None:
        cfg, tokenizer, corpus = self.cfg, self.tokenizer, self.corpus
        masker = Masker(tokenizer, cfg)
        # Masked rows padded to a multiple of 8 (tensor-core friendly), of 64 when compiled: then
        # a run sees only a handful of shapes, and CUDA graphs (reduce-overhead) record a few.
        multiple = (64 if cfg.compile else 8) if cfg.sparse_head else 0
        collator = MaskingCollator(masker, cfg.seed, tokenizer.pad_token_id,
                                   sparse_multiple=multiple)
        self.sampler = EpochBatches(len(corpus.train), cfg.batch_size, cfg.seed)
        # Its own generator: starting an iterator draws a seed, which must not come from the
        # global RNG, or a resumed run (a new iterator mid-epoch) would see other dropout masks.
        self.loader = torch.utils.data.DataLoader(
            BlockKeys(corpus.train), batch_sampler=self.sampler, collate_fn=collator,
            num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(cfg.seed))
        # Each process scores every world-th eval block and the sums are reduced: unlike a
        # prepared loader, which pads the last batch with repeated blocks, every block counts
        # exactly once.
        acc = self.accelerator
        eval_set = fixed_eval_dataset(corpus.eval, tokenizer, cfg)
        shard = torch.utils.data.Subset(eval_set, range(acc.process_index, len(eval_set),
                                                        acc.num_processes))
        self.eval_loader = torch.utils.data.DataLoader(
            shard, batch_size=cfg.eval_batch_size,
            pin_memory=torch.cuda.is_available()) if len(corpus.eval) else None
        self.batches_per_epoch = math.ceil(len(corpus.train) / cfg.batch_size)
        steps_per_epoch = max(1, math.ceil(self.batches_per_epoch / self.world
                                           / cfg.gradient_accumulation_steps))
        self.total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)

    def _optimization(self) -> None:
        from transformers import get_scheduler

        cfg, acc = self.cfg, self.accelerator
        # Not fused under fp16: GradScaler then always calls the fused step (which skips
        # overflowed updates itself), so Accelerate cannot tell a skipped step and the schedule
        # would advance.
        optimizer = adamw(self.model, cfg, fused=acc.device.type == "cuda"
                               and acc.mixed_precision != "fp16")
        warmup = cfg.warmup_steps or int(cfg.warmup_ratio * self.total_steps)
        # The scheduler stays ours, stepped once per optimizer step: a prepared one steps once
        # per process per step, which would run the schedule num_processes times too fast.
        self.scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup,
                                       num_training_steps=self.total_steps)
        objective = MaskedLMObjective(self.model, cfg.sparse_head)
        if cfg.compile:
            # The whole step's forward (encoder, sparse head, loss) as one graph: its inputs
            # have fixed shapes ([batch, block]) but for the masked-row count (dynamic, padded to
            # multiples of 64 so that CUDA graphs see few distinct sizes), and nothing in it
            # depends on data values. In place (Module.compile), so parameter names and the
            # saved checkpoint do not change; evaluation and export use the eager model.
            objective.compile(mode=cfg.compile_mode)
        self.objective, self.optimizer, self.loader = acc.prepare(objective, optimizer,
                                                                  self.loader)
        self.model = acc.unwrap_model(self.objective).model  # on its device; for eval, export
        acc.register_for_checkpointing(self.scheduler)

    # -- the run's life ------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Run the whole training (setup, base evaluation, epochs, checkpoints, export) and
        return its result."""
        from mlmkit.training.tracking import MetricsLog

        self.setup()
        if self.main:
            start_run_dir(self.out, overwrite=self.cfg.overwrite and self.resume_from is None)
            if self.resume_from is not None:
                trim_metrics_log(self.out, read_state(self.resume_from)["step"])
        self.accelerator.wait_for_everyone()
        self.metrics = MetricsLog(self.out, self.accelerator, self.report_to,
                                  settings_record(self.cfg),
                                  main=self.main, progress=self.progress,
                                  total_steps=self.total_steps, start_step=read_state(
                                      self.resume_from)["step"] if self.resume_from else 0)
        with self.metrics:
            if self.resume_from is not None:
                self.resume(self.resume_from)
                if self.state.finished and self.state.step >= self.total_steps:
                    return self.end_finished_run()
                if self.main:
                    # Only settings a resume may change can differ; the file says what ran
                    # last. Not for a finished run: it is part of the export checked above.
                    write_config(self.out, self.cfg)
            else:
                self.start()
            self.clock = Stopwatch(self.state.train_seconds)  # goes on from a checkpoint's time
            self.window = LogWindow(self.clock.seconds, self.accelerator.device)
            try:
                with self._progress_bar(), self._ctrl_c():
                    while self.state.step < self.total_steps:
                        self.train_epoch()
            except RunInterrupted:
                raise
            except KeyboardInterrupt:  # a second Ctrl-C, or one on several processes
                raise self._interrupted_unsaved() from None
            return self.finish()

    def resume(self, checkpoint: Path) -> None:
        """Continue from a checkpoint: model, optimizer, scheduler, RNG and the run's state."""
        self.accelerator.load_state(str(checkpoint))
        self.state = TrainState.load(checkpoint)
        self.last_saved = checkpoint
        if self.main:
            log.info("resuming from %s (step %d of %d)", checkpoint, self.state.step,
                     self.total_steps)
            if self.state.finished and self.total_steps > self.state.step:
                log.warning("the run had finished at step %d; training on to step %d with the "
                            "learning-rate schedule recomputed for the new length",
                            self.state.step, self.total_steps)

    def train_epoch(self) -> None:
        """From the sampler's position to the end of the epoch (or of training): steps, the
        intervals' evaluations and checkpoints, then the epoch's own."""
        s, acc = self.state, self.accelerator
        self.sampler.seek(s.epoch, s.batch_in_epoch * self.world)
        self.objective.train()
        window = self.window
        micro = s.batch_in_epoch
        for batch in self.loader:
            loss = self._forward_backward(batch)
            micro += 1
            window.add(batch["input_ids"].numel(), loss)
            if not acc.sync_gradients:
                continue
            s.step, s.batch_in_epoch = s.step + 1, micro
            if self.bar is not None:
                self.bar.update(1)
            if self.after_step(lambda: self._log_train(window)):
                break
            if self.stop_requested:
                self._stop()
        done = self.after_epoch()
        if self.stop_requested and not done:
            self._stop()

    def _forward_backward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg, acc = self.cfg, self.accelerator
        if cfg.compile and "masked_index" in batch:
            # The number of masked rows varies from batch to batch (in steps of 64): one graph
            # for all of them from the start, instead of a recompile on the second.
            torch._dynamo.maybe_mark_dynamic(batch["masked_index"], 0)
            torch._dynamo.maybe_mark_dynamic(batch["masked_labels"], 0)
        with acc.accumulate(self.objective):
            loss_total, n = self.objective(**batch)
            loss = loss_total / n.clamp(min=1)
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(self.objective.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            if acc.sync_gradients and not acc.optimizer_step_was_skipped:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def _log_train(self, window: LogWindow) -> None:
        now = self.clock.seconds
        loss = window.mean_loss()
        # Summed over processes, so that all of them stop together, not one alone while the
        # others wait for it in the next all-reduce.
        self.check_loss(float(self.accelerator.reduce(window.loss_sum.clone(), "sum")))
        tps = window.tokens * self.world / max(now - window.t0, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
        self.record_train(loss, self.scheduler.get_last_lr()[0], tps)
        window.reset(now)

    # -- the recipe's hooks --------------------------------------------------------------------
    def _score(self) -> Metrics | None:
        if self.eval_loader is None:
            return None
        return evaluate(self.model, self.eval_loader, self.accelerator,
                        sparse=self.cfg.sparse_head, progress=self.progress == "bar")

    def _commit(self, state: dict[str, Any], protect: Path | None) -> Path:
        return save_checkpoint(self.accelerator, self.out, self.state.step, state,
                               self.cfg.save_total_limit, protect=protect)

    def _restore(self, checkpoint: Path) -> None:
        self.accelerator.load_state(str(checkpoint))

    def _weights_finite(self) -> bool:
        # One device sync for all the weights.
        bad = torch.stack([~torch.isfinite(p).all() for p in self.model.parameters()]).any()
        return not bool(bad)

    def _hf_model(self) -> Any:
        return self.model

    def _hardware(self) -> str:
        from mlmkit.training.card import describe_hardware

        return describe_hardware(self.accelerator)

    def _precision(self) -> str:
        return self.accelerator.mixed_precision

    def _barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def _agree(self, value: Any) -> Any:
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]

    # -- interruptions and failures ------------------------------------------------------------
    @contextlib.contextmanager
    def _progress_bar(self):
        self.bar = None
        if self.progress == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total_steps, initial=self.state.step, desc="training",
                            unit=" steps")
        try:
            yield
        finally:
            if self.bar is not None:
                self.bar.close()

    @contextlib.contextmanager
    def _ctrl_c(self):
        """The first Ctrl-C asks for a checkpoint after the step in progress, then a clean stop;
        a second one stops at once. Only on one process: several would have to agree on the
        step, and torchrun forwards the signal to each at its own moment."""
        if self.world > 1 or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            log.warning("interrupted: saving a checkpoint after this step (Ctrl-C again stops "
                        "at once, losing the steps since the last checkpoint)")

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _stop(self) -> None:
        saved = self.save_checkpoint()
        raise RunInterrupted(f"interrupted at step {self.state.step} of {self.total_steps}; "
                             f"checkpoint saved in {saved}; {self._continue_with()}")

    def _interrupted_unsaved(self) -> RunInterrupted:
        if self.last_saved is None:
            return RunInterrupted(f"interrupted at step {self.state.step} of {self.total_steps}, "
                                  "before the first checkpoint; start again with "
                                  f"{named('overwrite', True)}")
        return RunInterrupted(f"interrupted at step {self.state.step} of {self.total_steps}; the "
                              f"newest checkpoint is {self.last_saved}; "
                              f"{self._continue_with()}")

    def _continue_with(self) -> str:
        """How to go on from the newest checkpoint: a command to paste, or the keyword."""
        resume = named("resume", str(self.out))
        return f"continue with: mlmkit train {resume}" if from_cli() else f"continue with {resume}"
