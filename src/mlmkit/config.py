"""Every setting of mlmkit as a dataclass field with its default, help text and range.

Precedence is one rule everywhere: dataclass defaults < config file (YAML/TOML) < flags.
The defaults are the Hugging Face masked-language-modeling guide's hyperparameters, except
batch size and learning rate (64 and 1e-4, not 8 and 2e-5; see TrainConfig for why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlmkit.errors import MlmkitError
from mlmkit.settings import (
    LEAST_EPSILON,
    MOST_BLOCKS,
    MOST_VOCAB,
    MOST_WORKERS,
    Settings,
    documented,
    named,
    parse_overrides,
)
from mlmkit.settings import setting as _f


@documented
@dataclass
class DataConfig(Settings):
    """Where the text comes from and how it becomes blocks of token ids."""

    data: str = _f(None, "corpus: a Hub dataset id, a local file (.txt/.jsonl/.json/.csv/.parquet, "
                   "optionally .gz), a directory or a glob; from Python also a list of texts or "
                   "records, or a datasets.Dataset", group="data", any_type=True)
    data_config: str | None = _f(None, "Hub dataset configuration name", group="data")
    split: str = _f("train", "Hub dataset split, slicing allowed (e.g. 'train[:5000]'); local "
                    "files are one split, 'train', as datasets reads them, sliced the same way "
                    "('train[:1000]', 'train[10%:]', 'train[:5%]+train[-5%:]') before --limit; "
                    "another name is refused for them (--eval-fraction holds records out)",
                    group="data")
    text_field: list[str] = _f([], "dotted path(s) to the text, e.g. answers.text; lists of "
                               "strings are joined with a space, and so are several fields "
                               "(default: 'text', or the only string field)", group="data")
    limit: int | None = _f(None, "take only the first N records", group="data", ge=1)
    eval_data: str | None = _f(None, "a separate evaluation corpus (same forms as --data): train "
                               "on --data, evaluate on every record of this one (for a Hub "
                               "dataset: its train split; --split and --limit apply to --data)",
                               group="data", any_type=True)
    line_by_line: bool = _f(False, "each non-blank line its own example (truncated to "
                            "--block-size, padded), as run_mlm.py's --line_by_line; default: "
                            "texts concatenated and cut into full blocks, as the guide",
                            group="data")
    block_size: int = _f(128, "tokens per training block", group="data", ge=8)
    eval_fraction: float = _f(0.2, "fraction of records held out for evaluation (0 to 1; "
                              "ignored with --eval-data)", group="data", ge=0.0, le=1.0)
    pad_last_block: bool = _f(False, "pad the final partial block instead of dropping it",
                              group="data")
    cache_dir: str | None = _f(None, "where tokenized blocks are cached "
                               "(default: $MLMKIT_CACHE or ~/.cache/mlmkit)", group="data")
    no_cache: bool = _f(False, "always re-tokenize; do not read or write the block cache",
                        group="data")
    seed: int = _f(42, "seed for the held-out split, masking, shuffling and initialisation",
                   group="data", ge=0, le=2**32 - 1)


def _max_blocks(side: str) -> Any:
    # One field each for `train` and `eval`: the same bound and the same words.
    blocks = {"train": "training blocks", "eval": "held-out blocks (those evaluated)"}[side]
    return _f(None, f"take only the first N {blocks}, counted after grouping, as run_mlm.py's "
              f"--max_{side}_samples (default: all)", group="data", ge=1)


@documented
@dataclass
class MaskConfig(Settings):
    """Dynamic masking (BERT's 80/10/10 recipe) and the fixed evaluation masks."""

    mlm_probability: float = _f(0.15, "fraction of tokens selected for prediction",
                                group="masking", gt=0.0, lt=1.0)
    mask_replace_prob: float = _f(0.8, "of the selected tokens, fraction replaced by <mask>",
                                  group="masking", ge=0.0, le=1.0)
    random_replace_prob: float = _f(0.1, "of the selected tokens, fraction replaced by a random "
                                    "token (the rest stay unchanged)",
                                    group="masking", ge=0.0, le=1.0)
    whole_word_mask: bool = _f(False, "select whole words instead of single tokens",
                               group="masking")
    eval_seed: int = _f(1234, "seed of the fixed evaluation masks",
                        group="masking", ge=0, le=2**32 - 1)


    def check_together(self) -> None:
        """Rules between settings (on top of each field's own range)."""
        if self.random_replace_prob > 1.0 - self.mask_replace_prob + 1e-12:
            raise MlmkitError(f"{named('random_replace_prob', self.random_replace_prob)}: "
                              "expected a probability in [0, 1 - "
                              f"{named('mask_replace_prob').lstrip('-')}]")


@documented
@dataclass
class TrainConfig(DataConfig, MaskConfig):
    """Everything `mlmkit train` needs; `mlmkit eval` uses the data and mask part."""

    model: str = _f("distilbert/distilroberta-base", "Hub id or local directory of a masked LM",
                    group="model")
    output: str | None = _f(None, "directory to write the fine-tuned model to", group="outputs")
    max_train_blocks: int | None = _max_blocks("train")
    max_eval_blocks: int | None = _max_blocks("eval")
    # Batch 64 with lr 1e-4 instead of the guide's 8 with 2e-5 (its PyTorch recipe sets no batch
    # size, so Trainer's default of 8 applies; its TensorFlow recipe uses 16), changed together
    # by the rule that they change only on a benchmark showing equal or better fixed-mask
    # perplexity in less time: in bench/train_speed.py from the real MiniLM-L6 encoder, 1,000
    # ELI5 records, 3 epochs, it reached 283 against 438 for the recipe run at batch 16, and
    # that 438 in under half of the recipe's time (docs/benchmarks.md). A larger batch means fewer
    # optimizer steps and kernel launches per token, which is what keeps a GPU busy; 1e-4 is
    # about the square-root scaling of DAPT's 5e-4 at batch 2,048 (Gururangan et al., 2020).
    # The guide's exact recipe stays one flag pair away: --batch-size 8 --learning-rate 2e-5.
    learning_rate: float = _f(1e-4, "peak learning rate of AdamW (the guide's: 2e-5 with batch "
                              "8)", group="optimisation", gt=0.0)
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and LayerNorms)",
                             group="optimisation", ge=0.0)
    adam_beta1: float = _f(0.9, "AdamW beta1", group="optimisation", ge=0.0, lt=1.0)
    adam_beta2: float = _f(0.999, "AdamW beta2", group="optimisation", ge=0.0, lt=1.0)
    adam_epsilon: float = _f(1e-8, "AdamW epsilon", group="optimisation", ge=LEAST_EPSILON)
    batch_size: int = _f(64, "blocks per device per optimizer micro-step (the guide's: 8, "
                         "Trainer's default; its TensorFlow recipe: 16)",
                         group="optimisation", ge=1, le=MOST_BLOCKS)
    eval_batch_size: int = _f(64, "blocks per device per evaluation step",
                              group="performance", ge=1, le=MOST_BLOCKS)
    epochs: float = _f(3.0, "passes over the training blocks", group="schedule", gt=0.0)
    max_steps: int | None = _f(None, "stop after this many optimizer steps (overrides epochs)",
                               group="schedule", ge=1)
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step",
                                          group="optimisation", ge=1, le=MOST_BLOCKS)
    max_grad_norm: float = _f(1.0, "clip gradients to this L2 norm (0 disables)",
                              group="optimisation", ge=0.0)
    warmup_ratio: float = _f(0.0, "fraction of steps of linear warmup",
                             group="schedule", ge=0.0, lt=1.0)
    warmup_steps: int = _f(0, "steps of linear warmup (overrides warmup-ratio when > 0)",
                           group="schedule", ge=0)
    lr_scheduler: str = _f("linear", "learning-rate schedule after warmup",
                           choices=["linear", "cosine", "constant"], group="schedule")
    mixed_precision: str = _f("auto", "autocast precision: 'auto' is bf16 on GPUs that support "
                              "it, fp16 with loss scaling on older GPUs, fp32 ('no') on CPU",
                              choices=["no", "auto", "bf16", "fp16"], group="performance")
    sparse_head: bool = _f(True, "compute the vocabulary projection only at masked positions "
                           "(same loss, less compute)", group="performance")
    compile: bool = _f(False, "torch.compile the training step (encoder, sparse head and loss "
                       "as one graph; the masked-row count is dynamic, so it compiles once, "
                       "plus once for an epoch's shorter last batch)", group="performance")
    compile_mode: str = _f("default", "torch.compile mode with --compile; 'reduce-overhead' adds "
                           "CUDA graphs (GPU only), 'max-autotune' also tunes kernels",
                           choices=["default", "reduce-overhead", "max-autotune",
                                    "max-autotune-no-cudagraphs"], group="performance")
    eval_every: int = _f(0, "evaluate every N optimizer steps (0: at the end of every epoch)",
                         group="schedule", ge=0)
    save_every: int = _f(0, "checkpoint every N optimizer steps (0: at the end of every epoch)",
                         group="checkpoints", ge=0)
    save_total_limit: int = _f(1, "keep only the newest N checkpoints (the final state is always "
                               "one, so a finished run can be trained further)",
                               group="checkpoints", ge=1)
    load_best: bool = _f(False, "export the checkpoint with the lowest fixed-mask perplexity "
                         "instead of the last (needs evaluation at every checkpoint)",
                         group="checkpoints")
    resume: str | None = _f(None, "continue a run: its directory, one of its checkpoint "
                            "directories, or 'latest' with --output; the run's saved settings "
                            "are used, and flags given again must match them", group="checkpoints")
    report_to: str = _f("none", "also send metrics to these trackers, comma-separated: "
                        "tensorboard, mlflow, wandb, trackio (metrics.jsonl and curves.png "
                        "are always written)", group="outputs")
    overwrite: bool = _f(False, "replace an existing, non-empty output directory",
                         group="checkpoints")
    from_scratch: bool = _f(False, "train a randomly initialised model of the named model's shape",
                            group="model")
    config_overrides: str | None = _f(None, "with --from-scratch: change the model's shape, e.g. "
                                      "'hidden_size=128,num_hidden_layers=2'", group="model")
    train_tokenizer: int | None = _f(None, "first train a new tokenizer of the same kind with this "
                                     "vocabulary size on the corpus (implies --from-scratch)",
                                     group="model", ge=100, le=MOST_VOCAB)
    push_to_hub: str | None = _f(None, "upload the result to this Hub repository id",
                                 group="outputs")
    probe: list[str] = _f([], "probe the base model before training and the trained one after "
                          "on this file (repeatable): FILE or FILE:TASK, TASK pairs (BLiMP), "
                          "cloze (LAMA) or bias (CrowS-Pairs), guessed from the file's fields "
                          "when not named; both results, their difference with a 95% interval "
                          "and McNemar's p go into metrics.json and the model card",
                          group="outputs", metavar="FILE[:TASK]")
    skip_base_eval: bool = _f(False, "do not measure the base model's perplexity before training",
                              group="schedule")
    num_workers: int = _f(0, "data-loader worker processes", group="performance", ge=0,
                          le=MOST_WORKERS)
    backend: str = _f("torch", "training framework: torch (Accelerate), or keras (Keras 3 + "
                      "keras-hub, model.fit on the same data and masks; Keras' own backend "
                      "from KERAS_BACKEND; needs the 'keras' extra)", choices=["torch", "keras"],
                      group="performance")
    log_every: int = _f(50, "write a training log record every N optimizer steps",
                        group="outputs", ge=1)
    quiet: bool = _f(True, "no progress (the command line shows a bar, or plain lines when "
                     "stderr is not a terminal, unless --quiet)", group="outputs")

    def check_together(self) -> None:
        """Rules between settings (on top of each field's own range)."""
        super().check_together()
        if self.eval_fraction >= 1.0:
            raise MlmkitError(f"{named('eval_fraction', self.eval_fraction)}: expected a "
                              "number >= 0 and < 1 (all records held out leaves nothing to "
                              "train on)")
        if parse_overrides(self.config_overrides) and not (self.from_scratch
                                                           or self.train_tokenizer):
            raise MlmkitError(f"{named('config_overrides')}: only with "
                              f"{named('from_scratch', True)} or {named('train_tokenizer')} "
                              "(pretrained weights fix the model's shape)")
        if self.push_to_hub:  # refused now, not after the hours of training before the upload
            check_repo_id(self.push_to_hub, named("push_to_hub", self.push_to_hub))
        for spec in self.probe or ():
            # The file is there and readable, a task named is known; train() guesses a task
            # not named from the file and reads every record before training starts.
            check_probe_spec(spec, named("probe", spec, quoted=True))


PROBE_TASKS = ("pairs", "cloze", "bias")


def parse_probe_spec(spec: str) -> tuple[str, str | None]:
    """FILE[:task] -> (file, task or None)."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail in PROBE_TASKS:
        return head, tail
    return spec, None


def check_probe_spec(spec: str, where: str) -> tuple[str, str | None]:
    """(file, task or None) of FILE[:task] (`train --probe`), the file there and readable, a
    task after the colon one of `PROBE_TASKS`; else one error beginning with `where`."""
    import os
    from pathlib import Path

    path, task = parse_probe_spec(spec)
    head, sep, tail = spec.rpartition(":")
    if task is None and sep and head and not Path(spec).exists() and Path(head).is_file():
        raise MlmkitError(f"{where}: task {tail!r}: expected FILE or FILE:TASK with TASK one "
                          f"of {', '.join(PROBE_TASKS)}")
    if not Path(path).is_file():
        raise MlmkitError(f"{where}: {path}: no such file; expected FILE or FILE:TASK (TASK one "
                          f"of {', '.join(PROBE_TASKS)})")
    if not os.access(path, os.R_OK):
        raise MlmkitError(f"{where}: {path}: not readable (permission denied)")
    return path, task


def check_repo_id(repo_id: str, where: str) -> None:
    """Refuse a name that cannot be a Hub repository id (`--push-to-hub`, `mlmkit push`);
    `where` begins the error."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise MlmkitError(f"{where}: expected a Hub repository id, NAME or OWNER/NAME: "
                          f"{str(e).splitlines()[0]}") from None


@documented
@dataclass
class EvalConfig(DataConfig, MaskConfig):
    """What `mlmkit eval` needs: a model, a corpus and the fixed-mask settings. For a model
    that mlmkit trained, no `data` means the run's own data settings and held-out split."""

    model: str = _f("distilbert/distilroberta-base", "Hub id or local directory of a masked LM",
                    group="model")
    eval_batch_size: int = _f(64, "blocks per evaluation step", group="performance", ge=1,
                              le=MOST_BLOCKS)
    max_eval_blocks: int | None = _max_blocks("eval")
    all_records: bool = _f(False, "score every record, not only the held-out fraction (for a "
                           "separate test corpus)", group="data")
    device: str = _f("auto", "cpu, cuda, cuda:N, mps or auto", group="performance")
    sparse_head: bool = _f(True, "compute the vocabulary projection only at masked positions",
                           group="performance")
    quiet: bool = _f(True, "no progress bars (the command line shows them unless --quiet)",
                     group="outputs")


@documented
@dataclass
class DeviceConfig(Settings):
    """Where and in what precision an inference model runs."""

    device: str = _f("auto", "cpu, cuda, cuda:N, mps or auto", group="engine")
    dtype: str = _f("auto", "precision: auto is bfloat16 on a GPU, float32 (exact) otherwise; "
                    "int8 (CPU only) quantizes the linear layers; bfloat16 and int8 are the "
                    "fastest on a CPU",
                    choices=["auto", "float32", "bfloat16", "float16", "int8"], group="engine")
    runtime: str = _f("torch", "what runs the model: torch, or openvino (CPU only; float32, "
                      "bfloat16 or int8; the extra mlmkit[openvino]): OpenVINO compiles the "
                      "model at load (seconds), then one text at a time is the fastest",
                      choices=["torch", "openvino"], group="engine")


def _max_candidates(group: str) -> Any:
    # One field for `fill` and `serve`: the same bound, the same default, the same words.
    return _f(1000, "most candidates one text may get, its masks x top_k: each is a record "
              "holding the whole text, so this bounds a text's work and output; a text past it "
              "gets an error in its place (from the server: 422)", group=group, ge=1)


@documented
@dataclass
class EngineConfig(DeviceConfig):
    """What `fill` and `score` share: device, precision, batch limits, progress."""

    batch_size: int | None = _f(None, "most texts per forward pass (default: 32 on CPU, 256 "
                                "on GPU)", group="engine", ge=1)
    max_tokens: int | None = _f(None, "most tokens per forward pass, counted after padding; "
                                "bounds memory (default: fill none on CPU, 16384 on GPU; score "
                                "2048 on CPU, 32768 on GPU)", group="engine", ge=1)
    quiet: bool = _f(False, "no progress bar", group="engine")
    max_candidates: int = _max_candidates("engine")


@documented
@dataclass
class ServeConfig(DeviceConfig):
    """`mlmkit serve`: the engine's device and the server's limits."""

    host: str = _f("127.0.0.1", "address to listen on (127.0.0.1: this machine only; 0.0.0.0 "
                   "exposes it to the network)", group="server")
    port: int = _f(8000, "TCP port", group="server", ge=1, le=65535)
    max_batch_size: int = _f(32, "most texts run through the model together", group="server",
                             ge=1)
    max_wait_ms: float = _f(5.0, "how long a batch waits for more requests, in ms",
                            group="server", ge=0.0)
    max_queue: int = _f(256, "texts waiting past which requests are refused with 503",
                        group="server", ge=1)
    body_timeout_s: float = _f(10.0, "seconds a request's body may take to arrive whole before "
                               "it is answered 408", group="server", gt=0.0)
    max_inputs: int = _f(64, "most texts in one request", group="server", ge=1)
    max_text_chars: int = _f(2000, "longest text a request may send, in characters",
                             group="server", ge=1)
    max_top_k: int = _f(100, "largest top_k a request may ask for", group="server", ge=1)
    max_candidates: int = _max_candidates("server")
    max_request_candidates: int = _f(6400, "most candidates one request may ask for, over all "
                                     "its texts (masks x top_k each); past it: 413 before any "
                                     "work", group="server", ge=1)
    max_response_mb: float = _f(16.0, "largest answer the server sends, in MB; past it: 413",
                                group="server", gt=0.0)
    max_score_work: int = _f(1_000_000, "most work one /score request may cause, in tokens "
                             "run through the model: each text costs its tokens squared (one "
                             "masked copy a token); past it: 413 before any work",
                             group="server", ge=1)
    header_timeout_s: float = _f(10.0, "seconds a connection may take to send a request's "
                                 "headers (from connecting, or from its last answer) before "
                                 "it is answered 408 and closed", group="server", gt=0.0)
    max_connections: int = _f(256, "most connections open at once; one more is answered 503 "
                              "and closed", group="server", ge=1)
    no_batching: bool = _f(False, "run every request on its own (for comparison)",
                           group="server")


@documented
@dataclass
class RayConfig(Settings):
    """`fill`/`score --engine ray`: the cluster, the actors and the job's output files."""

    engine: str = _f("local", "local: in this process; ray: Ray Data actors, --input a file, "
                     "directory or glob (s3://, gs:// too), --output a directory, resumable",
                     choices=["local", "ray"], group="ray")
    address: str | None = _f(None, "Ray cluster to join: auto or HOST:PORT (default: start a "
                             "local Ray)", metavar="ADDRESS", group="ray")
    workers: int = _f(1, "actors, each with its own model", metavar="N", group="ray", ge=1)
    gpus_per_worker: float = _f(0.0, "GPUs per actor", metavar="G", group="ray", ge=0.0)
    cpus_per_worker: float = _f(1.0, "CPUs per actor, and its torch threads on a CPU",
                                metavar="C", group="ray", gt=0.0)
    shard_rows: int = _f(10_000, "input rows per shard: the unit of work, of output files and "
                         "of resuming", metavar="ROWS", group="ray", ge=1)
    format: str = _f("parquet", "output files", choices=["parquet", "jsonl"], group="ray")
