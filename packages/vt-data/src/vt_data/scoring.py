"""The answer scorer: one definition of correctness for the GRPO accuracy reward and the evaluator.

`score_answer(output, record)` reads the prediction from a model output and scores it against the
record's gold answer by the record's `problem_type` (benchmarks.md §1.2-1.5):

| problem type      | prediction read from the answer region       | score                                  |
|-------------------|----------------------------------------------|----------------------------------------|
| multiple choice   | option letter (`trace.extract_answer`)       | 1 iff it equals the gold letter        |
| numerical         | the whole answer as a number (VR1)           | VR1 rule: 1 iff equal at 2 decimals    |
| regression        | the whole answer as a number (VR1)           | MRA, VSI-Bench variant by default      |
| free-form         | the answer text                              | ROUGE-L F1 over lower-cased words      |
| OCR               | the answer text                              | 1 - word error rate, clipped to [0, 1] |
| grounding         | the answer as a time span                    | temporal IoU with the gold span        |

The answer region is the last `<answer>` body, else the text after "Final answer:", else the whole
output (method.md §8.3 steps 1-3). `mode="strict"` is the primary score (VR1/Video-Thinker parity);
`mode="lenient"` is the secondary one: option labels and the A-O scan for letters, the first number
in the region (without VR1's decimal-presence quirk) for numbers, the first embedded span for
grounding. Free-form and OCR read the same text in both modes.

Choices the papers leave open, recorded here:
- OCR uses Video-R1's GRPO training reward, 1 - WER (word-level Levenshtein distance over
  whitespace-split, case-sensitive words, divided by max(1, gold words)), clipped to [0, 1].
  Video-R1's evaluator scores OCR as 0 (method.md §10 item 5); we declare this metric instead.
- Free-form uses ROUGE-L F1 (β = 1) over `\\w+` tokens of the case-folded text; rouge_score keeps
  only [a-z0-9], we keep any Unicode word character so non-English answers are not emptied.
- MRA with a gold of 0 (a division by zero in both references): 1 iff the prediction is 0 too.

Every scorer is total on strings: no input makes it raise, and every score lies in [0, 1]. An
unknown `problem_type` does raise ValueError: that is a data bug (`records.validate` reports it).
"""

from __future__ import annotations

import math
import re

import numpy as np

from vt_data.records import VideoQA
from vt_data.timespan import Span, find_spans, parse_span, temporal_iou
from vt_data.trace import extract_answer, extract_answer_text, extract_number

SCORE_MODES = ("strict", "lenient")
MRA_VARIANTS = ("vsibench", "video_r1")

_LETTER_RE = re.compile(r"[A-Z]")
_WORD_RE = re.compile(r"\w+")

# VSI-Bench official / lmms: 10 float64 thresholds, inclusive comparison.
_VSI_THRESHOLDS = np.linspace(0.5, 0.95, 10)
# Video-R1: float32 arange, so 1 - θ is float32 and the comparison happens in float32 (NumPy casts
# the Python-float error to the array's dtype); we cast explicitly so the result does not depend on
# NumPy's promotion rules. This is what makes (1.5, 1.0) score 0.0 there: r = 0.5 - 5e-9 rounds to
# 0.5 in float32, and 0.5 < 0.5 is false.
_VR1_THRESHOLDS = np.arange(0.5, 0.95 + 0.05 / 2, 0.05, dtype=np.float32)
_VR1_EPS = 1e-8


# --- the answer region --------------------------------------------------------------------------
def _answer_region(output: str) -> str:
    """Last answer tag's body, else the text after "Final answer:", else the whole output; stripped."""
    region = extract_answer_text(output)
    return region if region is not None else output.strip()


def _parse_float(text: str) -> float | None:
    """Video-R1's `normalize_number`: drop commas, then `float()` of the whole text; None on failure.

    Non-finite values ("nan", "inf") count as failures, so a score never depends on inf == inf.
    """
    try:
        value = float(text.replace(",", ""))
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _read_number(region: str, mode: str) -> float | None:
    """strict: the whole region is the number (VR1); lenient: the first number in it."""
    return _parse_float(region) if mode == "strict" else extract_number(region)


def _gold_number(gold: str) -> float | None:
    return _parse_float(gold) if _parse_float(gold) is not None else extract_number(gold)


def _gold_letter(gold: str) -> str | None:
    """The gold option letter; tolerant of `(B)` or `B.` written in a solution tag."""
    gold = gold.strip()
    if _LETTER_RE.fullmatch(gold):
        return gold
    return extract_answer(f"<answer>{gold}</answer>", mode="lenient")


def extract_prediction(output: str, record: VideoQA, mode: str = "strict") -> str | float | Span | None:
    """The parsed prediction, for logging: a letter (multiple choice), a float (numerical,
    regression), the answer text (free-form, OCR) or a span in seconds (grounding); None when
    nothing parses. Never raises on a string."""
    _check_mode(mode)
    if not isinstance(output, str):
        return None
    kind = record.problem_type
    if kind == "multiple choice":
        return extract_answer(output, mode=mode)
    region = _answer_region(output)
    if kind in ("numerical", "regression"):
        return _read_number(region, mode)
    if kind in ("free-form", "OCR"):
        return region
    if kind == "grounding":
        if mode == "strict":
            return parse_span(region)
        spans = find_spans(region)
        return spans[0] if spans else None
    raise ValueError(f"cannot score problem_type {kind!r}")


# --- the scorers, one per answer type -----------------------------------------------------------
def numeric_match(pred: str, gold: str) -> float:
    """Video-R1's `numerical` rule (benchmarks.md §1.3), exactly: 0 when exactly one of the two
    strings contains "." or ","; else drop commas, parse both with `float`, and score 1 iff they are
    equal after rounding to 2 decimals; any parse failure scores 0.

    >>> numeric_match("12.970", "12.97"), numeric_match("13.0", "13"), numeric_match("1,000", "1000")
    (1.0, 0.0, 0.0)
    """
    if (("." in pred) or ("," in pred)) != (("." in gold) or ("," in gold)):
        return 0.0
    p, g = _parse_float(pred), _parse_float(gold)
    if p is None or g is None:
        return 0.0
    return 1.0 if round(p, 2) == round(g, 2) else 0.0


def mra_vsibench(pred: float, gold: float) -> float:
    """Mean relative accuracy, VSI-Bench official / lmms variant: r = |ŷ - y| / |y|, thresholds θ in
    float64 `linspace(0.5, 0.95, 10)`, score = mean over θ of 1[r <= 1 - θ]. Gold 0: 1 iff ŷ == 0."""
    if not (math.isfinite(pred) and math.isfinite(gold)):
        return 0.0
    if gold == 0:
        return 1.0 if pred == 0 else 0.0
    r = abs(pred - gold) / abs(gold)
    return float(np.mean(r <= 1 - _VSI_THRESHOLDS))


def mra_video_r1(pred: float, gold: float) -> float:
    """Mean relative accuracy, Video-R1 variant: r = |ŷ - y| / (|y| + 1e-8), thresholds θ in float32
    `arange(0.5, 0.975, 0.05)`, score = mean over θ of 1[r < 1 - θ] (strict, compared in float32)."""
    if not (math.isfinite(pred) and math.isfinite(gold)):
        return 0.0
    # r >= 1 fails every threshold; capping it keeps the float32 cast from overflowing.
    r = min(abs(pred - gold) / (abs(gold) + _VR1_EPS), 2.0)
    # [10] float32; r is cast to float32 as Video-R1's NumPy comparison does.
    return float(np.mean(np.float32(r) < (np.float32(1) - _VR1_THRESHOLDS)))


_MRA = {"vsibench": mra_vsibench, "video_r1": mra_video_r1}


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists, bit-parallel (Hyyrö 2004).

    Bit i of `v` stands for a[i]; one pass over b with a few big-integer operations per token, so
    the cost is O(len(b) × len(a) / word size) rather than a Python-level O(len(a) × len(b)) table:
    a 100k-character output against a short gold stays fast.
    """
    if len(a) > len(b):
        a, b = b, a
    if not a:
        return 0
    match_masks: dict[str, int] = {}
    for i, token in enumerate(a):
        match_masks[token] = match_masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & match_masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()  # the zero bits of v count the LCS


def rouge_l_f1(pred: str, gold: str) -> float:
    """ROUGE-L F1 (β = 1) over `\\w+` tokens of the case-folded texts; 0 when either has no token."""
    p_tokens, g_tokens = _WORD_RE.findall(pred.casefold()), _WORD_RE.findall(gold.casefold())
    if not p_tokens or not g_tokens:
        return 0.0
    lcs = _lcs_length(p_tokens, g_tokens)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p_tokens), lcs / len(g_tokens)
    return 2 * precision * recall / (precision + recall)


def word_error_rate(pred: str, gold: str) -> float:
    """Video-R1's WER: word-level Levenshtein distance between whitespace-split, case-sensitive
    words, divided by max(1, number of gold words). Not clipped (can exceed 1)."""
    ref, hyp = gold.split(), pred.split()
    denominator = max(1, len(ref))
    # The distance is at least the length difference: a far longer (or shorter) output has WER >= 1
    # without filling a table, which keeps a 100k-character output cheap.
    if abs(len(hyp) - len(ref)) >= denominator:
        return abs(len(hyp) - len(ref)) / denominator
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, hyp_word in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word))
        previous = current
    return previous[-1] / denominator


def ocr_score(pred: str, gold: str) -> float:
    """1 - WER clipped to [0, 1] (Video-R1's OCR training reward)."""
    return min(1.0, max(0.0, 1.0 - word_error_rate(pred, gold)))


def _check_mode(mode: str) -> None:
    if mode not in SCORE_MODES:
        raise ValueError(f"mode must be one of {SCORE_MODES}, got {mode!r}")


def score_answer(
    output: str, record: VideoQA, *, mode: str = "strict", mra_variant: str = "vsibench"
) -> float:
    """The score in [0, 1] of one model output against `record`'s gold answer (see the module doc).

    `mode` picks the extractor ("strict": the primary score; "lenient": the secondary one) and
    `mra_variant` the regression metric ("vsibench": official, inclusive; "video_r1": VR1's strict
    float32 variant). A missing gold answer scores 0. Never raises on any output string.
    """
    _check_mode(mode)
    if mra_variant not in _MRA:
        raise ValueError(f"mra_variant must be one of {MRA_VARIANTS}, got {mra_variant!r}")
    kind = record.problem_type
    prediction = extract_prediction(output, record, mode)  # raises for an unknown problem type
    gold = record.gold
    if gold is None or prediction is None:
        return 0.0
    if kind == "multiple choice":
        return 1.0 if prediction == _gold_letter(gold) else 0.0
    if kind == "numerical":
        if mode == "strict":
            return numeric_match(_answer_region(output), gold.strip())
        gold_value = _gold_number(gold)
        return 1.0 if gold_value is not None and round(prediction, 2) == round(gold_value, 2) else 0.0
    if kind == "regression":
        gold_value = _gold_number(gold)
        return 0.0 if gold_value is None else _MRA[mra_variant](prediction, gold_value)
    if kind == "free-form":
        return rouge_l_f1(prediction, gold)
    if kind == "OCR":
        return ocr_score(prediction, gold)
    # grounding
    gold_span = parse_span(gold)
    return 0.0 if gold_span is None else temporal_iou(prediction, gold_span)
