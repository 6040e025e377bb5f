"""The pieces the training loop is built from: the epoch sampler that can start mid-epoch, the
objective module (model + sparse head + loss, so DDP sees it all), AdamW's parameter groups, the
training clock and the logging window.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import numpy as np
import torch

from mlmkit.config import TrainConfig
from mlmkit.modeling.load import masked_lm_loss


class BlockKeys(torch.utils.data.Dataset):
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


def mixed_precision_of(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def adamw(model: Any, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
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


class LogWindow:
    """Loss and tokens since the last training log record (loss kept on the device: reading it
    every step would sync the GPU every step)."""

    def __init__(self, t0: float, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.reset(t0)

    def reset(self, t0: float) -> None:
        self.loss_sum.zero_()
        self.count, self.tokens, self.t0 = 0, 0, t0

    def add(self, tokens: int, loss: torch.Tensor) -> None:
        self.tokens += tokens
        self.loss_sum += loss
        self.count += 1

    def mean_loss(self) -> float:
        return float(self.loss_sum) / max(self.count, 1)
