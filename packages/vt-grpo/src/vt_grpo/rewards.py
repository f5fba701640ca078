"""Rewards: a registry of named functions `(completions, samples) -> scores`, weighted by config.

A reward function takes the decoded completions `list[str]` (length N) and their samples
`list[VideoQA]` (length N, one per completion, so a prompt's sample repeats G times) and returns N
floats inside its declared range. Options (such as a length limit) are keyword arguments with
defaults; `RewardSet(..., options={"format": {"max_chars": 4000}})` binds them.

Built in (method.md §8.1: the paper's reward is accuracy + format, a plain sum):
- `format` [0, 1]: the project's r_fmt, `vt_data.trace.check_format(strict=True)` with the
  sample's duration: at least one complete `<time>/<caption>/<think>` triple in order, balanced
  non-nested tags, spans that parse with start < end inside the video, exactly one answer tag at
  the end holding one capital letter for multiple choice (anything non-empty otherwise), and at most
  `max_chars` characters. Repeated answer tags, nested tags and over-long outputs score 0.
- `accuracy` [0, 1]: `vt_data.scoring.score_answer`, the scorer the evaluator uses (strict mode).
- `temporal_iou` [0, 1] (not in the paper; off by default, for ablations): the mean over the
  sample's gold segments of the best IoU of the generated `<time>` spans (`best_ious`, the
  Video-Thinker grounding rule). Guards against hacking it: 0 unless the format is valid; 0 when the
  sample has no segments or no duration (whole-video spans cannot be recognised without it);
  degenerate spans earn nothing (`vt_data.timespan.is_degenerate`: zero length, or covering >= 90 % of
  the video, a threshold that lets a genuinely long gold segment be matched by a long span while the
  whole video never is); more than `max_spans` (8) usable spans score 0, so tiling the video with many
  spans does not pay.
- `clue` [0, 1] (not in the paper; off by default): clue sufficiency (vt_data.clues), 1 when a checker
  given only the question, the options and the completion's own `<time>`/`<caption>` clues (no video,
  no `<think>`, no answer) picks the correct option. The same checkers as the evaluation's metric:
  `checker="rule_based"` (default; the synthetic set), or any LocalChecker object from config
  (vt_model.checker.ModelChecker, vt_data.clues.ChatChecker over an OpenAI-compatible endpoint). Guards:
  0 unless the format is valid; 0 for more than `max_spans` clues (listing every option's caption
  does not pay); with `grounded=True` also 0 when every span is degenerate (a whole-clip span with the
  right caption is not evidence of *when*). A checker that fails on a completion scores it 0 (logged as
  a warning with the count); identical clue sets in one call are asked once.

User rewards: `load_reward("my_pkg.my_rewards:brevity")` imports any function with the signature
above, no package edit needed; decorate it with `register_reward` to declare its range (otherwise
only finiteness is checked).

Totality. The built-in functions never raise on any string (property-tested over adversarial
text) and stay within their ranges; `RewardSet` checks every function's output length and range and
raises a ValueError naming the function when a (user) reward breaks its declaration, rather than
clipping silently.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vt_data.records import VideoQA
from vt_data.scoring import score_answer
from vt_data.timespan import best_ious, is_degenerate
from vt_data.trace import check_format

log = logging.getLogger("vt_grpo")

RewardFn = Callable[..., list[float]]  # (completions: list[str], samples: list[VideoQA], **options)

# A bound well above the longest useful trace (≈ 1,500 tokens at ~4 characters per token; eval
# allows 1,024 new tokens) so it only bites on runaway outputs; rollouts truncate by tokens anyway.
DEFAULT_MAX_CHARS = 6000
DEFAULT_MAX_SPANS = 8
# The paper's reward (method.md §8.1): accuracy + format, weight 1 each; temporal_iou off.
DEFAULT_WEIGHTS = {"accuracy": 1.0, "format": 1.0}


@dataclass(frozen=True)
class Reward:
    """A reward function with its name and declared range [low, high]."""

    name: str
    fn: RewardFn
    low: float = -math.inf
    high: float = math.inf

    def __call__(self, completions: Sequence[str], samples: Sequence[VideoQA], **options: Any) -> list[float]:
        return self.fn(completions, samples, **options)


REGISTRY: dict[str, Reward] = {}


def _identity(fn: RewardFn) -> tuple[str, str]:
    return (getattr(fn, "__module__", "?"), getattr(fn, "__qualname__", repr(fn)))


def register_reward(name: str, low: float, high: float) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register `fn` under `name` with the range [low, high]; the function is returned
    unchanged, with `reward_range = (low, high)` attached so `load_reward` by path finds it too."""
    if not low <= high:
        raise ValueError(f"reward {name!r}: low {low} > high {high}")

    def decorator(fn: RewardFn) -> RewardFn:
        existing = REGISTRY.get(name)
        # Re-registering the same function (a module imported twice) is fine; a clash is not.
        if existing is not None and _identity(existing.fn) != _identity(fn):
            raise ValueError(f"a reward named {name!r} is already registered ({existing.fn!r})")
        fn.reward_range = (low, high)  # type: ignore[attr-defined]
        REGISTRY[name] = Reward(name, fn, low, high)
        return fn

    return decorator


def load_reward(spec: str) -> Reward:
    """A registered name ("format") or an import path ("package.module:function")."""
    if spec in REGISTRY:
        return REGISTRY[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        known = ", ".join(sorted(REGISTRY))
        raise KeyError(f"unknown reward {spec!r}: use one of {known} or 'package.module:function'")
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        raise TypeError(f"{spec!r} is not callable")
    low, high = getattr(fn, "reward_range", (-math.inf, math.inf))
    return Reward(spec, fn, float(low), float(high))


# --- built-in rewards ---------------------------------------------------------------------------
def _answer_kind(sample: VideoQA) -> str:
    return "letter" if sample.problem_type == "multiple choice" else "any"


def _format_ok(text: str, sample: VideoQA, max_chars: int | None):
    return check_format(text, duration=sample.duration, max_chars=max_chars, strict=True,
                        answer_kind=_answer_kind(sample))


@register_reward("format", 0.0, 1.0)
def format_reward(
    completions: Sequence[str], samples: Sequence[VideoQA], *, max_chars: int | None = DEFAULT_MAX_CHARS
) -> list[float]:
    """1.0 iff the completion is a well-formed trace (strict r_fmt, see the module doc), else 0.0."""
    return [1.0 if isinstance(c, str) and _format_ok(c, s, max_chars).ok else 0.0
            for c, s in zip(completions, samples, strict=True)]


@register_reward("accuracy", 0.0, 1.0)
def accuracy_reward(
    completions: Sequence[str], samples: Sequence[VideoQA], *, mode: str = "strict",
    mra_variant: str = "vsibench",
) -> list[float]:
    """`vt_data.scoring.score_answer` of each completion: the evaluator's definition of correct."""
    return [score_answer(c, s, mode=mode, mra_variant=mra_variant) if isinstance(c, str) else 0.0
            for c, s in zip(completions, samples, strict=True)]


def _usable_spans(spans: Sequence[tuple[float, float]], duration: float) -> list[tuple[float, float]]:
    """Drop degenerate spans (`is_degenerate`: zero length, or covering most of the video)."""
    return [span for span in spans if not is_degenerate(span, duration)]


def _temporal_iou_one(text: Any, sample: VideoQA, max_chars: int | None, max_spans: int) -> float:
    if not isinstance(text, str) or not sample.segments or not sample.duration or sample.duration <= 0:
        return 0.0
    check = _format_ok(text, sample, max_chars)
    if not check.ok:
        return 0.0
    spans = _usable_spans(check.trace.spans, sample.duration)
    if not spans or len(spans) > max_spans:
        return 0.0
    ious = best_ious(spans, [(seg.start, seg.end) for seg in sample.segments])
    return sum(ious) / len(ious)


@register_reward("temporal_iou", 0.0, 1.0)
def temporal_iou_reward(
    completions: Sequence[str], samples: Sequence[VideoQA], *,
    max_chars: int | None = DEFAULT_MAX_CHARS, max_spans: int = DEFAULT_MAX_SPANS,
) -> list[float]:
    """Mean over gold segments of the best IoU of the generated spans (guards: module doc)."""
    return [_temporal_iou_one(c, s, max_chars, max_spans) for c, s in zip(completions, samples, strict=True)]


_FAILED = object()  # a checker call that raised (cached like an answer, so it is tried once per call)


def _clue_one(text: Any, sample: VideoQA, checker: Any, cache: dict, max_chars: int | None,
              max_spans: int, grounded: bool) -> float:
    from vt_data.clues import clue_request

    if not isinstance(text, str) or sample.problem_type != "multiple choice" or not sample.gold:
        return 0.0
    check = _format_ok(text, sample, max_chars)
    if not check.ok:
        return 0.0
    request = clue_request(text, sample)
    if request is None or len(request.evidence) > max_spans:
        return 0.0
    if grounded and all(is_degenerate(span, sample.duration) for span in check.trace.spans):
        return 0.0
    if request not in cache:
        try:
            cache[request] = checker.check(request).answer
        except Exception:  # noqa: BLE001 -- a reward never raises: a failed check pays nothing
            cache[request] = _FAILED
    return 1.0 if cache[request] == sample.gold else 0.0


@register_reward("clue", 0.0, 1.0)
def clue_reward(
    completions: Sequence[str], samples: Sequence[VideoQA], *, checker: Any = "rule_based",
    max_chars: int | None = DEFAULT_MAX_CHARS, max_spans: int = DEFAULT_MAX_SPANS, grounded: bool = False,
) -> list[float]:
    """1.0 when the completion's clues alone lead the checker to the correct option (module doc)."""
    from vt_data.clues import build_checker

    checker = build_checker(checker)
    if checker is None:
        raise ValueError("the clue reward needs a checker ('rule_based' or a LocalChecker object)")
    cache: dict = {}  # request -> checker letter: a group often repeats the same clues
    scores = [_clue_one(c, s, checker, cache, max_chars, max_spans, grounded)
              for c, s in zip(completions, samples, strict=True)]
    if failed := sum(answer is _FAILED for answer in cache.values()):
        log.warning("clue reward: the checker %s failed on %d of %d clue sets (scored 0)",
                    getattr(checker, "name", checker), failed, len(cache))
    return scores


# --- a weighted set -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RewardScores:
    """Scores of N completions under K reward functions."""

    names: tuple[str, ...]  # [K]
    per_function: torch.Tensor  # [N, K] float32, each column inside its function's range
    total: torch.Tensor  # [N] float32, Σ_k weight_k × per_function[:, k]

    def as_dict(self) -> dict[str, torch.Tensor]:
        """name -> [N] scores, for logging."""
        return {name: self.per_function[:, k] for k, name in enumerate(self.names)}


class RewardSet:
    """Weighted rewards: `RewardSet({"accuracy": 1.0, "format": 0.5})(completions, samples)`.

    Keys are registered names or import paths. A weight of 0 still computes (and logs) the score.
    `options` maps a key to keyword arguments for that function (e.g. {"format": {"max_chars": 4000}}).
    """

    def __init__(self, weights: Mapping[str, float] | None = None,
                 options: Mapping[str, Mapping[str, Any]] | None = None):
        weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        if not weights:
            raise ValueError("a RewardSet needs at least one reward")
        options = dict(options or {})
        if unknown := set(options) - set(weights):
            raise ValueError(f"options for rewards that are not in the set: {sorted(unknown)}")
        self.rewards = [load_reward(key) for key in weights]
        self.names = tuple(weights)
        self.weights = torch.tensor([float(w) for w in weights.values()], dtype=torch.float32)  # [K]
        self._calls = [functools.partial(r.fn, **options.get(key, {}))
                       for r, key in zip(self.rewards, weights, strict=True)]

    def __call__(self, completions: Sequence[str], samples: Sequence[VideoQA]) -> RewardScores:
        if len(completions) != len(samples):
            raise ValueError(f"{len(completions)} completions but {len(samples)} samples")
        columns = []
        for reward, call in zip(self.rewards, self._calls, strict=True):
            scores = [float(x) for x in call(list(completions), list(samples))]
            if len(scores) != len(completions):
                raise ValueError(f"reward {reward.name!r} returned {len(scores)} scores "
                                 f"for {len(completions)} completions")
            bad = [x for x in scores if not (math.isfinite(x) and reward.low <= x <= reward.high)]
            if bad:
                raise ValueError(f"reward {reward.name!r} returned {bad[0]!r}, outside its declared range "
                                 f"[{reward.low}, {reward.high}] or not finite")
            columns.append(scores)
        per_function = torch.tensor(columns, dtype=torch.float32).T.reshape(len(completions), len(columns))
        return RewardScores(self.names, per_function, per_function @ self.weights)
