"""Metrics: accuracy, MRA, the VSI-Bench macro overall, valid traces, grounding and caption scores
of the model's own trace, direct grounding, and per-sample rows -> summaries. Hand-checked values."""

import json
import math
from pathlib import Path

import pytest

from vt_data.records import Segment, VideoQA
from vt_data.timespan import format_span, temporal_iou
from vt_eval.metrics import (
    accuracy_summary,
    aggregate,
    bleu1,
    caption_scores,
    corpus_bleu1,
    direct_grounding,
    is_valid_trace,
    meteor_exact,
    mra_summary,
    pair_captions,
    predicted_spans,
    predicted_steps,
    reasoning_grounding,
    rouge_l,
    score_sample,
    valid_trace_rate,
    vsi_bench_summary,
)

EXTERNAL = Path(__file__).resolve().parents[3] / "tests" / "data"
HOLMES = EXTERNAL / "Video-Holmes" / "Pipeline"

# method.md §2.3, the illustrative trace.
VALID_TRACE = (
    "Let me find the moments that matter. <time>00:00-00:12</time> <caption>A woman pours flour into a "
    "bowl and cracks two eggs into it.</caption> <think>So a batter is being prepared.</think> Hmm, what "
    "happens next?\n<time>00:12-00:30</time> <caption>She whisks the mixture and pours it into an oiled pan."
    "</caption> <think>Wait, the frying comes after the mixing.</think> So the answer is B. "
    "<answer>B</answer>"
)


def _trace(spans, captions=None, answer="A"):
    captions = captions or [f"caption {i}" for i in range(len(spans))]
    triples = " ".join(f"<time>{format_span(*s)}</time> <caption>{c}</caption> <think>ok</think>"
                       for s, c in zip(spans, captions, strict=True))
    return f"{triples} <answer>{answer}</answer>"


# --- accuracy and MRA ----------------------------------------------------------------------------------
def test_accuracy_overall_and_per_category():
    summary = accuracy_summary([1, 0, 1, 1], ["a", "b", "a", None])
    assert summary["n"] == 4 and summary["accuracy"] == 0.75
    assert summary["per_category"] == {"a": {"n": 2, "accuracy": 1.0}, "b": {"n": 1, "accuracy": 0.0}}
    assert accuracy_summary([])["accuracy"] is None


def test_mra_summary_names_both_variants_and_they_differ_at_boundaries():
    # benchmarks.md §1.4: (1.5, 1) 0.1 vs 0.0; (4.4, 4) and (11, 10) 0.9 vs 0.8; unparsable -> 0.
    summary = mra_summary([1.5, 4.4, 11, None], [1.0, 4.0, 10, 3])
    assert summary["n"] == 4
    assert summary["mra_vsibench"] == pytest.approx((0.1 + 0.9 + 0.9 + 0) / 4)
    assert summary["mra_video_r1"] == pytest.approx((0.0 + 0.8 + 0.8 + 0) / 4)


def test_vsi_bench_overall_is_the_macro_mean_with_direction_levels_merged_first():
    rows = [("object_rel_direction_easy", 1), ("object_rel_direction_easy", 0),
            ("object_rel_direction_medium", 1),
            ("object_rel_direction_hard", 0), ("object_rel_direction_hard", 0),
            ("object_rel_direction_hard", 1),
            ("object_counting", 0.6), ("object_counting", 0.8),
            ("route_planning", 1), ("route_planning", 1), ("route_planning", 0), ("route_planning", 0)]
    summary = vsi_bench_summary([s for _, s in rows], [t for t, _ in rows])
    direction = (0.5 + 1.0 + 1 / 3) / 3  # the mean of the three level means, not of their 6 questions
    assert summary["per_category"]["object_rel_direction"] == pytest.approx(direction)
    assert summary["per_category"]["object_counting"] == pytest.approx(0.7)
    assert summary["overall"] == pytest.approx((direction + 0.7 + 0.5) / 3)
    assert summary["overall"] != pytest.approx(sum(s for _, s in rows) / len(rows))  # not the micro mean
    assert list(summary["per_category"]) == ["object_rel_direction", "route_planning", "object_counting"]
    assert "room_size_estimation" in summary["missing"]
    assert "object_rel_direction_easy" not in summary["missing"]
    # A missing level: the present ones are averaged, and the summary says which is missing.
    partial = vsi_bench_summary([1, 0], ["object_rel_direction_easy", "object_rel_direction_hard"])
    assert partial["overall"] == 0.5 and "object_rel_direction_medium" in partial["missing"]


# --- traces --------------------------------------------------------------------------------------------
def test_valid_trace_rate_uses_the_strict_format_rule():
    flags = [is_valid_trace(VALID_TRACE), is_valid_trace("<think>hmm</think><answer>B</answer>"),
             is_valid_trace(VALID_TRACE.replace("<answer>B</answer>", "<answer>(B)</answer>")),
             is_valid_trace(_trace([(0, 5)], answer="7.5"), "numerical")]
    assert flags == [True, False, False, True]
    assert valid_trace_rate(flags) == 0.5 and valid_trace_rate([]) is None
    # A span past the video's end is a format error when the duration is known.
    assert is_valid_trace(VALID_TRACE, duration=60) and not is_valid_trace(VALID_TRACE, duration=20)


def test_predicted_spans_take_every_parsable_time_clipped_to_the_duration():
    output = ("<time>00:05-00:15</time> <caption>x</caption> <think>y</think> stray <time>01:00-02:00</time> "
              "<time>02:00-02:10</time> <time>soon</time> <answer>A</answer>")
    assert predicted_spans(output, duration=90) == [(5.0, 15.0), (60.0, 90.0)]
    assert predicted_spans(output) == [(5.0, 15.0), (60.0, 120.0), (120.0, 130.0)]
    assert predicted_steps(output, duration=90) == [((5.0, 15.0), "x")]  # complete triples only


# --- grounding of the reasoning ----------------------------------------------------------------------
def test_grounding_of_annotation_segments_against_themselves_and_shifted():
    from vt_eval.benchmarks import load_benchmark

    bench = load_benchmark("video_holmes", HOLMES / "example_questions",
                           annotations_dir=HOLMES / "example_annotations")
    films = {r.extra["video_id"]: [(s, e) for s, e, _ in r.extra["video_segments"]] for r in bench}
    assert films["RSmjqss0XKQ"] == [(0, 37), (37, 90), (90, 147)]  # benchmarks.md §6.2
    assert films["dGS48Kcax5k"] == [(0, 46), (46, 91)]
    golds = list(films.values())
    same = reasoning_grounding([predicted_spans(_trace(g)) for g in golds], golds)
    assert same["n_gold_spans"] == 5 and same["miou"] == 1.0 and same["union_iou"] == 1.0
    assert same["recall@0.3"] == same["recall@0.5"] == same["recall@0.7"] == 1.0
    # Each span shifted by its own length: IoU 0 with the original (one span per sample, so a shifted
    # span cannot meet a neighbouring gold segment).
    singles = [[span] for g in golds for span in g]
    shifted = [[(s + (e - s), e + (e - s))] for [(s, e)] in singles]
    assert all(temporal_iou(a[0], b[0]) == 0 for a, b in zip(shifted, singles, strict=True))
    moved = reasoning_grounding(shifted, singles)
    assert moved["miou"] == 0.0 and moved["recall@0.3"] == 0.0 and moved["union_iou"] == 0.0


def test_grounding_pools_gold_spans_and_counts_samples_without_spans():
    preds = [[(5, 15)], [(0, 8)], [(1, 2)], []]
    golds = [[(0, 10), (20, 30)], [(0, 10)], [], [(0, 10)]]
    out = reasoning_grounding(preds, golds)
    # best IoUs per gold span: 5/15, 0, 0.8, 0 (the third sample has no gold and is skipped)
    assert out["n_samples"] == 3 and out["n_gold_spans"] == 4 and out["samples_without_spans"] == 1
    assert out["miou"] == pytest.approx((1 / 3 + 0 + 0.8 + 0) / 4)
    assert (out["recall@0.3"], out["recall@0.5"], out["recall@0.7"]) == (0.5, 0.25, 0.25)
    # CG-Bench union IoU per sample: 5 / (10 + 20 - 5) = 0.2, 0.8, 0 -> mean.
    assert out["union_iou"] == pytest.approx((0.2 + 0.8 + 0) / 3)


# --- captions ------------------------------------------------------------------------------------------
def test_bleu1_counts_clipped_unigrams_with_a_brevity_penalty():
    assert bleu1("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(5 / 6)
    assert bleu1("the cat", "the cat sat on the mat") == pytest.approx(math.exp(1 - 6 / 2))  # precision 1
    assert bleu1("the the the", "the cat") == pytest.approx(1 / 3)  # "the" clipped to 1; no penalty, 3 > 2
    assert bleu1("", "the cat") == 0.0 and bleu1("dog", "the cat") == 0.0
    # Several references: clip by the max count, brevity against the closest length (ties to shorter).
    # ("the cat the": lengths 2 and 4 are equally close; the shorter one gives no penalty, 3 > 2.)
    assert bleu1("the cat the", ["the cat", "the dog the end"]) == 1.0
    # Corpus: counts and lengths pooled, one penalty: (2 + 1) / (2 + 3) * exp(1 - 8 / 5).
    assert corpus_bleu1(["the cat", "the the the"], ["the cat sat on the mat", "the cat"]) == pytest.approx(
        3 / 5 * math.exp(1 - 8 / 5))


def test_rouge_l_is_the_scorers_f1():
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)  # LCS 5
    assert rouge_l("a b", ["x", "b a"]) == pytest.approx(0.5)
    assert rouge_l("", "the cat") == 0.0


def test_meteor_exact_follows_banerjee_lavie_with_exact_matches_only():
    # Identical 4 words: Fmean 1, one chunk: 1 - 0.5 * (1/4)^3.
    assert meteor_exact("this is a test", "this is a test") == pytest.approx(1 - 0.5 / 64)
    # 5 of 6 words match in 2 chunks: Fmean = 5/6, penalty 0.5 * (2/5)^3.
    assert meteor_exact("the cat sat on the mat", "the cat is on the mat") == pytest.approx(
        5 / 6 * (1 - 0.5 * 0.4**3))
    assert meteor_exact("b a", "a b") == pytest.approx(0.5)  # two chunks of one: penalty 0.5
    # The alignment prefers the "a" that the next word continues: one chunk, not two.
    precision, recall = 2 / 3, 2 / 4
    fmean = precision * recall / (0.9 * precision + 0.1 * recall)
    assert meteor_exact("x a b", "a y a b") == pytest.approx(fmean * (1 - 0.5 * 0.5**3))
    assert meteor_exact("dogs", "cats") == 0.0 and meteor_exact("", "cats") == 0.0
    assert meteor_exact("cats run", ["dogs", "cats run"]) == pytest.approx(1 - 0.5 / 8)  # best reference


def test_each_gold_segment_pairs_with_the_step_of_best_iou_then_nearest_centre():
    steps = [((0, 10), "a dog runs"), ((10, 20), "a cat sleeps"), ((50, 60), "far away")]
    gold = [Segment(9, 19, "the cat sleeps"), Segment(32, 42, "gold far"), Segment(0, 5, "")]
    # (9, 19): IoU 9/11 with the second step; (32, 42) overlaps nothing: the nearest centre (55) wins;
    # the segment without a caption is not scored.
    assert pair_captions(steps, gold) == [("a cat sleeps", "the cat sleeps"), ("far away", "gold far")]
    assert pair_captions([], gold[:1]) == [("", "the cat sleeps")]
    scores = caption_scores(pair_captions(steps, gold) + [("", "nothing said")])
    assert scores["n_pairs"] == 3 and scores["bleu1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert scores["rouge_l"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert caption_scores([])["bleu1"] is None


# --- direct grounding ----------------------------------------------------------------------------------
def test_direct_grounding_recall_at_1_and_miou_with_clipping_and_unparsed_answers():
    out = direct_grounding([(0, 10), None, (5, 15), (80, 120)], [(0, 10), (0, 10), (0, 10), (90, 100)],
                           [None, None, None, 100])
    # IoUs 1, 0 (unparsed), 5/15, and (80, 100) vs (90, 100) = 0.5 after clipping.
    assert out["n"] == 4 and out["unparsed"] == 1
    assert out["miou"] == pytest.approx((1 + 0 + 1 / 3 + 0.5) / 4)
    assert (out["recall@0.3"], out["recall@0.5"], out["recall@0.7"]) == (0.75, 0.5, 0.25)


# --- rows and summaries ----------------------------------------------------------------------------------
def test_rows_are_json_and_aggregate_into_every_summary():
    mc = VideoQA(problem="Which colour comes first?", path="v.mp4", data_source="synthetic",
                 options=["A. red", "B. blue"], solution="<answer>B</answer>", duration=30.0,
                 segments=[Segment(0, 10, "a red square"), Segment(10, 20, "a blue circle")])
    good = _trace([(0, 10), (10, 20)], ["a red square", "a blue circle"], answer="B")
    rows = [score_sample(good, mc, category="first_colour"),
            score_sample("<answer>(B)</answer>", mc, category="first_colour")]
    json.dumps(rows)
    assert rows[0]["score"] == 1 and rows[0]["valid_trace"] and rows[0]["pred_spans"] == [[0, 10], [10, 20]]
    assert rows[1]["score"] == 0 and rows[1]["score_lenient"] == 1 and rows[1]["caption_pairs"][0][0] == ""
    summary = aggregate(rows)
    assert summary["accuracy"] == 0.5 and summary["accuracy_lenient"] == 1.0
    assert summary["valid_trace_rate"] == 0.5 and summary["per_category"]["first_colour"]["n"] == 2
    assert summary["grounding"]["miou"] == 0.5 and summary["grounding"]["samples_without_spans"] == 1
    assert summary["captions"]["rouge_l"] == 0.5 and summary["captions"]["n_pairs"] == 4

    query = VideoQA(problem="a person opens the fridge", path="c.mp4", data_source="Charades-STA",
                    problem_type="grounding", solution="<answer>00:03-00:09</answer>", duration=30.0)
    grounding_rows = [score_sample("<answer>00:03-00:09</answer>", query),
                      score_sample("<answer>about three to nine</answer>", query)]
    json.dumps(grounding_rows)
    direct = aggregate(grounding_rows, metric="grounding")["direct_grounding"]
    assert direct["miou"] == 0.5 and direct["unparsed"] == 1 and grounding_rows[0]["prediction"] == [3.0, 9.0]

    na = VideoQA(problem="How many chairs?", path="s.mp4", data_source="VSI-Bench", problem_type="regression",
                 solution="<answer>4</answer>")
    vsi_rows = [score_sample("<answer>3</answer>", na, category="object_counting"),
                score_sample("<answer>A</answer>", mc.replace(segments=None), category="route_planning")]
    vsi = aggregate(vsi_rows, metric="vsi_bench")
    assert vsi_rows[0]["mra"] == {"vsibench": pytest.approx(0.6), "video_r1": pytest.approx(0.5)}
    assert vsi["mra"]["mra_vsibench"] == pytest.approx(0.6)
    assert vsi["vsi_bench"]["overall"] == pytest.approx(0.3)  # mean of 0.6 (counting) and 0 (route)
