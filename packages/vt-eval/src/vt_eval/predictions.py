"""Predictions files: one JSON line per sample, appended as each batch finishes, readable after a crash.

`predictions.jsonl` (one process) or `predictions.rank{r}-of-{w}.jsonl` (rank r of w; `predictions_name`)
holds one line per sample, flushed and fsynced per batch (`PredictionWriter`). A line is
`{index, key, prompt_hash, status: "ok", output, <the score_sample row>, finished, num_output_tokens,
num_prompt_tokens, num_frames, timing}`; a video that cannot be decoded gives
`{index, key, prompt_hash, status: "decode_failed", path, error, category}` instead (never a
substitute video: method.md §10 item 10). `predictions.superseded.jsonl` keeps the lines a merge
dropped or re-scored (vt_eval.merge).

Resume: a sample is done when some predictions file in the run directory holds an `ok` line with its
key and its current prompt hash (`done_ids`). A rerun truncates a torn last line of its own file (a
crash mid-write; a bad line followed by good ones is corruption and raises: `read_predictions`), skips
what is done, retries failed decodes, and appends the rest.

The faithfulness passes (vt_eval.faithfulness, vt_eval.reliance) keep their own files beside these, named
and written the same way (`shard_name`, `PredictionWriter`, `read_predictions`, `shard_files`):
`clues.jsonl` / `clues.rank{r}-of-{w}.jsonl` and `reliance.jsonl` / `reliance.rank{r}-of-{w}.jsonl`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("vt_eval")

PREDICTIONS = "predictions.jsonl"
SUPERSEDED = "predictions.superseded.jsonl"


def shard_name(stem: str, rank: int, world_size: int) -> str:
    """`<stem>.jsonl` for one process, `<stem>.rank{r}-of-{w}.jsonl` for rank r of w."""
    return f"{stem}.jsonl" if world_size == 1 else f"{stem}.rank{rank}-of-{world_size}.jsonl"


def predictions_name(rank: int, world_size: int) -> str:
    return shard_name("predictions", rank, world_size)


@dataclass
class ReadResult:
    rows: list[dict[str, Any]]
    torn_bytes: int  # bytes after the last complete line (0: the file ends cleanly)


def read_predictions(path: str | os.PathLike, *, repair: bool = False) -> ReadResult:
    """Read a predictions file. A tail of unparsable bytes after the last good line (a line torn by a
    crash, or NUL padding) is dropped, and with `repair=True` truncated from the file; an unparsable
    line followed by good ones raises ValueError (that is corruption, not a crash)."""
    path = Path(path)
    if not path.is_file():
        return ReadResult([], 0)
    data = path.read_bytes()
    rows: list[dict[str, Any]] = []
    good_end = 0  # byte offset just after the last good line
    bad_line: int | None = None
    pos = 0
    lineno = 0
    while pos < len(data):
        lineno += 1
        nl = data.find(b"\n", pos)
        complete = nl != -1
        end = nl + 1 if complete else len(data)
        raw = data[pos:end].strip()
        pos = end
        if not raw.strip(b"\x00"):
            continue
        try:
            row = json.loads(raw) if complete else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = None
        if not isinstance(row, dict):
            bad_line = bad_line or lineno
            continue
        if bad_line is not None:
            raise ValueError(f"{path}:{bad_line}: unparsable line followed by valid ones (corrupt file)")
        rows.append(row)
        good_end = end
    tail = data[good_end:]
    torn = len(tail) if tail.strip(b"\n\r\t ") else 0  # NUL padding counts as torn too
    if torn and repair:
        log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, torn)
        with path.open("r+b") as fh:
            fh.truncate(good_end)
            fh.flush()
            os.fsync(fh.fileno())
    return ReadResult(rows, torn)


class PredictionWriter:
    """Appends one JSON line per sample; each batch is flushed and fsynced before the next starts."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            # One write per line: a crash can tear only the line being written.
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def shard_files(out_dir: Path, stem: str) -> list[Path]:
    """`<stem>.jsonl` first, then its rank files in name order (a fixed order for the merge)."""
    ranks = sorted(p for p in out_dir.glob(f"{stem}.rank*-of-*.jsonl"))
    single = out_dir / f"{stem}.jsonl"
    return ([single] if single.is_file() else []) + ranks


def prediction_files(out_dir: Path) -> list[Path]:
    """predictions.jsonl first, then the rank files in name order (a fixed order for the merge)."""
    return shard_files(out_dir, "predictions")


def done_ids(out_dir: Path) -> set[tuple[str, str]]:
    """(key, prompt_hash) of every `ok` line in any predictions file of `out_dir`."""
    done = set()
    for path in prediction_files(out_dir):
        for row in read_predictions(path).rows:
            if row.get("status") == "ok":
                done.add((row["key"], row["prompt_hash"]))
    return done


def ok_lines(out_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(key, prompt_hash) -> the first `ok` line for it over every predictions file (the merge's order)."""
    lines: dict[tuple[str, str], dict[str, Any]] = {}
    for path in prediction_files(out_dir):
        for row in read_predictions(path).rows:
            if row.get("status") == "ok":
                lines.setdefault((row["key"], row["prompt_hash"]), row)
    return lines


__all__ = [
    "PREDICTIONS",
    "SUPERSEDED",
    "PredictionWriter",
    "ReadResult",
    "done_ids",
    "ok_lines",
    "prediction_files",
    "predictions_name",
    "read_predictions",
    "shard_files",
    "shard_name",
]
