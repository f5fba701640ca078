"""The first two stages: source conversion (Step 1 converters) and the 64-frame quality filter.

Sources are named in config (conf/curate/sources/*.yaml), each with a converter, its annotation file,
its category and where its videos are:

* category "caption": caption-labelled sources (ActivityNet Captions, YouCook2, TutorialVQA): grounding
  records, grouped per video by the question stage into one multiple-choice question;
* category "qa": QA-labelled sources (STAR, ScaleLong, LVBench): multiple-choice records whose segments
  get answer-conditioned captions from the caption stage.

Record paths become relative to the run's `video_root` by prefixing the source's `video_dir` (an
absolute `video_dir` gives absolute paths), so one root serves every source when sharding.

The synthetic dataset enters twice: as itself (`video_r1` converter, category qa) and as
`synthetic_segments` (registered here): one grounding record per clip segment, so the rule-based run
also exercises the question stage.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vt_data.converters import ConversionResult, convert, register_converter
from vt_data.curate.pipeline import CATEGORIES, Context, StageResult, provenance, with_provenance
from vt_data.records import Segment, VideoQA, iter_records
from vt_data.timespan import format_span

# The problem type each category's converter must produce.
_CATEGORY_TYPES = {"caption": "grounding", "qa": "multiple choice"}


@dataclass(frozen=True)
class SourceSpec:
    """One source: `converter` (a vt_data.converters name), `annotations` (its file), `category`,
    `video_dir` (prefix for its record paths), converter `options`, and `min_frames` (None: the quality
    filter's default)."""

    converter: str
    annotations: str
    category: str
    video_dir: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    min_frames: int | None = None

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"source category must be one of {CATEGORIES}, got {self.category!r}")

    @classmethod
    def coerce(cls, obj: SourceSpec | Mapping[str, Any]) -> SourceSpec:
        return obj if isinstance(obj, SourceSpec) else cls(**dict(obj))


def _specs(sources: Mapping[str, Any] | None) -> dict[str, SourceSpec]:
    return {name: SourceSpec.coerce(spec) for name, spec in (sources or {}).items() if spec is not None}


@register_converter("synthetic_segments")
def convert_synthetic_segments(path: Path, *, data_source: str = "synthetic_captions") -> ConversionResult:
    """Synthetic records (vt-data synth JSONL) -> one grounding record per segment of each clip (from
    extra["video_segments"]), i.e. the clip seen as a caption-labelled source."""
    result = ConversionResult()
    seen: set[str] = set()
    for _, record in iter_records(path):
        segments = record.extra.get("video_segments")
        if record.path in seen or not segments:
            continue
        seen.add(record.path)
        clip = Path(record.path).stem
        result.counts["videos"] += 1
        for index, (start, end, caption) in enumerate(segments):
            result.records.append(VideoQA(
                problem=caption, path=record.path, data_source=data_source, problem_type="grounding",
                solution=f"<answer>{format_span(start, end)}</answer>", problem_id=f"{clip}_{index}",
                duration=record.duration, segments=[Segment(start, end, caption)],
                extra={"video_id": clip}))
    return result


@dataclass
class ConvertSources:
    """Stage `convert`: every configured source through its converter; records tagged with provenance
    {source, category}. A record whose problem type does not fit its category is dropped."""

    sources: Mapping[str, Any]
    name: str = "convert"

    def __post_init__(self) -> None:
        self.specs = _specs(self.sources)
        if not self.specs:
            raise ValueError("no sources configured")

    def __call__(self, records: list[VideoQA], ctx: Context) -> StageResult:
        out = StageResult(list(records))
        for source, spec in self.specs.items():
            converted = convert(spec.converter, spec.annotations, **dict(spec.options))
            for key, value in converted.counts.items():
                out.counts[f"{source}/{key}"] += value
            for record in converted.records:
                record = _with_video_dir(record, spec.video_dir)
                record = with_provenance(record, stage=self.name, outcome="ok", source=source,
                                         category=spec.category)
                if record.problem_type != _CATEGORY_TYPES[spec.category]:
                    out.drop(self.name, record, "category_mismatch",
                             f"{spec.category} sources need {_CATEGORY_TYPES[spec.category]} records, "
                             f"got {record.problem_type}", keep=False)
                    continue
                out.records.append(record)
        return out

    def describe(self) -> dict[str, Any]:
        return {name: {"converter": s.converter, "annotations": s.annotations, "category": s.category,
                       "video_dir": s.video_dir, "options": dict(s.options)}
                for name, s in self.specs.items()}


def _with_video_dir(record: VideoQA, video_dir: str) -> VideoQA:
    if not video_dir or "://" in record.path or Path(record.path).is_absolute():
        return record
    return record.replace(path=posixpath.join(video_dir, record.path.removeprefix("./")))


# --- the quality filter -------------------------------------------------------------------------
Probe = Callable[[str], Mapping[str, Any]]


def _default_probe(path: str) -> Mapping[str, Any]:
    from vt_data.video import probe_video

    return probe_video(path)


@dataclass
class QualityFilter:
    """Stage `quality` (method.md §5.2 step 1): drop records whose video is missing ("missing_video"),
    does not decode ("corrupt_video") or has fewer than `min_frames` frames ("too_few_frames"). A
    source's `min_frames` (from `sources`) overrides the default, e.g. for the 32-frame synthetic clips.
    Each video is probed once (frame count from the container's packet index, vt_data.video);
    `probe(path) -> {"total_frames", "duration"}` can be injected. Records without a duration get the
    probed one."""

    min_frames: int = 64
    sources: Mapping[str, Any] | None = None
    workers: int = 4
    probe: Probe | None = None
    name: str = "quality"

    def __post_init__(self) -> None:
        self.thresholds = {name: s.min_frames for name, s in _specs(self.sources).items()
                           if s.min_frames is not None}

    def __call__(self, records: list[VideoQA], ctx: Context) -> StageResult:
        out = StageResult([])
        paths = list(dict.fromkeys(str(ctx.video_path(r)) for r in records))
        probes = dict(zip(paths, ctx.engine.map(self.name, self._probe, paths, workers=self.workers),
                          strict=True))
        out.counts["videos_probed"] = len(paths)
        for record in records:
            status, info = probes[str(ctx.video_path(record))]
            threshold = self.thresholds.get(provenance(record).get("source"), self.min_frames)
            if status == "ok" and info["frames"] < threshold:
                status, info = "too_few_frames", f"{info['frames']} frames < {threshold}"
            if status != "ok":
                out.drop(self.name, record, status, str(info))
                continue
            if record.duration is None and info.get("duration"):
                record = record.replace(duration=float(info["duration"]))
            out.records.append(with_provenance(record, stage=self.name, outcome="ok", frames=info["frames"]))
        return out

    def _probe(self, path: str) -> tuple[str, Any]:
        from vt_data.video import VideoDecodeError

        if not Path(path).is_file():
            return "missing_video", f"not found: {path}"
        try:
            info = (self.probe or _default_probe)(path)
        except (VideoDecodeError, OSError, ValueError) as exc:
            return "corrupt_video", str(exc)
        return "ok", {"frames": int(info["total_frames"]), "duration": info.get("duration")}

    def describe(self) -> dict[str, Any]:
        return {"min_frames": self.min_frames, "per_source": dict(self.thresholds),
                "frame_count": "container packet index (vt_data.video.probe_video)"}
