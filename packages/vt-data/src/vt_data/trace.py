"""The Video-Thinker trace grammar: render, parse, check and extract answers from model traces."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from vt_data.timespan import Span, format_span, parse_span

# --- the grammar, in one place (method.md §2.2, §8.1) -------------------------------------------
#   trace   := text? triple (text? triple)* text? answer
#   triple  := "<time>" span "</time>" ws "<caption>" text "</caption>" ws "<think>" text "</think>"
#   answer  := "<answer>" ws? LETTER ws? "</answer>" ws? END
TRIPLE_TAGS = ("time", "caption", "think")
ANSWER_TAG = "answer"
TAG_NAMES = (*TRIPLE_TAGS, ANSWER_TAG)

# One alternation, no nested quantifiers: matching is linear in the input, however adversarial.
# Case-insensitive because the released evaluator reads `<ANSWER>` too; non-lower-case tags are
# still reported as a grammar problem.
_TAG_RE = re.compile(r"<(/?)(time|caption|think|answer)>", re.IGNORECASE)
_LETTER_RE = re.compile(r"[A-Z]")
_FINAL_ANSWER_RE = re.compile(r"final answer:", re.IGNORECASE)
# Paper step 4: a standalone capital letter at the start, i.e. followed by whitespace or the end.
# "A." and "(A)" are therefore not standalone: strict scoring marks them wrong (benchmarks.md §6.5).
_LEADING_LETTER_RE = re.compile(r"\s*([A-Z])(?=\s|$)")
# Lenient only: the option-label forms "(A)", "[A]", "A.", "A)", "A:" at the start.
_LEADING_LABEL_RE = re.compile(r"\s*(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])[.):])(?!\w)")
_SCAN_LETTERS = "ABCDEFGHIJKLMNO"
_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|[-+]?\.\d+")


# --- rendering ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TraceStep:
    """One reasoning step: a span in seconds, its caption and analysis, and free text before it."""

    start: float
    end: float
    caption: str
    think: str
    lead: str = ""

    @property
    def span(self) -> Span:
        return (self.start, self.end)


def _checked(text: str, what: str) -> str:
    """`text` unchanged; ValueError if it holds a grammar tag, which would make the trace unparsable."""
    if found := _TAG_RE.search(text):
        raise ValueError(f"{what} contains the tag {found.group(0)!r}: {text[:60]!r}")
    return text


def render_time_tag(start: float, end: float) -> str:
    """`<time>MM:SS-MM:SS</time>`: a triple's first tag (also what GRPO's guided spans write)."""
    return f"<time>{format_span(start, end)}</time>"


def render_triple(step: TraceStep) -> str:
    """`<time>MM:SS-MM:SS</time> <caption>…</caption> <think>…</think>` for one step (no lead).

    Raises ValueError for end < start, a negative time, or a caption or think holding a tag.
    """
    _checked(step.caption, "caption")
    _checked(step.think, "think")
    return (
        f"{render_time_tag(step.start, step.end)} "
        f"<caption>{step.caption}</caption> <think>{step.think}</think>"
    )


def render_process(steps: Iterable[TraceStep], *, preamble: str = "", closing: str = "") -> str:
    """The trace without its answer tag (a record's `process` field): preamble, each step's lead and
    triple, then the closing text, joined by single spaces."""
    parts = [_checked(preamble, "preamble")] if preamble else []
    for step in steps:
        _checked(step.lead, "lead")
        parts.append(f"{step.lead} {render_triple(step)}" if step.lead else render_triple(step))
    if closing:
        parts.append(_checked(closing, "closing"))
    return " ".join(parts)


def render_trace(
    steps: Iterable[TraceStep], answer: str | None, *, preamble: str = "", closing: str = ""
) -> str:
    """The full trace: `render_process(...)`, then a newline and `<answer>X</answer>` when `answer`
    is given, so that it equals `VideoQA.target` for `process=render_process(...)`."""
    process = render_process(steps, preamble=preamble, closing=closing)
    if answer is None:
        return process
    tag = f"<answer>{answer}</answer>"
    return f"{process}\n{tag}" if process else tag


# --- parsing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tag:
    """A closed tag found in the text: its lower-cased name, inner text and character offsets."""

    name: str
    body: str
    start: int  # offset of "<"
    end: int  # offset just past ">" of the closing tag


@dataclass(frozen=True)
class ParsedStep:
    """One `<time>/<caption>/<think>` triple as written: `span` is None when the time does not parse."""

    raw_time: str
    span: Span | None
    caption: str
    think: str
    lead: str = ""

    def to_step(self) -> TraceStep | None:
        """The `TraceStep`, or None when the span did not parse."""
        if self.span is None:
            return None
        return TraceStep(self.span[0], self.span[1], self.caption, self.think, self.lead)


@dataclass
class ParsedTrace:
    """What `parse_trace` found. `problems` is empty iff the text follows the grammar exactly."""

    steps: list[ParsedStep] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # stripped bodies of every closed answer tag
    text_after_answer: str = ""  # raw text after the last closed answer tag
    closing: str = ""  # free text after the last triple, before the first answer tag (stripped)
    tags: list[Tag] = field(default_factory=list)  # every closed tag, in order
    problems: list[str] = field(default_factory=list)

    @property
    def answer(self) -> str | None:
        """The last answer tag's body (the one the evaluator reads)."""
        return self.answers[-1] if self.answers else None

    @property
    def spans(self) -> list[Span]:
        """The parsable spans of the complete triples, in order (the predicted grounding)."""
        return [s.span for s in self.steps if s.span is not None]

    def count(self, name: str) -> int:
        """How many closed `<name>` tags the text has (in a triple or not)."""
        return sum(tag.name == name for tag in self.tags)


def _tokenize(text: str, problems: list[str]) -> list[Tag | str]:
    """Split `text` into closed tags and the free text between them, reporting tag-level problems.

    Recovery keeps the parse linear and useful: an opening tag inside an open one leaves the outer
    one unclosed (dropped), a mismatched closing tag closes the open one, a stray closing tag is
    dropped. Free text inside a dropped tag is lost; the problems say so.
    """
    elements: list[Tag | str] = []
    open_name: str | None = None
    open_at = 0  # offset of the open tag's "<"
    cursor = 0  # end of the last consumed token
    for match in _TAG_RE.finditer(text):
        closing, raw_name = match.group(1) == "/", match.group(2)
        name = raw_name.lower()
        if raw_name != name:
            problems.append(f"tag {match.group(0)!r} at {match.start()} is not lower-case")
        if open_name is None:
            if closing:
                problems.append(f"stray </{name}> at {match.start()} closes nothing")
                elements.append(text[cursor : match.start()])
            else:
                elements.append(text[cursor : match.start()])
                open_name, open_at = name, match.start()
            cursor = match.end()
            continue
        if not closing:
            problems.append(f"<{name}> at {match.start()} is nested in unclosed <{open_name}> at {open_at}")
            open_name, open_at = name, match.start()
            cursor = match.end()
            continue
        if name != open_name:
            problems.append(f"</{name}> at {match.start()} closes <{open_name}> opened at {open_at}")
        elements.append(Tag(open_name, text[cursor : match.start()], open_at, match.end()))
        open_name, cursor = None, match.end()
    if open_name is not None:
        problems.append(f"<{open_name}> at {open_at} is never closed")
    else:
        elements.append(text[cursor:])
    return [e for e in elements if not isinstance(e, str) or e]


def parse_trace(text: str) -> ParsedTrace:
    """Parse a trace into triples, answers and a list of grammar problems. Never raises; linear time.

    Problems reported: tag-level ones (unclosed, nested, stray or mismatched, non-lower-case tags),
    triples out of order or incomplete, non-whitespace between tags of a triple, empty caption or
    think, unparsable or reversed spans, more than one answer tag, anything but whitespace after
    the answer, and a missing answer.
    """
    if not isinstance(text, str):
        return ParsedTrace(problems=[f"not a string: {type(text).__name__}"])
    result = ParsedTrace()
    problems = result.problems
    elements = _tokenize(text, problems)

    lead: list[str] = []  # free text since the last complete triple
    partial: list[Tag] = []  # the open triple: [time] or [time, caption]
    seen_answer = False

    def drop_partial(reason: str) -> None:
        if partial:
            problems.append(f"incomplete triple at {partial[0].start}: {reason}")
            partial.clear()

    for element in elements:
        if isinstance(element, str):
            if seen_answer:
                continue  # reported once below via text_after_answer
            if partial and element.strip():
                problems.append(f"text between tags of the triple at {partial[0].start}")
            elif not partial:
                lead.append(element)
            continue
        result.tags.append(element)
        if seen_answer:
            problems.append(f"<{element.name}> at {element.start} comes after the answer")
        if element.name == ANSWER_TAG:
            drop_partial("the answer comes before <think>")
            if seen_answer:
                problems.append(f"more than one <answer> (another at {element.start})")
            else:
                result.closing = "".join(lead).strip()
            result.answers.append(element.body.strip())
            result.text_after_answer = text[element.end :]
            seen_answer = True
        elif element.name == "time":
            drop_partial("a new <time> starts before <think>")
            partial.append(element)
        elif element.name == "caption":
            if len(partial) == 1:
                partial.append(element)
            else:
                drop_partial("two <caption> tags")
                problems.append(f"<caption> at {element.start} does not follow a <time>")
        else:  # think
            if len(partial) == 2:
                result.steps.append(_make_step(partial[0], partial[1], element, "".join(lead), problems))
                partial.clear()
                lead.clear()
            else:
                drop_partial("<think> comes before <caption>")
                problems.append(f"<think> at {element.start} does not follow <time> and <caption>")
    drop_partial("the text ends before <think>")

    if not seen_answer:
        result.closing = "".join(lead).strip()
        problems.append("no closed <answer> tag")
    elif result.text_after_answer.strip():
        problems.append("text after the answer tag")
    return result


def _make_step(time: Tag, caption: Tag, think: Tag, lead: str, problems: list[str]) -> ParsedStep:
    """A complete triple; reports an unparsable span and empty caption or think."""
    span = parse_span(time.body)
    if span is None:
        problems.append(f"<time> at {time.start} does not hold a valid span: {time.body[:40]!r}")
    for tag in (caption, think):
        if not tag.body.strip():
            problems.append(f"empty <{tag.name}> at {tag.start}")
    return ParsedStep(time.body, span, caption.body.strip(), think.body.strip(), lead.strip())


# --- format check (the r_fmt rule, method.md §8.1) ----------------------------------------------
ANSWER_KINDS = ("letter", "any")


@dataclass
class FormatCheck:
    """Result of `check_format`: `ok` iff `reasons` is empty."""

    ok: bool
    reasons: list[str]
    trace: ParsedTrace


def _strict_reasons(trace: ParsedTrace, duration: float | None, answer_kind: str) -> list[str]:
    reasons = list(trace.problems)
    if not trace.steps:
        reasons.append("no complete <time>/<caption>/<think> triple")
    counts = {name: trace.count(name) for name in TRIPLE_TAGS}
    if len(set(counts.values())) > 1:
        reasons.append(f"unequal tag counts {counts}")
    for i, step in enumerate(trace.steps):
        if step.span is None:
            continue  # already a parse problem
        start, end = step.span
        if not start < end:
            reasons.append(f"step {i}: empty span {step.raw_time.strip()!r}")
        if duration is not None and end > duration:
            reasons.append(f"step {i}: span {step.raw_time.strip()!r} ends after the video ({duration} s)")
    if len(trace.answers) == 1 and answer_kind == "letter" and not _LETTER_RE.fullmatch(trace.answers[0]):
        reasons.append(f"the answer {trace.answers[0][:20]!r} is not one capital letter")
    if len(trace.answers) == 1 and answer_kind == "any" and not trace.answers[0]:
        reasons.append("the answer tag is empty")
    return reasons


def _lenient_reasons(trace: ParsedTrace, answer_kind: str) -> list[str]:
    reasons = []
    answer = trace.answer
    if answer is None:
        reasons.append("no closed <answer> tag")
    elif answer_kind == "letter" and extract_answer(f"<answer>{answer}</answer>", mode="lenient") is None:
        reasons.append(f"no option letter in the last answer {answer[:20]!r}")
    elif not answer:
        reasons.append("the last answer tag is empty")
    if not any(tag.name == "time" and parse_span(tag.body) is not None for tag in trace.tags):
        reasons.append("no <time> tag holds a valid span")
    return reasons


def check_format(
    text: str,
    *,
    duration: float | None = None,
    max_chars: int | None = None,
    strict: bool = True,
    answer_kind: str = "letter",
) -> FormatCheck:
    """Whether `text` is a well-formed Video-Thinker trace; never raises on arbitrary text.

    Strict (the project's r_fmt, method.md §8.1): no grammar problem at all (balanced, non-nested,
    lower-case tags; triples in order with only whitespace inside; non-empty captions and thinks);
    at least one triple; equal time/caption/think counts; every span parses with start < end and
    ends within `duration` when given; exactly one answer, last, holding one capital letter
    (`answer_kind="letter"`) or anything non-empty (`"any"`).

    Lenient (`strict=False`): the last answer tag exists and holds a valid answer of `answer_kind`,
    and at least one `<time>` anywhere holds a parsable span; stray text, broken triples and extra
    answer tags are tolerated. `max_chars` applies in both modes.
    """
    if answer_kind not in ANSWER_KINDS:
        raise ValueError(f"answer_kind must be one of {ANSWER_KINDS}, got {answer_kind!r}")
    trace = parse_trace(text)
    if strict:
        reasons = _strict_reasons(trace, duration, answer_kind)
    else:
        reasons = _lenient_reasons(trace, answer_kind)
    if max_chars is not None and isinstance(text, str) and len(text) > max_chars:
        reasons.append(f"{len(text)} characters, more than {max_chars}")
    return FormatCheck(ok=not reasons, reasons=reasons, trace=trace)


# --- answer extraction (method.md §8.3, benchmarks.md §1.2) -------------------------------------
EXTRACT_MODES = ("strict", "lenient")


def answer_tag_body(text: str, *, first: bool = False) -> str | None:
    """The inner text, unstripped, of an `<answer>…</answer>` (case-insensitive, across lines); None
    without a closed one. By default the last: the last closing tag and the last opening tag before
    it (what the evaluator reads from a model's output). With `first`, the first: from the first
    opening tag to the first closing tag after it (the gold answer of a record's `solution` field).
    Linear, unlike a lazy-dot regex."""
    body: str | None = None
    opened: re.Match[str] | None = None
    for match in _TAG_RE.finditer(text):
        if match.group(2).lower() != ANSWER_TAG:
            continue
        if not match.group(1):
            if opened is None or not first:
                opened = match
        elif opened is not None:
            body, opened = text[opened.end() : match.start()], None
            if first:
                return body
    return body


def _marked_answer(text: str) -> str | None:
    """The answer region of steps 1-2: the last answer tag's body, else the text after the last
    "Final answer:" marker, else None."""
    body = answer_tag_body(text)
    if body is not None:
        return body
    markers = list(_FINAL_ANSWER_RE.finditer(text))
    return text[markers[-1].end() :] if markers else None


def extract_answer(text: str, *, mode: str = "strict") -> str | None:
    """The predicted option letter, following the released Video-Thinker evaluator (method.md §8.3).

    1-3. the last answer tag's body, else the text after "Final answer:", else the whole output;
    4.   a standalone capital letter at its start (followed by whitespace or the end, so `A.` and
         `(A)` are *not* accepted in strict mode).
    Lenient mode adds: 4b. an option label at the start (`(A)`, `[A]`, `A.`, `A)`, `A:`), then
    5. scanning letters A..O in alphabetical order for one followed by `:`, preceded by `[`, or
    followed by a space (this can match the article "A "; hence not in the primary score).
    """
    if mode not in EXTRACT_MODES:
        raise ValueError(f"mode must be one of {EXTRACT_MODES}, got {mode!r}")
    if not isinstance(text, str):
        return None
    region = _marked_answer(text)
    if region is None:
        region = text  # step 3: the whole output
    if found := _LEADING_LETTER_RE.match(region):
        return found.group(1)
    if mode == "strict":
        return None
    if found := _LEADING_LABEL_RE.match(region):
        return next(g for g in found.groups() if g)
    for letter in _SCAN_LETTERS:
        if f"{letter}:" in region or f"[{letter}" in region or f"{letter} " in region:
            return letter
    return None


def extract_answer_text(text: str) -> str | None:
    """The stripped inner text of the last answer tag, else the text after "Final answer:", else
    None; for numeric, OCR and free-form answers."""
    if not isinstance(text, str):
        return None
    region = _marked_answer(text)
    return region.strip() if region is not None else None


def extract_number(text: str) -> float | None:
    """The first number in `text` (sign, decimals, `,` as thousands separator: "1,234.5" -> 1234.5)."""
    if not isinstance(text, str):
        return None
    match = _NUMBER_RE.search(text)
    if match is None:
        return None
    value = float(match.group(0).replace(",", ""))
    return value if math.isfinite(value) else None
