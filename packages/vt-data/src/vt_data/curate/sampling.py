"""Balanced sampling to a target size (method.md §5.2 step 6) and the per-source 1:9 test/train split
(§5.3). Both are pure functions of the records and the seed.

Balancing is hierarchical over `levels` (default: source, then question type): the target is shared
equally between the groups of the first level, a group smaller than its share gives the rest to the
others ("water-filling"), and each group's quota is shared the same way over the next level. The leaf
groups are sampled by a seeded permutation named after the group, so adding a source does not reshuffle
the others; the output keeps the input order.

The split works per source on whole videos (every question about one video lands in the same part,
so nothing leaks from train into test): videos are shuffled by a seed named after the source and taken
into test until it holds round(test_fraction × n) samples. Sources with fewer than `min_source_size`
samples, or listed in `no_test_sources` (TutorialVQA's 76, §5.3), get no test part.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vt_data.curate.pipeline import Context, StageResult, provenance, with_provenance
from vt_data.records import VideoQA
from vt_data.stats import question_type

LEVELS: dict[str, Callable[[VideoQA], str]] = {
    "data_source": lambda r: r.data_source,
    "question_type": question_type,
    "category": lambda r: str(provenance(r).get("category")),
}


def allot(sizes: dict[str, int], target: int) -> dict[str, int]:
    """Share `target` over groups of the given sizes as equally as they allow (water-filling); groups
    are served in name order, so the odd units go to the first names."""
    quota = dict.fromkeys(sizes, 0)
    remaining = min(target, sum(sizes.values()))
    active = sorted(k for k, n in sizes.items() if n > 0)
    while remaining > 0 and active:
        share = max(1, remaining // len(active))
        for key in list(active):
            give = min(share, sizes[key] - quota[key], remaining)
            quota[key] += give
            remaining -= give
            if quota[key] == sizes[key]:
                active.remove(key)
            if remaining == 0:
                break
    return quota


def _seeded(seed: int, *names: str) -> random.Random:
    # str seeds hash with SHA-512 in CPython: stable across runs and machines (unlike hash()).
    return random.Random(":".join([str(seed), *names]))


def balanced_indices(records: Sequence[VideoQA], target: int, levels: Sequence[str], seed: int) -> list[int]:
    """Indices of the sample (sorted), balanced over `levels` as in the module docstring."""
    keys = [tuple(LEVELS[level](r) for level in levels) for r in records]

    def pick(indices: list[int], quota: int, depth: int, path: tuple[str, ...]) -> list[int]:
        if depth == len(levels):
            order = list(indices)
            _seeded(seed, *path).shuffle(order)
            return order[:quota]
        groups: dict[str, list[int]] = {}
        for i in indices:
            groups.setdefault(keys[i][depth], []).append(i)
        quotas = allot({k: len(v) for k, v in groups.items()}, quota)
        return [i for k in sorted(groups) for i in pick(groups[k], quotas[k], depth + 1, (*path, k))]

    return sorted(pick(list(range(len(records))), target, 0, ()))


@dataclass
class BalancedSample:
    """Stage `balance`: `target_size` samples balanced over `levels` (None: keep everything)."""

    target_size: int | None = None
    levels: Sequence[str] = ("data_source", "question_type")
    seed: int = 0
    name: str = "balance"

    def __post_init__(self) -> None:
        self.levels = tuple(self.levels)
        unknown = set(self.levels) - set(LEVELS)
        if unknown:
            raise ValueError(f"unknown balance levels {sorted(unknown)}; known: {sorted(LEVELS)}")
        if self.target_size is not None and self.target_size < 0:
            raise ValueError("target_size must be >= 0")

    def __call__(self, records: list[VideoQA], ctx: Context) -> StageResult:
        if self.target_size is None or self.target_size >= len(records):
            kept = list(range(len(records)))
        else:
            kept = balanced_indices(records, self.target_size, self.levels, self.seed)
        out = StageResult([records[i] for i in kept])
        chosen = set(kept)
        for i, record in enumerate(records):
            if i not in chosen:
                out.drop(self.name, record, "not_sampled", keep=False)
        # Kept samples per leaf group, e.g. "ActivityNet/temporal order".
        out.counts.update("/".join(LEVELS[level](r) for level in self.levels) or "all" for r in out.records)
        return out

    def describe(self) -> dict[str, Any]:
        return {"target_size": self.target_size, "levels": list(self.levels), "seed": self.seed,
                "rule": "hierarchical water-filling, seeded per group"}


@dataclass
class SplitTestTrain:
    """Stage `split`: provenance["split"] = "test" / "train", per source and by whole videos."""

    test_fraction: float = 0.1
    min_source_size: int = 100
    no_test_sources: Sequence[str] = ("TutorialVQA",)
    strip_test_traces: bool = False
    seed: int = 0
    name: str = "split"

    def __post_init__(self) -> None:
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError("test_fraction must be in [0, 1)")
        self.no_test_sources = tuple(self.no_test_sources)

    def __call__(self, records: list[VideoQA], ctx: Context) -> StageResult:
        test = set()
        by_source: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            by_source.setdefault(record.data_source, []).append(i)
        for source, indices in sorted(by_source.items()):
            test |= self._test_part(source, indices, records)
        out = StageResult([])
        for i, record in enumerate(records):
            split = "test" if i in test else "train"
            if split == "test" and self.strip_test_traces:
                record = record.replace(process="")
            out.records.append(with_provenance(record, split=split))
            out.counts[f"{record.data_source}/{split}"] += 1
        return out

    def _test_part(self, source: str, indices: list[int], records: Sequence[VideoQA]) -> set[int]:
        if source in self.no_test_sources or len(indices) < self.min_source_size:
            return set()
        videos: dict[str, list[int]] = {}
        for i in indices:
            videos.setdefault(records[i].path, []).append(i)
        order = sorted(videos)
        _seeded(self.seed, "split", source).shuffle(order)
        want = round(self.test_fraction * len(indices))
        test: set[int] = set()
        for video in order:
            if len(test) >= want:
                break
            test.update(videos[video])
        return test

    def describe(self) -> dict[str, Any]:
        return {"test_fraction": self.test_fraction, "min_source_size": self.min_source_size,
                "no_test_sources": list(self.no_test_sources), "unit": "whole videos, per source",
                "strip_test_traces": self.strip_test_traces, "seed": self.seed}
