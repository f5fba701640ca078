"""`vt-eval report RUN_DIRS... [--out DIR]`: a results table across models and benchmarks (Markdown and
CSV, laid out like the paper's Table 1) with the paper's numbers beside ours, and plots per run.

A RUN_DIR is an evaluation directory (it holds results.json) or any folder above some (searched
recursively), e.g. the output of `vt-eval -m benchmark=a,b,c`. Written under `--out` (default: the
runs' common folder + /report):

- `table.md`: rows = (model label, protocol), columns = benchmarks, cells = primary accuracy (%) of
  that run; where the paper's Table 1 has the same model (`paper_model` of the run, or its label read
  as a paper model name) and benchmark, the cell reads `ours (paper X)`. Below, the paper's rows
  (`--paper-rows`, default the base model, Video-R1 and both Video-Thinker stages) for the benchmark
  columns our runs have, then a details table and the plots.
- `table.csv`: the same wide table as numbers (paper rows marked in `source`).
- `runs.csv`: one row per run: counts, strict / lenient accuracy, valid-trace rate, grounding of the
  reasoning, its faithfulness (degenerate-span share, grounding without degenerate spans, clue
  sufficiency, reliance), protocol settings, paper value and difference, directory.
- `faithfulness.csv`: per run and category, the faithfulness numbers of table.md's "Faithfulness"
  section (vt_eval.tables.faithfulness_rows), which states how each was measured. Both only when some
  run measured them (results written before they existed have none).
- `plots/*.png`: accuracy per category, and the IoU histogram of the model's own `<time>` spans
  (vt_eval.plots; skipped with a warning when matplotlib is missing).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vt_data.files import write_text_atomic
from vt_eval.merge import RESULTS
from vt_eval.paper import DEFAULT_PAPER_ROWS, PAPER_COLUMNS, PAPER_SOURCE, PAPER_TABLE1
from vt_eval.tables import (
    EXCEL_LINE_END,
    FAITHFULNESS_COLUMNS,
    FAITHFULNESS_TITLES,
    Run,
    csv_text,
    faithfulness_cell,
    faithfulness_notes,
    faithfulness_rows,
    markdown_document,
    markdown_table_lines,
    number,
    percent,
    read_run,
    records_csv,
    rounded,
)

log = logging.getLogger("vt_eval")

# Summary keys of the faithfulness measures; runs.csv prefixes their benchmark-wide numbers.
FAITHFULNESS_KEYS = ("grounding_strict", "clue_sufficiency", "reliance")
FAITHFULNESS_PREFIX = "faithfulness/"


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Evaluation directories under `paths` (a directory with results.json, or folders above some)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / RESULTS).is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p.parent for p in path.rglob(RESULTS)))
        else:
            raise FileNotFoundError(f"{path}: not a directory")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise FileNotFoundError(f"no {RESULTS} under {', '.join(map(str, paths))}")
    return unique


def load_runs(paths: Iterable[str | os.PathLike]) -> list[Run]:
    return [read_run(d) for d in find_runs(paths)]


def benchmark_columns(runs: Sequence[Run]) -> list[str]:
    """Benchmarks of the runs: the paper's columns first in its order, then the rest by name."""
    present = {r.benchmark for r in runs}
    return [b for b in PAPER_COLUMNS if b in present] + sorted(present - set(PAPER_COLUMNS))


def _grid(runs: Sequence[Run]) -> dict[tuple[str, str], dict[str, Run]]:
    grid: dict[tuple[str, str], dict[str, Run]] = {}
    for run in runs:
        cells = grid.setdefault((run.label, run.protocol), {})
        if run.benchmark in cells:
            log.warning(
                "two runs of %s / %s / %s (%s, %s); the later one is shown",
                run.label,
                run.protocol,
                run.benchmark,
                cells[run.benchmark].directory,
                run.directory,
            )
        cells[run.benchmark] = run
    return grid


def _paper_rows(columns: Sequence[str], paper_rows: Sequence[str]) -> list[str]:
    if not any(c in PAPER_COLUMNS for c in columns):
        return []
    unknown = [r for r in paper_rows if r not in PAPER_TABLE1]
    if unknown:
        raise ValueError(f"unknown paper rows {unknown}; known: {', '.join(PAPER_TABLE1)}")
    return list(paper_rows)


def column_title(benchmark: str) -> str:
    return f"{benchmark} ({PAPER_COLUMNS[benchmark]})" if benchmark in PAPER_COLUMNS else benchmark


def markdown_table(runs: Sequence[Run], paper_rows: Sequence[str] = DEFAULT_PAPER_ROWS) -> str:
    """The wide table in Markdown (see the module docstring)."""
    columns = benchmark_columns(runs)
    lines = [
        [label, protocol, *(_ours(cells.get(column)) for column in columns)]
        for (label, protocol), cells in _grid(runs).items()
    ]
    lines += [
        [f"paper: {row}", "video_thinker (paper)", *(number(PAPER_TABLE1[row].get(c)) for c in columns)]
        for row in _paper_rows(columns, paper_rows)
    ]
    return "\n".join(markdown_table_lines(["model", "protocol", *map(column_title, columns)], lines))


def _ours(run: Run | None) -> str:
    """A cell of the wide table: our accuracy, and the paper's beside it where it has one."""
    if run is None:
        return number(None)
    text = number(run.accuracy)
    return text if run.paper_accuracy is None else f"{text} (paper {run.paper_accuracy:.2f})"


def run_record(run: Run) -> dict[str, Any]:
    """One flat row of runs.csv."""
    res, summary = run.results, run.results["summary"]
    counts = res.get("counts", {})
    grounding = summary.get("grounding") or {}
    overall = faithfulness_rows(summary, run.accuracy_key)[0]
    clues = summary.get("clue_sufficiency") or {}
    direct = summary.get("direct_grounding") or {}
    protocol = res["protocol"]
    paper = run.paper_accuracy
    return {
        "model": run.label,
        "protocol": run.protocol,
        "benchmark": run.benchmark,
        "planned": counts.get("planned"),
        "done": counts.get("done"),
        "failed_decode": counts.get("failed_decode"),
        "accuracy": rounded(run.accuracy),
        "accuracy_strict": percent(summary.get("accuracy")),
        "accuracy_lenient": percent(summary.get("accuracy_lenient")),
        "valid_trace_rate": percent(summary.get("valid_trace_rate")),
        "reasoning_miou": percent(grounding.get("miou")),
        "reasoning_r@0.3": percent(grounding.get("recall@0.3")),
        "reasoning_r@0.5": percent(grounding.get("recall@0.5")),
        # The benchmark-wide faithfulness numbers (the "all" row of the Faithfulness section).
        **{FAITHFULNESS_PREFIX + c: overall[c] for c in FAITHFULNESS_COLUMNS if c not in ("n", "accuracy")},
        "clue_checker": clues.get("checker"),
        "direct_grounding_miou": percent(direct.get("miou")),
        "paper_model": run.paper_model,
        "paper_accuracy": paper,
        "difference": None if paper is None or run.accuracy is None else rounded(run.accuracy - paper),
        "template": protocol.get("template"),
        "num_frames": protocol.get("num_frames"),
        "max_pixels": protocol.get("max_pixels"),
        "min_pixels": protocol.get("min_pixels"),
        "temperature": protocol.get("temperature"),
        "top_p": protocol.get("top_p"),
        "max_new_tokens": protocol.get("max_new_tokens"),
        "answer_extraction": protocol.get("answer_extraction"),
        "weights_sha256": res["model"].get("weights_sha256"),
        "directory": str(run.directory),
    }




def _measured(run: Run) -> bool:
    return any(run.results["summary"].get(k) for k in FAITHFULNESS_KEYS)


def faithfulness_records(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """faithfulness.csv: per run and category (vt_eval.tables.faithfulness_rows) with the run's names;
    runs that measured none of it are left out."""
    return [{"model": run.label, "protocol": run.protocol, "benchmark": run.benchmark, **row}
            for run in filter(_measured, runs)
            for row in faithfulness_rows(run.results["summary"], run.accuracy_key)]


def faithfulness_section(runs: Sequence[Run]) -> list[str]:
    """table.md's "Faithfulness" section: the per-category table, then how each run was measured (no
    lines when no run measured it)."""
    records = faithfulness_records(runs)
    if not records:
        return []
    titles = [FAITHFULNESS_TITLES[c] for c in FAITHFULNESS_COLUMNS]
    header = ["model", "protocol", "benchmark", "category", *titles]
    rows = ([rec["model"], rec["protocol"], rec["benchmark"], rec["category"],
             *(faithfulness_cell(c, rec[c]) for c in FAITHFULNESS_COLUMNS)] for rec in records)
    notes: dict[str, list[str]] = {}
    for run in filter(_measured, runs):
        for note in faithfulness_notes(run.results["summary"]):
            notes.setdefault(note, []).append(f"{run.label} / {run.benchmark}")
    # A note that holds for every run is said once; others name the runs they hold for.
    measured = sum(map(_measured, runs))
    return [
        "", "## Faithfulness of the model's own clues", "",
        "Per benchmark and category, in %: the accuracy beside the share of degenerate `<time>` spans, "
        "grounding in which they never count (and the old mIoU, any span), clue sufficiency (a checker given "
        "only the question, the options and the model's own `<time>`/`<caption>` clues reaches the correct "
        "answer / the model's answer) and reliance (the answer changed with the frames of the model's own "
        "span blacked out / with as many frames elsewhere).", "",
        *markdown_table_lines(header, rows), "",
        *(f"- {note}" if len(names) == measured else f"- {note} ({', '.join(names)})"
          for note, names in notes.items()),
    ]


def span_ious(rows: Iterable[dict[str, Any]]) -> list[float]:
    """Best IoU of the predicted `<time>` spans per gold span, over rows with gold segments."""
    from vt_data.timespan import best_ious

    ious: list[float] = []
    for row in rows:
        if row.get("gold_spans"):
            ious.extend(
                best_ious(
                    [tuple(s) for s in row.get("pred_spans") or []], [tuple(s) for s in row["gold_spans"]]
                )
            )
    return ious


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def write_plots(runs: Sequence[Run], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Per run: accuracy per category and the IoU histogram. Returns (files, warnings)."""
    from vt_eval import plots

    files, warnings = [], []
    for run in runs:
        stem = f"{_slug(run.label)}__{_slug(run.protocol)}__{_slug(run.benchmark)}"
        title = f"{run.label} / {run.protocol} / {run.benchmark}"
        try:
            files.append(
                plots.category_accuracy(
                    run.results["summary"], out_dir / f"{stem}__categories.png", title=title
                )
            )
            rows = run.rows()
            if any(r.get("gold_spans") for r in rows):
                files.append(plots.iou_histogram(span_ious(rows), out_dir / f"{stem}__iou.png", title=title))
        except ImportError as exc:
            warnings.append(f"plots skipped: {exc}")
            break
    return files, warnings


def write_report(
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    *,
    paper_rows: Sequence[str] = DEFAULT_PAPER_ROWS,
    plots: bool = True,
) -> dict[str, Any]:
    """Write table.md, table.csv, runs.csv and plots/ for the runs under `paths`; returns
    {"out_dir", "files", "warnings", "runs"}."""
    runs = load_runs(paths)
    out = Path(out_dir) if out_dir else Path(os.path.commonpath([str(r.directory) for r in runs])) / "report"
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    warnings: list[str] = []

    plot_files: list[Path] = []
    if plots:
        plot_files, plot_warnings = write_plots(runs, out / "plots")
        files += plot_files
        warnings += plot_warnings

    records = [run_record(r) for r in runs]
    body = [markdown_table(runs, paper_rows), ""]
    if _paper_rows(benchmark_columns(runs), paper_rows) or any(r.paper_accuracy is not None for r in runs):
        body += [
            f"Paper numbers: {PAPER_SOURCE}; every paper number uses the Video-Thinker prompt at "
            "128×28×28. The in-domain columns (vt10k_*) are the paper's unpublished held-out splits; ours "
            "are rebuilt, not identical.",
            "",
        ]
    numbers = (
        "accuracy_strict",
        "accuracy_lenient",
        "valid_trace_rate",
        "reasoning_miou",
        "paper_accuracy",
        "difference",
    )
    body += [
        "## Runs",
        "",
        *markdown_table_lines(
            [
                "model",
                "protocol",
                "benchmark",
                "done / planned",
                "failed decode",
                "strict",
                "lenient",
                "valid trace",
                "reasoning mIoU",
                "paper",
                "Δ",
            ],
            (
                [
                    rec["model"],
                    rec["protocol"],
                    rec["benchmark"],
                    f"{rec['done']} / {rec['planned']}",
                    str(rec["failed_decode"]),
                    *(number(rec[k]) for k in numbers),
                ]
                for rec in records
            ),
        ),
        *faithfulness_section(runs),
    ]
    markdown = markdown_document(
        "vt-eval results",
        "Primary accuracy (%) per benchmark: strict answer extraction (method.md §8.3 steps 1-4) unless the "
        "protocol says otherwise. `ours (paper X)`: the paper's number for the same model and benchmark.",
        body,
        plots=plot_files,
        warnings=warnings,
    )
    files.append(write_text_atomic(out / "table.md", markdown))

    columns = benchmark_columns(runs)
    wide = [
        [label, protocol, "ours", *(_csv(cells[c].accuracy) if c in cells else "" for c in columns)]
        for (label, protocol), cells in _grid(runs).items()
    ]
    wide += [
        [row, "video_thinker", "paper", *(_csv(PAPER_TABLE1[row].get(c)) for c in columns)]
        for row in _paper_rows(columns, paper_rows)
    ]
    table = csv_text(["model", "protocol", "source", *columns], wide, lineterminator=EXCEL_LINE_END)
    files.append(write_text_atomic(out / "table.csv", table))
    runs_csv = records_csv(records, list(records[0]), lineterminator=EXCEL_LINE_END)
    files.append(write_text_atomic(out / "runs.csv", runs_csv))
    if faithfulness := faithfulness_records(runs):
        files.append(write_text_atomic(out / "faithfulness.csv", records_csv(
            faithfulness, list(faithfulness[0]), lineterminator=EXCEL_LINE_END)))
    for warning in warnings:
        log.warning(warning)
    return {"out_dir": out, "files": files, "warnings": warnings, "runs": [r.directory for r in runs]}


def _csv(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    """`vt-eval report RUN_DIRS... [--out DIR] [--paper-rows ...] [--no-plots]`."""
    parser = argparse.ArgumentParser(prog="vt-eval report", description=__doc__.split("\n")[0])
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="evaluation directories or folders above them"
    )
    parser.add_argument("--out", default=None, help="output folder (default: the runs' common folder/report)")
    parser.add_argument(
        "--paper-rows",
        default=",".join(DEFAULT_PAPER_ROWS),
        help="paper Table 1 rows to show: comma-separated names, 'all' or 'none'",
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    rows = (
        list(PAPER_TABLE1)
        if args.paper_rows == "all"
        else []
        if args.paper_rows == "none"
        else [r.strip() for r in args.paper_rows.split(",") if r.strip()]
    )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = write_report(args.runs, args.out, paper_rows=rows, plots=not args.no_plots)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in result["files"]:
        print(path)
    return 0


__all__ = [
    "Run",
    "find_runs",
    "load_runs",
    "markdown_table",
    "write_report",
    "span_ious",
    "run_record",
    "faithfulness_records",
    "faithfulness_section",
    "main",
]
