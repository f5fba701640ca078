"""Time strings and temporal IoU: paper and benchmark examples, real shipped files, properties, fuzzing."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vt_data.timespan import (
    best_ious,
    clip_span,
    find_spans,
    format_span,
    format_time,
    grounding_scores,
    parse_span,
    parse_time,
    temporal_iou,
    union_iou,
)

EXTERNAL = Path(__file__).resolve().parents[3] / "tests" / "data"
HOLMES_ANNOTATIONS = EXTERNAL / "Video-Holmes" / "Pipeline" / "example_annotations"
VRBENCH_DEBUG = EXTERNAL / "VRBench" / "inference" / "data" / "VRBench_debug.jsonl"


# --- parsing --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:22", 22.0),
        ("01:02.5", 62.5),
        ("90:00", 5400.0),  # MM:SS minutes are unbounded
        ("1:00:00", 3600.0),
        ("01:01:01.25", 3661.25),
        ("0:01:15", 75.0),
        ("7", 7.0),
        ("7.25", 7.25),
        ("7s", 7.0),
        ("7 sec", 7.0),
        ("7 secs", 7.0),
        ("1 second", 1.0),
        (" 5.0 seconds ", 5.0),
        ("7 SECONDS", 7.0),
    ],
)
def test_parse_time_accepts(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "   ", "00:60", "00:75", "1:60:00", "1:00:60", "1:2:3:4", "-5", "5 minutes", "abc", "1.2.3",
     "00:7:", ":30", "5 ss", "٣", "1e3"],
)
def test_parse_time_rejects(text):
    assert parse_time(text) is None


@pytest.mark.parametrize(
    ("text", "span"),
    [
        # method.md §2.4 and the brief
        ("00:22-00:34", (22.0, 34.0)),
        ("0:01:15-0:01:30", (75.0, 90.0)),
        ("0.0-5.0 seconds", (0.0, 5.0)),
        ("00:07:44->00:08:28", (464.0, 508.0)),
        ("3s to 7s", (3.0, 7.0)),
        ("[00:07:44->00:08:28]", (464.0, 508.0)),
        # the other separators, spacing and units
        ("00:22 – 00:34", (22.0, 34.0)),
        ("00:22—00:34", (22.0, 34.0)),
        ("00:22 -> 00:34", (22.0, 34.0)),
        ("3 seconds to 7 seconds", (3.0, 7.0)),
        ("3 sec - 7 sec", (3.0, 7.0)),
        ("[ 3 - 7 ]", (3.0, 7.0)),
        ("01:02.5-01:04.25", (62.5, 64.25)),
        ("59:30-1:00:30", (3570.0, 3630.0)),
        ("5-5", (5.0, 5.0)),  # zero length is parsable; rewards and metrics decide what it is worth
    ],
)
def test_parse_span_accepts(text, span):
    assert parse_span(text) == span


@pytest.mark.parametrize(
    "text",
    ["00:34-00:22", "00:22", "00:22-", "-00:34", "00:75-01:00", "00:10-00:70", "a-b", "3 to", "00:22 00:34",
     "[00:22-00:34", "00:22-00:34.", "3to7", "00:22-00:34 and more", ""],
)
def test_parse_span_rejects(text):
    # Unparsable is None, never a 0 or a clipped span.
    assert parse_span(text) is None


def test_parse_rejects_non_strings():
    assert parse_time(12) is None  # type: ignore[arg-type]
    assert parse_span(None) is None  # type: ignore[arg-type]
    assert find_spans(b"00:01-00:02") == []  # type: ignore[arg-type]


def test_find_spans_in_free_text():
    assert find_spans("A sign blocks the path. [00:12:05->00:12:40].") == [(725.0, 760.0)]
    assert find_spans("first 00:00-00:12, then 00:12 to 00:30 and 0.0-5.0 seconds.") == [
        (0.0, 12.0), (12.0, 30.0), (0.0, 5.0)]
    assert find_spans("nothing to see here") == []
    assert find_spans("") == []
    # A reversed candidate is skipped but its end may open a valid span.
    assert find_spans("00:30-00:10-00:20") == [(10.0, 20.0)]
    # Not cut out of longer numbers or times.
    assert find_spans("v1.00:10-00:20x") == []
    assert find_spans("100:10-00:20") == []


# --- writing --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "00:00"), (12, "00:12"), (61.5, "01:01.5"), (599, "09:59"), (3599, "59:59"), (3600, "1:00:00"),
     (3661.25, "1:01:01.25"), (36000, "10:00:00"), (1.125, "00:01.125")],
)
def test_format_time(seconds, text):
    assert format_time(seconds) == text


def test_format_rejects_negative_and_reversed():
    for bad in (-1, -0.001, math.inf, math.nan):
        with pytest.raises(ValueError):
            format_time(bad)
    with pytest.raises(ValueError):
        format_span(20, 12)
    assert format_span(12, 20) == "00:12-00:20"


@settings(deadline=None, max_examples=300)
@given(st.integers(min_value=0, max_value=100 * 3600 * 1000))
def test_format_parse_round_trip_millis(millis):
    seconds = millis / 1000  # any value with up to 3 decimals
    assert parse_time(format_time(seconds)) == seconds


@settings(deadline=None, max_examples=200)
@given(st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False))
def test_format_parse_round_trip_any_float(seconds):
    assert parse_time(format_time(seconds)) == seconds


@settings(deadline=None, max_examples=200)
@given(st.integers(0, 10**6), st.integers(0, 10**5))
def test_span_round_trip(start_ms, length_ms):
    start, end = start_ms / 1000, (start_ms + length_ms) / 1000
    assert parse_span(format_span(start, end)) == (start, end)
    assert find_spans(f"see [{format_span(start, end)}].") == [(start, end)]


# --- temporal IoU ---------------------------------------------------------------------------------
def test_temporal_iou():
    assert temporal_iou((0, 10), (0, 10)) == 1.0
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((0, 10), (10, 20)) == 0.0  # touching
    assert temporal_iou((0, 10), (20, 30)) == 0.0
    assert temporal_iou((5, 5), (0, 10)) == 0.0  # degenerate
    assert temporal_iou((10, 0), (0, 10)) == 0.0  # reversed counts as degenerate
    assert temporal_iou((2, 4), (0, 10)) == pytest.approx(0.2)


def test_clip_span():
    assert clip_span((-5, 10), 8) == (0.0, 8.0)
    assert clip_span((2, 4), 8) == (2.0, 4.0)
    assert clip_span((9, 12), 8) is None
    assert clip_span((8, 12), 8) is None


def test_grounding_scores_multi_span_rule():
    gold = [(0, 10), (20, 30)]
    pred = [(0, 10), (25, 35), (100, 110)]
    assert best_ious(pred, gold) == [1.0, pytest.approx(5 / 15)]
    scores = grounding_scores(pred, gold)
    assert scores["miou"] == pytest.approx((1 + 5 / 15) / 2)
    assert scores["recall@0.3"] == 1.0
    assert scores["recall@0.5"] == 0.5
    assert scores["recall@0.7"] == 0.5
    assert set(grounding_scores(pred, gold, thresholds=(0.1,))) == {"miou", "recall@0.1"}
    assert best_ious([], gold) == [0.0, 0.0]
    with pytest.raises(ValueError):
        grounding_scores(pred, [])


def test_union_iou_cg_bench_rule():
    # Overlapping predictions merge: ∪pred = [0, 15], ∪gold = [5, 20] -> 10 / 20.
    assert union_iou([(0, 10), (5, 15)], [(5, 20)]) == pytest.approx(0.5)
    assert union_iou([(0, 10)], [(0, 5), (5, 10)]) == 1.0
    assert union_iou([(0, 1)], [(2, 3)]) == 0.0
    assert union_iou([], []) == 0.0
    # Differs from the per-gold max rule: two half-covering predictions.
    gold, pred = [(0, 10)], [(0, 5), (5, 10)]
    assert union_iou(pred, gold) == 1.0 and grounding_scores(pred, gold)["miou"] == 0.5


spans = st.tuples(st.integers(0, 10_000), st.integers(1, 500)).map(
    lambda t: (float(t[0]), float(t[0] + t[1]))
)


@settings(deadline=None, max_examples=200)
@given(st.lists(spans, min_size=1, max_size=8))
def test_spans_against_themselves_and_shifted(gold):
    """benchmarks.md §6.5 (4): a set against itself gives mIoU 1; shifting each span by its own length
    gives IoU 0 for that span."""
    assert grounding_scores(gold, gold)["miou"] == 1.0
    assert union_iou(gold, gold) == pytest.approx(1.0)
    for s, e in gold:
        assert temporal_iou((s, e), (e, 2 * e - s)) == 0.0
        assert grounding_scores([(e, 2 * e - s)], [(s, e)])["miou"] == 0.0


@settings(deadline=None, max_examples=200)
@given(spans, spans)
def test_iou_bounds_and_symmetry(a, b):
    assert 0.0 <= temporal_iou(a, b) <= 1.0
    assert temporal_iou(a, b) == temporal_iou(b, a)
    assert 0.0 <= union_iou([a], [b]) <= 1.0 + 1e-12
    assert union_iou([a], [b]) == pytest.approx(temporal_iou(a, b))


# --- real shipped files (benchmarks.md §6.5) -------------------------------------------------------
def test_benchmark_examples():
    assert parse_span("00:07:44->00:08:28") == (464.0, 508.0)
    assert parse_span("01:30-02:27") == (90.0, 147.0)


def test_video_holmes_annotations_parse():
    expected = {
        "RSmjqss0XKQ": [(0, 37), (37, 90), (90, 147)],
        "dGS48Kcax5k": [(0, 46), (46, 91)],
    }
    for path in sorted(HOLMES_ANNOTATIONS.glob("*.json")):
        (annotation,) = json.loads(path.read_text(encoding="utf-8"))
        ranges = [seg["TimeRange"] for seg in annotation["Segment Description"]]
        parsed = [parse_span(r) for r in ranges]
        assert all(p is not None for p in parsed), ranges
        if path.stem in expected:
            assert parsed == [(float(s), float(e)) for s, e in expected[path.stem]]
            # annotation segments against themselves: mIoU 100
            assert grounding_scores(parsed, parsed)["miou"] == 1.0
        for shot in annotation["Inference Shots"]:
            assert parse_time(shot["Time"]) is not None


def test_vrbench_reasoning_steps():
    with_span = without_span = 0
    first_step_qa1 = None
    for line in VRBENCH_DEBUG.read_text(encoding="utf-8").splitlines():
        video = json.loads(line)
        for qa_id, qa in video["mcq"].items():
            for step_id, step in qa["reasoning_process"].items():
                found = find_spans(step)
                assert len(found) <= 1, step
                with_span += len(found) == 1
                without_span += not found
                if video["video_id"] == "TZk_p-q8Fzo" and qa_id == "qa1" and step_id == "1":
                    first_step_qa1 = found
    assert (with_span, without_span) == (28, 5)
    assert first_step_qa1 == [(464.0, 508.0)]


# --- fuzzing: never raise, right types, linear time -----------------------------------------------
TIME_ALPHABET = "0123456789:.-–—>[] tosecndTOS\n\t"


def _check_types(text):
    t = parse_time(text)
    assert t is None or (isinstance(t, float) and math.isfinite(t) and t >= 0)
    span = parse_span(text)
    assert span is None or (isinstance(span, tuple) and span[0] <= span[1])
    found = find_spans(text)
    assert isinstance(found, list) and all(s <= e for s, e in found)


@settings(deadline=None, max_examples=300)
@given(st.text())
def test_fuzz_arbitrary_text(text):
    _check_types(text)


@settings(deadline=None, max_examples=300)
@given(st.text(alphabet=TIME_ALPHABET, max_size=80))
def test_fuzz_time_alphabet(text):
    _check_types(text)


@settings(deadline=None, max_examples=100)
@given(st.lists(st.sampled_from(["00:", "99", "9" * 40, "-", "->", " to ", ".5", " s", "[", "]", "60", " "]),
                max_size=40).map("".join))
def test_fuzz_time_fragments(text):
    _check_types(text)


@pytest.mark.parametrize(
    "text",
    [
        "1" + " " * 50_000 + "x",  # adjacent optional whitespace must not backtrack quadratically
        " " * 30_000 + "1" + " " * 30_000 + "s" + " " * 30_000 + "-",
        "1 " * 50_000,
        "1-" * 50_000,
        "9" * 100_000,
        "9" * 50_000 + "-" + "9" * 50_000,
        "0:" * 50_000,
        "[" * 50_000 + "1-2" + "]" * 50_000,
    ],
)
def test_huge_inputs_are_fast(text):
    began = time.perf_counter()
    _check_types(text)
    assert time.perf_counter() - began < 2.0


def test_degenerate_spans_are_zero_length_or_most_of_the_video():
    from vt_data.timespan import WHOLE_CLIP_FRACTION, is_degenerate

    assert WHOLE_CLIP_FRACTION == 0.9
    assert is_degenerate((4.0, 4.0), 8.0) and is_degenerate((5.0, 4.0), None)  # no length
    assert is_degenerate((0.0, 8.0), 8.0) and is_degenerate((0.0, 7.2), 8.0)  # >= 90 % of 8 s
    assert not is_degenerate((0.0, 7.0), 8.0) and not is_degenerate((4.0, 8.0), 8.0)
    assert not is_degenerate((0.0, 100.0), None)  # without a duration only the length rule applies
