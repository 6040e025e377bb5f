"""Flags generated from the settings dataclasses, their run_mlm.py aliases, and the parser.

Every settings field is one kebab-case flag with the field's help text and allowed range, so
the CLI, config files and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import MISSING, fields
from typing import Any

from mlmkit.cli.helptext import COMMANDS
from mlmkit.settings import ENGINE_GROUPS, GROUPS, allowed, build_config, read_config_file

# The command line shows progress unless --quiet; the Python API is quiet unless asked.
CLI_DEFAULTS = {"quiet": False}

# Names from transformers' run_mlm.py / TrainingArguments -> the field they set. Every flag is
# also accepted in snake_case, which covers the names run_mlm.py shares with mlmkit
# (--learning_rate, --max_steps, ...). Hidden from the lists, shown in one epilog section.
RUN_MLM_NAMES = {
    "model_name_or_path": "model",
    "train_file": "data",
    "dataset_name": "data",
    "dataset_config_name": "data_config",
    "validation_file": "eval_data",
    "max_seq_length": "block_size",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "num_train_epochs": "epochs",
    "output_dir": "output",
    "overwrite_output_dir": "overwrite",
    "resume_from_checkpoint": "resume",
}
RUN_MLM_SAME_NAMES = ("mlm_probability", "line_by_line", "seed", "learning_rate", "weight_decay",
                      "gradient_accumulation_steps", "warmup_ratio", "max_steps",
                      "save_total_limit", "report_to")


class Parser(argparse.ArgumentParser):
    """argparse, with one change: an abbreviation that matches a flag and its aliases only
    (--learning: --learning-rate and --learning_rate) is that flag, not an ambiguity.

    `flag_dests` (every flag and alias -> its destination) is filled as flags are added."""

    commands: dict[str, argparse.ArgumentParser] | None = None

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.flag_dests.update(dict.fromkeys(action.option_strings, action.dest))
        return action

    @property
    def flag_dests(self) -> dict[str, str]:
        return self.__dict__.setdefault("_flag_dests", {})

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if args is not None:
            args = [_expand(a, self.flag_dests) if isinstance(a, str) else a for a in args]
        return super().parse_known_args(args, namespace)


def _expand(arg: str, dests: dict[str, str]) -> str:
    if not arg.startswith("--") or arg == "--":
        return arg
    name, eq, value = arg.partition("=")
    if name in dests:
        return arg
    found = {dests[f] for f in dests if f.startswith(name)}
    if len(found) != 1:
        return arg  # no match, or a real ambiguity: argparse says which
    dest = found.pop()
    canonical = min((f for f in dests if dests[f] == dest), key=len)
    return canonical + eq + value


def _flag(f: Any) -> tuple[str, dict[str, Any]]:
    """The kebab-case flag of a dataclass field and its add_argument keywords."""
    flag = "--" + f.name.replace("_", "-")
    default = f.default if f.default is not MISSING else f.default_factory()
    default = CLI_DEFAULTS.get(f.name, default)
    help_ = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
    if not (default is None or isinstance(default, bool) or default == []):
        help_ += f" (default: {default})"
    kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_, "dest": f.name}
    t = str(f.type)
    if t == "bool":
        if default is True:  # on by default: the flag turns it off
            return "--no-" + flag[2:], {**kw, "action": "store_false",
                                        "help": f"turn off (on by default): {help_}"}
        return flag, {**kw, "action": "store_true"}
    if t.startswith("list"):
        return flag, {**kw, "action": "append", "metavar": "FIELD"}
    base = t.split("|")[0].strip()
    kw["type"] = {"int": int, "float": float}.get(base, str)
    if "metavar" in f.metadata:
        kw["metavar"] = f.metadata["metavar"]
    if "choices" in f.metadata:
        kw["choices"] = f.metadata["choices"]
    elif any(k in f.metadata for k in ("ge", "gt", "le", "lt")):
        kw["help"] += f" [{allowed(f)}]"
    return flag, kw


def _aliases(flag: str, name: str) -> list[str]:
    snake = "--" + flag[2:].replace("-", "_")
    return ([snake] if snake != flag else []) + [
        "--" + alias for alias, target in RUN_MLM_NAMES.items() if target == name]


def _alias_help(cls: type) -> str:
    names = [f.name for f in fields(cls)]
    rows = [(", ".join("--" + a for a, n in RUN_MLM_NAMES.items() if n == name),
             "--" + name.replace("_", "-"))
            for name in dict.fromkeys(RUN_MLM_NAMES.values()) if name in names]
    same = ", ".join("--" + n for n in RUN_MLM_SAME_NAMES if n in names)
    return "\n".join([
        "run_mlm.py names (accepted, not listed above; each sets the same setting):",
        *(f"  {aliases:<30} = {flag}" for aliases, flag in rows),
        "  and every flag spelled with _ for - (--block_size = --block-size), so also",
        "  run_mlm.py's own names:",
        *textwrap.wrap(same, 76, initial_indent="  ", subsequent_indent="  ")])


def add_settings_flags(parser: Parser, cls: type, only: tuple[str, ...] | None = None,
                       run_mlm: bool = True) -> None:
    """A flag per field of `cls` (or of the fields named in `only`), listed in the section its
    `group` names, plus its hidden aliases (snake_case; run_mlm.py's names if `run_mlm`),
    which set the same field."""
    chosen = [f for f in fields(cls) if only is None or f.name in only]
    titles = {**GROUPS, **ENGINE_GROUPS}
    used = {f.metadata["group"] for f in chosen}
    sections = {k: parser.add_argument_group(title) for k, title in titles.items() if k in used}
    dests = parser.flag_dests
    for f in chosen:
        flag, kw = _flag(f)
        section = sections[f.metadata["group"]]
        section.add_argument(flag, **kw)
        dests[flag] = f.name
        aliases = _aliases(flag, f.name) if run_mlm else _aliases(flag, "")
        for alias in aliases:
            section.add_argument(alias, **{**kw, "help": argparse.SUPPRESS})
            dests[alias] = f.name
    if run_mlm:
        parser.epilog = "\n\n".join(filter(None, [parser.epilog, _alias_help(cls)]))


def add_command(sub: Any, name: str, **kw: Any) -> Parser:
    """A subcommand's parser, with its help, description and examples from helptext."""
    help_, description, examples = COMMANDS[name]
    return sub.add_parser(name, help=help_, description=description, epilog=examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


def settings_from(cls: type, ns: argparse.Namespace, base: dict[str, Any] | None = None,
                  ) -> Any:
    """defaults < `base` (a run's saved settings) < config file < flags."""
    flags = {k: v for k, v in vars(ns).items() if k not in ("command", "config", "json")}
    file_values = read_config_file(ns.config) if getattr(ns, "config", None) else {}
    known = {f.name for f in fields(cls)}
    layered = {**{k: v for k, v in CLI_DEFAULTS.items() if k in known},
               **{k: v for k, v in (base or {}).items() if k in known},
               **file_values}
    return build_config(cls, layered, flags)
