"""What a shard directory holds, shared by the writer and the reader.

Each sample is `<key>.<ext>` (the video file's bytes, its own extension) plus `<key>.json`
(`VideoQA.to_json()`); `index.json` lists the shards, their sample counts, the total and a hash of the
record list.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

INDEX_NAME = "index.json"
INDEX_FORMAT = "vt-shards/1"
VIDEO_EXTENSIONS = frozenset(
    {"mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "flv", "wmv", "3gp"})


def read_index(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The index.json of a shard directory (or the file itself), checked for shape."""
    path = Path(out_dir)
    if path.is_dir():
        path = path / INDEX_NAME
    index = json.loads(path.read_text(encoding="utf-8"))
    if (not isinstance(index, dict) or index.get("format") != INDEX_FORMAT
            or not isinstance(index.get("shards"), list)):
        raise ValueError(f"{path}: not a {INDEX_FORMAT} shard index")
    for shard in index["shards"]:
        name = shard.get("name") if isinstance(shard, dict) else None
        # Names are joined to the directory: a path or URL in an index must not redirect the reader.
        if not isinstance(name, str) or Path(name).name != name or ":" in name or name.startswith("."):
            raise ValueError(f"{path}: bad shard name {name!r}")
        if not isinstance(shard.get("count"), int) or shard["count"] < 0:
            raise ValueError(f"{path}: shard {name} has no valid count")
    return index
