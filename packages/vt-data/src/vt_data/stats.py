"""Counts that describe a dataset at a glance: per source, problem and question type, gold answer,
trace coverage and validation outcome, and for curated data (vt_data.curate) the checker verdicts,
regenerations and per-stage outcomes (`vt-data stats`). Reads record files or shard directories."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vt_data.records import VideoQA, iter_records, validate


def question_type(record: VideoQA) -> str:
    """The finest category a record carries: ours (synthetic), the benchmark's own, or the problem type."""
    return str(record.extra.get("question_type") or record.extra.get("original_question_type")
               or record.problem_type)


def summarize(records: Iterable[VideoQA]) -> dict[str, Any]:
    by_source: Counter[str] = Counter()
    by_problem_type: Counter[str] = Counter()
    by_question_type: Counter[str] = Counter()
    gold: Counter[str] = Counter()
    outcome: Counter[str] = Counter()
    stage_outcomes: dict[str, Counter[str]] = {}
    regenerations: Counter[str] = Counter()
    total = traced = with_segments = invalid = 0
    for record in records:
        total += 1
        by_source[record.data_source] += 1
        by_problem_type[record.problem_type] += 1
        by_question_type[question_type(record)] += 1
        gold[str(record.gold)] += 1
        traced += bool(record.process.strip())
        with_segments += bool(record.segments)
        invalid += bool(validate(record))
        # Curation provenance (Step 6) records how a sample was produced; count it when present.
        provenance = record.extra.get("provenance")
        if isinstance(provenance, dict) and "verdict" in provenance:
            outcome[str(provenance["verdict"])] += 1
            regenerations[str(provenance.get("regenerations", 0))] += 1
        if isinstance(provenance, dict) and isinstance(provenance.get("outcomes"), dict):
            for stage, result in provenance["outcomes"].items():
                stage_outcomes.setdefault(str(stage), Counter())[str(result)] += 1
    summary: dict[str, Any] = {
        "records": total,
        "traced": traced,
        "answer_only": total - traced,
        "with_segments": with_segments,
        "invalid": invalid,
        "by_source": dict(sorted(by_source.items())),
        "by_problem_type": dict(sorted(by_problem_type.items())),
        "by_question_type": dict(sorted(by_question_type.items())),
        "gold_answers": dict(sorted(gold.items())),
    }
    if outcome:
        summary["curation_verdicts"] = dict(sorted(outcome.items()))
        summary["curation_regenerations"] = dict(sorted(regenerations.items()))
    if stage_outcomes:
        # {stage: {outcome: count}}, e.g. {"hindsight": {"pass": 9, "pass_after_1": 1}}.
        summary["curation_stage_outcomes"] = {stage: dict(sorted(c.items()))
                                              for stage, c in sorted(stage_outcomes.items())}
    return summary


def iter_path_records(path: str | Path) -> Iterable[VideoQA]:
    """Records from a .json/.jsonl file, or from every shard of a shard directory (no video decoding)."""
    path = Path(path)
    if path.is_dir():
        from vt_data.shards.reader import iter_shard_records

        yield from iter_shard_records(path)
    else:
        for _, record in iter_records(path):
            yield record


def summarize_paths(paths: Iterable[str | Path]) -> dict[str, Any]:
    return {str(p): summarize(iter_path_records(p)) for p in paths}
