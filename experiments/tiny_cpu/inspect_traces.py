"""What the demo's models actually wrote: per question type and segment count, which segment's colour the
answer names, which spans the traces ground, and whether the caption agrees with the answer.

    python experiments/tiny_cpu/inspect_traces.py runs/demo            # every evaluation of the run
    python experiments/tiny_cpu/inspect_traces.py runs/demo --only sft grpo-seed0

Reads `<run>/data/test.jsonl` and `<run>/eval/<name>/<protocol>/<benchmark>/predictions.jsonl` (what
`make demo` writes) and prints one markdown table per evaluation. The accuracy table says how often a
model is right; this says how it gets there — e.g. whether GRPO learned to caption the right half of a
two-segment clip, or learned to answer it while its caption still names the other half.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from vt_data.records import strip_option_prefix
from vt_data.synthetic import COLOURS
from vt_data.trace import parse_trace
from vt_eval.benchmarks import load_benchmark
from vt_eval.plan import sample_keys


def option_colours(record) -> dict[str, str]:
    """{"A": "red", ...} from the record's options ("A. red", ...)."""
    return dict(zip(record.option_letters, map(strip_option_prefix, record.options), strict=True))


def caption_colour(caption: str) -> str | None:
    """The palette colour a caption names ("a red circle" -> "red"), None when it names none."""
    found = [word for word in caption.lower().split() if word in COLOURS]
    return found[0] if found else None


def classify(prediction: dict, record) -> dict:
    """One prediction line against its record: which segment the answer names, the spans, the caption."""
    segments = record.extra["video_segments"]  # [[start, end, caption], ...]
    colours = option_colours(record)
    answer_colour = colours.get(prediction.get("prediction") or "")
    named = [i + 1 for i, seg in enumerate(segments) if caption_colour(seg[2]) == answer_colour]
    trace = parse_trace(prediction.get("output") or "")
    first_caption = caption_colour(trace.steps[0].caption) if trace.steps else None
    return {
        "group": (record.extra.get("question_type", record.problem_type), len(segments)),
        "correct": prediction.get("score") == 1.0,
        "names": f"segment {named[0]}" if named else "neither",
        "spans": "|".join(f"{a:g}-{b:g}" for a, b in trace.spans) or "none",
        "caption_agrees": first_caption is not None and first_caption == answer_colour,
    }


def percent(count: int, total: int) -> str:
    return f"{100.0 * count / total:.0f}"


def table(rows: list[dict], segment_counts: list[int]) -> str:
    """Markdown: one line per (question type, segments)."""
    by_group: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        by_group[row["group"]].append(row)
    names = ["neither"] + [f"segment {k}" for k in range(1, max(segment_counts) + 1)]
    head = ["question type", "segments", "n", "accuracy %", *(f"answer names {n} %" for n in names[1:]),
            "answer names neither %", "spans written (share %)", "caption agrees with answer %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (qtype, count), group in sorted(by_group.items()):
        n = len(group)
        named = Counter(r["names"] for r in group)
        spans = Counter(r["spans"] for r in group).most_common(3)
        lines.append("| " + " | ".join([
            qtype, str(count), str(n), percent(sum(r["correct"] for r in group), n),
            *(percent(named[name], n) for name in names[1:]), percent(named["neither"], n),
            ", ".join(f"{s} ({percent(k, n)})" for s, k in spans),
            percent(sum(r["caption_agrees"] for r in group), n),
        ]) + " |")
    return "\n".join(lines)


def inspect_run(run: Path, only: list[str] | None = None) -> dict[str, str]:
    """{evaluation name: markdown table} for the evaluations under `run/eval`."""
    records = load_benchmark("synthetic", run / "data" / "test.jsonl").records
    by_key = dict(zip(sample_keys(records), records, strict=True))
    counts = sorted({len(r.extra["video_segments"]) for r in records})
    tables = {}
    for path in sorted((run / "eval").glob("*/*/*/predictions.jsonl")):
        name = path.parents[2].name
        if only and name not in only:
            continue
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [classify(p, by_key[p["key"]]) for p in lines if p.get("status") == "ok"]
        tables[name] = table(rows, counts)
    if not tables:
        raise SystemExit(f"no predictions under {run / 'eval'} (run `make demo` first)")
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the demo's output directory (e.g. runs/demo)")
    parser.add_argument("--only", nargs="*", help="evaluation names (e.g. sft grpo-seed0)")
    args = parser.parse_args(argv)
    for name, text in inspect_run(args.run, args.only).items():
        print(f"\n### {name}\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
