"""How mlmkit's settings work: a field per setting (`setting`: default, help, --help section,
allowed range), checked when a settings object is made (`Settings`), one-line errors naming
the flag, and the layering of defaults < config file (YAML/TOML/JSON) < flags
(`build_config`). The settings themselves are in config.py."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import inspect
import json
import math
import numbers
from collections.abc import Iterable, Iterator
from dataclasses import field, fields
from pathlib import Path, PurePath
from typing import Any

import tomllib

from mlmkit.errors import MlmkitError

# The sections of `mlmkit train --help` / `eval --help`, in the order shown: key -> title.
GROUPS = {
    "model": "model",
    "data": "data",
    "masking": "masking",
    "optimisation": "optimisation",
    "schedule": "schedule & length",
    "checkpoints": "checkpoints & resume",
    "outputs": "outputs & tracking",
    "performance": "performance",
}


# Sections of the inference commands' --help (fill, score, serve).
ENGINE_GROUPS = {"engine": "model & device", "server": "server",
                 "ray": "on a Ray cluster (--engine ray; pip install 'mlmkit[ray]')"}

_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}

# Upper bounds where a larger value is no use and fails later, in a library, with a traceback
# (a fuzz of every setting found each): a batch, or micro-batches per step, past torch's and
# Accelerate's int64 and sys.maxsize limits; tokenizers' BPE trainer reserves memory in
# proportion to the vocabulary asked for (2**30 tokens: 70 GB, an abort) where the largest
# vocabularies in use hold about 256,000; more data-loader workers than 64 only cost processes
# (the blocks are tokenized ahead; a worker stacks them), and 2**64 of them never start.
MOST_BLOCKS = 2**31 - 1
MOST_VOCAB = 1_000_000
MOST_WORKERS = 64
# The smallest normal float32: Adam divides by epsilon, and a smaller one rounds to 0 in the
# optimizer's float32 state, turning a parameter with no gradient into NaN.
LEAST_EPSILON = 1.1754943508222875e-38


def setting(default: Any, help: str, group: str, **kw: Any) -> Any:
    """A setting: its default, help text, --help section and allowed values (`ge`, `gt`, `le`,
    `lt`, `choices`; `any_type` for the corpus fields that also take Python objects)."""
    if group not in GROUPS and group not in ENGINE_GROUPS:
        raise ValueError(f"group {group!r}: expected one of {', '.join(GROUPS)}")
    meta = {"help": help, "group": group, **kw}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def allowed(f: Any) -> str:
    """A field's allowed values in words: 'an integer >= 1', 'a number > 0 and < 1', ..."""
    kind = str(f.type).replace(" | None", "").strip()
    if "choices" in f.metadata:
        return "one of " + ", ".join(map(str, f.metadata["choices"]))
    words = {"int": "an integer", "float": "a finite number", "bool": "true or false",
             "str": "a string", "list[str]": "a list of strings"}.get(kind, kind)
    bounds = [f"{op} {_number(f.metadata[k])}" for k, (op, _) in _BOUNDS.items()
              if k in f.metadata]
    none = " (or none)" if "None" in str(f.type) and f.default is not None else ""
    return words + (" " + " and ".join(bounds) if bounds else "") + none


def _number(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def check_field(f: Any, value: Any) -> Any:
    """The value, converted where that loses nothing (an int for a float, one string for a
    list); an MlmkitError naming the flag and the allowed values otherwise."""
    kind = str(f.type).replace(" | None", "").strip()
    if f.metadata.get("any_type") or (value is None and "None" in str(f.type)):
        return value
    if kind == "list[str]" and isinstance(value, str):
        value = [value]
    ok = {"bool": lambda v: isinstance(v, bool),
          "int": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
          and math.isfinite(v),
          "str": lambda v: isinstance(v, str),
          "list[str]": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str)
                                                                      for x in v)}[kind]
    good = ok(value) and value in f.metadata.get("choices", [value]) and all(
        test(value, f.metadata[k]) for k, (_, test) in _BOUNDS.items() if k in f.metadata)
    if not good:
        raise MlmkitError(f"{named(f.name, value, quoted=True)}: expected {allowed(f)}")
    convert = {"float": float, "int": int, "list[str]": list}.get(kind)  # numpy's numbers too
    return convert(value) if convert else value


def flag_of(name: str) -> str:
    """A setting's command-line flag: 'block_size' -> '--block-size'. Messages name a setting
    with `named`, which says it as the caller does."""
    return "--" + name.replace("_", "-")


# Who called: messages name a setting as the command line spells it ('--overwrite', '--output
# runs/x') or as Python does ('overwrite=True', "output='runs/x'"). Python unless the CLI says
# otherwise (`speaking_cli`, for the duration of a command).
_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("mlmkit_caller", default="python")
_NO_VALUE = object()


@contextlib.contextmanager
def speaking_cli() -> Iterator[None]:
    """Within the block, messages name settings as flags."""
    token = _CALLER.set("cli")
    try:
        yield
    finally:
        _CALLER.reset(token)


def from_cli() -> bool:
    """Whether the command line is the caller (within `speaking_cli`): for the rare message
    that says a whole command rather than one setting."""
    return _CALLER.get() == "cli"


def named(name: str, value: Any = _NO_VALUE, *, quoted: bool = False) -> str:
    """A setting as the caller names it, with its value if given: from the command line
    '--block-size', '--block-size 64' (`quoted`: "--split 'x'"), and a switch to turn on
    (True) just '--overwrite', a value to give (...) '--data DATA'; from Python 'block_size',
    'block_size=64', 'overwrite=True', 'data=...'."""
    if from_cli():
        if value is _NO_VALUE or value is True:
            return flag_of(name)
        if value is ...:
            return f"{flag_of(name)} {name.upper()}"
        return f"{flag_of(name)} {value!r}" if quoted else f"{flag_of(name)} {value}"
    if value is _NO_VALUE:
        return name
    if value is ...:
        return f"{name}=..."
    return f"{name}={str(value) if isinstance(value, PurePath) else value!r}"


class Settings:
    """Base of every settings dataclass: each field is checked against its type and range
    when the object is made (flags, a config file and Python keywords alike), once.

    Our own ~40 lines rather than Pydantic models: these stay plain dataclasses (the CLI's
    flags are generated from their fields and `dataclasses.replace` re-checks), and a bad
    value is one line naming the flag and the allowed range, where Pydantic's errors are
    several lines naming the field."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Before the dataclass's __init__, whose unknown keyword is a bare TypeError.
        known = [f.name for f in fields(cls)]
        for name in kwargs:
            if name not in known:
                raise MlmkitError(unknown_setting(name, known))
        return super().__new__(cls)

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, check_field(f, getattr(self, f.name)))
        self.check_together()

    def check_together(self) -> None:
        """Rules between settings; the subclasses add theirs."""


def unknown_setting(name: str, known: Iterable[str]) -> str:
    """"unknown setting 'epoch' (did you mean 'epochs'?)", as the caller names settings."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f" (did you mean {named(close[0])!r}?)" if close else ""
    return f"unknown setting {named(name)!r}{hint}"


def documented(cls: type) -> type:
    """A settings dataclass whose docstring lists every field (`help(TrainConfig)`, the API
    reference): its type, help text, default and allowed values, from its `setting()`."""
    lines = [f"    {f.name} ({str(f.type).replace(' | None', ' or None')}): "
             f"{f.metadata['help']}. Default: {_default(f)!r}"
             + ("." if f.metadata.get("any_type") else f"; allowed: {allowed(f)}.")
             for f in fields(cls) if "help" in f.metadata]
    intro = inspect.cleandoc(cls.__doc__ or "")
    cls.__doc__ = f"{intro}\n\nAttributes:\n" + "\n".join(lines) + "\n"
    return cls


def _default(f: Any) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def parse_overrides(text: str | None) -> dict[str, Any]:
    """'a=1,b=x' -> {'a': 1, 'b': 'x'}; values parse as JSON where they can."""
    out: dict[str, Any] = {}
    for part in filter(None, (text or "").split(",")):
        if "=" not in part:
            raise MlmkitError(f"{named('config_overrides', text, quoted=True)}: expected "
                              f"key=value pairs, got {part!r}")
        k, v = part.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v.strip()
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML file of settings; keys may use dashes or underscores."""
    p = Path(path)
    if not p.is_file():
        raise MlmkitError(f"config file {p}: not found")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            raw = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text) or {}
        elif p.suffix == ".json":
            raw = json.loads(text)
        else:
            raise MlmkitError(f"config file {p}: expected a .yaml, .yml, .toml or .json file")
    except MlmkitError:
        raise
    except Exception as e:  # parser errors carry line numbers in their message
        raise MlmkitError(f"config file {p}: cannot parse: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise MlmkitError(f"config file {p}: expected a mapping of setting names to values")
    return {k.replace("-", "_"): v for k, v in raw.items()}


def build_config(cls: type, file_values: dict[str, Any], flag_values: dict[str, Any]) -> Any:
    """defaults < config file < flags; unknown keys in the file are an error naming them."""
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(file_values) - set(names))
    if unknown:
        raise MlmkitError(
            f"config file: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    values = {**file_values, **{k: v for k, v in flag_values.items() if k in names}}
    for k, v in list(values.items()):
        if names[k].type in ("list[str]",) and isinstance(v, str):
            values[k] = [v]
    cfg = cls(**values)
    validate(cfg)
    return cfg


def validate(cfg: Any) -> None:
    """Check a settings object again (after a field was set by hand)."""
    Settings.__post_init__(cfg)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
