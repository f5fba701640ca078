"""The embedded synthetic dataset: deterministic, valid, balanced, and the videos show the answers."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vt_data.records import load_records, strip_option_prefix, validate
from vt_data.synthetic import (
    BACKGROUND,
    COLOURS,
    DEFAULT_QUESTION_TYPES,
    QUESTION_TYPES,
    SynthConfig,
    build_dataset,
    build_tiny_dataset,
)
from vt_data.timespan import parse_time
from vt_data.trace import check_format, parse_trace
from vt_data.video import read_video

SMALL = SynthConfig(num_train_clips=20, num_test_clips=10, seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path) -> dict[str, list]:
    return {split: load_records(root / f"{split}.jsonl") for split in ("train", "test")}


def _colour_of(caption: str) -> str:
    return caption.split()[1]  # "a red square"


def _answer_text(record) -> str:
    return strip_option_prefix(record.options[ord(record.answer) - ord("A")])


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    build_dataset(root, SMALL, progress=False, workers=1)
    return root


@pytest.fixture(scope="module")
def hard(tmp_path_factory) -> Path:
    """Six colours, shuffled options and two questions per clip."""
    root = tmp_path_factory.mktemp("hard")
    config = SynthConfig(num_train_clips=12, num_test_clips=6, num_colours=6, shuffle_options=True,
                         questions_per_clip=2, seed=3)
    build_dataset(root, config, progress=False, workers=1)
    return root


@pytest.fixture(scope="module")
def fewer(tmp_path_factory) -> Path:
    """Two 4-s segments per clip from a palette of four: two options are never shown."""
    root = tmp_path_factory.mktemp("fewer")
    config = SynthConfig(num_train_clips=24, num_test_clips=8, num_segments=(1, 2), seconds_per_segment=4.0,
                         question_types=("span_colour", "whole_colour", "first_colour", "last_colour"),
                         seed=5)
    build_dataset(root, config, progress=False, workers=1)
    return root


# --- determinism --------------------------------------------------------------------------------
def test_same_seed_same_bytes_for_any_worker_count(small, tmp_path):
    build_dataset(tmp_path / "again", SMALL, progress=False, workers=2)
    assert _files(tmp_path / "again") == _files(small)


def test_different_seeds_differ(small, tmp_path):
    build_dataset(tmp_path / "other", SynthConfig(num_train_clips=20, num_test_clips=10, seed=1),
                  progress=False)
    other = _files(tmp_path / "other")
    assert other["train.jsonl"] != _files(small)["train.jsonl"]
    assert other["videos/clip_000000.mp4"] != _files(small)["videos/clip_000000.mp4"]


def test_rebuild_removes_stale_clips(tmp_path):
    build_tiny_dataset(tmp_path, num_train_clips=6, num_test_clips=2)
    build_tiny_dataset(tmp_path, num_train_clips=3, num_test_clips=1)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [
        f"clip_{i:06d}.mp4" for i in range(4)]


# --- records ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["small", "hard", "fewer"])
def test_every_record_validates(name, request):
    root = request.getfixturevalue(name)
    for records in _load(root).values():
        for record in records:
            assert validate(record, video_root=root) == [], record.problem_id
            assert record.data_source == "synthetic" and record.problem_type == "multiple choice"
            assert record.solution == f"<answer>{record.answer}</answer>"
            assert record.extra["question_type"] in QUESTION_TYPES
            assert re.fullmatch(r"videos/clip_\d{6}\.mp4", record.path)


def test_default_options_are_the_fixed_palette(small):
    for records in _load(small).values():
        for record in records:
            assert record.options == ["A. red", "B. green", "C. blue", "D. yellow"]
            assert record.duration == 8.0 and len(record.extra["video_segments"]) == 4


@pytest.mark.parametrize("name", ["small", "hard", "fewer"])
def test_traces_are_well_formed_and_grounded_in_the_evidence(name, request):
    root = request.getfixturevalue(name)
    traced = [r for r in _load(root)["train"] if r.process]
    assert traced
    for record in traced:
        text = record.process + "\n" + record.solution
        check = check_format(text, strict=True, duration=record.duration)
        assert check.ok, (text, check.reasons)
        assert parse_trace(text).spans == [(s.start, s.end) for s in record.segments]
        assert [s.caption for s in parse_trace(text).steps] == [s.caption for s in record.segments]
        # The last think names the answer's colour and letter; short enough for the tiny model.
        assert parse_trace(text).steps[-1].think.endswith(f"{_answer_text(record)} is {record.answer}")
        assert len(text) < 240


def _oracle(record) -> tuple[str, list[int]]:
    """The answer colour and evidence segment indices, re-derived from `video_segments` and the text."""
    segments = record.extra["video_segments"]
    colours = [_colour_of(caption) for _, _, caption in segments]
    qtype, problem = record.extra["question_type"], record.problem
    if qtype == "span_colour":
        start, end = (parse_time(t) for t in re.search(r"from (\S+) to (\S+)\?", problem).groups())
        k = next(i for i, (s, e, _) in enumerate(segments) if (s, e) == (start, end))
        return colours[k], [k]
    if qtype in ("after_colour", "before_colour"):
        anchor = colours.index(re.search(r"the (\w+) shape\?$", problem).group(1))
        k = anchor + (1 if qtype == "after_colour" else -1)
        assert 0 <= k < len(colours)
        return colours[k], [anchor, k]
    k = 0 if qtype == "first_colour" else len(colours) - 1
    return colours[k], [k]


@pytest.mark.parametrize("name", ["small", "hard"])
def test_answers_follow_from_the_clip_segments(name, request):
    root = request.getfixturevalue(name)
    seen = set()
    for records in _load(root).values():
        for record in records:
            colour, evidence = _oracle(record)
            assert _answer_text(record) == colour
            segments = record.extra["video_segments"]
            assert [(s.start, s.end, s.caption) for s in record.segments] == [
                tuple(segments[k]) for k in evidence]
            seen.add(record.extra["question_type"])
            # Every clip shows each palette colour exactly once.
            assert sorted(_colour_of(c) for *_, c in segments) == sorted(
                strip_option_prefix(o) for o in record.options)
    assert seen == set(DEFAULT_QUESTION_TYPES)


def _frame_colour(frame: np.ndarray, palette: list[str]) -> str:
    """The palette colour nearest the mean of the pixels that are not background."""
    pixels = frame.reshape(-1, 3).astype(np.float64)
    shape = pixels[np.abs(pixels - BACKGROUND).max(axis=1) > 60]
    assert len(shape) > 0.08 * len(pixels), "the shape should be large and clear"
    mean = shape.mean(axis=0)
    return min(palette, key=lambda c: np.linalg.norm(mean - np.array(COLOURS[c])))


@pytest.mark.parametrize("name", ["small", "hard", "fewer"])
def test_videos_show_what_the_answer_says(name, request):
    root = request.getfixturevalue(name)
    for records in _load(root).values():
        for record in records:
            palette = [strip_option_prefix(o) for o in record.options]
            clip = read_video(root / record.path, num_frames=8)
            assert clip.frames.shape[1:] == (56, 56, 3)
            answer_segment = record.segments[-1]  # the trace's last step holds the answer
            inside = [f for f, t in zip(clip.frames, clip.timestamps, strict=True)
                      if answer_segment.start <= t < answer_segment.end]
            assert inside
            for frame in inside:
                assert _frame_colour(frame, palette) == _answer_text(record)
            # And every sampled frame shows its own segment's colour.
            for frame, t in zip(clip.frames, clip.timestamps, strict=True):
                start, end, caption = next(s for s in record.extra["video_segments"] if s[0] <= t < s[1])
                assert _frame_colour(frame, palette) == _colour_of(caption)


def test_fewer_segments_than_colours(fewer):
    meta = json.loads((fewer / "meta.json").read_text())
    assert meta["duration"] == 8.0
    layouts = Counter()
    for records in _load(fewer).values():
        for record in records:
            segments = record.extra["video_segments"]
            shown = [_colour_of(c) for *_, c in segments]
            palette = [strip_option_prefix(o) for o in record.options]
            assert palette == ["red", "green", "blue", "yellow"]  # all four options, fixed order
            assert len(shown) == len(set(shown)) and set(shown) <= set(palette)
            # one 8-s segment or two 4-s ones
            assert [s[:2] for s in segments] in ([[0.0, 8.0]], [[0.0, 4.0], [4.0, 8.0]])
            qtype = record.extra["question_type"]
            if qtype == "whole_colour":  # asked only where there is no time to find
                assert len(segments) == 1 and record.problem == "What colour is the shape in the video?"
                assert _answer_text(record) == shown[0]
            else:
                colour, _ = _oracle(record)
                assert _answer_text(record) == colour in shown
            layouts[(qtype, len(segments))] += 1
    assert layouts[("first_colour", 2)] and layouts[("span_colour", 2)] and layouts[("whole_colour", 1)]
    with pytest.raises(ValueError, match="num_segments"):
        SynthConfig(num_segments=5)
    with pytest.raises(ValueError, match="whole number of frames"):
        SynthConfig(num_segments=(2, 3), fps=1, seconds_per_segment=1.0)  # 1.5-s segments at 1 fps


# --- splits, balance, knobs ---------------------------------------------------------------------
def test_train_and_test_are_disjoint(small):
    records = _load(small)
    train_paths = {r.path for r in records["train"]}
    test_paths = {r.path for r in records["test"]}
    assert not train_paths & test_paths
    assert len(train_paths) == SMALL.num_train_clips and len(test_paths) == SMALL.num_test_clips
    ids = [r.problem_id for split in records.values() for r in split]
    assert len(set(ids)) == len(ids)
    assert all(not r.process for r in records["test"]) and all(r.segments for r in records["test"])


def _spread(counter: Counter, keys) -> int:
    counts = [counter.get(k, 0) for k in keys]
    return max(counts) - min(counts)


@pytest.mark.parametrize("name", ["small", "hard"])
def test_answer_letters_and_types_are_balanced(name, request):
    root = request.getfixturevalue(name)
    for records in _load(root).values():
        letters = [chr(ord("A") + i) for i in range(len(records[0].options))]
        assert _spread(Counter(r.answer for r in records), letters) <= 1
        assert _spread(Counter(r.extra["question_type"] for r in records), DEFAULT_QUESTION_TYPES) <= 1
        for qtype in QUESTION_TYPES:
            of_type = Counter(r.answer for r in records if r.extra["question_type"] == qtype)
            assert _spread(of_type, letters) <= 1


def test_two_questions_per_clip_have_distinct_types(hard):
    by_clip: dict[str, list[str]] = {}
    for record in _load(hard)["train"]:
        by_clip.setdefault(record.path, []).append(record.extra["question_type"])
    assert all(len(types) == 2 and len(set(types)) == 2 for types in by_clip.values())


def test_traced_fraction_and_types(tmp_path):
    config = SynthConfig(num_train_clips=40, num_test_clips=2, traced_fraction=0.5,
                         traced_types=("span_colour", "after_colour"), seed=5)
    summary = build_dataset(tmp_path, config, progress=False)
    train = _load(tmp_path)["train"]
    eligible = [r for r in train if r.extra["question_type"] in config.traced_types]
    traced = [r for r in train if r.process]
    assert len(traced) == round(0.5 * len(eligible)) > 0
    assert {r.extra["question_type"] for r in traced} <= set(config.traced_types)
    # Untraced samples are answer-only, yet keep their gold evidence.
    assert all(r.solution and r.segments for r in train if not r.process)
    assert summary["splits"]["train"]["traced"] == len(traced)


def test_no_traces_at_fraction_zero(tmp_path):
    build_dataset(tmp_path, SynthConfig(num_train_clips=6, num_test_clips=1, traced_fraction=0.0),
                  progress=False)
    assert not any(r.process for r in _load(tmp_path)["train"])


def test_meta_json_matches_the_summary_and_the_files(small):
    meta = json.loads((small / "meta.json").read_text())
    records = _load(small)
    for split, recs in records.items():
        info = meta["splits"][split]
        assert info["samples"] == len(recs)
        assert info["answers"] == dict(sorted(Counter(r.answer for r in recs).items()))
        assert sum(info["question_types"].values()) == len(recs)
    assert meta["config"]["seed"] == SMALL.seed and meta["duration"] == 8.0


def test_tiny_dataset_for_other_packages(tmp_path):
    summary = build_tiny_dataset(tmp_path)
    assert summary["splits"]["train"]["samples"] == 8 and summary["splits"]["test"]["samples"] == 4
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 12


@pytest.mark.parametrize("bad", [
    {"num_colours": 1}, {"num_colours": 9}, {"size": 50}, {"fps": 3, "seconds_per_segment": 0.5},
    {"question_types": ("nope",)}, {"traced_types": ("nope",)}, {"traced_fraction": 1.5},
    {"questions_per_clip": 0}, {"seed": -1},
])
def test_invalid_config_is_rejected(bad):
    with pytest.raises(ValueError, match="invalid SynthConfig"):
        SynthConfig(**bad)
