"""The merge of a run directory's predictions files into one view of its plan, and `results.json`.

After the merge `predictions.jsonl` holds every planned sample's current line, in plan order, re-scored
against the current records (a corrected gold answer or a scorer fix reaches kept outputs too);
`predictions.superseded.jsonl` gets the lines the merge dropped or re-scored (stale prompt hash,
duplicates, retried decode failures, old scores).

`results.json` is the manifest without the plan, plus `summary` (`vt_eval.metrics.aggregate` over the
`ok` lines, with the counts, and the faithfulness passes' `clue_sufficiency` and `reliance` read from
their own files: vt_eval.faithfulness, vt_eval.reliance), `counts` {planned, done, failed_decode,
missing}, `failed` (key, path, error), `complete`, and `run` (timings and per-rank invocation stats
from `rank{r}-of-{w}.json`: the only fields that differ between an interrupted-and-resumed run and an
uninterrupted one).

A rank that finishes merges when every planned sample is accounted for, so the last rank to finish
writes the complete results; `merge(out_dir)` (`vt-eval merge DIR`) does it by hand.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vt_data.files import write_json_atomic, write_jsonl_atomic
from vt_eval.faithfulness import clue_summary
from vt_eval.metrics import aggregate
from vt_eval.predictions import PREDICTIONS, SUPERSEDED, prediction_files, read_predictions
from vt_eval.reliance import reliance_summary
from vt_eval.run_identity import MANIFEST

log = logging.getLogger("vt_eval")

RESULTS = "results.json"


def invocations_name(rank: int, world_size: int) -> str:
    """The file in which rank `rank` of `world_size` records what each of its invocations did."""
    return f"rank{rank}-of-{world_size}.json"


def _primary(summary: dict[str, Any], protocol: dict[str, Any]) -> float | None:
    key = "accuracy" if protocol.get("answer_extraction", "strict") == "strict" else "accuracy_lenient"
    return summary.get(key)


def merge(
    out_dir: str | os.PathLike,
    *,
    write: bool = True,
    rescore: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Combine every predictions file of `out_dir` into the current view of its plan (run.json).

    Per planned (key, prompt_hash): the first `ok` line found (predictions.jsonl, then rank files in
    name order), else the last `decode_failed` line, else missing. `rescore(line) -> line` re-scores
    kept outputs (evaluate passes one, so a corrected gold answer or a scorer fix reaches resumed
    samples too). With `write` and nothing missing, predictions.jsonl is rewritten in plan order
    (when it differs), dropped or re-scored lines are appended to predictions.superseded.jsonl, and
    results.json is written. Returns the results dict."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / MANIFEST).read_text())
    plan = [(int(i), k, h) for i, k, h in manifest["samples"]]
    wanted = {(k, h) for _, k, h in plan}
    ok: dict[tuple[str, str], dict[str, Any]] = {}
    failed: dict[tuple[str, str], dict[str, Any]] = {}
    all_lines: list[dict[str, Any]] = []
    for path in prediction_files(out_dir):
        for row in read_predictions(path).rows:
            all_lines.append(row)
            ident = (row.get("key"), row.get("prompt_hash"))
            if ident not in wanted:
                continue
            if row.get("status") == "ok":
                ok.setdefault(ident, row)
            else:
                failed[ident] = row
    merged, rows, failures, missing = [], [], [], []
    for index, key, digest in plan:
        ident = (key, digest)
        if ident in ok:
            line = {**ok[ident], "index": index}
            if rescore is not None:
                line = rescore(line)
            merged.append(line)
            rows.append(line)
        elif ident in failed:
            line = {**failed[ident], "index": index}
            merged.append(line)
            failures.append({"key": key, "path": line.get("path"), "error": line.get("error")})
        else:
            missing.append(key)
    counts = {
        "planned": len(plan),
        "done": len(rows),
        "failed_decode": len(failures),
        "missing": len(missing),
    }
    summary = aggregate(rows, metric=manifest["benchmark"]["metric"])
    faithfulness = manifest.get("faithfulness") or {}
    summary["clue_sufficiency"] = clue_summary(out_dir, rows, faithfulness.get("clue_checker"))
    summary["reliance"] = reliance_summary(out_dir, rows, faithfulness.get("reliance"))
    summary["counts"] = counts
    complete = not missing
    results = {k: v for k, v in manifest.items() if k != "samples"}
    results.update(
        {
            "summary": summary,
            "primary_accuracy": _primary(summary, manifest["protocol"]),
            "counts": counts,
            "failed": failures,
            "complete": complete,
            "run": _run_stats(out_dir, manifest),
        }
    )
    if write and complete:
        _rewrite_predictions(out_dir, merged, all_lines)
        write_json_atomic(out_dir / RESULTS, results)
    elif missing:
        log.info(
            "%s: %d of %d samples still missing (other ranks running?); results.json not written",
            out_dir,
            len(missing),
            len(plan),
        )
    return results


def _rewrite_predictions(
    out_dir: Path, merged: list[dict[str, Any]], all_lines: list[dict[str, Any]]
) -> None:
    path = out_dir / PREDICTIONS
    current = read_predictions(path).rows
    if current == merged:
        return
    kept = {json.dumps(line, sort_keys=True) for line in merged}
    dropped, seen = [], set()
    for line in all_lines:
        text = json.dumps(line, sort_keys=True)
        if text not in kept and text not in seen:
            seen.add(text)
            dropped.append(line)
    if dropped:
        with (out_dir / SUPERSEDED).open("a", encoding="utf-8") as fh:
            for line in dropped:
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    write_jsonl_atomic(path, merged, fsync=True)


def _run_stats(out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    world_size = manifest.get("world_size", 1)
    ranks = []
    for rank in range(world_size):
        path = out_dir / invocations_name(rank, world_size)
        if path.is_file():
            with contextlib.suppress(json.JSONDecodeError, OSError):
                ranks.append(json.loads(path.read_text()))
    # Throughput of the invocations that generated something: samples over the slowest rank's loop time.
    runs = [inv for r in ranks for inv in r.get("invocations", []) if inv.get("generated")]
    generated = sum(inv["generated"] for inv in runs)
    seconds = sum(inv.get("loop_seconds", 0.0) for inv in runs) / max(1, len(ranks))
    return {
        "ranks": ranks,
        "merged_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "samples_per_second": round(generated / seconds, 4) if generated and seconds else None,
    }


__all__ = ["RESULTS", "invocations_name", "merge"]
