"""The call engine every model-calling stage goes through: cache, malformed-reply retries, dry run,
counters and a progress bar, and an ordered thread pool.

* Cache first: a call whose key is on disk is answered from there (a cache hit costs nothing); a new
  reply is written to the cache before it is parsed, so a reply that was paid for is never lost, even
  when it turns out to be malformed or the process dies right after.
* A reply that `parse` rejects (`InvalidReply`) is sent back with the reason as a follow-up turn
  (`FixPrompt`), up to `invalid_retries` times; each retry is its own cached call. The item then fails
  with reason `invalid_reply` and the last reason as detail.
* Transport failures (`ChatError`, after the client's own retries) fail the item with reason
  `call_failed:<kind>`; they are not cached, so a rerun tries again. `FatalChatError` stops the run.
* Dry run: a call not in the cache is printed (the first `dry_run_show` of them) and not sent; the
  item fails with reason `dry_run`. Cached calls are still answered, so a dry run of a half-finished
  run shows exactly what is left to pay for in the next stage.
* `map` runs a function over items in a thread pool and returns results in item order, so the output
  never depends on which call finished first. Ctrl-C cancels the queued items; calls in flight finish
  and are cached before the process exits.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vt_data.curate.cache import DiskCache, cache_key
from vt_data.curate.models import (
    ChatError,
    ChatModel,
    ChatReply,
    CheckReply,
    CheckRequest,
    FatalChatError,
    LocalChecker,
    Message,
    Usage,
)
from vt_data.curate.prompts import FixPrompt

T = TypeVar("T")
R = TypeVar("R")


class InvalidReply(ValueError):
    """A reply that does not hold what the stage asked for; the message says why."""


@dataclass
class CallResult:
    """The outcome of one logical call (with its malformed-reply retries)."""

    value: Any = None
    text: str | None = None
    keys: list[str] = field(default_factory=list)  # cache key of every attempt, in order
    error: str | None = None  # None, "invalid_reply", "call_failed:<kind>" or "dry_run"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def retries(self) -> int:
        return max(0, len(self.keys) - 1)

    def provenance(self, model: str) -> dict[str, Any]:
        """The audit entry a sample keeps: model, cache keys (the raw replies are in the cache)."""
        return {"model": model, "keys": list(self.keys), "retries": self.retries}


class _DryRun(Exception):
    pass


def extract_json(text: str) -> dict[str, Any]:
    """The JSON object in a reply: a ```json fence if there is one, else the outermost {...}; a leading
    <think>...</think> block (reasoning models) is dropped first. Raises InvalidReply."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidReply("the reply is empty")
    body = text
    if "</think>" in body:
        body = body.rsplit("</think>", 1)[1]
    fence = body.find("```")
    if fence >= 0:
        inner = body[fence + 3:]
        inner = inner[inner.find("\n") + 1:] if inner.lower().startswith("json") else inner
        body = inner.split("```", 1)[0]
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise InvalidReply("the reply holds no JSON object")
    try:
        obj = json.loads(body[start:end + 1])
    except json.JSONDecodeError as exc:
        raise InvalidReply(f"the reply is not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise InvalidReply("the reply's JSON is not an object")
    return obj


def _readable(request: Any) -> str:
    """Chat messages as "[role]" blocks with their text as written; anything else as indented JSON."""
    if not (isinstance(request, list) and all(isinstance(m, dict) and "role" in m for m in request)):
        return json.dumps(request, indent=1, ensure_ascii=False)
    blocks = []
    for message in request:
        content = message.get("content")
        if not isinstance(content, str):
            content = "\n".join(p.get("text") if p.get("type") == "text" else json.dumps(p)
                                for p in content or [])
        blocks.append(f"[{message['role']}]\n{content}")
    return "\n".join(blocks)


class CallEngine:
    """Runs model calls for the stages; see the module docstring. Counters are per stage."""

    def __init__(self, cache: DiskCache, *, invalid_retries: int = 2, fix_prompt: FixPrompt | None = None,
                 dry_run: bool = False, dry_run_show: int = 3, progress: bool = True,
                 print_fn: Callable[[str], None] = print):
        if invalid_retries < 0:
            raise ValueError("invalid_retries must be >= 0")
        self.cache = cache
        self.invalid_retries = invalid_retries
        self.fix_prompt = fix_prompt or FixPrompt()
        self.dry_run = dry_run
        self.dry_run_show = dry_run_show
        self.progress = progress
        self.print_fn = print_fn
        self.stats: dict[str, Counter[str]] = {}
        self.models: dict[int, Any] = {}  # every model that was asked, by identity
        self._lock = threading.Lock()
        self._dry_shown = 0

    def describe(self) -> dict[str, Any]:
        return {"cache": str(self.cache.root), "invalid_retries": self.invalid_retries,
                "fix_prompt": self.fix_prompt.user, "dry_run": self.dry_run}

    # -- counters ----------------------------------------------------------------------------------
    def count(self, stage: str, name: str, amount: int = 1) -> None:
        with self._lock:
            self.stats.setdefault(stage, Counter())[name] += amount

    def summary(self) -> dict[str, Any]:
        """Per-stage counters, their totals, and each model's transport counters."""
        with self._lock:
            stages = {stage: dict(sorted(c.items())) for stage, c in self.stats.items()}
            total: Counter[str] = Counter()
            for counter in self.stats.values():
                total.update(counter)
        # Summed per model name: each stage may hold its own client instance for the same model.
        transport: dict[str, Counter[str]] = {}
        for model in list(self.models.values()):
            if getattr(model, "stats", None):
                transport.setdefault(model.name, Counter()).update(model.stats)
        transport = {name: dict(sorted(c.items())) for name, c in sorted(transport.items())}
        return {"stages": stages, "total": dict(sorted(total.items())), "transport": transport}

    def _postfix(self, stage: str) -> dict[str, int]:
        c = self.stats.get(stage, Counter())
        return {"calls": c["calls"], "hits": c["cache_hits"],
                "tokens": c["prompt_tokens"] + c["completion_tokens"], "invalid": c["invalid_replies"],
                "failed": c["failed_calls"]}

    # -- chat calls --------------------------------------------------------------------------------
    def call(self, stage: str, model: ChatModel, messages: Sequence[Message], *,
             parse: Callable[[str], Any], variant: int = 0, temperature: float | None = None,
             max_tokens: int | None = None) -> CallResult:
        """One logical call: cached, parsed by `parse` (which raises InvalidReply), fix-retried."""
        settings = {
            "temperature": temperature if temperature is not None else getattr(model, "temperature", 0.0),
            "max_tokens": max_tokens if max_tokens is not None else getattr(model, "max_tokens", 2048),
            "variant": variant,
        }
        self.models.setdefault(id(model), model)
        messages = list(messages)
        result = CallResult()
        for _ in range(self.invalid_retries + 1):
            key = cache_key(stage, model.name, messages, settings)
            result.keys.append(key)
            try:
                reply = self._reply(stage, model, key, messages, settings)
            except _DryRun:
                result.error = "dry_run"
                return result
            except FatalChatError:
                raise
            except ChatError as exc:
                self.count(stage, "failed_calls")
                result.error, result.detail = f"call_failed:{exc.kind}", str(exc)
                return result
            result.text = reply.text
            try:
                result.value = parse(reply.text)
            except InvalidReply as exc:
                reason = str(exc) + (" (the reply was cut at max_tokens)" if reply.finish_reason == "length"
                                     else "")
                self.count(stage, "invalid_replies")
                result.error, result.detail = "invalid_reply", reason
                messages = self.fix_prompt.messages(messages, reply.text, reason)
                continue
            result.error, result.detail = None, ""
            return result
        self.count(stage, "failed_calls")
        return result

    def _reply(self, stage: str, model: ChatModel, key: str, messages: list[Message],
               settings: dict[str, Any]) -> ChatReply:
        entry = self.cache.get(key)
        if entry is not None:
            self.count(stage, "cache_hits")
            return ChatReply.from_dict(entry["reply"])
        self._dry_run_guard(stage, model.name, messages, settings)
        reply = model.complete(messages, temperature=settings["temperature"],
                               max_tokens=settings["max_tokens"])
        self._paid(stage, reply.usage)
        self.cache.put(key, {"key": key, "stage": stage, "model": model.name, "settings": settings,
                             "request": messages, "reply": reply.to_dict()})
        return reply

    def _paid(self, stage: str, usage: Usage) -> None:
        self.count(stage, "calls")
        self.count(stage, "prompt_tokens", usage.prompt_tokens)
        self.count(stage, "completion_tokens", usage.completion_tokens)

    def _dry_run_guard(self, stage: str, model: str, request: Any, settings: dict[str, Any]) -> None:
        if not self.dry_run:
            return
        with self._lock:
            shown = self._dry_shown
            self._dry_shown += 1
        if shown < self.dry_run_show:
            self.print_fn(f"--- dry run: request {shown + 1} (stage {stage}, model {model}, settings "
                          f"{json.dumps(settings)}) ---\n{_readable(request)}")
        self.count(stage, "dry_run_requests")
        raise _DryRun

    # -- local checkers ----------------------------------------------------------------------------
    def check_local(self, stage: str, checker: LocalChecker, request: CheckRequest, *,
                    variant: int = 0) -> CallResult:
        """A LocalChecker call, cached like a chat call (a local 7B model is not free either)."""
        self.models.setdefault(id(checker), checker)
        settings = {"variant": variant}
        key = cache_key(stage, checker.name, request.to_dict(), settings)
        result = CallResult(keys=[key])
        entry = self.cache.get(key)
        if entry is not None:
            self.count(stage, "cache_hits")
            reply = entry["reply"]
        else:
            try:
                self._dry_run_guard(stage, checker.name, request.to_dict(), settings)
            except _DryRun:
                result.error = "dry_run"
                return result
            checked: CheckReply = checker.check(request)
            self._paid(stage, checked.usage)
            reply = {"answer": checked.answer, "text": checked.text}
            self.cache.put(key, {"key": key, "stage": stage, "model": checker.name, "settings": settings,
                                 "request": request.to_dict(), "reply": reply})
        result.value, result.text = reply.get("answer"), reply.get("text", "")
        return result

    # -- the ordered pool --------------------------------------------------------------------------
    def map(self, stage: str, fn: Callable[[T], R], items: Sequence[T], *, workers: int = 1) -> list[R]:
        """[fn(item) for item in items], run on `workers` threads with a progress bar, in item order."""
        from tqdm import tqdm

        results: list[Any] = [None] * len(items)
        bar = tqdm(total=len(items), desc=stage, unit="item", disable=not self.progress or not items,
                   file=sys.stderr, dynamic_ncols=True)

        def done(index: int, value: Any) -> None:
            results[index] = value
            bar.set_postfix(self._postfix(stage), refresh=False)
            bar.update()

        try:
            if workers <= 1 or len(items) <= 1:
                for index, item in enumerate(items):
                    done(index, fn(item))
                return results
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"vt-curate-{stage}")
            try:
                futures = {pool.submit(fn, item): index for index, item in enumerate(items)}
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in finished:
                        done(futures[future], future.result())  # re-raises a worker's exception
            except BaseException:
                # Ctrl-C or a fatal error: drop queued items; calls in flight finish (and are cached).
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
            return results
        finally:
            bar.close()
