"""Time strings and temporal IoU: one span parser and formatter for traces, converters, rewards, eval."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal

Span = tuple[float, float]

# --- grammar (method.md §2.4) -------------------------------------------------------------------
# An endpoint is 1-3 colon-separated fields (S, M:S, H:M:S); only the last may carry a fraction.
# Fields after the first have 1-2 digits; their ranges (< 60) are checked after matching so that
# "00:75" is recognised as a malformed time (None) rather than as some shorter number.
_NUMBER = r"[0-9]+(?::[0-9]{1,2}){0,2}(?:\.[0-9]+)?"  # ASCII digits: `\d` would admit "٣"
# Longest alternatives first; `\b` stops "s" from matching the head of an ordinary word.
_UNIT = r"(?:seconds?|secs?|s)\b"
# "->" before "-" so the arrow is not read as a hyphen followed by ">".
_SEP = r"(?:->|–|—|-|\bto\b)"
# Whitespace is written `\s*(?:UNIT\s*)?`, never `\s*(?:UNIT)?\s*`: two adjacent `\s*` can split a
# long blank run in quadratically many ways before failing (catastrophic backtracking).
_OPT_UNIT = rf"\s*(?:{_UNIT}\s*)?"
_SPAN_BODY = rf"(?P<a>{_NUMBER}){_OPT_UNIT}{_SEP}\s*(?P<b>{_NUMBER})(?:\s*{_UNIT})?"

_TIME_RE = re.compile(rf"\s*(?P<t>{_NUMBER}){_OPT_UNIT}", re.IGNORECASE)
_SPAN_RE = re.compile(rf"{_SPAN_BODY}", re.IGNORECASE)  # fullmatch on the stripped text
# In free text a span must not start inside a longer number/time ("v1.00:10-..." or "100:10-...")
# nor end inside one; that would silently truncate it.
_EMBEDDED_SPAN_RE = re.compile(rf"(?<![\w:.]){_SPAN_BODY}(?![\w:]|\.[0-9])", re.IGNORECASE)


def _endpoint_seconds(text: str) -> float | None:
    """Seconds for an endpoint already matched by `_NUMBER`; None when a field is out of range.

    The integer total is exact and the fraction is appended as decimal digits, so the float is
    rounded once: parse(format(x)) == x needs that (as floats, 1980 + 59.947 == 2039.9470000000001).
    """
    whole, _, fraction = text.partition(".")
    try:
        fields = [int(f) for f in whole.split(":")]
    except ValueError:  # Python's int-digit limit, on absurd inputs only
        return None
    # Minutes are unbounded in MM:SS but < 60 under hours; seconds are < 60 under any larger unit.
    if len(fields) >= 2 and fields[-1] >= 60:
        return None
    if len(fields) == 3 and fields[1] >= 60:
        return None
    total = 0
    for value in fields:
        total = total * 60 + value
    try:
        seconds = float(f"{total}.{fraction}" if fraction else total)
    except (OverflowError, ValueError):
        return None
    return seconds if math.isfinite(seconds) else None


def _span_from_match(match: re.Match[str]) -> Span | None:
    start, end = _endpoint_seconds(match["a"]), _endpoint_seconds(match["b"])
    if start is None or end is None or end < start:
        return None
    return (start, end)


def parse_time(text: str) -> float | None:
    """One endpoint (`MM:SS`, `H:MM:SS`, or seconds, optional fraction and unit) -> seconds, else None.

    >>> parse_time("01:02.5"), parse_time("1:00:00"), parse_time("7 sec"), parse_time("00:75")
    (62.5, 3600.0, 7.0, None)
    """
    if not isinstance(text, str):
        return None
    match = _TIME_RE.fullmatch(text)
    return _endpoint_seconds(match["t"]) if match else None


def _strip_brackets(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        return stripped[1:-1]
    return stripped


def parse_span(text: str) -> Span | None:
    """A whole string that is one span -> (start, end) seconds; None when unparsable or end < start.

    Separators `-`, `–`, `—`, `->`, `to`; optional `[...]` around it; units after either endpoint.

    >>> parse_span("00:22-00:34"), parse_span("[00:07:44->00:08:28]"), parse_span("3s to 7s")
    ((22.0, 34.0), (464.0, 508.0), (3.0, 7.0))
    >>> parse_span("00:34-00:22") is None
    True
    """
    if not isinstance(text, str):
        return None
    match = _SPAN_RE.fullmatch(_strip_brackets(text).strip())
    return _span_from_match(match) if match else None


def find_spans(text: str) -> list[Span]:
    """Every valid span embedded in free text, in order (VRBench steps end with `[HH:MM:SS->HH:MM:SS]`).

    Plain-number ranges count too ("2-3 seconds"); a reversed or out-of-range candidate is skipped.
    """
    if not isinstance(text, str):
        return []
    spans: list[Span] = []
    pos = 0
    while (match := _EMBEDDED_SPAN_RE.search(text, pos)) is not None:
        span = _span_from_match(match)
        if span is not None:
            spans.append(span)
            pos = match.end()
        else:
            # The second endpoint may open a valid span of its own ("00:30-00:10-00:20").
            pos = match.start("b")
    return spans


# --- writing ------------------------------------------------------------------------------------
def format_time(seconds: float) -> str:
    """Seconds -> `MM:SS` (zero-padded), `H:MM:SS` from one hour on, with the shortest fraction that
    parses back to the same float (`61.5` -> `01:01.5`). Negative or non-finite -> ValueError."""
    value = float(seconds)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"cannot format time {seconds!r}: need a finite, non-negative number")
    # repr() is the shortest decimal that reads back as the same float; parse_time rebuilds the
    # value from exactly these digits, so the round trip is exact.
    shortest = Decimal(repr(value))
    whole = int(shortest)
    fraction = format(shortest, "f").partition(".")[2].rstrip("0")
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
    return f"{clock}.{fraction}" if fraction else clock


def format_span(start: float, end: float) -> str:
    """(start, end) seconds -> `"00:12-00:20"`; raises ValueError when end < start (never writes an
    unparsable span)."""
    if end < start:
        raise ValueError(f"span end {end!r} is before start {start!r}")
    return f"{format_time(start)}-{format_time(end)}"


def clip_span(span: Span, duration: float) -> Span | None:
    """Clip a span to [0, duration]; None when nothing of positive length is left."""
    start, end = max(0.0, float(span[0])), min(float(duration), float(span[1]))
    return (start, end) if end > start else None


# --- temporal IoU (benchmarks.md §1.5) ----------------------------------------------------------
def temporal_iou(a: Span, b: Span) -> float:
    """IoU of two spans in [0, 1]; 0 when they are disjoint or either has no positive length.

    For overlapping spans the union is the hull max(e) - min(s) (the lmms single-span form);
    when they are disjoint the intersection is 0, so the hull-vs-union difference never matters.
    """
    (s1, e1), (s2, e2) = a, b
    if e1 <= s1 or e2 <= s2:
        return 0.0
    intersection = min(e1, e2) - max(s1, s2)
    if intersection <= 0:
        return 0.0
    return intersection / (max(e1, e2) - min(s1, s2))


def best_ious(pred_spans: Sequence[Span], gold_spans: Sequence[Span]) -> list[float]:
    """For each gold span (in order), the max IoU over predicted spans (0 without predictions).

    Shape: len(result) == len(gold_spans). Video-Thinker's multi-span rule (method.md §8.5).
    """
    return [max((temporal_iou(p, g) for p in pred_spans), default=0.0) for g in gold_spans]


def grounding_scores(
    pred_spans: Sequence[Span], gold_spans: Sequence[Span], thresholds: Iterable[float] = (0.3, 0.5, 0.7)
) -> dict[str, float]:
    """One sample's multi-span grounding: `miou` = mean best IoU over gold spans, `recall@K` = fraction
    of gold spans whose best IoU >= K (`"recall@0.3"`, ...). Empty gold -> ValueError (undefined).

    Pooling over a data set (mean over all gold spans vs mean of per-sample means) is the caller's
    choice; `best_ious` gives the per-span values for the former.
    """
    if not gold_spans:
        raise ValueError("grounding scores need at least one gold span")
    ious = best_ious(pred_spans, gold_spans)
    scores = {"miou": sum(ious) / len(ious)}
    for k in thresholds:
        scores[f"recall@{k:g}"] = sum(iou >= k for iou in ious) / len(ious)
    return scores


def _merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted, disjoint union of the positive-length spans (touching spans are merged)."""
    merged: list[list[float]] = []
    for start, end in sorted((float(s), float(e)) for s, e in spans if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def _overlap(a: list[Span], b: list[Span]) -> float:
    """Total length of the intersection of two sorted disjoint span lists (two-pointer sweep)."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        # Advance whichever span ends first: it cannot overlap anything further in the other list.
        if a[i][1] <= b[j][1]:
            i += 1
        else:
            j += 1
    return total


# --- degenerate spans (a "do-nothing" grounding) -------------------------------------------------
# A span covering at least this share of the video is "the whole video": it grounds nothing. 0.9
# rather than 1.0 so that a span a little short of the ends is caught too, while a genuinely long gold
# segment (say 80 % of the clip) can still be matched by a long span.
WHOLE_CLIP_FRACTION = 0.9


def is_degenerate(span: Span, duration: float | None) -> bool:
    """Whether a span grounds nothing: zero (or negative) length, or covering >= WHOLE_CLIP_FRACTION of
    a video `duration` seconds long. Without a duration only the length rule applies."""
    start, end = float(span[0]), float(span[1])
    if not end > start:
        return True
    return duration is not None and duration > 0 and end - start >= WHOLE_CLIP_FRACTION * duration


def union_iou(pred_spans: Sequence[Span], gold_spans: Sequence[Span]) -> float:
    """CG-Bench `miou`: |∪gold ∩ ∪pred| / |∪gold ∪ ∪pred| after merging each list; 0 when both are empty."""
    pred, gold = _merge(pred_spans), _merge(gold_spans)
    inter = _overlap(pred, gold)
    union = sum(e - s for s, e in pred) + sum(e - s for s, e in gold) - inter
    return inter / union if union > 0 else 0.0
