"""The sample plan of an evaluation and its split over data-parallel processes.

The plan is every record to evaluate (the first `limit` of the benchmark), each with a unique key, its
prompt template, its rendered prompt and that prompt's hash (the identity of one prediction).

Data parallel: one process per GPU, each given `rank` and `world_size` (or the launcher's RANK /
WORLD_SIZE or SLURM_PROCID / SLURM_NTASKS; `resolve_rank`). Rank r takes plan indices r, r + w, ...
(`shard_indices`: strided, so every rank sees every part of the benchmark) and writes its own
predictions file; no process group is needed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vt_data.records import VideoQA
from vt_eval.benchmarks import Benchmark
from vt_eval.protocol import Protocol, prompt_hash


@dataclass(frozen=True)
class Sample:
    """One planned evaluation: the record, its position in the benchmark, its rendered prompt."""

    index: int
    key: str
    record: VideoQA
    template: str
    prompt_text: str  # rendered without frame timestamps (they depend on the decoded video)
    prompt_hash: str


def sample_keys(records: Sequence[VideoQA]) -> list[str]:
    """`record.key` per record; a repeated key gets "#2", "#3", ... in order, so keys stay unique."""
    seen: dict[str, int] = {}
    keys = []
    for record in records:
        key = record.key
        seen[key] = seen.get(key, 0) + 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


def build_plan(
    benchmark: Benchmark, tokenizer: Any, protocol: Protocol, limit: int | None = None
) -> list[Sample]:
    """Every sample to evaluate (the first `limit` records), each with its prompt and prompt hash."""
    from vt_model.prompts import build_messages, render_prompt

    records = benchmark.records if limit is None else benchmark.records[: int(limit)]
    plan = []
    for index, (record, key) in enumerate(zip(records, sample_keys(records), strict=True)):
        template = protocol.template_for(record.problem_type)
        text = render_prompt(tokenizer, build_messages(record, template))
        plan.append(Sample(index, key, record, template, text, prompt_hash(text, protocol)))
    return plan


def shard_indices(num_samples: int, rank: int, world_size: int) -> list[int]:
    """Plan indices of rank `rank` of `world_size`: rank, rank + world_size, ..."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return list(range(rank, num_samples, world_size))


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values, else torchrun's RANK / WORLD_SIZE, else SLURM_PROCID / SLURM_NTASKS, else (0, 1)."""
    env = os.environ
    if rank is None:
        rank = int(env.get("RANK", env.get("SLURM_PROCID", 0)))
    if world_size is None:
        world_size = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1)))
    shard_indices(0, rank, world_size)  # validates
    return rank, world_size


__all__ = ["Sample", "build_plan", "resolve_rank", "sample_keys", "shard_indices"]
