"""PNG plots of one evaluation: accuracy per category, and the IoU histogram of the model's own `<time>`
spans against the ground-truth segments (best IoU per gold span, the quantity behind mIoU and R@K,
method.md §8.5).

matplotlib is imported lazily with the Agg backend (no display needed); without it these functions
raise ImportError and `vt-eval report` writes its tables and skips the plots.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


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
    return _save(fig, plt, path)


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
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["category_accuracy", "iou_histogram"]
