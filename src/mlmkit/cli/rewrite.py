"""A pasted run_mlm.py command line rewritten into mlmkit's own flags (`translate`, run by the
parser of `train` and `eval` before argparse), and the --help section that lists the names;
what each name means is compat.RUN_MLM's."""

from __future__ import annotations

import argparse
import sys
import textwrap

from mlmkit.cli.compat import (
    FALSE,
    RUN_MLM,
    TRUE,
    CompatError,
    Notice,
    Refuse,
    Setting,
    Special,
)


def _name(token: str) -> tuple[str, str | None]:
    """'--max-seq-length=64' -> ('max_seq_length', '64')."""
    flag, eq, value = token.partition("=")
    return flag[2:].replace("-", "_"), (value if eq else None)


def _scan(argv: list[str], own: set[str]) -> list[tuple[int, int, str, str]]:
    """The run_mlm flags in argv: (start, end, name, value), a switch's value 'true' unless
    a boolean follows it ('--fp16 False', as HfArgumentParser reads it)."""
    found, i = [], 0
    while i < len(argv):
        token = argv[i]
        name, value = _name(token) if token.startswith("--") else ("", None)
        # mlmkit's own flags stay its own; a snake_case spelling in the table is run_mlm's
        # (--warmup_steps 0.1, --push_to_hub with no value, --max_steps -1 mean what they do
        # there)
        mine = token.partition("=")[0] in own and not ("_" in token and name in RUN_MLM)
        if mine or not name:
            i += 1
            continue
        negated = name.startswith("no_") and name[3:] in RUN_MLM
        rule = RUN_MLM.get(name[3:] if negated else name)
        if rule is None:
            i += 1
            continue
        end = i + 1
        if value is None and rule.switch:
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            takes = nxt.lower() in TRUE + FALSE or (name == "push_to_hub"
                                                    and nxt and not nxt.startswith("-"))
            value, end = (nxt, i + 2) if takes else ("true", i + 1)
        elif value is None:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise CompatError(f"--{name}: expected a value")
            value, end = argv[i + 1], i + 2
        found.append((i, end, name[3:] if negated else name, "false" if negated else value))
        i = end
    return found


def _mlmkit_argv(name: str, value: str, given: dict[str, str]) -> tuple[list[str], str | None]:
    rule = RUN_MLM[name]
    off = rule.switch and value.lower() in FALSE
    if isinstance(rule, Refuse):
        if off:  # asking for the default is no request at all
            return [], None
        raise CompatError(f"--{name}: not taken by mlmkit: {rule.why}")
    if isinstance(rule, Notice):
        return [], f"--{name}: accepted, no effect: {rule.why}"
    if isinstance(rule, Special):
        return rule.emit(value, given)
    flag = "--" + rule.field.replace("_", "-")
    if rule.switch:
        return ([] if off else [flag, rule.const] if rule.const else [flag]), None
    return [flag, rule.convert(value) if rule.convert else value], None


def _check(name: str, new: list[str], action: argparse.Action) -> None:
    """The value as argparse would check it, in its words, but naming the flag typed."""
    if len(new) < 2:
        return
    try:
        value = action.type(new[1]) if callable(action.type) else new[1]
    except ValueError:
        raise CompatError(f"argument --{name}: invalid {action.type.__name__} value: "
                          f"{new[1]!r}") from None
    if action.choices and value not in action.choices:
        raise CompatError(f"argument --{name}: invalid choice: {new[1]!r} (choose from "
                          f"{', '.join(map(str, action.choices))})")


def translate(argv: list[str], own: dict[str, argparse.Action], command: str) -> list[str]:
    """`argv` with every run_mlm.py / TrainingArguments flag replaced by mlmkit's (the
    command's own flags, `own`: flag -> its argparse action, stay as they are); a notice on
    stderr for each one accepted without effect; a CompatError for one refused, or for one
    that sets a setting this command does not have or that another flag already set."""
    found = _scan(argv, set(own))
    if not found:
        return argv
    given = {name: value for _, _, name, value in found}
    for flag in ("--output", "--output-dir"):
        if flag in argv[:-1] and flag in own:
            given.setdefault("output", argv[argv.index(flag) + 1])
    out, last, setters, notes = [], 0, {}, []
    for start, end, name, value in found:
        new, note = _mlmkit_argv(name, value, given)
        if new and new[0] not in own:
            raise CompatError(f"--{name}: sets {new[0]} of mlmkit train; `mlmkit {command}` "
                              "has no such setting")
        if new:
            _check(name, new, own[new[0]])
            dest = own[new[0]].dest
            earlier = setters.get(dest) or next(
                (t for t in argv if t.partition("=")[0] in own
                 and own[t.partition("=")[0]].dest == dest), None)
            if earlier and earlier != f"--{name}":
                raise CompatError(f"--{name} and {earlier} both set {new[0]}: give one")
            setters[dest] = f"--{name}"
        if note:
            notes.append(note)
        out += argv[last:start] + new
        last = end
    for note in notes:
        print(f"mlmkit {command}: note: {note}", file=sys.stderr)
    return out + argv[last:]


def compat_help(fields: set[str]) -> str:
    """The --help section: the renamed flags that set one of `fields`, the same-named ones,
    and what happens to the rest."""
    renamed: dict[str, list[str]] = {}
    same = []
    for name, rule in RUN_MLM.items():
        if isinstance(rule, Special) and name in fields:
            same.append("--" + name)
        elif isinstance(rule, Setting) and rule.field in fields:
            if name == rule.field:
                same.append("--" + name)
            else:
                renamed.setdefault(rule.field, []).append("--" + name)
    rows = [f"  {', '.join(names):<30} = --{field.replace('_', '-')}"
            for field, names in renamed.items()]
    return "\n".join([
        "run_mlm.py names (accepted, not listed above; each sets the same setting):",
        *rows,
        "  and every flag spelled with _ for - (--block_size = --block-size), so also",
        "  run_mlm.py's own names:",
        *textwrap.wrap(", ".join(same), 76, initial_indent="  ", subsequent_indent="  "),
        "  The rest of run_mlm.py's and TrainingArguments' flags: the harmless ones",
        "  (--do_train, --do_eval, --logging_dir, ...) are accepted with a note; the",
        "  others are refused with what to use instead. --fp16/--bf16 set",
        "  --mixed-precision; --eval_strategy/--save_strategy with --eval_steps/",
        "  --save_steps set --eval-every/--save-every; --validation_split_percentage P",
        "  sets --eval-fraction P/100; --push_to_hub names the repository after",
        "  --hub_model_id or --output_dir."])
