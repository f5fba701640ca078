"""Clue sufficiency: the paper's hindsight check (method.md §5.2 step 5) applied to a model's own trace.
Can a checker that sees only the question, its options and the trace's `<time>`/`<caption>` clues
reach an answer, and is it the model's answer, the correct one?

Used at evaluation time (vt_eval.faithfulness: a metric of every run) and in training (the GRPO reward
`clue` in vt_grpo.rewards: 1 when the clues alone reach the correct answer).

What the checker sees (`clue_request`): the question, the lettered options, and the (time text,
caption) pairs of the trace in order, i.e. each non-empty `<caption>` that directly follows a `<time>`
tag, whether or not a `<think>` completes the triple (a formatting slip is the valid-trace rate's
business). Never the video, the `<think>` texts, the free text or the answer. A trace without such a
pair has no clues: it is insufficient by definition and no checker is asked (a checker given nothing
could only guess).

Checkers are `vt_data.curate.models.LocalChecker`s (a `name` and `check(CheckRequest) -> CheckReply`):

- `RuleChecker`: the curation's rule-based checker (vt_data.curate.rules: the option whose words best
  match the *last* caption), which abstains (answer None) when no option shares a word with that
  caption, so a caption naming nothing never lands on "A" by default. Fits the synthetic set, whose
  captions name the colour the answer asks for; it is not a reader.
- `ChatChecker`: any `ChatModel`, e.g. `OpenAIChatClient` for an OpenAI-compatible endpoint, asked with
  the curation's hindsight prompt (conf/curate/prompts/hindsight.yaml) and read the way the curation
  reads it (`parse_checker_reply`); a reply without one of the options' letters is an answer of None.
- `vt_model.checker.ModelChecker`: a local Qwen2.5-VL run in-process (vt-data never imports it; configs
  name it by `_target_`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vt_data.curate.models import ChatModel, CheckReply, CheckRequest, LocalChecker
from vt_data.curate.prompts import PromptTemplate
from vt_data.records import VideoQA
from vt_data.trace import extract_answer, parse_trace

_WORD = re.compile(r"[a-z0-9]+")
_LETTER_PREFIX = re.compile(r"^\s*\(?[A-Z]\)?\s*[.:)]\s*")


def clue_evidence(text: str) -> tuple[tuple[str, str], ...]:
    """(time text, caption) of every `<time>` tag directly followed by a non-empty `<caption>`, in order."""
    tags = parse_trace(text).tags if isinstance(text, str) else []
    clues = []
    for time, caption in zip(tags, tags[1:], strict=False):
        body = " ".join(caption.body.split())
        if time.name == "time" and caption.name == "caption" and body:
            clues.append((time.body.strip(), body))
    return tuple(clues)


def clue_request(text: str, record: VideoQA) -> CheckRequest | None:
    """What the checker is given for `text` answering `record` (module doc); None without clues."""
    clues = clue_evidence(text)
    if not clues:
        return None
    return CheckRequest(record.problem, tuple(record.options or ()), clues, None, record.duration)


def _payload(request: CheckRequest) -> dict[str, Any]:
    """The curation's hindsight payload (vt_data.curate.hindsight), which the prompt and rules read."""
    return {"task": "hindsight", "question": request.question, "options": list(request.options),
            "evidence": [{"time": t, "caption": c} for t, c in request.evidence]}


class RuleChecker:
    """The rule-based checker (module doc): deterministic, instant, no server."""

    name = "rule-based-checker"

    def check(self, request: CheckRequest) -> CheckReply:
        from vt_data.curate.rules import checker_reply

        letter = checker_reply(_payload(request)).get("answer")
        if letter is None or not request.evidence:
            return CheckReply(None, "no option")
        option = request.options[ord(letter) - ord("A")]
        caption_words = set(_WORD.findall(request.evidence[-1][1].lower()))
        if not caption_words & set(_WORD.findall(_LETTER_PREFIX.sub("", option, count=1).lower())):
            return CheckReply(None, "the last caption names no option")  # abstain, never a default "A"
        return CheckReply(letter, letter)


@dataclass
class ChatChecker:
    """A ChatModel as a LocalChecker: the hindsight prompt with the request as payload, one call, the
    reply read by the curation's `parse_checker_reply` (no letter: answer None). Transport errors
    (`ChatError`) propagate: the caller decides whether to retry or count them."""

    model: ChatModel
    prompt: PromptTemplate | Mapping[str, Any]
    temperature: float = 0.0
    max_tokens: int = 64

    def __post_init__(self) -> None:
        from vt_data.curate.generate import as_prompt

        self.prompt = as_prompt(self.prompt)

    @property
    def name(self) -> str:
        return f"chat:{self.model.name}"

    def check(self, request: CheckRequest) -> CheckReply:
        from vt_data.curate.engine import InvalidReply
        from vt_data.curate.hindsight import parse_checker_reply

        reply = self.model.complete(self.prompt.render(_payload(request)), temperature=self.temperature,
                                    max_tokens=self.max_tokens)
        try:
            letter = parse_checker_reply(reply.text)
        except InvalidReply:
            letter = None
        if letter is not None and not 0 <= ord(letter) - ord("A") < len(request.options):
            letter = None  # "I cannot tell." reads as the letter I: not an option, so no answer
        return CheckReply(letter, reply.text, reply.usage)


def build_checker(spec: LocalChecker | str | None) -> LocalChecker | None:
    """A checker from config: None (off), "rule_based", or any LocalChecker object as given."""
    if spec is None or spec == "none":
        return None
    if spec == "rule_based":
        return RuleChecker()
    if isinstance(spec, str):
        raise ValueError(f"unknown clue checker {spec!r}: use 'rule_based' or a LocalChecker object "
                         "(e.g. vt_model.checker.ModelChecker, vt_data.clues.ChatChecker)")
    if not callable(getattr(spec, "check", None)):
        raise TypeError(f"a clue checker needs check(CheckRequest) -> CheckReply; got {type(spec).__name__}")
    return spec


@dataclass(frozen=True)
class ClueVerdict:
    """One trace judged on its clues alone. answer: the checker's letter (None: no clues, or no usable
    letter); model_answer: the trace's own answer (strict extraction); gold: the correct letter."""

    clues: tuple[tuple[str, str], ...]
    answer: str | None
    model_answer: str | None
    gold: str | None
    reply: str = ""

    @property
    def sufficient(self) -> bool:
        """The clues alone reach the correct answer."""
        return self.answer is not None and self.answer == self.gold

    @property
    def agrees(self) -> bool:
        """The clues alone reach the model's own answer."""
        return self.answer is not None and self.answer == self.model_answer


def judge_clues(checker: LocalChecker, text: str, record: VideoQA) -> ClueVerdict:
    """Ask `checker` about the clues of `text` (no call when there are none). Checker errors propagate."""
    request = clue_request(text, record)
    model_answer = extract_answer(text, mode="strict") if isinstance(text, str) else None
    if request is None:
        return ClueVerdict((), None, model_answer, record.gold, "no clues")
    reply = checker.check(request)
    return ClueVerdict(request.evidence, reply.answer, model_answer, record.gold, reply.text or "")


__all__ = ["ChatChecker", "ClueVerdict", "RuleChecker", "build_checker", "clue_evidence", "clue_request",
           "judge_clues"]
