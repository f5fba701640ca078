"""vt_eval.stages: per-run rows from results.json, means over seeds, gains over the reference stage (one
reference run, or paired by seed), the Markdown tables, and the written report with its plots (from the
training logs), all from small fake evaluation and training directories."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from vt_eval.stages import StageRun, render_table, run_gains, seed_summary, stage_rows, write_stage_report


def _fake_eval(
    directory: Path,
    accuracy: float,
    *,
    benchmark: str = "synthetic",
    grounding: bool = False,
    categories: dict[str, float] | None = None,
    valid_trace: float = 0.9,
    n: int = 20,
) -> Path:
    """A results.json as vt_eval.runner.merge writes it (the fields the stage report reads, and some)."""
    directory.mkdir(parents=True)
    per = {c: {"n": 10, "accuracy": a, "accuracy_lenient": a} for c, a in (categories or {}).items()}
    summary = {
        "n": n,
        "accuracy": accuracy,
        "accuracy_lenient": accuracy,
        "per_category": per,
        "valid_trace_rate": valid_trace,
        "counts": {"planned": n, "done": n, "failed_decode": 0, "missing": 0},
    }
    if grounding:
        summary["grounding"] = {
            "n_samples": n,
            "n_gold_spans": 2 * n,
            "samples_without_spans": 1,
            "miou": 0.41,
            "recall@0.3": 0.6,
            "recall@0.5": 0.35,
            "recall@0.7": 0.1,
            "union_iou": 0.45,
        }
        summary["captions"] = {
            "n_pairs": 30,
            "bleu1": 0.3,
            "rouge_l": 0.275,
            "meteor_exact": 0.2,
            "bleu1_corpus": 0.31,
        }
    else:  # a benchmark without gold segments: the runner leaves the keys out; null must work too
        summary["grounding"] = None
    results = {
        "benchmark": {"name": benchmark, "metric": "accuracy"},
        "protocol": {"name": "tiny_cpu", "template": "video_thinker", "answer_extraction": "strict"},
        "model": {"label": directory.name, "path": f"/models/{directory.name}"},
        "summary": summary,
        "primary_accuracy": accuracy,
        "counts": summary["counts"],
        "failed": [],
        "complete": True,
    }
    (directory / "results.json").write_text(json.dumps(results))
    return directory


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _sft_log(run_dir: Path, steps: int, *, start_loss: float = 2.0) -> Path:
    """logs/steps.jsonl as vt_model's StepLog writes it."""
    _write_jsonl(run_dir / "logs" / "steps.jsonl", (
        {"step": step, "loss": start_loss / step, "tokens": 512, "samples": 4, "lr": 1e-4, "seconds": 0.5,
         "tokens_per_s": 1024.0, "samples_per_s": 8.0, "time": 1_700_000_000.0 + step}
        for step in range(1, steps + 1)))
    return run_dir


def _grpo_log(run_dir: Path, steps: int, *, names: tuple[str, ...] = ("accuracy", "format")) -> Path:
    """logs/grpo.jsonl as vt_grpo's GRPOMetricsLog writes it (and the steps.jsonl StepLog writes beside)."""
    _write_jsonl(run_dir / "logs" / "grpo.jsonl", (
        {"step": step, "time": 1_700_000_000.0 + step, "reward_mean": 0.1 * step, "reward_std": 0.2,
         "loss": -0.01, "kl": 0.001 * step, "accuracy": 0.5,
         **{f"reward/{name}_mean": 0.05 * step for name in names},
         **{f"reward/{name}_std": 0.1 for name in names}}
        for step in range(1, steps + 1)))
    _sft_log(run_dir, steps, start_loss=-0.5)  # the policy-gradient surrogate: never on the loss plot
    return run_dir


def _single_reference_runs(tmp_path: Path) -> list[StageRun]:
    """base 30, one SFT run at 50, GRPO seeds 0/1/2 at 60/55/58."""
    runs = [
        StageRun("base", _fake_eval(tmp_path / "eval" / "base", 0.30), label="base"),
        StageRun("sft", _fake_eval(tmp_path / "eval" / "sft", 0.50), label="SFT"),
    ]
    for seed, acc in zip((0, 1, 2), (0.60, 0.55, 0.58), strict=True):
        runs.append(
            StageRun(
                "grpo",
                _fake_eval(tmp_path / "eval" / f"grpo{seed}", acc),
                seed=seed,
                label="SFT + GRPO",
                train_seconds=600.0 + seed,
            )
        )
    return runs


def _entry(summary: list[dict], stage: str) -> dict:
    return next(e for e in summary if e["stage"] == stage)


def test_gains_against_a_single_reference_run(tmp_path):
    rows = stage_rows(_single_reference_runs(tmp_path))
    summary = seed_summary(rows, reference="sft")
    assert [e["stage"] for e in summary] == ["base", "sft", "grpo"]
    grpo = _entry(summary, "grpo")
    assert grpo["accuracies"] == pytest.approx([60.0, 55.0, 58.0])
    assert grpo["gains"] == pytest.approx([10.0, 5.0, 8.0])
    assert grpo["gain_mean"] == pytest.approx(23 / 3)
    assert grpo["gain_basis"] == "single"
    assert grpo["mean"]["accuracy"] == pytest.approx(173 / 3)
    assert grpo["std"]["accuracy"] == pytest.approx(math.sqrt(19 / 3))  # sample std (n - 1)
    assert grpo["mean"]["train_seconds"] == pytest.approx(601.0)
    assert _entry(summary, "base")["gains"] == pytest.approx([-20.0])
    sft = _entry(summary, "sft")
    assert sft["gain_basis"] == "reference" and sft["gains"] == [None] and sft["std"]["accuracy"] is None


def test_gains_are_paired_by_seed_when_the_reference_has_one_run_per_seed(tmp_path):
    runs = [StageRun("base", _fake_eval(tmp_path / "base", 0.30))]
    for seed, acc in ((0, 0.50), (1, 0.52), (2, 0.48)):
        runs.append(StageRun("sft", _fake_eval(tmp_path / f"sft{seed}", acc), seed=seed))
    # GRPO listed in another seed order: pairing must follow the seed, not the position.
    for seed, acc in ((1, 0.60), (0, 0.55), (2, 0.58)):
        runs.append(StageRun("grpo", _fake_eval(tmp_path / f"grpo{seed}", acc), seed=seed))
    summary = seed_summary(stage_rows(runs))
    grpo = _entry(summary, "grpo")
    assert grpo["seeds"] == [1, 0, 2]
    assert grpo["gains"] == pytest.approx([8.0, 5.0, 10.0])
    assert grpo["gain_mean"] == pytest.approx(23 / 3)
    assert grpo["gain_std"] == pytest.approx(math.sqrt(19 / 3))
    assert grpo["gain_basis"] == "paired"
    # The base model has no seed: compared with the mean of the SFT seeds (50).
    base = _entry(summary, "base")
    assert base["gains"] == pytest.approx([-20.0]) and base["gain_basis"] == "mean"
    table = render_table(stage_rows(runs), summary)
    assert "+7.7 (+8.0, +5.0, +10.0)" in table
    assert "-20.0 †" in table and "paired by seed" in table


def test_reference_with_a_repeated_seed_is_refused(tmp_path):
    rows = stage_rows(
        [
            StageRun("sft", _fake_eval(tmp_path / "a", 0.5), seed=0),
            StageRun("sft", _fake_eval(tmp_path / "b", 0.6), seed=0),
        ]
    )
    with pytest.raises(ValueError, match="two runs with seed 0"):
        run_gains(rows, "sft")


def test_rows_read_metrics_in_percent_and_missing_grounding_is_none(tmp_path):
    grounded = StageRun(
        "sft", _fake_eval(tmp_path / "g", 0.5, grounding=True, categories={"temporal": 0.4, "causal": 0.75})
    )
    plain = StageRun("grpo", _fake_eval(tmp_path / "p", 0.6))
    rows = stage_rows([grounded, plain])
    assert rows[0]["miou"] == pytest.approx(41.0)
    assert rows[0]["r@0.5"] == pytest.approx(35.0)
    assert rows[0]["rouge_l"] == pytest.approx(27.5)
    assert rows[0]["valid_trace"] == pytest.approx(90.0)
    assert rows[0]["acc/temporal"] == pytest.approx(40.0) and rows[0]["acc/causal"] == pytest.approx(75.0)
    assert rows[1]["miou"] is None and rows[1]["rouge_l"] is None and "acc/temporal" not in rows[1]
    table = render_table(rows, seed_summary(rows))
    run_lines = [line for line in table.splitlines() if line.startswith("| grpo |")]
    # grpo row: stage, seed, n, accuracy, valid trace, mIoU, R@0.5, ROUGE-L, two categories, train time
    cells = [c.strip() for c in run_lines[0].strip("|").split("|")]
    assert cells[:4] == ["grpo", "–", "20", "60.00"]
    assert cells[5:] == ["–"] * 6
    sft_line = next(line for line in table.splitlines() if line.startswith("| sft |"))
    assert "41.00" in sft_line and "27.50" in sft_line and "75.00" in sft_line


def test_markdown_has_the_means_stds_and_gains(tmp_path):
    rows = stage_rows(_single_reference_runs(tmp_path))
    table = render_table(rows, seed_summary(rows))
    assert "### Per run" in table and "### Mean over seeds" in table
    assert "Δ acc vs SFT" in table
    grpo_line = next(line for line in table.splitlines() if line.startswith("| SFT + GRPO | 3 |"))
    assert "57.67 ± 2.52" in grpo_line
    assert "60.00, 55.00, 58.00" in grpo_line
    assert "+7.7 (+10.0, +5.0, +8.0)" in grpo_line
    assert "10.0 min" in grpo_line  # mean train time 601 s
    assert "| SFT | 1 | 50.00 |" in table and "| ref |" in table
    assert "against SFT's single run" in table


def test_runs_of_different_benchmarks_are_not_averaged(tmp_path):
    rows = stage_rows(
        [
            StageRun("sft", _fake_eval(tmp_path / "a", 0.5, benchmark="a")),
            StageRun("grpo", _fake_eval(tmp_path / "b", 0.6, benchmark="b")),
        ]
    )
    with pytest.raises(ValueError, match="different benchmarks"):
        seed_summary(rows)


def test_missing_results_names_the_directory(tmp_path):
    missing = tmp_path / "eval" / "grpo-seed1"
    missing.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="grpo-seed1") as info:
        stage_rows([StageRun("grpo", missing, seed=1)])
    assert "results.json" in str(info.value)


def test_report_writes_tables_and_plots(tmp_path):
    runs = [
        StageRun("base", _fake_eval(tmp_path / "eval" / "base", 0.30, categories={"a": 0.2, "b": 0.4})),
        StageRun(
            "sft",
            _fake_eval(tmp_path / "eval" / "sft", 0.50, categories={"a": 0.4, "b": 0.6}),
            train_dir=_sft_log(tmp_path / "train" / "sft", 40),
            label="SFT",
            train_seconds=1200.0,
        ),
    ]
    for seed, acc in ((0, 0.60), (1, 0.55)):
        runs.append(
            StageRun(
                "grpo",
                _fake_eval(tmp_path / "eval" / f"grpo{seed}", acc, categories={"a": acc, "b": acc}),
                seed=seed,
                label="SFT + GRPO",
                train_seconds=600.0,
                train_dir=_grpo_log(tmp_path / "train" / f"grpo{seed}", 30),
            )
        )
        runs.append(
            StageRun(
                "sft_more",
                _fake_eval(tmp_path / "eval" / f"more{seed}", 0.51),
                seed=seed,
                label="SFT (continued)",
                train_seconds=600.0,
                train_dir=_sft_log(tmp_path / "train" / f"more{seed}", 20, start_loss=0.1),
            )
        )
    out = tmp_path / "report"
    result = write_stage_report(runs, out, chance=25.0, title="Stages (test)")

    plots = out / "plots"
    for name in ("training_loss.png", "rewards.png", "accuracy_by_stage.png"):
        assert (plots / name).stat().st_size > 1000
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["skipped"] == {}
    assert set(map(Path, result["files"])) == {
        out / "table.md",
        out / "stages.csv",
        out / "summary.json",
        *(plots / n for n in ("training_loss.png", "rewards.png", "accuracy_by_stage.png")),
    }
    assert not [p for p in out.rglob("*.tmp")]

    markdown = (out / "table.md").read_text()
    assert markdown.startswith("# Stages (test)")
    assert "+7.5 (+10.0, +5.0)" in markdown  # GRPO over the single SFT run
    assert "+1.0 (+1.0, +1.0)" in markdown  # the continued-SFT control
    assert "![training_loss](plots/training_loss.png)" in markdown
    assert result["table"] in markdown

    with (out / "stages.csv").open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["stage"] for r in csv_rows] == ["base", "sft", "grpo", "sft_more", "grpo", "sft_more"]
    assert csv_rows[0]["acc/a"] == "20.0" and csv_rows[3]["acc/a"] == "" and csv_rows[0]["miou"] == ""

    saved = json.loads((out / "summary.json").read_text())
    assert saved["reference"] == "sft" and len(saved["rows"]) == 6
    grpo = _entry(saved["summary"], "grpo")
    assert grpo["gains"] == pytest.approx([10.0, 5.0]) and grpo["gain_mean"] == pytest.approx(7.5)
    assert result["summary"] == saved["summary"]


def test_report_skips_the_reward_plot_without_grpo_logs(tmp_path):
    runs = [
        StageRun("sft", _fake_eval(tmp_path / "sft", 0.5), train_dir=_sft_log(tmp_path / "t", 10)),
        StageRun("grpo", _fake_eval(tmp_path / "grpo", 0.6), train_dir=tmp_path / "no-logs-here"),
    ]
    result = write_stage_report(runs, tmp_path / "out")
    assert not (tmp_path / "out" / "plots" / "rewards.png").exists()
    assert "grpo.jsonl" in result["skipped"]["rewards.png"]
    assert (tmp_path / "out" / "plots" / "training_loss.png").stat().st_size > 0
    assert (tmp_path / "out" / "plots" / "accuracy_by_stage.png").stat().st_size > 0
    assert "rewards.png skipped" in (tmp_path / "out" / "table.md").read_text()


def test_report_without_any_training_logs_skips_both_curve_plots(tmp_path):
    runs = [
        StageRun("base", _fake_eval(tmp_path / "base", 0.3)),
        StageRun("sft", _fake_eval(tmp_path / "s", 0.5)),
    ]
    result = write_stage_report(runs, tmp_path / "out")
    assert set(result["skipped"]) == {"training_loss.png", "rewards.png"}
    assert [Path(f).name for f in result["files"]][-1] == "accuracy_by_stage.png"
