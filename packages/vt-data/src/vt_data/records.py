"""The one typed record for a video question, read and written losslessly in the Video-R1 /
Video-Thinker JSON schema, plus our optional fields (duration, ground-truth segments, answer)."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vt_data.files import atomic_open, write_jsonl_atomic
from vt_data.trace import answer_tag_body

# The Video-R1 schema, in the order its files use. Every reader/writer goes through these names.
VIDEO_R1_FIELDS = (
    "problem_id",
    "problem",
    "data_type",
    "problem_type",
    "options",
    "process",
    "solution",
    "path",
    "data_source",
)
# Our additions; absent from Video-R1 files and only written when set.
EXTRA_FIELDS = ("duration", "segments", "answer")

# The Video-R1 types, plus "grounding" (ours): the answer is a time span, e.g. "<answer>00:12-00:20</answer>",
# used for Charades-STA / ActivityNet Captions queries and the caption-labelled curation sources.
PROBLEM_TYPES = ("multiple choice", "numerical", "OCR", "free-form", "regression", "grounding")
DATA_TYPES = ("video", "image")

# `split_option_label(parens=...)`: the letter bare ("no"), bare or "(A)" ("optional"), "(A)" ("required").
_LABEL_LETTER = {"no": r"([A-Z])", "optional": r"\(?([A-Z])\)?", "required": r"\(([A-Z])\)"}


class RecordError(ValueError):
    """A record that fails to parse or validate; the message names the source, line and field."""

    def __init__(self, message: str, *, source: str | None = None, line: int | str | None = None,
                 field_name: str | None = None):
        # `line` is a 1-based line number (text/JSONL), or a string such as "[3]" (index into a
        # JSON list) or "video 'v_x'" for files keyed by id; the location reads file:12 / file[3].
        where = source or ""
        if isinstance(line, int):
            where += f":{line}"
        elif line:
            where += line if line.startswith("[") else f" ({line})"
        prefix = f"{where}: " if where else ""
        prefix += f"field '{field_name}': " if field_name else ""
        super().__init__(prefix + message)
        self.source, self.line, self.field_name = source, line, field_name


@dataclass(frozen=True)
class Segment:
    """A ground-truth time span in seconds with the caption of what is visible in it."""

    start: float
    end: float
    caption: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "caption": self.caption}

    @classmethod
    def from_obj(cls, obj: Any) -> Segment:
        if isinstance(obj, dict):
            return cls(float(obj["start"]), float(obj["end"]), str(obj.get("caption", "")))
        start, end, *rest = obj  # [start, end] or [start, end, caption]
        return cls(float(start), float(end), str(rest[0]) if rest else "")


def option_letter(index: int) -> str:
    return chr(ord("A") + index)


def option_letters(count: int) -> list[str]:
    """The letters of `count` options: 3 -> ["A", "B", "C"]."""
    return [option_letter(i) for i in range(count)]


def format_options(texts: Iterable[str]) -> list[str]:
    """Prefix bare option texts with their letters: ["red", "blue"] -> ["A. red", "B. blue"]."""
    return [f"{option_letter(i)}. {t.strip()}" for i, t in enumerate(texts)]


@functools.cache
def _label_pattern(separators: str, parens: str, space_after: bool) -> re.Pattern[str]:
    if parens not in _LABEL_LETTER:
        raise ValueError(f"parens must be one of {', '.join(_LABEL_LETTER)}, got {parens!r}")
    separator = rf"\s*[{re.escape(separators)}]" if separators else ""
    return re.compile(rf"^\s*{_LABEL_LETTER[parens]}{separator}" + (r"\s+" if space_after else r"\s*"))


def split_option_label(text: str, *, separators: str = ".:)", parens: str = "no",
                       space_after: bool = False) -> tuple[str, str] | None:
    """The option parser: "B. a red square" -> ("B", "a red square"); None without a leading label.

    A label is a capital letter after optional whitespace, then (spaces allowed) one of `separators`
    ("" for none). `parens` says whether the letter may ("optional") or must ("required") be written
    "(B)", or is bare ("no"). The whitespace after the label is dropped; `space_after` requires some,
    so that "A.5 s" is not read as a label. The rest is returned as it is (trailing space kept).

    Sources label options differently, so each caller states its form: records and most benchmarks
    use the default ("A." "A:" "A)"); TempCompass lines only "A." "A)" (`separators=".)"`); LVBench
    only "(A)" (`separators="", parens="required"`); teacher-written options any of these, with a
    space after (`parens="optional", space_after=True`).
    """
    found = _label_pattern(separators, parens, space_after).match(text)
    return (found.group(1), text[found.end():]) if found else None


def strip_option_prefix(option: str) -> str:
    """'B. a red square' -> 'a red square' (unchanged when there is no letter prefix)."""
    label = split_option_label(option)
    return label[1] if label else option


def answer_from_solution(solution: str) -> str | None:
    """The stripped inner text of the first answer tag of a `solution` field, or None when there is none."""
    body = answer_tag_body(solution or "", first=True)
    return body.strip() if body is not None else None


@dataclass
class VideoQA:
    """One video question. Field names and meanings follow method.md §4 (the Video-R1 schema).

    `extra` keeps keys this schema does not know (e.g. `original_question_type`) so files pass
    through unchanged; `absent` and `nulls` remember which schema keys the source did not have
    or had as null, and
    `key_order` the source's key order, so a rewritten file is byte-stable.
    """

    problem: str
    path: str
    data_source: str
    problem_type: str = "multiple choice"
    data_type: str = "video"
    options: list[str] | None = None
    process: str = ""
    solution: str = ""
    problem_id: int | str | None = None
    duration: float | None = None
    segments: list[Segment] | None = None
    answer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = field(default_factory=frozenset, compare=False, repr=False)
    nulls: frozenset[str] = field(default_factory=frozenset, compare=False, repr=False)
    key_order: tuple[str, ...] = field(default=(), compare=False, repr=False)

    # -- derived views -------------------------------------------------------------------------
    @property
    def gold(self) -> str | None:
        """The gold answer: the explicit `answer` field, else the one in `solution`'s tag."""
        return self.answer if self.answer is not None else answer_from_solution(self.solution)

    @property
    def option_letters(self) -> list[str]:
        return option_letters(len(self.options or []))

    @property
    def target(self) -> str:
        """The SFT target: the trace, a newline, then the answer tag (method.md §4)."""
        solution = self.solution or (f"<answer>{self.answer}</answer>" if self.answer else "")
        return f"{self.process}\n{solution}" if self.process else solution

    @property
    def key(self) -> str:
        """A stable identifier for shards and caches (source + id, or source + path + question)."""
        if self.problem_id is not None:
            return f"{self.data_source}-{self.problem_id}"
        import hashlib

        digest = hashlib.sha1(f"{self.path}\n{self.problem}".encode()).hexdigest()[:12]
        return f"{self.data_source}-{digest}"

    def replace(self, **changes: Any) -> VideoQA:
        return dataclasses.replace(self, **changes)

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in VIDEO_R1_FIELDS:
            value = getattr(self, name)
            if name in self.absent and value == _FIELD_DEFAULTS.get(name):
                continue  # the source did not have it and nobody set it since
            if name == "problem_id" and value is None:
                continue
            out[name] = None if name in self.nulls and value == "" else value
        if self.duration is not None:
            out["duration"] = self.duration
        if self.segments is not None:
            out["segments"] = [s.to_dict() for s in self.segments]
        if self.answer is not None:
            out["answer"] = self.answer
        out.update(self.extra)
        if self.key_order:
            rank = {k: i for i, k in enumerate(self.key_order)}
            out = dict(sorted(out.items(), key=lambda kv: rank.get(kv[0], len(rank))))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, obj: Any, *, source: str | None = None, line: int | None = None) -> VideoQA:
        """Parse one record. Type errors name the source, line and field; content is checked by
        `validate`, so a structurally sound but wrong record still loads for reporting."""

        def fail(message: str, name: str | None = None) -> RecordError:
            return RecordError(message, source=source, line=line, field_name=name)

        if not isinstance(obj, dict):
            raise fail(f"a record must be a JSON object, got {type(obj).__name__}")
        for name in ("problem", "path"):
            if name not in obj:
                raise fail("is missing", name)
        kwargs: dict[str, Any] = {}
        nulls = set()
        for name in ("problem", "path", "data_source", "problem_type", "data_type", "process",
                     "solution"):
            if name in obj:
                value = obj[name]
                if value is None and name in ("process", "solution", "data_source"):
                    value = ""
                    nulls.add(name)
                if not isinstance(value, str):
                    raise fail(f"must be a string, got {type(value).__name__}", name)
                kwargs[name] = value
        kwargs.setdefault("data_source", "")
        if "options" in obj:
            options = obj["options"]
            if options is not None:
                if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
                    raise fail("must be a list of strings or null", "options")
            kwargs["options"] = options
        if "problem_id" in obj:
            pid = obj["problem_id"]
            if pid is not None and (isinstance(pid, bool) or not isinstance(pid, (int, str))):
                raise fail(f"must be an integer or string, got {type(pid).__name__}", "problem_id")
            kwargs["problem_id"] = pid
        if obj.get("duration") is not None:
            try:
                duration = obj["duration"]
                # Keep an int an int, so `30` is written back as `30`, not `30.0`.
                kwargs["duration"] = duration if type(duration) in (int, float) else float(duration)
            except (TypeError, ValueError):
                raise fail(f"must be a number of seconds, got {obj['duration']!r}", "duration") from None
        if obj.get("segments") is not None:
            try:
                kwargs["segments"] = [Segment.from_obj(s) for s in obj["segments"]]
            except (TypeError, ValueError, KeyError) as exc:
                message = f"each segment needs start, end (seconds) and caption: {exc}"
                raise fail(message, "segments") from None
        if obj.get("answer") is not None:
            kwargs["answer"] = str(obj["answer"])
        known = set(VIDEO_R1_FIELDS) | set(EXTRA_FIELDS)
        kwargs["extra"] = {k: v for k, v in obj.items() if k not in known}
        kwargs["absent"] = frozenset(n for n in VIDEO_R1_FIELDS if n not in obj)
        kwargs["key_order"] = tuple(obj)
        kwargs["nulls"] = frozenset(nulls)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str, *, source: str | None = None, line: int | None = None) -> VideoQA:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"invalid JSON: {exc.msg} at column {exc.colno}", source=source,
                              line=line) from None
        return cls.from_dict(obj, source=source, line=line)


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(VideoQA)
                   if f.default is not dataclasses.MISSING}


# -- validation ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One thing wrong with a record: the field and a sentence a person can act on."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"field '{self.field}': {self.message}"


def validate(record: VideoQA, *, video_root: str | Path | None = None) -> list[Problem]:
    """Every problem with a record's content, empty when it is sound. With `video_root`, the video
    file must exist under it (absolute paths and URLs are checked as they are / skipped)."""
    problems: list[Problem] = []
    add = lambda name, message: problems.append(Problem(name, message))  # noqa: E731

    if not record.problem.strip():
        add("problem", "the question is empty")
    if not record.path.strip():
        add("path", "the video path is empty")
    elif video_root is not None and "://" not in record.path:
        candidate = Path(record.path)
        if not candidate.is_absolute():
            candidate = Path(video_root) / record.path.removeprefix("./")
        if not candidate.is_file():
            add("path", f"video file not found: {candidate}")
    if record.problem_type not in PROBLEM_TYPES:
        add("problem_type", f"{record.problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
    if record.data_type not in DATA_TYPES:
        add("data_type", f"{record.data_type!r} is not one of {', '.join(DATA_TYPES)}")

    gold = record.gold
    if record.answer is not None and answer_from_solution(record.solution) not in (None, record.answer):
        add("answer", f"{record.answer!r} disagrees with the solution tag {record.solution!r}")
    if record.problem_type == "multiple choice":
        options = record.options or []
        if len(options) < 2:
            add("options", f"a multiple-choice question needs at least 2 options, got {len(options)}")
        for i, option in enumerate(options):
            label = split_option_label(option)
            if not label or label[0] != option_letter(i):
                add("options", f"option {i} must start with '{option_letter(i)}.', got {option[:40]!r}")
            elif not label[1].strip():
                add("options", f"option {option_letter(i)} has no text")
        if gold is None:
            add("solution", "no gold answer: expected '<answer>X</answer>' or an 'answer' field")
        elif options and gold not in record.option_letters:
            add("solution", f"gold answer {gold!r} is not one of the option letters "
                            f"{''.join(record.option_letters)}")
    elif gold is None or not gold.strip():
        add("solution", "no gold answer in '<answer>…</answer>'")
    elif record.problem_type == "grounding":
        from vt_data.timespan import parse_span

        if parse_span(gold) is None:
            add("solution", f"a grounding answer must be a time span like 00:12-00:20, got {gold!r}")

    if record.duration is not None and not record.duration > 0:
        add("duration", f"must be positive, got {record.duration}")
    for i, seg in enumerate(record.segments or []):
        if not (seg.start >= 0):
            add("segments", f"segment {i} starts before 0 s ({seg.start})")
        if not (seg.end > seg.start):
            add("segments", f"segment {i} ends at {seg.end} s, not after its start {seg.start} s")
        if record.duration is not None and seg.end > record.duration + 1e-6:
            add("segments", f"segment {i} ends at {seg.end} s, past the video's {record.duration} s")
    return problems


# -- files ---------------------------------------------------------------------------------------
def read_json(path: str | Path) -> Any:
    """A whole JSON file; a syntax error raises RecordError naming file and line. utf-8-sig because
    some annotation dumps start with a byte-order mark, which json.loads rejects."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise RecordError(f"invalid JSON: {exc.msg} at column {exc.colno}", source=str(path),
                          line=exc.lineno) from None


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed object) for each non-blank line of a JSONL file."""
    with Path(path).open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"invalid JSON: {exc.msg} at column {exc.colno}", source=str(path),
                                  line=lineno) from None


def iter_records(path: str | Path) -> Iterator[tuple[int, VideoQA]]:
    """(line or list index, record) from a .jsonl file (1-based lines) or a .json list (0-based
    indices; errors read file[3])."""
    path = Path(path)
    if path.suffix == ".jsonl":
        for lineno, obj in iter_json_lines(path):
            yield lineno, VideoQA.from_dict(obj, source=str(path), line=lineno)
        return
    items = read_json(path)
    if not isinstance(items, list):
        raise RecordError("expected a JSON list of records", source=str(path))
    for index, item in enumerate(items):
        yield index, VideoQA.from_dict(item, source=str(path), line=f"[{index}]")


def load_records(path: str | Path) -> list[VideoQA]:
    return [record for _, record in iter_records(path)]


def write_records(records: Iterable[VideoQA], path: str | Path) -> int:
    """Write .jsonl (one record per line) or .json (a list, as Video-R1 files are); returns count.
    Written atomically (`vt_data.files`), so a crash never leaves half a file."""
    path = Path(path)
    if path.suffix == ".jsonl":
        # A line is `record.to_json()`: the same JSON as write_jsonl_atomic's of `to_dict()`.
        return write_jsonl_atomic(path, (record.to_dict() for record in records))
    items = [r.to_dict() for r in records]
    with atomic_open(path) as fh:
        json.dump(items, fh, ensure_ascii=False, indent=1)
    return len(items)
