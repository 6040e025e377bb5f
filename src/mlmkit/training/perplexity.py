"""Perplexity on fixed masks: the same model and data give the same number on every run.

Perplexity is exp of the mean loss over all predicted tokens (token-weighted), not the mean of
per-batch means the HF Trainer reports, so it does not depend on the evaluation batch size.

Accuracy, from the same forward pass: the share of masked positions (labels != -100) whose
original token is the model's first guess (top-1, the `eval_accuracy` of transformers'
run_mlm.py) or among its five highest logits (top-5). Positions replaced by a random token or
left unchanged by the 80/10/10 rule count as masked: the target is always the original token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from mlmkit.config import EvalConfig, MaskConfig
from mlmkit.corpus.masking import Masker
from mlmkit.errors import MlmkitError
from mlmkit.modeling.load import masked_lm_outputs
from mlmkit.settings import named

TOP_K = 5  # the k of `top5_accuracy`


@dataclass
class Metrics:
    """Fixed-mask results; `tokens` counts the predicted (masked) positions, the accuracies are
    shares of them in [0, 1] (None in a run recorded before mlmkit measured them)."""

    loss: float
    perplexity: float
    tokens: int
    blocks: int
    accuracy: float | None = None  # top-1: the original token is the highest logit
    top5_accuracy: float | None = None  # the original token is among the 5 highest logits

    def to_dict(self) -> dict[str, Any]:
        """The metrics as a JSON-ready dict (as metrics.json holds them)."""
        return asdict(self)

    def accuracy_text(self) -> str:
        """"top-1 accuracy 31.2%, top-5 50.0%", or "" when they were not measured."""
        if self.accuracy is None or self.top5_accuracy is None:
            return ""
        return f"top-1 accuracy {self.accuracy:.1%}, top-5 {self.top5_accuracy:.1%}"

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Metrics:
        """The metrics of a saved record (metrics.json, a run's state), its other keys ignored."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})


def count_hits(top: Any, targets: Any) -> tuple[Any, Any]:
    """(top-1 hits, top-k hits) as 0-d arrays of `top`'s library (a tensor stays on its device:
    no wait per batch): `top` holds each predicted position's k highest-scoring token ids, best
    first ([..., k]); `targets` the original tokens ([...], -100 where nothing was predicted,
    which no id equals). Torch tensors or NumPy arrays alike: one rule for both backends."""
    hit = top == targets[..., None]
    return hit[..., 0].sum(), hit.any(-1).sum()


def summarise(total: float, count: int, blocks: int, top1: int, topk: int) -> Metrics:
    """Metrics from the sums over every scored batch (`total` the summed token losses)."""
    if count == 0:
        raise MlmkitError("evaluation: no token was masked; the held-out blocks are empty")
    mean = total / count
    return Metrics(loss=mean, perplexity=math.exp(min(mean, 700.0)), tokens=count,
                   blocks=blocks, accuracy=top1 / count, top5_accuracy=topk / count)


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
    """Token-weighted masked-LM loss, perplexity and top-1/top-5 accuracy over every batch of
    `loader`. With an Accelerate `accelerator`, each process scores its shard and the sums are
    reduced.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    dev = accelerator.device if accelerator is not None else (device or next(
        model.parameters()).device)
    total = torch.zeros((), dtype=torch.float64, device=dev)
    # Predicted tokens, blocks, top-1 and top-5 hits.
    counts = torch.zeros(4, dtype=torch.int64, device=dev)
    for batch in tqdm(loader, desc="evaluating", unit=" batches", disable=not progress,
                      leave=False):
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        if accelerator is not None:
            with accelerator.autocast():
                loss, targets, logits = masked_lm_outputs(model, batch, sparse)
        else:
            loss, targets, logits = masked_lm_outputs(model, batch, sparse)
        top1, topk = count_hits(logits.topk(min(TOP_K, logits.shape[-1]), dim=-1).indices,
                                targets)
        total += loss.double()
        counts[0] += (targets != -100).sum()
        counts[1] += len(batch["input_ids"])
        counts[2] += top1
        counts[3] += topk
    if accelerator is not None:
        total = accelerator.reduce(total, "sum")
        counts = accelerator.reduce(counts, "sum")
    model.train(was_training)
    n, blocks, top1, topk = counts.tolist()
    return summarise(float(total), n, blocks, top1, topk)


def run_eval(cfg: EvalConfig) -> tuple[Metrics, dict[str, Any]]:
    """`mlmkit eval`: the perplexity of `cfg.model` on the held-out records of `cfg.data` (or on
    all records), on masks fixed by `cfg.eval_seed`; returns the metrics and the data stats."""
    from dataclasses import replace

    from mlmkit.corpus.blocks import check_block_fits, load_blocks
    from mlmkit.io.sources import describe_source
    from mlmkit.modeling.load import (
        load_model,
        load_model_config,
        load_tokenizer,
        max_block_size,
        pick_device,
    )
    from mlmkit.training.rundir import run_eval_settings
    from mlmkit.training.tracking import progress_mode

    if cfg.data is None:
        run = run_eval_settings(cfg.model)
        if run is None:
            raise MlmkitError(f"{named('data')}: no corpus given, and {cfg.model} is not a run "
                              "directory of mlmkit whose own data settings could be reused")
        # The run's own held-out blocks, unless fewer are asked for.
        fewer = {"max_eval_blocks": cfg.max_eval_blocks} if cfg.max_eval_blocks else {}
        cfg = replace(cfg, **{**run, **fewer})
    device = pick_device(cfg.device)  # a wrong --device fails before any data is read
    tokenizer = load_tokenizer(cfg.model)
    config = load_model_config(cfg.model)
    check_block_fits(cfg.block_size, max_block_size(config, tokenizer), cfg.model)
    data_cfg = replace(cfg, eval_fraction=0.0, eval_data=None) if cfg.all_records else cfg
    progress = progress_mode(cfg.quiet) == "bar"  # no carriage returns into a log file
    corpus = load_blocks(data_cfg, tokenizer, progress=progress)
    most = cfg.max_eval_blocks  # with all_records, every block scored is a "training" one
    corpus = corpus.first(most if cfg.all_records else None, None if cfg.all_records else most,
                          tokenizer.pad_token_id)
    blocks = corpus.train if cfg.all_records else corpus.eval
    if len(blocks) == 0:
        raise MlmkitError(f"{describe_source(cfg.data)}: no held-out block to score; raise "
                          f"{named('eval_fraction')} or pass {named('all_records', True)}")
    model = load_model(cfg.model, config).to(device)
    loader = torch.utils.data.DataLoader(fixed_eval_dataset(blocks, tokenizer, cfg),
                                         batch_size=cfg.eval_batch_size)
    metrics = evaluate(model, loader, sparse=cfg.sparse_head, progress=progress, device=device)
    return metrics, corpus.stats
