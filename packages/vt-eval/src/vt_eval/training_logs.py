"""Training curves of a pipeline's runs, read from the logs each training run writes under its run
directory: logs/steps.jsonl (vt_model's StepLog: loss per optimizer step) and logs/grpo.jsonl (vt_grpo's
GRPOMetricsLog: total and per-function reward per GRPO step), as `Curve`s that vt_eval.plots draws
beside the stage table of vt_eval.stages.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only annotations: vt_eval.stages imports this module (through vt_eval.plots)
    from vt_eval.stages import StageRun

log = logging.getLogger("vt_eval")

SFT_LOG = Path("logs") / "steps.jsonl"
GRPO_LOG = Path("logs") / "grpo.jsonl"
TOTAL_REWARD = "reward_mean"
REWARD_PREFIX, REWARD_SUFFIX = "reward/", "_mean"


@dataclass(frozen=True)
class Curve:
    """One line of a plot: the run's stage (its colour), its name (legend), x and y."""

    stage: str
    name: str
    steps: list[int]
    values: list[float]


def read_step_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a training log (steps.jsonl, grpo.jsonl), one per step in step order.

    A resumed run logs the steps after its checkpoint again: the later line wins, as it belongs to the
    history the final model continued. A torn last line (a run killed mid-write) is dropped; a bad line
    followed by good ones is corruption and raises ValueError."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    records: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if not any(rest.strip() for rest in lines[number:]):
                log.warning("%s: torn last line %d dropped", path, number)
                continue
            raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{path}:{number}: a log line without a step")
        records[int(record["step"])] = record
    return [records[step] for step in sorted(records)]


def series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the records, leaving out lines without a finite value."""
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            steps.append(int(record["step"]))
            values.append(float(value))
    return steps, values


def _log_path(run: StageRun, log_name: Path) -> Path | None:
    if run.train_dir is None:
        return None
    path = run.train_dir / log_name
    return path if path.is_file() else None


def loss_curves(runs: Sequence[StageRun]) -> list[Curve]:
    """Loss per optimizer step of every supervised run (logs/steps.jsonl). GRPO runs write steps.jsonl
    too (vt_model's StepLog), but their loss is the policy-gradient surrogate, not comparable: a run with
    logs/grpo.jsonl is left out."""
    curves = []
    for run in runs:
        path = _log_path(run, SFT_LOG)
        if path is None or _log_path(run, GRPO_LOG) is not None:
            continue
        steps, values = series(read_step_log(path), "loss")
        if steps:
            curves.append(Curve(run.stage, run.name, steps, values))
    return curves


def reward_names(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The reward functions logged as `reward/<name>_mean`, in order of first appearance."""
    keys = (k for record in records for k in record)
    return list(
        dict.fromkeys(
            k[len(REWARD_PREFIX) : -len(REWARD_SUFFIX)]
            for k in keys
            if k.startswith(REWARD_PREFIX) and k.endswith(REWARD_SUFFIX)
        )
    )


def reward_curves(runs: Sequence[StageRun]) -> dict[str, list[Curve]]:
    """Panel title -> one curve per GRPO run (logs/grpo.jsonl): "total" (reward_mean) first, then each
    reward function (reward/<name>_mean)."""
    logs = [(run, read_step_log(path)) for run in runs if (path := _log_path(run, GRPO_LOG)) is not None]
    names = reward_names(record for _, records in logs for record in records)
    panels: dict[str, list[Curve]] = {}
    for title, key in [("total", TOTAL_REWARD), *((n, f"{REWARD_PREFIX}{n}{REWARD_SUFFIX}") for n in names)]:
        curves = [Curve(run.stage, run.name, *series(records, key)) for run, records in logs]
        curves = [c for c in curves if c.steps]
        if curves:
            panels[title] = curves
    return panels


__all__ = [
    "Curve",
    "GRPO_LOG",
    "SFT_LOG",
    "loss_curves",
    "read_step_log",
    "reward_curves",
    "reward_names",
    "series",
]
