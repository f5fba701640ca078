"""Atomic file writes: a reader (or a rerun after a crash) sees the old file or the new one, never half.

Every writer of a result, report, manifest or index in the stack goes through these functions, so there
is one rule for "written": the bytes are in a temporary file beside the target (same directory, so the
rename stays on one filesystem), optionally fsynced, then `os.replace`d over the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A hidden temporary name in the target's directory, unique per process and thread, so two writers
    of the same target (processes or threads) never write into one temporary file."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces `path`, on error it is removed.

    For writers that want a path rather than a file object (matplotlib's savefig, tarfile, torch.save).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, fsync: bool = False) -> Iterator[IO[Any]]:
    """`open(tmp, mode)`; the file replaces `path` when the block ends without an error."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    with atomic_open(path, "w", fsync=fsync) as fh:
        fh.write(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    with atomic_open(path, "wb", fsync=fsync) as fh:
        fh.write(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, fsync: bool = False,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """Pretty JSON (non-ASCII kept as is) with a trailing newline."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, default=default) + "\n"
    return write_text_atomic(path, text, fsync=fsync)


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[Any], *, fsync: bool = False) -> int:
    """One JSON value per line; returns the number of lines."""
    count = 0
    with atomic_open(path, "w", fsync=fsync) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


__all__ = ["atomic_open", "atomic_path", "temporary_sibling", "write_bytes_atomic", "write_json_atomic",
           "write_jsonl_atomic", "write_text_atomic"]
