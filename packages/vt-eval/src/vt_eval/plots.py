"""Every PNG plot of the evaluation reports, saved atomically (vt_data.files.atomic_path: a reader never
sees half a PNG).

- Per evaluation (vt_eval.report): accuracy per category, and the IoU histogram of the model's own
  `<time>` spans against the ground-truth segments (best IoU per gold span, the quantity behind mIoU and
  R@K, method.md §8.5).
- Per pipeline run (vt_eval.stages): training loss per optimizer step and rewards per GRPO step (one
  `Curve` per run from vt_eval.training_logs, seeds of a stage in one colour), and the accuracy of each
  stage over its seeds; `write_stage_plots` writes the three, skipping (and saying why) a plot without
  data.

matplotlib is imported lazily with the Agg backend (no display needed); without it these functions
raise ImportError and the reports write their tables and skip the plots.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vt_data.files import atomic_path
from vt_eval.tables import CATEGORY_PREFIX, number
from vt_eval.training_logs import GRPO_LOG, SFT_LOG, Curve, loss_curves, reward_curves

if TYPE_CHECKING:  # only annotations: vt_eval.stages imports this module
    from vt_eval.stages import StageRun

PLOT_NAMES = ("training_loss.png", "rewards.png", "accuracy_by_stage.png")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "plots need matplotlib, which is not installed (pip install matplotlib); "
            "the tables do not need it"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig: Any, plt: Any, path: str | os.PathLike) -> Path:
    """The one way a plot reaches disk: savefig to a temporary sibling, then replace `path`."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            # The temporary name ends in .tmp: the format comes from the target's suffix.
            fig.savefig(tmp, dpi=110, format=path.suffix[1:] or "png")
    finally:
        plt.close(fig)
    return path


# --- one evaluation (vt_eval.report) ----------------------------------------------------------------
def category_accuracy(summary: Mapping[str, Any], path: str | os.PathLike, *, title: str = "") -> Path:
    """Bar chart of strict and lenient accuracy (%) per category, with each category's n on its label.

    summary: a `vt_eval.metrics.aggregate` summary (uses `per_category`, `accuracy`, `accuracy_lenient`);
    an "overall" bar comes first."""
    plt = _pyplot()
    per = summary.get("per_category") or {}
    names = ["overall", *per]
    strict = [summary.get("accuracy"), *(v.get("accuracy") for v in per.values())]
    lenient = [summary.get("accuracy_lenient"), *(v.get("accuracy_lenient") for v in per.values())]
    counts = [summary.get("n", 0), *(v.get("n", 0) for v in per.values())]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 1.5), 3.6))
    xs = range(len(names))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], [100 * (s or 0.0) for s in strict], width, label="strict (primary)")
    ax.bar([x + width / 2 for x in xs], [100 * (s or 0.0) for s in lenient], width, label="lenient")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(
        [f"{n}\n(n={c})" for n, c in zip(names, counts, strict=True)], rotation=30, ha="right", fontsize=8
    )
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, plt, path)


def iou_histogram(
    ious: Sequence[float],
    path: str | os.PathLike,
    *,
    title: str = "",
    bins: int = 10,
    thresholds: Sequence[float] = (0.3, 0.5, 0.7),
) -> Path:
    """Histogram of best-IoU values (one per gold span) in `bins` equal bins over [0, 1], the mean and
    the R@K thresholds marked; an empty input draws an empty frame saying so."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    edges = [i / bins for i in range(bins + 1)]
    if ious:
        ax.hist(list(ious), bins=edges, edgecolor="black")
        mean = sum(ious) / len(ious)
        ax.axvline(mean, color="red", linestyle="-", label=f"mIoU {100 * mean:.1f}")
        for k in thresholds:
            share = sum(1 for v in ious if v >= k) / len(ious)
            ax.axvline(k, color="grey", linestyle=":", label=f"R@{k:g} {100 * share:.1f}")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no gold spans", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_xlabel("best IoU of predicted <time> spans per gold span")
    ax.set_ylabel("gold spans")
    ax.set_title(f"{title} (n={len(ious)})" if title else f"n={len(ious)}", fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, plt, path)


# --- the stages of one pipeline run (vt_eval.stages) ------------------------------------------------
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


def plot_training_loss(curves: Sequence[Curve], path: str | os.PathLike, *, title: str = "") -> Path:
    """Loss against optimizer step, one line per supervised run (light moving average over the raw)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    _draw_curves(ax, curves, _stage_colors(c.stage for c in curves))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title or "training loss", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save_figure(fig, plt, path)


def plot_rewards(panels: Mapping[str, Sequence[Curve]], path: str | os.PathLike, *, title: str = "") -> Path:
    """One subplot per reward (reward_curves), one line per GRPO run, x = step."""
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
    return _save_figure(fig, plt, path)


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
        ax.text(x, (mean or 0.0) + 1.5, number(mean, 1), ha="center", fontsize=7)
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
    return _save_figure(fig, plt, path)


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


__all__ = [
    "category_accuracy",
    "iou_histogram",
    "moving_average",
    "plot_accuracy_by_stage",
    "plot_rewards",
    "plot_training_loss",
    "smoothing_window",
    "write_stage_plots",
]
