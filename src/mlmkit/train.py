"""The training loop: one explicit loop on Accelerate (single device, multi-GPU, multi-node).

prepare -> base eval -> for each step: batch, forward, backward, clip, step, schedule, log ->
eval -> checkpoint -> export a standard Hugging Face model directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import (
    CONFIG_FILE,
    METRICS_LOG,
    check_output,
    find_checkpoint,
    read_state,
    save_checkpoint,
    start_run_dir,
    trim_metrics_log,
    write_config,
)
from .config import MlmkitError, TrainConfig, parse_overrides, to_dict
from .data import Corpus, iter_texts, load_blocks
from .evaluate import Metrics, evaluate, fixed_eval_dataset
from .files import write_json
from .masking import Masker, MaskingCollator
from .model import load_model, load_model_config, load_tokenizer, masked_lm_loss, max_block_size

log = logging.getLogger("mlmkit")


@dataclass
class TrainResult:
    output_dir: Path
    base: Metrics | None
    final: Metrics | None
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    train_seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


class _Blocks(torch.utils.data.Dataset):
    """Training blocks, looked up by the (epoch, index) keys that `EpochBatches` yields."""

    def __init__(self, blocks: np.ndarray) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int, np.ndarray]:
        epoch, i = key
        return epoch, i, np.asarray(self.blocks[i])


class Stopwatch:
    """Training time without evaluation and checkpointing: `paused()` stops it (after waiting
    for the device, so queued training work is counted as training)."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.total, self.since = seconds, time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.total + (time.perf_counter() - self.since if self.since is not None else 0.0)

    @contextlib.contextmanager
    def paused(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.total, self.since = self.seconds, None
        try:
            yield
        finally:
            self.since = time.perf_counter()


class MaskedLMObjective(torch.nn.Module):
    """The model and its loss as one module, so that the sparse head runs inside forward(): a
    DDP/FSDP wrapper then sees the whole computation and synchronises gradients as usual, which
    calling the encoder and head of the wrapped model directly would bypass."""

    def __init__(self, model: Any, sparse: bool) -> None:
        super().__init__()
        self.model, self.sparse = model, sparse

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, **optional: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        # optional: attention_mask, masked_index, masked_labels (see MaskingCollator)
        return masked_lm_loss(self.model, {"input_ids": input_ids, "labels": labels, **optional},
                              self.sparse)


class EpochBatches(torch.utils.data.Sampler):
    """Shuffled batches of (epoch, index) keys, a fixed permutation per (seed, epoch); can start
    mid-epoch, which is how --resume continues exactly where a run stopped. The epoch rides
    along so the collator masks with that epoch's generator, in worker processes too."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.start = 0, 0

    # Not named set_epoch: Accelerate calls set_epoch(n) on batch samplers at every iteration.
    def seek(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size) - self.start

    def __iter__(self):
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        for b in range(self.start, math.ceil(self.n / self.batch_size)):
            yield [(self.epoch, i) for i in perm[b * self.batch_size:(b + 1) * self.batch_size]
                   .tolist()]


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _optimizer(model: Any, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    # As the HF Trainer: no weight decay on biases and normalisation weights.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_norm = "norm" in name.lower() or p.ndim < 2
        (no_decay if is_norm else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             eps=cfg.adam_epsilon, **({"fused": True} if fused else {}))


def prepare_tokenizer_and_data(cfg: TrainConfig, progress: bool) -> tuple[Any, Any, Corpus]:
    """Tokenizer, model config and blocks, with every input checked before any weight loads."""
    tokenizer = load_tokenizer(cfg.model)
    model_config = load_model_config(cfg.model)
    overrides = parse_overrides(cfg.config_overrides)
    if overrides and not cfg.from_scratch and not cfg.train_tokenizer:
        raise MlmkitError("--config-overrides: only with --from-scratch (pretrained weights fix "
                          "the model's shape)")
    for k, v in overrides.items():
        if not hasattr(model_config, k):
            raise MlmkitError(f"--config-overrides: {model_config.model_type} configs have no "
                              f"setting {k!r}")
        setattr(model_config, k, v)
    if cfg.train_tokenizer:
        texts = (t for _, t in iter_texts(cfg))
        tokenizer = tokenizer.train_new_from_iterator(texts, vocab_size=cfg.train_tokenizer)
        model_config.vocab_size = len(tokenizer)
    limit = max_block_size(model_config, tokenizer)
    if cfg.block_size > limit:
        raise MlmkitError(f"--block-size {cfg.block_size}: above the {limit} positions model "
                          f"{cfg.model} accepts")
    corpus = load_blocks(cfg, tokenizer, progress=progress)
    return tokenizer, model_config, corpus


def train(cfg: TrainConfig) -> TrainResult:
    """Fine-tune (or pre-train) a masked LM on a corpus and save it to `cfg.output`."""
    # TF32 matmuls for the run only: left on, they would change every later float32 result
    # in the process (a FillMask, another benchmark arm).
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        return _train(cfg)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _train(cfg: TrainConfig) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    out = check_output(cfg)
    if torch.cuda.is_available():  # TF32 matmuls: fp32 training at tensor-core speed
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # Accelerate only runs several CPU processes (torchrun on a machine without a GPU) when told
    # cpu=True; on one process the flag changes nothing we rely on.
    cpu_only = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # Accelerate keeps its settings in process-wide singletons and refuses a second Accelerator
    # with another precision: without this, a second train() in one process (a notebook, a
    # benchmark after the HF Trainer) fails. The process group (PartialState) is kept, as the
    # HF Trainer keeps it between runs.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=_mixed_precision(cfg.mixed_precision),
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              dataloader_config=DataLoaderConfiguration(non_blocking=True),
                              cpu=cpu_only)
    main = accelerator.is_main_process
    progress = main and not cfg.quiet
    if cfg.train_tokenizer:
        cfg.from_scratch = True
    with accelerator.main_process_first():
        tokenizer, model_config, corpus = prepare_tokenizer_and_data(cfg, progress)
    if main:
        log.info("data: %s", corpus.describe())
    resume_from = find_checkpoint(out, cfg.resume) if cfg.resume else None

    set_seed(cfg.seed)
    model = load_model(cfg.model, model_config, from_scratch=cfg.from_scratch,
                       vocab_size=len(tokenizer))

    masker = Masker(tokenizer, cfg)
    # Masked rows padded to a multiple of 8 (tensor-core friendly), of 64 when compiled: then a
    # run sees only a handful of shapes, and CUDA graphs (reduce-overhead) record a handful.
    multiple = (64 if cfg.compile else 8) if cfg.sparse_head else 0
    collator = MaskingCollator(masker, cfg.seed, tokenizer.pad_token_id, sparse_multiple=multiple)
    sampler = EpochBatches(len(corpus.train), cfg.batch_size, cfg.seed)
    # Its own generator: starting an iterator draws a seed, which must not come from the global
    # RNG, or a resumed run (a new iterator mid-epoch) would see other dropout masks.
    loader = torch.utils.data.DataLoader(_Blocks(corpus.train), batch_sampler=sampler,
                                         collate_fn=collator, num_workers=cfg.num_workers,
                                         pin_memory=torch.cuda.is_available(),
                                         generator=torch.Generator().manual_seed(cfg.seed))
    # Each process scores every world-th eval block and the sums are reduced: unlike a prepared
    # loader, which pads the last batch with repeated blocks, every block counts exactly once.
    eval_set = fixed_eval_dataset(corpus.eval, tokenizer, cfg)
    eval_shard = torch.utils.data.Subset(eval_set, range(accelerator.process_index,
                                                         len(eval_set), accelerator.num_processes))
    eval_loader = torch.utils.data.DataLoader(
        eval_shard, batch_size=cfg.eval_batch_size,
        pin_memory=torch.cuda.is_available()) if len(corpus.eval) else None

    batches_per_epoch = math.ceil(len(corpus.train) / cfg.batch_size)
    world = accelerator.num_processes
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / world / cfg.gradient_accumulation_steps))
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    # Not fused under fp16: GradScaler then always calls the fused step (which skips overflowed
    # updates itself), so Accelerate cannot tell a skipped step and the schedule would advance.
    optimizer = _optimizer(model, cfg, fused=accelerator.device.type == "cuda"
                           and accelerator.mixed_precision != "fp16")
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup,
                              num_training_steps=total_steps)
    # The scheduler stays ours, stepped once per optimizer step: a prepared one steps once per
    # process per step, which would run the schedule num_processes times too fast here.
    objective = MaskedLMObjective(model, cfg.sparse_head)
    if cfg.compile:
        # The whole step's forward (encoder, sparse head, loss) as one graph: its inputs have
        # fixed shapes ([batch, block]) but for the masked-row count (dynamic, and padded to
        # multiples of 64 so that CUDA graphs see few distinct sizes), and nothing in it
        # depends on data values. In place (Module.compile), so parameter names and the saved
        # checkpoint do not change; evaluation and export use the eager model.
        objective.compile(mode=cfg.compile_mode)
    objective, optimizer, loader = accelerator.prepare(objective, optimizer, loader)
    model = accelerator.unwrap_model(objective).model  # on its device now; for eval and export
    accelerator.register_for_checkpointing(scheduler)

    if main:
        start_run_dir(out, cfg, fresh=resume_from is None)
        if resume_from is not None:
            trim_metrics_log(out, read_state(resume_from)["step"])
    accelerator.wait_for_everyone()
    # Appended a line at a time, not rewritten atomically per record: a kill can only tear
    # the last line, and a resume drops it (trim_metrics_log).
    metrics_log = open(out / METRICS_LOG, "a") if main else None

    def record(event: dict[str, Any]) -> None:
        if metrics_log is not None:
            metrics_log.write(json.dumps(event) + "\n")
            metrics_log.flush()

    def run_eval(step: int, epoch: float) -> Metrics | None:
        if eval_loader is None:
            return None
        m = evaluate(model, eval_loader, accelerator, sparse=cfg.sparse_head, progress=progress)
        record({"event": "eval", "step": step, "epoch": round(epoch, 4), **m.to_dict()})
        if main:
            log.info("eval step %d epoch %.2f: loss %.4f perplexity %.3f", step, epoch, m.loss,
                     m.perplexity)
        return m

    step, epoch, batch_in_epoch, history, base, seconds_before = 0, 0, 0, [], None, 0.0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = read_state(resume_from)
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        history = state["history"]
        base = Metrics(**state["base"]) if state.get("base") else None
        seconds_before = state.get("train_seconds", 0.0)
        if main:
            log.info("resuming from %s (step %d)", resume_from, step)
    else:
        if main:
            write_config(out, to_dict(cfg))
        if not cfg.skip_base_eval:
            base = run_eval(0, 0.0)

    last_saved: list[Path] = [resume_from] if resume_from else []

    def checkpoint() -> None:
        with clock.paused():
            # Never a checkpoint of diverged weights: resuming from it could only diverge again.
            check_finite(model, step, out, last_saved)
            state = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                     "history": history, "base": base.to_dict() if base else None,
                     "train_seconds": clock.seconds}
            last_saved[:] = [save_checkpoint(accelerator, out, step, state,
                                             cfg.save_total_limit)]

    bar = tqdm(total=total_steps, initial=step, desc="training", unit=" steps",
               disable=not progress)
    objective.train()
    clock = Stopwatch(seconds_before)  # a resumed run goes on from its checkpoint's time
    window_tokens, window_t0 = 0, clock.seconds  # throughput over the current logging window
    loss_sum, loss_count = torch.zeros((), device=accelerator.device), 0

    def epochs_done() -> float:
        # Capped at the epoch's end: with several processes the last round of batches can
        # overshoot batches_per_epoch.
        return epoch + min(1.0, batch_in_epoch * world / batches_per_epoch)

    def eval_into_history(epoch_f: float) -> None:
        with clock.paused():
            m = run_eval(step, epoch_f)
        if m is not None:
            history.append({"step": step, "epoch": round(epoch_f, 4),
                            "train_seconds": round(clock.seconds, 3), **m.to_dict()})

    done = step >= total_steps
    while not done:
        sampler.seek(epoch, batch_in_epoch * world)
        for batch in loader:
            if cfg.compile and "masked_index" in batch:
                # The number of masked rows varies from batch to batch (in steps of 64): one
                # graph for all of them from the start, instead of a recompile on the second.
                torch._dynamo.maybe_mark_dynamic(batch["masked_index"], 0)
                torch._dynamo.maybe_mark_dynamic(batch["masked_labels"], 0)
            with accelerator.accumulate(objective):
                loss_total, n = objective(**batch)
                loss = loss_total / n.clamp(min=1)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(objective.parameters(), cfg.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            batch_in_epoch += 1
            window_tokens += batch["input_ids"].numel()
            loss_sum += loss.detach()
            loss_count += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            epoch_f = epochs_done()
            if step % cfg.log_every == 0 or step == total_steps:
                now = clock.seconds
                last = float(loss_sum) / loss_count
                # Summed over processes, so that all of them stop together, not one alone
                # while the others wait for it in the next all-reduce.
                if not math.isfinite(float(accelerator.reduce(loss_sum.clone(), "sum"))):
                    raise diverged(f"training loss is not finite at step {step}", out,
                                   last_saved)
                tps = window_tokens * world / max(now - window_t0, 1e-9)
                bar.set_postfix(loss=f"{last:.3f}", tok_s=f"{tps:,.0f}")
                record({"event": "train", "step": step, "epoch": round(epoch_f, 4),
                        "loss": last, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tps})
                loss_sum.zero_()
                loss_count, window_tokens, window_t0 = 0, 0, now
            done = step >= total_steps
            if cfg.eval_every and step % cfg.eval_every == 0 and not done:
                eval_into_history(epoch_f)
            if cfg.save_every and step % cfg.save_every == 0 and not done:
                checkpoint()
            if done:
                break
        # End of an epoch, or of training.
        full_epoch = batch_in_epoch * world >= batches_per_epoch
        if done or not cfg.eval_every:
            eval_into_history(epochs_done())
        if full_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
        if not done and not cfg.save_every:
            checkpoint()
    bar.close()
    final = Metrics(**{k: history[-1][k] for k in ("loss", "perplexity", "tokens", "blocks")}) \
        if history else None
    result = TrainResult(output_dir=out, base=base, final=final, history=history, steps=step,
                         train_seconds=clock.seconds, data=corpus.stats)
    check_finite(model, step, out, last_saved)
    if main:
        _export(model, tokenizer, out, cfg, result)
        metrics_log.close()
    accelerator.wait_for_everyone()
    if cfg.push_to_hub and main:
        push_to_hub(out, cfg.push_to_hub)
    return result


def diverged(what: str, out: Path, last_saved: list[Path]) -> MlmkitError:
    where = (f"the last good checkpoint, {last_saved[0]}, is kept (--resume latest continues "
             "from it)" if last_saved else "no checkpoint was saved before it")
    return MlmkitError(f"{what}: training diverged and nothing was exported from {out}; "
                       f"{where}; a lower --learning-rate or --max-grad-norm usually prevents "
                       "this")


def check_finite(model: Any, step: int, out: Path, last_saved: list[Path]) -> None:
    """Raise unless every weight is finite (one device sync: at checkpoints and export only)."""
    bad = torch.stack([~torch.isfinite(p).all() for p in model.parameters()]).any()
    if bool(bad):
        raise diverged(f"non-finite weights at step {step}", out, last_saved)


def _export(model: Any, tokenizer: Any, out: Path, cfg: TrainConfig, result: TrainResult) -> None:
    """Write the model, tokenizer and metrics via a temporary directory, then move them in, so a
    crash never leaves a half-written model next to the checkpoints."""
    tmp = out / ".export-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    metrics = {
        "base": result.base.to_dict() if result.base else None,
        "final": result.final.to_dict() if result.final else None,
        "history": result.history, "steps": result.steps,
        "train_seconds": round(result.train_seconds, 3), "data": result.data,
    }
    write_json(tmp / "metrics.json", metrics)
    write_json(tmp / CONFIG_FILE, to_dict(cfg))
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()


def push_to_hub(out: Path, repo_id: str) -> str:
    """Upload the exported directory (not the checkpoints) to the Hub, as the guide does."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(out),
                                 ignore_patterns=["checkpoints/*", ".export-tmp/*"])
    except Exception as e:
        raise MlmkitError(f"--push-to-hub {repo_id}: upload failed: {str(e).splitlines()[0]} "
                          f"(the model is saved in {out})") from None
    return str(getattr(info, "commit_url", repo_id))
