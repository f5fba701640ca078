"""Writing shards: `write_shards` turns records and their video files into atomic tars plus `index.json`.

Keys are sanitised `record.key`s (no dots or slashes; `webdataset` splits a member name at its first
dot) made unique with a `_N` suffix. Member metadata is fixed, so the same records and videos give
byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vt_data.files import atomic_path, write_json_atomic
from vt_data.records import VideoQA, iter_records
from vt_data.shards.layout import INDEX_FORMAT, INDEX_NAME, VIDEO_EXTENSIONS

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_KEY_LEN = 96
_END_OF_ARCHIVE = 1024  # the two zero blocks that close a tar


def safe_key(key: str) -> str:
    """A webdataset-safe key: letters, digits, '_' and '-' only (webdataset splits names at the first
    dot; slashes would make directories), never empty, at most 96 characters."""
    cleaned = _UNSAFE_KEY_CHARS.sub("_", key).strip("_")
    if len(cleaned) > _MAX_KEY_LEN:
        # Truncation alone could merge distinct long keys; the digest keeps them apart.
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        cleaned = f"{cleaned[:_MAX_KEY_LEN - 11]}_{digest}"
    return cleaned or "sample"


def _records_with_origin(records: Iterable[Any] | str | os.PathLike) -> Iterator[tuple[VideoQA, str]]:
    """(record, where) from a record file (where = file:line), (line, record) pairs, or bare records."""
    if isinstance(records, (str, os.PathLike)):
        for line, record in iter_records(records):
            yield record, f"{os.fspath(records)}:{line}"
        return
    for i, item in enumerate(records):
        if isinstance(item, tuple):
            line, record = item
            yield record, f"line {line}"
        else:
            yield item, f"record #{i}"


def _video_path(record: VideoQA, video_root: str | os.PathLike | None) -> Path:
    path = Path(record.path)
    if not path.is_absolute() and video_root is not None:
        path = Path(video_root) / record.path.removeprefix("./")
    return path


def _checked_videos(records: Iterable[Any] | str | os.PathLike,
                    video_root: str | os.PathLike | None) -> list[tuple[VideoQA, Path, str]]:
    """(record, video file, extension) for every record; FileNotFoundError naming the first five
    records whose video is remote, not a video or missing, before anything is written."""
    items: list[tuple[VideoQA, Path, str]] = []
    problems: list[str] = []
    for record, where in _records_with_origin(records):
        path = _video_path(record, video_root)
        ext = path.suffix.lower().lstrip(".")
        named = f"{where}: record {record.key!r}"
        if "://" in record.path:
            problems.append(f"{named}: remote video paths are not supported: {record.path}")
        elif ext not in VIDEO_EXTENSIONS:
            problems.append(f"{named}: {record.path!r} does not have a video extension "
                            f"({', '.join(sorted(VIDEO_EXTENSIONS))}); shards hold video records only")
        elif not path.is_file():
            problems.append(f"{named}: video file not found: {path}")
        items.append((record, path, ext))
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise FileNotFoundError(f"{len(problems)} record(s) cannot be sharded{more}:\n"
                                + "\n".join(problems[:5]))
    return items


@dataclass(frozen=True)
class _Sample:
    """One sample as it goes into a tar: its unique key, the video file and the record's JSON."""

    key: str
    video: Path
    ext: str
    video_size: int
    meta: bytes

    @property
    def tar_bytes(self) -> int:
        return _member_bytes(len(self.meta)) + _member_bytes(self.video_size)


def _samples(items: list[tuple[VideoQA, Path, str]]) -> list[_Sample]:
    used: set[str] = set()
    samples = []
    for record, path, ext in items:
        key = base = safe_key(record.key)
        n = 1
        while key in used:
            key, n = f"{base}_{n}", n + 1
        used.add(key)
        samples.append(_Sample(key, path, ext, path.stat().st_size, record.to_json().encode("utf-8")))
    return samples


def _member_bytes(size: int) -> int:
    return 512 + (size + 511) // 512 * 512  # header + data padded to 512-byte blocks


def _group(samples: list[_Sample], max_count: int, max_bytes: int) -> list[list[_Sample]]:
    """Consecutive samples cut into shards of at most `max_count` samples that stay within `max_bytes`
    (a single larger sample gets a shard of its own)."""
    shards: list[list[_Sample]] = []
    size = 0
    for sample in samples:
        if not shards or len(shards[-1]) >= max_count or size + sample.tar_bytes > max_bytes:
            shards.append([])
            size = _END_OF_ARCHIVE
        shards[-1].append(sample)
        size += sample.tar_bytes
    return shards


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through (tar integrity in index.json)."""

    def __init__(self, fh):
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.fh.write(data)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata: the same records and videos give byte-identical shards.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = size, 0, 0o644, 0, 0
    info.uname = info.gname = ""
    return info


def _write_tar(path: Path, samples: list[_Sample], bar) -> dict[str, Any]:
    """One shard, under a temporary name until complete; its index entry."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        hasher = _HashingWriter(fh)
        with tarfile.open(fileobj=hasher, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for sample in samples:
                with open(sample.video, "rb") as video:  # streamed into the tar, never read whole
                    tar.addfile(_tarinfo(f"{sample.key}.{sample.ext}", sample.video_size), video)
                tar.addfile(_tarinfo(f"{sample.key}.json", len(sample.meta)), io.BytesIO(sample.meta))
                if bar is not None:
                    bar.update()
    return {"name": path.name, "count": len(samples), "bytes": hasher.size, "sha256": hasher.sha.hexdigest()}


def write_shards(
    records: Iterable[VideoQA] | Iterable[tuple[int, VideoQA]] | str | os.PathLike,
    video_root: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    max_count: int = 256,
    max_bytes: int = 1 << 30,
    prefix: str = "shard",
    progress: bool = True,
) -> dict[str, Any]:
    """Write `out_dir/<prefix>-000000.tar`, ... and `out_dir/index.json`; return the index.

    `records` is an iterable of records (or of `(line, record)` pairs), or a record file path, in which
    case errors name its file and line. Relative video paths are resolved under `video_root`. Every
    video file is checked before anything is written: a missing one raises FileNotFoundError naming the
    record. A shard closes at `max_count` samples or before it would pass `max_bytes` (a single larger
    sample gets a shard of its own). Each tar is written under a temporary name and renamed; the old
    index is removed first and the new one written last, so a crash never leaves an index that lies.
    Shards of an earlier run with the same prefix that the new index does not list are deleted.
    """
    if max_count < 1 or max_bytes < 1:
        raise ValueError(f"max_count and max_bytes must be >= 1, got {max_count}, {max_bytes}")
    if not prefix or safe_key(prefix) != prefix:
        raise ValueError(f"prefix must be a non-empty safe key (letters, digits, _ -), got {prefix!r}")
    out = Path(out_dir)
    items = _checked_videos(records, video_root)

    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_NAME).unlink(missing_ok=True)
    samples = _samples(items)
    records_sha = hashlib.sha256(b"".join(s.meta + b"\n" for s in samples))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=f"shards {out}", unit="sample", file=sys.stderr)
    try:
        shards = [_write_tar(out / f"{prefix}-{number:06d}.tar", group, bar)
                  for number, group in enumerate(_group(samples, max_count, max_bytes))]
    finally:
        if bar is not None:
            bar.close()

    index = {
        "format": INDEX_FORMAT,
        "prefix": prefix,
        "shards": shards,
        "total": sum(s["count"] for s in shards),
        "records_sha256": records_sha.hexdigest(),
        "max_count": max_count,
        "max_bytes": max_bytes,
    }
    # Only ASCII in an index (safe names, numbers, hex digests): the bytes are those of json.dumps.
    write_json_atomic(out / INDEX_NAME, index, indent=1)
    listed = {s["name"] for s in shards}
    for stale in out.glob(f"{prefix}-*.tar"):
        if re.fullmatch(rf"{re.escape(prefix)}-\d{{6}}\.tar", stale.name) and stale.name not in listed:
            stale.unlink()
    return index
