"""Compare the training stages of one pipeline run (base → SFT → SFT + GRPO, and a continued-SFT control
trained for GRPO's wall time) over several seeds: tables with the accuracy gain over a reference stage,
CSV/JSON copies, and plots of the training curves and the accuracies.

    from vt_eval.stages import StageRun, write_stage_report

    runs = [
        StageRun("base", "runs/eval/base", label="base model"),
        StageRun("sft", "runs/eval/sft", train_dir="runs/sft", label="SFT"),
        *(StageRun("grpo", f"runs/eval/grpo-s{s}", seed=s, train_dir=f"runs/grpo-s{s}", label="SFT + GRPO")
          for s in range(3)),
    ]
    write_stage_report(runs, "runs/demo/stages", chance=25.0)

Units: accuracy, valid-trace rate, mIoU, R@0.5 and ROUGE-L are percentages (results.json holds
fractions). Accuracy is the run's primary accuracy (strict answer extraction unless its protocol chose
lenient, as in vt_eval.tables.Run), and the per-category accuracies (`acc/<category>`) use the same
extraction. Values a benchmark does not produce (grounding and captions need gold segments) are None in
the data and "–" in the tables.

Gains (`Δ acc vs <reference>`) are accuracy points of each run over the reference stage:
- the reference stage has one run: every run is compared with it;
- it has several (one per seed): a run is paired with the reference run of the same seed, and a run whose
  seed the reference lacks (e.g. the base model, seed None) is compared with the reference's mean.
A stage's gain is the mean of its runs' gains.

Faithfulness (vt_eval.tables.faithfulness_rows): per stage and question type, the accuracy beside the
degenerate-span share, grounding without degenerate spans, clue sufficiency and reliance, each the mean
over the stage's runs (seeds), in a table of its own with how each was measured; written only when the
evaluations measured it.

Files under out_dir, each written atomically: table.md, stages.csv (one row per run), faithfulness.csv
(per run and category, when measured), summary.json ({"reference", "rows", "summary", "faithfulness"}),
plots/training_loss.png (loss per optimizer step from the logs/steps.jsonl of every supervised run),
plots/rewards.png (total and per-function reward per GRPO step from logs/grpo.jsonl) and
plots/accuracy_by_stage.png. A plot without data is skipped, and the result
says why.
"""

from __future__ import annotations

import logging
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vt_data.files import write_json_atomic, write_text_atomic
from vt_eval.merge import RESULTS
from vt_eval.plots import write_stage_plots
from vt_eval.tables import (
    CATEGORY_PREFIX,
    FAITHFULNESS_COLUMNS,
    FAITHFULNESS_TITLES,
    MISSING,
    Run,
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

# Per-run metric columns in table order; per-category accuracies follow them, then train_seconds.
METRIC_COLUMNS = ("n", "accuracy", "valid_trace", "miou", "r@0.5", "rouge_l")
TITLES = {
    "n": "n",
    "accuracy": "accuracy",
    "valid_trace": "valid trace",
    "miou": "mIoU",
    "r@0.5": "R@0.5",
    "rouge_l": "ROUGE-L",
    "train_seconds": "train time",
}


@dataclass(frozen=True)
class StageRun:
    """One evaluated model of the comparison.

    stage: the stage name ("base", "sft", "grpo", "sft_more", ...); tables list stages in order of first
    appearance. eval_dir: the evaluation directory holding results.json. train_dir: the training run
    directory (logs/steps.jsonl or logs/grpo.jsonl), None for the base model. label: the display name
    (default the stage name). train_seconds: wall time of the training stage, shown in the tables."""

    stage: str
    eval_dir: Path
    seed: int | None = None
    train_dir: Path | None = None
    label: str | None = None
    train_seconds: float | None = None

    def __post_init__(self) -> None:
        if not self.stage:
            raise ValueError("StageRun.stage must be a non-empty name")
        # Drivers pass str paths too; the dataclass is frozen, hence object.__setattr__.
        object.__setattr__(self, "eval_dir", Path(self.eval_dir))
        if self.train_dir is not None:
            object.__setattr__(self, "train_dir", Path(self.train_dir))

    @property
    def display(self) -> str:
        return self.label or self.stage

    @property
    def name(self) -> str:
        """The label and seed, e.g. "SFT + GRPO seed 1" (legends, messages)."""
        return self.display if self.seed is None else f"{self.display} seed {self.seed}"


# --- per-run rows ------------------------------------------------------------------------------------
def load_results(run: StageRun) -> Run:
    """The evaluation of `run` (vt_eval.tables.Run over its results.json)."""
    path = run.eval_dir / RESULTS
    if not path.is_file():
        raise FileNotFoundError(
            f"{run.eval_dir}: no {RESULTS} for stage {run.stage!r} ({run.name}); the evaluation has not "
            "run or not finished (the runner writes it once every sample is done)"
        )
    return read_run(run.eval_dir)


def stage_row(run: StageRun, evaluation: Run) -> dict[str, Any]:
    """One row: stage, label, seed, benchmark, protocol, the metrics in % (METRIC_COLUMNS), `acc/<category>`
    per category, train_seconds, eval_dir and train_dir."""
    summary = evaluation.results["summary"]
    grounding = summary.get("grounding") or {}
    captions = summary.get("captions") or {}
    row: dict[str, Any] = {
        "stage": run.stage,
        "label": run.display,
        "seed": run.seed,
        "benchmark": evaluation.benchmark,
        "protocol": evaluation.protocol,
        "n": summary.get("n"),
        "accuracy": rounded(evaluation.accuracy),
        "valid_trace": percent(summary.get("valid_trace_rate")),
        "miou": percent(grounding.get("miou")),
        "r@0.5": percent(grounding.get("recall@0.5")),
        "rouge_l": percent(captions.get("rouge_l")),
    }
    key = evaluation.accuracy_key
    for category, values in (summary.get("per_category") or {}).items():
        row[CATEGORY_PREFIX + category] = percent(values.get(key))
    row["train_seconds"] = run.train_seconds
    row["faithfulness"] = faithfulness_rows(summary, key)
    row["faithfulness_notes"] = faithfulness_notes(summary)
    row["eval_dir"] = str(run.eval_dir)
    row["train_dir"] = None if run.train_dir is None else str(run.train_dir)
    return row


def stage_rows(runs: Sequence[StageRun]) -> list[dict[str, Any]]:
    """One row per run (stage_row), in the order of `runs`."""
    return [stage_row(run, load_results(run)) for run in runs]


def category_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The `acc/<category>` keys of the rows, in order of first appearance."""
    return list(dict.fromkeys(k for row in rows for k in row if k.startswith(CATEGORY_PREFIX)))


def numeric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns averaged over seeds: METRIC_COLUMNS, the categories, train_seconds."""
    return [*METRIC_COLUMNS, *category_columns(rows), "train_seconds"]


# --- means over seeds and gains ----------------------------------------------------------------------
def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _std(values: Iterable[float | None]) -> float | None:
    """Sample standard deviation (n - 1), None under two values."""
    present = [v for v in values if v is not None]
    return statistics.stdev(present) if len(present) > 1 else None


def _by_stage(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Stage -> indices of its rows, stages in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(row["stage"], []).append(index)
    return groups


def run_gains(rows: Sequence[Mapping[str, Any]], reference: str) -> list[tuple[float | None, str | None]]:
    """(gain in accuracy points over `reference`, basis) per row, aligned with `rows`.

    basis: "single" (the reference's only run), "paired" (its run with the same seed), "mean" (its mean:
    no run with this seed), "reference" (a reference row; gain None), None (no reference runs)."""
    references = [r for r in rows if r["stage"] == reference]
    if not references:
        return [(None, None)] * len(rows)
    by_seed: dict[Any, float | None] = {}
    for ref in references:
        if ref["seed"] in by_seed:
            raise ValueError(
                f"reference stage {reference!r} has two runs with seed {ref['seed']!r} "
                f"({ref['eval_dir']}); gains cannot be paired by seed"
            )
        by_seed[ref["seed"]] = ref["accuracy"]
    reference_mean = _mean(by_seed.values())
    gains: list[tuple[float | None, str | None]] = []
    for row in rows:
        if row["stage"] == reference:
            gains.append((None, "reference"))
            continue
        if len(references) == 1:
            base, basis = references[0]["accuracy"], "single"
        elif row["seed"] in by_seed:
            base, basis = by_seed[row["seed"]], "paired"
        else:
            base, basis = reference_mean, "mean"
        accuracy = row["accuracy"]
        gains.append((None if accuracy is None or base is None else round(accuracy - base, 4), basis))
    return gains


def _check_one_benchmark(rows: Sequence[Mapping[str, Any]]) -> None:
    benchmarks = list(dict.fromkeys(row["benchmark"] for row in rows))
    if len(benchmarks) > 1:
        raise ValueError(
            f"the runs evaluate different benchmarks ({', '.join(map(str, benchmarks))}); means over "
            "seeds would mix them: compare the stages on one benchmark at a time"
        )


def seed_summary(rows: Sequence[Mapping[str, Any]], *, reference: str = "sft") -> list[dict[str, Any]]:
    """Per stage, in order of first appearance: {stage, label, reference, runs, seeds, mean, std,
    accuracies, gains, gain_mean, gain_std, gain_basis}.

    mean/std: per numeric column, the mean and the sample std over the stage's runs (std None with one
    run). accuracies and gains: per run, in row order (gains: run_gains). gain_basis: the bases of the
    stage's gains joined by "+" (e.g. "paired", "single", "paired+mean", "reference"), None without
    reference runs."""
    _check_one_benchmark(rows)
    columns = numeric_columns(rows)
    gains = run_gains(rows, reference)
    summary = []
    for stage, indices in _by_stage(rows).items():
        members = [rows[i] for i in indices]
        stage_gains = [gains[i][0] for i in indices]
        bases = list(dict.fromkeys(gains[i][1] for i in indices if gains[i][1]))
        summary.append(
            {
                "stage": stage,
                "label": members[0]["label"],
                "reference": reference,
                "runs": len(members),
                "seeds": [row["seed"] for row in members],
                "mean": {c: _mean(row.get(c) for row in members) for c in columns},
                "std": {c: _std(row.get(c) for row in members) for c in columns},
                "accuracies": [row["accuracy"] for row in members],
                "gains": stage_gains,
                "gain_mean": _mean(stage_gains),
                "gain_std": _std(stage_gains),
                "gain_basis": "+".join(bases) or None,
            }
        )
    return summary


# --- Markdown ----------------------------------------------------------------------------------------
def _signed(value: float | None) -> str:
    return MISSING if value is None else f"{value:+.1f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _cell(column: str, value: float | None, std: float | None = None) -> str:
    if column == "train_seconds":
        return _duration(value)
    if column == "n":
        return MISSING if value is None else f"{value:g}"
    text = number(value)
    return text if std is None or value is None else f"{text} ± {std:.2f}"


def _title(column: str) -> str:
    return f"acc: {column[len(CATEGORY_PREFIX) :]}" if column.startswith(CATEGORY_PREFIX) else TITLES[column]


def gain_cell(entry: Mapping[str, Any]) -> str:
    """ "+7.7 (+10.0, +5.0, +8.0)": the stage's mean gain, then each run's; "ref" for the reference; a
    trailing † when some run was compared with the reference's mean (no run with its seed)."""
    if entry["gain_basis"] == "reference":
        return "ref"
    if entry["gain_mean"] is None:
        return MISSING
    text = _signed(entry["gain_mean"])
    if len(entry["gains"]) > 1:
        text += " (" + ", ".join(_signed(g) for g in entry["gains"]) + ")"
    return text + (" †" if "mean" in (entry["gain_basis"] or "").split("+") else "")


def render_table(rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: a table per run, then one per stage ("mean over seeds", ± the sample std over seeds)
    with the per-seed accuracies and the gain over the reference stage (gain_cell)."""
    columns = numeric_columns(rows)
    per_run = markdown_table_lines(
        ["stage", "seed", *map(_title, columns)],
        (
            [row["label"], MISSING if row["seed"] is None else str(row["seed"])]
            + [_cell(c, row.get(c)) for c in columns]
            for row in rows
        ),
    )
    reference = summary[0]["reference"] if summary else "sft"
    reference_label = next((e["label"] for e in summary if e["stage"] == reference), reference)
    stage_columns = [c for c in columns if c != "n"]
    per_stage = markdown_table_lines(
        [
            "stage",
            "runs",
            *map(_title, stage_columns[:1]),
            "accuracy per seed",
            *map(_title, stage_columns[1:]),
            f"Δ acc vs {reference_label}",
        ],
        (
            [
                entry["label"],
                str(entry["runs"]),
                _cell("accuracy", entry["mean"]["accuracy"], entry["std"]["accuracy"]),
            ]
            + [", ".join(number(a) for a in entry["accuracies"])]
            + [_cell(c, entry["mean"][c], entry["std"][c]) for c in stage_columns[1:]]
            + [gain_cell(entry)]
            for entry in summary
        ),
    )
    bases = {b for e in summary for b in (e["gain_basis"] or "").split("+") if b}
    how = {
        "single": f"against {reference_label}'s single run",
        "paired": f"paired by seed with {reference_label}'s runs",
        "mean": f"† against the mean of {reference_label}'s runs (none with the same seed)",
    }
    notes = [how[b] for b in ("single", "paired", "mean") if b in bases]
    footnote = (
        f"Δ acc: accuracy points over {reference_label}, the stage's mean first and each run's in "
        f"parentheses; {'; '.join(notes)}."
        if notes
        else f"Δ acc: no runs of the reference stage {reference!r}."
    )
    return "\n".join(["### Per run", "", *per_run, "", "### Mean over seeds", "", *per_stage, "", footnote])


# --- faithfulness ------------------------------------------------------------------------------------
# The columns that exist only where faithfulness was measured (n and accuracy exist in every run).
_MEASURED = tuple(c for c in FAITHFULNESS_COLUMNS if c not in ("n", "accuracy"))


def faithfulness_measured(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any run has a faithfulness number."""
    return any(r.get(c) is not None for row in rows for r in row.get("faithfulness") or () for c in _MEASURED)


def faithfulness_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per stage (first appearance) and category ("all" first): {stage, label, category, runs, and the
    mean over the stage's runs of each FAITHFULNESS_COLUMNS value (None where no run has it)}."""
    out = []
    for stage, indices in _by_stage(rows).items():
        per_category: dict[str, list[Mapping[str, Any]]] = {}
        for i in indices:
            for entry in rows[i].get("faithfulness") or ():
                per_category.setdefault(entry["category"], []).append(entry)
        for category, entries in per_category.items():
            out.append({"stage": stage, "label": rows[indices[0]]["label"], "category": category,
                        "runs": len(entries),
                        **{c: _mean(e.get(c) for e in entries) for c in FAITHFULNESS_COLUMNS}})
    return out


def render_faithfulness(rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: the faithfulness table (mean over seeds, per stage and question type), then how it was
    measured (each distinct note once)."""
    titles = [FAITHFULNESS_TITLES[c] for c in FAITHFULNESS_COLUMNS]
    cells = ([e["label"], e["category"], str(e["runs"]),
              *(faithfulness_cell(c, e[c]) for c in FAITHFULNESS_COLUMNS)] for e in summary)
    table = markdown_table_lines(["stage", "question type", "runs", *titles], cells)
    notes = list(dict.fromkeys(note for row in rows for note in row.get("faithfulness_notes") or ()))
    intro = ("In %: degenerate `<time>` spans (zero length or >= 90 % of the clip), grounding in which they "
             "never count (and the old mIoU, any span), clue sufficiency (the clues alone lead a checker to "
             "the correct answer / to the model's own) and reliance (the answer changes with the model's own "
             "span blacked out / with as many frames elsewhere).")
    return "\n".join(["### Faithfulness per question type (mean over seeds)", "", intro, "", *table, "",
                      *(f"- {note}" for note in notes)])


def faithfulness_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """faithfulness.csv: one line per run and category."""
    records = [{"stage": row["stage"], "label": row["label"], "seed": row["seed"], **entry}
               for row in rows for entry in row.get("faithfulness") or ()]
    return records_csv(records, ["stage", "label", "seed", "category", *FAITHFULNESS_COLUMNS])


# --- the report --------------------------------------------------------------------------------------
def consistency_warnings(rows: Sequence[Mapping[str, Any]], reference: str) -> list[str]:
    """What makes the stages less comparable than they look: other protocols, other sample counts, no
    reference runs."""
    warnings = []
    protocols = list(dict.fromkeys(row["protocol"] for row in rows))
    if len(protocols) > 1:
        warnings.append(f"the runs use different protocols ({', '.join(map(str, protocols))})")
    counts = list(dict.fromkeys(row["n"] for row in rows))
    if len(counts) > 1:
        warnings.append(f"the runs scored different numbers of samples ({', '.join(map(str, counts))})")
    if not any(row["stage"] == reference for row in rows):
        warnings.append(f"no runs of the reference stage {reference!r}: no gains")
    return warnings


def rows_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """stages.csv: one line per run; per-category columns after the metrics, empty where absent."""
    head = ["stage", "label", "seed", "benchmark", "protocol", *METRIC_COLUMNS]
    return records_csv(rows, [*head, *category_columns(rows), "train_seconds", "eval_dir", "train_dir"])


def write_stage_report(
    runs: Sequence[StageRun],
    out_dir: str | os.PathLike,
    *,
    reference: str = "sft",
    title: str | None = None,
    chance: float | None = None,
) -> dict[str, Any]:
    """Write table.md, stages.csv, summary.json and plots/ (module docstring) under out_dir.

    chance: the chance accuracy in %, drawn dashed on the accuracy plot. Returns {"table" (the
    Markdown tables), "summary" (seed_summary), "rows" (stage_rows), "files", "skipped" ({plot: why}),
    "warnings", "out_dir"}."""
    if not runs:
        raise ValueError("no runs to compare")
    rows = stage_rows(runs)
    summary = seed_summary(rows, reference=reference)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    warnings = consistency_warnings(rows, reference)
    plot_files, skipped = write_stage_plots(runs, summary, out / "plots", chance=chance)
    table = render_table(rows, summary)
    measured = faithfulness_measured(rows)
    faithfulness = faithfulness_summary(rows) if measured else []
    if measured:
        table += "\n\n" + render_faithfulness(rows, faithfulness)
    markdown = markdown_document(
        title or f"Training stages on {rows[0]['benchmark']}",
        "Accuracy, valid trace, mIoU, R@0.5 and ROUGE-L in %; accuracy is the primary accuracy of each "
        "evaluation. ± is the sample standard deviation over seeds.",
        [table],
        plots=plot_files,
        skipped=skipped,
        warnings=warnings,
    )
    files = [
        write_text_atomic(out / "table.md", markdown),
        write_text_atomic(out / "stages.csv", rows_csv(rows)),
        write_json_atomic(out / "summary.json", {"reference": reference, "rows": rows, "summary": summary,
                                                 "faithfulness": faithfulness}),
        *([write_text_atomic(out / "faithfulness.csv", faithfulness_csv(rows))] if measured else []),
        *plot_files,
    ]
    for warning in warnings:
        log.warning("stage report: %s", warning)
    return {
        "table": table,
        "summary": summary,
        "faithfulness": faithfulness,
        "rows": rows,
        "files": files,
        "skipped": skipped,
        "warnings": warnings,
        "out_dir": out,
    }


__all__ = [
    "StageRun",
    "load_results",
    "stage_row",
    "stage_rows",
    "run_gains",
    "seed_summary",
    "render_table",
    "gain_cell",
    "category_columns",
    "numeric_columns",
    "consistency_warnings",
    "faithfulness_csv",
    "faithfulness_measured",
    "faithfulness_summary",
    "render_faithfulness",
    "rows_csv",
    "write_stage_report",
]
