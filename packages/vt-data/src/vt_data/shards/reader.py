"""Reading shards without torch: which shard files a spec names, and the raw samples of one shard.

Never trusts a shard: only `.json` and video members are read; anything else (e.g. a `.pyd` pickle) is
left unread, so no pickle is ever loaded, and member names are only split into key and extension,
never used as paths. A shard is streamed one tar member at a time (a local tar is read with seeks, so
unread members cost no I/O) and never held whole.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vt_data.records import VideoQA
from vt_data.shards.layout import INDEX_NAME, VIDEO_EXTENSIONS, read_index

logger = logging.getLogger(__name__)

# Member extensions the reader reads; everything else in a shard is left unread (never unpickled).
READ_EXTENSIONS = VIDEO_EXTENSIONS | {"json"}


def list_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard URLs from a shard directory (its index.json, else its *.tar files), an index.json, a brace
    pattern (`shards/shard-{000000..000009}.tar`), a glob, a single tar or URL, or a list of these."""
    if isinstance(spec, (list, tuple)):
        return [url for item in spec for url in list_shards(item)]
    text = os.fspath(spec)
    path = Path(text)
    if path.is_dir() or path.name == INDEX_NAME:
        directory = path if path.is_dir() else path.parent
        if (directory / INDEX_NAME).is_file():
            return [str(directory / s["name"]) for s in read_index(directory)["shards"]]
        found = sorted(str(p) for p in directory.glob("*.tar"))
        if not found:
            raise FileNotFoundError(f"no {INDEX_NAME} and no .tar files in {directory}")
        logger.warning("%s has no %s; reading its %d .tar files in name order", directory, INDEX_NAME,
                       len(found))
        return found
    if "{" in text:
        import braceexpand

        return list(braceexpand.braceexpand(text))
    if any(c in text for c in "*?[") and "://" not in text:
        found = sorted(glob.glob(text))
        if not found:
            raise FileNotFoundError(f"no shards match {text}")
        return found
    return [text]


def _local_path(url: str) -> str | None:
    """The file path of a local shard URL (a plain path or file:), else None."""
    if url.startswith("file:"):
        return re.sub(r"^file:(//)?", "", url)
    return None if "://" in url or url.startswith("pipe:") else url


def _open_url(url: str):
    path = _local_path(url)
    if path is not None:
        return open(path, "rb")
    import webdataset as wds

    # pipe:/http(s)/s3 URLs go through webdataset; they come from the run's config, never from a shard.
    return wds.gopen.gopen(url, "rb")


def iter_shard_samples(url: str, *, skip: int = 0, take: int | None = None,
                       extensions: frozenset[str] = READ_EXTENSIONS) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard, streaming: `{"__key__", "__url__", "__index__", ext: bytes, ...}`.

    Members are grouped by key (the name up to its first dot, as webdataset does) and only those whose
    extension is in `extensions` are read; samples before `skip` or from `skip + take` on are not read.
    Every distinct key counts as one sample, matching the counts in index.json.
    """
    from webdataset.tariterators import base_plus_ext

    end = None if take is None else skip + take
    fh = _open_url(url)
    try:
        # A local file is opened seekable, so members that are not read are skipped with seeks.
        with tarfile.open(fileobj=fh, mode="r:*" if _local_path(url) is not None else "r|*") as tar:
            current, sample, index = None, None, -1
            for info in tar:
                tar.members = []  # TarFile keeps every header otherwise
                if not info.isreg():
                    continue
                key, ext = base_plus_ext(info.name)
                if key is None:
                    continue
                if key != current:
                    if sample is not None:
                        yield sample
                    current, index = key, index + 1
                    if end is not None and index >= end:
                        return
                    sample = {"__key__": key, "__url__": url, "__index__": index} if index >= skip else None
                if sample is None:
                    continue
                ext = ext.lower()
                if ext not in extensions:
                    sample.setdefault("__ignored__", []).append(ext)
                    continue
                if ext in sample:
                    sample["__bad__"] = f"duplicate member {info.name!r}"
                    continue
                sample[ext] = tar.extractfile(info).read()
            if sample is not None:
                yield sample
    finally:
        fh.close()


def iter_shard_records(spec: str | os.PathLike | Sequence[str]) -> Iterator[VideoQA]:
    """The records of every shard in `spec` (see list_shards), without reading any video bytes."""
    for url in list_shards(spec):
        for sample in iter_shard_samples(url, extensions=frozenset({"json"})):
            if "json" in sample:
                yield VideoQA.from_json(sample["json"].decode("utf-8"), source=f"{url}#{sample['__key__']}")


def shard_counts(urls: Sequence[str]) -> list[int]:
    """Samples per shard: from the index.json beside each local shard, else by scanning tar headers."""
    indexes: dict[Path, dict[str, int] | None] = {}
    counts = []
    for url in urls:
        count = None
        path = _local_path(url)
        if path is not None:
            directory = Path(path).parent
            if directory not in indexes:
                try:
                    indexes[directory] = {s["name"]: s["count"] for s in read_index(directory)["shards"]}
                except FileNotFoundError:
                    indexes[directory] = None
            count = (indexes[directory] or {}).get(Path(path).name)
        if count is None:
            logger.info("no index entry for %s; counting its samples", url)
            count = sum(1 for _ in iter_shard_samples(url, extensions=frozenset()))
        counts.append(count)
    return counts
