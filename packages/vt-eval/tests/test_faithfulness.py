"""Faithfulness metrics of every evaluation, on the demo's kind of synthetic clips (8 s, one 8-s or two 4-s
segments): grounding that a whole-clip span cannot pass, clue sufficiency (a caption that contradicts
the answer fails it), and reliance end to end on the tiny model, with the masked frames checked black in
the pixel values the model's vision tower received, resumed without generating again."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from vt_data.synthetic import SynthConfig, build_dataset
from vt_data.timespan import format_span
from vt_eval.benchmarks import load_benchmark
from vt_eval.faithfulness import clue_summary
from vt_eval.protocol import get_protocol
from vt_eval.reliance import RelianceOptions, control_frames, frames_in_spans, reliance_summary
from vt_eval.runner import evaluate
from vt_model.engines import Completion, HFEngine, register_engine

NUM_TEST = 6
FAST = get_protocol("tiny_cpu", max_new_tokens=6)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    from vt_model.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("faithfulness-assets")
    write_tiny_model(root / "model", seed=0)
    config = SynthConfig(num_train_clips=0, num_test_clips=NUM_TEST, num_segments=(1, 2, 2),
                         seconds_per_segment=4, question_types=("span_colour", "whole_colour", "last_colour"))
    build_dataset(root / "data", config, progress=False)
    return root


@pytest.fixture(scope="module")
def bench(assets):
    return load_benchmark("synthetic", assets / "data")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ScriptedEngine:
    """Answers every question correctly with one triple: the span `span(record)` and the caption
    `caption(record)` (subclasses choose); no model."""

    num_parameters = None

    def __init__(self, *args, **kwargs):
        pass

    def prepare(self, record, template, clip, **_):
        return record

    def span(self, record):
        return record.segments[-1].start, record.segments[-1].end

    def caption(self, record):
        return record.segments[-1].caption

    def generate(self, prepared):
        return [Completion(f"<time>{format_span(*self.span(r))}</time> <caption>{self.caption(r)}</caption> "
                           f"<think> so {r.gold}</think>\n<answer>{r.gold}</answer>", 10, True, 1)
                for r in prepared]


class WholeClipEngine(ScriptedEngine):
    def span(self, record):
        return 0.0, record.duration


class ContradictingEngine(ScriptedEngine):
    """The right answer, a caption naming another option's colour."""

    def caption(self, record):
        other = next(o for o in record.options if not o.startswith(record.gold))
        return f"a {other.split('. ', 1)[1]} square"


for _name, _engine in (("scripted_test", ScriptedEngine), ("whole_clip_test", WholeClipEngine),
                       ("contradicting_test", ContradictingEngine)):
    register_engine(_name, _engine, replace=True)


# --- grounding that a whole-clip span cannot pass -------------------------------------------------------
def test_a_model_whose_span_is_always_the_whole_clip_scores_0_r05_and_100_percent_degenerate(
        assets, bench, tmp_path):
    summary = evaluate(assets / "model", bench, FAST, tmp_path, backend="whole_clip_test")["summary"]
    assert summary["accuracy"] == 1.0
    old, strict = summary["grounding"], summary["grounding_strict"]
    # The old rule passes the do-nothing span: 8 s over a 4-s gold segment is IoU 0.5.
    assert old["recall@0.5"] == 1.0 and old["miou"] > 0.5
    graded = strict["n_gold_spans"]
    assert graded > 0 and strict["recall@0.5"] == 0.0 and strict["miou"] == 0.0
    assert strict["degenerate_share"] == 1.0 and strict["samples_all_degenerate"] == strict["n_samples"]
    assert strict["recall@0.5_any_span"] == 1.0  # the old number, under its own name
    # A question about a one-segment clip has the whole clip as its gold: not graded (counted).
    whole = sum(s.end - s.start >= 0.9 * r.duration for r in bench.records for s in r.segments)
    assert 0 < whole < NUM_TEST and strict["n_gold_whole_clip"] == whole and graded == NUM_TEST - whole
    assert strict["n_samples"] == NUM_TEST - whole  # their spans are not counted as degenerate either
    for block in strict["per_category"].values():
        assert block["recall@0.5"] in (0.0, None) and block["degenerate_share"] in (1.0, None)

    grounded = evaluate(assets / "model", bench, FAST, tmp_path / "g", backend="scripted_test")["summary"]
    assert grounded["grounding_strict"]["recall@0.5"] == 1.0
    assert grounded["grounding_strict"]["degenerate_share"] == 0.0


# --- clue sufficiency ---------------------------------------------------------------------------------
def test_clue_sufficiency_fails_a_caption_that_contradicts_the_answer(assets, bench, tmp_path):
    from vt_data.clues import RuleChecker

    faithful = evaluate(assets / "model", bench, FAST, tmp_path / "f", backend="scripted_test",
                        clue_checker=RuleChecker())["summary"]["clue_sufficiency"]
    assert faithful["status"] == "on" and faithful["checker"] == "rule-based-checker"
    assert (faithful["n"], faithful["sufficient"], faithful["agrees_with_model"]) == (NUM_TEST, 1.0, 1.0)

    out = tmp_path / "c"
    results = evaluate(assets / "model", bench, FAST, out, backend="contradicting_test",
                       clue_checker=RuleChecker())
    clues = results["summary"]["clue_sufficiency"]
    assert results["summary"]["accuracy"] == 1.0  # right answers ...
    assert clues["sufficient"] == 0.0 and clues["agrees_with_model"] == 0.0  # ... the clues say otherwise
    assert set(clues["per_category"]) == {r.extra["question_type"] for r in bench.records}
    lines = _lines(out / "clues.jsonl")
    assert len(lines) == NUM_TEST and all(line["answer"] != line["gold"] for line in lines)

    # Resumed: nothing judged twice; without a checker the summary says so.
    again = evaluate(assets / "model", bench, FAST, out, backend="contradicting_test",
                     clue_checker=RuleChecker())
    assert again["run"]["ranks"][0]["invocations"][-1]["clues"]["resumed"] == NUM_TEST
    assert len(_lines(out / "clues.jsonl")) == NUM_TEST
    off = evaluate(assets / "model", bench, FAST, out, backend="contradicting_test")["summary"]
    assert off["clue_sufficiency"]["status"] == "off"
    assert "no clue checker" in off["clue_sufficiency"]["reason"]
    assert clue_summary(out, [], None)["status"] == "off"


# --- reliance -----------------------------------------------------------------------------------------
def test_masks_own_frames_and_a_control_of_as_many_frames_elsewhere():
    ts = np.array([0.0, 1.0, 2.25, 3.25, 4.5, 5.5, 6.75, 7.75])  # 8 of 32 frames at 4 fps
    own = frames_in_spans(ts, [(4.0, 8.0)])
    assert own.tolist() == [False] * 4 + [True] * 4
    control, overlap = control_frames(own, "k")
    assert control.tolist() == [True] * 4 + [False] * 4 and overlap == 0.0
    whole, whole_overlap = control_frames(frames_in_spans(ts, [(0.0, 8.0)]), "k")
    assert whole.all() and whole_overlap == 1.0  # a whole-clip span leaves nowhere else to mask
    assert not frames_in_spans(ts, [(1.5, 2.0)]).any()  # a span between two sampled frames masks nothing
    six = frames_in_spans(ts, [(0.0, 6.0)])
    assert control_frames(six, "a")[1] == pytest.approx(4 / 6)  # k > T/2: it has to overlap
    one = frames_in_spans(ts, [(3.0, 4.0)])
    picks = {tuple(control_frames(one, key)[0].nonzero()[0]) for key in "abcdefgh"}
    assert len(picks) > 1 and all(p != (3,) for p in picks)  # ties broken by the key, never on the span
    assert control_frames(one, "a")[0].tolist() == control_frames(one, "a")[0].tolist()
    options = RelianceOptions(every=3, limit=2)
    assert [i for i in range(10) if options.selects(i)] == [0, 3]


class SpyEngine(HFEngine):
    """The hf engine on the tiny model, recording what each generate call prepared and what the vision
    tower received; every completion opens with a scripted span (00:04-00:08), so the random model's
    outputs have evidence to mask."""

    calls: list[tuple[list[dict], list[torch.Tensor]]] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        encode = self.model.get_video_features
        received: list[torch.Tensor] = []
        self._received = received

        def spy(pixel_values_videos, video_grid_thw, **kw):
            received.append(pixel_values_videos.detach().clone())
            return encode(pixel_values_videos, video_grid_thw, **kw)

        self.model.get_video_features = spy

    def generate(self, prepared):
        self._received.clear()
        out = super().generate(prepared)
        SpyEngine.calls.append((list(prepared), list(self._received)))
        prefix = "<time>00:04-00:08</time> <caption>a shape</caption> <think>look</think> "
        return [Completion(prefix + c.text, c.num_tokens, c.finished, c.num_prompt_tokens) for c in out]


register_engine("spy_hf_test", SpyEngine, replace=True)


def _black_frames(prepared: dict, config) -> set[int]:
    """Indices of the frames whose pixel values are exactly those of a black frame."""
    from vt_model.processing import normalize_frames, unpatchify

    grid = prepared["video_grid_thw"][0]
    frames = unpatchify(prepared["pixel_values_videos"], grid, config)  # (T, 3, h, w)
    black = normalize_frames(torch.zeros((1, 3, *frames.shape[-2:]), dtype=torch.uint8), config)[0]
    return {i for i in range(frames.shape[0]) if torch.equal(frames[i], black)}


def test_reliance_end_to_end_on_the_tiny_model_masks_black_what_the_model_receives(assets, bench, tmp_path):
    SpyEngine.calls.clear()
    options = RelianceOptions(batch_size=2)
    results = evaluate(assets / "model", bench, FAST, tmp_path, backend="spy_hf_test", batch_size=3,
                       num_workers=1, reliance=options)
    lines = _lines(tmp_path / "reliance.jsonl")
    assert [line["index"] for line in lines] == list(range(NUM_TEST))
    for line in lines:
        assert line["status"] == "ok" and line["spans"] == [[4.0, 8.0]]
        ts = line["frame_timestamps"]
        own, control = line["own"]["frames"], line["control"]["frames"]
        assert own == [i for i, t in enumerate(ts) if 4.0 <= t < 8.0] and own
        assert line["control"]["overlap"] == 0.0 and not set(control) & set(own) and len(control) == len(own)
        for condition in ("own", "control"):
            changed = line[condition]["prediction"] != line["original_prediction"]
            assert line[condition]["changed"] == changed

    # What the model received is what was prepared, and the masked frames of each prompt are black in it.
    config = FAST.video_config()
    masks = Counter()
    for prepared, received in SpyEngine.calls:
        assert len(received) == 1 and torch.equal(torch.cat([p["pixel_values_videos"] for p in prepared]),
                                                  received[0])
        for p in prepared:
            masks[tuple(sorted(_black_frames(p, config)))] += 1
    expected = Counter({(): NUM_TEST})  # the evaluation itself: nothing masked
    for line in lines:
        expected[tuple(line["own"]["frames"])] += 1
        expected[tuple(line["control"]["frames"])] += 1
    assert masks == expected

    reliance = results["summary"]["reliance"]
    assert reliance["status"] == "on" and reliance["n"] == NUM_TEST and reliance["missing"] == 0
    assert reliance["control_overlap"] == 0.0 and 0.0 <= reliance["own_changed"] <= 1.0
    assert set(reliance["per_category"]) == {r.extra["question_type"] for r in bench.records}

    # Resumed: nothing generated again; a smaller subset is summarised from the same lines.
    calls = len(SpyEngine.calls)
    again = evaluate(assets / "model", bench, FAST, tmp_path, backend="spy_hf_test", reliance=options)
    assert len(SpyEngine.calls) == calls and again["summary"]["reliance"] == reliance
    resumed = again["run"]["ranks"][0]["invocations"][-1]
    assert resumed["reliance"]["pending"] == 0 and "num_parameters_loaded" not in resumed  # no model loaded
    rows = _lines(tmp_path / "predictions.jsonl")  # the merged rows
    subset = reliance_summary(tmp_path, rows, RelianceOptions(every=2).to_dict())
    assert subset["n"] == NUM_TEST // 2 and subset["subset"] == {"every": 2, "limit": None}
    assert reliance_summary(tmp_path, [], None)["status"] == "off"


# --- reports --------------------------------------------------------------------------------------------
def test_both_reports_show_faithfulness_per_question_type_and_say_how(assets, bench, tmp_path):
    import csv

    from vt_data.clues import RuleChecker
    from vt_eval.report import write_report
    from vt_eval.stages import StageRun, write_stage_report

    for name, backend in (("grounded", "scripted_test"), ("lazy", "whole_clip_test")):
        evaluate(assets / "model", bench, FAST, tmp_path / "eval" / name, backend=backend, label=name,
                 clue_checker=RuleChecker(), reliance=RelianceOptions(every=2))
    runs = [StageRun("sft", tmp_path / "eval" / "grounded", label="SFT"),
            StageRun("grpo", tmp_path / "eval" / "lazy", seed=0, label="SFT + GRPO")]
    result = write_stage_report(runs, tmp_path / "stages")
    table = (tmp_path / "stages" / "table.md").read_text()
    assert "### Faithfulness per question type (mean over seeds)" in table
    assert "degenerate spans" in table and "clues → correct" in table and "changed: own span masked" in table
    assert "checker rule-based-checker" in table and "multiple of 2" in table
    lazy = next(e for e in result["faithfulness"] if e["stage"] == "grpo" and e["category"] == "span_colour")
    assert lazy["degenerate"] == 100.0 and lazy["r@0.5_strict"] == 0.0 and lazy["clue_sufficient"] == 100.0
    with (tmp_path / "stages" / "faithfulness.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["category"] for r in rows} >= {"all", "span_colour"}
    assert {r["stage"] for r in rows} == {"sft", "grpo"}

    write_report([tmp_path / "eval"], tmp_path / "report", plots=False)
    text = (tmp_path / "report" / "table.md").read_text()
    assert "## Faithfulness of the model's own clues" in text
    assert "| lazy | tiny_cpu | synthetic | all |" in text
    with (tmp_path / "report" / "runs.csv").open() as fh:
        by_model = {row["model"]: row for row in csv.DictReader(fh)}
    assert by_model["lazy"]["faithfulness/degenerate"] == "100.0"
    assert by_model["lazy"]["faithfulness/r@0.5_strict"] == "0.0"
    assert (tmp_path / "report" / "faithfulness.csv").is_file()
