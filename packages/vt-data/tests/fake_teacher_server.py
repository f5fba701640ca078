"""A stand-in teacher/checker server for the curation tests: a real HTTP process on loopback speaking
the OpenAI `/v1/chat/completions` protocol, with deterministic replies derived from the prompt's JSON
payload (vt_data.curate.rules.reply_for), request counting and injectable faults.

    python fake_teacher_server.py [--delay SECONDS]      # prints "PORT <n>" once it listens

Endpoints:
  POST /v1/chat/completions   the protocol; `usage` counts ~4 characters per token
  GET  /stats                 {"requests", "by_prompt": {sha256 of the messages: count}, "by_task",
                              "faults": {kind: served}}
  POST /control               {"faults": [{"kind", "times", "match"?, "seconds"?, "retry_after"?}],
                              "delay"?}: the next `times` requests whose messages contain `match`
                              get the fault: "invalid_json" (a 200 whose content is not JSON),
                              "timeout" (sleep `seconds`, then answer normally), "429" (with
                              Retry-After: `retry_after`), "500".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vt_data.curate.prompts import find_payload
from vt_data.curate.rules import reply_for


class State:
    def __init__(self, delay: float):
        self.lock = threading.Lock()
        self.delay = delay
        self.requests = 0
        self.by_prompt: Counter[str] = Counter()
        self.by_task: Counter[str] = Counter()
        self.faults_served: Counter[str] = Counter()
        self.faults: list[dict] = []

    def admit(self, messages: list[dict]) -> tuple[dict | None, str | None]:
        """Count the request; return (the fault to apply or None, the payload's task)."""
        text = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        payload = find_payload(messages)
        task = payload.get("task") if payload else None
        with self.lock:
            self.requests += 1
            self.by_prompt[hashlib.sha256(text.encode()).hexdigest()] += 1
            self.by_task[str(task)] += 1
            for fault in self.faults:
                if fault.get("times", 0) > 0 and fault.get("match", "") in text:
                    fault["times"] -= 1
                    self.faults_served[fault["kind"]] += 1
                    return dict(fault), task
        return None, task

    def snapshot(self) -> dict:
        with self.lock:
            return {"requests": self.requests, "by_prompt": dict(self.by_prompt),
                    "by_task": dict(self.by_task), "faults": dict(self.faults_served)}


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet: the tests read /stats instead
            pass

        def _send(self, status: int, obj: dict, headers: dict | None = None) -> None:
            body = json.dumps(obj).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout); nothing to do

        def do_GET(self) -> None:
            if self.path == "/stats":
                self._send(200, state.snapshot())
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/control":
                with state.lock:
                    state.faults = [dict(f) for f in body.get("faults", [])]
                    state.delay = float(body.get("delay", state.delay))
                self._send(200, {"ok": True})
            elif self.path == "/v1/chat/completions":
                self._complete(body)
            else:
                self._send(404, {"error": "not found"})

        def _complete(self, body: dict) -> None:
            messages = body.get("messages") or []
            fault, _ = state.admit(messages)
            time.sleep(state.delay)
            kind = fault["kind"] if fault else None
            if kind == "429":
                self._send(429, {"error": {"message": "rate limited"}},
                           {"Retry-After": str(fault.get("retry_after", 1))})
                return
            if kind == "500":
                self._send(500, {"error": {"message": "boom"}})
                return
            if kind == "timeout":
                time.sleep(float(fault.get("seconds", 2.0)))
            if kind == "invalid_json":
                content = "Sure! Here is what you asked for: {question: oops"
            else:
                content = json.dumps(reply_for(find_payload(messages)))
            prompt_chars = sum(len(str(m.get("content", ""))) for m in messages)
            self._send(200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(content) // 4,
                          "total_tokens": prompt_chars // 4 + len(content) // 4}})

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each reply")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(State(args.delay)))
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
