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
lenient, as in vt_eval.report), and the per-category accuracies (`acc/<category>`) use the same
extraction. Values a benchmark does not produce (grounding and captions need gold segments) are None in
the data and "–" in the tables.

Gains (`Δ acc vs <reference>`) are accuracy points of each run over the reference stage:
- the reference stage has one run: every run is compared with it;
- it has several (one per seed): a run is paired with the reference run of the same seed, and a run whose
  seed the reference lacks (e.g. the base model, seed None) is compared with the reference's mean.
A stage's gain is the mean of its runs' gains.

Files under out_dir, each written atomically: table.md, stages.csv (one row per run), summary.json
({"reference", "rows", "summary"}), plots/training_loss.png (loss per optimizer step from the
logs/steps.jsonl of every supervised run), plots/rewards.png (total and per-function reward per GRPO step
from logs/grpo.jsonl) and plots/accuracy_by_stage.png. A plot without data is skipped, and the result
says why.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vt_eval.report import Run
from vt_eval.runner import RESULTS

log = logging.getLogger("vt_eval")

SFT_LOG = Path("logs") / "steps.jsonl"
GRPO_LOG = Path("logs") / "grpo.jsonl"
CATEGORY_PREFIX = "acc/"
TOTAL_REWARD = "reward_mean"
REWARD_PREFIX, REWARD_SUFFIX = "reward/", "_mean"
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
PLOT_NAMES = ("training_loss.png", "rewards.png", "accuracy_by_stage.png")


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
    """The evaluation of `run` (vt_eval.report.Run over its results.json)."""
    path = run.eval_dir / RESULTS
    if not path.is_file():
        raise FileNotFoundError(
            f"{run.eval_dir}: no {RESULTS} for stage {run.stage!r} ({run.name}); the evaluation has not "
            "run or not finished (the runner writes it once every sample is done)"
        )
    return Run(run.eval_dir, json.loads(path.read_text(encoding="utf-8")))


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else round(100.0 * fraction, 4)


def _primary_key(results: Mapping[str, Any]) -> str:
    """The summary key behind the primary accuracy (vt_eval.runner's rule), so categories match it."""
    extraction = (results.get("protocol") or {}).get("answer_extraction", "strict")
    return "accuracy" if extraction == "strict" else "accuracy_lenient"


def stage_row(run: StageRun, evaluation: Run) -> dict[str, Any]:
    """One row: stage, label, seed, benchmark, protocol, the metrics in % (METRIC_COLUMNS), `acc/<category>`
    per category, train_seconds, eval_dir and train_dir."""
    summary = evaluation.results["summary"]
    grounding = summary.get("grounding") or {}
    captions = summary.get("captions") or {}
    accuracy = evaluation.accuracy
    row: dict[str, Any] = {
        "stage": run.stage,
        "label": run.display,
        "seed": run.seed,
        "benchmark": evaluation.benchmark,
        "protocol": evaluation.protocol,
        "n": summary.get("n"),
        "accuracy": None if accuracy is None else round(accuracy, 4),
        "valid_trace": _pct(summary.get("valid_trace_rate")),
        "miou": _pct(grounding.get("miou")),
        "r@0.5": _pct(grounding.get("recall@0.5")),
        "rouge_l": _pct(captions.get("rouge_l")),
    }
    key = _primary_key(evaluation.results)
    for category, values in (summary.get("per_category") or {}).items():
        row[CATEGORY_PREFIX + category] = _pct(values.get(key))
    row["train_seconds"] = run.train_seconds
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
def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _cell(column: str, value: float | None, std: float | None = None) -> str:
    if column == "train_seconds":
        return _duration(value)
    if column == "n":
        return "–" if value is None else f"{value:g}"
    text = _number(value)
    return text if std is None or value is None else f"{text} ± {std:.2f}"


def _title(column: str) -> str:
    return f"acc: {column[len(CATEGORY_PREFIX) :]}" if column.startswith(CATEGORY_PREFIX) else TITLES[column]


def gain_cell(entry: Mapping[str, Any]) -> str:
    """ "+7.7 (+10.0, +5.0, +8.0)": the stage's mean gain, then each run's; "ref" for the reference; a
    trailing † when some run was compared with the reference's mean (no run with its seed)."""
    if entry["gain_basis"] == "reference":
        return "ref"
    if entry["gain_mean"] is None:
        return "–"
    text = _signed(entry["gain_mean"])
    if len(entry["gains"]) > 1:
        text += " (" + ", ".join(_signed(g) for g in entry["gains"]) + ")"
    return text + (" †" if "mean" in (entry["gain_basis"] or "").split("+") else "")


def _markdown(header: Sequence[str], lines: Iterable[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(cells) + " |" for cells in lines),
    ]


def render_table(rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: a table per run, then one per stage ("mean over seeds", ± the sample std over seeds)
    with the per-seed accuracies and the gain over the reference stage (gain_cell)."""
    columns = numeric_columns(rows)
    per_run = _markdown(
        ["stage", "seed", *map(_title, columns)],
        (
            [row["label"], "–" if row["seed"] is None else str(row["seed"])]
            + [_cell(c, row.get(c)) for c in columns]
            for row in rows
        ),
    )
    reference = summary[0]["reference"] if summary else "sft"
    reference_label = next((e["label"] for e in summary if e["stage"] == reference), reference)
    stage_columns = [c for c in columns if c != "n"]
    per_stage = _markdown(
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
            + [", ".join(_number(a) for a in entry["accuracies"])]
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
    return "\n".join(
        [
            "### Per run",
            "",
            *per_run,
            "",
            "### Mean over seeds",
            "",
            *per_stage,
            "",
            footnote,
        ]
    )


# --- training logs -----------------------------------------------------------------------------------
def read_step_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a training log (steps.jsonl, grpo.jsonl), one per step in step order.

    A resumed run logs the steps after its checkpoint again: the later line wins, as it belongs to the
    history the final model continued. A torn last line (a run killed mid-write) is dropped; a bad line
    followed by good ones is corruption and raises ValueError."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    records: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if not any(rest.strip() for rest in lines[number:]):
                log.warning("%s: torn last line %d dropped", path, number)
                continue
            raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{path}:{number}: a log line without a step")
        records[int(record["step"])] = record
    return [records[step] for step in sorted(records)]


def series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the records, leaving out lines without a finite value."""
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            steps.append(int(record["step"]))
            values.append(float(value))
    return steps, values


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start), so the curve keeps its length."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def smoothing_window(length: int) -> int:
    """A light smoothing: about 5% of the curve, at least 1 point."""
    return max(1, length // 20)


@dataclass(frozen=True)
class Curve:
    """One line of a plot: the run's stage (its colour), its name (legend), x and y."""

    stage: str
    name: str
    steps: list[int]
    values: list[float]


def _log_path(run: StageRun, log_name: Path) -> Path | None:
    if run.train_dir is None:
        return None
    path = run.train_dir / log_name
    return path if path.is_file() else None


def loss_curves(runs: Sequence[StageRun]) -> list[Curve]:
    """Loss per optimizer step of every supervised run (logs/steps.jsonl). GRPO runs write steps.jsonl
    too (vt_model's StepLog), but their loss is the policy-gradient surrogate, not comparable: a run with
    logs/grpo.jsonl is left out."""
    curves = []
    for run in runs:
        path = _log_path(run, SFT_LOG)
        if path is None or _log_path(run, GRPO_LOG) is not None:
            continue
        steps, values = series(read_step_log(path), "loss")
        if steps:
            curves.append(Curve(run.stage, run.name, steps, values))
    return curves


def reward_names(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The reward functions logged as `reward/<name>_mean`, in order of first appearance."""
    keys = (k for record in records for k in record)
    return list(
        dict.fromkeys(
            k[len(REWARD_PREFIX) : -len(REWARD_SUFFIX)]
            for k in keys
            if k.startswith(REWARD_PREFIX) and k.endswith(REWARD_SUFFIX)
        )
    )


def reward_curves(runs: Sequence[StageRun]) -> dict[str, list[Curve]]:
    """Panel title -> one curve per GRPO run (logs/grpo.jsonl): "total" (reward_mean) first, then each
    reward function (reward/<name>_mean)."""
    logs = [(run, read_step_log(path)) for run in runs if (path := _log_path(run, GRPO_LOG)) is not None]
    names = reward_names(record for _, records in logs for record in records)
    panels: dict[str, list[Curve]] = {}
    for title, key in [("total", TOTAL_REWARD), *((n, f"{REWARD_PREFIX}{n}{REWARD_SUFFIX}") for n in names)]:
        curves = [Curve(run.stage, run.name, *series(records, key)) for run, records in logs]
        curves = [c for c in curves if c.steps]
        if curves:
            panels[title] = curves
    return panels


# --- plots -------------------------------------------------------------------------------------------
def _stage_colors(stages: Iterable[str]) -> dict[str, str]:
    return {stage: f"C{i % 10}" for i, stage in enumerate(dict.fromkeys(stages))}


def _draw_curves(ax: Any, curves: Sequence[Curve], colors: Mapping[str, str]) -> None:
    """Each curve faint as logged and solid smoothed; seeds of one stage share its colour, not its dashes."""
    styles = ("-", "--", ":", "-.")
    seen: dict[str, int] = {}
    for curve in curves:
        index = seen[curve.stage] = seen.get(curve.stage, -1) + 1
        color, style = colors[curve.stage], styles[index % len(styles)]
        window = smoothing_window(len(curve.values))
        if window > 1:
            ax.plot(curve.steps, curve.values, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(
            curve.steps,
            moving_average(curve.values, window),
            color=color,
            linestyle=style,
            linewidth=1.4,
            label=curve.name,
        )


def _save(fig: Any, plt: Any, path: Path) -> Path:
    """savefig to a temporary name, then os.replace: a reader never sees half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def plot_training_loss(curves: Sequence[Curve], path: str | os.PathLike, *, title: str = "") -> Path:
    """Loss against optimizer step, one line per supervised run (light moving average over the raw)."""
    from vt_eval.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    _draw_curves(ax, curves, _stage_colors(c.stage for c in curves))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title or "training loss", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, plt, Path(path))


def plot_rewards(panels: Mapping[str, Sequence[Curve]], path: str | os.PathLike, *, title: str = "") -> Path:
    """One subplot per reward (reward_curves), one line per GRPO run, x = step."""
    from vt_eval.plots import _pyplot

    plt = _pyplot()
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), squeeze=False)
    colors = _stage_colors(c.stage for curves in panels.values() for c in curves)
    flat = [ax for line in axes for ax in line]
    for ax, (name, curves) in zip(flat, panels.items(), strict=False):
        _draw_curves(ax, curves, colors)
        ax.set_title(f"{name} reward (mean over completions)", fontsize=8)
        ax.set_xlabel("GRPO step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, plt, Path(path))


def _spread(count: int, width: float = 0.5) -> list[float]:
    """Horizontal offsets of `count` dots across a bar, so seeds with equal values stay visible."""
    if count < 2:
        return [0.0] * count
    return [-width / 2 + width * i / (count - 1) for i in range(count)]


def plot_accuracy_by_stage(
    summary: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    chance: float | None = None,
    title: str = "",
) -> Path:
    """A bar per stage at its mean accuracy over seeds with each run as a dot, the chance level dashed;
    with per-category accuracies a second panel of grouped bars (category × stage means)."""
    from vt_eval.plots import _pyplot

    plt = _pyplot()
    categories = list(dict.fromkeys(c for e in summary for c in e["mean"] if c.startswith(CATEGORY_PREFIX)))
    panels = 2 if categories else 1
    width = [max(3.0, 1.1 * len(summary) + 1.5)] + (
        [max(4.0, 0.5 * len(categories) * len(summary) + 2)] if categories else []
    )
    fig, axes = plt.subplots(
        1, panels, figsize=(sum(width), 3.8), squeeze=False, gridspec_kw={"width_ratios": width}
    )
    colors = _stage_colors(e["stage"] for e in summary)
    ax = axes[0][0]
    for x, entry in enumerate(summary):
        mean = entry["mean"]["accuracy"]
        ax.bar(x, mean or 0.0, 0.7, color=colors[entry["stage"]], alpha=0.75)
        ax.text(x, (mean or 0.0) + 1.5, _number(mean, 1), ha="center", fontsize=7)
        if entry["runs"] > 1:  # one run: the bar is the value
            dots = [
                (x + dx, a)
                for dx, a in zip(_spread(entry["runs"]), entry["accuracies"], strict=True)
                if a is not None
            ]
            ax.scatter([d[0] for d in dots], [d[1] for d in dots], color="black", s=12, zorder=3)
    ax.set_xticks(range(len(summary)))
    ax.set_xticklabels(
        [f"{e['label']}\n({e['runs']} run{'s' if e['runs'] > 1 else ''})" for e in summary],
        fontsize=7,
        rotation=20,
        ha="right",
    )
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy by stage (bar: mean; dots: seeds)", fontsize=8)
    if categories:
        group = axes[0][1]
        # Stages whose benchmark run reports no categories get no empty bars (a 0 would read as a score).
        grouped = [e for e in summary if any(e["mean"].get(c) is not None for c in categories)]
        bar = 0.8 / len(grouped)
        for i, entry in enumerate(grouped):
            present = [
                (k, entry["mean"][c]) for k, c in enumerate(categories) if entry["mean"].get(c) is not None
            ]
            group.bar(
                [k + (i - (len(grouped) - 1) / 2) * bar for k, _ in present],
                [value for _, value in present],
                bar,
                color=colors[entry["stage"]],
                label=entry["label"],
            )
        group.set_xticks(range(len(categories)))
        group.set_xticklabels(
            [c[len(CATEGORY_PREFIX) :] for c in categories], fontsize=7, rotation=30, ha="right"
        )
        group.set_title("accuracy per category (mean over seeds)", fontsize=8)
        group.legend(fontsize=7)
    for panel in axes[0]:
        if chance is not None:
            panel.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance {chance:g}%")
        panel.set_ylim(0, 100)
    if chance is not None:
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, plt, Path(path))


def write_stage_plots(
    runs: Sequence[StageRun],
    summary: Sequence[Mapping[str, Any]],
    out_dir: Path,
    *,
    chance: float | None = None,
) -> tuple[list[Path], dict[str, str]]:
    """The three plots under out_dir; returns (files, {skipped plot name: why})."""
    files: list[Path] = []
    skipped: dict[str, str] = {}
    try:
        curves = loss_curves(runs)
        if curves:
            files.append(plot_training_loss(curves, out_dir / "training_loss.png"))
        else:
            skipped["training_loss.png"] = f"no supervised run with {SFT_LOG.as_posix()} in its train_dir"
        panels = reward_curves(runs)
        if panels:
            files.append(plot_rewards(panels, out_dir / "rewards.png"))
        else:
            skipped["rewards.png"] = f"no run with rewards in {GRPO_LOG.as_posix()} in its train_dir"
        if any(entry["mean"]["accuracy"] is not None for entry in summary):
            files.append(plot_accuracy_by_stage(summary, out_dir / "accuracy_by_stage.png", chance=chance))
        else:
            skipped["accuracy_by_stage.png"] = "no run has an accuracy (no evaluated samples)"
    except ImportError as exc:  # matplotlib is declared, but the tables must not depend on it
        done = {p.name for p in files}
        skipped.update({name: str(exc) for name in PLOT_NAMES if name not in done and name not in skipped})
    return files, skipped


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


def _write_atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def rows_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """stages.csv: one line per run; per-category columns after the metrics, empty where absent."""
    head = ["stage", "label", "seed", "benchmark", "protocol", *METRIC_COLUMNS]
    fields = [*head, *category_columns(rows), "train_seconds", "eval_dir", "train_dir"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    return buffer.getvalue()


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
    heading = title or f"Training stages on {rows[0]['benchmark']}"
    markdown = [
        f"# {heading}",
        "",
        "Accuracy, valid trace, mIoU, R@0.5 and ROUGE-L in %; accuracy is the primary accuracy of each "
        "evaluation. ± is the sample standard deviation over seeds.",
        "",
        table,
    ]
    if plot_files or skipped:
        markdown += ["", "## Plots", ""]
        markdown += [f"![{p.stem}](plots/{p.name})" for p in plot_files]
        markdown += [f"- {name} skipped: {why}" for name, why in skipped.items()]
    if warnings:
        markdown += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    files = [
        _write_atomic(out / "table.md", "\n".join(markdown) + "\n"),
        _write_atomic(out / "stages.csv", rows_csv(rows)),
        _write_atomic(
            out / "summary.json",
            json.dumps(
                {"reference": reference, "rows": rows, "summary": summary}, indent=2, ensure_ascii=False
            )
            + "\n",
        ),
        *plot_files,
    ]
    for warning in warnings:
        log.warning("stage report: %s", warning)
    return {
        "table": table,
        "summary": summary,
        "rows": rows,
        "files": files,
        "skipped": skipped,
        "warnings": warnings,
        "out_dir": out,
    }


__all__ = [
    "StageRun",
    "Curve",
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
    "rows_csv",
    "read_step_log",
    "reward_names",
    "series",
    "moving_average",
    "loss_curves",
    "reward_curves",
    "plot_training_loss",
    "plot_rewards",
    "plot_accuracy_by_stage",
    "write_stage_plots",
    "write_stage_report",
]
