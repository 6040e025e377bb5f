"""Which files a spec names (a path, a directory, a glob; local or any URL pyarrow opens:
s3://, gs://, hdfs://) and how to open one as bytes, decompressed for .gz.

Globs go through fsspec's glob over the pyarrow filesystem (`**` spans directories, as the
shell's globstar), so local and remote specs match the same way. Hidden names (starting with
'.' or '_', as pyarrow and Spark write them: .DS_Store, _SUCCESS) are left out of directories
and globs; a file named itself is always taken.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mlmkit.errors import MlmkitError

FORMATS = (".txt", ".jsonl", ".json", ".csv", ".tsv", ".parquet")
_WILD = "*?["


def format_of(name: str) -> str:
    """The format a file's name says ('.txt', ..., '.parquet'; '.gz' ignored), or ''."""
    name = name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return next((fmt for fmt in FORMATS if name.endswith(fmt)), "")


def is_url(spec: str) -> bool:
    return "://" in spec


def is_pattern(spec: str) -> bool:
    """Whether `spec` is a glob (a file name holding these characters must be escaped:
    'a[[]1].txt')."""
    return any(c in spec for c in _WILD)


@dataclass(frozen=True)
class ListedFile:
    """One file of a spec: its path or URL, and its size and mtime when listed."""

    uri: str
    size: int
    mtime_ns: int | None

    @property
    def fmt(self) -> str:
        return format_of(self.uri)


def filesystem(uri: str, flag: str = "--input") -> tuple[Any, str]:
    """The pyarrow filesystem of `uri` and the path within it."""
    from pyarrow import fs as pafs

    if not is_url(uri):
        uri = str(Path(uri).expanduser().absolute())
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... by filesystem
        raise MlmkitError(f"{flag} {uri}: cannot open its filesystem ({e})") from None


def list_files(spec: str, *, recursive: bool, known_only: bool, flag: str = "--input"
               ) -> list[ListedFile]:
    """The files of `spec`, sorted by path: the file itself, a directory's files (with
    `recursive`, those of its subdirectories too), or a glob's matches. With `known_only`,
    only files of a known format (others in a directory or glob are left out, a named one is
    an error); else any file is taken, as text lines when its format is unknown."""
    what = f"{', '.join(FORMATS)} (optionally .gz)" if known_only else "files"
    named = f"{flag} {spec}".lstrip()
    local = not is_url(spec)
    path = str(Path(spec).expanduser()) if local else spec
    if local and not is_pattern(path) and not os.path.isdir(path):
        if not os.path.exists(path):  # checked here: /dev/stdin and other pipes are files too
            raise MlmkitError(f"{named}: not found; expected a file, a directory or a glob "
                              f"of {what}")
        if known_only and not format_of(path):
            raise MlmkitError(f"{named}: unsupported file type; expected one of {what}")
        st = os.stat(path)
        return [ListedFile(os.path.abspath(path), st.st_size, st.st_mtime_ns)]
    files = [f for f in _list_remote(spec, recursive, flag) if not known_only or f.fmt]
    if not files:
        kind = "the pattern matches" if is_pattern(path) else "it holds"
        raise MlmkitError(f"{named}: no files match ({kind} no {what}); expected a file, a "
                          "directory or a glob")
    return sorted(files, key=lambda f: f.uri)


def _list_remote(spec: str, recursive: bool, flag: str) -> list[ListedFile]:
    """A file, directory or glob through its pyarrow filesystem (local ones too)."""
    from fsspec.implementations.arrow import ArrowFSWrapper
    from pyarrow import fs as pafs

    fs, path = filesystem(spec, flag)
    scheme = spec.split("://", 1)[0] + "://" if is_url(spec) else ""
    wild = next((i for i, c in enumerate(path) if c in _WILD), None)
    if wild is None:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise MlmkitError(f"{flag} {spec}: not found; expected a file, a directory or a glob")
        if info.type == pafs.FileType.File:  # named itself: taken even if hidden
            return [ListedFile(scheme + info.path, info.size, info.mtime_ns)]
        base = path.rstrip("/") + "/"
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    else:
        base = path[:path.rfind("/", 0, wild) + 1] or "/"
        infos = fs.get_file_info(ArrowFSWrapper(fs).glob(path))
    return [ListedFile(scheme + i.path, i.size, i.mtime_ns) for i in infos
            if i.type == pafs.FileType.File and not _hidden(i.path[len(base):])]


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def open_binary(uri: str, seekable: bool = False) -> BinaryIO:
    """The bytes of a file, decompressed for .gz (which cannot seek). Local files are opened
    by Python, so that pipes (/dev/stdin) read as files."""
    gz = uri.lower().endswith(".gz")
    if not is_url(uri):
        return gzip.open(uri, "rb") if gz else open(uri, "rb")  # type: ignore[return-value]
    fs, path = filesystem(uri)
    if gz:
        return fs.open_input_stream(path, compression="gzip")
    return fs.open_input_file(path) if seekable else fs.open_input_stream(path)
