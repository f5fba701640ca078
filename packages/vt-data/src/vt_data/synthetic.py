"""The embedded default dataset: procedurally drawn coloured-shape clips with temporal colour questions.

A miniature Video-Thinker-10K that needs no download (`vt-data synth`). Each clip shows every colour
of its palette once, one coloured shape per fixed-length segment, in a shuffled temporal order; the
questions ask for a colour by time ("from 00:04 to 00:06", "right after the green shape", "first").
Traces are hindsight-curated from the ground truth, as in the paper, and are short (~40 tokens) so
that a ~1M-parameter Qwen2.5-VL learns them on a CPU in minutes. The design choices (fixed option
order, colour scored but not shape, a space before every colour word so it tokenises the same in
options, captions and thinks) come from the measurements in docs/learnability.md.

Everything is a pure function of the config: each clip draws from its own `SeedSequence`
(seed, split, clip), so the same seed gives byte-identical records and videos.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vt_data.records import Segment, VideoQA, format_options, option_letter, write_records
from vt_data.timespan import format_time
from vt_data.trace import TraceStep, render_process

# Saturated and far apart in RGB, so each survives H.264's 4:2:0 chroma and a mean over the shape
# stays nearest its own entry. Single common words, so a tokenizer sees each as one piece.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 210, 220),
    "orange": (245, 140, 20),
    "white": (235, 235, 235),
}
SHAPES = ("square", "circle", "triangle")
BACKGROUND = (40, 40, 40)
DATA_SOURCE = "synthetic"
VIDEO_DIR = "videos"
SPLITS = ("train", "test")

# The model's vision patch (14) times the 2x2 spatial merge: frame sides must be multiples of it.
_PATCH_MULTIPLE = 28
# Shape radius as a fraction of the frame side: large and clear (a ~45 % wide shape).
_RADIUS_RANGE = (0.20, 0.24)
# How far a shape drifts within its segment, as a fraction of the frame side.
_MAX_DRIFT = 0.18
# Tries at drawing a temporal order that fits every planned answer of a clip before falling back.
_MAX_ORDER_TRIES = 200
# Stream keys beside the per-clip ones (seed, split, clip index); clip indices stay far below.
_PLAN_STREAM = 2**31
_TRACE_STREAM = 2**31 + 1
# Below this many clips per process, a worker pool costs more than it saves.
_MIN_CLIPS_PER_WORKER = 100


# --- ground truth and questions -----------------------------------------------------------------
@dataclass(frozen=True)
class ClipTruth:
    """What a clip shows: one colour and shape per segment, in temporal order."""

    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    seconds_per_segment: float

    @property
    def duration(self) -> float:
        return len(self.colours) * self.seconds_per_segment

    def span(self, index: int) -> tuple[float, float]:
        return index * self.seconds_per_segment, (index + 1) * self.seconds_per_segment

    def caption(self, index: int) -> str:
        # "a red square": the colour always follows a space, as it does in options and thinks.
        return f"a {self.colours[index]} {self.shapes[index]}"

    def segment(self, index: int) -> Segment:
        return Segment(*self.span(index), self.caption(index))

    @property
    def segments(self) -> list[Segment]:
        return [self.segment(k) for k in range(len(self.colours))]


@dataclass(frozen=True)
class Question:
    """A generated question: its text and its evidence as (segment index, think text) steps, in
    reasoning order (the order of the trace's triples)."""

    problem: str
    steps: tuple[tuple[int, str], ...]


# A question generator: (clip truth, answer colour, answer letter) -> the question whose answer is
# that colour, or None when this clip cannot ask it (e.g. "right after" for the first colour).
QuestionGenerator = Callable[[ClipTruth, str, str], Question | None]


_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh")


def ordinal(index: int, count: int) -> str:
    """A segment's place in words: "first", "second", ..., and "last" for the final one."""
    return "last" if index == count - 1 else _ORDINALS[index]


def _conclude(found: str, answer: str, letter: str) -> str:
    """The closing think, e.g. " next is red, red is B": every colour word and letter after a space
    (one tokenisation everywhere) and the colour-to-letter lookup spelled out."""
    return f" {found} is {answer}, {answer} is {letter}" if found else f" {answer} is {letter}"


def _segment_of(truth: ClipTruth, colour: str) -> int | None:
    """The segment showing `colour`; None when the clip does not show it (num_segments < num_colours)."""
    return truth.colours.index(colour) if colour in truth.colours else None


def span_colour(truth: ClipTruth, answer: str, letter: str) -> Question | None:
    """"What colour is the shape shown from 00:04 to 00:06?": ground an explicit span."""
    k = _segment_of(truth, answer)
    if k is None:
        return None
    start, end = truth.span(k)
    problem = f"What colour is the shape shown from {format_time(start)} to {format_time(end)}?"
    # The think names the segment's place ("first", ..., "last"): the words the first/last questions
    # use, so a model that only saw traced span questions still knows them (make demo's data regime).
    return Question(problem, ((k, _conclude(ordinal(k, len(truth.colours)), answer, letter)),))


def after_colour(truth: ClipTruth, answer: str, letter: str) -> Question | None:
    """"…shown right after the green shape?": find the anchor, then step one segment forward."""
    k = _segment_of(truth, answer)
    if k is None or k == 0:
        return None
    anchor = truth.colours[k - 1]
    problem = f"What colour is the shape shown right after the {anchor} shape?"
    return Question(problem, ((k - 1, f" {anchor} is here"), (k, _conclude("next", answer, letter))))


def before_colour(truth: ClipTruth, answer: str, letter: str) -> Question | None:
    """"…shown right before the green shape?": find the anchor, then step one segment back."""
    k = _segment_of(truth, answer)
    if k is None or k == len(truth.colours) - 1:
        return None
    anchor = truth.colours[k + 1]
    problem = f"What colour is the shape shown right before the {anchor} shape?"
    # Anchor first: the trace follows the reasoning (locate green, then look one step back).
    return Question(problem, ((k + 1, f" {anchor} is here"), (k, _conclude("before", answer, letter))))


def first_colour(truth: ClipTruth, answer: str, letter: str) -> Question | None:
    """"What colour is the first shape shown?"."""
    if truth.colours[0] != answer:
        return None
    return Question("What colour is the first shape shown?", ((0, _conclude("first", answer, letter)),))


def last_colour(truth: ClipTruth, answer: str, letter: str) -> Question | None:
    """"What colour is the last shape shown?"."""
    k = len(truth.colours) - 1
    if truth.colours[k] != answer:
        return None
    return Question("What colour is the last shape shown?", ((k, _conclude("last", answer, letter)),))


def whole_colour(truth: ClipTruth, answer: str, letter: str) -> Question | None:
    """"What colour is the shape in the video?": only for a clip with one segment (no time to find)."""
    if len(truth.colours) != 1 or truth.colours[0] != answer:
        return None
    return Question("What colour is the shape in the video?", ((0, _conclude("", answer, letter)),))


QUESTION_GENERATORS: dict[str, QuestionGenerator] = {
    "span_colour": span_colour,
    "after_colour": after_colour,
    "before_colour": before_colour,
    "first_colour": first_colour,
    "last_colour": last_colour,
    "whole_colour": whole_colour,
}
QUESTION_TYPES = tuple(QUESTION_GENERATORS)
# What a dataset asks by default: whole_colour needs one-segment clips (num_segments containing 1).
DEFAULT_QUESTION_TYPES = ("span_colour", "after_colour", "before_colour", "first_colour", "last_colour")


# --- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthConfig:
    """Every knob of the synthetic dataset; the defaults are the learnable setting of learnability.md."""

    num_train_clips: int = 2000
    num_test_clips: int = 200
    # Questions asked about each clip (distinct question types while there are enough types).
    questions_per_clip: int = 1
    seconds_per_segment: float = 2.0
    # Frame side in pixels; a multiple of 28 so frames need no resizing for Qwen2.5-VL.
    size: int = 56
    fps: int = 4
    # Palette size = options per question (at most len(COLOURS)), listed in a fixed order.
    num_colours: int = 4
    # Segments per clip, each a different palette colour; None = num_colours (every colour shown once).
    # A tuple draws each clip's count from it (uniformly; repeat a value to weight it), and every clip
    # lasts max(counts) * seconds_per_segment, so a clip with fewer segments has longer ones. Clips
    # with one segment need no temporal grounding to answer and clips with fewer segments than colours
    # leave options absent: rungs that let a tiny model from random weights start to see (make demo).
    num_segments: int | tuple[int, ...] | None = None
    # False: options always list the palette in the same order (learnable in minutes); True: harder.
    shuffle_options: bool = False
    question_types: tuple[str, ...] = DEFAULT_QUESTION_TYPES
    # Share of the eligible train samples (type in `traced_types`) that carry a full trace; the
    # rest are answer-only (the regime where GRPO's answer-only data matters).
    traced_fraction: float = 1.0
    traced_types: tuple[str, ...] = QUESTION_TYPES
    # H.264 keyframe interval in frames: short, so seeking to any sampled frame stays cheap.
    gop: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        # Lists from YAML/CLI become tuples, so the config stays hashable and JSON-stable.
        object.__setattr__(self, "question_types", tuple(self.question_types))
        object.__setattr__(self, "traced_types", tuple(self.traced_types))
        if self.num_segments is not None and not isinstance(self.num_segments, int):
            object.__setattr__(self, "num_segments", tuple(int(n) for n in self.num_segments))
        problems = []
        if self.num_train_clips < 0 or self.num_test_clips < 0:
            problems.append("clip counts must be >= 0")
        if self.questions_per_clip < 1:
            problems.append("questions_per_clip must be >= 1")
        if not 2 <= self.num_colours <= len(COLOURS):
            problems.append(f"num_colours must be in 2..{len(COLOURS)}, got {self.num_colours}")
        if not self.segment_counts or not all(1 <= n <= self.num_colours for n in self.segment_counts):
            problems.append(f"num_segments must be in 1..num_colours ({self.num_colours}), "
                            f"got {self.num_segments}")
        if self.size <= 0 or self.size % _PATCH_MULTIPLE:
            problems.append(f"size must be a positive multiple of {_PATCH_MULTIPLE}, got {self.size}")
        frames = [self.fps * self.duration / n for n in self.segment_counts if n > 0]
        if self.fps <= 0 or self.seconds_per_segment <= 0 or any(f != int(f) for f in frames):
            problems.append("every segment must last a positive whole number of frames "
                            "(fps * seconds_per_segment * max(num_segments) / num_segments)")
        unknown = sorted((set(self.question_types) | set(self.traced_types)) - set(QUESTION_TYPES))
        if unknown or not self.question_types:
            problems.append(f"question types must be a non-empty subset of {QUESTION_TYPES}, got {unknown}")
        if not 0.0 <= self.traced_fraction <= 1.0:
            problems.append(f"traced_fraction must be in [0, 1], got {self.traced_fraction}")
        if self.gop < 1:
            problems.append("gop must be >= 1")
        if self.seed < 0:
            problems.append("seed must be >= 0")
        if problems:
            raise ValueError("invalid SynthConfig: " + "; ".join(problems))

    @property
    def palette(self) -> tuple[str, ...]:
        return tuple(COLOURS)[: self.num_colours]

    @property
    def segment_counts(self) -> tuple[int, ...]:
        """The segment counts a clip may have."""
        if self.num_segments is None:
            return (self.num_colours,)
        return (self.num_segments,) if isinstance(self.num_segments, int) else self.num_segments

    @property
    def duration(self) -> float:
        """Every clip's length in seconds."""
        return max(self.segment_counts, default=0) * self.seconds_per_segment


# --- drawing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Motion:
    """A shape's centre moving linearly from `start` to `end` (pixels) over its segment."""

    start: tuple[float, float]
    end: tuple[float, float]
    radius: float


def sample_motion(rng: np.random.Generator, size: int) -> Motion:
    """A large shape that drifts a little and stays fully inside the frame."""
    radius = float(rng.uniform(*_RADIUS_RANGE)) * size
    # 1.35 r bounds every shape's half-width and half-height (the triangle's is 0.866 * 1.555 r).
    low, high = 1.35 * radius + 1.0, size - 1.35 * radius - 1.0
    start = rng.uniform(low, high, size=2)
    end = np.clip(start + rng.uniform(-_MAX_DRIFT, _MAX_DRIFT, size=2) * size, low, high)
    return Motion(tuple(map(float, start)), tuple(map(float, end)), radius)


def shape_mask(shape: str, centres: np.ndarray, radius: float, size: int) -> np.ndarray:
    """Boolean [N, size, size] masks of a shape at N centres ([N, 2] pixels, x then y), sampled at
    pixel centres. Square and circle have the same area; the triangle is equilateral, pointing up."""
    coords = np.arange(size, dtype=np.float64) + 0.5
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    dx = coords[None, None, :] - centres[:, 0, None, None]  # [N, 1, W]
    dy = coords[None, :, None] - centres[:, 1, None, None]  # [N, H, 1]
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        half = radius * np.sqrt(np.pi) / 2
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        # Equal area to the circle (circumradius R = 1.555 r); the centroid sits R/4 below `centre`,
        # so the bounding box (0.866 R either side, 0.75 R above and below) is centred on it.
        circumradius = radius * np.sqrt(np.pi / (3 * np.sqrt(3) / 4))
        dy = dy - circumradius / 4
        inradius = circumradius / 2
        # Outward edge normals in image coordinates (y down): bottom, upper-left, upper-right.
        s, c = 0.5, np.sqrt(3) / 2
        return (dy <= inradius) & (-c * dx - s * dy <= inradius) & (c * dx - s * dy <= inradius)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render_clip(truth: ClipTruth, motions: Sequence[Motion], *, size: int, fps: int) -> np.ndarray:
    """The clip's frames, uint8 [T, H, W, 3]: segment k's shape over its frames on a plain background."""
    per_segment = int(round(fps * truth.seconds_per_segment))
    # Paint indices into a lookup table (0 = background, k + 1 = segment k's colour), then look
    # the RGB up once: faster than assigning RGB triples through boolean masks.
    lut = np.array([BACKGROUND] + [COLOURS[c] for c in truth.colours], dtype=np.uint8)
    index = np.zeros((per_segment * len(truth.colours), size, size), dtype=np.intp)
    u = np.linspace(0.0, 1.0, per_segment)[:, None]  # position along the drift, per frame
    for k, (shape, motion) in enumerate(zip(truth.shapes, motions, strict=True)):
        centres = np.asarray(motion.start) + u * (np.asarray(motion.end) - np.asarray(motion.start))
        masks = shape_mask(shape, centres, motion.radius, size)
        index[k * per_segment:(k + 1) * per_segment] = masks * (k + 1)
    return np.take(lut, index, axis=0)  # [T, H, W, 3]; take is ~10x faster than lut[index]


# --- planning: which question and answer each sample gets ---------------------------------------
@dataclass(frozen=True)
class SampleSpec:
    """One question as planned and generated: its type, options (bare texts) and answer."""

    question_type: str
    question: Question
    options: tuple[str, ...]
    letter: str


def plan_split(num_clips: int, config: SynthConfig, rng: np.random.Generator) -> list[list[tuple[str, int]]]:
    """(question type, answer letter index) for each question of each clip. Types are balanced over
    the split and distinct within a clip (while there are enough); letters are balanced per type."""
    types, per = config.question_types, config.questions_per_clip
    # One type cycle over all questions, cut into consecutive runs per clip (so a clip's types are
    # distinct), then the runs shuffled across clips.
    starts = [(c * per) % len(types) for c in rng.permutation(num_clips)]
    per_clip = [[types[(s + j) % len(types)] for j in range(per)] for s in starts]
    type_counts = Counter(t for clip in per_clip for t in clip)
    # One letter cycle runs on across the types, so letters are balanced (to within one) over the
    # whole split and within each type, even when a type has fewer questions than letters.
    letters, offset = {}, 0
    for t in types:
        cycle = [(offset + j) % config.num_colours for j in range(type_counts[t])]
        letters[t] = iter([cycle[i] for i in rng.permutation(len(cycle))])
        offset += type_counts[t]
    return [[(t, next(letters[t])) for t in clip] for clip in per_clip]


def _draw_order(plan: Sequence[tuple[str, int]], config: SynthConfig, rng: np.random.Generator,
                shapes: tuple[str, ...]) -> ClipTruth:
    """A temporal order of the palette under which every planned answer is askable. With fixed
    options the planned letter fixes the answer colour, so orders are drawn until all fit."""
    palette = config.palette
    counts = config.segment_counts
    truth = None
    for _ in range(_MAX_ORDER_TRIES):
        # Each try draws the segment count too (when there is a choice), so a question that needs a
        # layout (whole_colour: one segment) gets one; `shapes` holds max(counts) draws, sliced.
        n = counts[int(rng.integers(len(counts)))] if len(counts) > 1 else counts[0]
        order = tuple(palette[i] for i in rng.permutation(len(palette))[:n])
        truth = ClipTruth(order, shapes[:n], config.duration / n)
        if config.shuffle_options or all(
            QUESTION_GENERATORS[t](truth, palette[letter], "A") is not None for t, letter in plan
        ):
            return truth
    # Only conflicting plans get here (e.g. first and last both asking for red): `_make_sample`
    # then picks another askable answer for the questions that do not fit.
    assert truth is not None
    return truth


def _make_sample(truth: ClipTruth, question_type: str, letter_index: int, config: SynthConfig,
                 rng: np.random.Generator) -> SampleSpec:
    generate = QUESTION_GENERATORS[question_type]
    palette = config.palette
    askable = [c for c in palette if generate(truth, c, "A") is not None]
    if config.shuffle_options:
        answer = askable[int(rng.integers(len(askable)))]
        # A random option order with the answer moved to the planned letter (keeps letters balanced).
        others = [palette[i] for i in rng.permutation(len(palette)) if palette[i] != answer]
        options = tuple(others[:letter_index] + [answer] + others[letter_index:])
    else:
        answer = palette[letter_index]
        if answer not in askable:
            answer = askable[int(rng.integers(len(askable)))]
        options = palette
    letter = option_letter(options.index(answer))
    question = generate(truth, answer, letter)
    assert question is not None
    return SampleSpec(question_type, question, options, letter)


def trace_steps(truth: ClipTruth, question: Question) -> list[TraceStep]:
    """The hindsight trace: each evidence segment's span and caption, with its short think."""
    return [TraceStep(*truth.span(k), truth.caption(k), think) for k, think in question.steps]


def make_record(truth: ClipTruth, spec: SampleSpec, *, path: str, problem_id: int) -> VideoQA:
    """The record of one sample, with its full trace in `process` (callers blank it when untraced)."""
    question = spec.question
    return VideoQA(
        problem=question.problem,
        path=path,
        data_source=DATA_SOURCE,
        problem_type="multiple choice",
        data_type="video",
        options=format_options(spec.options),
        process=render_process(trace_steps(truth, question)),
        solution=f"<answer>{spec.letter}</answer>",
        problem_id=problem_id,
        duration=truth.duration,
        # Evidence in trace order, so segments[i] is the gold span of the trace's i-th triple.
        segments=[truth.segment(k) for k, _ in question.steps],
        answer=spec.letter,
        extra={
            "question_type": spec.question_type,
            "video_segments": [[s.start, s.end, s.caption] for s in truth.segments],
        },
    )


# --- one clip -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipJob:
    """Everything needed to build one clip and its questions, picklable for worker processes."""

    split: str
    index: int
    clip_name: str
    plan: tuple[tuple[str, int], ...]
    first_problem_id: int
    config: SynthConfig = field(repr=False)


def _rng(*key: int) -> np.random.Generator:
    """A random stream named by integers: streams with different keys are independent."""
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The clip's own stream: independent of build order, worker count and the other split's size."""
    return _rng(seed, SPLITS.index(split), index)


def build_clip(job: ClipJob, out_dir: str | Path) -> list[VideoQA]:
    """Draw, encode and write one clip; return its records (all traced)."""
    from vt_data.video import encode_video

    config = job.config
    rng = clip_rng(config.seed, job.split, job.index)
    shapes = tuple(SHAPES[i] for i in rng.integers(len(SHAPES), size=max(config.segment_counts)))
    truth = _draw_order(job.plan, config, rng, shapes)
    motions = [sample_motion(rng, config.size) for _ in truth.colours]
    frames = render_clip(truth, motions, size=config.size, fps=config.fps)
    rel_path = f"{VIDEO_DIR}/{job.clip_name}.mp4"
    encode_video(frames, Path(out_dir) / rel_path, config.fps, gop=config.gop)
    return [
        make_record(truth, _make_sample(truth, qtype, letter, config, rng), path=rel_path,
                    problem_id=job.first_problem_id + j)
        for j, (qtype, letter) in enumerate(job.plan)
    ]


# --- the data set -------------------------------------------------------------------------------
def plan_jobs(config: SynthConfig) -> dict[str, list[ClipJob]]:
    """Every clip of both splits. Clip names and problem ids run on across splits (train first),
    so train and test never share a video and record keys are unique."""
    jobs: dict[str, list[ClipJob]] = {}
    clip_offset = problem_offset = 0
    for split, num_clips in zip(SPLITS, (config.num_train_clips, config.num_test_clips), strict=True):
        rng = _rng(config.seed, SPLITS.index(split), _PLAN_STREAM)
        plans = plan_split(num_clips, config, rng)
        jobs[split] = [
            ClipJob(split, i, f"clip_{clip_offset + i:06d}", tuple(plan),
                    problem_offset + i * config.questions_per_clip, config)
            for i, plan in enumerate(plans)
        ]
        clip_offset += num_clips
        problem_offset += num_clips * config.questions_per_clip
    return jobs


def select_traced(records: Sequence[VideoQA], config: SynthConfig) -> set[int]:
    """Indices of the train records that keep their trace: a seeded `traced_fraction` of those whose
    question type is in `traced_types` (rounded to the nearest count)."""
    eligible = [i for i, r in enumerate(records) if r.extra["question_type"] in config.traced_types]
    count = int(round(config.traced_fraction * len(eligible)))
    rng = _rng(config.seed, _TRACE_STREAM)
    return {eligible[i] for i in rng.permutation(len(eligible))[:count]}


def split_summary(records: Sequence[VideoQA], num_clips: int) -> dict[str, Any]:
    """Counts for meta.json: samples, traced, per question type and per answer letter."""
    types = Counter(r.extra["question_type"] for r in records)
    return {
        "clips": num_clips,
        "samples": len(records),
        "traced": sum(bool(r.process) for r in records),
        "question_types": dict(sorted(types.items())),
        "traced_question_types": dict(sorted(Counter(
            r.extra["question_type"] for r in records if r.process).items())),
        "answers": dict(sorted(Counter(r.answer for r in records).items())),
    }


def _run_jobs(jobs: Sequence[ClipJob], out_dir: Path, *, workers: int, progress: bool) -> list[list[VideoQA]]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="synth clips", unit="clip", disable=not progress)
    try:
        if workers <= 1:
            results = []
            for job in jobs:
                results.append(build_clip(job, out_dir))
                bar.update()
            return results
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: callers may already hold threads (torch, tqdm's monitor) that fork copies badly.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            # map keeps job order, so the output does not depend on which worker finished first.
            results = []
            for result in pool.map(build_clip, jobs, [out_dir] * len(jobs), chunksize=32):
                results.append(result)
                bar.update()
            return results
    finally:
        bar.close()


def default_workers(num_clips: int) -> int:
    """Processes for encoding: every available core, but one for small builds (starting a worker
    costs about as much as encoding ~30 clips)."""
    if num_clips < _MIN_CLIPS_PER_WORKER * 2:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, num_clips // _MIN_CLIPS_PER_WORKER))


def build_dataset(out_dir: str | Path, config: SynthConfig | None = None, *, progress: bool = True,
                  workers: int | None = None) -> dict[str, Any]:
    """Write `videos/clip_*.mp4`, `train.jsonl`, `test.jsonl` and `meta.json` under `out_dir`;
    return the summary that meta.json holds. The output is a pure function of `config`: the same
    bytes for any `workers` (None: `default_workers`)."""
    config = config or SynthConfig()
    out_dir = Path(out_dir)
    (out_dir / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(config)
    all_jobs = [job for split in SPLITS for job in jobs[split]]
    workers = default_workers(len(all_jobs)) if workers is None else workers
    results = iter(_run_jobs(all_jobs, out_dir, workers=workers, progress=progress))
    records = {split: [r for _ in jobs[split] for r in next(results)] for split in SPLITS}

    traced = select_traced(records["train"], config)
    records["train"] = [r if i in traced else r.replace(process="") for i, r in enumerate(records["train"])]
    # Test records keep segments and answer for grounding metrics, but never a trace.
    records["test"] = [r.replace(process="") for r in records["test"]]

    _remove_stale_clips(out_dir, {job.clip_name for job in all_jobs})
    for split in SPLITS:
        write_records(records[split], out_dir / f"{split}.jsonl")
    summary = {
        "data_source": DATA_SOURCE,
        "config": dataclasses.asdict(config),
        "palette": list(config.palette),
        "duration": config.duration,
        "splits": {split: split_summary(records[split], len(jobs[split])) for split in SPLITS},
    }
    (out_dir / "meta.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _remove_stale_clips(out_dir: Path, keep: set[str]) -> None:
    """Drop our own clips left by an earlier, larger build, so the folder matches the records."""
    for path in (out_dir / VIDEO_DIR).glob("clip_*.mp4"):
        if path.stem not in keep:
            path.unlink()


def build_tiny_dataset(out_dir: str | Path, *, num_train_clips: int = 8, num_test_clips: int = 4,
                       seed: int = 0) -> dict[str, Any]:
    """A few clips in well under a second, for other packages' tests."""
    config = SynthConfig(num_train_clips=num_train_clips, num_test_clips=num_test_clips, seed=seed)
    return build_dataset(out_dir, config, progress=False)
