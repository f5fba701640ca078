"""Prompt templates (our own wording, kept in conf/curate/prompts/*.yaml) and the JSON payload they carry.

Every stage sends its facts (segments, question, options, gold answer, ...) as one JSON object, the
*payload*, in a fenced ```json block inside the user message; the template words the task around it
and says which JSON to reply with. Keeping the facts machine-readable has two uses: models read
structured annotations reliably, and the rule-based models (and the test server) answer from the same
payload, so the pipeline runs end to end with no model server.

Placeholders: `{payload}` (required in `user`) and any field a stage passes (e.g. `{answer}`). Only
the named placeholders are replaced, so JSON examples with literal braces need no escaping.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vt_data.curate.models import Message

_FENCE = re.compile(r"```json\s*\n(.*?)\n```", re.DOTALL)


def render_payload(payload: Mapping[str, Any]) -> str:
    """The payload as a fenced JSON block (indented for the reader, keys in the stage's order)."""
    return "```json\n" + json.dumps(payload, ensure_ascii=False, indent=1) + "\n```"


def find_payload(messages: list[Message] | tuple[Message, ...]) -> dict[str, Any] | None:
    """The payload of the first user message that has one (retries append messages after it)."""
    for message in messages:
        content = message.get("content")
        if message.get("role") != "user":
            continue
        if isinstance(content, list):  # content parts: text parts only
            content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            continue
        for block in _FENCE.findall(content):
            try:
                obj = json.loads(block)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and "task" in obj:
                return obj
    return None


def _fill(template: str, fields: Mapping[str, Any]) -> str:
    for name, value in fields.items():
        template = template.replace("{" + name + "}", str(value))
    return template


@dataclass(frozen=True)
class PromptTemplate:
    """A system and a user message template; `retry_note` is appended to the user message when a stage
    asks again for the same item (a regenerated trace), with the same placeholders."""

    user: str
    system: str = ""
    retry_note: str = ""

    def __post_init__(self) -> None:
        if "{payload}" not in self.user:
            raise ValueError("a prompt's user template must contain {payload}")

    def render(self, payload: Mapping[str, Any], *, retry: bool = False, **fields: Any) -> list[Message]:
        values = {"payload": render_payload(payload), **fields}
        user = _fill(self.user, values).strip()
        if retry and self.retry_note:
            user += "\n\n" + _fill(self.retry_note, values).strip()
        messages: list[Message] = []
        if self.system.strip():
            messages.append({"role": "system", "content": _fill(self.system, values).strip()})
        messages.append({"role": "user", "content": user})
        return messages


@dataclass(frozen=True)
class FixPrompt:
    """The follow-up turn sent after a malformed reply: the reply goes back as the assistant turn,
    then this user turn ({error} is the reason the reply was rejected)."""

    user: str = "Your reply could not be used: {error}. Reply again with only the JSON object asked for."

    def messages(self, previous: list[Message], reply: str, error: str) -> list[Message]:
        return [*previous, {"role": "assistant", "content": reply},
                {"role": "user", "content": _fill(self.user, {"error": error})}]


def with_video(messages: list[Message], url: str) -> list[Message]:
    """`messages` with the video added to the last (user) turn as an OpenAI `video_url` content part."""
    last = messages[-1]
    parts = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": last["content"]}]
    return [*messages[:-1], {**last, "content": parts}]
