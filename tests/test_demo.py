"""`make demo` shortened (experiments/tiny_cpu/smoke.yaml): every stage runs for real, end to end, and a
second invocation skips what finished; the same pipeline runs on a tiny Qwen3-VL (`model.family=qwen3_vl`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "experiments" / "tiny_cpu" / "demo.py"
SMOKE = ROOT / "experiments" / "tiny_cpu" / "smoke.yaml"

pytestmark = pytest.mark.slow


def run_demo(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, VT_ROOT=str(ROOT))
    return subprocess.run([sys.executable, str(DEMO), "--config", str(SMOKE), "--out", str(out), *overrides],
                          capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = run_demo(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_every_stage_ran_and_the_table_covers_every_stage(demo_run):
    out, proc = demo_run
    stages = sorted(p.stem for p in (out / "stages").glob("*.json"))
    trained = ["grpo-seed0", "grpo_clue-seed0", "control-seed0"]
    assert stages == sorted(["data", "model", "sft", "eval-base", "eval-sft", *trained,
                             *(f"eval-{name}" for name in trained)])
    # the data regime: SFT shards hold only traced records, GRPO shards only answer-only ones
    sft_index = json.loads((out / "shards" / "sft" / "index.json").read_text())
    grpo_index = json.loads((out / "shards" / "grpo" / "index.json").read_text())
    traced = sum(1 for line in (out / "data" / "train.jsonl").read_text().splitlines()
                 if json.loads(line)["process"])
    assert sft_index["total"] == traced > 0
    assert grpo_index["total"] == 48 - traced > 0
    # every trained stage exported a model that the evaluation then loaded
    for name in ("sft", "grpo/seed0", "grpo_clue/seed0", "sft_more/seed0"):
        assert (out / name / "hf_model" / "config.json").is_file(), name
    assert (out / "grpo" / "seed0" / "logs" / "grpo.jsonl").read_text().strip()
    # the clue variant trained under its own reward: the clue term is logged beside accuracy and format
    clue_steps = (out / "grpo_clue" / "seed0" / "logs" / "grpo.jsonl").read_text().splitlines()
    assert clue_steps and all("reward/clue_mean" in json.loads(line) for line in clue_steps)
    summary = json.loads((out / "report" / "summary.json").read_text())
    labels = [row["stage"] for row in summary["rows"]]
    assert labels == ["base", "sft", "grpo", "grpo_clue", "control"]
    for row in summary["rows"]:
        assert row["n"] == 8
    table = (out / "report" / "table.md").read_text()
    assert "SFT + GRPO" in table and "control" in table and "Δ acc vs SFT" in table
    assert "SFT + GRPO + clue reward" in table
    assert "| SFT + GRPO |" in proc.stdout  # the table is printed, not only written
    for plot in ("training_loss", "rewards", "accuracy_by_stage"):
        assert (out / "report" / "plots" / f"{plot}.png").stat().st_size > 1000, plot


def test_every_stage_reports_its_faithfulness(demo_run):
    out, proc = demo_run
    summary = json.loads((out / "report" / "summary.json").read_text())
    for row in summary["rows"]:
        results = json.loads((Path(row["eval_dir"]) / "results.json").read_text())["summary"]
        assert "grounding_strict" in results, row["stage"]
        assert results["clue_sufficiency"]["status"] == "on", row["stage"]
        assert results["reliance"]["status"] == "on", row["stage"]
        assert results["reliance"]["subset"]["every"] == 3, row["stage"]  # the demo's fixed subset
    # per stage and question type, in the report and on the console
    assert {entry["stage"] for entry in summary["faithfulness"]} == {"base", "sft", "grpo", "grpo_clue",
                                                                     "control"}
    assert "Faithfulness per question type" in (out / "report" / "table.md").read_text()
    assert "Faithfulness per question type" in proc.stdout


def test_the_trained_variants_get_the_same_wall_time(demo_run):
    out, _ = demo_run
    seconds = {kind: json.loads((out / "stages" / f"{kind}-seed0.json").read_text())["seconds"]
               for kind in ("grpo", "grpo_clue", "control")}
    assert max(seconds.values()) - min(seconds.values()) < 0.5 * max(seconds.values()), seconds
    config = (out / "sft_more" / "seed0" / "config.yaml").read_text()
    assert "max_time: 00:00:00:15" in config
    assert "/sft/hf_model" in config  # continued from the SFT model, not from scratch
    clue = (out / "grpo_clue" / "seed0" / "config.yaml").read_text()
    assert "max_time: 00:00:00:15" in clue and "/sft/hf_model" in clue
    assert "guided_span_share: 0.5" in clue and "clue: 0.5" in clue  # the clue experiment, not plain GRPO


def test_a_second_invocation_skips_finished_stages(demo_run):
    out, _ = demo_run
    before = (out / "report" / "summary.json").read_text()
    proc = run_demo(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done before") == 11
    assert json.loads((out / "report" / "summary.json").read_text())["rows"] == json.loads(before)["rows"]


def load_inspector():
    import importlib.util

    spec = importlib.util.spec_from_file_location("inspect_traces", ROOT / "experiments" / "tiny_cpu" /
                                                  "inspect_traces.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trace_inspection_covers_every_evaluation_of_the_run(demo_run):
    out, _ = demo_run
    tables = load_inspector().inspect_run(out)
    assert sorted(tables) == ["base", "control-seed0", "grpo-seed0", "grpo_clue-seed0", "sft"]
    for name, text in tables.items():
        counts = [int(line.split("|")[3]) for line in text.splitlines()[2:]]
        assert sum(counts) == 8, name  # every test question lands in exactly one row


STEP = "<time>00:00-00:{end}</time> <caption>a red circle</caption> <think> {think}</think>\n"


@pytest.mark.parametrize("output, names, agrees", [
    # the answer names the second segment's colour while the caption names the first one's
    (STEP.format(end="08", think="green is B") + "<answer>B</answer>",
     "segment 2", False),
    (STEP.format(end="04", think="red is A") + "<answer>A</answer>",
     "segment 1", True),
    ("<answer>C</answer>", "neither", False),
])
def test_trace_inspection_classifies_answer_and_caption(output, names, agrees):
    from vt_data.records import VideoQA

    inspector = load_inspector()
    record = VideoQA(problem="What colour is the last shape shown?", path="v.mp4", data_source="synthetic",
                     options=["A. red", "B. green", "C. blue", "D. yellow"], answer="B",
                     extra={"question_type": "last_colour",
                            "video_segments": [[0.0, 4.0, "a red circle"], [4.0, 8.0, "a green square"]]})
    row = inspector.classify({"prediction": output.rsplit("<answer>", 1)[1][0], "output": output,
                              "score": 1.0 if "B</answer>" in output else 0.0}, record)
    assert row["group"] == ("last_colour", 2)
    assert row["names"] == names and row["caption_agrees"] is agrees
    assert row["correct"] is (names == "segment 2")


def test_the_pipeline_runs_end_to_end_on_a_tiny_qwen3_vl(tmp_path):
    """Every stage on the Qwen3-VL family (vt_model.families), as cheap as the smoke run allows: the
    family reaches the tiny model, SFT, GRPO and the evaluation, and every exported model is a Qwen3-VL."""
    proc = run_demo(tmp_path, "model.family=qwen3_vl", "sft.steps=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("model", "sft/hf_model", "grpo/seed0/hf_model", "sft_more/seed0/hf_model"):
        assert json.loads((tmp_path / name / "config.json").read_text())["model_type"] == "qwen3_vl", name
    sft_config = (tmp_path / "sft" / "config.yaml").read_text()
    assert "family: qwen3_vl" in sft_config and "vt_model.families.video_config" in sft_config
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert [row["n"] for row in summary["rows"]] == [8] * len(summary["rows"])
