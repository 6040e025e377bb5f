"""Perplexity on fixed masks: the same model and data give the same number on every run.

Perplexity is exp of the mean loss over all predicted tokens (token-weighted), not the mean of
per-batch means the HF Trainer reports, so it does not depend on the evaluation batch size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from mlmkit.config import EvalConfig, MaskConfig
from mlmkit.corpus.masking import Masker
from mlmkit.errors import MlmkitError
from mlmkit.modeling.load import masked_lm_loss


@dataclass
class Metrics:
    """Masked-LM loss and perplexity on fixed masks, and how many tokens and blocks they are
    over."""

    loss: float
    perplexity: float
    tokens: int
    blocks: int

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, as metrics.json holds them."""
        return asdict(self)


class FixedMaskDataset(torch.utils.data.Dataset):
    """Pre-masked evaluation blocks (see `Masker.fixed`)."""

    def __init__(self, inputs: np.ndarray, labels: np.ndarray, pad_id: int) -> None:
        self.inputs, self.labels, self.pad_id = inputs, labels, pad_id

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(self.inputs[i]).long()
        labels = torch.from_numpy(self.labels[i]).long()
        # Padding is recognised by label and id together: a masked position is never padding.
        attn = ((ids != self.pad_id) | (labels != -100)).long()
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def fixed_eval_dataset(blocks: np.ndarray, tokenizer: Any, cfg: MaskConfig) -> FixedMaskDataset:
    inputs, labels = Masker(tokenizer, cfg).fixed(blocks, cfg.eval_seed)
    return FixedMaskDataset(inputs, labels, tokenizer.pad_token_id)


@torch.inference_mode()
def evaluate(model: Any, loader: Any, accelerator: Any = None, sparse: bool = True,
             progress: bool = False, device: torch.device | str | None = None) -> Metrics:
    """Token-weighted masked-LM loss and perplexity over every batch of `loader`.

    With an Accelerate `accelerator`, each process scores its shard and the sums are reduced.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.int64)
    blocks = 0
    dev = accelerator.device if accelerator is not None else (device or next(
        model.parameters()).device)
    total, count = total.to(dev), count.to(dev)
    for batch in tqdm(loader, desc="evaluating", unit=" batches", disable=not progress,
                      leave=False):
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        if accelerator is not None:
            with accelerator.autocast():
                loss, n = masked_lm_loss(model, batch, sparse)
        else:
            loss, n = masked_lm_loss(model, batch, sparse)
        total += loss.double()
        count += n
        blocks += len(batch["input_ids"])
    if accelerator is not None:
        total = accelerator.reduce(total, "sum")
        count = accelerator.reduce(count, "sum")
        blocks = int(accelerator.reduce(torch.tensor(blocks, device=dev), "sum"))
    model.train(was_training)
    n = int(count)
    if n == 0:
        raise MlmkitError("evaluation: no token was masked; the held-out blocks are empty")
    mean = float(total) / n
    return Metrics(loss=mean, perplexity=math.exp(min(mean, 700.0)), tokens=n, blocks=blocks)


def run_eval(cfg: EvalConfig) -> tuple[Metrics, dict[str, Any]]:
    """`mlmkit eval`: the perplexity of `cfg.model` on the held-out records of `cfg.data` (or on
    all records), on masks fixed by `cfg.eval_seed`; returns the metrics and the data stats."""
    from dataclasses import replace

    from mlmkit.corpus.blocks import load_blocks
    from mlmkit.io.sources import describe_source
    from mlmkit.modeling.load import (
        load_model,
        load_model_config,
        load_tokenizer,
        max_block_size,
        pick_device,
    )
    from mlmkit.training.rundir import run_eval_settings

    if cfg.data is None:
        run = run_eval_settings(cfg.model)
        if run is None:
            raise MlmkitError(f"--data: no corpus given, and {cfg.model} is not a run directory "
                              "of mlmkit whose own data settings could be reused")
        cfg = replace(cfg, **run)
    device = pick_device(cfg.device)  # a wrong --device fails before any data is read
    tokenizer = load_tokenizer(cfg.model)
    config = load_model_config(cfg.model)
    limit = max_block_size(config, tokenizer)
    if cfg.block_size > limit:
        raise MlmkitError(f"--block-size {cfg.block_size}: above the {limit} positions model "
                          f"{cfg.model} accepts")
    data_cfg = replace(cfg, eval_fraction=0.0, eval_data=None) if cfg.all_records else cfg
    corpus = load_blocks(data_cfg, tokenizer, progress=not cfg.quiet)
    blocks = corpus.train if cfg.all_records else corpus.eval
    if len(blocks) == 0:
        raise MlmkitError(f"{describe_source(cfg.data)}: no held-out block to score; raise "
                          "--eval-fraction or pass --all-records")
    model = load_model(cfg.model, config).to(device)
    loader = torch.utils.data.DataLoader(fixed_eval_dataset(blocks, tokenizer, cfg),
                                         batch_size=cfg.eval_batch_size)
    metrics = evaluate(model, loader, sparse=cfg.sparse_head, progress=not cfg.quiet,
                       device=device)
    return metrics, corpus.stats
