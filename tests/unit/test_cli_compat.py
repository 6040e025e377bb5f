"""Pasted run_mlm.py / TrainingArguments commands parse into the TrainConfig they mean (values
converted where the units differ), harmless flags pass with a note, the rest are refused in
one line naming what to use; a mistyped flag gets "did you mean"; MODEL and --model are the
same in every command."""

from __future__ import annotations

import dataclasses
import json
import shlex

import pytest

from mlmkit.cli.compat import RUN_MLM, Refuse, Setting
from mlmkit.cli.flags import settings_from
from mlmkit.cli.main import build_parser, main
from mlmkit.config import EvalConfig, TrainConfig

# examples/pytorch/language-modeling/README.md of huggingface/transformers, verbatim.
README = r"""
python run_mlm.py \
    --model_name_or_path roberta-base \
    --dataset_name wikitext \
    --dataset_config_name wikitext-2-raw-v1 \
    --per_device_train_batch_size 8 \
    --per_device_eval_batch_size 8 \
    --do_train \
    --do_eval \
    --output_dir /tmp/test-mlm

python run_mlm.py \
    --model_name_or_path roberta-base \
    --train_file path_to_train_file \
    --validation_file path_to_validation_file \
    --per_device_train_batch_size 8 \
    --per_device_eval_batch_size 8 \
    --do_train \
    --do_eval \
    --output_dir /tmp/test-mlm

python run_mlm_no_trainer.py \
    --dataset_name wikitext \
    --dataset_config_name wikitext-2-raw-v1 \
    --model_name_or_path roberta-base \
    --output_dir /tmp/test-mlm
"""
README_COMMANDS = [shlex.split(c.replace("\\\n", " "))[2:] for c in README.strip().split("\n\n")]

# The Hugging Face masked-language-modeling guide's recipe as run_mlm.py flags: its
# preprocessing (ELI5-Category, 128-token blocks, 20% held out, 15% masking) and its
# TrainingArguments(output_dir=..., eval_strategy="epoch", learning_rate=2e-5,
# num_train_epochs=3, weight_decay=0.01, push_to_hub=True).
GUIDE = ("--model_name_or_path distilbert/distilroberta-base --dataset_name eli5_category "
         "--max_seq_length 128 --validation_split_percentage 20 --mlm_probability 0.15 "
         "--output_dir my_awesome_eli5_mlm_model --eval_strategy epoch --learning_rate 2e-5 "
         "--num_train_epochs 3 --weight_decay 0.01 --push_to_hub --do_train --do_eval")


def config_of(argv: list[str], command: str = "train", cls: type = TrainConfig):
    return settings_from(cls, build_parser().parse_args([command, *argv]))


def refused(capsys, argv: list[str], command: str = "train") -> str:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_readme_commands_parse_into_their_settings(capsys):
    first, files, no_trainer = (config_of(argv) for argv in README_COMMANDS)
    err = capsys.readouterr().err
    assert (first.model, first.data, first.data_config, first.output) == (
        "roberta-base", "wikitext", "wikitext-2-raw-v1", "/tmp/test-mlm")
    assert (first.batch_size, first.eval_batch_size) == (8, 8)
    assert (files.data, files.eval_data) == ("path_to_train_file", "path_to_validation_file")
    assert dataclasses.replace(no_trainer, batch_size=8, eval_batch_size=8) == first
    # --do_train and --do_eval each said once per command that had them, in one line
    assert err.count("note: --do_train: accepted, no effect") == 2
    assert err.count("note: --do_eval: accepted, no effect") == 2
    assert len(err.splitlines()) == 4


def test_readme_line_by_line_note_on_tpus(capsys):
    # "use the flag --pad_to_max_length in conjunction with the --line_by_line flag"
    cfg = config_of([*README_COMMANDS[1], "--line_by_line", "--pad_to_max_length"])
    assert cfg.line_by_line is True
    assert "--pad_to_max_length: accepted, no effect: --line-by-line examples are always " \
        "padded to --block-size" in capsys.readouterr().err
    # run_mlm_no_trainer.py declares --line_by_line with type=bool: it takes a value
    assert config_of([*README_COMMANDS[2], "--line_by_line", "True"]).line_by_line is True
    assert config_of([*README_COMMANDS[2], "--line_by_line", "False"]).line_by_line is False


def test_the_guides_recipe_as_run_mlm_flags(capsys):
    cfg = config_of(shlex.split(GUIDE))
    assert (cfg.model, cfg.data, cfg.output) == ("distilbert/distilroberta-base",
                                                 "eli5_category", "my_awesome_eli5_mlm_model")
    assert (cfg.block_size, cfg.eval_fraction, cfg.mlm_probability) == (128, 0.2, 0.15)
    assert (cfg.learning_rate, cfg.weight_decay, cfg.epochs, cfg.eval_every) == (
        2e-5, 0.01, 3.0, 0)
    # Trainer names the repository after output_dir when hub_model_id is not given
    assert cfg.push_to_hub == "my_awesome_eli5_mlm_model"
    assert config_of([*shlex.split(GUIDE), "--hub_model_id", "me/eli5"]).push_to_hub == "me/eli5"


@pytest.mark.parametrize("argv,field,value", [
    (["--validation_split_percentage", "5"], "eval_fraction", 0.05),
    (["--warmup_steps", "0.1"], "warmup_ratio", 0.1),  # TrainingArguments v5: a fraction
    (["--warmup_steps", "100"], "warmup_steps", 100),
    (["--num_warmup_steps", "30"], "warmup_steps", 30),
    (["--max_steps", "-1"], "max_steps", None),  # Trainer's "no limit"
    (["--max_train_steps", "12"], "max_steps", 12),
    (["--fp16"], "mixed_precision", "fp16"),
    (["--bf16", "True"], "mixed_precision", "bf16"),
    (["--fp16", "False"], "mixed_precision", "auto"),
    (["--lr_scheduler_type", "cosine"], "lr_scheduler", "cosine"),
    (["--logging_steps", "10"], "log_every", 10),
    (["--save_steps", "200"], "save_every", 200),  # Trainer's default strategy: steps
    (["--save_strategy", "steps"], "save_every", 500),  # with Trainer's default save_steps
    (["--save_strategy", "epoch", "--save_steps", "200"], "save_every", 0),
    (["--eval_strategy", "steps", "--eval_steps", "40"], "eval_every", 40),
    (["--evaluation_strategy", "steps", "--logging_steps", "25"], "eval_every", 25),
    (["--checkpointing_steps", "epoch"], "save_every", 0),
    (["--checkpointing_steps", "300"], "save_every", 300),
    (["--dataloader_num_workers", "2"], "num_workers", 2),
    (["--overwrite_output_dir"], "overwrite", True),
    (["--load_best_model_at_end", "--metric_for_best_model", "eval_loss"], "load_best", True),
    (["--disable_tqdm", "true"], "quiet", True),
    (["--push_to_hub", "--output_dir", "runs/x"], "push_to_hub", "x"),
    (["--push_to_hub", "me/x"], "push_to_hub", "me/x"),  # mlmkit's own --push-to-hub REPO
    (["--model-name-or-path", "m"], "model", "m"),  # HfArgumentParser's dash spelling
    (["--model_name_or_path=m"], "model", "m"),
    (["--max-seq-length=64"], "block_size", 64),
    (["--max_train_samples", "100"], "max_train_blocks", 100),
    (["--max_eval_samples", "20"], "max_eval_blocks", 20),
])
def test_values_are_converted_where_the_units_differ(argv, field, value):
    assert getattr(config_of(argv), field) == value


def test_harmless_flags_pass_with_one_note_each(capsys):
    argv = ["--logging_dir", "logs", "--no_dataloader_pin_memory", "--report_to", "none",
            "--preprocessing_num_workers", "4", "--save_strategy", "no", "--seed", "7"]
    cfg = config_of(argv)
    assert (cfg.seed, cfg.report_to, cfg.save_every) == (7, "none", 0)
    notes = capsys.readouterr().err.splitlines()
    assert [n.split(":")[1].strip() for n in notes] == ["note"] * 4
    assert [n.split(": ")[2] for n in notes] == [
        "--logging_dir", "--dataloader_pin_memory", "--preprocessing_num_workers",
        "--save_strategy no"]


# refused flag -> what the message must name
REFUSED = {
    "--model_type bert": "--from-scratch",
    "--config_name c": "--config-overrides",
    "--tokenizer_name t": "--train-tokenizer",
    "--gradient_checkpointing": "--gradient-accumulation-steps",
    "--save_strategy best": "--load-best",
    "--lr_scheduler_type polynomial": "--lr-scheduler has linear, cosine and constant",
    "--torch_dtype bfloat16": "--mixed-precision",
    "--data_seed 3": "--seed",
    "--hub_private_repo": "mlmkit push OUTPUT REPO_ID --private",
    "--streaming": "--limit N",
    "--use_cpu": "CUDA_VISIBLE_DEVICES=",
    "--report_to all": "--report-to tensorboard",
    "--deepspeed ds.json": "accelerate launch",
    "--optim sgd": "AdamW",
    "--metric_for_best_model accuracy": "--load-best",
    "--hub_token hf_x": "hf auth login",
    "--push_to_hub": "--hub_model_id or --output_dir",
    "--fp16 --bf16": "--bf16 and --fp16 both set --mixed-precision",
    "--train_file a.txt --data b.txt": "--train_file and --data both set --data",
    "--logging_steps 0.1": "a whole number of steps",
}


@pytest.mark.parametrize("flags", REFUSED)
def test_refused_flags_name_the_equivalent(capsys, flags):
    assert REFUSED[flags] in refused(capsys, flags.split())


@pytest.mark.parametrize("name", [n for n, r in RUN_MLM.items() if isinstance(r, Refuse)])
def test_every_refusal_is_one_line_with_its_reason(capsys, name):
    err = refused(capsys, [f"--{name}", "x"])
    assert err.startswith(f"mlmkit train: error: --{name}: not taken by mlmkit: ")
    assert RUN_MLM[name].why in err


def test_a_refused_switch_set_to_false_asks_for_the_default(capsys):
    assert config_of(["--gradient_checkpointing", "False"]) == config_of([])
    assert capsys.readouterr().err == ""


def test_the_table_covers_training_arguments_and_maps_onto_real_settings():
    from transformers import TrainingArguments

    own = build_parser()._subparsers._group_actions[0].choices["train"].flag_dests
    missing = [f.name for f in dataclasses.fields(TrainingArguments)
               if f.init and f.name not in RUN_MLM and f"--{f.name}" not in own]
    assert missing == []
    # run_mlm.py's ModelArguments / DataTrainingArguments and run_mlm_no_trainer.py's own
    for name in ("model_name_or_path", "model_type", "config_overrides", "config_name",
                 "tokenizer_name", "cache_dir", "use_fast_tokenizer", "model_revision",
                 "token", "trust_remote_code", "torch_dtype", "low_cpu_mem_usage",
                 "dataset_name", "dataset_config_name", "train_file", "validation_file",
                 "overwrite_cache", "validation_split_percentage", "max_seq_length",
                 "preprocessing_num_workers", "mlm_probability", "line_by_line",
                 "pad_to_max_length", "max_train_samples", "max_eval_samples", "streaming",
                 "use_slow_tokenizer", "max_train_steps", "num_warmup_steps", "hub_token",
                 "checkpointing_steps", "with_tracking", "use_auth_token"):
        assert name in RUN_MLM or f"--{name}" in own, name
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {r.field for r in RUN_MLM.values() if isinstance(r, Setting)} <= fields


def test_eval_takes_the_names_of_its_own_settings(capsys):
    cfg = config_of(["--model_name_or_path", "m", "--validation_file", "v.txt",
                     "--max_seq_length", "32", "--do_eval", "--max_eval_samples", "9"], "eval",
                    EvalConfig)
    assert (cfg.model, cfg.eval_data, cfg.block_size, cfg.max_eval_blocks) == ("m", "v.txt", 32,
                                                                              9)
    assert "note: --do_eval" in capsys.readouterr().err
    err = refused(capsys, ["--learning_rate", "1e-4"], "eval")
    assert "--learning_rate: sets --learning-rate of mlmkit train; `mlmkit eval` has no such " \
        "setting" in err


@pytest.mark.parametrize("argv,hint", [
    (["train", "--lerning-rate", "1e-3"], "--learning-rate"),
    (["train", "--per_device_train_batchsize", "4"], "--per_device_train_batch_size"),
    (["train", "--gradient_acumulation_steps", "2"], "--gradient_accumulation_steps"),
    (["eval", "--all-recrods"], "--all-records"),
    (["fill", "m", "--topk", "3"], "--top-k"),
    (["score", "m", "--per-tokens"], "--per-token"),
    (["serve", "m", "--max-batchsize", "8"], "--max-batch-size"),
    (["vocab", "audit", "m", "--data", "d", "--tops", "5"], "--top"),
    (["vocab", "extend", "m", "--data", "d", "--add", "5", "--output", "o", "--overwite"],
     "--overwrite"),
    (["probe", "m", "--input", "f", "--multitoken"], "--multi-token"),
    (["demo", "--quite"], "--quiet"),
])
def test_a_mistyped_flag_gets_did_you_mean(capsys, argv, hint):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    typo = next(a for a in reversed(argv) if a.startswith("--") and a[2:] not in hint)
    assert err.strip().splitlines() == [
        f"mlmkit {' '.join(argv[:2 if argv[0] == 'vocab' else 1])}: error: unrecognized "
        f"argument {typo} (did you mean {hint}?)"]


# (command argv before the model, after it) for every command that takes a model
MODEL_COMMANDS = {
    "train": (["train"], ["--data", "d.txt"]),
    "eval": (["eval"], ["--data", "d.txt"]),
    "fill": (["fill"], ["--top-k", "2"]),
    "score": (["score"], ["--per-token"]),
    "serve": (["serve"], ["--port", "8001"]),
    "vocab audit": (["vocab", "audit"], ["--data", "d.txt"]),
    "vocab extend": (["vocab", "extend"], ["--data", "d.txt", "--add", "3", "--output", "o"]),
    "probe": (["probe"], ["--input", "p.jsonl"]),
}


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_model_as_positional_or_flag_is_the_same(capsys, command):
    head, tail = MODEL_COMMANDS[command]
    parse = build_parser().parse_args
    positional = parse([*head, "my/model", *tail])
    flagged = parse([*head, *tail, "--model", "my/model"])
    both = parse([*head, "my/model", "--model", "my/model", *tail])
    if command == "probe":
        assert positional.models == flagged.models == both.models == ["my/model"]
        assert parse([*head, "--model", "a", "--model", "b", *tail]).models == ["a", "b"]
    else:
        assert positional.model == flagged.model == both.model == "my/model"
    assert vars(positional) == vars(flagged) == vars(both)
    if command in ("fill", "score"):  # with --model, a first word that differs is a text
        ns = parse([*head, "--model", "my/model", "The <mask> is blue.", "Why?"])
        assert (ns.model, ns.texts) == ("my/model", ["The <mask> is blue.", "Why?"])
        return
    with pytest.raises(SystemExit) as e:
        parse([*head, "my/model", "--model", "other/model", *tail])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "given twice" in err and "my/model" in err and "other/model" in err


@pytest.mark.parametrize("command", ["fill", "score", "serve", "vocab audit", "probe"])
def test_no_model_at_all_is_one_line(capsys, command):
    head, tail = MODEL_COMMANDS[command]
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*head, *tail])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.strip().splitlines() == [f"mlmkit {' '.join(head)}: error: the following "
                                        "arguments are required: MODEL (or --model MODEL)"]


def test_train_and_eval_keep_their_default_model():
    assert config_of([]).model == TrainConfig().model
    assert config_of([], "eval", EvalConfig).model == EvalConfig().model


def test_max_samples_take_the_first_blocks_end_to_end(tiny_roberta, sample_path, tmp_path,
                                                      capsys):
    """run_mlm.py's --max_train_samples / --max_eval_samples, pasted: the first N grouped
    blocks of each side, min(N, what there is), counted so in metrics.json and the card; a
    resume keeps them."""
    from mlmkit.training.recipe import prepare_tokenizer_and_data

    data = dict(model=str(tiny_roberta), data=str(sample_path), text_field=["answers.text"],
                limit=60, block_size=32)
    _, _, whole = prepare_tokenizer_and_data(TrainConfig(**data), False)
    assert len(whole.train) > 3 and len(whole.eval) < 10_000
    out = tmp_path / "run"
    argv = ["train", "--model_name_or_path", str(tiny_roberta), "--train_file", str(sample_path),
            "--text-field", "answers.text", "--limit", "60", "--max_seq_length", "32",
            "--output_dir", str(out), "--do_train", "--do_eval", "--max_steps", "1",
            "--per_device_train_batch_size", "2", "--max_train_samples", "3",
            "--max_eval_samples", "10000", "--skip-base-eval", "--quiet"]
    assert main(argv) == 0
    stats = json.loads((out / "metrics.json").read_text())["data"]
    assert (stats["train_blocks"], stats["train_blocks_available"]) == (3, len(whole.train))
    assert stats["eval_blocks"] == len(whole.eval) and "eval_blocks_available" not in stats
    assert stats["train_tokens"] == 3 * 32  # the first three full blocks, nothing else
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["max_train_blocks"], saved["max_eval_blocks"]) == (3, 10_000)
    assert "| Train blocks available | " in (out / "README.md").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--max-train-blocks", "4"]) == 2
    assert "--max-train-blocks 4 (the run's: 3)" in capsys.readouterr().err
    # The blocks taken are the first ones, in order.
    cfg = TrainConfig(**data, max_train_blocks=3, max_eval_blocks=2)
    _, _, first = prepare_tokenizer_and_data(cfg, False)
    assert (first.train == whole.train[:3]).all() and (first.eval == whole.eval[:2]).all()
