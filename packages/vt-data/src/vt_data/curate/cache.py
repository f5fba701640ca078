"""The on-disk call cache: one JSON file per call, named by a hash of everything that determines the
reply, written atomically, so a crashed or interrupted run resumes without paying for any call twice.

Key: SHA-256 of the canonical JSON of {format version, stage, model name, request, settings}. The
request is the chat messages (or a local checker's request); settings are the sampling parameters and
the attempt variant (regeneration number), so a regenerated trace is a new call and not a cache hit.

Layout: `<root>/<key[:2]>/<key>.json` holding the key's inputs and the reply, so the cache doubles as an
audit log of every prompt sent and every reply paid for. One file per key (not an append-only JSONL)
because a write is then a single atomic rename (`vt_data.files`): a SIGKILL leaves either the whole entry
or none (plus, at worst, an orphaned `*.tmp` file that is never read), and concurrent threads never
interleave lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from vt_data.files import atomic_open

CACHE_FORMAT = 1


def cache_key(stage: str, model: str, request: Any, settings: dict[str, Any]) -> str:
    """The hex SHA-256 naming one call; any change to stage, model, request or settings changes it."""
    blob = json.dumps({"v": CACHE_FORMAT, "stage": stage, "model": model, "request": request,
                       "settings": settings}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class DiskCache:
    """get/put of JSON entries by key under `root` (created on first write)."""

    def __init__(self, root: str | os.PathLike, *, fsync: bool = True):
        self.root = Path(root)
        self.fsync = fsync
        self._lock = threading.Lock()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            text = self.path(key).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return None  # cannot happen with atomic writes; treat a damaged entry as absent

    def put(self, key: str, entry: dict[str, Any]) -> None:
        # The temporary name is one per process, so two threads must not write at once (the engine's
        # workers may put the same key); a write is short next to the call that produced the entry.
        # fsync: the reply was paid for, so it must survive a power cut too.
        with self._lock, atomic_open(self.path(key), "w", fsync=self.fsync) as fh:
            json.dump(entry, fh, ensure_ascii=False)

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json")) if self.root.is_dir() else 0
