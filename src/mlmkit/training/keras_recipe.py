"""`mlmkit train --backend keras`: the same run on Keras 3 and keras-hub, with `model.fit`.

The data are mlmkit's own: the same tokenizer, blocks, epoch permutations, dynamic masks
(MaskingCollator, batch for batch) and fixed evaluation masks as the PyTorch path, so both
report comparable perplexity. The model goes HF -> keras-hub at the start and back at the end
(keras_convert), so the output is the same standard Hugging Face directory, metrics.json and
model card. Keras' own backend (tensorflow, torch, jax) comes from KERAS_BACKEND.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlmkit.config import TrainConfig
from mlmkit.corpus.masking import IGNORE_INDEX, Masker, MaskingCollator
from mlmkit.errors import MlmkitError
from mlmkit.modeling.keras.convert import import_keras, keras_inputs, to_hf, to_keras, uses_segments
from mlmkit.quiet import libraries_quiet
from mlmkit.settings import named
from mlmkit.training.checkpoint import commit_checkpoint
from mlmkit.training.loop import EpochBatches, Stopwatch
from mlmkit.training.perplexity import TOP_K, Metrics, count_hits, fixed_eval_dataset, summarise
from mlmkit.training.recipe import Recipe, TrainResult, check_load_best, prepare_tokenizer_and_data
from mlmkit.training.rundir import check_output, settings_record, start_run_dir

# At import: the classes below derive from Keras', and a missing install is one line.
keras, keras_hub = import_keras()

log = logging.getLogger("mlmkit")

# Settings of the PyTorch path that this one does not implement: refused, never ignored.
UNSUPPORTED = {
    "resume": "checkpoints are model directories here, without optimizer state",
    "compile": "torch.compile is the PyTorch path's",
}


def check_keras_settings(cfg: TrainConfig) -> None:
    keras_backend = named("backend", "keras")
    for name, why in UNSUPPORTED.items():
        if getattr(cfg, name):
            raise MlmkitError(f"{named(name)} with {keras_backend}: {why}")
    if cfg.gradient_accumulation_steps != 1:
        raise MlmkitError(f"{named('gradient_accumulation_steps', cfg.gradient_accumulation_steps)}"
                          f" with {keras_backend}: expected 1")
    if cfg.mixed_precision not in ("auto", "no"):
        raise MlmkitError(f"{named('mixed_precision', cfg.mixed_precision)} with {keras_backend}: "
                          "expected auto or no (Keras runs in float32 here)")
    if cfg.report_to != "none":
        raise MlmkitError(f"{named('report_to', cfg.report_to)} with {keras_backend}: expected "
                          "none (metrics.jsonl and curves.png are written)")


def keras_batch(input_ids: np.ndarray, labels: np.ndarray, pad_id: int, segments: bool,
                multiple: int = 8) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(inputs, targets, weights) for a keras-hub masked LM from mlmkit's (input_ids, labels
    with -100): each row's predicted positions, padded to the batch's most rounded up to
    `multiple` (few distinct shapes, so a TF/JAX graph is traced a few times, not per batch),
    with weight 0 on the padding slots."""
    chosen = labels != IGNORE_INDEX
    most = max(multiple, -(-int(chosen.sum(1).max(initial=0)) // multiple) * multiple)
    positions = np.zeros((len(labels), most), dtype=np.int32)
    targets = np.zeros((len(labels), most), dtype=np.int32)
    weights = np.zeros((len(labels), most), dtype=np.float32)
    for r, row in enumerate(chosen):
        where = np.flatnonzero(row)
        positions[r, :len(where)], targets[r, :len(where)] = where, labels[r, where]
        weights[r, :len(where)] = 1.0
    # Padding is recognised by label and id together: a masked position is never padding.
    padding = (input_ids != pad_id) | chosen
    return keras_inputs(input_ids, padding, positions, segments), targets, weights


class MaskedBlocks(keras.utils.PyDataset):
    """Training batches exactly as the PyTorch path's DataLoader makes them: EpochBatches'
    permutation of (seed, epoch), MaskingCollator's masks of (seed, epoch, block indices);
    `epoch` is set by the run's callback at each epoch's start."""

    def __init__(self, blocks: np.ndarray, collator: MaskingCollator, batch_size: int,
                 seed: int, segments: bool) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.blocks, self.collator, self.segments = blocks, collator, segments
        self.sampler = EpochBatches(len(blocks), batch_size, seed)
        self.epoch, self._keys = -1, []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.sampler.seek(epoch)
            self.epoch, self._keys = epoch, list(self.sampler)

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, b: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        batch = self.collator([(e, i, np.asarray(self.blocks[i])) for e, i in self._keys[b]])
        return keras_batch(batch["input_ids"].numpy(), batch["labels"].numpy(),
                           self.collator.pad_id, self.segments)


def tf_dataset(blocks: MaskedBlocks) -> Any:
    """`blocks` as a tf.data.Dataset whose shapes are all unknown. Given the PyDataset itself,
    Keras on TensorFlow fixes each shape from the first two batches, and the masked-slot width
    varies from batch to batch. Each pass of the dataset is the next epoch, counted here
    rather than taken from the callback, so that a pass tf.data starts early still gets its
    own epoch's batches."""
    import itertools

    import tensorflow as tf

    epochs = itertools.count(max(blocks.epoch, 0))

    def batches() -> Any:
        blocks.set_epoch(next(epochs))
        for b in range(len(blocks)):
            yield blocks[b]

    spec = keras.tree.map_structure(
        lambda a: tf.TensorSpec((None,) * a.ndim, tf.as_dtype(a.dtype)), blocks[0])
    data = tf.data.Dataset.from_generator(batches, output_signature=spec)
    # A known length. Of unknown length, Keras finds each epoch's end by running out of data
    # inside a train step, which still counts an optimizer iteration: one phantom step per
    # epoch boundary, shifting the schedule (and a "Your input ran out of data" warning).
    return data.apply(tf.data.experimental.assert_cardinality(len(blocks)))


def keras_evaluate(model: Any, inputs: np.ndarray, labels: np.ndarray, pad_id: int,
                   batch_size: int) -> Metrics:
    """Token-weighted masked-LM loss, perplexity and top-1/top-5 accuracy on fixed masks, by
    the PyTorch path's rules (perplexity.count_hits, perplexity.summarise)."""
    total, count, top1, topk, segments = 0.0, 0, 0, 0, uses_segments(model)
    for start in range(0, len(inputs), batch_size):
        x, y, w = keras_batch(inputs[start:start + batch_size].astype(np.int64),
                              labels[start:start + batch_size].astype(np.int64), pad_id,
                              segments)
        logits = keras.ops.cast(model(x, training=False), "float32")
        logp = keras.ops.log_softmax(logits, axis=-1)
        picked = keras.ops.convert_to_numpy(keras.ops.take_along_axis(
            logp, keras.ops.expand_dims(keras.ops.convert_to_tensor(y), -1), axis=-1))[..., 0]
        total -= float((picked.astype(np.float64) * w).sum())
        count += int(w.sum())
        k = min(TOP_K, int(logits.shape[-1]))
        top = keras.ops.convert_to_numpy(keras.ops.top_k(logits, k)[1])
        hits = count_hits(top, np.where(w > 0, y, IGNORE_INDEX))
        top1, topk = top1 + int(hits[0]), topk + int(hits[1])
    return summarise(total, count, len(inputs), top1, topk)


class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """transformers' get_scheduler("linear" | "cosine" | "constant") as a Keras schedule: the
    learning rate of optimizer step `step` (0 for the first), as the PyTorch path steps it."""

    def __init__(self, peak: float, warmup: int, total: int, kind: str) -> None:
        self.peak, self.warmup, self.total, self.kind = peak, warmup, total, kind

    def __call__(self, step: Any) -> Any:
        ops = keras.ops
        step = ops.cast(step, "float32")
        if self.kind == "constant":
            return ops.cast(self.peak, "float32") + 0.0 * step
        warm = step / max(1, self.warmup)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        if self.kind == "linear":
            after = ops.maximum(0.0, 1.0 - progress)
        else:
            after = ops.maximum(0.0, 0.5 * (1.0 + ops.cos(math.pi * progress)))
        return self.peak * ops.where(step < self.warmup, warm, after)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "warmup": self.warmup, "total": self.total,
                "kind": self.kind}


def keras_optimizer(model: Any, cfg: TrainConfig, total_steps: int) -> Any:
    """AdamW as the PyTorch path's: no decay on biases and LayerNorms (the 1-D variables),
    gradients clipped to a global norm."""
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    opt = keras.optimizers.AdamW(
        learning_rate=WarmupDecay(cfg.learning_rate, warmup, total_steps, cfg.lr_scheduler),
        weight_decay=cfg.weight_decay, beta_1=cfg.adam_beta1, beta_2=cfg.adam_beta2,
        epsilon=cfg.adam_epsilon, global_clipnorm=cfg.max_grad_norm or None)
    opt.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables
                                            if len(v.shape) < 2])
    return opt


def describe_keras_hardware() -> str:
    from mlmkit.training.card import describe_hardware

    return (f"{describe_hardware()}; Keras {keras.__version__} ({keras.backend.backend()} "
            f"backend), keras-hub {keras_hub.__version__}")


def train_keras(cfg: TrainConfig, command: str | None = None,
                reads: Sequence[tuple[str, Path]] = ()) -> TrainResult:
    """`train(cfg)` with `cfg.backend == "keras"`."""
    check_keras_settings(cfg)
    with libraries_quiet("transformers"):
        return KerasRun(cfg, command, check_output(cfg, reads)).fit()


class KerasRun(Recipe):
    """One Keras training run, phase by phase as torch_recipe.Run: setup, base eval, fit (the
    callback drives the recipe's cadence), export. Its checkpoints are Hugging Face model
    directories (no optimizer state, hence no --resume), committed as the PyTorch path's."""

    resumable = False

    def __init__(self, cfg: TrainConfig, command: str | None, out: Path) -> None:
        from mlmkit.training.tracking import progress_mode

        super().__init__(cfg, command)
        self.out = out
        self.progress = progress_mode(cfg.quiet)

    def setup(self) -> None:
        from mlmkit.modeling.load import load_model

        cfg = self.cfg
        check_load_best(cfg)
        self.tokenizer, model_config, self.corpus = prepare_tokenizer_and_data(
            cfg, self.progress == "bar")
        log.info("data: %s", self.corpus.describe())
        check_load_best(cfg, len(self.corpus.eval))
        keras.utils.set_random_seed(cfg.seed)
        self.hf = load_model(cfg.model, model_config, from_scratch=cfg.from_scratch,
                             vocab_size=len(self.tokenizer))
        self.model = to_keras(self.hf)
        self.pad_id = self.tokenizer.pad_token_id
        collator = MaskingCollator(Masker(self.tokenizer, cfg), cfg.seed, self.pad_id)
        self.data = MaskedBlocks(self.corpus.train, collator, cfg.batch_size, cfg.seed,
                                 uses_segments(self.model))
        self.eval_set = fixed_eval_dataset(self.corpus.eval, self.tokenizer, cfg) if len(
            self.corpus.eval) else None
        self.batches_per_epoch = len(self.data)
        if not self.batches_per_epoch:
            raise MlmkitError(f"{named('data', cfg.data)}: no training block of "
                              f"{cfg.block_size} tokens")
        self.total_steps = cfg.max_steps or math.ceil(cfg.epochs * self.batches_per_epoch)
        loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight")  # the mean over masked tokens
        self.model.compile(optimizer=keras_optimizer(self.model, cfg, self.total_steps),
                           loss=loss, weighted_metrics=[])

    def fit(self) -> TrainResult:
        from mlmkit.training.tracking import MetricsLog

        self.setup()
        start_run_dir(self.out, overwrite=self.cfg.overwrite)
        self.metrics = MetricsLog(self.out, None, [], settings_record(self.cfg), main=True,
                                  progress=self.progress, total_steps=self.total_steps)
        with self.metrics:
            self.start()
            self.clock = Stopwatch()
            epochs = math.ceil(self.total_steps / self.batches_per_epoch)
            # keras.Model's fit, not keras-hub's override: that one only adds its
            # preprocessing (we bring our own batches, so none) and, to map it, wants every
            # input as a grain or tf.data dataset, which a PyDataset is not.
            data = self.data if keras.backend.backend() != "tensorflow" else (
                tf_dataset(self.data))
            keras.Model.fit(self.model, data, epochs=epochs,
                            callbacks=[RunCallback(self)],
                            verbose=1 if self.progress == "bar" else 0)
        return self.finish()

    # -- the recipe's hooks --------------------------------------------------------------------
    def _score(self) -> Metrics | None:
        if self.eval_set is None:
            return None
        return keras_evaluate(self.model, self.eval_set.inputs, self.eval_set.labels,
                              self.pad_id, self.cfg.eval_batch_size)

    def _commit(self, state: dict[str, Any], protect: Path | None) -> Path:
        return commit_checkpoint(self.out, self.state.step, self._write_model_dir, state,
                                 self.cfg.save_total_limit, protect)

    def _write_model_dir(self, path: Path) -> None:
        to_hf(self.model, self.hf).save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def _restore(self, checkpoint: Path) -> None:
        from mlmkit.modeling.load import load_model

        # Into the Keras model, so that the export converts it as it converts the last step's.
        self.model = to_keras(load_model(str(checkpoint)))

    def _weights_finite(self) -> bool:
        return all(np.isfinite(keras.ops.convert_to_numpy(v.value)).all()
                   for v in self.model.trainable_variables)

    def _hf_model(self) -> Any:
        return to_hf(self.model, self.hf)

    def _hardware(self) -> str:
        return describe_keras_hardware()


class RunCallback(keras.callbacks.Callback):
    """The PyTorch loop's work around each step, on Keras' events: the epoch's masks, the train
    loss of each batch for the log, and the recipe's cadence (evaluations, checkpoints, the
    stop at --max-steps)."""

    def __init__(self, run: KerasRun) -> None:
        super().__init__()
        self.run = run

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.window = {"loss": 0.0, "blocks": 0, "batches": 0, "t0": self.run.clock.seconds}

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.seen, self.loss_total = 0, 0.0
        self.run.state.epoch, self.run.state.batch_in_epoch = epoch, 0
        self.run.data.set_epoch(epoch)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        run = self.run
        run.state.step += 1
        # Keras reports the epoch's running mean, weighted by batch size: the batch's own
        # loss is the difference of the running sums.
        blocks = len(run.data._keys[batch])
        total = float(logs["loss"]) * (self.seen + blocks)
        w = self.window
        w["loss"] += (total - self.loss_total) / blocks
        w["blocks"] += blocks
        w["batches"] += 1
        self.seen, self.loss_total = self.seen + blocks, total
        run.state.batch_in_epoch = batch + 1
        if run.after_step(self.log_train):
            self.model.stop_training = True

    def log_train(self) -> None:
        run, w = self.run, self.window
        loss = w["loss"] / max(w["batches"], 1)
        run.check_loss(loss)
        now = run.clock.seconds
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        run.record_train(loss, lr, w["blocks"] * run.cfg.block_size / max(now - w["t0"], 1e-9))
        self.window = {"loss": 0.0, "blocks": 0, "batches": 0, "t0": now}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.run.after_epoch()
