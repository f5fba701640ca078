"""Metrics over per-sample results: accuracy, MRA, valid-trace rate, and the grounding and captioning
of the model's own reasoning (the paper's Table 3), plus direct temporal grounding.

Pure functions over plain values. Units: every score is a fraction in [0, 1] (tables multiply by
100); times are seconds; spans are `(start, end)` tuples. Correctness itself comes from
`vt_data.scoring.score_answer`, the scorer the GRPO reward uses, so training and evaluation agree.

`score_sample(output, record)` turns one model output into a JSON-able row (what a predictions
file stores); `aggregate(rows, metric=...)` turns rows back into a summary, so a summary can be
recomputed from the predictions file alone.

Definitions and the choices behind them:

- **Accuracy**: mean per-sample score (`score_answer`, strict = primary, lenient = secondary),
  overall and per category. Regression items contribute their MRA, numerical items 0/1.
- **MRA**: mean relative accuracy over regression items, in both named variants (`mra_vsibench`, the
  official inclusive float64 one; `mra_video_r1`, VR1's strict float32 one; benchmarks.md §1.4).
- **VSI-Bench overall** (`vsi_bench_summary`): per question type the mean score (MCA accuracy, NA
  MRA), the three object_rel_direction levels averaged into one category, then the macro mean over
  the 8 categories: the official `vsibench_aggregate_results`. With a level or category absent (a
  subset), the present ones are averaged and the summary lists what is missing.
- **Valid-trace rate**: the share of outputs passing `vt_data.trace.check_format` in strict mode
  (the r_fmt rule, method.md §8.1); the answer must be one letter for multiple choice, anything
  non-empty otherwise.
- **Grounding of the reasoning** (`reasoning_grounding`), for samples with ground-truth segments:
  predicted spans are every `<time>` body that parses, complete triple or not (a formatting slip
  is the valid-trace rate's business, not grounding's), clipped to [0, duration]. Per gold span the
  best IoU over predicted spans (method.md §8.5); mIoU and recall@{0.3, 0.5, 0.7} pool **all gold
  spans** of the data set ("the fraction of gold spans"), so a sample with more evidence weighs
  more. A sample without a predicted span scores IoU 0 on each of its gold spans. `union_iou` is
  CG-Bench's merged-interval IoU, averaged over samples.
- **Captions** (`caption_scores`): each gold segment with a caption pairs with the `<caption>` of the
  predicted step (complete triple with a parsable span) whose span has the best IoU with it; ties,
  including all-zero IoU, go to the step whose span centre is nearest, then to the earlier step.
  No predicted step -> an empty caption (scores 0). Text is case-folded and split into `\\w+` words
  (no stemming, punctuation dropped). Per pair:
  - `bleu1`: clipped unigram precision × brevity penalty exp(1 - r/c) when c <= r (c candidate
    length, r the closest reference length, ties to the shorter); averaged over pairs.
    `bleu1_corpus` pools counts and lengths over all pairs first (coco-caption's Bleu style).
  - `rouge_l`: ROUGE-L F1 (β = 1, `vt_data.scoring.rouge_l_f1`, the free-form scorer; coco-caption
    uses β = 1.2, so its numbers run slightly different).
  - `meteor_exact`: **not pycocoevalcap's METEOR** (which needs Java, WordNet synonyms and stemming):
    the METEOR formula of Banerjee & Lavie (2005) with the exact-match stage only. Matches m = the
    unigram alignment, P = m/|cand|, R = m/|ref|, Fmean = P·R / (α·P + (1-α)·R) with α = 0.9
    (= 10PR / (R + 9P)), penalty = γ·(chunks/m)^β with γ = 0.5, β = 3, score = Fmean·(1 - penalty).
    The alignment takes every exact match possible (its size is fixed) and keeps chunks few
    greedily: each candidate word takes the reference position right after the previous match when
    it holds the same word, else a free occurrence followed by the next candidate word, else the
    first free occurrence. With several references the best score is kept (as nltk does).
  Each is averaged over the pairs. nltk's `meteor_score` (also with synonyms) would be the nearest
  well-kept library; it is not installed here.
- **Grounding that cannot be gamed** (`strict_grounding`, summary key `grounding_strict`): a span is
  *degenerate* when it has zero length or covers >= 90 % of the video (`vt_data.timespan.is_degenerate`,
  the temporal-IoU reward's rule): a whole-clip span grounds nothing, yet over an 8-s clip with a 4-s
  gold segment it scores IoU 0.5, so the rule above passes it at R@0.5. Here degenerate spans never
  count as hits: per gold span the best IoU over the sample's *non-degenerate* spans (0 without any);
  mIoU and R@{0.3, 0.5, 0.7} pool the gold spans as above. Gold spans that themselves cover >= 90 % of
  the video are not graded (a whole-clip span is the right answer there and cannot be told from a
  do-nothing one) and are counted (`n_gold_whole_clip`). Beside them the degenerate share: degenerate
  spans / all parsed spans (one with nothing left inside the video counts as degenerate), over every
  sample except those whose every gold span is whole-clip (samples without gold segments count: the
  share needs no gold). Without a duration (none
  in the record, none decoded) only the zero-length rule applies (`n_without_duration`). Per category
  too, each with the old rule's numbers beside them (`miou_any_span`, `recall@K_any_span`).
- **Direct grounding** (`direct_grounding`): R@1 at IoU {0.3, 0.5, 0.7} and mIoU of the one span
  parsed from the answer (Charades-STA, ActivityNet Captions), clipped to [0, duration]; an
  unparsable answer scores IoU 0 (as lmms' out-of-range replacement does) and is counted.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vt_data.records import Segment, VideoQA
from vt_data.scoring import extract_prediction, mra_video_r1, mra_vsibench, rouge_l_f1, score_answer
from vt_data.timespan import Span, best_ious, clip_span, is_degenerate, parse_span, temporal_iou, union_iou
from vt_data.trace import check_format, extract_number, parse_trace

THRESHOLDS = (0.3, 0.5, 0.7)
MRA_FUNCTIONS = {"vsibench": mra_vsibench, "video_r1": mra_video_r1}

# METEOR parameters (Banerjee & Lavie 2005; nltk's defaults): recall-weighted F-mean, and the
# fragmentation penalty γ·frag^β.
METEOR_ALPHA, METEOR_BETA, METEOR_GAMMA = 0.9, 3.0, 0.5

_WORD_RE = re.compile(r"\w+")


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


# --- accuracy --------------------------------------------------------------------------------------
def accuracy_summary(scores: Sequence[float],
                     categories: Sequence[str | None] | None = None) -> dict[str, Any]:
    """Mean score overall and per category.

    scores: [N] per-sample scores in [0, 1]; categories: [N] category names or None (uncounted per
    category). Returns {"n", "accuracy" (None when N = 0), "per_category": {name: {"n", "accuracy"}}}
    with categories in first-seen order."""
    if categories is not None and len(categories) != len(scores):
        raise ValueError(f"{len(scores)} scores but {len(categories)} categories")
    groups: dict[str, list[float]] = defaultdict(list)
    for i, score in enumerate(scores):
        if categories is not None and categories[i] is not None:
            groups[categories[i]].append(score)
    return {
        "n": len(scores),
        "accuracy": _mean(scores),
        "per_category": {name: {"n": len(vals), "accuracy": _mean(vals)} for name, vals in groups.items()},
    }


def mra_summary(predictions: Sequence[float | None], golds: Sequence[float]) -> dict[str, Any]:
    """Mean relative accuracy over numeric answers, in both named variants.

    predictions: [N] parsed numbers (None = unparsable, scores 0); golds: [N] numbers.
    Returns {"n", "mra_vsibench", "mra_video_r1"} (None when N = 0)."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} golds")
    out: dict[str, Any] = {"n": len(golds)}
    for name, fn in MRA_FUNCTIONS.items():
        out[f"mra_{name}"] = _mean(0.0 if p is None else fn(float(p), float(g))
                                   for p, g in zip(predictions, golds, strict=True))
    return out


VSI_DIRECTION_LEVELS = ("object_rel_direction_easy", "object_rel_direction_medium",
                        "object_rel_direction_hard")
VSI_DIRECTION = "object_rel_direction"
VSI_CATEGORIES = (VSI_DIRECTION, "object_rel_distance", "route_planning", "obj_appearance_order",
                  "object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation")


def vsi_bench_summary(scores: Sequence[float], question_types: Sequence[str]) -> dict[str, Any]:
    """VSI-Bench's official overall: macro mean over 8 categories, direction levels merged first.

    scores: [N] per-sample scores (MCA 0/1, NA MRA); question_types: [N] VSI question types.
    Returns {"n", "overall", "per_category": {8 names: mean}, "direction_levels": {level: mean},
    "missing": [absent categories or levels]}. Unknown question types form their own category."""
    if len(scores) != len(question_types):
        raise ValueError(f"{len(scores)} scores but {len(question_types)} question types")
    groups: dict[str, list[float]] = defaultdict(list)
    for score, qtype in zip(scores, question_types, strict=True):
        groups[qtype].append(score)
    per_type = {qtype: _mean(vals) for qtype, vals in groups.items()}
    levels = {lvl: per_type.pop(lvl) for lvl in VSI_DIRECTION_LEVELS if lvl in per_type}
    per_category: dict[str, float] = {}
    if levels:
        # Mean of the level means, not of their questions: the official code averages the three.
        per_category[VSI_DIRECTION] = sum(levels.values()) / len(levels)
    per_category.update(per_type)
    ordered = {c: per_category[c] for c in VSI_CATEGORIES if c in per_category}
    ordered.update({c: v for c, v in per_category.items() if c not in ordered})
    missing = [c for c in VSI_CATEGORIES if c not in ordered and c != VSI_DIRECTION]
    missing += [lvl for lvl in VSI_DIRECTION_LEVELS if lvl not in levels]
    return {"n": len(scores), "overall": _mean(ordered.values()), "per_category": ordered,
            "direction_levels": levels, "missing": missing}


# --- trace format ----------------------------------------------------------------------------------
def answer_kind(problem_type: str) -> str:
    """The `check_format` answer kind: one letter for multiple choice, any non-empty text otherwise."""
    return "letter" if problem_type == "multiple choice" else "any"


def is_valid_trace(output: str, problem_type: str = "multiple choice", duration: float | None = None) -> bool:
    """Whether `output` passes the strict r_fmt rule (`check_format`, method.md §8.1)."""
    return check_format(output, duration=duration, strict=True, answer_kind=answer_kind(problem_type)).ok


def valid_trace_rate(flags: Sequence[bool]) -> float | None:
    """Share of valid traces. flags: [N] `is_valid_trace` results; None when N = 0."""
    return _mean(1.0 if f else 0.0 for f in flags)


# --- grounding of the model's own reasoning ---------------------------------------------------------
def _clip(span: Span, duration: float | None) -> Span | None:
    return clip_span(span, math.inf if duration is None else duration)


def parsed_spans(output: str) -> list[Span]:
    """Every `<time>` body of `output` that parses, in order, as written (not clipped)."""
    return [span for tag in parse_trace(output).tags
            if tag.name == "time" and (span := parse_span(tag.body)) is not None]


def predicted_spans(output: str, duration: float | None = None) -> list[Span]:
    """Every `<time>` body of `output` that parses, in order, clipped to [0, duration]; spans with
    nothing left are dropped."""
    return [clipped for span in parsed_spans(output) if (clipped := _clip(span, duration)) is not None]


def reasoning_grounding(pred_spans: Sequence[Sequence[Span]], gold_spans: Sequence[Sequence[Span]],
                        thresholds: Iterable[float] = THRESHOLDS) -> dict[str, Any]:
    """mIoU and recall@K of predicted spans against gold spans, pooled over all gold spans.

    pred_spans: [N][P_i] predicted spans per sample (already clipped); gold_spans: [N][G_i] gold spans.
    Samples with G_i = 0 are skipped. Returns {"n_samples", "n_gold_spans", "samples_without_spans",
    "miou", "recall@K"..., "union_iou"} (scores None when no gold span)."""
    if len(pred_spans) != len(gold_spans):
        raise ValueError(f"{len(pred_spans)} predictions but {len(gold_spans)} gold span lists")
    thresholds = tuple(thresholds)
    ious: list[float] = []  # [sum G_i] best IoU per gold span
    unions: list[float] = []  # [samples with gold] CG-Bench union IoU
    without = 0
    for preds, golds in zip(pred_spans, gold_spans, strict=True):
        if not golds:
            continue
        without += not preds
        ious.extend(best_ious(preds, golds))
        unions.append(union_iou(preds, golds))
    out: dict[str, Any] = {"n_samples": len(unions), "n_gold_spans": len(ious),
                           "samples_without_spans": without, "miou": _mean(ious)}
    for k in thresholds:
        out[f"recall@{k:g}"] = _mean(1.0 if iou >= k else 0.0 for iou in ious)
    out["union_iou"] = _mean(unions)
    return out


# --- grounding that cannot be gamed -----------------------------------------------------------------
DEGENERATE_RULE = ("a span is degenerate when it has zero length or covers >= 90 % of the video; degenerate "
                   "spans never count as hits (best IoU over the other spans, 0 without any); gold spans "
                   "covering >= 90 % of the video are not graded")


def _strict_block(samples: Sequence[tuple[Sequence[Span], Sequence[Span], float | None, int]],
                  thresholds: tuple[float, ...]) -> dict[str, Any]:
    """strict_grounding's numbers for one group of (pred spans, gold spans, duration, empty spans)."""
    ious: list[float] = []  # [graded gold spans] best IoU over non-degenerate predictions
    any_ious: list[float] = []  # [all gold spans] the old rule: best IoU over every prediction
    spans = degenerate = samples_degenerate = without = whole = no_duration = counted = 0
    for preds, golds, duration, empty in samples:
        any_ious.extend(best_ious(preds, golds))
        graded = [g for g in golds if not is_degenerate(g, duration)]
        whole += len(golds) - len(graded)
        if golds and not graded:
            continue  # every gold span is the whole clip: nothing here tells a real span from a lazy one
        counted += 1
        no_duration += duration is None
        flags = [is_degenerate(p, duration) for p in preds]
        spans += len(flags) + empty
        degenerate += sum(flags) + empty
        without += not preds and not empty
        samples_degenerate += bool(flags or empty) and all(flags)
        ious.extend(best_ious([p for p, bad in zip(preds, flags, strict=True) if not bad], graded))
    out: dict[str, Any] = {
        "n_samples": counted, "n_spans": spans, "n_degenerate": degenerate,
        "degenerate_share": degenerate / spans if spans else None,
        "samples_all_degenerate": samples_degenerate, "samples_without_spans": without,
        "n_without_duration": no_duration, "n_gold_spans": len(ious), "n_gold_whole_clip": whole,
        "miou": _mean(ious),
    }
    for k in thresholds:
        out[f"recall@{k:g}"] = _mean(1.0 if iou >= k else 0.0 for iou in ious)
    out["miou_any_span"] = _mean(any_ious)
    for k in thresholds:
        out[f"recall@{k:g}_any_span"] = _mean(1.0 if iou >= k else 0.0 for iou in any_ious)
    return out


def strict_grounding(pred_spans: Sequence[Sequence[Span]], gold_spans: Sequence[Sequence[Span]],
                     durations: Sequence[float | None], categories: Sequence[str | None] | None = None,
                     empty_spans: Sequence[int] | None = None,
                     thresholds: Iterable[float] = THRESHOLDS) -> dict[str, Any]:
    """Grounding of the reasoning that a degenerate span cannot pass, and the degenerate-span share
    (module doc), overall and per category.

    pred_spans: [N][P_i] predicted spans (clipped); gold_spans: [N][G_i] (G_i may be 0: only the
    degenerate share then); durations: [N] seconds or None; categories: [N] names or None;
    empty_spans: [N] parsed spans that clipping left empty (zero length, outside the video): degenerate.
    Returns {"rule", counts, "degenerate_share", "miou", "recall@K"..., "miou_any_span",
    "recall@K_any_span"..., "per_category": {name: the same without rule}}; scores None when empty."""
    if not len(pred_spans) == len(gold_spans) == len(durations):
        raise ValueError(f"{len(pred_spans)} predictions, {len(gold_spans)} gold span lists and "
                         f"{len(durations)} durations")
    thresholds = tuple(thresholds)
    empty_spans = list(empty_spans) if empty_spans is not None else [0] * len(pred_spans)
    samples = list(zip(pred_spans, gold_spans, durations, empty_spans, strict=True))
    groups: dict[str, list] = defaultdict(list)
    for i, sample in enumerate(samples):
        if categories is not None and categories[i] is not None:
            groups[categories[i]].append(sample)
    return {"rule": DEGENERATE_RULE, **_strict_block(samples, thresholds),
            "per_category": {name: _strict_block(group, thresholds) for name, group in groups.items()}}


# --- captions --------------------------------------------------------------------------------------
def tokenize(text: str) -> list[str]:
    """Case-folded `\\w+` words: the tokenisation of every caption metric here (and of ROUGE-L in the
    scorer), so the three metrics see the same words."""
    return _WORD_RE.findall(text.casefold())


def _closest_ref_length(cand_len: int, ref_lens: Sequence[int]) -> int:
    # Closest reference length, ties to the shorter (nltk and coco-caption).
    return min(ref_lens, key=lambda r: (abs(r - cand_len), r))


def _clipped_unigrams(cand: list[str], refs: Sequence[list[str]]) -> int:
    max_ref: Counter = Counter()
    for ref in refs:
        for word, count in Counter(ref).items():
            max_ref[word] = max(max_ref[word], count)
    return sum(min(count, max_ref[word]) for word, count in Counter(cand).items())


def _brevity_penalty(cand_len: int, ref_len: int) -> float:
    if cand_len == 0:
        return 0.0
    return 1.0 if cand_len > ref_len else math.exp(1.0 - ref_len / cand_len)


def _as_refs(references: str | Sequence[str]) -> list[str]:
    return [references] if isinstance(references, str) else list(references)


def bleu1(candidate: str, references: str | Sequence[str]) -> float:
    """Sentence BLEU-1: clipped unigram precision × brevity penalty (see the module doc); 0 for an
    empty candidate or no reference."""
    cand = tokenize(candidate)
    refs = [tokenize(r) for r in _as_refs(references)]
    if not cand or not refs:
        return 0.0
    precision = _clipped_unigrams(cand, refs) / len(cand)
    return precision * _brevity_penalty(len(cand), _closest_ref_length(len(cand), [len(r) for r in refs]))


def corpus_bleu1(candidates: Sequence[str], references: Sequence[str | Sequence[str]]) -> float | None:
    """Corpus BLEU-1: clipped unigram counts and lengths summed over all pairs, one brevity penalty.

    candidates: [N]; references: [N] (a string or a list of strings each). None when N = 0."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    if not candidates:
        return None
    matched = cand_total = ref_total = 0
    for candidate, refs in zip(candidates, references, strict=True):
        cand = tokenize(candidate)
        ref_tokens = [tokenize(r) for r in _as_refs(refs)] or [[]]
        matched += _clipped_unigrams(cand, ref_tokens)
        cand_total += len(cand)
        ref_total += _closest_ref_length(len(cand), [len(r) for r in ref_tokens])
    if cand_total == 0:
        return 0.0
    return matched / cand_total * _brevity_penalty(cand_total, ref_total)


def rouge_l(candidate: str, references: str | Sequence[str]) -> float:
    """ROUGE-L F1 (β = 1), the scorer's `rouge_l_f1`; the best over several references."""
    return max((rouge_l_f1(candidate, r) for r in _as_refs(references)), default=0.0)


def _align(cand: list[str], ref: list[str]) -> list[tuple[int, int]]:
    """Exact-match unigram alignment [(cand index, ref index)], greedy towards few chunks."""
    free: dict[str, list[int]] = defaultdict(list)  # word -> unused reference positions, ascending
    for j, word in enumerate(ref):
        free[word].append(j)
    used: set[int] = set()
    pairs: list[tuple[int, int]] = []
    prev_j: int | None = None
    for i, word in enumerate(cand):
        slots = [j for j in free.get(word, ()) if j not in used]
        if not slots:
            prev_j = None
            continue
        nxt = cand[i + 1] if i + 1 < len(cand) else None
        if prev_j is not None and prev_j + 1 in slots:
            j = prev_j + 1  # extends the current chunk
        else:
            # Start where the next candidate word can continue the chunk, when such a slot exists.
            j = next((s for s in slots if nxt is not None and s + 1 < len(ref) and ref[s + 1] == nxt
                      and s + 1 not in used), slots[0])
        used.add(j)
        pairs.append((i, j))
        prev_j = j
    return pairs


def _chunks(pairs: Sequence[tuple[int, int]]) -> int:
    """Runs of matches adjacent in both candidate and reference (pairs sorted by candidate index)."""
    chunks = 0
    for k, (i, j) in enumerate(pairs):
        if k == 0 or not (i == pairs[k - 1][0] + 1 and j == pairs[k - 1][1] + 1):
            chunks += 1
    return chunks


def _meteor_one(cand: list[str], ref: list[str]) -> float:
    pairs = _align(cand, ref)
    m = len(pairs)
    if m == 0:
        return 0.0
    precision, recall = m / len(cand), m / len(ref)
    fmean = precision * recall / (METEOR_ALPHA * precision + (1 - METEOR_ALPHA) * recall)
    penalty = METEOR_GAMMA * (_chunks(pairs) / m) ** METEOR_BETA
    return fmean * (1.0 - penalty)


def meteor_exact(candidate: str, references: str | Sequence[str]) -> float:
    """METEOR with the exact-match stage only (no stemming, no synonyms); see the module doc. The
    name says so: compare it with pycocoevalcap's METEOR only with that caveat."""
    cand = tokenize(candidate)
    return max((_meteor_one(cand, tokenize(r)) for r in _as_refs(references)), default=0.0)


def _centre_distance(a: Span, b: Span) -> float:
    return abs((a[0] + a[1]) / 2 - (b[0] + b[1]) / 2)


def pair_captions(steps: Sequence[tuple[Span, str]], gold: Sequence[Segment]) -> list[tuple[str, str]]:
    """(predicted caption, gold caption) per gold segment that has a caption.

    steps: [P] (span, caption) of the predicted triples; gold: [G] segments. Each gold segment takes
    the step with the best IoU, ties (all-zero included) to the nearest span centre, then the
    earlier step; without steps the predicted caption is ""."""
    pairs = []
    for seg in gold:
        if not seg.caption.strip():
            continue
        gold_span = (seg.start, seg.end)
        if not steps:
            pairs.append(("", seg.caption))
            continue
        best = min(range(len(steps)), key=lambda k: (-temporal_iou(steps[k][0], gold_span),
                                                     _centre_distance(steps[k][0], gold_span), k))
        pairs.append((steps[best][1], seg.caption))
    return pairs


def predicted_steps(output: str, duration: float | None = None) -> list[tuple[Span, str]]:
    """(span clipped to [0, duration], caption) of every complete triple with a parsable span."""
    steps = []
    for step in parse_trace(output).steps:
        if step.span is not None and (span := _clip(step.span, duration)) is not None:
            steps.append((span, step.caption))
    return steps


def caption_pair_scores(candidate: str, reference: str) -> dict[str, float]:
    """The three caption metrics of one (predicted, gold) pair, each in [0, 1]."""
    return {"bleu1": bleu1(candidate, reference), "rouge_l": rouge_l(candidate, reference),
            "meteor_exact": meteor_exact(candidate, reference)}


def caption_scores(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Mean BLEU-1, ROUGE-L and METEOR (exact) over (predicted, gold) caption pairs, and corpus BLEU-1.

    pairs: [M] from `pair_captions`, pooled over samples. Scores None when M = 0."""
    per_pair = [caption_pair_scores(c, r) for c, r in pairs]
    out: dict[str, Any] = {"n_pairs": len(pairs)}
    for name in ("bleu1", "rouge_l", "meteor_exact"):
        out[name] = _mean(p[name] for p in per_pair)
    out["bleu1_corpus"] = corpus_bleu1([c for c, _ in pairs], [r for _, r in pairs])
    return out


# --- direct temporal grounding ----------------------------------------------------------------------
def direct_grounding(pred_spans: Sequence[Span | None], gold_spans: Sequence[Span],
                     durations: Sequence[float | None] | None = None,
                     thresholds: Iterable[float] = THRESHOLDS) -> dict[str, Any]:
    """R@1 at IoU K and mIoU of one predicted span per query (Charades-STA, ActivityNet Captions).

    pred_spans: [N] span or None (unparsable, IoU 0); gold_spans: [N]; durations: [N] seconds or None
    (predictions clipped to [0, duration]). Returns {"n", "unparsed", "miou", "recall@K"...}."""
    if len(pred_spans) != len(gold_spans):
        raise ValueError(f"{len(pred_spans)} predictions but {len(gold_spans)} gold spans")
    durations = list(durations) if durations is not None else [None] * len(gold_spans)
    ious = []
    unparsed = 0
    for pred, gold, duration in zip(pred_spans, gold_spans, durations, strict=True):
        clipped = _clip(pred, duration) if pred is not None else None
        unparsed += pred is None
        ious.append(0.0 if clipped is None else temporal_iou(clipped, gold))
    out: dict[str, Any] = {"n": len(ious), "unparsed": unparsed, "miou": _mean(ious)}
    for k in thresholds:
        out[f"recall@{k:g}"] = _mean(1.0 if iou >= k else 0.0 for iou in ious)
    return out


# --- one output -> one row; rows -> a summary ---------------------------------------------------------
def _span_list(span: Span | None) -> list[float] | None:
    return None if span is None else [span[0], span[1]]


def score_sample(output: str, record: VideoQA, *, category: str | None = None,
                 mra_variant: str = "vsibench") -> dict[str, Any]:
    """One output scored against its record, as a JSON-able row for a predictions file.

    Keys: key, problem_type, category, prediction / prediction_lenient (letter, number, text or
    [start, end]), score / score_lenient (`score_answer` strict / lenient, `mra_variant` for
    regression), valid_trace; regression adds mra {variant: score}; grounding records add gold_span,
    duration; other records add pred_spans, empty_spans (parsed spans with nothing left inside the
    video: zero length or outside it) and duration (the degenerate-span share), and those with segments
    gold_spans, union_iou and caption_pairs."""
    kind = record.problem_type
    row: dict[str, Any] = {"key": record.key, "problem_type": kind, "category": category}
    for mode, suffix in (("strict", ""), ("lenient", "_lenient")):
        prediction = extract_prediction(output, record, mode)
        row[f"prediction{suffix}"] = _span_list(prediction) if kind == "grounding" else prediction
        row[f"score{suffix}"] = score_answer(output, record, mode=mode, mra_variant=mra_variant)
    row["valid_trace"] = is_valid_trace(output, kind, record.duration)
    if kind == "regression":
        pred = row["prediction"]
        gold_value = extract_number(record.gold or "")
        row["mra"] = {name: (0.0 if pred is None or gold_value is None else fn(pred, gold_value))
                      for name, fn in MRA_FUNCTIONS.items()}
    if kind == "grounding":
        row["gold_span"] = _span_list(parse_span(record.gold or ""))
        row["duration"] = record.duration
        return row
    parsed = parsed_spans(output)
    spans = [clipped for span in parsed if (clipped := _clip(span, record.duration)) is not None]
    row["pred_spans"] = [list(s) for s in spans]
    row["empty_spans"] = len(parsed) - len(spans)
    row["duration"] = record.duration
    if record.segments:
        golds = [(s.start, s.end) for s in record.segments]
        row["gold_spans"] = [list(s) for s in golds]
        row["union_iou"] = union_iou(spans, golds)
        row["caption_pairs"] = [list(p) for p in pair_captions(predicted_steps(output, record.duration),
                                                                 record.segments)]
    return row


def aggregate(rows: Sequence[Mapping[str, Any]], *, metric: str = "accuracy") -> dict[str, Any]:
    """A benchmark summary from `score_sample` rows (all fractions in [0, 1]).

    Always: n, accuracy (strict) and accuracy_lenient with per-category breakdowns, valid_trace_rate.
    metric "vsi_bench" adds `vsi_bench` (the official macro overall); "grounding" adds
    `direct_grounding`. Rows with regression add `mra`; rows with gold segments add `grounding`
    (of the reasoning) and `captions`; rows with predicted spans (`pred_spans`) add `grounding_strict`
    (`strict_grounding`; a row's duration is the record's, else the decoded video's `video_duration`)."""
    categories = [r.get("category") for r in rows]
    strict = accuracy_summary([r["score"] for r in rows], categories)
    lenient = accuracy_summary([r["score_lenient"] for r in rows], categories)
    summary: dict[str, Any] = {
        "n": len(rows),
        "accuracy": strict["accuracy"],
        "accuracy_lenient": lenient["accuracy"],
        "per_category": {c: {"n": v["n"], "accuracy": v["accuracy"],
                             "accuracy_lenient": lenient["per_category"][c]["accuracy"]}
                         for c, v in strict["per_category"].items()},
        "valid_trace_rate": valid_trace_rate([bool(r.get("valid_trace")) for r in rows]),
    }
    regression = [r for r in rows if "mra" in r]
    if regression:
        summary["mra"] = {"n": len(regression), **{f"mra_{name}": _mean(r["mra"][name] for r in regression)
                                                   for name in MRA_FUNCTIONS}}
    if metric == "vsi_bench":
        summary["vsi_bench"] = vsi_bench_summary([r["score"] for r in rows],
                                                 [r.get("category") or "" for r in rows])
    if metric == "grounding":
        summary["direct_grounding"] = direct_grounding(
            [tuple(r["prediction"]) if r.get("prediction") is not None else None for r in rows],
            [tuple(r["gold_span"]) for r in rows], [r.get("duration") for r in rows])
    with_segments = [r for r in rows if r.get("gold_spans")]
    if with_segments:
        summary["grounding"] = reasoning_grounding(
            [[tuple(s) for s in r["pred_spans"]] for r in with_segments],
            [[tuple(s) for s in r["gold_spans"]] for r in with_segments])
        pairs = [tuple(p) for r in with_segments for p in r.get("caption_pairs", [])]
        if pairs:
            summary["captions"] = caption_scores(pairs)
    traced = [r for r in rows if "pred_spans" in r]
    if traced:
        summary["grounding_strict"] = strict_grounding(
            [[tuple(s) for s in r["pred_spans"]] for r in traced],
            [[tuple(s) for s in r.get("gold_spans") or []] for r in traced],
            [r.get("duration") or r.get("video_duration") for r in traced],
            [r.get("category") for r in traced], [int(r.get("empty_spans") or 0) for r in traced])
    return summary
