"""Rows of evaluation results and their Markdown / CSV text, shared by the two reports: the stage table
of one pipeline run (vt_eval.stages) and the benchmark report beside the paper's Table 1
(vt_eval.report).

A `Run` is one finished evaluation (its results.json); both reports turn runs into flat rows of numbers
(percentages rounded with `percent`), render them as Markdown pipe tables (`markdown_table_lines`, a
missing value shown as "–") and CSV text (`csv_text`, `records_csv`; a missing value is an empty
field), and lay out their table.md the same way (`markdown_document`). Both show the faithfulness of
the model's own clues the same way too (`faithfulness_rows`, `faithfulness_notes`): per category, the
accuracy beside the degenerate-span share, the grounding a degenerate span cannot pass (and the old
number), clue sufficiency and reliance.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vt_eval.merge import RESULTS
from vt_eval.paper import PAPER_TABLE1, paper_model
from vt_eval.predictions import PREDICTIONS, read_predictions

# Per-category accuracy columns of a row: `acc/<category>`.
CATEGORY_PREFIX = "acc/"
MISSING = "–"
# The benchmark report's CSV files have always had the csv module's default (Excel) line ending, the stage
# table's "\n"; both stay as they are so that existing files compare byte for byte.
EXCEL_LINE_END = "\r\n"


@dataclass
class Run:
    """One finished evaluation (its results.json)."""

    directory: Path
    results: dict[str, Any]

    @property
    def label(self) -> str:
        return str(self.results["model"].get("label") or Path(self.results["model"]["path"]).name)

    @property
    def protocol(self) -> str:
        return str(self.results["protocol"].get("name"))

    @property
    def benchmark(self) -> str:
        return str(self.results["benchmark"]["name"])

    @property
    def accuracy(self) -> float | None:
        """Primary accuracy in % (strict extraction unless the protocol chose lenient)."""
        value = self.results.get("primary_accuracy", self.results["summary"].get("accuracy"))
        return None if value is None else 100.0 * value

    @property
    def accuracy_key(self) -> str:
        """The summary key behind the primary accuracy (vt_eval.merge's rule), so categories match it."""
        extraction = (self.results.get("protocol") or {}).get("answer_extraction", "strict")
        return "accuracy" if extraction == "strict" else "accuracy_lenient"

    @property
    def paper_model(self) -> str | None:
        return paper_model(self.results["model"].get("paper_model")) or paper_model(self.label)

    @property
    def paper_accuracy(self) -> float | None:
        row = self.paper_model
        return PAPER_TABLE1.get(row, {}).get(self.benchmark) if row else None

    def rows(self) -> list[dict[str, Any]]:
        """The `ok` prediction lines (for plots)."""
        return [r for r in read_predictions(self.directory / PREDICTIONS).rows if r.get("status") == "ok"]


def read_run(directory: str | os.PathLike) -> Run:
    """The evaluation in `directory` (its results.json must exist)."""
    directory = Path(directory)
    return Run(directory, json.loads((directory / RESULTS).read_text(encoding="utf-8")))


# --- numbers -----------------------------------------------------------------------------------------
def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def percent(fraction: float | None) -> float | None:
    """A fraction from results.json as a percentage, rounded to 4 decimals (None stays None)."""
    return None if fraction is None else rounded(100.0 * fraction)


def number(value: float | None, digits: int = 2) -> str:
    """A table cell: the value with `digits` decimals, "–" when missing."""
    return MISSING if value is None else f"{value:.{digits}f}"


# --- faithfulness ------------------------------------------------------------------------------------
FAITHFULNESS_COLUMNS = ("n", "accuracy", "degenerate", "miou_strict", "r@0.5_strict", "miou_any_span",
                        "clue_sufficient", "clue_agrees", "reliance_n", "reliance_own", "reliance_control",
                        "reliance_overlap")
FAITHFULNESS_TITLES = {
    "n": "n",
    "accuracy": "accuracy",
    "degenerate": "degenerate spans",
    "miou_strict": "mIoU (no degenerate)",
    "r@0.5_strict": "R@0.5 (no degenerate)",
    "miou_any_span": "mIoU (any span)",
    "clue_sufficient": "clues → correct",
    "clue_agrees": "clues → its answer",
    "reliance_n": "reliance n",
    "reliance_own": "changed: own span masked",
    "reliance_control": "changed: control masked",
    "reliance_overlap": "control overlap",
}
ALL = "all"


def _block(summary: Mapping[str, Any], key: str, category: str | None) -> Mapping[str, Any]:
    block = summary.get(key) or {}
    if category is not None:
        block = (block.get("per_category") or {}).get(category) or {}
    return block


def faithfulness_rows(summary: Mapping[str, Any], accuracy_key: str = "accuracy") -> list[dict[str, Any]]:
    """One row per category ("all" first, then the summary's categories) of a results summary: the
    FAITHFULNESS_COLUMNS, in % (n and reliance_n are counts); None where the run has no such number
    (no spans, no checker, reliance off)."""
    categories = [None, *(summary.get("per_category") or {})]
    rows = []
    for category in categories:
        accuracy = (summary.get(accuracy_key) if category is None
                    else (summary["per_category"].get(category) or {}).get(accuracy_key))
        n = summary.get("n") if category is None else summary["per_category"][category].get("n")
        strict = _block(summary, "grounding_strict", category)
        clues = _block(summary, "clue_sufficiency", category)
        reliance = _block(summary, "reliance", category)
        rows.append({
            "category": ALL if category is None else category,
            "n": n,
            "accuracy": percent(accuracy),
            "degenerate": percent(strict.get("degenerate_share")),
            "miou_strict": percent(strict.get("miou")),
            "r@0.5_strict": percent(strict.get("recall@0.5")),
            "miou_any_span": percent(strict.get("miou_any_span")),
            "clue_sufficient": percent(clues.get("sufficient")),
            "clue_agrees": percent(clues.get("agrees_with_model")),
            "reliance_n": reliance.get("n"),
            "reliance_own": percent(reliance.get("own_changed")),
            "reliance_control": percent(reliance.get("control_changed")),
            "reliance_overlap": percent(reliance.get("control_overlap")),
        })
    return rows


def faithfulness_notes(summary: Mapping[str, Any]) -> list[str]:
    """How to read the faithfulness numbers of one summary: the degenerate-span rule, the clue checker
    (or why clue sufficiency is off), the reliance subset (or why it is off)."""
    notes = []
    if rule := (summary.get("grounding_strict") or {}).get("rule"):
        notes.append(f"Grounding: {rule}.")
    clues = summary.get("clue_sufficiency") or {}
    if clues.get("status") == "on":
        notes.append(f"Clue sufficiency: checker {clues['checker']}, given the {clues['checker_inputs']}; "
                     "an output without clues counts as insufficient.")
    else:
        notes.append(f"Clue sufficiency off: {clues.get('reason', 'not computed for this run')}.")
    reliance = summary.get("reliance") or {}
    if reliance.get("status") == "on":
        subset = reliance.get("subset") or {}
        every, limit = subset.get("every") or 1, subset.get("limit")
        which = "every sample" if every == 1 else f"the samples whose plan index is a multiple of {every}"
        notes.append(f"Reliance: {reliance.get('masking')} (control overlap: the share of its frames inside "
                     f"the own mask); on {which}" + ("" if limit is None else f", the first {limit} of them")
                     + "; outputs without a span, or whose span holds no sampled frame, are not re-asked "
                       "(reliance n counts the re-asked ones).")
    else:
        notes.append(f"Reliance off: {reliance.get('reason', 'not computed for this run')}.")
    return notes


def faithfulness_cell(column: str, value: Any) -> str:
    """A faithfulness table cell: counts as integers (a mean over seeds to one decimal), percentages with
    two decimals, "–" when missing."""
    if column in ("n", "reliance_n"):  # counts
        return MISSING if value is None else f"{round(value, 1):g}"
    return number(value)


# --- Markdown ----------------------------------------------------------------------------------------
def markdown_table_lines(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown pipe table: the header, the separator, one line per row of cells."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(cells) + " |" for cells in rows),
    ]


def markdown_document(
    title: str,
    intro: str,
    body: Sequence[str],
    *,
    plots: Sequence[Path] = (),
    skipped: Mapping[str, str] | None = None,
    warnings: Sequence[str] = (),
) -> str:
    """A report's table.md: "# title", the intro paragraph, the body lines, then "## Plots" (an image per
    file under plots/, then each skipped plot and why) when there is any, and "## Warnings" when there
    are any."""
    skipped = skipped or {}
    lines = [f"# {title}", "", intro, "", *body]
    if plots or skipped:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
        lines += [f"- {name} skipped: {why}" for name, why in skipped.items()]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"


# --- CSV ---------------------------------------------------------------------------------------------
def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]], *, lineterminator: str = "\n") -> str:
    """CSV with a header line; None is an empty field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=lineterminator)
    writer.writerow(header)
    writer.writerows(["" if value is None else value for value in row] for row in rows)
    return buffer.getvalue()


def records_csv(
    records: Iterable[Mapping[str, Any]], fields: Sequence[str], *, lineterminator: str = "\n"
) -> str:
    """CSV of the `fields` of each record, in that order; a field a record lacks is empty."""
    return csv_text(
        fields, ([record.get(k) for k in fields] for record in records), lineterminator=lineterminator
    )


__all__ = [
    "CATEGORY_PREFIX",
    "EXCEL_LINE_END",
    "FAITHFULNESS_COLUMNS",
    "FAITHFULNESS_TITLES",
    "MISSING",
    "Run",
    "csv_text",
    "faithfulness_cell",
    "faithfulness_notes",
    "faithfulness_rows",
    "markdown_document",
    "markdown_table_lines",
    "number",
    "percent",
    "read_run",
    "records_csv",
    "rounded",
]
