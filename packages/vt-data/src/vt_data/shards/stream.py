"""Streaming shards to training: `make_stream` / `make_loader` yield `{"key", "record", "clip", "url"}`.

A sample whose video (or record) fails to decode is skipped, counted and logged once per key; it is
never replaced by another sample (peers.md pain point 4). `ShardLoader.stats` aggregates the counts of
every worker: each item a worker sends carries that worker's running counters, and a worker whose last
samples were skipped sends one counters-only item that the loader consumes.

Splitting (style.md A5). `rank`/`world_size` come from the config, else torch.distributed, else the
RANK/WORLD_SIZE environment, else (0, 1).

* Finite mode (`resampled=False`): one epoch is every sample once. The shard order is shuffled per
  (seed, epoch), identically on every rank, and the resulting sample sequence is cut into `world_size`
  contiguous ranges of `total // world_size` samples, using the per-shard counts from `index.json`. Each
  rank's range is cut likewise between its DataLoader workers. So every rank gets the same number of
  samples, no sample is seen twice, and the `total % world_size` (< world_size) samples at the end of the
  epoch's sequence are dropped for that epoch (which ones rotates with the shuffled shard order). A split
  by whole shards (webdataset's `split_by_node`) would give ranks different counts and hang DDP.
* Resampled mode (`resampled=True`, for multi-GPU training): each (rank, worker) draws shards with
  replacement from its own seeded RNG, forever; the loader stops after exactly `samples_per_rank`
  samples (or `samples_per_rank // batch_size` batches). The length is enforced by the loader, not the
  dataset, so it is not multiplied by the number of workers, and skipped samples do not shorten it.
  In finite mode a skipped (corrupt) sample does shorten its rank's epoch: use resampled mode for DDP
  training on data that may hold undecodable videos.

Order and resume. The stream of every worker is a pure function of (seed, epoch, rank, world_size,
worker, num_workers, shards): shard order, a seeded shuffle buffer over the raw (undecoded) samples, then
decoding. `ShardLoader.state_dict()` records the epoch and, per worker, the cursor: how many samples that
worker had taken from its shuffled sequence (decoded or skipped) up to the last item the consumer
received. `load_state_dict()` makes the next iteration resume there: each worker skips its first
`cursor` samples without decoding them (their bytes are still read through the shuffle buffer), and
the resampled loader yields only the rest of `samples_per_rank`. Prefetched but unconsumed items are
produced again, so nothing is lost or repeated. With `num_workers=0` the cursor is simply "skip the
first N samples of this rank". The worker count and world size must match at resume. The loader is a
cursor: iterating it again after stopping early continues the same epoch; a finished epoch moves it to
the next one; `set_epoch(e)` jumps to the start of epoch `e` (unless it already stands in `e`).

Memory: a worker holds at most `shuffle_buffer` compressed samples (not decoded frames) plus the sample
being decoded; shards are streamed member by member and never held whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import IterableDataset

from vt_data.records import VideoQA
from vt_data.shards.layout import VIDEO_EXTENSIONS
from vt_data.shards.reader import iter_shard_samples, list_shards, shard_counts

logger = logging.getLogger(__name__)

_MAX_FAILURES_KEPT = 1000
_MAX_SKIPS_IN_A_ROW = 1000


@dataclass
class StreamConfig:
    """What to read and how. `urls`: anything `list_shards` accepts. Frame sampling (`num_frames`,
    `fps`, `max_frames`, `backend`) is passed to `vt_data.video.read_video`. `samples_per_rank` is the
    epoch length in resampled mode (required there; finite mode ignores it, its length is
    total // world_size). `rank`/`world_size` override torch.distributed. `shuffle_buffer` is counted
    in compressed samples per worker."""

    urls: Any
    num_frames: int | None = 16
    fps: float | None = None
    max_frames: int = 16
    backend: str = "decord"
    shuffle: bool = True
    shuffle_buffer: int = 64
    seed: int = 0
    resampled: bool = False
    samples_per_rank: int | None = None
    rank: int | None = None
    world_size: int | None = None


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def _node_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise ValueError("give both rank and world_size, or neither")
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not (world_size >= 1 and 0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def _worker_info() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _split(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) cut into `parts` contiguous ranges whose sizes differ by at most one."""
    size, extra = divmod(stop - start, parts)
    bounds, at = [], start
    for i in range(parts):
        n = size + (i < extra)
        bounds.append((at, at + n))
        at += n
    return bounds


@dataclass
class WorkerCounts:
    """One worker's running counters for one epoch; `cursor` counts samples taken (decoded or skipped)."""

    decoded: int = 0
    skipped: int = 0
    cursor: int = 0


@dataclass
class SkippedSample:
    key: str
    url: str
    reason: str
    worker: int
    epoch: int


@dataclass
class StreamStats:
    """Decoded/skipped counts of one rank's loader: totals over its lifetime, per worker for the
    current (or last) iteration, and the skipped samples themselves (the first 1000). Counts are
    per rank; sum them over ranks (e.g. all_reduce) for a global figure."""

    epoch: int = 0
    per_worker: dict[int, WorkerCounts] = field(default_factory=dict)
    failures: list[SkippedSample] = field(default_factory=list)
    _decoded_before: int = 0
    _skipped_before: int = 0

    @property
    def decoded(self) -> int:
        return self._decoded_before + sum(c.decoded for c in self.per_worker.values())

    @property
    def skipped(self) -> int:
        return self._skipped_before + sum(c.skipped for c in self.per_worker.values())

    def start_epoch(self, epoch: int) -> None:
        self._decoded_before, self._skipped_before = self.decoded, self.skipped
        self.epoch, self.per_worker = epoch, {}

    def update(self, report: dict[str, Any]) -> None:
        counts = WorkerCounts(report["decoded"], report["skipped"], report["cursor"])
        self.per_worker[report["worker"]] = counts
        for key, url, reason in report["failures"]:
            if len(self.failures) < _MAX_FAILURES_KEPT:
                self.failures.append(SkippedSample(key, url, reason, report["worker"], report["epoch"]))

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "decoded": self.decoded, "skipped": self.skipped,
                "per_worker": {w: dataclasses.asdict(c) for w, c in sorted(self.per_worker.items())},
                "failures": [dataclasses.asdict(f) for f in self.failures]}


class ShardStream(IterableDataset):
    """The streaming dataset of `make_stream`. Iterated directly (or by a user's DataLoader) it yields
    sample dicts, each with a `"__stats__"` report of its worker's counters; `make_loader` is the
    supported way to get equal per-rank lengths, aggregated stats and resume."""

    def __init__(self, config: StreamConfig):
        super().__init__()
        if config.resampled and config.samples_per_rank is None:
            raise ValueError("resampled=True needs samples_per_rank (the fixed epoch length per rank)")
        if config.shuffle and config.shuffle_buffer < 1:
            raise ValueError("shuffle_buffer must be >= 1")
        self.config = config
        self.urls = list_shards(config.urls)
        if not self.urls:
            raise ValueError(f"no shards in {config.urls!r}")
        self.rank, self.world_size = _node_info(config.rank, config.world_size)
        # Counts are needed to cut the epoch into equal per-rank ranges (finite mode only).
        self.counts = None if config.resampled else shard_counts(self.urls)
        if self.counts is not None and sum(self.counts) < self.world_size:
            raise ValueError(f"{sum(self.counts)} samples cannot give each of {self.world_size} ranks one")
        self.epoch = 0
        self.cursors: dict[int, int] = {}
        self._logged: set[tuple[str, str]] = set()

    # -- epoch and position ------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_cursors(self, cursors: dict[int, int]) -> None:
        """Per-worker number of samples to skip (not decode) at the start of the next iteration."""
        self.cursors = {int(w): int(c) for w, c in cursors.items()}

    @property
    def total(self) -> int | None:
        return None if self.counts is None else sum(self.counts)

    def samples_per_rank(self) -> int:
        """The epoch length of every rank: total // world_size, or samples_per_rank when resampled."""
        if self.config.resampled:
            return int(self.config.samples_per_rank)
        return sum(self.counts) // self.world_size

    def worker_ranges(self, num_workers: int, rank: int | None = None) -> list[tuple[int, int]]:
        """The [start, stop) positions in the epoch's sample sequence read by each worker of a rank."""
        per_rank = self.samples_per_rank()
        rank = self.rank if rank is None else rank
        return _split(rank * per_rank, (rank + 1) * per_rank, max(1, num_workers))

    def _shard_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.urls)))
        if self.config.shuffle:
            # The same on every rank (no rank in the seed): the ranks cut one common sequence.
            random.Random(_seed(self.config.seed, epoch, "shards")).shuffle(order)
        return order

    def _plan(self, epoch: int, worker: int, num_workers: int) -> list[tuple[str, int, int]]:
        """(url, skip, take) for the shards overlapping this worker's range of the epoch's sequence."""
        start, stop = self.worker_ranges(num_workers)[worker]
        plan, offset = [], 0
        for i in self._shard_order(epoch):
            count = self.counts[i]
            lo, hi = max(start, offset), min(stop, offset + count)
            if lo < hi:
                plan.append((self.urls[i], lo - offset, hi - lo))
            offset += count
        return plan

    def _raw_samples(self, epoch: int, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        cfg = self.config
        if cfg.resampled:
            rng = random.Random(_seed(cfg.seed, epoch, self.rank, worker, "resample"))
            empty = 0
            while True:
                found = False
                for sample in iter_shard_samples(rng.choice(self.urls)):
                    found = True
                    yield sample
                # An infinite stream over empty shards would hang the loader without a word.
                empty = 0 if found else empty + 1
                if empty >= 10 + 3 * len(self.urls):
                    raise RuntimeError(f"resampled stream: {empty} shards in a row had no samples")
        else:
            for url, skip, take in self._plan(epoch, worker, num_workers):
                yield from iter_shard_samples(url, skip=skip, take=take)

    # -- decoding ----------------------------------------------------------------------------------
    def _decode(self, sample: dict[str, Any]) -> dict[str, Any]:
        """The decoded sample, or raise _Skip with the reason."""
        from vt_data.records import RecordError
        from vt_data.video import VideoDecodeError, read_video

        key, url = sample["__key__"], sample["__url__"]
        if "__bad__" in sample:
            raise _Skip(sample["__bad__"])
        videos = sorted(ext for ext in sample if ext in VIDEO_EXTENSIONS)
        ignored = f" (ignored members: {', '.join(sample['__ignored__'])})" if "__ignored__" in sample else ""
        if "json" not in sample:
            raise _Skip("no .json member" + ignored)
        if len(videos) != 1:
            raise _Skip(f"expected one video member, found {len(videos)}" + ignored)
        try:
            record = VideoQA.from_json(sample["json"].decode("utf-8"), source=f"{url}#{key}")
        except (RecordError, UnicodeDecodeError) as exc:
            raise _Skip(f"bad record: {exc}") from None
        cfg = self.config
        try:
            clip = read_video(sample[videos[0]], num_frames=cfg.num_frames, fps=cfg.fps,
                              max_frames=cfg.max_frames, backend=cfg.backend, name=f"{url}#{key}.{videos[0]}")
        except VideoDecodeError as exc:
            raise _Skip(exc.reason) from None
        return {"key": key, "record": record, "clip": clip, "url": url}

    def iter_items(self) -> Iterator[tuple[dict[str, Any] | None, dict[str, Any]]]:
        """(sample or None, report) pairs; None only in a final counters-only pair, sent when this
        worker's last samples were skipped so that the loader still learns of them."""
        worker, num_workers = _worker_info()
        epoch, cfg = self.epoch, self.config
        start = self.cursors.get(worker, 0)
        samples = self._raw_samples(epoch, worker, num_workers)
        if cfg.shuffle:
            import webdataset as wds

            rng = random.Random(_seed(cfg.seed, epoch, self.rank, worker, "samples"))
            # Shuffled before decoding: the buffer holds compressed bytes, not decoded frames.
            samples = wds.shuffle(cfg.shuffle_buffer, initial=cfg.shuffle_buffer, rng=rng)(samples)
        counts = WorkerCounts(cursor=start)
        failures: list[tuple[str, str, str]] = []
        reported = True

        def report() -> dict[str, Any]:
            out = {"worker": worker, "rank": self.rank, "epoch": epoch, "cursor": counts.cursor,
                   "decoded": counts.decoded, "skipped": counts.skipped, "failures": list(failures)}
            failures.clear()
            return out

        in_a_row = 0
        for position, sample in enumerate(samples):
            if position < start:
                continue  # resuming: taken before the checkpoint, not decoded again
            counts.cursor += 1
            try:
                decoded = self._decode(sample)
            except _Skip as exc:
                counts.skipped += 1
                in_a_row += 1
                if cfg.resampled and in_a_row >= _MAX_SKIPS_IN_A_ROW:
                    # An infinite stream of undecodable samples would otherwise never yield or end.
                    raise RuntimeError(f"{in_a_row} samples in a row failed to decode; last: {exc}") from None
                key, url, reason = sample["__key__"], sample["__url__"], str(exc)
                failures.append((key, url, reason))
                reported = False
                if (url, key) not in self._logged:  # once per sample and worker; resampled ones recur
                    self._logged.add((url, key))
                    logger.warning("skipping sample %s in %s (not replaced): %s", key, url, reason)
                continue
            counts.decoded += 1
            in_a_row = 0
            reported = True
            yield decoded, report()
        if not reported:
            yield None, report()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample, report in self.iter_items():
            if sample is not None:
                sample["__stats__"] = report
                yield sample


class _Skip(Exception):
    pass


def make_stream(config: StreamConfig) -> ShardStream:
    """The streaming dataset for `config` (see the module docstring for split, length and order)."""
    return ShardStream(config)


def _passthrough(item):
    return item


def list_collate(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The default batch: the list of sample dicts (clips differ in size until the processor runs)."""
    return samples


class _LoaderDataset(IterableDataset):
    """What the loader's DataLoader iterates: (payload or None, report) with batching in the worker."""

    def __init__(self, stream: ShardStream, batch_size: int | None, collate_fn: Callable | None):
        super().__init__()
        self.stream, self.batch_size = stream, batch_size
        self.collate_fn = collate_fn or list_collate

    def __iter__(self):
        if self.batch_size is None:
            yield from self.stream.iter_items()
            return
        batch, last = [], None
        for sample, report in self.stream.iter_items():
            last = report
            if sample is None:
                continue
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield self.collate_fn(batch), report
                batch, last = [], None
        # A partial last batch is kept (finite mode); the same on every rank, since ranges are equal.
        if batch:
            yield self.collate_fn(batch), last
        elif last is not None:
            yield None, last


class ShardLoader:
    """One rank's loader: a torch DataLoader over the stream plus the epoch, the fixed length
    (resampled mode), aggregated `stats`, and `state_dict`/`load_state_dict` for resume."""

    def __init__(self, stream: ShardStream, *, batch_size: int | None = None, num_workers: int = 0,
                 collate_fn: Callable | None = None, **dataloader_kwargs: Any):
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1 or None")
        self.stream, self.batch_size, self.num_workers = stream, batch_size, num_workers
        self.stats = StreamStats()
        self._dataset = _LoaderDataset(stream, batch_size, collate_fn)
        self._dataloader_kwargs = dataloader_kwargs
        # Where the next item comes from: the epoch, items already yielded in it, per-worker cursors.
        self._position: dict[str, Any] = {"epoch": 0, "yielded": 0, "cursors": {}}

    # -- length and epoch --------------------------------------------------------------------------
    def __len__(self) -> int:
        """Items (samples, or batches) per epoch on this rank; in finite mode, skipped samples make
        the actual count smaller."""
        if self.stream.config.resampled:
            n = self.stream.samples_per_rank()
            return n if self.batch_size is None else n // self.batch_size
        ranges = self.stream.worker_ranges(self.num_workers)
        if self.batch_size is None:
            return sum(b - a for a, b in ranges)
        return sum(-(-(b - a) // self.batch_size) for a, b in ranges)

    @property
    def epoch(self) -> int:
        return self._position["epoch"]

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its beginning at the next iteration, unless the loader already
        stands in that epoch (e.g. right after `load_state_dict`), whose position is then kept.
        Without calls, a finished epoch moves the loader to the start of the next one."""
        if int(epoch) != self._position["epoch"]:
            self._position = {"epoch": int(epoch), "yielded": 0, "cursors": {}}

    def state_dict(self) -> dict[str, Any]:
        """Where this rank's stream stands: the epoch and per-worker cursors as of the last item the
        consumer received (after a finished epoch: the start of the next one). JSON-serialisable."""
        pos = self._position
        return {"epoch": pos["epoch"], "yielded": pos["yielded"],
                "cursors": {str(w): c for w, c in sorted(pos["cursors"].items())},
                "num_workers": self.num_workers, "world_size": self.stream.world_size,
                "rank": self.stream.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, mine in (("num_workers", self.num_workers), ("world_size", self.stream.world_size),
                           ("rank", self.stream.rank)):
            if state.get(name, mine) != mine:
                raise ValueError(f"cannot resume a stream saved with {name}={state[name]} with {name}={mine}")
        self._position = {"epoch": int(state["epoch"]), "yielded": int(state["yielded"]),
                          "cursors": {int(w): int(c) for w, c in state["cursors"].items()}}

    # -- iteration ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        """The rest of the current epoch (all of it unless a previous iteration stopped early or a
        state was loaded); when it ends, the loader moves to the next epoch."""
        from torch.utils.data import DataLoader

        pos = self._position
        epoch = pos["epoch"]
        self.stream.set_epoch(epoch)
        self.stream.set_cursors(pos["cursors"])
        self.stats.start_epoch(epoch)
        # Fixed length only when resampled: the loader, not each worker, stops the infinite stream.
        limit = len(self) if self.stream.config.resampled else None
        loader = DataLoader(self._dataset, batch_size=None, num_workers=self.num_workers,
                            collate_fn=_passthrough, persistent_workers=False, **self._dataloader_kwargs)
        iterator = iter(loader)
        try:
            while limit is None or pos["yielded"] < limit:
                try:
                    payload, report = next(iterator)
                except StopIteration:
                    break
                self.stats.update(report)
                pos["cursors"][report["worker"]] = report["cursor"]
                if payload is None:
                    continue
                pos["yielded"] += 1
                yield payload
            self._position = {"epoch": epoch + 1, "yielded": 0, "cursors": {}}
        finally:
            # Stops the workers of an infinite stream now rather than at garbage collection.
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self.stream.set_cursors({})


def make_loader(config: StreamConfig, *, batch_size: int | None = None, num_workers: int = 0,
                collate_fn: Callable[[list[dict[str, Any]]], Any] | None = None,
                **dataloader_kwargs: Any) -> ShardLoader:
    """A `ShardLoader` over `make_stream(config)`. Batches are built in the workers by `collate_fn`
    (default: a list of sample dicts). Extra keyword arguments go to torch's DataLoader (e.g.
    `prefetch_factor`, `multiprocessing_context`, `pin_memory`)."""
    return ShardLoader(make_stream(config), batch_size=batch_size, num_workers=num_workers,
                       collate_fn=collate_fn, **dataloader_kwargs)
