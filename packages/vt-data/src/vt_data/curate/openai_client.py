"""A client for the OpenAI-compatible `/v1/chat/completions` protocol (vLLM, SGLang, most hosted APIs),
on the standard library only, so vt-data gains no HTTP dependency.

Safety for long paid runs:

* Retries: timeouts, connection errors, 408, 429 and 5xx are retried up to `max_retries` times with
  exponential backoff and jitter (`backoff_base * 2**attempt`, capped at `backoff_max`, times a
  random factor in [0.5, 1]); a `Retry-After` header (seconds or an HTTP date) is honoured, capped at
  `max_retry_after`. Other 4xx answers fail the call at once (`http_<status>`); 401, 403 and 404 stop the
  run (`FatalChatError`), since every later call would fail the same way.
* Limits: at most `concurrency` requests in flight (a semaphore, so callers may use any thread pool),
  and at most `requests_per_minute` request starts per minute, spaced evenly (no bursts).
* The API key is read from the environment variable *named* by `api_key_env`, at the first call, so
  configs never hold a key and a dry run needs none.

Transport events are counted in `stats` (requests, retries, timeouts, rate_limited, server_errors,
connection_errors, failed).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vt_data.curate.models import ChatError, ChatReply, FatalChatError, Message, Usage

_FATAL_STATUS = {401: "unauthorized (check the API key)", 403: "forbidden (check the API key)",
                 404: "not found (check base_url and the model name)"}


class RateLimiter:
    """Spaces request starts at least 60 / `requests_per_minute` seconds apart, across threads."""

    def __init__(self, requests_per_minute: float | None):
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:  # reserve a slot, then sleep outside the lock
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class _Retryable(Exception):
    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.retry_after = kind, retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class OpenAIChatClient:
    """One model behind an OpenAI-compatible server. `base_url` ends before `/chat/completions`
    (e.g. `http://127.0.0.1:8000/v1`); `extra_body` is merged into every request (top_p, seed,
    response_format, ...)."""

    base_url: str
    model: str
    api_key_env: str | None = None
    timeout: float = 120.0
    temperature: float = 0.0
    max_tokens: int = 2048
    max_retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_retry_after: float = 300.0
    concurrency: int = 4
    requests_per_minute: float | None = None
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout <= 0:
            raise ValueError("concurrency >= 1, max_retries >= 0 and timeout > 0 are required")
        if "://" not in self.base_url:
            raise ValueError(f"base_url must be a URL such as http://127.0.0.1:8000/v1, "
                             f"got {self.base_url!r}")
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._limiter = RateLimiter(self.requests_per_minute)
        self._random = random.Random()

    @property
    def name(self) -> str:
        return self.model

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    # -- the call ----------------------------------------------------------------------------------
    def complete(self, messages: Sequence[Message], *, temperature: float, max_tokens: int) -> ChatReply:
        body = {"model": self.model, "messages": list(messages), "temperature": temperature,
                "max_tokens": max_tokens, **dict(self.extra_body)}
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = self._headers()
        with self._slots:
            for attempt in range(self.max_retries + 1):
                self._limiter.wait()
                self._count("requests")
                try:
                    return self._post(data, headers)
                except _Retryable as exc:
                    self._count(exc.kind)
                    if attempt == self.max_retries:
                        self._count("failed")
                        raise ChatError(exc.kind, f"{exc} (after {attempt + 1} attempts)") from None
                    self._count("retries")
                    time.sleep(self._delay(attempt, exc.retry_after))
        raise AssertionError("unreachable")

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **dict(self.headers)}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise FatalChatError("no_api_key", f"the environment variable {self.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, data: bytes, headers: dict[str, str]) -> ChatReply:
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Retryable("timeouts", f"no answer within {self.timeout} s") from None
            raise _Retryable("connection_errors", f"{exc.reason}") from None
        except TimeoutError:  # socket.timeout is an alias of it
            raise _Retryable("timeouts", f"no answer within {self.timeout} s") from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise _Retryable("connection_errors", f"{type(exc).__name__}: {exc}") from None
        return self._reply(raw)

    def _http_error(self, exc: urllib.error.HTTPError) -> Exception:
        status = exc.code
        detail = _snippet(exc.read() if exc.fp else b"")
        retry_after = parse_retry_after(exc.headers.get("Retry-After"))
        if status == 429:
            return _Retryable("rate_limited", f"429 {detail}", retry_after)
        if status == 408 or status >= 500:
            return _Retryable("server_errors", f"{status} {detail}", retry_after)
        self._count("failed")
        if status in _FATAL_STATUS:
            return FatalChatError(f"http_{status}", f"{_FATAL_STATUS[status]}: {self.url} {detail}")
        return ChatError(f"http_{status}", detail)

    def _reply(self, raw: bytes) -> ChatReply:
        try:
            obj = json.loads(raw)
            choice = obj["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            # A 200 without the protocol's envelope: a proxy error page or a broken server; retried.
            raise _Retryable("server_errors", f"not a chat completion: {_snippet(raw)}") from None
        return ChatReply(str(text), Usage.from_obj(obj.get("usage")), choice.get("finish_reason"))

    # -- helpers -----------------------------------------------------------------------------------
    def _delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self.backoff_max, self.backoff_base * 2**attempt)
        jittered = backoff * (0.5 + 0.5 * self._random.random())
        if retry_after is not None:
            # The server knows when it will take requests again; never retry sooner than it asks.
            return max(min(retry_after, self.max_retry_after), 0.0)
        return jittered

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self.stats[name] += 1


def _snippet(raw: bytes, limit: int = 200) -> str:
    text = raw.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:limit] + ("…" if len(text) > limit else "")
