"""Rule-based teacher and checker: deterministic `ChatModel`s that answer each stage's prompt from the
ground truth in its JSON payload, so the whole pipeline runs with no model server (the synthetic
dataset, tests, CI). `reply_for(payload)` is also what the test server answers with.

* questions: "Which of these happens right after: <segment i>?" with segment i+1 as the answer, the
  other segments' captions (then fixed fillers) as distractors; i and the answer's letter are drawn
  from a hash of the segments, so the answers spread over the letters.
* captions: a segment's existing text (the payload's `note`), else a sentence naming the gold option.
* traces: one step per key segment in the given order, the caption as given; the last step's think
  names the gold option.
* hindsight (checker): the option whose words best match the *last* caption of the evidence (token
  recall, then Jaccard). This fits the traces above, whose last step shows the answer; it is a check of
  the plumbing, not a reader.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from vt_data.curate.models import ChatReply, Message, Usage
from vt_data.curate.prompts import find_payload

_WORD = re.compile(r"[a-z0-9]+")
_FILLERS = (
    "The video ends without anything else happening.",
    "The camera cuts to an unrelated title card.",
    "Everyone leaves and the scene stays empty.",
    "The same action is shown again in slow motion.",
    "A crowd gathers and applauds.",
)


def _digest(obj: Any) -> int:
    return int(hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest(), 16)


def _letter(index: int) -> str:
    return chr(ord("A") + index)


def _strip_letter(option: str) -> str:
    return re.sub(r"^\s*\(?[A-Z]\)?\s*[.:)]\s*", "", option, count=1)


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def question_reply(payload: dict[str, Any]) -> dict[str, Any]:
    segments = sorted(payload["segments"], key=lambda s: (s["start"], s["end"]))
    if len(segments) < 2:
        return {"error": "need at least two segments"}
    h = _digest([s["caption"] for s in segments])
    i = h % (len(segments) - 1)
    anchor, answer = segments[i], segments[i + 1]
    count = int(payload.get("min_options") or 4)
    distractors = [s["caption"] for k, s in enumerate(segments) if k not in (i, i + 1)]
    distractors += list(_FILLERS)
    seen = {answer["caption"].casefold(), anchor["caption"].casefold()}
    options = []
    for text in distractors:
        if text.casefold() not in seen and len(options) < count - 1:
            seen.add(text.casefold())
            options.append(text)
    position = (h >> 16) % count
    options.insert(position, answer["caption"])
    types = payload.get("question_types") or ["temporal order"]
    return {"question": f'Which of these happens right after this moment: "{anchor["caption"].rstrip(".")}"?',
            "options": options, "answer": _letter(position), "evidence": [anchor["id"], answer["id"]],
            "type": "temporal order" if "temporal order" in types else types[0]}


def captions_reply(payload: dict[str, Any]) -> dict[str, Any]:
    fallback = f"The scene shows what the answer describes: {payload.get('answer_text', '')}".strip()
    return {"captions": [s.get("note") or fallback for s in payload["segments"]]}


def traces_reply(payload: dict[str, Any]) -> dict[str, Any]:
    segments = payload["segments"]
    letter, text = payload["answer"], payload.get("answer_text", "")
    steps = []
    for k, segment in enumerate(segments):
        last = k == len(segments) - 1
        think = (f"This matches option {letter}, {text.rstrip('.')}." if last
                 else "This sets the context; the key moment comes next.")
        steps.append({"start": segment["start"], "end": segment["end"], "caption": segment["caption"],
                      "think": think})
    return {"preamble": "Let me find the moments that matter.", "steps": steps,
            "closing": f"So the answer is {letter}."}


def checker_reply(payload: dict[str, Any]) -> dict[str, Any]:
    evidence = payload.get("evidence") or []
    caption = _words(evidence[-1]["caption"]) if evidence else set()
    best, best_score = None, (-1.0, -1.0)
    for index, option in enumerate(payload.get("options") or []):
        words = _words(_strip_letter(option))
        if not words:
            continue
        common = len(words & caption)
        score = (common / len(words), common / len(words | caption))
        if score > best_score:
            best, best_score = _letter(index), score
    return {"answer": best}


REPLIES = {"questions": question_reply, "captions": captions_reply, "traces": traces_reply,
           "hindsight": checker_reply}


def reply_for(payload: dict[str, Any] | None) -> dict[str, Any]:
    """The rule-based reply to a stage payload (an {"error": ...} object for an unknown one)."""
    if not payload or payload.get("task") not in REPLIES:
        return {"error": "no task payload in the prompt"}
    return REPLIES[payload["task"]](payload)


def _usage(messages: Sequence[Message], text: str) -> Usage:
    # A rough 4-characters-per-token count, so the token counters are exercised without a tokenizer.
    prompt = sum(len(str(m.get("content", ""))) for m in messages)
    return Usage(prompt // 4, len(text) // 4)


class RuleBasedModel:
    """A ChatModel answering every stage (`tasks` limits which: a checker should not write traces)."""

    def __init__(self, name: str = "rule-based", tasks: Sequence[str] | None = None):
        self.name = name
        self.tasks = tuple(tasks) if tasks else tuple(REPLIES)
        self.temperature, self.max_tokens, self.concurrency = 0.0, 2048, 1

    def complete(self, messages: Sequence[Message], *, temperature: float, max_tokens: int) -> ChatReply:
        payload = find_payload(list(messages))
        if payload is not None and payload.get("task") not in self.tasks:
            payload = None
        text = json.dumps(reply_for(payload), ensure_ascii=False)
        return ChatReply(text, _usage(messages, text), "stop")


def rule_based_teacher() -> RuleBasedModel:
    return RuleBasedModel("rule-based-teacher", ("questions", "captions", "traces"))


def rule_based_checker() -> RuleBasedModel:
    return RuleBasedModel("rule-based-checker", ("hindsight",))
