"""Clue sufficiency at evaluation time: the paper's hindsight check (method.md §5.2 step 5) turned into
a metric of every run. Does a checker given only the question, the options and the model's own
`<time>`/`<caption>` clues (no video, no `<think>`, no answer; vt_data.clues) pick the model's answer,
and the correct one?

The two other faithfulness measures live beside it: grounding that a degenerate span cannot pass is a
plain metric (vt_eval.metrics.strict_grounding), reliance on the grounded frames a second generation
pass (vt_eval.reliance).

Checkers (vt_data.clues): the rule-based one for the synthetic set, `vt_model.checker.ModelChecker` or
`vt_data.clues.ChatChecker` over an OpenAI-compatible endpoint for real benchmarks, chosen in config
(conf/clue_checker/*.yaml). `auto_checker` is the default: the rule-based checker for the synthetic
set, none elsewhere (its captions are the only ones a rule can read); with none the summary says "off".

Per multiple-choice sample one line in `clues.jsonl` (`clues.rank{r}-of-{w}.jsonl` for rank r of w):
{index, key, prompt_hash, output_sha, checker, category, status, clues, answer (the checker's letter),
model_answer, gold, sufficient, agrees, reply}. status "ok" (the checker was asked), "no_clues" (no
`<time>`/`<caption>` pair: insufficient, not asked) or "error" (the checker failed: not counted, retried
by the next run). A sample is done when a line with its key, prompt hash, output digest and checker name
exists, so a rerun asks only about new outputs, and another checker starts its own lines. The two passes
share how their lines are found and summarised (`pass_lines`, `summarise_pass`): by key, prompt hash and
the digest of the output they were computed from, so a regenerated output is never judged by stale lines.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vt_data.curate.models import FatalChatError, LocalChecker
from vt_data.records import VideoQA
from vt_eval.predictions import PredictionWriter, read_predictions, shard_files, shard_name

log = logging.getLogger("vt_eval")

CLUES = "clues"
CHECKER_INPUTS = ("question, options and the model's own <time>/<caption> clues "
                  "(no video, no <think>, no answer)")


def output_sha(text: str) -> str:
    """A short digest of a model output: what the faithfulness lines were computed from."""
    return hashlib.sha256((text or "").encode()).hexdigest()[:16]


def auto_checker(loader: str | None = None) -> LocalChecker | None:
    """The default clue checker: rule-based for the synthetic set (loader "synthetic"), none elsewhere."""
    from vt_data.clues import RuleChecker

    return RuleChecker() if loader == "synthetic" else None


def checker_name(checker: LocalChecker | None) -> str | None:
    return None if checker is None else str(getattr(checker, "name", type(checker).__name__))


def _clue_line(checker: LocalChecker, line: Mapping[str, Any], record: VideoQA) -> dict[str, Any]:
    from vt_data.clues import judge_clues

    base = {"index": line["index"], "key": line["key"], "prompt_hash": line["prompt_hash"],
            "output_sha": output_sha(line["output"]), "checker": checker_name(checker),
            "category": line.get("category")}
    try:
        verdict = judge_clues(checker, line["output"], record)
    except FatalChatError:
        raise  # every later call would fail the same way (bad key, wrong URL)
    except Exception as exc:  # noqa: BLE001 -- one failed check is recorded and retried, not fatal
        return {**base, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
    return {**base, "status": "ok" if verdict.clues else "no_clues",
            "clues": [list(c) for c in verdict.clues], "answer": verdict.answer,
            "model_answer": verdict.model_answer, "gold": verdict.gold, "sufficient": verdict.sufficient,
            "agrees": verdict.agrees, "reply": verdict.reply[:500]}


def pass_lines(out_dir: Path, stem: str, keep: Callable[[Mapping[str, Any]], bool]
               ) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(key, prompt_hash, output_sha) -> the first line `keep` accepts over a faithfulness pass's files
    (`<stem>.jsonl`, then its rank files): what the pass has done, and for which output."""
    lines: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in shard_files(out_dir, stem):
        for line in read_predictions(path).rows:
            if keep(line):
                lines.setdefault((line["key"], line["prompt_hash"], line["output_sha"]), line)
    return lines


def summarise_pass(out_dir: str | Path, stem: str, rows: Iterable[Mapping[str, Any]], *,
                   keep: Callable[[Mapping[str, Any]], bool], wanted: Callable[[Mapping[str, Any]], bool],
                   block: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> dict[str, Any]:
    """`block` over the pass's line for each merged row that is `wanted` (matched by key, prompt hash and
    the digest of the row's current output; the category is the row's), overall and per category, with
    `missing`: wanted rows the pass has no line for yet."""
    done = pass_lines(Path(out_dir), stem, keep)
    found, missing = [], 0
    for row in filter(wanted, rows):
        line = done.get((row["key"], row["prompt_hash"], output_sha(row.get("output", ""))))
        if line is None:
            missing += 1
        else:
            found.append({**line, "category": row.get("category")})
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in found:
        if line["category"] is not None:
            groups[line["category"]].append(line)
    return {**block(found), "missing": missing, "per_category": {c: block(g) for c, g in groups.items()}}


def check_clues(out_dir: str | Path, lines: Sequence[tuple[VideoQA, Mapping[str, Any]]],
                checker: LocalChecker, *, rank: int = 0, world_size: int = 1,
                chunk: int = 32) -> dict[str, Any]:
    """Judge the clues of the given (record, ok prediction line) pairs not judged yet by this checker.

    Multiple-choice records only. Lines are appended to this rank's clues file `chunk` at a time; with a
    checker that declares `concurrency` (a chat client) that many are asked at once. Returns counts."""
    from concurrent.futures import ThreadPoolExecutor

    out_dir = Path(out_dir)
    name = checker_name(checker)
    done = set(pass_lines(out_dir, CLUES, lambda line: _judged_by(line, name)))
    own_file = out_dir / shard_name(CLUES, rank, world_size)
    read_predictions(own_file, repair=True)
    pending = [(r, line) for r, line in lines if r.problem_type == "multiple choice"
               and (line["key"], line["prompt_hash"], output_sha(line["output"])) not in done]
    stats = {"checker": name, "resumed": len(lines) - len(pending), "checked": 0, "errors": 0}
    if not pending:
        return stats
    workers = int(getattr(getattr(checker, "model", checker), "concurrency", 1) or 1)
    writer = PredictionWriter(own_file)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vt-eval-clues") as pool:
            for start in range(0, len(pending), chunk):
                part = pending[start:start + chunk]
                rows = list(pool.map(lambda item: _clue_line(checker, item[1], item[0]), part))
                writer.write(rows)
                stats["checked"] += len(rows)
                stats["errors"] += sum(row["status"] == "error" for row in rows)
    finally:
        writer.close()
    if stats["errors"]:
        log.warning("clue checker %s failed on %d samples (recorded; a rerun retries them)", name,
                    stats["errors"])
    return stats


def _judged_by(line: Mapping[str, Any], checker: str | None) -> bool:
    return line.get("checker") == checker and line.get("status") in ("ok", "no_clues")


def _shares(lines: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n = len(lines)
    return {"n": n, "n_no_clues": sum(line["status"] == "no_clues" for line in lines),
            "sufficient": sum(bool(line["sufficient"]) for line in lines) / n if n else None,
            "agrees_with_model": sum(bool(line["agrees"]) for line in lines) / n if n else None}


def clue_summary(out_dir: str | Path, rows: Iterable[Mapping[str, Any]],
                 checker: str | None) -> dict[str, Any]:
    """Clue sufficiency over the merged `ok` rows (multiple choice), from the clues files of `checker`.

    Shares over the samples judged (no clues counts as insufficient and disagreeing): `sufficient` (the
    clues alone reach the correct answer) and `agrees_with_model` (they reach the model's answer),
    overall and per category; `missing`: samples without a judgement yet (checker errors included)."""
    if checker is None:
        return {"status": "off", "reason": "no clue checker configured (vt-eval clue_checker=...; "
                                           "the default judges the synthetic set only)"}
    summary = summarise_pass(out_dir, CLUES, rows, keep=lambda line: _judged_by(line, checker), block=_shares,
                             wanted=lambda row: row.get("problem_type") in (None, "multiple choice"))
    return {"status": "on", "checker": checker, "checker_inputs": CHECKER_INPUTS, **summary}


__all__ = ["CLUES", "auto_checker", "check_clues", "checker_name", "clue_summary", "output_sha", "pass_lines",
           "summarise_pass"]
