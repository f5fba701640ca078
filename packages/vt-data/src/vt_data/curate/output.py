"""The last stage: write each split's records (`<out_dir>/<split>.jsonl`) and WebDataset shards
(`<out_dir>/shards/<split>/`, `vt_data.shards.write_shards`), after a final check that every record
validates and every trace passes the strict format check (a record that does not is dropped, never
written). Both splits are always written, an empty one as an empty file and an empty shard index, so a
rerun never leaves a stale split behind. Nothing is written in a dry run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vt_data.curate.pipeline import Context, StageResult, provenance
from vt_data.records import VideoQA, validate, write_records
from vt_data.trace import check_format

SPLITS = ("train", "test")


def record_problems(record: VideoQA) -> list[str]:
    """Why a record must not be written: validation problems, then trace format problems."""
    problems = [str(p) for p in validate(record)]
    if record.process.strip():
        check = check_format(record.target, duration=record.duration)
        problems += check.reasons
    return problems


@dataclass
class WriteOutputs:
    """Stage `shard`: records -> `<split>.jsonl` and shards; passes the written records on."""

    shard: bool = True
    max_count: int = 256
    max_bytes: int = 1 << 30
    name: str = "shard"

    def __call__(self, records: list[VideoQA], ctx: Context) -> StageResult:
        out = StageResult([])
        for record in records:
            problems = record_problems(record)
            if problems:
                out.drop(self.name, record, "invalid_record", "; ".join(problems[:3]))
            else:
                out.records.append(record)
        if ctx.dry_run:
            out.counts["skipped_dry_run"] = 1
            return out
        for split in SPLITS:
            part = [r for r in out.records if provenance(r).get("split", "train") == split]
            out.counts[f"{split}_records"] = write_records(part, ctx.out_dir / f"{split}.jsonl")
            if self.shard:
                from vt_data.shards.writer import write_shards

                index = write_shards(part, ctx.video_root, ctx.out_dir / "shards" / split,
                                     max_count=self.max_count, max_bytes=self.max_bytes,
                                     progress=ctx.progress)
                out.counts[f"{split}_shards"] = len(index["shards"])
        return out

    def describe(self) -> dict[str, Any]:
        return {"shard": self.shard, "max_count": self.max_count, "layout": "<out_dir>/shards/<split>/"}
