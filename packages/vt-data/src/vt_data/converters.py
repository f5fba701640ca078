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
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vt_data.loaders import LoaderRegistry, Loc, as_bool, check_records, fit_span, format_path, mc_record
from vt_data.records import (
    Segment,
    VideoQA,
    format_options,
    iter_json_lines,
    iter_records,
    option_letter,
    option_letters,
    read_json,
    split_option_label,
)
from vt_data.timespan import Span, format_span, parse_span


@dataclass
class ConversionResult:
    """The records a converter produced and counters for everything it clipped, dropped or skipped."""

    records: list[VideoQA] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


# source -> `fn(path: Path, **options) -> ConversionResult`.
CONVERTERS = LoaderRegistry("converter", key="source")
# `@register_converter(name, replace=False)`; a taken name raises unless `replace=True`, so two plugins
# cannot shadow each other by accident.
register_converter = CONVERTERS.register


def convert(source: str, path: str | Path, *, check: bool | str = True, **options: Any) -> ConversionResult:
    """Convert the annotation file `path` of `source` into records.

    Unknown sources and options raise ValueError listing the valid ones; malformed input raises
    RecordError. With `check` (default), every produced record must pass `validate`."""
    fn = CONVERTERS.loader(source)
    CONVERTERS.check_options(source, options)
    check = as_bool(check, "check")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: annotation file not found: {path}")
    result = fn(path, **options)
    result.counts["records"] = len(result.records)
    if check:
        check_records(result.records, f"converter {source!r}", path)
    return result


# --- reading helpers ------------------------------------------------------------------------------
def _seconds(value: Any, loc: Loc, field_name: str) -> float:
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


def _duration(value: Any, loc: Loc, field_name: str = "duration") -> float:
    seconds = _seconds(value, loc, field_name)
    if seconds <= 0:
        raise loc.error(f"must be positive, got {value!r}", field_name)
    return seconds


def _mc_options(options: Any, loc: Loc, field_name: str = "options") -> tuple[list[str], list[str]]:
    """A {letter: text} dict -> ("A. text" strings in letter order, the letters). The letters must
    run A, B, C, ... without gaps, or the gold letter would point at the wrong option."""
    if not isinstance(options, dict) or not options:
        raise loc.error("must be a non-empty object {letter: text}", field_name)
    letters = sorted(options)
    expected = option_letters(len(letters))
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


def _gold_letter(value: Any, letters: list[str], loc: Loc, field_name: str) -> str:
    letter = str(value).strip().strip("()").strip() if isinstance(value, (str, int)) else None
    if letter not in letters:
        raise loc.error(f"gold answer {value!r} is not one of the option letters {''.join(letters)}",
                        field_name)
    return letter


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
        raise Loc(path).error(f"expected a JSON object keyed by video id, got {type(data).__name__}")
    for video_id, video in data.items():
        loc = Loc(path, item=f"video {video_id!r}")
        duration = _duration(loc.need(video, "duration", (int, float, str)), loc)
        timestamps = loc.need(video, "timestamps", list)
        sentences = loc.need(video, "sentences", list)
        if len(timestamps) != len(sentences):
            raise loc.error(f"has {len(timestamps)} timestamps but {len(sentences)} sentences", "sentences")
        counts["videos"] += 1
        video_path = format_path(path_template, video_id=video_id, ext=video_ext,
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
            span = fit_span(span, duration, counts, "spans")
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
        loc = Loc(Path("<durations>"))
        return {str(k): _duration(v, loc.at(item=f"video {k!r}")) for k, v in spec.items()}
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"durations file not found: {path}")
    loc = Loc(path)
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
            loc = Loc(path, line=lineno)
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
            span = fit_span(span, duration, counts, "spans")
            if span is None:
                continue
            video_path = format_path(path_template, video_id=video_id, ext=video_ext)
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
    database = Loc(path).need(data, "database", dict)
    for video_id, video in database.items():
        loc = Loc(path, item=f"video {video_id!r}")
        video_subset = loc.need(video, "subset", str, optional=True)
        if subset is not None and video_subset != subset:
            counts["skipped_subset"] += 1
            continue
        duration = _duration(loc.need(video, "duration", (int, float, str)), loc)
        recipe_type = loc.need(video, "recipe_type", (str, int), optional=True)
        annotations = loc.need(video, "annotations", list)
        counts["videos"] += 1
        video_path = format_path(path_template, video_id=video_id, ext=video_ext,
                                 subset=video_subset, recipe_type=recipe_type)
        extra = {"video_id": video_id, "subset": video_subset, "recipe_type": recipe_type}
        if video.get("video_url"):
            extra["video_url"] = video["video_url"]
        for index, step in enumerate(annotations):
            step_loc = loc.at(item=f"annotation {index}")
            segment = step_loc.need(step, "segment", list)
            if len(segment) != 2:
                raise step_loc.error(f"must be [start, end], got {segment!r}", "segment")
            query = step_loc.need(step, "sentence", str).strip()
            step_id = step.get("id", index)
            if not query:
                counts["skipped_empty_query"] += 1
                continue
            span = (_seconds(segment[0], step_loc, "segment"), _seconds(segment[1], step_loc, "segment"))
            span = fit_span(span, duration, counts, "spans")
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
        loc = Loc(file, line=index)
        for entry in loc.need(item, "Segment Description", list, optional=True) or []:
            span = parse_span(loc.need(entry, "TimeRange", str))
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
        raise Loc(path).error(f"expected a JSON list of questions, got {type(data).__name__}")
    film_segments: dict[str, list[list] | None] = {}
    for index, item in enumerate(data):
        loc = Loc(path, line=index)
        video_id = loc.need(item, "video ID", str)
        question_id = loc.need(item, "Question ID", (int, str))
        question = loc.need(item, "Question", str)
        options, letters = _mc_options(loc.need(item, "Options", dict), loc, "Options")
        if item.get("Answer") in (None, ""):
            counts["skipped_no_answer"] += 1
            continue
        gold = _gold_letter(item["Answer"], letters, loc, "Answer")
        extra: dict[str, Any] = {
            "original_question_type": loc.need(item, "Question Type", str),
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
        result.records.append(mc_record(
            problem=question.strip(), options=options, gold=gold,
            path=format_path(path_template, video_id=video_id, ext=video_ext),
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
        loc = Loc(path, line=lineno)
        video_id = loc.need(video, "video_id", str)
        loc = loc.at(item=f"video {video_id!r}")
        if path_template is None:
            video_path = loc.need(video, "video_path", str)
        else:
            video_path = format_path(path_template, video_id=video_id, ext=video_ext,
                                     video_path=video.get("video_path"))
        mcq = loc.need(video, "mcq", dict, optional=True) or {}
        counts["videos"] += 1
        if not mcq:
            counts["videos_without_mcq"] += 1
        for qa_key, qa in mcq.items():
            qa_loc = loc.at(item=qa_key)
            question = qa_loc.need(qa, "question", str)
            options, letters = _mc_options(qa_loc.need(qa, "options", dict), qa_loc)
            if qa.get("answer") in (None, ""):
                counts["skipped_no_answer"] += 1
                continue
            gold = _gold_letter(qa["answer"], letters, qa_loc, "answer")
            steps = qa_loc.need(qa, "reasoning_process", dict, optional=True) or {}
            segments = []
            for step_key, step in steps.items():
                if not isinstance(step, str):
                    raise qa_loc.error(f"step {step_key!r} must be text, got {type(step).__name__}",
                                       "reasoning_process")
                caption, spans = _split_step(step)
                counts["steps_with_span" if spans else "steps_without_span"] += 1
                for span in spans:
                    fitted = fit_span(span, None, counts, "segments")
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
            result.records.append(mc_record(
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
        raise Loc(path).error(f"expected a JSON list of questions, got {type(data).__name__}")
    videos = set()
    for index, item in enumerate(data):
        loc = Loc(path, line=index)
        question_id = loc.need(item, "question_id", str)
        video_id = loc.need(item, "video_id", str)
        question = loc.need(item, "question", str)
        choices = loc.need(item, "choices", list)
        texts = []
        for i, choice in enumerate(choices):
            text = loc.at(item=f"choice {i}").need(choice, "choice", str)
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
        start = _seconds(loc.need(item, "start", (int, float, str)), loc, "start")
        end = _seconds(loc.need(item, "end", (int, float, str)), loc, "end")
        span = fit_span((start, end), None, counts, "segments")
        videos.add(video_id)
        result.records.append(mc_record(
            problem=question.strip(), options=format_options(texts), gold=option_letter(matches[0]),
            path=format_path(path_template, video_id=video_id, ext=video_ext),
            data_source=data_source, problem_id=question_id,
            segments=[Segment(span[0], span[1], "")] if span else [],
            extra={"original_question_type": question_id.split("_", 1)[0], "question_id": question_id,
                   "video_id": video_id, "start": start, "end": end}))
    counts["videos"] = len(videos)
    return result


# --- LVBench --------------------------------------------------------------------------------------
def _split_lvbench_question(text: str, loc: Loc) -> tuple[str, list[str]]:
    """"Stem\\n(A) x\\n(B) y" -> ("Stem", ["x", "y"]); options must run A, B, ... one per line."""
    stem_lines, options = [], []
    for line in text.splitlines():
        # LVBench letters its options "(A) x" only; "A. x" in the stem stays stem text.
        label = split_option_label(line, separators="", parens="required")
        if label:
            letter, option = label[0], label[1].rstrip()
            if letter != option_letter(len(options)):
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
        loc = Loc(path, line=lineno)
        video_id = loc.need(video, "key", str)
        loc = loc.at(item=f"video {video_id!r}")
        info = loc.need(video, "video_info", dict, optional=True) or {}
        minutes = info.get("duration_minutes")
        duration = None
        if minutes is None:
            counts["no_duration"] += 1
        else:
            # Minutes are given rounded, so the duration is only as exact as that rounding.
            duration = round(_duration(minutes, loc, "video_info.duration_minutes") * 60, 3)
        video_type = video.get("type")
        video_path = format_path(path_template, video_id=video_id, ext=video_ext,
                                 video_type=video_type)
        counts["videos"] += 1
        for index, qa in enumerate(loc.need(video, "qa", list)):
            qa_loc = loc.at(item=f"qa {index}")
            uid = qa_loc.need(qa, "uid", (int, str))
            stem, texts = _split_lvbench_question(qa_loc.need(qa, "question", str), qa_loc)
            letters = option_letters(len(texts))
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
            elif (span := fit_span(span, duration, counts, "segments")) is not None:
                segments.append(Segment(span[0], span[1], ""))
            extra = {"original_question_type": ", ".join(types), "question_types": types,
                     "video_id": video_id, "uid": uid, "video_type": video_type,
                     "time_reference": reference}
            result.records.append(mc_record(
                problem=stem, options=format_options(texts), gold=gold, path=video_path,
                data_source=data_source, problem_id=uid, duration=duration, segments=segments,
                extra=extra))
    return result
