"""Writing and reading back files safely: atomic writes, sha256 manifests of a directory, and
the marker file that says a directory is one mlmkit wrote (the only kind it will delete).

Every file mlmkit writes goes through `atomic_write`/`atomic_open`: a temporary name in the
same directory, fsync, then `os.replace`, so a kill at any instant leaves either the old file
or the new one, never half of one. What is not a regular file is never renamed over: a
character device, a FIFO, /dev/stdout or '-' is written into, anything else refused.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from mlmkit.errors import MlmkitError

MANIFEST = "manifest.json"
_TMP_TAG = "mlmkit-"  # in every temporary name, so a kill's leftovers are known as ours
RUN_MARKER = ".mlmkit-run"  # written into every run directory mlmkit creates


def _describe_os_error(path: Path | str, e: OSError, what: str = "cannot write") -> MlmkitError:
    reason = e.strerror or str(e)
    if isinstance(e, NotADirectoryError) or e.errno == 20:
        reason = "a part of the path is a file, not a directory"
    return MlmkitError(f"{path}: {what}: {reason}")


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w", encoding: str | None = "utf-8"
                ) -> Iterator[IO[Any]]:
    """A file handle whose content replaces `path` only when the block ends without an error;
    on an error (or a kill) `path` keeps what it had and the temporary file is removed.
    What is no file is written into as it is (see `write_target`): '-' is stdout, and a
    character device, a FIFO or an open descriptor's file (/dev/stdout) get the bytes
    directly, in the order they come, since a rename would replace the node itself."""
    binary = "b" in mode
    if str(path) == "-":
        stream = sys.stdout.buffer if binary else sys.stdout
        yield stream
        stream.flush()
        return
    target, atomic = write_target(path)
    if not atomic:
        # Appending: a descriptor's file (`>> log`) keeps what it had; a device or FIFO has
        # no end to seek to, and O_APPEND changes nothing for it.
        with open(target, mode.replace("w", "a"),
                  **({} if binary else {"encoding": encoding})) as fh:
            yield fh
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{_TMP_TAG}",
                                   suffix=".tmp")
    except OSError as e:
        raise _describe_os_error(path, e) from None
    try:
        with os.fdopen(fd, mode, **({} if binary else {"encoding": encoding})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        if write_target(target) != (target, True):  # something else put there meanwhile
            raise MlmkitError(f"{path}: changed while it was written; not replaced")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISBLK, "a block device"))


def write_target(path: Path | str, flag: str = "") -> tuple[Path, bool]:
    """Where a write to `path` goes, and whether by rename: (the file to replace, True) for a
    regular file or a new name, through any symbolic links (the link stays, its file is
    replaced); (`path`, False) for a character device, a FIFO or the file of an open
    descriptor (/dev/stdout, /proc/self/fd/N), which are written into. Anything else (a
    directory, a socket, a block device) is refused in one line, prefixed with `flag`."""
    shown = f"{flag} {path}" if flag else str(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:  # a new name, or a link to one: the link's file is made
        return Path(os.path.realpath(path)), True
    except OSError as e:
        raise _describe_os_error(shown, e) from None
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return Path(path), False
    if stat.S_ISREG(mode):
        return (Path(path), False) if _is_descriptor(path) else (Path(os.path.realpath(path)),
                                                                 True)
    kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
    raise MlmkitError(f"{shown}: is {kind}; expected a regular file, a character device or a "
                      "FIFO")


_DESCRIPTORS = re.compile(r"/proc/[^/]+/fd")


def _is_descriptor(path: Path | str) -> bool:
    """Whether `path` or a link on the way to its file names an open descriptor: such a link's
    target is only what the descriptor was opened as, and the file is not ours to replace."""
    at = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on links followed
        if _DESCRIPTORS.fullmatch(os.path.realpath(os.path.dirname(at))):
            return True
        if not os.path.islink(at):
            return False
        at = os.path.join(os.path.realpath(os.path.dirname(at)), os.readlink(at))
    return False


def atomic_write(path: Path | str, data: bytes | str) -> None:
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)


def write_json(path: Path | str, obj: Any, indent: int | None = 1) -> None:
    atomic_write(path, json.dumps(obj, indent=indent))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(root: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """{name: {"size", "sha256"}} for files under `root`: what a manifest or a cache's meta
    records, and `check_entries` compares against."""
    return {n: {"size": (root / n).stat().st_size, "sha256": sha256_file(root / n)}
            for n in sorted(names)}


def check_entries(root: Path, entries: dict[str, dict[str, Any]]) -> list[str]:
    """What differs between the files under `root` and their recorded sizes and digests, one
    phrase per file (empty when all match). Sizes first, so a truncated file costs no hash."""
    problems, bad = [], set()
    for name, want in entries.items():
        p = root / name
        if not (isinstance(want, dict) and isinstance(want.get("size"), int)
                and isinstance(want.get("sha256"), str)):
            problems.append(f"{name} has no size and sha256 on record")
        elif not p.is_file():
            problems.append(f"{name} is missing")
        elif p.stat().st_size != want["size"]:
            problems.append(f"{name} has {p.stat().st_size:,} bytes, expected {want['size']:,}")
        else:
            continue
        bad.add(name)
    for name, want in entries.items():
        if name not in bad and sha256_file(root / name) != want["sha256"]:
            problems.append(f"{name} does not match its sha256 digest")
    return problems


def write_manifest(root: Path, names: Iterable[str] | None = None, **fields: Any) -> None:
    """Record the files `names` under `root` (by default every file under it, recursively, but
    not the manifest itself) and `fields`; written last, so a directory with a manifest is a
    complete one."""
    if names is None:
        names = [str(p.relative_to(root)) for p in root.rglob("*")
                 if p.is_file() and p.name != MANIFEST]
    write_sealed_json(root / MANIFEST, {**fields, "files": file_entries(root, names)})


def json_digest(obj: Any) -> str:
    """The sha256 of a JSON value in canonical form: a record's own check, so a flipped byte in
    it is reported as the record's damage, not as a mismatch of whichever digest it hit."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def write_sealed_json(path: Path | str, record: dict[str, Any]) -> None:
    """Write the object `record` with its own `json_digest` added under "sha256"; a flipped
    byte that still parses as JSON (a digit of a count, a letter of a key) is then caught."""
    write_json(path, {**record, "sha256": json_digest(record)})


def read_sealed_json(path: Path | str) -> tuple[dict[str, Any] | None, str]:
    """What `write_sealed_json` wrote, without its digest, and ""; or None and what is wrong
    with the file, as a phrase that names it: missing, unreadable, or not matching its digest."""
    name = Path(path).name
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        seal = record.pop("sha256")
    except FileNotFoundError:
        return None, f"{name} is missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return None, f"{name} is unreadable ({type(e).__name__})"
    if seal != json_digest(record):
        return None, f"{name} does not match its own digest"
    return record, ""


def read_manifest(root: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The manifest of `root` and [] when every file it names matches it; else None and the
    problems, one phrase each."""
    if not (root / MANIFEST).is_file():
        return None, [f"no {MANIFEST} (the directory was not finished)"]
    manifest, problem = read_sealed_json(root / MANIFEST)
    if manifest is None:
        return None, [problem]
    if not isinstance(manifest.get("files"), dict):
        return None, [f"{MANIFEST} is unreadable (no files)"]
    problems = check_entries(root, manifest["files"])
    return (None, problems) if problems else (manifest, [])


def verify_manifest(root: Path) -> list[str]:
    """Problems with the directory `root` against its manifest; empty when it is intact."""
    return read_manifest(root)[1]


def apply_umask(root: Path) -> None:
    """Give every file under `root` the mode a new file gets from the umask: some writers
    (safetensors' `save_file`, `mkstemp`) create theirs 0600, which would leave a model
    directory that only its owner can read, unlike every other file of it."""
    mode = 0o666 & ~_umask()
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, mode)


class WriteFailed(MlmkitError):
    """Files mlmkit was writing could not be written (a full disk, most often); the message
    names what and the disk."""


_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")  # how Rust writers (safetensors) name one
# torch's zip writer fails with a RuntimeError naming neither the file nor the errno.
_TORCH_WRITER = ("inline_container", "PytorchStreamWriter")
_NEARLY_FULL = 1 << 20  # bytes: below this, a write that failed without an errno hit a full disk


def write_failure(what: str, where: Path, e: BaseException) -> str | None:
    """`e`, raised while writing `what` under the directory `where`, as one phrase naming it,
    the reason (ENOSPC for a full disk) and the disk with its free space; None when `e` is not
    a failed write (a bug, an interrupt). Called before the partial files are removed: the
    free space then is what the write met."""
    from safetensors import SafetensorError

    text = str(e)
    torch_writer = isinstance(e, RuntimeError) and any(w in text for w in _TORCH_WRITER)
    if not (isinstance(e, (OSError, SafetensorError, MlmkitError)) or torch_writer):
        return None
    # An MlmkitError of a failed write (atomic_open's) keeps the OSError as its context.
    code = next((x.errno for x in _chain(e) if isinstance(x, OSError) and x.errno), None)
    if code is None and (found := _OS_ERROR_IN_TEXT.search(text)):
        code = int(found.group(1))
    if code is None and isinstance(e, (OSError, MlmkitError)):
        return None
    disk = where.absolute()
    while not disk.exists() or not (disk.is_mount() or disk == disk.parent):
        disk = disk.parent
    free = shutil.disk_usage(disk).free
    if code is None and free < _NEARLY_FULL:
        code = errno.ENOSPC
    reason = (f"{os.strerror(code)} ({errno.errorcode.get(code, code)})" if code
              else (text.strip().splitlines() or [type(e).__name__])[0])
    return f"cannot write {what}: {reason} on the disk mounted at {disk} ({_size(free)} free)"


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    """`e` and the exceptions it was raised from or while handling (an MlmkitError made of
    an OSError keeps the OSError as its context)."""
    seen = 0
    while e is not None and seen < 10:
        yield e
        e, seen = e.__cause__ or e.__context__, seen + 1


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def cache_dir(chosen: str | None = None) -> Path:
    """mlmkit's cache directory: `chosen` (--cache-dir), else $MLMKIT_CACHE, else
    ~/.cache/mlmkit. Blocks and downloaded models live below it."""
    root = chosen or os.environ.get("MLMKIT_CACHE") or "~/.cache/mlmkit"
    return Path(os.path.expanduser(root))


def mark_run_dir(path: Path) -> None:
    atomic_write(path / RUN_MARKER, "This directory was written by mlmkit; "
                 "`mlmkit train --overwrite` may replace it.\n")


def is_run_dir(path: Path) -> bool:
    return (path / RUN_MARKER).is_file()


def contains(outer: Path, inner: Path) -> bool:
    """Whether `inner` is `outer` or lies inside it (both resolved, so links and `..` count)."""
    outer, inner = outer.resolve(), inner.resolve()
    return inner == outer or outer in inner.parents


def is_partial_write(path: Path) -> bool:
    """A temporary file of `atomic_open` that a kill left behind."""
    return path.name.startswith(".") and f".{_TMP_TAG}" in path.name and \
        path.name.endswith(".tmp") and path.is_file()


def remove_partial_writes(directory: Path) -> int:
    n = 0
    for p in directory.iterdir():
        if is_partial_write(p):
            p.unlink(missing_ok=True)
            n += 1
    return n


def probe_writable(path: Path | str, flag: str, shown: Path | str | None = None) -> None:
    """One-line error unless files can be created at `path` (an existing directory, or the
    nearest existing directory above a path still to be made). Tried with a real temporary
    file, not `os.access`: root passes `access` whatever the permission bits say, and only a
    real write meets every other refusal (immutable flags, ACLs, quotas)."""
    path = Path(path).expanduser()
    where = path.absolute()
    path = shown or path  # the path as the user gave it, in the message
    while not where.exists():
        where = where.parent
    if not where.is_dir():
        raise MlmkitError(f"{flag} {path}: {where} is a file, not a directory")
    try:
        # Named as atomic_open's temporaries, so a kill's leftover is known as ours.
        fd, tmp = tempfile.mkstemp(dir=where, prefix=f".probe.{_TMP_TAG}", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise MlmkitError(f"{flag} {path}: cannot write in {where}: {e.strerror}") from None
