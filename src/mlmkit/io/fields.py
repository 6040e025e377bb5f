"""Which text a record holds: the strings at dotted field paths ('answers.text'; a list's
strings joined with a space, as the guide does), the default field ('text', or the only
string field), and the texts of a corpus's records for training."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mlmkit.errors import MlmkitError
from mlmkit.settings import named

# A record comes with its place: (file, line or element number, kind of number), or for
# in-memory data (its name, index, "index"), shown as data[12].
Where = tuple[str, int, str]


class FieldError(MlmkitError):
    """A record lacks a text field, or holds no text in it. The message is the whole story
    without the place; `brief` is what fill and score report beside other records."""

    def __init__(self, message: str, brief: str) -> None:
        super().__init__(message)
        self.brief = brief


def where_of(w: Where) -> str:
    return f"{w[0]}[{w[1]}]" if w[2] == "index" else f"{w[0]}: {w[2]} {w[1]}"


def field_paths(rec: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(rec, dict):
        for k, v in rec.items():
            out.append(f"{prefix}{k}")
            if isinstance(v, dict):
                out.extend(field_paths(v, f"{prefix}{k}."))
    return out


def field_value(rec: Any, path: str) -> Any:
    """The value at a dotted path; through a list of objects, the list of their values."""
    value: Any = rec
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value) and value:
            if not all(part in v for v in value):
                return None
            value = [v[part] for v in value]
        else:
            fields_ = ", ".join(field_paths(rec)) or "(none: the record is not an object)"
            raise FieldError(f"no field {path!r}; fields here: {fields_}", f"no {path!r} field")
    return value


def field_strings(value: Any, path: str) -> list[str]:
    """The strings of a field's value: one, a list's, or none for null."""
    if isinstance(value, str):
        return [value]
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    kind = type(value).__name__
    if isinstance(value, list):
        kind = "list of " + ", ".join(sorted({type(v).__name__ for v in value if
                                                not isinstance(v, str)}))
    raise FieldError(f"field {path!r} holds a {kind}; expected text or a list of text",
                     f"the text is not a string but {type(value).__name__}")


def default_text_field(rec: dict[str, Any]) -> str:
    """'text', or the record's only string field."""
    if "text" in rec:
        return "text"
    strings = [k for k, v in rec.items() if isinstance(v, str)]
    if len(strings) == 1:
        return strings[0]
    raise FieldError("no 'text' field and no single text field to pick; name one with "
                     f"{named('text_field')} (fields here: {', '.join(field_paths(rec))})",
                     "no 'text' field")


def input_text(rec: Any, fields: list[str]) -> str:
    """The text fill or score reads from a record: a string itself, or the strings of
    `fields` joined with a space; a null field is no text (a FieldError)."""
    if isinstance(rec, str):
        return rec
    if not isinstance(rec, dict):
        raise FieldError(f"expected an object or a string, got {type(rec).__name__}",
                         f"the text is not a string but {type(rec).__name__}")
    texts = []
    for path in fields:
        value = field_value(rec, path)
        if value is None:
            raise FieldError(f"field {path!r} is null; expected text",
                             "the text is not a string but NoneType")
        texts.append(" ".join(field_strings(value, path)))
    return " ".join(t for t in texts if t)


# --------------------------------------------------------------------------- training texts


@dataclass
class TextStats:
    records: int = 0
    empty: int = 0
    fields: list[str] = field(default_factory=list)


def record_texts(records: Iterable[tuple[Where, Any]], text_fields: list[str],
                 stats: TextStats) -> Iterator[tuple[int, str]]:
    """(record number, text) for every non-empty record: its fields' strings joined with a
    space, a list's strings too; empty records are counted in `stats`."""
    for i, strings in _record_strings(records, text_fields, stats):
        yield i, " ".join(t for t in (" ".join(f) for f in strings) if t)


def record_pieces(records: Iterable[tuple[Where, Any]], text_fields: list[str],
                  stats: TextStats) -> Iterator[tuple[int, list[str]]]:
    """(record number, its strings one by one: each field's, each of a list's) for every
    non-empty record, for what must not run on across them, such as lines."""
    for i, strings in _record_strings(records, text_fields, stats):
        yield i, [t for f in strings for t in f]


def _record_strings(records: Iterable[tuple[Where, Any]], text_fields: list[str],
                    stats: TextStats) -> Iterator[tuple[int, list[list[str]]]]:
    stats.fields = list(text_fields)
    for i, (where, rec) in enumerate(records):
        try:
            if not isinstance(rec, dict):
                raise MlmkitError(f"expected an object, got {type(rec).__name__}")
            if not stats.fields:
                stats.fields = [default_text_field(rec)]
            strings = [field_strings(field_value(rec, f), f) for f in stats.fields]
        except MlmkitError as e:
            raise MlmkitError(f"{where_of(where)}: {e}") from None
        stats.records += 1
        if any(t.strip() for f in strings for t in f):
            yield i, strings
        else:
            stats.empty += 1
