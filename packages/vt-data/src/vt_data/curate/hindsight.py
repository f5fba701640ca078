"""The hindsight check (method.md §5.2 step 5): can a checker reach the gold answer from the trace's
evidence alone? If not, the trace is regenerated, up to `max_regenerations` times.

Decisions (method.md §11):

* Checker inputs: the question, the lettered options, and the contents of each `<time>` and `<caption>`
  of the trace, in order. Not the `<think>` texts nor the free text (they name the answer), and by
  default **not the video** (`sees_video: false`): the check asks whether the captions carry the
  evidence, which is what the trace teaches. With `sees_video: true` a local checker gets the video
  path and a chat checker gets an OpenAI `video_url` content part (`video_url_prefix` + absolute path;
  vLLM serves `file://` URLs under `--allowed-local-media-path`).
* Samples that still fail after the regenerations are **dropped and counted** (report:
  `stages.hindsight.dropped.hindsight_failed`) and kept, with every verdict, in rejected.jsonl.
* A checker reply without a usable letter (after the engine's fix retries) counts as a failed check.
  A transport failure of the checker or of a regeneration drops the sample without a verdict
  ("checker_call_failed:<kind>", not cached, so a rerun tries again).

Each attempt is its own cache entry (variant = attempt number), so a deterministic teacher that
regenerates the same trace still gets a fresh check, and a rerun replays the same verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vt_data.curate.engine import CallResult, InvalidReply, extract_json
from vt_data.curate.generate import SynthesizeTraces, as_prompt, parse_letter
from vt_data.curate.models import CheckRequest, LocalChecker
from vt_data.curate.pipeline import Context, StageResult, with_provenance
from vt_data.curate.prompts import with_video
from vt_data.records import VideoQA
from vt_data.trace import extract_answer, parse_trace

_LETTERS = [chr(ord("A") + i) for i in range(26)]


def parse_checker_reply(text: str) -> str:
    """{"answer": "B"}, or failing that a bare trace-style answer ("<answer>B</answer>", "B")."""
    try:
        return parse_letter(extract_json(text).get("answer"), _LETTERS)
    except InvalidReply:
        letter = extract_answer(text or "", mode="strict")
        if letter is None:
            raise InvalidReply('no answer letter: reply with {"answer": "<letter>"}') from None
        return letter


def trace_evidence(record: VideoQA) -> tuple[tuple[str, str], ...]:
    """(time text, caption) for every triple of the record's trace, in order."""
    return tuple((step.raw_time.strip(), step.caption) for step in parse_trace(record.target).steps)


@dataclass
class HindsightCheck:
    """Stage `hindsight`; `checker` is a ChatModel (asked with `prompt`) or a LocalChecker, `traces` the
    trace stage used to regenerate (None: check only)."""

    checker: Any
    prompt: Any = None
    traces: SynthesizeTraces | None = None
    max_regenerations: int = 3
    sees_video: bool = False
    video_url_prefix: str = "file://"
    temperature: float | None = None
    max_tokens: int | None = None
    name: str = "hindsight"

    def __post_init__(self) -> None:
        if self.max_regenerations < 0:
            raise ValueError("max_regenerations must be >= 0")
        self.local = isinstance(self.checker, LocalChecker) and not hasattr(self.checker, "complete")
        if not self.local:
            if self.prompt is None:
                raise ValueError("a chat-model checker needs a prompt")
            self.prompt = as_prompt(self.prompt)

    @property
    def workers(self) -> int:
        models = [self.checker] + ([self.traces.model] if self.traces else [])
        return max(int(getattr(m, "concurrency", 1) or 1) for m in models)

    def __call__(self, records: list[VideoQA], ctx: Context) -> StageResult:
        out = StageResult([])
        results = ctx.engine.map(self.name, lambda r: self._check(r, ctx), records, workers=self.workers)
        for record, (checked, reason, detail, audit) in zip(records, results, strict=True):
            if checked is not None:
                out.records.append(checked)
            else:
                keep = audit is not None or reason != "dry_run"
                out.drop(self.name, audit or record, reason, detail, keep=keep)
        out.counts.update(f"regenerations_{provenance_regens(r)}" for r in out.records)
        return out

    def _check(self, record: VideoQA, ctx: Context) -> tuple[VideoQA | None, str, str, VideoQA | None]:
        """(passed record, "", "", None) or (None, reason, detail, record to keep for audit)."""
        if not record.process.strip():
            return None, "no_trace", "nothing to check", None
        verdicts: list[dict[str, Any]] = []
        current = record
        for attempt in range(self.max_regenerations + 1):
            if attempt:
                if self.traces is None:
                    break
                regenerated, result = self.traces.generate(current, ctx, attempt)
                if regenerated is None:
                    if _aborts(result):
                        return None, _abort_reason("traces", result), result.detail, None
                    verdicts.append({"attempt": attempt, "pass": False, "trace_error": result.error,
                                     "detail": result.detail})
                    continue
                current = regenerated
            answer, result = self._ask(current, ctx, attempt)
            if _aborts(result):
                return None, _abort_reason("checker", result), result.detail, None
            verdict = {"attempt": attempt, "answer": answer, "pass": answer == record.gold,
                       "keys": result.keys}
            if result.error:
                verdict["error"] = result.detail
            verdicts.append(verdict)
            if verdict["pass"]:
                outcome = "pass" if attempt == 0 else f"pass_after_{attempt}"
                return with_provenance(current, stage=self.name, outcome=outcome, regenerations=attempt,
                                       checker_verdicts=verdicts, verdict="pass"), "", "", None
        regenerations = self.max_regenerations if self.traces is not None else 0
        failed = with_provenance(current, regenerations=regenerations, checker_verdicts=verdicts,
                                 verdict="fail")
        answers = ", ".join(str(v.get("answer")) for v in verdicts)
        return None, "hindsight_failed", f"gold {record.gold}, checker said {answers}", failed

    def _ask(self, record: VideoQA, ctx: Context, attempt: int) -> tuple[str | None, CallResult]:
        evidence = trace_evidence(record)
        video = str(ctx.video_path(record).resolve()) if self.sees_video else None
        if self.local:
            request = CheckRequest(record.problem, tuple(record.options or ()), evidence, video,
                                   record.duration)
            result = ctx.engine.check_local(self.name, self.checker, request, variant=attempt)
            return result.value, result
        payload = {"task": "hindsight", "question": record.problem, "options": list(record.options or []),
                   "evidence": [{"time": t, "caption": c} for t, c in evidence]}
        messages = self.prompt.render(payload)
        if video is not None:
            messages = with_video(messages, self.video_url_prefix + video)
        result = ctx.engine.call(self.name, self.checker, messages, parse=parse_checker_reply,
                                 variant=attempt, temperature=self.temperature, max_tokens=self.max_tokens)
        return (result.value if result.ok else None), result

    def describe(self) -> dict[str, Any]:
        sees = "question, options, and the <time>/<caption> contents of the trace"
        return {"checker": getattr(self.checker, "name", str(self.checker)),
                "checker_inputs": sees + (" plus the video" if self.sees_video else " (not the video)"),
                "max_regenerations": self.max_regenerations if self.traces is not None else 0,
                "on_failure": "dropped and counted (dropped.hindsight_failed); kept in rejected.jsonl "
                              "with every verdict"}


def provenance_regens(record: VideoQA) -> int:
    return int(record.extra.get("provenance", {}).get("regenerations", 0))


def _aborts(result: CallResult) -> bool:
    """Failures that say nothing about the trace: no call was made or the transport failed."""
    return result.error is not None and (result.error == "dry_run" or result.error.startswith("call_failed"))


def _abort_reason(who: str, result: CallResult) -> str:
    return "dry_run" if result.error == "dry_run" else f"{who}_{result.error}"
