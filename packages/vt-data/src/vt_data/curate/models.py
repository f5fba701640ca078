"""The model interfaces the curation stages talk to: a chat model (teachers, and checkers reached over a
chat API) and a local checker (a vt-model model run in-process), plus their reply and error types.

`ChatModel` is what `OpenAIChatClient` and the rule-based models implement; any object with a `name`
and a `complete(messages, *, temperature, max_tokens) -> ChatReply` fits (duck-typed Protocol). `name`
identifies the model in cache keys, so two clients for the same model on different servers share a
cache; `temperature`, `max_tokens` and `concurrency` are optional defaults the engine reads.

`LocalChecker` is the slot for a hindsight checker that is not a chat API, e.g. a vt-model model on a
GPU. vt-data never imports vt_model; the implementation lives there and is plugged in by config:

    # conf/curate/checker/<name>.yaml
    _target_: vt_model.<module>.<Class>     # implements LocalChecker: name + check(CheckRequest)
    model_path: /models/Qwen2.5-VL-7B-Instruct
    ...                                     # its own settings (device, frames, pixels, dtype)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# One chat message as the OpenAI protocol writes it: {"role": ..., "content": str or content parts}.
Message = dict[str, Any]


@dataclass(frozen=True)
class Usage:
    """Token counts a server reports for one call (0 when it reports none)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    @classmethod
    def from_obj(cls, obj: Any) -> Usage:
        if not isinstance(obj, dict):
            return cls()
        return cls(int(obj.get("prompt_tokens") or 0), int(obj.get("completion_tokens") or 0))


@dataclass(frozen=True)
class ChatReply:
    """A model's reply: its text, the token usage, and why generation stopped (when known)."""

    text: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "usage": self.usage.to_dict(), "finish_reason": self.finish_reason}

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ChatReply:
        return cls(str(obj.get("text") or ""), Usage.from_obj(obj.get("usage")), obj.get("finish_reason"))


class ChatError(Exception):
    """A call that failed for good after its retries. `kind` is a short code used in counters and
    failure reasons: timeout, rate_limited, server_error, connection_error, http_<status>, bad_response."""

    def __init__(self, kind: str, message: str = ""):
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind


class FatalChatError(ChatError):
    """A failure that every later call would repeat (bad key, unknown model or URL, missing key): the
    run stops instead of recording thousands of identical failures."""


@runtime_checkable
class ChatModel(Protocol):
    """A chat-completions model. `complete` may raise ChatError (after its own retries)."""

    name: str

    def complete(self, messages: Sequence[Message], *, temperature: float, max_tokens: int) -> ChatReply: ...


@dataclass(frozen=True)
class CheckRequest:
    """What a hindsight checker sees: the question, its lettered options, and the trace's evidence as
    (time span text, caption) pairs. `video_path` is set only when the stage lets the checker see the
    video (off by default); `duration` is the video's length in seconds when known."""

    question: str
    options: tuple[str, ...]
    evidence: tuple[tuple[str, str], ...]
    video_path: str | None = None
    duration: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "options": list(self.options),
                "evidence": [{"time": t, "caption": c} for t, c in self.evidence],
                "video_path": self.video_path, "duration": self.duration}


@dataclass(frozen=True)
class CheckReply:
    """A checker's answer letter (None when it gave none) and its raw text."""

    answer: str | None
    text: str = ""
    usage: Usage = field(default_factory=Usage)


@runtime_checkable
class LocalChecker(Protocol):
    """A hindsight checker run in-process (e.g. a vt-model model); see the module docstring."""

    name: str

    def check(self, request: CheckRequest) -> CheckReply: ...
