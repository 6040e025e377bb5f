"""What every backend's training run shares: its result and saved state, the tokenizer and
data it trains on, and the bookkeeping (`Recipe`) written once: when to log, evaluate and
save, which checkpoint is best, what a divergence says, and the exported directory.

A backend (torch_recipe.Run, keras_recipe.KerasRun) subclasses `Recipe`, sets up its model
and data, drives its own steps, and calls `after_step` and `after_epoch` around them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mlmkit.config import TrainConfig
from mlmkit.corpus.blocks import Corpus, check_block_fits, load_blocks
from mlmkit.errors import MlmkitError
from mlmkit.io.files import WriteFailed, write_json
from mlmkit.io.sources import iter_texts
from mlmkit.modeling.load import load_model_config, load_tokenizer, max_block_size
from mlmkit.modeling.overrides import apply_overrides
from mlmkit.settings import named
from mlmkit.training.checkpoint import STATE_FILE, read_state, verify_checkpoint
from mlmkit.training.perplexity import Metrics
from mlmkit.training.rundir import CHECKPOINTS, settings_record, write_config

log = logging.getLogger("mlmkit")


@dataclass
class TrainResult:
    """What `train` returns: the exported directory, base and final fixed-mask metrics, the
    per-evaluation history, steps, training seconds, data statistics and the best checkpoint."""

    output_dir: Path
    base: Metrics | None
    final: Metrics | None  # of the exported model: the last step's, or the best with --load-best
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    train_seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    finished_before: bool = False  # a resume of a run that had nothing left to do
    hub_url: str | None = None  # the commit that published it, with push_to_hub
    probes: dict[str, Any] | None = None  # with --probe: metrics.json's "probe" (probes.py)


@dataclass
class TrainState:
    """What a kill must not lose besides what the checkpoint's weights (and, on PyTorch,
    Accelerate's optimizer, scheduler and RNG states) keep: the position in training and what
    was measured. `batch_in_epoch` counts each process's micro-batches of the current epoch up
    to the last optimizer step: the sampler starts there again on resume."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    base: dict[str, Any] | None = None
    train_seconds: float = 0.0
    best: dict[str, Any] | None = None  # {"step", "loss", "perplexity", "checkpoint"}
    finished: bool = False
    # With --probe: {FILE:TASK: the base model's report, every item's outcome kept}, so the
    # trained model is compared with it item by item, also after a resume.
    probe_base: dict[str, Any] | None = None

    def save(self, checkpoint_dir: Path) -> None:
        """Write the state into a checkpoint directory (atomically)."""
        write_json(checkpoint_dir / STATE_FILE, asdict(self), indent=None)

    @classmethod
    def load(cls, checkpoint_dir: Path) -> TrainState:
        """The state a checkpoint directory holds, verified as it is read."""
        saved = read_state(checkpoint_dir)
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


def prepare_tokenizer_and_data(cfg: TrainConfig, progress: bool) -> tuple[Any, Any, Corpus]:
    """Tokenizer, model config and blocks, with every input checked before any weight loads."""
    tokenizer = load_tokenizer(cfg.model)
    scratch = cfg.from_scratch or bool(cfg.train_tokenizer)
    model_config = load_model_config(cfg.model, weights=not scratch)
    apply_overrides(model_config, cfg.config_overrides)
    if cfg.train_tokenizer:
        texts = (t for _, t in iter_texts(cfg))
        tokenizer = tokenizer.train_new_from_iterator(texts, vocab_size=cfg.train_tokenizer)
        model_config.vocab_size = len(tokenizer)
    check_block_fits(cfg.block_size, max_block_size(model_config, tokenizer), cfg.model)
    corpus = load_blocks(cfg, tokenizer, progress=progress)
    corpus = corpus.first(cfg.max_train_blocks, cfg.max_eval_blocks, tokenizer.pad_token_id)
    return tokenizer, model_config, corpus


def export_result(out: Path, cfg: TrainConfig, command: str, result: TrainResult, model: Any,
                  tokenizer: Any, hardware: str, precision: str) -> None:
    """The run's model directory: weights, tokenizer, metrics.json, settings, model card and
    curves, the same for every backend (`model` is a transformers model)."""
    from mlmkit.training.card import CardInfo
    from mlmkit.training.export import export_model
    from mlmkit.training.tracking import plot_curves

    metrics = {"base": result.base.to_dict() if result.base else None,
               "final": result.final.to_dict() if result.final else None,
               "best": result.best, "history": result.history, "steps": result.steps,
               "train_seconds": round(result.train_seconds, 3), "data": result.data}
    if result.probes:
        metrics["probe"] = result.probes
    record = settings_record(cfg)
    card = CardInfo(base_model=cfg.model, datasets=[record["data"]]
                    + ([record["eval_data"]] if record["eval_data"] else []),
                    command=command, hardware=hardware, train_seconds=result.train_seconds,
                    from_scratch=cfg.from_scratch, precision=precision)
    # The curves first: the export's manifest, written last, then vouches for them too.
    plot_curves(out / "metrics.jsonl", out / "curves.png")
    export_model(model, tokenizer, out, config=record, metrics=metrics, card=card,
                 repo_id=cfg.push_to_hub)


def check_load_best(cfg: TrainConfig, eval_blocks: int | None = None) -> None:
    """--load-best needs an evaluation at every checkpoint and, once the data are known
    (`eval_blocks`), held-out blocks to evaluate."""
    if not cfg.load_best:
        return
    if cfg.eval_every != cfg.save_every:
        raise MlmkitError(f"{named('load_best', True)}: needs an evaluation at every "
                          f"checkpoint; give {named('eval_every')} and {named('save_every')} "
                          "the same value")
    if eval_blocks == 0:
        raise MlmkitError(f"{named('load_best', True)}: no held-out blocks to choose the best "
                          "checkpoint by")


class Recipe:
    """A training run's bookkeeping, the same on every backend. A backend sets `out`,
    `tokenizer`, `corpus`, `total_steps`, `batches_per_epoch`, `metrics` (a MetricsLog) and
    `clock` (a Stopwatch) in its setup, and gives the hooks below."""

    resumable = True  # whether --resume can continue a run of this backend
    main, world = True, 1  # this process writes the run's files; processes in all

    def __init__(self, cfg: TrainConfig, command: str | None = None) -> None:
        self.cfg, self.command = cfg, command or "mlmkit.train(...) (Python API)"
        self.state = TrainState()
        self.last_saved: Path | None = None

    # -- hooks ---------------------------------------------------------------------------------
    def _score(self) -> Metrics | None:
        """Fixed-mask perplexity of the model now; None without held-out blocks."""
        raise NotImplementedError

    def _commit(self, state: dict[str, Any], protect: Path | None) -> Path:
        """checkpoints/step_N of the model now, with `state` (see checkpoint.commit_checkpoint)."""
        raise NotImplementedError

    def _restore(self, checkpoint: Path) -> None:
        """The model's weights from a verified checkpoint of this run."""
        raise NotImplementedError

    def _weights_finite(self) -> bool:
        raise NotImplementedError

    def _hf_model(self) -> Any:
        """The model to export, as a transformers model."""
        raise NotImplementedError

    def _hardware(self) -> str:
        raise NotImplementedError

    def _precision(self) -> str:
        """The mixed precision that ran: "bf16", "fp16" or "no" (float32, as Keras runs here)."""
        return "no"

    def _barrier(self) -> None:
        """Wait for every process (one process: nothing to wait for)."""

    def _agree(self, value: Any) -> Any:
        """The main process's `value`, on every process (one process: `value`)."""
        return value

    # -- measuring -----------------------------------------------------------------------------
    def epochs(self) -> float:
        """Epochs done so far, as a fraction."""
        # Capped at the epoch's end: with several processes the last round of batches can
        # overshoot batches_per_epoch.
        s = self.state
        return s.epoch + min(1.0, s.batch_in_epoch * self.world / self.batches_per_epoch)

    def measure(self, step: int, epoch: float) -> Metrics | None:
        """Evaluate on the fixed held-out masks and log it; None without held-out blocks."""
        m = self._score()
        if m is not None:
            self.metrics.record({"event": "eval", "step": step, "epoch": round(epoch, 4),
                                 **m.to_dict()})
        return m

    def start(self) -> None:
        """A fresh run: its settings file, the base model's perplexity and its probes."""
        if self.main:
            write_config(self.out, self.cfg)
        if not self.cfg.skip_base_eval:
            base = self.measure(0, 0.0)
            self.state.base = base.to_dict() if base else None
        if self.cfg.probe and self.main:
            self.state.probe_base = self.probe(self.cfg.model)

    def probe(self, name: str) -> dict[str, Any]:
        """The --probe files' reports of the model now, which they call `name`."""
        from mlmkit.training.probes import run_training_probes

        return run_training_probes(self._hf_model(), self.tokenizer, self.cfg.probe, name,
                                   progress=getattr(self, "progress", None) == "bar")

    def evaluate(self) -> Metrics | None:
        """Fixed-mask perplexity now, into the history (the training clock paused)."""
        with self.clock.paused():
            m = self.measure(self.state.step, self.epochs())
        if m is not None:
            self.state.history.append({"step": self.state.step, "epoch": round(self.epochs(), 4),
                                       "train_seconds": round(self.clock.seconds, 3),
                                       **m.to_dict()})
        return m

    def record_train(self, loss: float, lr: float, tokens_per_s: float) -> None:
        """Log a training record (loss, learning rate, throughput)."""
        self.metrics.record({"event": "train", "step": self.state.step,
                             "epoch": round(self.epochs(), 4), "loss": loss, "lr": lr,
                             "tokens_per_s": tokens_per_s})

    # -- the cadence ---------------------------------------------------------------------------
    def after_step(self, log_train: Any) -> bool:
        """After optimizer step `state.step`: `log_train()`, the evaluation and the checkpoint
        when their intervals come round (the last step's wait for `after_epoch`). True once
        training is done."""
        cfg, s = self.cfg, self.state
        done = s.step >= self.total_steps
        if s.step % cfg.log_every == 0 or done:
            log_train()
        if cfg.eval_every and s.step % cfg.eval_every == 0 and not done:
            self.evaluate()
        if cfg.save_every and s.step % cfg.save_every == 0 and not done:
            self.save_checkpoint()
        return done

    def after_epoch(self) -> bool:
        """At the end of an epoch, or of training: the evaluation and checkpoint every epoch
        gets when there is no interval, and the last step's. True once training is done."""
        cfg, s = self.cfg, self.state
        done = s.step >= self.total_steps
        if done or not cfg.eval_every:
            self.evaluate()
        if s.batch_in_epoch * self.world >= self.batches_per_epoch:
            s.epoch, s.batch_in_epoch = s.epoch + 1, 0
        if done or not cfg.save_every:
            s.finished = done
            self.save_checkpoint()
        return done

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Checkpoint the current step (once per step) and return its directory."""
        s = self.state
        if self.last_saved is not None and self.last_saved.name == f"step_{s.step}":
            return self.last_saved
        with self.clock.paused():
            # Never a checkpoint of diverged weights: resuming from it could only diverge again.
            self.check_finite()
            s.train_seconds = self.clock.seconds
            name = f"step_{s.step}"
            evaluated = s.history[-1] if s.history and s.history[-1]["step"] == s.step else None
            if evaluated and (s.best is None or evaluated["perplexity"] < s.best["perplexity"]):
                s.best = {"step": s.step, "loss": evaluated["loss"],
                          "perplexity": evaluated["perplexity"], "checkpoint": name}
            protect = self.out / CHECKPOINTS / s.best["checkpoint"] if (
                self.cfg.load_best and s.best) else None
            try:
                self.last_saved = self._commit(asdict(s), protect)
            except WriteFailed as e:
                raise MlmkitError(f"{e}; {self._kept()}") from e
        return self.last_saved

    def _load_best(self) -> dict[str, Any] | None:
        best, s = self.state.best, self.state
        if best is None or best["step"] == s.step:
            return None
        if self.main:
            log.info("exporting the best checkpoint, step %d (perplexity %.3f), not the last, "
                     "step %d (perplexity %.3f)", best["step"], best["perplexity"], s.step,
                     s.history[-1]["perplexity"])
        self._restore(verify_checkpoint(self.out / CHECKPOINTS / best["checkpoint"],
                                        named("load_best", True)))
        return best

    # -- divergence ----------------------------------------------------------------------------
    def _kept(self) -> str:
        """Where a run that stops on an error can go on from."""
        if self.last_saved is None:
            return "no checkpoint was saved before it"
        return f"the last good checkpoint, {self.last_saved}, is kept" + (
            f" ({named('resume', 'latest')} continues from it)" if self.resumable else "")

    def diverged(self, what: str) -> MlmkitError:
        """The error of a run whose loss or weights stopped being finite."""
        return MlmkitError(f"{what}: training diverged and nothing was exported from "
                           f"{self.out}; {self._kept()}; a lower {named('learning_rate')} or "
                           f"{named('max_grad_norm')} usually prevents this")

    def check_loss(self, loss: float) -> None:
        """Raise if `loss`, the training loss of the steps since the last log, is not finite."""
        if not math.isfinite(loss):
            raise self.diverged(f"training loss is not finite at step {self.state.step}")

    def check_finite(self) -> None:
        """Raise unless every weight is finite (at checkpoints and export)."""
        if not self._weights_finite():
            raise self.diverged(f"non-finite weights at step {self.state.step}")

    # -- the end -------------------------------------------------------------------------------
    def finish(self) -> TrainResult:
        """After the last step: the final checkpoint and evaluation, the export, the result."""
        self.check_finite()
        exported = self._load_best() if self.cfg.load_best else None
        result = self.result(exported)
        if self.main and self.cfg.probe:
            from mlmkit.training.probes import probe_section

            result.probes = probe_section(self.state.probe_base, self.probe(str(self.out)))
        if self.main:
            try:
                self.export(result)
            except WriteFailed as e:
                # The final checkpoint says the run finished; a resume finds no whole export
                # beside it (`export_problems`) and writes it then.
                hint = ("the final checkpoint, {}, is kept: free space, then "
                        + named("resume", "latest") + " exports it" if self.resumable else
                        "the final checkpoint, {}, holds the trained model")
                raise MlmkitError(f"{e}; {hint.format(self.last_saved)}") from e
        self._barrier()
        result.hub_url = self.publish()
        return result

    def result(self, exported: dict[str, Any] | None = None) -> TrainResult:
        """The run's TrainResult, of the exported step."""
        s = self.state
        step = exported["step"] if exported else (s.history[-1]["step"] if s.history else None)
        entry = next((h for h in reversed(s.history) if h["step"] == step), None)
        final = Metrics.from_dict(entry) if entry else None
        return TrainResult(output_dir=self.out, base=Metrics.from_dict(s.base) if s.base else None,
                           final=final, history=s.history, steps=s.step,
                           train_seconds=s.train_seconds, data=self.corpus.stats, best=s.best)

    def end_finished_run(self) -> TrainResult:
        """A resumed run that had finished: nothing to do once its export is whole; else (a
        kill or a full disk after its final checkpoint) the export, now."""
        from mlmkit.training.export import check_export

        s = self.state
        # Decided by the main process, which writes the export: every process must agree.
        problems = self._agree(check_export(self.out, s.step) if self.main else None)
        if problems:
            if self.main:
                log.warning("%s finished at step %d but its export is not whole (%s); exporting "
                            "it from %s", self.out, s.step, "; ".join(problems), self.last_saved)
            return self.finish()
        if self.main and not self.cfg.push_to_hub:
            log.info("%s finished at step %d (epoch %.2f); nothing to do: pass a larger "
                     "%s or %s to train it further", self.out, s.step, self.epochs(),
                     named("epochs"), named("max_steps"))
        result = self.result()
        result.finished_before = True
        # Asked to publish a finished run: what was asked needs no training, and the same
        # command run again after a failed upload then completes it.
        result.hub_url = self.publish()
        return result

    def publish(self) -> str | None:
        """With push_to_hub, the exported directory on the Hub (by the main process); the
        commit's URL."""
        repo = self.cfg.push_to_hub
        if not repo or not self.main:
            return None
        from mlmkit.settings import from_cli
        from mlmkit.training.export import publish

        try:
            return publish(self.out, repo, named("push_to_hub", repo))
        except MlmkitError as e:
            again = (f"`mlmkit push {self.out} {repo}`" if from_cli()
                     else f"push({str(self.out)!r}, {repo!r})")
            raise MlmkitError(f"{e}; the model is saved in {self.out}: publish it with "
                              f"{again}") from None

    def export(self, result: TrainResult) -> None:
        """Write the model directory: weights, tokenizer, metrics, settings, model card."""
        export_result(self.out, self.cfg, self.command, result, self._hf_model(),
                      self.tokenizer, self._hardware(), self._precision())
