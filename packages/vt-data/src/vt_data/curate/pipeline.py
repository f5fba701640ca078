"""The stage protocol, the run context, provenance helpers and `run_pipeline`, which runs stages in
order and writes the run's audit files.

A stage is a callable `(records, ctx) -> StageResult`: the records it passes on, counters, the
failures (one per dropped item, with a short reason code and a detail) and the dropped records worth
keeping for audit. Stages are dataclasses built by Hydra from conf/curate/curate.yaml; none of them
sees the config. An optional `describe()` returns the stage's decisions for the run report.

Audit files in `ctx.out_dir` (skipped in a dry run): `report.json` (per-stage in/out/dropped counts and
per-source counts, call counters, decisions), `failures.jsonl` (stage, key, reason, detail per dropped
item) and `rejected.jsonl` (the dropped records with their provenance, e.g. every checker verdict).

Provenance (`record.extra["provenance"]`): source (the config's source name), category ("caption" or
"qa"), stages (per model stage: model, cache keys, malformed-reply retries; a list for traces, one entry
per generation), outcomes ({stage: outcome}), and from the hindsight check regenerations,
checker_verdicts and verdict ("pass" / "fail").
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vt_data.curate.engine import CallEngine
from vt_data.files import write_json_atomic, write_jsonl_atomic
from vt_data.records import VideoQA, write_records

log = logging.getLogger("vt_data.curate")

CATEGORIES = ("caption", "qa")


@dataclass
class Context:
    """What every stage may use besides its own settings: where to write, where the videos are, the
    call engine, the run's seed and whether to draw progress bars."""

    out_dir: Path
    engine: CallEngine
    video_root: Path | None = None
    seed: int = 0
    progress: bool = True

    @property
    def dry_run(self) -> bool:
        return self.engine.dry_run

    def video_path(self, record: VideoQA) -> Path:
        path = Path(record.path)
        if path.is_absolute() or self.video_root is None:
            return path
        return self.video_root / record.path.removeprefix("./")


@dataclass(frozen=True)
class Failure:
    """One dropped item: the stage, the record key, a short reason code and a human-readable detail."""

    stage: str
    key: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"stage": self.stage, "key": self.key, "reason": self.reason, "detail": self.detail}


@dataclass
class StageResult:
    records: list[VideoQA]
    counts: Counter = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    rejected: list[VideoQA] = field(default_factory=list)

    def drop(self, stage: str, record: VideoQA, reason: str, detail: str = "", *, keep: bool = True,
             **provenance: Any) -> None:
        """Record `record` as dropped by `stage`; with `keep`, its record goes to rejected.jsonl."""
        self.failures.append(Failure(stage, record.key, reason, detail))
        if keep:
            self.rejected.append(with_provenance(record, stage=stage, outcome=reason, **provenance))


class Stage(Protocol):
    name: str

    def __call__(self, records: list[VideoQA], ctx: Context) -> StageResult: ...


# --- provenance ---------------------------------------------------------------------------------
def provenance(record: VideoQA) -> dict[str, Any]:
    """The record's provenance dict (empty when it has none); do not mutate, use `with_provenance`."""
    value = record.extra.get("provenance")
    return value if isinstance(value, dict) else {}


def with_provenance(record: VideoQA, *, stage: str | None = None, outcome: str | None = None,
                    stage_entry: Any = None, **updates: Any) -> VideoQA:
    """A copy of `record` whose provenance has `updates`, `outcomes[stage] = outcome` and
    `stages[stage] = stage_entry` (when given). Records are never mutated in place: a retried item
    must not see a half-updated record."""
    extra = dict(record.extra)
    prov = copy.deepcopy(provenance(record))
    prov.update(updates)
    if stage is not None and outcome is not None:
        prov.setdefault("outcomes", {})[stage] = outcome
    if stage is not None and stage_entry is not None:
        prov.setdefault("stages", {})[stage] = stage_entry
    extra["provenance"] = prov
    return record.replace(extra=extra)


def category(record: VideoQA) -> str | None:
    return provenance(record).get("category")


# --- running ------------------------------------------------------------------------------------
def _by_source(records: Iterable[VideoQA]) -> dict[str, int]:
    return dict(sorted(Counter(r.data_source for r in records).items()))


@dataclass
class RunResult:
    """The records that came out of the last stage and the run report."""

    records: list[VideoQA]
    report: dict[str, Any]


def run_pipeline(stages: Mapping[str, Stage], ctx: Context) -> RunResult:
    """Run `stages` in order from no records; unless dry run, write the report and audit files."""
    records: list[VideoQA] = []
    failures: list[Failure] = []
    rejected: list[VideoQA] = []
    report: dict[str, Any] = {"dry_run": ctx.dry_run, "stages": {}}
    for name, stage in stages.items():
        before = len(records)
        result = stage(records, ctx)
        records = result.records
        failures += result.failures
        rejected += result.rejected
        dropped = Counter(f.reason for f in result.failures)
        report["stages"][name] = {"in": before, "out": len(records), "dropped": dict(sorted(dropped.items())),
                                  "counts": dict(sorted(result.counts.items())),
                                  "by_source": _by_source(records)}
        log.info("stage %s: %d -> %d records; dropped %s", name, before, len(records),
                 dict(dropped) or "none")
    report["calls"] = ctx.engine.summary()
    report["decisions"] = {"engine": ctx.engine.describe(),
                           **{name: stage.describe() for name, stage in stages.items()
                              if hasattr(stage, "describe")}}
    report["final"] = {"records": len(records), "by_source": _by_source(records),
                       "by_split": dict(sorted(Counter(provenance(r).get("split", "train")
                                                       for r in records).items()))}
    if not ctx.dry_run:
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(ctx.out_dir / "failures.jsonl", (f.to_dict() for f in failures))
        write_records(rejected, ctx.out_dir / "rejected.jsonl")
        write_json_atomic(ctx.out_dir / "report.json", report, indent=1)
    return RunResult(records, report)
