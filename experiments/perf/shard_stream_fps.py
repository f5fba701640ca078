"""Frames/s of the shard stream (tar read + decode from bytes) against decoding the same files from disk.

Writes --clips synthetic H.264 clips (default 48 x 8 s, 224x224, 30 fps: a moving pattern with texture and
noise, so the encoder produces realistic P/B frames and file sizes) into shards, then, for each worker
count, times one pass over all clips two ways, both through a torch DataLoader with that many worker
processes and `read_video(..., num_frames=16)` with the same backend:

* decode-only bound: a map-style dataset of the files on disk;
* shard stream: `vt_data.shards.make_loader` over the shards (videos decoded from in-memory bytes).

The clips are cached in --work-dir between runs. Each figure is the best of --repeats passes after one
warm-up pass (so the page cache holds the files for both); frames per CPU-second (this process plus
its workers, median) is printed too, as it barely depends on what else runs on the machine. Not a test.

    python experiments/perf/shard_stream_fps.py --clips 48 --workers 1 2
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vt_data.records import VideoQA
from vt_data.shards.stream import StreamConfig, make_loader
from vt_data.shards.writer import write_shards
from vt_data.video import encode_video, read_video


def synthetic_clip(seed: int, frames: int, size: int) -> np.ndarray:
    """A textured background panning under a moving bright square, plus a little noise."""
    rng = np.random.default_rng(seed)
    xx = np.mgrid[0:size, 0:size][1].astype(np.float32)
    texture = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        shift = (t * 2) % size
        frame = np.roll(texture, shift, axis=1).astype(np.float32)
        frame[..., 0] = 0.6 * frame[..., 0] + 40 * (1 + np.sin((xx + 3 * t) / 17.0))
        cx, cy = int((size / 2) + size / 3 * np.cos(t / 20)), int((size / 2) + size / 3 * np.sin(t / 15))
        frame[max(cy - 16, 0):cy + 16, max(cx - 16, 0):cx + 16] = 255
        frame += rng.normal(0, 4, frame.shape)
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def make_clips(root: Path, clips: int, seconds: float, size: int, fps: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(clips):
        path = root / f"clip{i:04d}_{size}px_{seconds:g}s_{fps}fps.mp4"
        if not path.exists():
            tmp = path.with_suffix(".tmp.mp4")
            encode_video(synthetic_clip(i, int(seconds * fps), size), tmp, fps, crf=23)
            tmp.replace(path)
        paths.append(path)
    return paths


class FileClips(Dataset):
    def __init__(self, paths: list[Path], num_frames: int, backend: str):
        self.paths, self.num_frames, self.backend = [str(p) for p in paths], num_frames, backend

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return read_video(self.paths[i], num_frames=self.num_frames, max_frames=self.num_frames,
                          backend=self.backend)


def _identity(x):
    return x


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(frames_of) -> tuple[float, float]:
    """(frames per wall second, frames per CPU second); the second barely moves with machine load."""
    cpu, start = cpu_seconds(), time.perf_counter()
    frames = frames_of()
    return frames / (time.perf_counter() - start), frames / (cpu_seconds() - cpu)


def time_files(paths, workers: int, num_frames: int, backend: str) -> tuple[float, float]:
    loader = DataLoader(FileClips(paths, num_frames, backend), batch_size=None, num_workers=workers,
                        collate_fn=_identity)
    return timed(lambda: sum(clip.frames.shape[0] for clip in loader))


def time_shards(shards: Path, workers: int, num_frames: int, backend: str,
                shuffle: bool) -> tuple[float, float]:
    loader = make_loader(StreamConfig(shards, num_frames=num_frames, max_frames=num_frames, backend=backend,
                                      shuffle=shuffle), num_workers=workers)
    result = timed(lambda: sum(s["clip"].frames.shape[0] for s in loader))
    assert loader.stats.skipped == 0, loader.stats.as_dict()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--frames", type=int, default=16, help="frames decoded per video")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backend", default="decord", choices=["decord", "pyav"])
    parser.add_argument("--max-count", type=int, default=16, help="samples per shard")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shuffle", action="store_true", help="shard shuffle + 64-sample buffer")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "vt_shard_stream_fps")
    args = parser.parse_args()

    torch.set_num_threads(1)
    start = time.perf_counter()
    paths = make_clips(args.work_dir / "clips", args.clips, args.seconds, args.size, args.fps)
    made = time.perf_counter() - start
    records = [VideoQA(problem=f"q{i}", path=str(p), data_source="bench", problem_id=i,
                       options=["A. a", "B. b"], solution="<answer>A</answer>") for i, p in enumerate(paths)]
    index = write_shards(records, None, args.work_dir / "shards", max_count=args.max_count, progress=False)
    mb = sum(p.stat().st_size for p in paths) / 1e6

    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"os.cpu_count()={os.cpu_count()} | usable cpus={len(os.sched_getaffinity(0))} | "
          f"python {platform.python_version()} | torch {torch.__version__} | "
          f"load average {os.getloadavg()[0]:.1f} (other processes share these cpus)")
    print(f"clips: {args.clips} x {args.seconds:g} s, {args.size}x{args.size} @ {args.fps} fps H.264 "
          f"({mb:.1f} MB, {mb / args.clips:.2f} MB/clip; ready in {made:.1f} s) | "
          f"{len(index['shards'])} shards of <= {args.max_count} | {args.frames} frames/video | "
          f"backend {args.backend} | shuffle {args.shuffle} | best of {args.repeats} after a warm-up")
    print()
    print(f"{'workers':>7} | {'decode-only frames/s':>20} | {'shard stream frames/s':>21} | {'ratio':>5} | "
          f"{'frames/CPU-s: decode-only':>25} | {'shard stream':>12} | {'ratio':>5}")
    print(f"{'-' * 7}-+-{'-' * 20}-+-{'-' * 21}-+-{'-' * 5}-+-{'-' * 25}-+-{'-' * 12}-+-{'-' * 5}")
    for workers in args.workers:
        files, shards = [], []
        time_files(paths, workers, args.frames, args.backend)  # warm-up: page cache, imports
        time_shards(args.work_dir / "shards", workers, args.frames, args.backend, args.shuffle)
        for repeat in range(args.repeats):
            # Interleaved, in alternating order, so drift in machine load hits both alike.
            for which in ((0, 1) if repeat % 2 == 0 else (1, 0)):
                if which == 0:
                    files.append(time_files(paths, workers, args.frames, args.backend))
                else:
                    shards.append(time_shards(args.work_dir / "shards", workers, args.frames, args.backend,
                                              args.shuffle))
        bound, stream = max(w for w, _ in files), max(w for w, _ in shards)
        cpu_bound, cpu_stream = (statistics.median(c for _, c in runs) for runs in (files, shards))
        print(f"{workers:>7} | {bound:>20.1f} | {stream:>21.1f} | {stream / bound:>5.2f} | "
              f"{cpu_bound:>25.1f} | {cpu_stream:>12.1f} | {cpu_stream / cpu_bound:>5.2f}"
              f"   (wall medians {statistics.median(w for w, _ in files):.1f} / "
              f"{statistics.median(w for w, _ in shards):.1f}; load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
