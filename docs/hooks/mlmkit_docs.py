"""MkDocs hooks (mkdocs.yml `hooks:`) that keep the site from going stale.

- `<!-- flags: train -->` in a page becomes the table of every flag of `mlmkit train`, read from
  the command's own argparse parser (whose settings flags are generated from the settings
  dataclasses), so a flag added or renamed in the code is in the docs at the next build.
- `<!-- fields: TrainConfig -->` becomes the table of a settings dataclass's fields (the Python
  keywords), with type, default, allowed values and help.
- `<!-- api -->` becomes one mkdocstrings block per name of `mlmkit.__all__`.
- A `--flag` a page names that no mlmkit command has (a renamed or removed flag) is a warning,
  except on benchmarks.md (the bench scripts' flags) and for the other tools' flags in
  `OTHER_TOOLS_FLAGS`.
- Every public name of `mlmkit.__all__` and of `mlmkit.config`, and every public method of
  those classes, must have a docstring: one missing is a warning, which `mkdocs build --strict`
  turns into a failed build.

The functions below take and return plain strings and lists, so tests/unit/test_docs.py runs
them without MkDocs installed.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib
import inspect
import logging
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("mkdocs.plugins.mlmkit_docs")

# Titles of the API page's sections, by the subpackage (or module) that defines the names.
API_SECTIONS = {
    "training": "Training and evaluation", "config": "Settings", "inference": "Fill and score",
    "vocab": "Vocabulary", "probing": "Probing", "batch": "Ray batch jobs",
    "serving": "Serving", "errors": "Errors",
}
# Flags of other tools that the pages name (pip, torchrun, ray, mkdocs); pages whose flags are
# not mlmkit's (the bench scripts').
OTHER_TOOLS_FLAGS = {"--no-deps", "--nproc_per_node", "--head", "--strict"}
PAGES_OF_OTHER_FLAGS = {"benchmarks.md"}
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")

# Public by name but not API: the settings' internal hook, hidden on the site as well (mkdocs.yml
# `filters`); Settings documents it once.
HIDDEN = {"check_together"}
_MARKER = re.compile(r"<!--\s*(flags|fields):\s*([\w ]+?)\s*-->|<!--\s*(api|modules)\s*-->")


def _mlmkit() -> Any:
    src = str(ROOT / "src")
    if src not in sys.path:  # this checkout's code, whatever else is installed
        sys.path.insert(0, src)
    return importlib.import_module("mlmkit")


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    s = " ".join(str(text).split())
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of `mlmkit COMMAND` ('train', 'vocab audit', ...)."""
    _mlmkit()
    from mlmkit.cli.main import build_parser

    parser: argparse.ArgumentParser = build_parser()
    for word in command.split():
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            raise ValueError(f"flags: {command!r}: no such mlmkit command")
        parser = subs[0].choices[word]
    return parser


def flag_table(command: str) -> str:
    """Every argument `mlmkit COMMAND --help` lists, one table per --help section."""
    parser = command_parser(command)
    formatter = parser._get_formatter()
    out = []
    for group in parser._action_groups:
        rows = []
        for action in group._group_actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            name = _invocation(formatter, action)
            rows.append(f"| `{name}` | {_cell(formatter._expand_help(action))} |")
        if rows:
            out += [f"**{group.title}**", "", "| flag | what it sets |", "|---|---|", *rows, ""]
    return "\n".join(out)


@functools.lru_cache(maxsize=1)
def all_flags() -> frozenset[str]:
    """Every option string of every mlmkit command and subcommand, hidden aliases included."""
    _mlmkit()
    from mlmkit.cli.main import build_parser

    from mlmkit.cli.compat import RUN_MLM

    # run_mlm.py's names, which `train` and `eval` read before argparse (cli/compat.py).
    found: set[str] = {f"--{n}" for n in RUN_MLM} | {f"--{n.replace('_', '-')}" for n in RUN_MLM}
    todo = [build_parser()]
    while todo:
        for action in todo.pop()._actions:
            found.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                todo += list(action.choices.values())
    return frozenset(found)


def unknown_flags(text: str, known: frozenset[str] | None = None) -> list[str]:
    """The `--flags` a text names that neither mlmkit nor the other tools it names have."""
    known = (all_flags() if known is None else known) | OTHER_TOOLS_FLAGS
    return sorted({f for f in _FLAG.findall(text) if f not in known})


def _invocation(formatter: argparse.HelpFormatter, action: argparse.Action) -> str:
    """`--top-k N`, `--json`, `model`: the flag and, if it takes one, its value's name."""
    if not action.option_strings:
        return action.metavar or action.dest
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    value = formatter._format_args(action, action.metavar or "VALUE")
    return ", ".join(action.option_strings) + " " + value


def field_table(class_name: str) -> str:
    """A settings dataclass's fields: the keywords its constructor takes."""
    _mlmkit()
    from mlmkit import config
    from mlmkit.settings import allowed

    cls = getattr(config, class_name, None)
    if cls is None or not dataclasses.is_dataclass(cls):
        raise ValueError(f"fields: {class_name!r}: not a settings class of mlmkit.config")
    rows = ["| field | default | allowed | what it sets |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(f"| `{f.name}` | `{default!r}` | {_cell(allowed(f))} | "
                    f"{_cell(f.metadata.get('help', ''))} |")
    return "\n".join(rows)


def exports() -> dict[str, str]:
    """Each public name of `mlmkit` -> the module (under mlmkit) that defines it."""
    pkg = _mlmkit()
    return {name: pkg._EXPORTS[name] for name in pkg.__all__ if name in pkg._EXPORTS}


def api_blocks() -> str:
    """mkdocstrings blocks for `mlmkit.__all__`, in sections by subpackage."""
    by_section: dict[str, list[str]] = {}
    for name, module in sorted(exports().items(), key=lambda kv: kv[0].lower()):
        title = API_SECTIONS.get(module.split(".")[0], "Other")
        by_section.setdefault(title, []).append(f"::: mlmkit.{module}.{name}")
    out = []
    for title in [*API_SECTIONS.values(), "Other"]:
        if title in by_section:
            out += [f"## {title}", "", *(b + "\n" for b in by_section[title])]
    return "\n".join(out)


def _gist(doc: str, most: int = 240) -> str:
    """A docstring's first paragraph, cut at a sentence's end if it is long."""
    text = " ".join(doc.split("\n\n")[0].split())
    if len(text) <= most:
        return text
    cut = max(text.rfind(". ", 0, most), text.rfind("; ", 0, most))
    return text[:cut + 1] + " …" if cut > 0 else text[:most] + " …"


def module_table() -> str:
    """Each module of src/mlmkit and the gist of its docstring (read, not imported)."""
    src = ROOT / "src"
    rows = ["| module | what it holds |", "|---|---|"]
    for path in sorted((src / "mlmkit").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if path.name == "__init__.py" and not doc:
            continue
        rows.append(f"| `{path.relative_to(src / 'mlmkit').as_posix()}` | {_cell(_gist(doc))} |")
    return "\n".join(rows)


def _generated_doc(obj: Any) -> bool:
    # dataclasses write "Name(field: type = ...)" as the docstring of a class without one.
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return inspect.isclass(obj) and bool(doc) and doc.startswith(obj.__name__ + "(")


def _own_doc(obj: Any) -> bool:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return bool(doc and doc.strip()) and not _generated_doc(obj)


def public_objects() -> list[tuple[str, Any]]:
    """(dotted name, object) for each public name of the API page and of the settings page:
    `mlmkit.__all__`, the classes of `mlmkit.config`, and their public methods and properties
    (own ones, and `__call__`: what mkdocstrings shows)."""
    pkg = _mlmkit()
    from mlmkit import config

    tops = [(f"mlmkit.{n}", getattr(pkg, n)) for n in exports()]
    tops += [(f"mlmkit.config.{n}", c) for n, c in vars(config).items()
             if inspect.isclass(c) and c.__module__ == config.__name__ and not n.startswith("_")]
    out: list[tuple[str, Any]] = []
    for dotted, obj in tops:
        out.append((dotted, obj))
        if not inspect.isclass(obj):
            continue
        for name, member in vars(obj).items():
            if (name.startswith("_") and name != "__call__") or name in HIDDEN:
                continue
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if inspect.isfunction(member) or isinstance(member, property):
                out.append((f"{dotted}.{name}", member))
    return out


def missing_docstrings() -> list[str]:
    """The dotted names of public objects that have no docstring of their own."""
    return sorted({name for name, obj in public_objects() if not _own_doc(obj)})


def expand(markdown: str) -> str:
    """The page with its markers replaced by generated tables and blocks."""
    def one(m: re.Match) -> str:
        if m.group(1) == "flags":
            return flag_table(m.group(2))
        if m.group(1) == "fields":
            return field_table(m.group(2))
        return api_blocks() if m.group(3) == "api" else module_table()

    return _MARKER.sub(one, markdown)


# --- MkDocs events -------------------------------------------------------------------------

def on_pre_build(config: Any) -> None:
    for name in missing_docstrings():
        log.warning(f"public name without a docstring: {name}")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_path not in PAGES_OF_OTHER_FLAGS:
        for flag in unknown_flags(markdown):
            log.warning(f"{page.file.src_path}: {flag}: no mlmkit command has this flag")
    try:
        return expand(markdown)
    except ValueError as e:
        log.warning(f"{page.file.src_path}: {e}")
        return markdown
