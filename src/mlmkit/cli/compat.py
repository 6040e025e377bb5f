"""run_mlm.py's, run_mlm_no_trainer.py's and TrainingArguments' flags on `mlmkit train`/`eval`.

One table says what each of their flags means here: an mlmkit setting (its value converted
where the units differ), a harmless flag accepted with a one-line notice, or a refusal naming
what to use instead. cli/rewrite.py applies it to a pasted command line before argparse sees
it, so there is one parser and this table is the only place a name is mapped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlmkit.errors import MlmkitError

# HfArgumentParser's reading of a boolean flag's optional value (transformers' string_to_bool).
TRUE, FALSE = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")


@dataclass(frozen=True)
class Setting:
    """Sets the mlmkit setting `field`: with the flag's value (through `convert` where the
    units differ), or, for a boolean flag (`switch`), turns it on (`const`: sets that value)."""

    field: str
    convert: Callable[[str], str] | None = None
    switch: bool = False
    const: str | None = None


@dataclass(frozen=True)
class Notice:
    """Accepted with a one-line notice on stderr: it changes nothing a user would miss."""

    why: str
    switch: bool = True


@dataclass(frozen=True)
class Refuse:
    """Refused (exit 2) with `why`: what to use instead, or why it does not apply."""

    why: str
    switch: bool = False


@dataclass(frozen=True)
class Special:
    """Depends on the other flags given (the strategy/steps pairs, --push_to_hub): `emit`
    gets the value and every run_mlm flag given, and returns mlmkit's argv and a notice."""

    emit: Callable[[str, dict[str, str]], tuple[list[str], str | None]]
    switch: bool = False


Rule = Setting | Notice | Refuse | Special


class CompatError(MlmkitError):
    """A run_mlm.py flag that mlmkit refuses, or a value it cannot convert."""


def _number(name: str, value: str, integer: bool = False) -> float:
    try:
        x = float(value)
    except ValueError:
        raise CompatError(f"--{name} {value}: expected a number") from None
    if integer and not x.is_integer():
        raise CompatError(f"--{name} {value}: expected a whole number of steps (a ratio below "
                          "1 is not taken here)")
    return x


def _steps(name: str) -> Callable[[str], str]:
    return lambda v: str(int(_number(name, v, integer=True)))


def _percent(v: str) -> str:
    return f"{_number('validation_split_percentage', v) / 100:g}"


def _scheduler(v: str) -> str:
    if v not in ("linear", "cosine", "constant"):
        raise CompatError(f"--lr_scheduler_type {v}: mlmkit's --lr-scheduler has linear, cosine "
                          "and constant")
    return v


def _report_to(v: str) -> str:
    if v == "all":
        raise CompatError("--report_to all: name the trackers, --report-to tensorboard,mlflow,"
                          "wandb,trackio (comma-separated)")
    return v


def _max_steps(v: str, given: dict[str, str]) -> tuple[list[str], str | None]:
    n = int(_number("max_steps", v, integer=True))
    return (["--max-steps", str(n)] if n > 0 else []), None  # Trainer's -1: no limit


def _warmup(v: str, given: dict[str, str]) -> tuple[list[str], str | None]:
    x = _number("warmup_steps", v)
    if 0 < x < 1:  # TrainingArguments v5: a float below 1 is a fraction of the steps
        return ["--warmup-ratio", v], None
    return ["--warmup-steps", str(int(_number("warmup_steps", v, integer=True)))], None


def _strategy(given: dict[str, str], name: str) -> str:
    """The strategy given (Trainer's default: 'steps'); --evaluation_strategy is the old name."""
    return given.get(name) or given.get("evaluation_strategy" if name == "eval_strategy"
                                        else "", "steps")


def _eval_strategy(v: str, given: dict[str, str]) -> tuple[list[str], str | None]:
    if v == "epoch":
        return ["--eval-every", "0"], None
    if v == "steps":  # Trainer: eval_steps defaults to logging_steps, whose default is 500
        if "eval_steps" in given:
            return [], None
        return ["--eval-every", _steps("logging_steps")(given.get("logging_steps", "500"))], None
    if v == "no":
        return [], ("--eval_strategy no: mlmkit evaluates the held-out blocks at the end of every "
                    "epoch anyway (--eval-every N for every N steps)")
    raise CompatError(f"--eval_strategy {v}: expected no, steps or epoch")


def _every(name: str, strategy: str, flag: str) -> Special:
    """--eval_steps / --save_steps: every N steps, unless their strategy says otherwise."""
    def emit(v: str, given: dict[str, str]) -> tuple[list[str], str | None]:
        chosen = _strategy(given, strategy)
        if chosen != "steps":
            return [], f"--{name} {v}: ignored with --{strategy} {chosen}, as by Trainer"
        return [flag, _steps(name)(v)], None
    return Special(emit)


def _save_strategy(v: str, given: dict[str, str]) -> tuple[list[str], str | None]:
    if v == "epoch":
        return ["--save-every", "0"], None
    if v == "steps":  # Trainer's default save_steps is 500
        return ([], None) if "save_steps" in given else (["--save-every", "500"], None)
    if v == "no":
        return [], ("--save_strategy no: mlmkit still keeps the final state as a checkpoint "
                    "(to train further); --save-total-limit 1 keeps only that one")
    if v == "best":
        raise CompatError("--save_strategy best: use --load-best (exports the checkpoint with "
                          "the lowest fixed-mask perplexity)")
    raise CompatError(f"--save_strategy {v}: expected no, steps, epoch or best")


def _checkpointing(v: str, given: dict[str, str]) -> tuple[list[str], str | None]:
    return ["--save-every", "0" if v == "epoch" else _steps("checkpointing_steps")(v)], None


def _push(v: str, given: dict[str, str]) -> tuple[list[str], str | None]:
    if v.lower() in FALSE:
        return [], None
    if v.lower() not in TRUE:  # mlmkit's own --push_to_hub REPO_ID
        return ["--push-to-hub", v], None
    out = given.get("output_dir") or given.get("output")
    repo = given.get("hub_model_id") or (Path(out).name if out else None)
    if not repo:
        raise CompatError("--push_to_hub: needs --hub_model_id or --output_dir (the repository "
                          "is named after it, as Trainer does)")
    return ["--push-to-hub", repo], None


def _hub_model_id(v: str, given: dict[str, str]) -> tuple[list[str], str | None]:
    if given.get("push_to_hub", "false").lower() not in FALSE:
        return [], None  # --push_to_hub names the repository after it
    return [], f"--hub_model_id {v}: no upload without --push_to_hub, as in run_mlm.py"


def _optim(v: str, given: dict[str, str]) -> tuple[list[str], str | None]:
    if not v.startswith("adamw"):
        raise CompatError(f"--optim {v}: mlmkit trains with AdamW only (torch's, fused on GPU)")
    return [], f"--optim {v}: mlmkit trains with torch's AdamW"


def _best_metric(v: str, given: dict[str, str]) -> tuple[list[str], str | None]:
    if v.removeprefix("eval_") not in ("loss", "perplexity"):
        raise CompatError(f"--metric_for_best_model {v}: mlmkit's best checkpoint is the one "
                          "with the lowest fixed-mask perplexity (--load-best); no other metric")
    return [], None


_DIST = "launch with `accelerate launch` or `torchrun`; mlmkit sets up DDP through Accelerate"
_SHARD = ("mlmkit trains with DDP through Accelerate (`accelerate launch`); it does not shard "
          "models")
_LOGS = "mlmkit writes OUTPUT/metrics.jsonl and curves.png (--log-every N steps)"
_EVAL = "mlmkit measures loss and perplexity on fixed masks of the held-out blocks"
_HUB = "mlmkit uploads once, after training (--push-to-hub REPO_ID)"
_TOKEN = "mlmkit uses the token of `hf auth login` or $HF_TOKEN"
_CKPT = ("use --gradient-accumulation-steps with a smaller --batch-size; mlmkit has no "
         "activation checkpointing")

# Each run_mlm.py / run_mlm_no_trainer.py / TrainingArguments flag, by its underscore name
# (the dash spelling is read the same). TrainingArguments' older names are here too, since
# pasted commands are often older than the installed transformers.
RUN_MLM: dict[str, Rule] = {
    # the model
    "model_name_or_path": Setting("model"),
    "model_type": Refuse("use --from-scratch --model ID_OF_THAT_TYPE (the shape is that "
                         "model's config; --config-overrides changes it)"),
    "config_name": Refuse("the config is --model's own; --from-scratch --config-overrides "
                          "changes the shape"),
    "config_overrides": Setting("config_overrides"),
    "tokenizer_name": Refuse("the tokenizer is --model's own; --train-tokenizer N trains a new "
                             "one on the corpus"),
    "use_fast_tokenizer": Notice("mlmkit always uses the fast tokenizer"),
    "use_slow_tokenizer": Refuse("mlmkit needs a fast tokenizer (word ids for whole-word "
                                 "masking and the block cache)", switch=True),
    "model_revision": Refuse("mlmkit loads the main revision; `hf download ID --revision REV "
                             "--local-dir DIR`, then --model DIR"),
    "use_auth_token": Notice(_TOKEN),
    "token": Refuse(_TOKEN + " (a token on the command line ends up in the shell history)"),
    "hub_token": Refuse(_TOKEN + " (a token on the command line ends up in the shell history)"),
    "trust_remote_code": Refuse("mlmkit loads only architectures transformers ships",
                                switch=True),
    "torch_dtype": Refuse("weights stay float32 during training; --mixed-precision bf16 or "
                          "fp16 sets the autocast precision"),
    "low_cpu_mem_usage": Notice("transformers decides how weights load"),
    # the data
    "dataset_name": Setting("data"),
    "dataset_config_name": Setting("data_config"),
    "train_file": Setting("data"),
    "validation_file": Setting("eval_data"),
    "validation_split_percentage": Setting("eval_fraction", _percent),
    "streaming": Refuse("mlmkit tokenizes into a memory-mapped block cache; take a part with "
                        "--limit N or --split 'train[:N]'", switch=True),
    "overwrite_cache": Notice("the block cache is keyed by the corpus, tokenizer and settings, "
                              "so it is never stale (--no-cache bypasses it)"),
    "preprocessing_num_workers": Notice("the fast tokenizer uses every core by itself, and "
                                        "the blocks are cached", switch=False),
    "max_seq_length": Setting("block_size"),
    "line_by_line": Setting("line_by_line", switch=True),
    "pad_to_max_length": Notice("--line-by-line examples are always padded to --block-size; "
                                "grouped blocks are full"),
    "max_train_samples": Setting("max_train_blocks"),  # both count blocks after grouping
    "max_eval_samples": Setting("max_eval_blocks"),
    "mlm_probability": Setting("mlm_probability"),
    # the optimisation and the schedule
    "per_device_train_batch_size": Setting("batch_size"),
    "per_gpu_train_batch_size": Setting("batch_size"),
    "per_device_eval_batch_size": Setting("eval_batch_size"),
    "per_gpu_eval_batch_size": Setting("eval_batch_size"),
    "learning_rate": Setting("learning_rate"),
    "weight_decay": Setting("weight_decay"),
    "adam_beta1": Setting("adam_beta1"),
    "adam_beta2": Setting("adam_beta2"),
    "adam_epsilon": Setting("adam_epsilon"),
    "max_grad_norm": Setting("max_grad_norm"),
    "gradient_accumulation_steps": Setting("gradient_accumulation_steps"),
    "num_train_epochs": Setting("epochs"),
    "max_steps": Special(_max_steps),
    "max_train_steps": Special(_max_steps),
    "lr_scheduler_type": Setting("lr_scheduler", _scheduler),
    "lr_scheduler_kwargs": Refuse("mlmkit's schedules (--lr-scheduler) take no arguments"),
    "warmup_steps": Special(_warmup),
    "num_warmup_steps": Setting("warmup_steps"),
    "warmup_ratio": Setting("warmup_ratio"),
    "optim": Special(_optim),
    "optim_args": Refuse("mlmkit's AdamW is set by --adam-beta1, --adam-beta2, --adam-epsilon "
                         "and --weight-decay"),
    "optim_target_modules": Refuse("mlmkit trains every parameter with AdamW"),
    "label_smoothing_factor": Refuse("mlmkit's loss is plain cross-entropy on the masked "
                                     "tokens, comparable across runs as perplexity"),
    "seed": Setting("seed"),
    "data_seed": Refuse("--seed seeds the held-out split, masking and shuffling together"),
    "full_determinism": Notice("mlmkit runs are seeded (--seed) and resume exactly"),
    # precision, speed, devices
    "fp16": Setting("mixed_precision", switch=True, const="fp16"),
    "bf16": Setting("mixed_precision", switch=True, const="bf16"),
    "fp16_full_eval": Notice("evaluation runs in the training's --mixed-precision"),
    "bf16_full_eval": Notice("evaluation runs in the training's --mixed-precision"),
    "fp16_opt_level": Notice("apex is not used; --mixed-precision fp16 is torch's autocast",
                             switch=False),
    "half_precision_backend": Notice("--mixed-precision uses torch's autocast", switch=False),
    "tf32": Notice("mlmkit turns TF32 matmuls on for training on GPUs that have them"),
    "torch_compile": Setting("compile", switch=True),
    "torch_compile_mode": Setting("compile_mode"),
    "torch_compile_backend": Refuse("--compile uses torch's default backend, inductor"),
    "gradient_checkpointing": Refuse(_CKPT, switch=True),
    "activation_checkpointing": Refuse(_CKPT, switch=True),
    "gradient_checkpointing_kwargs": Refuse(_CKPT),
    "activation_checkpointing_kwargs": Refuse(_CKPT),
    "auto_find_batch_size": Refuse("set --batch-size (and --gradient-accumulation-steps)",
                                   switch=True),
    "use_cpu": Refuse("run with CUDA_VISIBLE_DEVICES= to train on the CPU", switch=True),
    "no_cuda": Refuse("run with CUDA_VISIBLE_DEVICES= to train on the CPU", switch=True),
    "use_liger_kernel": Refuse("--sparse-head computes the vocabulary projection only at the "
                               "masked positions instead", switch=True),
    "liger_kernel_config": Refuse("--sparse-head computes the vocabulary projection only at "
                                  "the masked positions instead"),
    "neftune_noise_alpha": Refuse("NEFTune is for instruction tuning; mlmkit does masked-LM "
                                  "training"),
    "torch_empty_cache_steps": Notice("mlmkit does not empty the CUDA cache", switch=False),
    "use_cache": Notice("masked LMs keep no generation cache"),
    "average_tokens_across_devices": Notice("the loss is averaged over the masked tokens"),
    "dataloader_num_workers": Setting("num_workers"),
    "dataloader_pin_memory": Notice("the blocks are small memory-mapped arrays"),
    "dataloader_drop_last": Notice("mlmkit keeps an epoch's last, shorter batch"),
    "dataloader_persistent_workers": Notice("mlmkit's workers only stack cached blocks"),
    "dataloader_multiprocessing_context": Notice("mlmkit's workers only stack cached blocks",
                                                 switch=False),
    "dataloader_in_order": Notice("blocks are batched in the shuffled order (--seed)"),
    "dataloader_prefetch_factor": Notice("mlmkit's workers only stack cached blocks",
                                         switch=False),
    "remove_unused_columns": Notice("mlmkit's blocks hold token ids only"),
    "group_by_length": Notice("blocks are all --block-size tokens long"),
    "length_column_name": Notice("blocks are all --block-size tokens long", switch=False),
    "label_names": Refuse("the labels are the masked tokens"),
    "train_sampling_strategy": Refuse("mlmkit shuffles the blocks every epoch (--seed)"),
    "local_rank": Notice(_DIST, switch=False),
    "ddp_backend": Notice(_DIST, switch=False),
    "ddp_timeout": Notice(_DIST, switch=False),
    "ddp_find_unused_parameters": Notice(_DIST),
    "ddp_bucket_cap_mb": Notice(_DIST, switch=False),
    "ddp_broadcast_buffers": Notice(_DIST),
    "ddp_static_graph": Notice(_DIST),
    "fsdp": Refuse(_SHARD),
    "fsdp_config": Refuse(_SHARD),
    "deepspeed": Refuse(_SHARD),
    "accelerator_config": Refuse(_SHARD),
    "parallelism_config": Refuse(_SHARD),
    # steps, evaluation, checkpoints
    "do_train": Notice("`mlmkit train` always trains"),
    "do_eval": Notice("mlmkit always evaluates the held-out blocks, before training and after "
                      "every epoch"),
    "do_predict": Notice("run_mlm.py has no prediction step either"),
    "eval_strategy": Special(_eval_strategy),
    "evaluation_strategy": Special(_eval_strategy),
    "eval_steps": _every("eval_steps", "eval_strategy", "--eval-every"),
    "eval_on_start": Notice("mlmkit evaluates the base model before training (unless "
                            "--skip-base-eval)"),
    "eval_delay": Refuse("mlmkit evaluates from the first epoch (--eval-every N for steps)"),
    "eval_accumulation_steps": Notice(_EVAL, switch=False),
    "prediction_loss_only": Notice(_EVAL),
    "eval_do_concat_batches": Notice(_EVAL),
    "eval_use_gather_object": Notice(_EVAL),
    "batch_eval_metrics": Notice(_EVAL),
    "include_for_metrics": Notice(_EVAL, switch=False),
    "include_num_input_tokens_seen": Notice("metrics.jsonl counts the tokens seen",
                                            switch=False),
    "save_strategy": Special(_save_strategy),
    "save_steps": _every("save_steps", "save_strategy", "--save-every"),
    "checkpointing_steps": Special(_checkpointing),
    "save_total_limit": Setting("save_total_limit"),
    "save_only_model": Notice("checkpoints keep the optimizer state so a run resumes exactly "
                              "(--save-total-limit bounds them)"),
    "save_safetensors": Notice("mlmkit saves safetensors"),
    "save_on_each_node": Notice("the main process saves"),
    "load_best_model_at_end": Setting("load_best", switch=True),
    "metric_for_best_model": Special(_best_metric),
    "greater_is_better": Refuse("the best checkpoint has the lowest perplexity", switch=True),
    "resume_from_checkpoint": Setting("resume"),
    "ignore_data_skip": Notice("mlmkit resumes at the exact batch, without re-reading data"),
    "restore_callback_states_from_checkpoint": Notice("mlmkit has no callbacks"),
    "enable_jit_checkpoint": Notice("mlmkit checkpoints at --save-every steps or each epoch"),
    "output_dir": Setting("output"),
    "overwrite_output_dir": Setting("overwrite", switch=True),
    # logging, tracking, the Hub
    "logging_dir": Notice(_LOGS, switch=False),
    "logging_strategy": Notice(_LOGS, switch=False),
    "logging_steps": Setting("log_every", _steps("logging_steps")),
    "logging_first_step": Notice(_LOGS),
    "logging_nan_inf_filter": Notice(_LOGS),
    "log_level": Notice("mlmkit prints its own summary; libraries' logs are silenced",
                        switch=False),
    "log_level_replica": Notice(_DIST, switch=False),
    "log_on_each_node": Notice(_DIST),
    "disable_tqdm": Setting("quiet", switch=True),
    "skip_memory_metrics": Notice("mlmkit records no memory metrics"),
    "debug": Notice("mlmkit has no debug modes", switch=False),
    "report_to": Setting("report_to", _report_to),
    "with_tracking": Notice("--report-to alone decides the trackers"),
    "run_name": Notice("trackers name the run after --output", switch=False),
    "project": Notice("trackers name the project after --output", switch=False),
    "trackio_space_id": Refuse("--report-to trackio logs locally"),
    "trackio_bucket_id": Refuse("--report-to trackio logs locally"),
    "trackio_static_space_id": Refuse("--report-to trackio logs locally"),
    "push_to_hub": Special(_push, switch=True),
    "hub_model_id": Special(_hub_model_id),
    "hub_strategy": Notice(_HUB, switch=False),
    "hub_always_push": Notice(_HUB),
    "hub_private_repo": Refuse("train, then `mlmkit push OUTPUT REPO_ID --private`",
                               switch=True),
    "hub_revision": Refuse("train, then `mlmkit push OUTPUT REPO_ID --revision REV`"),
}
