"""The answer scorer: known answers for every problem type, the reference quirks of benchmarks.md
§1.2-1.4, and fuzzing (never raises, always in [0, 1])."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vt_data.records import VideoQA
from vt_data.scoring import (
    _lcs_length,
    extract_prediction,
    mra_video_r1,
    mra_vsibench,
    numeric_match,
    ocr_score,
    rouge_l_f1,
    score_answer,
    word_error_rate,
)

TRACE = "<time>00:01-00:03</time> <caption>a red square</caption> <think>red is B</think>\n"


def record(problem_type: str, gold: str, **kw) -> VideoQA:
    options = ["A. red", "B. green", "C. blue", "D. yellow"] if problem_type == "multiple choice" else None
    return VideoQA(problem="q?", path="v.mp4", data_source="test", problem_type=problem_type,
                   options=options, solution=f"<answer>{gold}</answer>", duration=8.0, **kw)


MC = record("multiple choice", "B")


# --- multiple choice ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("output", "strict", "lenient"),
    [
        (TRACE + "<answer>B</answer>", 1.0, 1.0),
        (TRACE + "<answer> B </answer>", 1.0, 1.0),
        (TRACE + "<answer>C</answer>", 0.0, 0.0),
        (TRACE + "<answer>(B)</answer>", 0.0, 1.0),  # the label form: wrong strictly, right leniently
        (TRACE + "<answer>B.</answer>", 0.0, 1.0),
        ("<answer>C</answer> then <answer>B</answer>", 1.0, 1.0),  # the last tag counts
        ("B", 1.0, 1.0),  # no tag: the whole output, a standalone letter
        ("no letter here", 0.0, 0.0),
        ("", 0.0, 0.0),
    ],
)
def test_multiple_choice_strict_and_lenient(output, strict, lenient):
    assert score_answer(output, MC, mode="strict") == strict
    assert score_answer(output, MC, mode="lenient") == lenient


def test_multiple_choice_gold_label_forms_are_normalised():
    assert score_answer("<answer>B</answer>", record("multiple choice", "(B)")) == 1.0
    assert extract_prediction("<answer>(B)</answer>", MC, "lenient") == "B"


# --- numerical (Video-R1 rule) ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pred", "gold", "score"),
    [
        ("12.970", "12.97", 1.0),  # benchmarks.md §1.3
        ("13.0", "13", 0.0),  # decimal-presence mismatch
        ("13", "13", 1.0),
        ("1,000", "1,000.5", 0.0),  # both have a separator: compared as numbers, 1000 != 1000.5
        ("1,000", "1000", 0.0),  # the comma counts as a decimal marker
        ("1,234.5", "1234.50", 1.0),
        ("3.141", "3.1449", 1.0),  # both round to 3.14
        ("3.15", "3.14", 0.0),
        ("7.5 litres", "7.5", 0.0),  # the whole answer must be a number
        ("nan", "nan", 0.0),
        ("", "3", 0.0),
    ],
)
def test_numeric_match_video_r1_rule(pred, gold, score):
    assert numeric_match(pred, gold) == score


def test_numerical_through_score_answer():
    rec = record("numerical", "12.97")
    assert score_answer(TRACE + "<answer>12.970</answer>", rec) == 1.0
    assert score_answer(TRACE + "<answer>about 12.97 m</answer>", rec) == 0.0
    assert score_answer(TRACE + "<answer>about 12.97 m</answer>", rec, mode="lenient") == 1.0
    assert score_answer("<answer>13.0</answer>", record("numerical", "13")) == 0.0
    # Lenient drops the decimal-presence quirk.
    assert score_answer("<answer>13.0</answer>", record("numerical", "13"), mode="lenient") == 1.0
    assert extract_prediction("<answer>1,234.5</answer>", rec) == 1234.5


# --- regression (MRA) ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pred", "gold", "vsibench", "video_r1"),
    [
        (1.5, 1.0, 0.1, 0.0),  # boundary pairs of benchmarks.md §1.4
        (4.4, 4.0, 0.9, 0.8),
        (11.0, 10.0, 0.9, 0.8),
        (10.0, 10.0, 1.0, 1.0),
        (3.0, 1.0, 0.0, 0.0),
        (10.3, 10.0, 1.0, 1.0),  # r = 0.03, off every boundary
        (12.2, 10.0, 0.6, 0.6),  # r = 0.22 passes 1 - θ for θ <= 0.75
        (0.0, 0.0, 1.0, 1.0),
        (0.1, 0.0, 0.0, 0.0),
        (-4.4, -4.0, 0.9, 0.8),
    ],
)
def test_mra_variants(pred, gold, vsibench, video_r1):
    assert mra_vsibench(pred, gold) == pytest.approx(vsibench)
    assert mra_video_r1(pred, gold) == pytest.approx(video_r1)


def test_regression_through_score_answer_picks_the_variant():
    rec = record("regression", "4.0")
    assert score_answer("<answer>4.4</answer>", rec) == pytest.approx(0.9)
    assert score_answer("<answer>4.4</answer>", rec, mra_variant="video_r1") == pytest.approx(0.8)
    assert score_answer("<answer>4.4 m</answer>", rec) == 0.0
    assert score_answer("<answer>4.4 m</answer>", rec, mode="lenient") == pytest.approx(0.9)
    with pytest.raises(ValueError):
        score_answer("<answer>4</answer>", rec, mra_variant="nope")


# --- free-form (ROUGE-L) and OCR (1 - WER) -------------------------------------------------------
def test_rouge_l_f1_known_values():
    assert rouge_l_f1("The cat sat", "the CAT sat") == 1.0
    # LCS("the cat sat on the mat", "the cat lay on a mat") = the cat on mat = 4; P = R = 4/6.
    assert rouge_l_f1("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(4 / 6)
    # LCS = 2 ("a c"), P = 2/3, R = 2/2 -> F = 2 * (2/3) / (5/3) = 0.8.
    assert rouge_l_f1("a b c", "a c") == pytest.approx(0.8)
    assert rouge_l_f1("", "a") == 0.0 and rouge_l_f1("x y", "a b") == 0.0
    assert score_answer("<answer>a b c</answer>", record("free-form", "a c")) == pytest.approx(0.8)


@settings(deadline=None, max_examples=60)
@given(st.lists(st.sampled_from("abcd"), max_size=12), st.lists(st.sampled_from("abcd"), max_size=12))
def test_bit_parallel_lcs_equals_the_table(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            table[i + 1][j + 1] = table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
    assert _lcs_length(a, b) == table[-1][-1]


def test_ocr_is_one_minus_wer_clipped():
    assert word_error_rate("STOP here", "STOP here") == 0.0
    assert word_error_rate("STOP", "STOP here") == 0.5  # one deletion / 2 gold words
    assert word_error_rate("stop here", "STOP here") == 0.5  # case-sensitive, as in Video-R1
    assert ocr_score("a b c d e", "x") == 0.0  # WER 5 clips to 0
    assert ocr_score("", "") == 1.0  # 0 edits / max(1, 0)
    assert score_answer("<answer>EXIT 12</answer>", record("OCR", "EXIT 13")) == 0.5


# --- grounding ----------------------------------------------------------------------------------
def test_grounding_is_temporal_iou_with_the_gold_span():
    rec = record("grounding", "00:02-00:06")
    assert score_answer("<answer>00:02-00:06</answer>", rec) == 1.0
    assert score_answer("<answer>00:04-00:08</answer>", rec) == pytest.approx(2 / 6)
    assert score_answer("<answer>00:06-00:02</answer>", rec) == 0.0  # reversed: unparsable
    assert score_answer("<answer>from 2-6 s</answer>", rec) == 0.0
    assert score_answer("<answer>from 2-6 s</answer>", rec, mode="lenient") == 1.0
    assert extract_prediction("<answer>00:04-00:08</answer>", rec) == (4.0, 8.0)


def test_missing_gold_and_unknown_type():
    assert score_answer("<answer>B</answer>", MC.replace(solution="")) == 0.0
    with pytest.raises(ValueError, match="problem_type"):
        score_answer("<answer>B</answer>", MC.replace(problem_type="essay"))
    with pytest.raises(ValueError, match="mode"):
        score_answer("<answer>B</answer>", MC, mode="loose")


# --- fuzz: total and bounded --------------------------------------------------------------------
RECORDS = [
    MC,
    record("numerical", "12.97"),
    record("regression", "4.0"),
    record("regression", "0"),
    record("free-form", "a red square moves left"),
    record("OCR", "EXIT 13"),
    record("grounding", "00:02-00:06"),
]
_PIECES = st.sampled_from(
    ["<answer>", "</answer>", "<ANSWER>", "<time>", "</time>", "B", "(A)", "12.970", "1,000", "-3",
     "1e309", "nan", "inf", "00:02-00:06", "99999999:59-1", " ", "\n", "Final answer:", "é", "٣", "🙂"]
)
OUTPUTS = st.one_of(st.text(max_size=200), st.lists(_PIECES, max_size=30).map("".join))


@settings(deadline=None, max_examples=150)
@given(OUTPUTS, st.sampled_from(RECORDS), st.sampled_from(["strict", "lenient"]),
       st.sampled_from(["vsibench", "video_r1"]))
def test_score_answer_never_raises_and_stays_in_range(output, rec, mode, variant):
    score = score_answer(output, rec, mode=mode, mra_variant=variant)
    assert isinstance(score, float) and 0.0 <= score <= 1.0
    extract_prediction(output, rec, mode)


def test_huge_outputs_score_quickly():
    huge = "word " * 20_000 + "<answer>" + "x " * 30_000 + "</answer>"
    for rec in RECORDS:
        assert 0.0 <= score_answer(huge, rec) <= 1.0
