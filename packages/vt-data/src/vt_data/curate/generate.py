"""The teacher stages (method.md §5.2 steps 2–4): questions for caption-labelled videos, answer-conditioned
captions for QA-labelled records, and `<time>/<caption>/<think>` traces. Each asks its model for one
JSON object (prompt wording in conf/curate/prompts/), validates it, and sends a malformed reply back for
a fix (the engine's `invalid_retries`); an item whose replies stay malformed is dropped with the reason.

Replies the stages accept:

* questions: {"question": str, "options": [4–6 distinct str], "answer": "B", "evidence": [segment ids]?,
  "type": str?}. One question per video from all of its segments; `evidence` (1-based ids, default all)
  become the record's `segments` in the given order, all segments go to extra["video_segments"].
* captions: {"captions": [one str per segment]}, replacing the segment captions (originals kept in
  provenance).
* traces: {"preamble": str?, "steps": [{"start", "end", "caption", "think", "lead"?}], "closing": str?}.
  Times are seconds (numbers) or time strings; a step may give "time": "00:12-00:20" instead. The trace
  is rendered by `vt_data.trace.render_process`, so the grammar holds by construction, and must then
  pass the strict `check_format`. We chose JSON steps over a free-text trace parsed with `parse_trace`
  because the times must be rewritten by one rule anyway and JSON errors are easier to report back.

Seconds -> MM:SS (method.md §2.4, §11): with `time_rounding: outward` (default) a step's start is
rounded down and its end up to whole seconds, then the end is clipped to the video's duration; the
span is written by `vt_data.timespan.format_span` (`MM:SS`, `H:MM:SS` past an hour, a fraction only
where the clipped end has one). `none` keeps the teacher's seconds (fractions written as `00:28.79`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vt_data.curate.engine import CallResult, InvalidReply, extract_json
from vt_data.curate.pipeline import Context, StageResult, category, provenance, with_provenance
from vt_data.curate.prompts import PromptTemplate, with_video
from vt_data.records import (
    Segment,
    VideoQA,
    format_options,
    option_letter,
    option_letters,
    split_option_label,
    strip_option_prefix,
)
from vt_data.timespan import format_span, parse_span, parse_time
from vt_data.trace import TraceStep, check_format, render_process

_TAG = re.compile(r"</?(time|caption|think|answer)>", re.IGNORECASE)
_LETTER = re.compile(r"^\(?([A-Z])\)?(?=$|[\s.):,])")


# --- reply validation helpers -------------------------------------------------------------------
def as_prompt(prompt: PromptTemplate | Mapping[str, Any]) -> PromptTemplate:
    if isinstance(prompt, PromptTemplate):
        return prompt
    return PromptTemplate(**{k: v for k, v in dict(prompt).items() if not k.startswith("_")})


def reply_text(obj: Mapping[str, Any], key: str, what: str | None = None, *, optional: bool = False) -> str:
    """obj[key] as stripped, non-empty text without any trace tag; InvalidReply otherwise."""
    what = what or f'"{key}"'
    value = obj.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise InvalidReply(f"{what} must be non-empty text")
    if found := _TAG.search(value):
        raise InvalidReply(f"{what} must not contain the tag {found.group(0)}")
    return " ".join(value.split())


def parse_letter(value: Any, letters: Sequence[str]) -> str:
    """"B", "(B)", "B." or "B. text" -> "B"; InvalidReply unless it is one of `letters`."""
    found = _LETTER.match(value.strip()) if isinstance(value, str) else None
    if not found or found.group(1) not in letters:
        raise InvalidReply(f'"answer" must be one of the letters {"".join(letters)}, got {value!r}')
    return found.group(1)


def segment_payload(segments: Sequence[Segment], text_key: str = "caption") -> list[dict[str, Any]]:
    return [{"id": i + 1, "time": format_span(s.start, s.end), "start": s.start, "end": s.end,
             text_key: s.caption} for i, s in enumerate(segments)]


def question_payload(record: VideoQA) -> dict[str, Any]:
    """The facts of a multiple-choice record every later stage sends: question, options, gold letter
    and the gold option's text, and the video's duration."""
    letters = record.option_letters
    gold = record.gold
    answer_text = strip_option_prefix(record.options[letters.index(gold)]) if gold in letters else ""
    return {"question": record.problem, "options": list(record.options or []), "answer": gold,
            "answer_text": answer_text, "duration": record.duration}


def _is_mc(record: VideoQA) -> bool:
    return record.problem_type == "multiple choice" and bool(record.options) and record.gold is not None


# --- the shared base ----------------------------------------------------------------------------
@dataclass
class TeacherStage:
    """A stage that asks `model` with `prompt`; temperature and max_tokens default to the model's."""

    model: Any
    prompt: Any
    temperature: float | None = None
    max_tokens: int | None = None
    name: str = "teacher"

    def __post_init__(self) -> None:
        self.prompt = as_prompt(self.prompt)

    @property
    def workers(self) -> int:
        return max(1, int(getattr(self.model, "concurrency", 1) or 1))

    def ask(self, ctx: Context, payload: dict[str, Any], parse, *, variant: int = 0, retry: bool = False,
            temperature: float | None = None, video_url: str | None = None) -> CallResult:
        # Top-level scalars of the payload double as template fields ({answer}, {min_options}, ...).
        fields = {k: v for k, v in payload.items() if isinstance(v, (str, int, float)) and k != "payload"}
        messages = self.prompt.render(payload, retry=retry, **fields)
        if video_url is not None:
            messages = with_video(messages, video_url)
        return ctx.engine.call(self.name, self.model, messages, parse=parse, variant=variant,
                               temperature=temperature if temperature is not None else self.temperature,
                               max_tokens=self.max_tokens)

    def outcome(self, result: CallResult) -> str:
        return "ok" if result.retries == 0 else "ok_after_retry"

    def describe(self) -> dict[str, Any]:
        return {"model": getattr(self.model, "name", str(self.model)), "temperature": self.temperature,
                "max_tokens": self.max_tokens}


# --- questions for caption-labelled videos ------------------------------------------------------
@dataclass
class WriteQuestions(TeacherStage):
    """Stage `questions`: the caption-labelled records of one video -> one multiple-choice question with
    `min_options`–`max_options` options, exactly one correct (distinct options, one answer letter).
    Videos with fewer than `min_segments` segments are dropped ("too_few_segments"); past
    `max_segments`, the first ones by start time are kept. A `type` outside `question_types` (when
    given) is recorded as "other"."""

    min_segments: int = 2
    max_segments: int = 20
    min_options: int = 4
    max_options: int = 6
    question_types: Sequence[str] = ()
    name: str = "questions"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.min_options <= self.max_options <= 26:
            raise ValueError("need 2 <= min_options <= max_options <= 26")
        self.question_types = tuple(self.question_types)

    def __call__(self, records: list[VideoQA], ctx: Context) -> StageResult:
        out = StageResult([])
        groups: dict[str, list[VideoQA]] = {}
        order: list[VideoQA | str] = []  # pass-through records and group keys, in input order
        for record in records:
            if category(record) != "caption":
                order.append(record)
                continue
            if record.path not in groups:
                groups[record.path] = []
                order.append(record.path)
            groups[record.path].append(record)
        made = dict(zip(groups, ctx.engine.map(self.name, lambda g: self._question(g, ctx),
                                               list(groups.values()), workers=self.workers), strict=True))
        for item in order:
            if isinstance(item, VideoQA):
                out.records.append(item)
                continue
            record, reason, detail = made[item]
            if record is None:
                out.drop(self.name, groups[item][0], reason, detail)
            else:
                out.records.append(record)
        out.counts["videos"] = len(groups)
        return out

    def _question(self, group: list[VideoQA], ctx: Context) -> tuple[VideoQA | None, str, str]:
        # Sorted on every field: set order varies between processes, and the prompt (the cache key)
        # must not.
        segments = sorted({s for r in group for s in (r.segments or [])},
                          key=lambda s: (s.start, s.end, s.caption))
        if len(segments) < self.min_segments:
            return None, "too_few_segments", f"{len(segments)} segment(s) < {self.min_segments}"
        segments = segments[: self.max_segments]
        first = group[0]
        payload = {"task": "questions", "source": first.data_source, "duration": first.duration,
                   "segments": segment_payload(segments), "min_options": self.min_options,
                   "max_options": self.max_options, "question_types": list(self.question_types)}
        result = self.ask(ctx, payload, lambda text: self.parse(text, len(segments)))
        if not result.ok:
            return None, result.error, result.detail
        return self._record(group, segments, result), "", ""

    def parse(self, text: str, num_segments: int) -> dict[str, Any]:
        obj = extract_json(text)
        question = reply_text(obj, "question")
        options = obj.get("options")
        if not isinstance(options, list) or not self.min_options <= len(options) <= self.max_options:
            raise InvalidReply(f'"options" must be a list of {self.min_options} to {self.max_options} texts')
        texts = [self._option(option, i) for i, option in enumerate(options)]
        if len({t.casefold() for t in texts}) != len(texts):
            raise InvalidReply("the options must be distinct (exactly one may be correct)")
        answer = parse_letter(obj.get("answer"), option_letters(len(texts)))
        evidence = obj.get("evidence") or list(range(1, num_segments + 1))
        if not isinstance(evidence, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= num_segments for i in evidence):
            raise InvalidReply(f'"evidence" must list segment ids between 1 and {num_segments}')
        kind = obj.get("type")
        kind = " ".join(kind.lower().split()) if isinstance(kind, str) and kind.strip() else "other"
        if self.question_types and kind not in self.question_types:
            kind = "other"
        return {"question": question, "options": texts, "answer": answer,
                "evidence": list(dict.fromkeys(evidence)), "type": kind}

    @staticmethod
    def _option(option: Any, index: int) -> str:
        text = reply_text({"o": option}, "o", f"option {index + 1}")
        # Any label form, but with a space after it, so that "A.5 s" keeps its "A".
        label = split_option_label(text, parens="optional", space_after=True)
        if label and label[0] == option_letter(index):
            text = label[1].strip()  # the model lettered its options itself
        if not text:
            raise InvalidReply(f"option {index + 1} has no text")
        return text

    def _record(self, group: list[VideoQA], segments: list[Segment], result: CallResult) -> VideoQA:
        first, reply = group[0], result.value
        video_id = str(first.extra.get("video_id") or Path(first.path).stem)
        extra = {k: v for k, v in first.extra.items() if k != "provenance"}
        extra["question_type"] = reply["type"]
        extra["video_segments"] = [[s.start, s.end, s.caption] for s in segments]
        extra["provenance"] = provenance(first)
        record = VideoQA(
            problem=reply["question"], path=first.path, data_source=first.data_source,
            problem_type="multiple choice", options=format_options(reply["options"]),
            solution=f"<answer>{reply['answer']}</answer>", answer=reply["answer"],
            problem_id=f"{video_id}_mcq", duration=first.duration,
            segments=[segments[i - 1] for i in reply["evidence"]], extra=extra)
        return with_provenance(record, stage=self.name, outcome=self.outcome(result),
                               stage_entry=result.provenance(self.model.name),
                               source_ids=[r.key for r in group])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "grouping": "one question per video from all its segments",
                "options": [self.min_options, self.max_options], "min_segments": self.min_segments,
                "max_segments": self.max_segments, "question_types": list(self.question_types)}


# --- captions for QA-labelled records -----------------------------------------------------------
@dataclass
class WriteCaptions(TeacherStage):
    """Stage `captions`: for each QA-labelled record, one answer-conditioned caption per segment (the
    teacher sees question, options, gold answer and the spans; an existing segment text is passed as a
    `note`). Records without segments are dropped ("no_segments"). The paper's captioner watches the
    video: with `sees_video` the request carries it as an OpenAI `video_url` part (`video_url_prefix` +
    absolute path), for a server that takes video; off by default, as text-only servers reject it."""

    sees_video: bool = False
    video_url_prefix: str = "file://"
    name: str = "captions"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sees_video": self.sees_video}

    def __call__(self, records: list[VideoQA], ctx: Context) -> StageResult:
        out = StageResult([])
        todo = [r for r in records if category(r) == "qa"]
        done = iter(ctx.engine.map(self.name, lambda r: self._caption(r, ctx), todo, workers=self.workers))
        for record in records:
            if category(record) != "qa":
                out.records.append(record)
                continue
            captioned, reason, detail = next(done)
            if captioned is None:
                out.drop(self.name, record, reason, detail)
            else:
                out.records.append(captioned)
        return out

    def _caption(self, record: VideoQA, ctx: Context) -> tuple[VideoQA | None, str, str]:
        if not _is_mc(record):
            return None, "not_multiple_choice", record.problem_type
        if not record.segments:
            return None, "no_segments", "a QA record needs temporal annotations to caption"
        segments = record.segments
        payload = {"task": "captions", **question_payload(record),
                   "segments": segment_payload(segments, "note")}
        video = self.video_url_prefix + str(ctx.video_path(record).resolve()) if self.sees_video else None
        result = self.ask(ctx, payload, lambda text: self.parse(text, len(segments)), video_url=video)
        if not result.ok:
            return None, result.error, result.detail
        new = [Segment(s.start, s.end, c) for s, c in zip(segments, result.value, strict=True)]
        extra_prov: dict[str, Any] = {}
        if any(s.caption for s in segments):
            extra_prov["original_captions"] = [s.caption for s in segments]
        return with_provenance(record.replace(segments=new), stage=self.name, outcome=self.outcome(result),
                               stage_entry=result.provenance(self.model.name), **extra_prov), "", ""

    @staticmethod
    def parse(text: str, num_segments: int) -> list[str]:
        captions = extract_json(text).get("captions")
        if not isinstance(captions, list) or len(captions) != num_segments:
            raise InvalidReply(f'"captions" must be a list of exactly {num_segments} texts, one per segment')
        return [reply_text({"c": c}, "c", f"caption {i + 1}") for i, c in enumerate(captions)]


# --- traces -------------------------------------------------------------------------------------
TIME_ROUNDING = ("outward", "none")


@dataclass
class SynthesizeTraces(TeacherStage):
    """Stage `traces` ("reverse curation"): the teacher sees question, options, gold answer and the
    captioned key segments, and writes the steps of the trace (see the module docstring). `generate`
    is also what the hindsight stage calls to regenerate a trace (attempt k >= 1 adds the prompt's
    retry note and uses `regeneration_temperature` when set)."""

    time_rounding: str = "outward"
    max_steps: int = 12
    regeneration_temperature: float | None = None
    name: str = "traces"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.time_rounding not in TIME_ROUNDING:
            raise ValueError(f"time_rounding must be one of {TIME_ROUNDING}, got {self.time_rounding!r}")

    def __call__(self, records: list[VideoQA], ctx: Context) -> StageResult:
        out = StageResult([])
        results = ctx.engine.map(self.name, lambda r: self.generate(r, ctx), records, workers=self.workers)
        for record, (traced, result) in zip(records, results, strict=True):
            if traced is None:
                out.drop(self.name, record, result.error, result.detail)
            else:
                out.records.append(traced)
        return out

    def generate(self, record: VideoQA, ctx: Context, attempt: int = 0) -> tuple[VideoQA | None, CallResult]:
        """(the record with a new trace, the call) or (None, the failed call)."""
        if not _is_mc(record) or not record.segments:
            reason = "no_segments" if _is_mc(record) else "not_multiple_choice"
            return None, CallResult(error=reason, detail="traces need a multiple-choice record with segments")
        payload = {"task": "traces", **question_payload(record), "segments": segment_payload(record.segments)}
        temperature = self.regeneration_temperature if attempt and self.regeneration_temperature is not None \
            else None
        result = self.ask(ctx, payload, lambda text: self.parse(text, record), variant=attempt,
                          retry=attempt > 0, temperature=temperature)
        if not result.ok:
            return None, result
        entries = list(provenance(record).get("stages", {}).get(self.name, []))
        entries.append({**result.provenance(self.model.name), "attempt": attempt})
        traced = record.replace(process=result.value)
        traced = with_provenance(traced, stage=self.name, outcome=self.outcome(result), stage_entry=entries)
        return traced, result

    def parse(self, text: str, record: VideoQA) -> str:
        obj = extract_json(text)
        raw_steps = obj.get("steps")
        if not isinstance(raw_steps, list) or not 1 <= len(raw_steps) <= self.max_steps:
            raise InvalidReply(f'"steps" must be a list of 1 to {self.max_steps} steps')
        steps = [self._step(step, i, record.duration) for i, step in enumerate(raw_steps)]
        try:
            process = render_process(steps, preamble=reply_text(obj, "preamble", optional=True),
                                     closing=reply_text(obj, "closing", optional=True))
        except ValueError as exc:
            raise InvalidReply(str(exc)) from None
        check = check_format(f"{process}\n{record.solution}", duration=record.duration)
        if not check.ok:
            raise InvalidReply("the trace breaks the format: " + "; ".join(check.reasons[:3]))
        return process

    def _step(self, step: Any, index: int, duration: float | None) -> TraceStep:
        what = f"step {index + 1}"
        if not isinstance(step, dict):
            raise InvalidReply(f"{what} must be an object with start, end, caption and think")
        start, end = _step_span(step, what)
        if self.time_rounding == "outward":
            start, end = float(math.floor(start)), float(math.ceil(end))
        if duration is not None:
            if start >= duration:
                raise InvalidReply(f"{what} starts at {start} s, after the video ends ({duration} s)")
            end = min(end, float(duration))
        if not start < end:
            raise InvalidReply(f"{what} has an empty span ({start}-{end} s)")
        return TraceStep(start, end, reply_text(step, "caption", f"{what} caption"),
                         reply_text(step, "think", f"{what} think"),
                         reply_text(step, "lead", f"{what} lead", optional=True))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "time_rounding": self.time_rounding, "time_format": "MM:SS (H:MM:SS "
                "past an hour), vt_data.timespan.format_span", "max_steps": self.max_steps,
                "regeneration_temperature": self.regeneration_temperature}


def _step_span(step: Mapping[str, Any], what: str) -> tuple[float, float]:
    if isinstance(step.get("time"), str):
        span = parse_span(step["time"])
        if span is None:
            raise InvalidReply(f"{what}: cannot read the span {step['time']!r}")
        return span
    values = []
    for key in ("start", "end"):
        value = step.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            values.append(float(value))
        elif isinstance(value, str) and (seconds := parse_time(value)) is not None:
            values.append(seconds)
        else:
            raise InvalidReply(f"{what}: {key!r} must be seconds or a time like 00:12, got {value!r}")
    if values[0] < 0 or values[1] < values[0]:
        raise InvalidReply(f"{what}: need 0 <= start <= end, got {values[0]}-{values[1]}")
    return values[0], values[1]
