"""vt_eval.report and vt_eval.plots: the Table-1-style table across models and benchmarks with the paper's
numbers beside ours, the CSV files, and the plots of a real evaluation of the tiny model (skipped only
where matplotlib is missing)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from vt_eval.paper import PAPER_COLUMNS, PAPER_TABLE1, paper_model, paper_value
from vt_eval.report import find_runs, load_runs, main, markdown_table, span_ious, write_report


def _fake_run(
    directory: Path,
    *,
    label: str,
    benchmark: str,
    accuracy: float,
    protocol: str = "video_thinker",
    paper: str | None = None,
    categories: dict[str, float] | None = None,
) -> Path:
    """A results.json as vt_eval.runner.merge writes it (only the fields reports read)."""
    directory.mkdir(parents=True)
    per = {
        name: {"n": 10, "accuracy": acc, "accuracy_lenient": acc} for name, acc in (categories or {}).items()
    }
    results = {
        "benchmark": {"name": benchmark, "metric": "accuracy"},
        "protocol": {
            "name": protocol,
            "template": "video_thinker",
            "num_frames": 16,
            "max_pixels": 100352,
            "answer_extraction": "strict",
        },
        "model": {
            "label": label,
            "paper_model": paper,
            "path": f"/models/{label}",
            "weights_sha256": "0" * 64,
        },
        "summary": {
            "n": 20,
            "accuracy": accuracy,
            "accuracy_lenient": accuracy + 0.01,
            "per_category": per,
            "valid_trace_rate": 0.9,
        },
        "primary_accuracy": accuracy,
        "counts": {"planned": 20, "done": 20, "failed_decode": 0, "missing": 0},
        "complete": True,
    }
    (directory / "results.json").write_text(json.dumps(results))
    return directory


def test_paper_table_is_the_papers_table_1():
    assert len(PAPER_TABLE1) == 14 and list(PAPER_COLUMNS.values()) == [
        "V-Holmes",
        "CG-R",
        "VRB",
        "ANet",
        "STAR",
        "SL",
        "YC2",
        "LVB",
    ]
    assert PAPER_TABLE1["Video-Thinker-7B"]["vrbench"] == 80.69
    assert PAPER_TABLE1["Qwen2.5-VL-7B-Instruct"]["video_holmes"] == 34.02
    assert PAPER_TABLE1["Video-Thinker-SFT-7B"]["vt10k_lvbench"] == 35.69
    assert paper_model("qwen25vl_7b") == "Qwen2.5-VL-7B-Instruct"
    assert paper_model("/ckpt/Video-R1/Video-R1-7B") == "Video-R1-7B"
    assert paper_model("qwen25vl_tiny") is None
    assert paper_value("video_thinker_7b", "cg_bench_reasoning") == 33.25


def test_the_report_puts_our_number_next_to_the_papers(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs / "a", label="Video-Thinker-7B", benchmark="video_holmes", accuracy=0.41)
    _fake_run(runs / "b", label="my-sft", paper="Video-Thinker-SFT-7B", benchmark="vrbench", accuracy=0.6)
    _fake_run(
        runs / "c",
        label="my-sft",
        paper="Video-Thinker-SFT-7B",
        benchmark="synthetic",
        accuracy=0.5,
        categories={"first_colour": 0.5, "last_colour": 0.25},
    )
    table = markdown_table(load_runs([runs]))
    lines = table.splitlines()
    assert lines[0] == "| model | protocol | video_holmes (V-Holmes) | vrbench (VRB) | synthetic |"
    assert "| Video-Thinker-7B | video_thinker | 41.00 (paper 43.22) | – | – |" in lines
    assert "| my-sft | video_thinker | – | 60.00 (paper 62.40) | 50.00 |" in lines
    assert "| paper: Video-R1-7B | video_thinker (paper) | 38.54 | 69.25 | – |" in lines

    result = write_report([runs], tmp_path / "report", plots=False)
    assert {p.name for p in result["files"]} == {"table.md", "table.csv", "runs.csv"}
    assert table in (tmp_path / "report" / "table.md").read_text()
    with (tmp_path / "report" / "table.csv").open() as fh:
        wide = list(csv.DictReader(fh))
    assert {"model": "Video-Thinker-7B", "source": "paper", "video_holmes": "43.2200"}.items() <= wide[
        -1
    ].items()
    with (tmp_path / "report" / "runs.csv").open() as fh:
        long = {row["benchmark"]: row for row in csv.DictReader(fh)}
    assert float(long["video_holmes"]["difference"]) == pytest.approx(41.0 - 43.22)
    assert long["synthetic"]["paper_accuracy"] == ""  # the paper has no such column


def test_without_a_paper_benchmark_no_paper_rows_are_shown(tmp_path):
    _fake_run(tmp_path / "r", label="tiny", benchmark="synthetic", accuracy=0.25)
    table = markdown_table(load_runs([tmp_path]))
    assert "paper" not in table and "| tiny | video_thinker | 25.00 |" in table


def test_run_discovery_and_errors(tmp_path, capsys):
    _fake_run(tmp_path / "x" / "y" / "z", label="m", benchmark="synthetic", accuracy=0.5)
    assert find_runs([tmp_path]) == [(tmp_path / "x" / "y" / "z").resolve()]
    assert main([str(tmp_path / "empty-does-not-exist")]) == 2
    (tmp_path / "none").mkdir()
    assert main([str(tmp_path / "none")]) == 2
    assert "no results.json" in capsys.readouterr().err
    assert main([str(tmp_path), "--out", str(tmp_path / "rep"), "--no-plots", "--paper-rows", "all"]) == 0


def test_span_ious_take_the_best_predicted_span_per_gold_span():
    rows = [
        {"gold_spans": [[0, 2], [4, 6]], "pred_spans": [[0, 2], [5, 6]]},
        {"gold_spans": [[0, 4]], "pred_spans": []},
        {"problem_type": "multiple choice"},
    ]
    assert span_ious(rows) == [1.0, 0.5, 0.0]


# --- a real evaluation of the tiny model --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from vt_data.synthetic import build_tiny_dataset
    from vt_eval.benchmarks import load_benchmark
    from vt_eval.protocol import get_protocol
    from vt_eval.runner import evaluate
    from vt_model.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("report-run")
    write_tiny_model(root / "model", seed=0)
    build_tiny_dataset(root / "data", num_train_clips=0, num_test_clips=4, seed=0)
    out = root / "runs" / "tiny" / "tiny_cpu" / "synthetic"
    evaluate(
        root / "model",
        load_benchmark("synthetic", root / "data"),
        get_protocol("tiny_cpu", max_new_tokens=8),
        out,
        batch_size=4,
        num_workers=0,
        label="tiny",
    )
    return root / "runs"


def test_an_evaluation_of_the_tiny_model_produces_the_table(tiny_run, tmp_path):
    result = write_report([tiny_run], tmp_path, plots=False)
    text = (tmp_path / "table.md").read_text()
    assert "| tiny | tiny_cpu | " in text and "4 / 4" in text
    with (tmp_path / "runs.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["benchmark"] == "synthetic" and row["done"] == "4" and row["reasoning_miou"] != ""
    assert result["warnings"] == []


def test_an_evaluation_of_the_tiny_model_produces_the_plots(tiny_run, tmp_path):
    result = write_report([tiny_run], tmp_path)
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["tiny__tiny_cpu__synthetic__categories.png", "tiny__tiny_cpu__synthetic__iou.png"]
    for name in pngs:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["warnings"] == [] and "![" in (tmp_path / "table.md").read_text()


def test_missing_matplotlib_skips_the_plots_with_a_warning(tiny_run, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = write_report([tiny_run], tmp_path)
    assert result["warnings"] and "matplotlib" in result["warnings"][0]
    assert (tmp_path / "table.md").is_file() and not list(tmp_path.glob("plots/*.png"))
