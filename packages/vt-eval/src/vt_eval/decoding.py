"""Decoding a benchmark's videos for an evaluation: where a record's video is, reading it with the
protocol's frame sampling, and decoding ahead on threads while the model generates. Shared by the
runner (vt_eval.runner) and the reliance pass (vt_eval.reliance), so both see the same frames."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vt_data.records import VideoQA
from vt_eval.benchmarks import Benchmark
from vt_eval.protocol import Protocol

T = TypeVar("T")


@dataclass
class Failed:
    """A video that could not be decoded (never replaced by another: method.md §10 item 10)."""

    error: str


def video_path(benchmark: Benchmark, record: VideoQA) -> Path:
    path = Path(record.path)
    return path if path.is_absolute() or benchmark.video_root is None else benchmark.video_root / path


def read_clip(benchmark: Benchmark, protocol: Protocol, record: VideoQA) -> Any:
    """The record's frames as the protocol samples them (a vt_data.video.VideoClip), or `Failed`."""
    from vt_data.video import VideoDecodeError, read_video

    try:
        return read_video(
            str(video_path(benchmark, record)),
            num_frames=protocol.num_frames,
            fps=protocol.fps,
            max_frames=protocol.max_frames,
            rule=protocol.frame_rule,
            backend=protocol.video_backend,
        )
    except VideoDecodeError as exc:
        return Failed(str(exc))


def prefetch(fn: Callable[[T], Any], items: Sequence[T], workers: int) -> Iterator[tuple[T, Any]]:
    """(item, fn(item)) in order; with workers > 0, up to 2 × workers items are decoded ahead on threads
    (decord and PyAV release the GIL) while the model generates."""
    if workers <= 0:
        for item in items:
            yield item, fn(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    lookahead = 2 * workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vt-eval-decode") as pool:
        pending: deque = deque()
        it = iter(items)
        for item in it:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= lookahead:
                break
        while pending:
            item, future = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(fn, nxt)))
            yield item, future.result()


__all__ = ["Failed", "prefetch", "read_clip", "video_path"]
