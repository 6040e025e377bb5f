"""Flags generated from the settings dataclasses, and the parser that reads them.

Every settings field is one kebab-case flag with the field's help text and allowed range, so
the CLI, config files and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import difflib
import logging
from dataclasses import MISSING, fields
from typing import Any, NoReturn

from mlmkit.cli.compat import RUN_MLM, CompatError
from mlmkit.cli.helptext import COMMANDS
from mlmkit.cli.rewrite import compat_help, translate
from mlmkit.settings import ENGINE_GROUPS, GROUPS, allowed, build_config, read_config_file

# The command line shows progress unless --quiet; the Python API is quiet unless asked.
CLI_DEFAULTS = {"quiet": False}

class Parser(argparse.ArgumentParser):
    """argparse, with these changes:

    - a pasted run_mlm.py command is rewritten into mlmkit's flags first (`compat`, for the
      commands that train or evaluate; the table is compat.RUN_MLM);
    - an abbreviation that matches a flag and its aliases only (--learning: --learning-rate and
      --learning_rate) is that flag, not an ambiguity;
    - an unknown flag is one line, with "did you mean" the closest flag;
    - a model given as MODEL or --model MODEL is `model` either way (`add_model_argument`).

    `flag_dests` (every flag and alias -> its destination) is filled as flags are added."""

    compat = False
    model_slot: str | None = None  # how add_model_argument added the model: see there

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.flag_dests.update(dict.fromkeys(action.option_strings, action.dest))
        return action

    @property
    def flag_dests(self) -> dict[str, str]:
        return self.__dict__.setdefault("_flag_dests", {})

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if args is not None:
            args = list(args)
            if self.compat:
                try:
                    args = translate(args, self._option_string_actions, self.prog.split()[-1])
                except CompatError as e:
                    self.fail(str(e))
            args = [_expand(a, self.flag_dests) if isinstance(a, str) else a for a in args]
        ns, extra = super().parse_known_args(args, namespace)
        unknown = [a for a in extra if a.startswith("-") and a != "-" and not _number(a)]
        if unknown:
            self.fail(f"unrecognized argument{'s' * (len(unknown) > 1)} {' '.join(unknown)}"
                      + self._did_you_mean(unknown))
        self._resolve_model(ns)
        return ns, extra

    def fail(self, message: str) -> NoReturn:
        """A usage error in one line (argparse's `error` prints the usage first)."""
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _did_you_mean(self, unknown: list[str]) -> str:
        flags = [f for f in self._option_string_actions if f.startswith("--")]
        if self.compat:
            flags += ["--" + name for name in RUN_MLM]
        for word in unknown:
            close = difflib.get_close_matches(word.partition("=")[0], flags, n=1, cutoff=0.75)
            if close:
                return f" (did you mean {close[0]}?)"
        return ""

    def _resolve_model(self, ns: argparse.Namespace) -> None:
        if self.model_slot == "many":
            positional, flagged = ns.models, ns.__dict__.pop("model_flags", None) or []
            if positional and flagged and positional != flagged:
                self.fail(f"models given twice, as {' '.join(positional)} and as --model "
                          f"{' --model '.join(flagged)}: give them one way")
            ns.models = positional or flagged
            if not ns.models:
                self.fail("the following arguments are required: MODEL (or --model MODEL)")
            return
        if self.model_slot is None:
            return
        positional, flagged = ns.__dict__.pop("model_arg", None), getattr(ns, "model", None)
        if positional is not None and flagged is not None and positional != flagged:
            if self.model_slot != "texts":
                self.fail(f"model given twice, as {positional} and as --model {flagged}: "
                          "give one")
            ns.texts = [positional, *ns.texts]  # with --model, every word is a text
        elif positional is not None:
            ns.model = positional
        elif flagged is None and self.model_slot != "optional":
            self.fail("the following arguments are required: MODEL (or --model MODEL)")


def add_model_argument(p: Parser, slot: str = "required", help: str = "Hub id or local "
                       "model directory") -> None:
    """The model as a positional MODEL or as --model MODEL, the same either way.

    `slot`: "required"; "optional" (train/eval: --model comes from the settings, with its
    default); "texts" (fill/score: with --model given, a first word that differs is a text);
    "many" (probe: MODEL... or --model repeated)."""
    p.model_slot = slot
    if slot == "many":
        p.add_argument("models", nargs="*", metavar="MODEL", help=help)
        p.add_argument("--model", dest="model_flags", action="append", metavar="MODEL",
                       help="a model, as the positional MODEL (repeatable)")
        return
    p.add_argument("model_arg", nargs="?", default=None, metavar="MODEL",
                   help=help + (" (or --model MODEL)" if slot != "optional" else
                                " (the same as --model)"))
    if slot != "optional":
        p.add_argument("--model", default=argparse.SUPPRESS, help="the same as MODEL")


def _number(arg: str) -> bool:
    try:
        float(arg)
        return True
    except ValueError:
        return False


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
        return flag, {**kw, "action": "append", "metavar": f.metadata.get("metavar", "FIELD")}
    base = t.split("|")[0].strip()
    kw["type"] = {"int": int, "float": float}.get(base, str)
    if "metavar" in f.metadata:
        kw["metavar"] = f.metadata["metavar"]
    if "choices" in f.metadata:
        kw["choices"] = f.metadata["choices"]
    elif any(k in f.metadata for k in ("ge", "gt", "le", "lt")):
        kw["help"] += f" [{allowed(f)}]"
    return flag, kw


def _aliases(flag: str) -> list[str]:
    snake = "--" + flag[2:].replace("-", "_")
    return [snake] if snake != flag else []


def add_settings_flags(parser: Parser, cls: type, only: tuple[str, ...] | None = None,
                       run_mlm: bool = True) -> None:
    """A flag per field of `cls` (or of the fields named in `only`), listed in the section its
    `group` names, plus its hidden snake_case alias; with `run_mlm`, run_mlm.py's and
    TrainingArguments' flags are read too (compat.RUN_MLM)."""
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
        for alias in _aliases(flag):
            section.add_argument(alias, **{**kw, "help": argparse.SUPPRESS})
            dests[alias] = f.name
    if run_mlm:
        parser.compat = True
        names = {f.name for f in fields(cls)}
        parser.epilog = "\n\n".join(filter(None, [parser.epilog, compat_help(names)]))


def add_command(sub: Any, name: str, **kw: Any) -> Parser:
    """A subcommand's parser, with its help, description and examples from helptext."""
    help_, description, examples = COMMANDS[name]
    return sub.add_parser(name, help=help_, description=description, epilog=examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


def settings_from(cls: type, ns: argparse.Namespace, base: dict[str, Any] | None = None,
                  ) -> Any:
    """defaults < `base` (a run's saved settings) < config file < flags. Quiet settings, from a
    flag or the file alike, leave the result and errors only (main does so for --quiet before
    the settings are read)."""
    flags = {k: v for k, v in vars(ns).items() if k not in ("command", "config", "json")}
    file_values = read_config_file(ns.config) if getattr(ns, "config", None) else {}
    known = {f.name for f in fields(cls)}
    layered = {**{k: v for k, v in CLI_DEFAULTS.items() if k in known},
               **{k: v for k, v in (base or {}).items() if k in known},
               **file_values}
    cfg = build_config(cls, layered, flags)
    if getattr(cfg, "quiet", False):
        logging.getLogger("mlmkit").setLevel(logging.WARNING)
    return cfg
