"""How mlmkit's settings work: a field per setting (`setting`: default, help, --help section,
allowed range), checked when a settings object is made (`Settings`), one-line errors naming
the flag, and the layering of defaults < config file (YAML/TOML/JSON) < flags
(`build_config`). The settings themselves are in config.py."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import field, fields
from pathlib import Path
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
        raise MlmkitError(f"{flag_of(f.name)} {value!r}: expected {allowed(f)}")
    convert = {"float": float, "int": int, "list[str]": list}.get(kind)  # numpy's numbers too
    return convert(value) if convert else value


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


class Settings:
    """Base of every settings dataclass: each field is checked against its type and range
    when the object is made (flags, a config file and Python keywords alike), once.

    Our own ~40 lines rather than Pydantic models: these stay plain dataclasses (the CLI's
    flags are generated from their fields and `dataclasses.replace` re-checks), and a bad
    value is one line naming the flag and the allowed range, where Pydantic's errors are
    several lines naming the field."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, check_field(f, getattr(self, f.name)))
        self.check_together()

    def check_together(self) -> None:
        """Rules between settings; the subclasses add theirs."""


def parse_overrides(text: str | None) -> dict[str, Any]:
    """'a=1,b=x' -> {'a': 1, 'b': 'x'}; values parse as JSON where they can."""
    out: dict[str, Any] = {}
    for part in filter(None, (text or "").split(",")):
        if "=" not in part:
            raise MlmkitError(f"--config-overrides {text!r}: expected key=value pairs, got "
                              f"{part!r}")
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
