"""Converters from each source's official annotation format to `VideoQA` records, in a registry.

`convert(source, path, **options)` runs the converter registered under `source` and returns a
`ConversionResult`: the records plus a `Counter` of everything worth knowing about the run. Nothing
is dropped or changed silently: every clipped or dropped span, skipped question and missing
annotation is counted under a name listed with its converter below. Malformed input raises
`RecordError` naming the file, the line (text/JSONL, 1-based) or list index (JSON, 0-based) and the
field. By default `convert` also runs `validate` on every record it returns (`check=False` turns
that off), so a third-party converter cannot hand on a record the trainers would reject.

Add a source without editing this file::

    @register_converter("my_source")
    def convert_my_source(path: Path, *, some_option: str = "x") -> ConversionResult: ...

Options arrive as strings from the command line (`vt-data convert SRC FILE -o key=value`), so every
option below accepts its string form. Path options: `path_template` is a `str.format` template over
the fields each converter names (always `video_id` and `ext`); `video_ext` sets `ext` (default
".mp4"). Every converter also takes `data_source`.

Sources (formats: benchmarks.md §2, §4, §5, §6):

- `video_r1`: Video-R1 / Video-Thinker JSON list or JSONL, read through `vt_data.records`, so
  unknown keys (`original_question_type`, ...) ride along in `extra` and the file round-trips.
- `activitynet_captions`: {video_id: {duration, timestamps, sentences}} -> one "grounding" record per
  sentence; spans clipped to the duration ("spans_clipped") or, when nothing is left, dropped with
  their record ("spans_dropped"). Template fields: video_id, youtube_id (id without "v_"), ext.
- `charades_sta`: `VID START END##sentence` lines -> grounding records. Durations come from the
  `durations` option (dict, JSON {id: seconds}, or CSV such as Charades_v1_test.csv with `id` and
  `length` columns); records without one get duration None and are counted ("no_duration").
- `youcook2`: youcookii_annotations_trainval.json -> a grounding record per step sentence; option
  `subset` ("training" / "validation") keeps one split ("skipped_subset"). Template fields: video_id,
  ext, subset, recipe_type. Format NOT checked against the real file; written to the documented
  shape {"database": {id: {duration, subset, recipe_type, annotations: [{segment, id, sentence}],
  video_url}}}.
- `video_holmes`: test_Video-Holmes.json (checked against the shipped example questions) -> MC
  records with 6 options. Option `annotations_dir` adds each film's "Segment Description" spans as
  extra["video_segments"] ([start, end, caption]); films without a file count "annotations_missing".
- `vrbench`: VRBench JSONL (checked against VRBench_debug.jsonl) -> one MC record per `mcq` entry;
  bracketed `[HH:MM:SS->HH:MM:SS]` spans in the reasoning steps become `segments`
  ("steps_with_span"), steps without one are counted ("steps_without_span").
- `star`: STAR_{train,val}.json -> MC records. Format NOT checked against the real file; written
  to the documented schema (question_id, question, video_id, start, end, answer, choices
  [{choice_id, choice}], situations). The situation graphs are not carried over (they are large and
  no trainer reads them).
- `lvbench`: THUDM/LVBench video_info.meta.jsonl -> MC records with options split out of the
  question text. Format NOT checked against the real file; written to the documented shape
  {key, type, qa: [{uid, question, answer, question_type, time_reference}], video_info}.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vt_data.records import (
    RecordError,
    Segment,
    VideoQA,
    format_options,
    iter_json_lines,
    iter_records,
    read_json,
    validate,
)
from vt_data.timespan import Span, clip_span, format_span, parse_span


@dataclass
class ConversionResult:
    """The records a converter produced and counters for everything it clipped, dropped or skipped."""

    records: list[VideoQA] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


Converter = Callable[..., ConversionResult]
CONVERTERS: dict[str, Converter] = {}


def register_converter(name: str, *, replace: bool = False) -> Callable[[Converter], Converter]:
    """Register `fn(path: Path, **options) -> ConversionResult` under `name` (decorator).

    Re-registering a taken name raises unless `replace=True`, so two plugins cannot shadow each
    other by accident."""

    def decorator(fn: Converter) -> Converter:
        if name in CONVERTERS and CONVERTERS[name] is not fn and not replace:
            raise ValueError(f"a converter is already registered as {name!r}; pass replace=True")
        CONVERTERS[name] = fn
        return fn

    return decorator


def convert(source: str, path: str | Path, *, check: bool | str = True, **options: Any) -> ConversionResult:
    """Convert the annotation file `path` of `source` into records.

    Unknown sources and options raise ValueError listing the valid ones; malformed input raises
    RecordError. With `check` (default), every produced record must pass `validate`."""
    if source not in CONVERTERS:
        raise ValueError(f"unknown source {source!r}; known sources: {', '.join(sorted(CONVERTERS))}")
    fn = CONVERTERS[source]
    _check_options(source, fn, options)
    check = as_bool(check, "check")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: annotation file not found: {path}")
    result = fn(path, **options)
    result.counts["records"] = len(result.records)
    if check:
        for index, record in enumerate(result.records):
            problems = validate(record)
            if problems:
                raise RecordError(
                    f"converter {source!r} produced an invalid record #{index} ({record.key}): "
                    + "; ".join(str(p) for p in problems), source=str(path))
    return result


def _check_options(source: str, fn: Converter, options: Mapping[str, Any]) -> None:
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    # The first parameter takes the path; any other nameable parameter is an option.
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [p.name for p in params[1:] if p.kind in named]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"converter {source!r} does not take option(s) {', '.join(unknown)}; "
                         f"its options: {', '.join(accepted) or '(none)'}")


def as_bool(value: bool | str, name: str) -> bool:
    """A boolean option given as a bool or a CLI string (true/false, yes/no, 1/0, on/off)."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"option {name!r} must be true or false, got {value!r}")


# --- reading helpers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Loc:
    """Where in the input we are, so every error names the file, line/index, item and field."""

    path: Path
    line: int | None = None
    item: str | None = None

    def at(self, *, line: int | None = None, item: str | None = None) -> _Loc:
        if item is not None and self.item is not None:
            item = f"{self.item} {item}"
        return dataclasses.replace(self, line=self.line if line is None else line,
                                   item=self.item if item is None else item)

    def error(self, message: str, field_name: str | None = None) -> RecordError:
        prefix = f"{self.item}: " if self.item else ""
        return RecordError(prefix + message, source=str(self.path), line=self.line, field_name=field_name)


def _need(obj: Any, key: str, kind: type | tuple[type, ...], loc: _Loc, *, optional: bool = False) -> Any:
    """obj[key], checked to be of `kind`; a missing key is None when `optional`, else an error."""
    if not isinstance(obj, dict):
        raise loc.error(f"expected a JSON object, got {type(obj).__name__}")
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise loc.error("is missing", key)
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise loc.error(f"must be {names}, got {type(value).__name__}", key)
    return value


def _seconds(value: Any, loc: _Loc, field_name: str) -> float:
    """A number of seconds (numbers, or numeric strings as some dumps write them); finite."""
    if isinstance(value, bool):
        raise loc.error(f"must be a number of seconds, got {value!r}", field_name)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise loc.error(f"must be a number of seconds, got {value!r}", field_name) from None
    if not math.isfinite(seconds):
        raise loc.error(f"must be a finite number of seconds, got {value!r}", field_name)
    return seconds


def _duration(value: Any, loc: _Loc, field_name: str = "duration") -> float:
    seconds = _seconds(value, loc, field_name)
    if seconds <= 0:
        raise loc.error(f"must be positive, got {value!r}", field_name)
    return seconds


def _ext(video_ext: str) -> str:
    return video_ext if not video_ext or video_ext.startswith(".") else f".{video_ext}"


def _video_path(template: str, loc: _Loc, **fields: Any) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError) as exc:
        raise ValueError(f"path_template {template!r} uses an unknown field {exc}; "
                         f"available: {', '.join(sorted(fields))}") from None


def _fit_span(span: Span, duration: float | None, counts: Counter, kind: str) -> Span | None:
    """`span` clipped to [0, duration] (or just to start >= 0 without a duration), counting
    "<kind>_clipped" when it changed and "<kind>_dropped" when nothing of positive length is left."""
    fitted = clip_span(span, math.inf if duration is None else duration)
    if fitted is None:
        counts[f"{kind}_dropped"] += 1
    elif fitted != (span[0], span[1]):
        counts[f"{kind}_clipped"] += 1
    return fitted


def _mc_options(options: Any, loc: _Loc, field_name: str = "options") -> tuple[list[str], list[str]]:
    """A {letter: text} dict -> ("A. text" strings in letter order, the letters). The letters must
    run A, B, C, ... without gaps, or the gold letter would point at the wrong option."""
    if not isinstance(options, dict) or not options:
        raise loc.error("must be a non-empty object {letter: text}", field_name)
    letters = sorted(options)
    expected = [chr(ord("A") + i) for i in range(len(letters))]
    if letters != expected:
        raise loc.error(f"letters must run {''.join(expected)}, got {', '.join(map(str, letters))}",
                        field_name)
    texts = []
    for letter in letters:
        text = options[letter]
        if not isinstance(text, str) or not text.strip():
            raise loc.error(f"option {letter} must be non-empty text, got {text!r}", field_name)
        texts.append(text)
    return format_options(texts), letters


def _gold_letter(value: Any, letters: list[str], loc: _Loc, field_name: str) -> str:
    letter = str(value).strip().strip("()").strip() if isinstance(value, (str, int)) else None
    if letter not in letters:
        raise loc.error(f"gold answer {value!r} is not one of the option letters {''.join(letters)}",
                        field_name)
    return letter


def _mc_record(**fields: Any) -> VideoQA:
    gold = fields.pop("gold")
    return VideoQA(problem_type="multiple choice", data_type="video", solution=f"<answer>{gold}</answer>",
                   **fields)


def _grounding_record(*, query: str, span: Span, **fields: Any) -> VideoQA:
    """A span query: the problem is the query sentence, the answer its span in MM:SS form, and the
    span (with the sentence as caption) is the record's one ground-truth segment."""
    return VideoQA(problem=query, problem_type="grounding", data_type="video", options=None,
                   solution=f"<answer>{format_span(*span)}</answer>",
                   segments=[Segment(span[0], span[1], query)], **fields)


# --- video_r1 -------------------------------------------------------------------------------------
@register_converter("video_r1")
def convert_video_r1(path: Path) -> ConversionResult:
    """Video-R1 / Video-Thinker records (JSON list or JSONL), passed through unchanged."""
    result = ConversionResult()
    for _, record in iter_records(path):
        result.records.append(record)
    return result


# --- ActivityNet Captions -------------------------------------------------------------------------
@register_converter("activitynet_captions")
def convert_activitynet_captions(path: Path, *, path_template: str = "{video_id}{ext}",
                                 video_ext: str = ".mp4",
                                 data_source: str = "ActivityNet") -> ConversionResult:
    """{video_id: {duration, timestamps: [[s, e], ...], sentences: [...]}} -> a grounding record per
    sentence (problem_id "<video_id>_<sentence index>")."""
    result = ConversionResult()
    counts = result.counts
    data = read_json(path)
    if not isinstance(data, dict):
        raise _Loc(path).error(f"expected a JSON object keyed by video id, got {type(data).__name__}")
    for video_id, video in data.items():
        loc = _Loc(path, item=f"video {video_id!r}")
        duration = _duration(_need(video, "duration", (int, float, str), loc), loc)
        timestamps = _need(video, "timestamps", list, loc)
        sentences = _need(video, "sentences", list, loc)
        if len(timestamps) != len(sentences):
            raise loc.error(f"has {len(timestamps)} timestamps but {len(sentences)} sentences", "sentences")
        counts["videos"] += 1
        video_path = _video_path(path_template, loc, video_id=video_id, ext=_ext(video_ext),
                                 youtube_id=video_id.removeprefix("v_"))
        for index, (stamp, sentence) in enumerate(zip(timestamps, sentences, strict=True)):
            if not isinstance(stamp, list) or len(stamp) != 2:
                raise loc.error(f"entry {index} must be [start, end], got {stamp!r}", "timestamps")
            if not isinstance(sentence, str):
                raise loc.error(f"entry {index} must be text, got {type(sentence).__name__}", "sentences")
            # The official sentences start with a space (benchmarks.md §5.1).
            query = sentence.strip()
            if not query:
                counts["skipped_empty_query"] += 1
                continue
            span = (_seconds(stamp[0], loc, "timestamps"), _seconds(stamp[1], loc, "timestamps"))
            span = _fit_span(span, duration, counts, "spans")
            if span is None:
                continue
            result.records.append(_grounding_record(
                query=query, span=span, path=video_path, data_source=data_source,
                problem_id=f"{video_id}_{index}", duration=duration, extra={"video_id": video_id}))
    return result


# --- Charades-STA ---------------------------------------------------------------------------------
def _load_durations(spec: Mapping[str, Any] | str | Path) -> dict[str, float]:
    """{video_id: seconds} from a dict, a JSON object file, or a CSV: either with a header naming an
    id column (`id` / `video_id` / `vid`) and a duration column (`length` / `duration`), as in the
    official Charades_v1_{train,test}.csv, or headerless `video_id,seconds` rows."""
    if isinstance(spec, Mapping):
        loc = _Loc(Path("<durations>"))
        return {str(k): _duration(v, loc.at(item=f"video {k!r}")) for k, v in spec.items()}
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"durations file not found: {path}")
    loc = _Loc(path)
    if path.suffix.lower() != ".csv":
        data = read_json(path)
        if not isinstance(data, dict):
            raise loc.error(f"expected a JSON object {{video_id: seconds}}, got {type(data).__name__}")
        return {str(k): _duration(v, loc.at(item=f"video {k!r}")) for k, v in data.items()}
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return {}
    header = [h.strip().lower() for h in rows[0]]
    id_col = next((header.index(n) for n in ("id", "video_id", "vid") if n in header), None)
    len_col = next((header.index(n) for n in ("length", "duration") if n in header), None)
    if id_col is not None and len_col is not None:
        body, first_line = rows[1:], 2
    else:
        id_col, len_col, body, first_line = 0, 1, rows, 1
    durations = {}
    for lineno, row in enumerate(body, first_line):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(id_col, len_col):
            raise loc.at(line=lineno).error(f"expected at least {max(id_col, len_col) + 1} columns, "
                                            f"got {len(row)}")
        durations[row[id_col].strip()] = _duration(row[len_col], loc.at(line=lineno),
                                                   header[len_col] if first_line == 2 else "duration")
    return durations


@register_converter("charades_sta")
def convert_charades_sta(path: Path, *, durations: Mapping[str, Any] | str | Path | None = None,
                         path_template: str = "{video_id}{ext}", video_ext: str = ".mp4",
                         data_source: str = "Charades-STA") -> ConversionResult:
    """`VID START END##sentence` lines -> grounding records (problem_id "<video_id>_<n>", n counting
    that video's queries in file order)."""
    result = ConversionResult()
    counts = result.counts
    table = _load_durations(durations) if durations is not None else None
    per_video: Counter = Counter()
    with path.open(encoding="utf-8-sig") as fh:
        for lineno, raw in enumerate(fh, 1):
            text = raw.rstrip("\r\n")
            if not text.strip():
                continue
            loc = _Loc(path, line=lineno)
            head, sep, sentence = text.partition("##")
            if not sep:
                raise loc.error(f"expected 'VIDEO START END##sentence', no '##' in {text[:60]!r}",
                                "sentence")
            parts = head.split()
            if len(parts) != 3:
                raise loc.error(f"expected 'VIDEO START END' before '##', got {head!r}", "span")
            video_id = parts[0]
            span = (_seconds(parts[1], loc, "start"), _seconds(parts[2], loc, "end"))
            query = sentence.strip()
            index = per_video[video_id]
            per_video[video_id] += 1
            if not query:
                counts["skipped_empty_query"] += 1
                continue
            duration = table.get(video_id) if table is not None else None
            if duration is None:
                counts["no_duration"] += 1
            span = _fit_span(span, duration, counts, "spans")
            if span is None:
                continue
            video_path = _video_path(path_template, loc, video_id=video_id, ext=_ext(video_ext))
            result.records.append(_grounding_record(
                query=query, span=span, path=video_path, data_source=data_source,
                problem_id=f"{video_id}_{index}", duration=duration, extra={"video_id": video_id}))
    counts["videos"] = len(per_video)
    return result


# --- YouCook2 -------------------------------------------------------------------------------------
@register_converter("youcook2")
def convert_youcook2(path: Path, *, subset: str | None = None, path_template: str = "{video_id}{ext}",
                     video_ext: str = ".mp4", data_source: str = "YouCook2") -> ConversionResult:
    """{"database": {video_id: {duration, subset, recipe_type, annotations, video_url}}} -> a grounding
    record per step (problem_id "<video_id>_<annotation id>")."""
    result = ConversionResult()
    counts = result.counts
    data = read_json(path)
    database = _need(data, "database", dict, _Loc(path))
    for video_id, video in database.items():
        loc = _Loc(path, item=f"video {video_id!r}")
        video_subset = _need(video, "subset", str, loc, optional=True)
        if subset is not None and video_subset != subset:
            counts["skipped_subset"] += 1
            continue
        duration = _duration(_need(video, "duration", (int, float, str), loc), loc)
        recipe_type = _need(video, "recipe_type", (str, int), loc, optional=True)
        annotations = _need(video, "annotations", list, loc)
        counts["videos"] += 1
        video_path = _video_path(path_template, loc, video_id=video_id, ext=_ext(video_ext),
                                 subset=video_subset, recipe_type=recipe_type)
        extra = {"video_id": video_id, "subset": video_subset, "recipe_type": recipe_type}
        if video.get("video_url"):
            extra["video_url"] = video["video_url"]
        for index, step in enumerate(annotations):
            step_loc = loc.at(item=f"annotation {index}")
            segment = _need(step, "segment", list, step_loc)
            if len(segment) != 2:
                raise step_loc.error(f"must be [start, end], got {segment!r}", "segment")
            query = _need(step, "sentence", str, step_loc).strip()
            step_id = step.get("id", index)
            if not query:
                counts["skipped_empty_query"] += 1
                continue
            span = (_seconds(segment[0], step_loc, "segment"), _seconds(segment[1], step_loc, "segment"))
            span = _fit_span(span, duration, counts, "spans")
            if span is None:
                continue
            result.records.append(_grounding_record(
                query=query, span=span, path=video_path, data_source=data_source,
                problem_id=f"{video_id}_{step_id}", duration=duration, extra=dict(extra)))
    return result


# --- Video-Holmes ---------------------------------------------------------------------------------
def _holmes_segments(annotations_dir: Path, video_id: str, counts: Counter) -> list[list] | None:
    """A film's "Segment Description" entries as [start, end, caption]; None without a file."""
    file = annotations_dir / f"{video_id}.json"
    if not file.is_file():
        counts["annotations_missing"] += 1
        return None
    data = read_json(file)
    # The shipped files are a list holding one object; accept the bare object too.
    items = data if isinstance(data, list) else [data]
    segments = []
    for index, item in enumerate(items):
        loc = _Loc(file, line=index)
        for entry in _need(item, "Segment Description", list, loc, optional=True) or []:
            span = parse_span(_need(entry, "TimeRange", str, loc))
            if span is None or span[1] <= span[0]:
                counts["annotation_ranges_unparsed"] += 1
                continue
            segments.append([span[0], span[1], str(entry.get("Description", "")).strip()])
    counts["annotation_segments"] += len(segments)
    return segments


@register_converter("video_holmes")
def convert_video_holmes(path: Path, *, annotations_dir: str | Path | None = None,
                         path_template: str = "{video_id}{ext}", video_ext: str = ".mp4",
                         data_source: str = "Video-Holmes") -> ConversionResult:
    """test_Video-Holmes.json -> MC records (problem_id "<video ID>_<Question ID>")."""
    result = ConversionResult()
    counts = result.counts
    data = read_json(path)
    if not isinstance(data, list):
        raise _Loc(path).error(f"expected a JSON list of questions, got {type(data).__name__}")
    film_segments: dict[str, list[list] | None] = {}
    for index, item in enumerate(data):
        loc = _Loc(path, line=index)
        video_id = _need(item, "video ID", str, loc)
        question_id = _need(item, "Question ID", (int, str), loc)
        question = _need(item, "Question", str, loc)
        options, letters = _mc_options(_need(item, "Options", dict, loc), loc, "Options")
        if item.get("Answer") in (None, ""):
            counts["skipped_no_answer"] += 1
            continue
        gold = _gold_letter(item["Answer"], letters, loc, "Answer")
        extra: dict[str, Any] = {
            "original_question_type": _need(item, "Question Type", str, loc),
            "video_id": video_id,
            "question_id": question_id,
            "explanation": item.get("Explanation") or "",
        }
        if annotations_dir is not None:
            if video_id not in film_segments:
                film_segments[video_id] = _holmes_segments(Path(annotations_dir), video_id, counts)
            if film_segments[video_id] is not None:
                # Film-level descriptions, not evidence for this question: kept apart from `segments`.
                extra["video_segments"] = [list(s) for s in film_segments[video_id]]
        result.records.append(_mc_record(
            problem=question.strip(), options=options, gold=gold,
            path=_video_path(path_template, loc, video_id=video_id, ext=_ext(video_ext)),
            data_source=data_source, problem_id=f"{video_id}_{question_id}", extra=extra))
    counts["videos"] = len({r.extra["video_id"] for r in result.records})
    return result


# --- VRBench --------------------------------------------------------------------------------------
# Only bracketed spans count: free-text numbers such as "2-3 times" would otherwise read as spans.
_BRACKETED = re.compile(r"\[[^\[\]]*\]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")


def _split_step(text: str) -> tuple[str, list[Span]]:
    """A reasoning step -> (its text without the bracketed spans, the spans in order)."""
    spans: list[Span] = []

    def take(match: re.Match[str]) -> str:
        span = parse_span(match.group(0))
        if span is None:
            return match.group(0)
        spans.append(span)
        return " "

    caption = " ".join(_BRACKETED.sub(take, text).split())
    caption = _SPACE_BEFORE_PUNCT.sub(r"\1", caption)  # "her lover [..]." -> "her lover."
    return (caption if any(c.isalnum() for c in caption) else ""), spans


@register_converter("vrbench")
def convert_vrbench(path: Path, *, path_template: str | None = None, video_ext: str = ".mp4",
                    data_source: str = "VRBench") -> ConversionResult:
    """VRBench JSONL -> one MC record per `mcq` entry (problem_id "<video_id>_<qa key>"); the path is
    the file's `video_path` unless `path_template` (fields video_id, ext, video_path) is given."""
    result = ConversionResult()
    counts = result.counts
    for lineno, video in iter_json_lines(path):
        loc = _Loc(path, line=lineno)
        video_id = _need(video, "video_id", str, loc)
        loc = loc.at(item=f"video {video_id!r}")
        if path_template is None:
            video_path = _need(video, "video_path", str, loc)
        else:
            video_path = _video_path(path_template, loc, video_id=video_id, ext=_ext(video_ext),
                                     video_path=video.get("video_path"))
        mcq = _need(video, "mcq", dict, loc, optional=True) or {}
        counts["videos"] += 1
        if not mcq:
            counts["videos_without_mcq"] += 1
        for qa_key, qa in mcq.items():
            qa_loc = loc.at(item=qa_key)
            question = _need(qa, "question", str, qa_loc)
            options, letters = _mc_options(_need(qa, "options", dict, qa_loc), qa_loc)
            if qa.get("answer") in (None, ""):
                counts["skipped_no_answer"] += 1
                continue
            gold = _gold_letter(qa["answer"], letters, qa_loc, "answer")
            steps = _need(qa, "reasoning_process", dict, qa_loc, optional=True) or {}
            segments = []
            for step_key, step in steps.items():
                if not isinstance(step, str):
                    raise qa_loc.error(f"step {step_key!r} must be text, got {type(step).__name__}",
                                       "reasoning_process")
                caption, spans = _split_step(step)
                counts["steps_with_span" if spans else "steps_without_span"] += 1
                for span in spans:
                    fitted = _fit_span(span, None, counts, "segments")
                    if fitted is not None:
                        segments.append(Segment(fitted[0], fitted[1], caption))
            extra = {
                # Upstream spellings kept as they are ("Counting Porblems").
                "original_question_type": qa.get("reasoning_type") or "",
                "video_id": video_id,
                "qa_key": qa_key,
                "video_read_type": video.get("video_read_type"),
                "reasoning_process": steps,
            }
            result.records.append(_mc_record(
                problem=question.strip(), options=options, gold=gold, path=video_path,
                data_source=data_source, problem_id=f"{video_id}_{qa_key}",
                segments=segments, extra=extra))
    return result


# --- STAR -----------------------------------------------------------------------------------------
@register_converter("star")
def convert_star(path: Path, *, path_template: str = "{video_id}{ext}", video_ext: str = ".mp4",
                 data_source: str = "STAR") -> ConversionResult:
    """STAR_{train,val}.json -> MC records (problem_id = question_id); the situation clip's start/end
    become the record's one segment (empty caption: STAR has no segment text)."""
    result = ConversionResult()
    counts = result.counts
    data = read_json(path)
    if not isinstance(data, list):
        raise _Loc(path).error(f"expected a JSON list of questions, got {type(data).__name__}")
    videos = set()
    for index, item in enumerate(data):
        loc = _Loc(path, line=index)
        question_id = _need(item, "question_id", str, loc)
        video_id = _need(item, "video_id", str, loc)
        question = _need(item, "question", str, loc)
        choices = _need(item, "choices", list, loc)
        texts = []
        for i, choice in enumerate(choices):
            text = _need(choice, "choice", str, loc.at(item=f"choice {i}"))
            if not text.strip():
                raise loc.error(f"choice {i} is empty", "choices")
            texts.append(text)
        if len(texts) < 2:
            raise loc.error(f"needs at least 2 choices, got {len(texts)}", "choices")
        answer = item.get("answer")
        if answer in (None, ""):  # the test split ships without answers
            counts["skipped_no_answer"] += 1
            continue
        matches = [i for i, t in enumerate(texts) if t == answer]
        if len(matches) != 1:
            found = "matches no choice" if not matches else f"matches {len(matches)} choices"
            raise loc.error(f"answer {answer!r} {found}", "answer")
        start = _seconds(_need(item, "start", (int, float, str), loc), loc, "start")
        end = _seconds(_need(item, "end", (int, float, str), loc), loc, "end")
        span = _fit_span((start, end), None, counts, "segments")
        videos.add(video_id)
        result.records.append(_mc_record(
            problem=question.strip(), options=format_options(texts), gold=chr(ord("A") + matches[0]),
            path=_video_path(path_template, loc, video_id=video_id, ext=_ext(video_ext)),
            data_source=data_source, problem_id=question_id,
            segments=[Segment(span[0], span[1], "")] if span else [],
            extra={"original_question_type": question_id.split("_", 1)[0], "question_id": question_id,
                   "video_id": video_id, "start": start, "end": end}))
    counts["videos"] = len(videos)
    return result


# --- LVBench --------------------------------------------------------------------------------------
_LVBENCH_OPTION = re.compile(r"^\s*\(([A-Z])\)\s*(.*?)\s*$")


def _split_lvbench_question(text: str, loc: _Loc) -> tuple[str, list[str]]:
    """"Stem\\n(A) x\\n(B) y" -> ("Stem", ["x", "y"]); options must run A, B, ... one per line."""
    stem_lines, options = [], []
    for line in text.splitlines():
        found = _LVBENCH_OPTION.match(line)
        if found:
            letter, option = found.groups()
            if letter != chr(ord("A") + len(options)):
                raise loc.error(f"option ({letter}) out of order in {text[:80]!r}", "question")
            options.append(option)
        elif options and line.strip():
            raise loc.error(f"text after the options: {line.strip()[:60]!r}", "question")
        elif not options:
            stem_lines.append(line)
    if len(options) < 2:
        raise loc.error(f"expected options on lines like '(A) ...', found {len(options)}", "question")
    return "\n".join(stem_lines).strip(), options


@register_converter("lvbench")
def convert_lvbench(path: Path, *, path_template: str = "{video_id}{ext}", video_ext: str = ".mp4",
                    data_source: str = "LVBench") -> ConversionResult:
    """video_info.meta.jsonl -> MC records (problem_id = uid); a parsable time_reference becomes the
    record's one segment, clipped to video_info.duration_minutes."""
    result = ConversionResult()
    counts = result.counts
    for lineno, video in iter_json_lines(path):
        loc = _Loc(path, line=lineno)
        video_id = _need(video, "key", str, loc)
        loc = loc.at(item=f"video {video_id!r}")
        info = _need(video, "video_info", dict, loc, optional=True) or {}
        minutes = info.get("duration_minutes")
        duration = None
        if minutes is None:
            counts["no_duration"] += 1
        else:
            # Minutes are given rounded, so the duration is only as exact as that rounding.
            duration = round(_duration(minutes, loc, "video_info.duration_minutes") * 60, 3)
        video_type = video.get("type")
        video_path = _video_path(path_template, loc, video_id=video_id, ext=_ext(video_ext),
                                 video_type=video_type)
        counts["videos"] += 1
        for index, qa in enumerate(_need(video, "qa", list, loc)):
            qa_loc = loc.at(item=f"qa {index}")
            uid = _need(qa, "uid", (int, str), qa_loc)
            stem, texts = _split_lvbench_question(_need(qa, "question", str, qa_loc), qa_loc)
            letters = [chr(ord("A") + i) for i in range(len(texts))]
            if qa.get("answer") in (None, ""):
                counts["skipped_no_answer"] += 1
                continue
            gold = _gold_letter(qa["answer"], letters, qa_loc, "answer")
            types = qa.get("question_type") or []
            types = [types] if isinstance(types, str) else [str(t) for t in types]
            reference = qa.get("time_reference")
            segments = []
            if not reference or not str(reference).strip():
                counts["no_time_reference"] += 1
            elif (span := parse_span(str(reference))) is None:
                counts["time_reference_unparsed"] += 1
            elif (span := _fit_span(span, duration, counts, "segments")) is not None:
                segments.append(Segment(span[0], span[1], ""))
            extra = {"original_question_type": ", ".join(types), "question_types": types,
                     "video_id": video_id, "uid": uid, "video_type": video_type,
                     "time_reference": reference}
            result.records.append(_mc_record(
                problem=stem, options=format_options(texts), gold=gold, path=video_path,
                data_source=data_source, problem_id=uid, duration=duration, segments=segments,
                extra=extra))
    return result
